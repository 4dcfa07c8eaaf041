//! Maps and load-time globals shared by several event families: the target processes, the
//! run control and loss counters, how user stacks are walked, the per-thread
//! scheduler state (made at fork, used by the scheduler programs) and the per-process memory
//! totals (system calls and allocator probes).
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
};
use profiler_common::{
    COMM_LEN, CONTROL_ENTRIES, IoPending, OffCpuStart, PendingWalk, ProcessMemory, RUNQ_SLOTS,
    STACK_ID_NONE, TARGET_MAP_ENTRIES, THREAD_MAP_ENTRIES, TargetFlags, ThreadState, counter,
    tid_bit, tid_byte,
};

/// Non-zero when user stacks are walked with unwind tables (`unwind`) instead of frame pointers.
#[unsafe(no_mangle)]
pub(crate) static UNWIND_WITH_TABLES: u32 = 0;

/// Processes (tgid) being profiled, with their `TargetFlags`.
#[map]
pub(crate) static TARGETS: HashMap<u32, TargetFlags> =
    HashMap::with_max_entries(TARGET_MAP_ENTRIES, 0);

/// Run control set by the collector (`CONTROL_*` indices): which map of each double-buffered
/// pair to write, the first sample's time, the attach time.
#[map]
pub(crate) static CONTROL: Array<u64> = Array::with_max_entries(CONTROL_ENTRIES, 0);

/// Losses and activity, per CPU (`counter` indices).
#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Per target thread: its current off-CPU period and run-queue statistics.
#[map]
pub(crate) static THREADS: HashMap<u32, ThreadState> =
    HashMap::with_max_entries(THREAD_MAP_ENTRIES, 0);

/// The tids that have (or had) a `THREADS` entry: most switches of a busy machine are no
/// target's, known from two words without a hash lookup. One map per writer, since the
/// collector rewrites a word whole: a bit per tid for the threads the collector finds, a byte
/// per tid for those the fork program adds (built from Rust it has no atomics; a byte is stored
/// whole). Sized
/// by the loader for the system's `pid_max`; a tid past either means "may be". Not cleared
/// during a run: a stale mark costs a lookup, nothing more.
#[map]
static TIDS_FOUND: Array<u64> = Array::with_max_entries(1, 0);
#[map]
static TIDS_FORKED: Array<u64> = Array::with_max_entries(1, 0);

/// Whether thread `tid` may be a target thread (else it certainly is not).
#[inline(always)]
pub(crate) fn may_be_target_thread(tid: u32) -> bool {
    let (word, bit) = tid_bit(tid);
    if TIDS_FOUND.get(word).is_none_or(|&word| word & bit != 0) {
        return true;
    }
    // Byte `byte` of the word as the fork program stored it: the object is little-endian
    // (bpfel). Shifted, not indexed: a byte array indexed by a variable took the scheduler
    // program's verification from 1 s to 8.
    let (word, byte) = tid_byte(tid);
    TIDS_FORKED
        .get(word)
        .is_none_or(|&word| (word >> (byte * 8)) & 0xff != 0)
}

/// Marks a thread a fork just made, `tid`, as one that may be a target thread.
#[inline(always)]
pub(crate) fn mark_forked_thread(tid: u32) {
    let (word, byte) = tid_byte(tid);
    if let Some(word) = TIDS_FORKED.get_ptr_mut(word) {
        // SAFETY: one byte of a map value; others' bytes are left as they are.
        unsafe { *word.cast::<u8>().add(byte as usize) = 1 };
    }
}

/// Initial value of a `THREADS` entry (too large to build on the BPF stack).
pub(crate) static THREAD_ZERO: ThreadState = ThreadState {
    off_cpu: OffCpuStart {
        start_ns: 0,
        runnable_ns: 0,
        tgid: 0,
        user_stack_id: STACK_ID_NONE,
        kernel_stack_id: STACK_ID_NONE,
        state: 0,
        comm: [0; COMM_LEN],
    },
    pending: PendingWalk {
        total_ns: 0,
        stack_ns: 0,
        user_sp: 0,
        user_ip: 0,
        kernel_stack_id: STACK_ID_NONE,
        state: 0,
    },
    exited: 0,
    _pad: 0,
    run_queue_count: 0,
    run_queue_total_ns: 0,
    run_queue_max_ns: 0,
    run_queue_slots: [0; RUNQ_SLOTS],
    // Born during the run: the kernel's counts start at 0 too.
    sched_pcount: 0,
    sched_run_delay_ns: 0,
    io: IoPending {
        start_ns: 0,
        args: [0; 2],
        call: 0,
        _pad: 0,
    },
};

/// Memory activity per process, per CPU, read by the collector for the memory timeline.
/// Allocated as processes appear: made up front, its per-CPU values were 8192 allocations of
/// per-CPU memory, 6 ms of every start-up.
#[map]
pub(crate) static PROCESS_MEMORY: PerCpuHashMap<u32, ProcessMemory> =
    PerCpuHashMap::with_max_entries(TARGET_MAP_ENTRIES, BPF_F_NO_PREALLOC);
