//! eBPF programs of the profiler.
//!
//! Kept small on purpose: filter to the target processes, aggregate what can be aggregated in
//! the kernel, count every loss. Everything else happens in userspace.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_user, bpf_probe_read_user_str_bytes,
    },
    macros::{btf_tracepoint, map, perf_event, tracepoint, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, StackTrace},
    programs::{
        BtfTracePointContext, PerfEventContext, ProbeContext, RetProbeContext, TracePointContext,
        tracing::StackIdContext,
    },
};
use aya_log_ebpf::debug;

mod unwind;
use profiler_common::{
    ALLOC_SITE_ENTRIES, AllocPending, AllocSite, AllocStats, BlockKey, BlockPending, BlockRequest,
    BlockStats, COMM_LEN, CONTROL_ACTIVE_SAMPLE_MAP, CONTROL_ATTACH_NS, CONTROL_ENTRIES,
    CONTROL_FIRST_SAMPLE_NS, FdKey, IO_MAP_ENTRIES, IoKey, IoPending, IoTotal, LATENCY_SLOTS,
    LIVE_MAP_ENTRIES, LiveAlloc, LiveKey, MAX_IO_CALLS, OFFCPU_MAP_ENTRIES,
    OFFCPU_STATE_BEFORE_ATTACH, OFFCPU_STATE_NEW_THREAD, OFFCPU_STATE_PREEMPTED, OffCpuKey,
    OffCpuStart, OffCpuTime, OpenEvent, ProcessEvent, ProcessMemory, RECORDING_STOPPED, RUNQ_SLOTS,
    SAMPLE_MAP_ENTRIES, STACK_ID_COLLISION, STACK_ID_ERROR, STACK_ID_NONE, STACK_MAP_ENTRIES,
    SYSCALL_TABLE_ENTRIES, SampleKey, TARGET_FOLLOW_CHILDREN, TARGET_MAP_ENTRIES,
    THREAD_MAP_ENTRIES, TargetFlags, ThreadState, alloc_layout, counter, floor_log2, inode_file_id,
    io_fields, io_kind, latency_slot, process_event, tracepoint_fields,
};

/// Offsets of `pid` and `tgid` in `struct task_struct`, read from the kernel's BTF by the
/// collector.
#[unsafe(no_mangle)]
static TASK_STRUCT_PID_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static TASK_STRUCT_TGID_OFFSET: u32 = 0;
/// Offsets that lead from the current task to an fd's inode, from the kernel's BTF:
/// `task_struct.files`, `files_struct.fdt`, `fdtable.max_fds`, `fdtable.fd`, `file.f_inode`,
/// `inode.i_mode`, `inode.i_ino`.
#[unsafe(no_mangle)]
static FD_INODE_OFFSETS: [u32; 7] = [0; 7];

/// Non-zero when the scheduler programs run: new target threads then get a `THREADS` entry.
#[unsafe(no_mangle)]
static TRACK_THREADS: u32 = 0;
/// Non-zero when user stacks are walked with unwind tables (`unwind`) instead of frame pointers.
#[unsafe(no_mangle)]
static UNWIND_WITH_TABLES: u32 = 0;
/// Off-CPU periods shorter than this are counted but not recorded, ns.
#[unsafe(no_mangle)]
static MIN_BLOCK_NS: u64 = 0;

const EEXIST: i32 = 17;
const EFAULT: i32 = 14;

/// Processes (tgid) being profiled, with their `TargetFlags`.
#[map]
static TARGETS: HashMap<u32, TargetFlags> = HashMap::with_max_entries(TARGET_MAP_ENTRIES, 0);

/// User and kernel stacks, deduplicated by the kernel.
#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(STACK_MAP_ENTRIES, 0);

/// Sample counts, double-buffered: programs write the map `CONTROL[0]` names while the
/// collector drains the other, so no increment is lost to a concurrent read-and-clear.
#[map]
static SAMPLES_0: HashMap<SampleKey, u64> = HashMap::with_max_entries(SAMPLE_MAP_ENTRIES, 0);
#[map]
static SAMPLES_1: HashMap<SampleKey, u64> = HashMap::with_max_entries(SAMPLE_MAP_ENTRIES, 0);

#[map]
static CONTROL: Array<u64> = Array::with_max_entries(CONTROL_ENTRIES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map]
static PROCESS_EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// Per target thread: its current off-CPU period and run-queue statistics.
#[map]
static THREADS: HashMap<u32, ThreadState> = HashMap::with_max_entries(THREAD_MAP_ENTRIES, 0);

/// Off-CPU time per thread, stacks and state; double-buffered like the sample maps.
#[map]
static OFFCPU_0: HashMap<OffCpuKey, OffCpuTime> = HashMap::with_max_entries(OFFCPU_MAP_ENTRIES, 0);
#[map]
static OFFCPU_1: HashMap<OffCpuKey, OffCpuTime> = HashMap::with_max_entries(OFFCPU_MAP_ENTRIES, 0);

/// Initial value of a `THREADS` entry (too large to build on the BPF stack).
static THREAD_ZERO: ThreadState = ThreadState {
    off_cpu: OffCpuStart {
        start_ns: 0,
        runnable_ns: 0,
        tgid: 0,
        user_stack_id: STACK_ID_NONE,
        kernel_stack_id: STACK_ID_NONE,
        state: 0,
        comm: [0; COMM_LEN],
    },
    exited: 0,
    _pad: 0,
    run_queue_count: 0,
    run_queue_total_ns: 0,
    run_queue_max_ns: 0,
    run_queue_slots: [0; RUNQ_SLOTS],
};

#[inline(always)]
pub(crate) fn bump(index: u32) {
    if let Some(count) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and programs do not preempt each other on one CPU.
        unsafe { *count += 1 };
    }
}

#[inline(always)]
pub(crate) fn add_to_counter(index: u32, value: u64) {
    if let Some(count) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and programs do not preempt each other on one CPU.
        unsafe { *count += value };
    }
}

/// Which of a double-buffered pair of maps to write, or `RECORDING_STOPPED`.
#[inline(always)]
fn active_map() -> u64 {
    CONTROL.get(CONTROL_ACTIVE_SAMPLE_MAP).copied().unwrap_or(0)
}

#[inline(always)]
fn current_tgid_tid() -> (u32, u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    ((pid_tgid >> 32) as u32, pid_tgid as u32)
}

/// Turns a `bpf_get_stackid` result into a stack id, counting what went wrong.
#[inline(always)]
fn stack_id(result: Result<i64, i32>, collisions: u32, errors: u32) -> i32 {
    match result {
        Ok(id) => id as i32,
        // No stack of this kind at this point (user-mode sample has no kernel stack).
        Err(err) if err == -EFAULT => STACK_ID_NONE,
        Err(err) if err == -EEXIST => {
            bump(collisions);
            STACK_ID_COLLISION
        }
        Err(_) => {
            bump(errors);
            STACK_ID_ERROR
        }
    }
}

/// The current thread's user stack id: walked with the unwind tables when the collector
/// loaded them (ids in `USER_STACKS`), else by the kernel's frame-pointer walker (`STACKS`).
#[inline(always)]
fn user_stack<C: StackIdContext>(
    ctx: &C,
    tgid: u32,
    scratch_slot: u32,
    collisions: u32,
    errors: u32,
) -> i32 {
    // SAFETY: read_volatile keeps the loader-set constant from being folded at compile time.
    if unsafe { core::ptr::read_volatile(&UNWIND_WITH_TABLES) } != 0 {
        unwind::user_stack_id(tgid, scratch_slot)
    } else {
        stack_id(
            ctx.get_stackid(&STACKS, u64::from(BPF_F_USER_STACK)),
            collisions,
            errors,
        )
    }
}

#[inline(always)]
fn add_sample(samples: &HashMap<SampleKey, u64>, key: &SampleKey) {
    match samples.get_ptr_mut(key) {
        // SAFETY: the key holds the tid, and a thread runs on one CPU at a time, so nothing
        // else writes this value concurrently.
        Some(count) => unsafe { *count += 1 },
        None => {
            if samples.insert(key, 1, u64::from(BPF_NOEXIST)).is_err() {
                bump(counter::SAMPLE_MAP_FULL);
            }
        }
    }
}

/// CPU-clock sample on one CPU: count it against the running thread's stacks if it is a target.
#[perf_event]
pub fn cpu_sample(ctx: PerfEventContext) -> u32 {
    let (tgid, tid) = current_tgid_tid();
    // tid 0 is the idle task.
    if tid == 0 || unsafe { TARGETS.get(tgid) }.is_none() {
        return 0;
    }
    let active = active_map();
    if active == RECORDING_STOPPED {
        return 0;
    }
    bump(counter::CPU_SAMPLES);
    if let Some(first) = CONTROL.get_ptr_mut(CONTROL_FIRST_SAMPLE_NS) {
        // SAFETY: a racing write from another CPU stores a time just as early; either is fine.
        unsafe {
            if *first == 0 {
                *first = bpf_ktime_get_ns();
            }
        }
    }
    let user_stack_id = user_stack(
        &ctx,
        tgid,
        unwind::SCRATCH_NMI,
        counter::USER_STACK_COLLISIONS,
        counter::USER_STACK_ERRORS,
    );
    let kernel_stack_id = stack_id(
        ctx.get_stackid(&STACKS, 0),
        counter::KERNEL_STACK_COLLISIONS,
        counter::KERNEL_STACK_ERRORS,
    );
    let key = SampleKey {
        tgid,
        tid,
        user_stack_id,
        kernel_stack_id,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    };
    // Two call sites, one per map, keep each map lookup bound to a single map for the verifier.
    if active == 0 {
        add_sample(&SAMPLES_0, &key);
    } else {
        add_sample(&SAMPLES_1, &key);
    }
    0
}

pub(crate) fn send_process_event(kind: u32, pid: u32, parent_pid: u32) {
    let Some(mut entry) = PROCESS_EVENTS.reserve::<ProcessEvent>(0) else {
        bump(counter::PROCESS_EVENTS_LOST);
        return;
    };
    entry.write(ProcessEvent {
        kind,
        pid,
        parent_pid,
        _pad: 0,
        time_ns: unsafe { bpf_ktime_get_ns() },
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    });
    entry.submit(0);
}

/// Reads a `u32` field of a kernel `task_struct` at a loader-set offset.
#[inline(always)]
fn task_field(task: *const u8, offset: &'static u32) -> Option<u32> {
    // SAFETY: read_volatile keeps the loader-set constant from being folded at compile time.
    let offset = unsafe { core::ptr::read_volatile(offset) };
    // SAFETY: `bpf_probe_read_kernel` checks the address.
    unsafe { bpf_probe_read_kernel(task.wrapping_add(offset as usize).cast::<u32>()) }.ok()
}

/// A new thread of a target: with the scheduler programs running it is a target thread from
/// now on, waiting for its first run.
#[inline(always)]
fn add_new_thread(tid: u32, tgid: u32) {
    // SAFETY: read_volatile keeps the loader-set constant from being folded at compile time.
    if unsafe { core::ptr::read_volatile(&TRACK_THREADS) } == 0 {
        return;
    }
    // Any stale entry under this tid is a thread that exited before the collector took it.
    if THREADS.insert(tid, &THREAD_ZERO, 0).is_err() {
        bump(counter::OFFCPU_MAP_FULL);
        return;
    }
    let Some(thread) = THREADS.get_ptr_mut(tid) else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the thread has not run yet; nothing else touches its entry.
    unsafe {
        let off_cpu = &mut (*thread).off_cpu;
        off_cpu.start_ns = now;
        off_cpu.runnable_ns = now;
        off_cpu.tgid = tgid;
        off_cpu.state = OFFCPU_STATE_NEW_THREAD;
    }
}

/// A task forked. A new thread of a target is a target thread; a new process forked by a
/// followed target is a target too. Anything else (a child of a target that is not followed)
/// is not.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    let (parent_tgid, _) = current_tgid_tid();
    let Some(&flags) = (unsafe { TARGETS.get(parent_tgid) }) else {
        return 0;
    };
    let child: *const u8 = ctx.arg(1);
    let (Some(child_tid), Some(child_tgid)) = (
        task_field(child, &TASK_STRUCT_PID_OFFSET),
        task_field(child, &TASK_STRUCT_TGID_OFFSET),
    ) else {
        return 0;
    };
    if child_tgid == parent_tgid {
        add_new_thread(child_tid, child_tgid);
        return 0;
    }
    if flags & TARGET_FOLLOW_CHILDREN == 0 {
        return 0;
    }
    if TARGETS.insert(child_tgid, flags, 0).is_err() {
        bump(counter::TARGET_MAP_FULL);
        return 0;
    }
    add_new_thread(child_tid, child_tgid);
    debug!(
        &ctx,
        "following new process {} forked by {}", child_tgid, parent_tgid
    );
    send_process_event(process_event::FORK, child_tgid, parent_tgid);
    0
}

/// A target executed a new program: the collector must read its new memory map.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    let (tgid, _) = current_tgid_tid();
    if unsafe { TARGETS.get(tgid) }.is_none() {
        return 0;
    }
    // The thread's name changes with the program: read it again at its next switch-out.
    if let Some(thread) = THREADS.get_ptr_mut(tgid) {
        // SAFETY: the thread is running here; its switch programs cannot run concurrently.
        unsafe { (*thread).off_cpu.comm[0] = 0 };
    }
    unwind::forget_process(tgid);
    debug!(&ctx, "target {} executed a new program", tgid);
    send_process_event(process_event::EXEC, tgid, tgid);
    0
}

#[inline(always)]
fn add_offcpu(times: &HashMap<OffCpuKey, OffCpuTime>, key: &OffCpuKey, ns: u64) {
    match times.get_ptr_mut(key) {
        // SAFETY: the key holds the tid, and a thread switches in on one CPU at a time.
        Some(time) => unsafe {
            (*time).total_ns += ns;
            (*time).count += 1;
        },
        None => {
            let time = OffCpuTime {
                total_ns: ns,
                count: 1,
            };
            if times.insert(key, time, u64::from(BPF_NOEXIST)).is_err() {
                bump(counter::OFFCPU_MAP_FULL);
            }
        }
    }
}

/// `TASK_REPORT` bits of `sched_switch`'s `prev_state`: exited (`X`, `Z`).
const STATE_EXITED: u64 = 0x10 | 0x20;
/// `TASK_REPORT_MAX`, set in `prev_state` when the task was preempted.
const STATE_PREEMPTED: u64 = 0x100;

/// Reads a field of a classic tracepoint record at a verified constant offset.
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: the collector checked the offsets against tracefs before loading, and the
    // verifier bounds-checks context reads.
    unsafe { *(ctx.as_ptr() as *const u8).add(offset).cast::<T>() }
}

/// The live `THREADS` entry of a target thread, if it is one.
#[inline(always)]
fn target_thread(tid: u32) -> Option<*mut ThreadState> {
    let thread = THREADS.get_ptr_mut(tid)?;
    // SAFETY: plain read of a map value.
    (unsafe { (*thread).exited } == 0).then_some(thread)
}

/// A target thread leaves the CPU: remember when, where and why.
///
/// Every target thread has a `THREADS` entry (made by the collector for threads that existed
/// at attach, at fork for later ones), so one lookup both filters and finds.
#[inline(always)]
fn switch_out(ctx: &TracePointContext, now: u64, prev_state: u64) {
    let (tgid, tid) = current_tgid_tid();
    if tid == 0 {
        return;
    }
    let Some(thread) = target_thread(tid) else {
        return;
    };
    if prev_state & STATE_EXITED != 0 {
        // An exiting thread is gone, not off-CPU; the collector keeps its run-queue figures.
        // SAFETY: only this thread's own switches and wakeups touch its entry.
        unsafe {
            (*thread).off_cpu.start_ns = 0;
            (*thread).exited = 1;
        }
        return;
    }
    // Preempted, or still running: runnable, waiting for a CPU from now on.
    let preempted = prev_state & STATE_PREEMPTED != 0 || prev_state == 0;
    let user_stack_id = user_stack(
        ctx,
        tgid,
        unwind::SCRATCH_TASK,
        counter::OFFCPU_STACK_COLLISIONS,
        counter::USER_STACK_ERRORS,
    );
    let kernel_stack_id = stack_id(
        ctx.get_stackid(&STACKS, 0),
        counter::OFFCPU_STACK_COLLISIONS,
        counter::KERNEL_STACK_ERRORS,
    );
    // SAFETY: only this thread's own switches and wakeups touch its entry.
    unsafe {
        let off_cpu = &mut (*thread).off_cpu;
        off_cpu.start_ns = now;
        off_cpu.runnable_ns = if preempted { now } else { 0 };
        off_cpu.tgid = tgid;
        off_cpu.user_stack_id = user_stack_id;
        off_cpu.kernel_stack_id = kernel_stack_id;
        off_cpu.state = if preempted {
            OFFCPU_STATE_PREEMPTED
        } else {
            prev_state as u32
        };
        // The name is read once per thread: a copy at every switch costs more than renames
        // (rare, and visible in CPU samples) are worth.
        if off_cpu.comm[0] == 0 {
            off_cpu.comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
        }
    }
}

/// A thread gets the CPU back: if it is a target thread, account its off-CPU period and
/// run-queue delay.
#[inline(always)]
fn switch_in(now: u64, tid: u32, active: u64) {
    let Some(thread) = target_thread(tid) else {
        return;
    };
    // SAFETY: only this thread's own switches and wakeups touch its entry.
    let start = unsafe { (*thread).off_cpu };
    let tgid = start.tgid;
    let (key, since) = if start.start_ns != 0 {
        let key = OffCpuKey {
            tgid,
            tid,
            user_stack_id: start.user_stack_id,
            kernel_stack_id: start.kernel_stack_id,
            state: start.state,
            _pad: 0,
            comm: start.comm,
        };
        (key, start.start_ns)
    } else {
        // Off-CPU since before the programs were attached: stack unknown.
        let key = OffCpuKey {
            tgid,
            tid,
            user_stack_id: STACK_ID_NONE,
            kernel_stack_id: STACK_ID_NONE,
            state: OFFCPU_STATE_BEFORE_ATTACH,
            _pad: 0,
            comm: start.comm,
        };
        (key, CONTROL.get(CONTROL_ATTACH_NS).copied().unwrap_or(now))
    };
    let off_cpu = now.saturating_sub(since);
    // SAFETY: read_volatile keeps the loader-set constant from being folded at compile time.
    let min_block = unsafe { core::ptr::read_volatile(&MIN_BLOCK_NS) };
    if off_cpu < min_block {
        bump(counter::OFFCPU_FILTERED);
        add_to_counter(counter::OFFCPU_FILTERED_NS, off_cpu);
    } else if active == 0 {
        add_offcpu(&OFFCPU_0, &key, off_cpu);
    } else {
        add_offcpu(&OFFCPU_1, &key, off_cpu);
    }
    // SAFETY: as above.
    unsafe {
        (*thread).off_cpu.start_ns = 0;
        (*thread).off_cpu.runnable_ns = 0;
        if start.runnable_ns != 0 {
            let delay = now.saturating_sub(start.runnable_ns);
            (*thread).run_queue_count += 1;
            (*thread).run_queue_total_ns += delay;
            if delay > (*thread).run_queue_max_ns {
                (*thread).run_queue_max_ns = delay;
            }
            if let Some(bucket) = (*thread)
                .run_queue_slots
                .get_mut(floor_log2(delay / 1000) as usize)
            {
                *bucket += 1;
            }
        }
    }
}

/// Every context switch: the outgoing target thread starts an off-CPU period, the incoming one
/// ends its own. A classic tracepoint, not a BTF one: the kernel then walks stacks from the
/// tracepoint itself rather than from inside the BPF program, a few frames (and a good part of
/// the cost) fewer.
#[tracepoint(category = "sched", name = "sched_switch")]
pub fn sched_switch(ctx: TracePointContext) -> u32 {
    let active = active_map();
    if active == RECORDING_STOPPED {
        return 0;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    switch_out(
        &ctx,
        now,
        field::<i64>(&ctx, tracepoint_fields::SWITCH_PREV_STATE) as u64,
    );
    let next: i32 = field(&ctx, tracepoint_fields::SWITCH_NEXT_PID);
    if next > 0 {
        switch_in(now, next as u32, active);
    }
    0
}

/// A target thread becomes runnable: its run-queue delay starts.
#[tracepoint(category = "sched", name = "sched_wakeup")]
pub fn sched_wakeup(ctx: TracePointContext) -> u32 {
    let tid: i32 = field(&ctx, tracepoint_fields::WAKEUP_PID);
    if let Some(thread) = target_thread(tid as u32)
        && active_map() != RECORDING_STOPPED
    {
        let now = unsafe { bpf_ktime_get_ns() };
        // SAFETY: only this thread's own switches and wakeups touch its entry.
        unsafe {
            if (*thread).off_cpu.runnable_ns == 0 {
                (*thread).off_cpu.runnable_ns = now;
            }
        }
    }
    0
}

/// System calls the I/O programs watch: number → `kind << 8 | index`, 0 for the rest. Filled by
/// the collector from its per-architecture table.
#[map]
static SYSCALLS: Array<u32> = Array::with_max_entries(SYSCALL_TABLE_ENTRIES, 0);

/// I/O calls in progress, by tid. One entry per thread, reused call after call (an update in
/// place costs a fraction of an insertion and a deletion); least recently used entries, of
/// threads long gone, make room for new ones.
#[map]
static IO_PENDING: LruHashMap<u32, IoPending> = LruHashMap::with_max_entries(IO_MAP_ENTRIES, 0);

/// Which file each fd of a target names: its open time, the id the collector knows it by.
#[map]
static FILES: HashMap<FdKey, u64> = HashMap::with_max_entries(IO_MAP_ENTRIES, 0);

/// I/O totals per thread, stack, call and file; double-buffered like the sample maps.
#[map]
static IO_0: HashMap<IoKey, IoTotal> = HashMap::with_max_entries(IO_MAP_ENTRIES, 0);
#[map]
static IO_1: HashMap<IoKey, IoTotal> = HashMap::with_max_entries(IO_MAP_ENTRIES, 0);

/// Latency histogram per call (`index * LATENCY_SLOTS + slot`), per CPU so no update races.
#[map]
static IO_LATENCY: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(MAX_IO_CALLS * LATENCY_SLOTS, 0);

/// Longest call per call index, ns, per CPU.
#[map]
static IO_MAX: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_IO_CALLS, 0);

/// Files opened by targets, with their paths.
#[map]
static OPEN_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Block requests issued by target threads, in flight.
#[map]
static BLOCK_PENDING: HashMap<BlockRequest, BlockPending> =
    HashMap::with_max_entries(IO_MAP_ENTRIES, 0);

/// Block request statistics per device and operation, per CPU (completions of one device
/// run on several CPUs at once).
#[map]
static BLOCK_STATS: PerCpuHashMap<BlockKey, BlockStats> = PerCpuHashMap::with_max_entries(1024, 0);

/// The `SYSCALLS` value of system call `id`, if it is one the I/O programs watch.
#[inline(always)]
fn io_call(id: i64) -> Option<u32> {
    if !(0..i64::from(SYSCALL_TABLE_ENTRIES)).contains(&id) {
        return None;
    }
    SYSCALLS.get(id as u32).copied().filter(|&call| call != 0)
}

/// A system call starts: for an I/O call of a target thread, note when and on what.
#[tracepoint(category = "raw_syscalls", name = "sys_enter")]
pub fn sys_enter(ctx: TracePointContext) -> u32 {
    let Some(call) = io_call(field(&ctx, io_fields::SYSCALL_ID)) else {
        return 0;
    };
    let (tgid, tid) = current_tgid_tid();
    if unsafe { TARGETS.get(tgid) }.is_none() || active_map() == RECORDING_STOPPED {
        return 0;
    }
    if call >> 8 < io_kind::MMAP {
        bump(counter::IO_CALLS);
    }
    let fd: u64 = field(&ctx, io_fields::SYSCALL_ARGS);
    // A close's file is gone by the exit: identify it now (kept in the unused second argument).
    let second = if call >> 8 == io_kind::CLOSE {
        fd_inode(fd as i32).map_or(0, |(mode, inode)| inode_file_id(mode, inode))
    } else {
        field(&ctx, io_fields::SYSCALL_ARGS + 8)
    };
    let pending = IoPending {
        start_ns: unsafe { bpf_ktime_get_ns() },
        args: [fd, second],
        call,
        _pad: 0,
    };
    match IO_PENDING.get_ptr_mut(tid) {
        // SAFETY: the entry of the current thread, which is here and nowhere else.
        Some(entry) => unsafe { *entry = pending },
        None => {
            if IO_PENDING.insert(tid, pending, 0).is_err() {
                bump(counter::IO_PENDING_FULL);
            }
        }
    }
    0
}

#[inline(always)]
fn add_io(totals: &HashMap<IoKey, IoTotal>, key: &IoKey, ns: u64, bytes: u64, error: bool) {
    match totals.get_ptr_mut(key) {
        // SAFETY: the key holds the tid, and a thread is in one system call at a time.
        Some(total) => unsafe {
            (*total).count += 1;
            (*total).total_ns += ns;
            (*total).bytes += bytes;
            (*total).errors += u64::from(error);
        },
        None => {
            let total = IoTotal {
                count: 1,
                total_ns: ns,
                bytes,
                errors: u64::from(error),
            };
            if totals.insert(key, total, u64::from(BPF_NOEXIST)).is_err() {
                bump(counter::IO_MAP_FULL);
            }
        }
    }
}

/// Reads a kernel value at `base + offset`.
#[inline(always)]
fn read_at<T>(base: *const u8, offset: u32) -> Option<T> {
    // SAFETY: `bpf_probe_read_kernel` checks the address.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }.ok()
}

/// Type and number of the inode behind the current task's `fd`, from its file table.
#[inline(always)]
fn fd_inode(fd: i32) -> Option<(u16, u64)> {
    // SAFETY: read_volatile keeps the loader-set constants from being folded at compile time.
    let [files, fdt, max_fds, fd_array, f_inode, i_mode, i_ino] =
        unsafe { core::ptr::read_volatile(&FD_INODE_OFFSETS) };
    if fd < 0 {
        return None;
    }
    let task = unsafe { aya_ebpf::helpers::bpf_get_current_task() } as *const u8;
    let files: *const u8 = read_at(task, files)?;
    let fdt: *const u8 = read_at(files, fdt)?;
    let max: u32 = read_at(fdt, max_fds)?;
    if fd as u32 >= max {
        return None;
    }
    let fd_array: *const u8 = read_at(fdt, fd_array)?;
    let file: *const u8 = read_at(fd_array, fd as u32 * 8)?;
    let inode: *const u8 = read_at(file, f_inode)?;
    Some((read_at(inode, i_mode)?, read_at(inode, i_ino)?))
}

/// Streams a file a target just opened, with the path it passed.
#[inline(always)]
fn send_open(tgid: u32, fd: i32, open_ns: u64, dir_fd: i32, path: u64) {
    let Some(mut entry) = OPEN_EVENTS.reserve::<OpenEvent>(0) else {
        bump(counter::OPEN_EVENTS_LOST);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: the reservation is ours until submitted; every field is written before that.
    unsafe {
        (*event).tgid = tgid;
        (*event).fd = fd;
        (*event).open_ns = open_ns;
        (*event).dir_fd = dir_fd;
        (*event)._pad = 0;
        if bpf_probe_read_user_str_bytes(path as *const u8, &mut (*event).path).is_err() {
            (*event).path[0] = 0;
        }
    }
    entry.submit(0);
}

/// A memory system call of a target returned: add it to its process's totals.
#[inline(always)]
fn record_memory_call(tgid: u32, kind: u32, length: u64, ret: i64) {
    if ret < 0 {
        return;
    }
    let mut growth = 0i64;
    if kind == io_kind::BRK {
        let end = ret as u64;
        if let Some(last) = BRK_END.get_ptr_mut(&tgid) {
            // SAFETY: one u64 per process; a lost race costs one brk's growth.
            unsafe {
                growth = end as i64 - *last as i64;
                *last = end;
            }
        } else {
            let _ = BRK_END.insert(&tgid, &end, 0);
        }
    }
    let Some(memory) = process_memory(tgid) else {
        return;
    };
    // SAFETY: this CPU's copy.
    unsafe {
        match kind {
            io_kind::MMAP => {
                (*memory).mmap_count += 1;
                (*memory).mmap_bytes += length;
            }
            io_kind::MUNMAP => {
                (*memory).munmap_count += 1;
                (*memory).munmap_bytes += length;
            }
            _ => {
                (*memory).brk_count += 1;
                (*memory).brk_bytes += growth;
            }
        }
    }
}

/// A system call returns: account an I/O call of a target thread (time, bytes, file, stack).
#[tracepoint(category = "raw_syscalls", name = "sys_exit")]
pub fn sys_exit(ctx: TracePointContext) -> u32 {
    if io_call(field(&ctx, io_fields::SYSCALL_ID)).is_none() {
        return 0;
    }
    let (tgid, tid) = current_tgid_tid();
    let Some(entry) = IO_PENDING.get_ptr_mut(tid) else {
        return 0;
    };
    // SAFETY: the entry of the current thread, which is here and nowhere else.
    let pending = unsafe { *entry };
    if pending.start_ns == 0 {
        return 0;
    }
    // SAFETY: as above.
    unsafe { (*entry).start_ns = 0 };
    let active = active_map();
    if active == RECORDING_STOPPED {
        return 0;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let ns = now.saturating_sub(pending.start_ns);
    let ret: i64 = field(&ctx, io_fields::SYSCALL_RET);
    let kind = pending.call >> 8;
    let index = pending.call & 0xff;
    if kind >= io_kind::MMAP {
        record_memory_call(tgid, kind, pending.args[1], ret);
        return 0;
    }
    let mut fd = pending.args[0] as i32;
    let mut file_id = 0;
    if kind == io_kind::OPEN || kind == io_kind::OPEN_AT {
        if ret >= 0 {
            fd = ret as i32;
            file_id = now;
            let _ = FILES.insert(FdKey { tgid, fd }, now, 0);
            let (dir_fd, path) = if kind == io_kind::OPEN_AT {
                (pending.args[0] as i32, pending.args[1])
            } else {
                (-100, pending.args[0])
            };
            send_open(tgid, fd, now, dir_fd, path);
        } else {
            fd = -1;
        }
    } else {
        let key = FdKey { tgid, fd };
        if let Some(&id) = unsafe { FILES.get(&key) } {
            file_id = id;
        } else if kind == io_kind::CLOSE {
            file_id = pending.args[1];
        } else if let Some((mode, inode)) = fd_inode(fd) {
            // Not opened during the run: a pipe, a socket, a dup, or older than the attach.
            file_id = inode_file_id(mode, inode);
        }
        if kind == io_kind::CLOSE && ret == 0 {
            let _ = FILES.remove(&key);
        }
    }
    let user_stack_id = user_stack(
        &ctx,
        tgid,
        unwind::SCRATCH_TASK,
        counter::USER_STACK_COLLISIONS,
        counter::USER_STACK_ERRORS,
    );
    let key = IoKey {
        tgid,
        tid,
        user_stack_id,
        call: index,
        fd,
        _pad: 0,
        file_id,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    };
    let bytes = if kind == io_kind::TRANSFER && ret > 0 {
        ret as u64
    } else {
        0
    };
    if active == 0 {
        add_io(&IO_0, &key, ns, bytes, ret < 0);
    } else {
        add_io(&IO_1, &key, ns, bytes, ret < 0);
    }
    if index < MAX_IO_CALLS
        && let Some(slot) = IO_LATENCY.get_ptr_mut(index * LATENCY_SLOTS + latency_slot(ns))
    {
        // SAFETY: per-CPU slot, and programs do not preempt each other on one CPU.
        unsafe { *slot += 1 };
    }
    if let Some(max) = IO_MAX.get_ptr_mut(index) {
        // SAFETY: as above.
        unsafe {
            if ns > *max {
                *max = ns;
            }
        }
    }
    0
}

/// A block request is issued: time it if a target thread issued it.
#[tracepoint(category = "block", name = "block_rq_issue")]
pub fn block_rq_issue(ctx: TracePointContext) -> u32 {
    let (tgid, _) = current_tgid_tid();
    if unsafe { TARGETS.get(tgid) }.is_none() || active_map() == RECORDING_STOPPED {
        return 0;
    }
    let dev: u32 = field(&ctx, io_fields::BLOCK_DEV);
    let request = BlockRequest {
        dev,
        _pad: 0,
        sector: field(&ctx, io_fields::BLOCK_SECTOR),
    };
    let pending = BlockPending {
        start_ns: unsafe { bpf_ktime_get_ns() },
        bytes: u64::from(field::<u32>(&ctx, io_fields::BLOCK_BYTES)),
        key: BlockKey {
            dev,
            rwbs: field(&ctx, io_fields::BLOCK_RWBS),
        },
    };
    if BLOCK_PENDING.insert(&request, &pending, 0).is_err() {
        bump(counter::BLOCK_PENDING_FULL);
    }
    0
}

/// A block request completes: if a target issued it, add it to its device's statistics.
#[tracepoint(category = "block", name = "block_rq_complete")]
pub fn block_rq_complete(ctx: TracePointContext) -> u32 {
    let request = BlockRequest {
        dev: field(&ctx, io_fields::BLOCK_DEV),
        _pad: 0,
        sector: field(&ctx, io_fields::BLOCK_SECTOR),
    };
    let Some(&pending) = (unsafe { BLOCK_PENDING.get(&request) }) else {
        return 0;
    };
    let _ = BLOCK_PENDING.remove(&request);
    let ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(pending.start_ns);
    match BLOCK_STATS.get_ptr_mut(&pending.key) {
        // SAFETY: this CPU's copy, and programs do not preempt each other on one CPU.
        Some(stats) => unsafe {
            (*stats).count += 1;
            (*stats).bytes += pending.bytes;
            (*stats).total_ns += ns;
            if ns > (*stats).max_ns {
                (*stats).max_ns = ns;
            }
        },
        None => {
            let stats = BlockStats {
                count: 1,
                bytes: pending.bytes,
                total_ns: ns,
                max_ns: ns,
            };
            let _ = BLOCK_STATS.insert(&pending.key, &stats, 0);
        }
    }
    0
}

/// Bytes between sampled allocations (`--alloc-sample`); 0 records every allocation.
#[unsafe(no_mangle)]
static ALLOC_SAMPLE_BYTES: u64 = 0;

/// Allocator calls in progress and each thread's sampling countdown, by tid.
#[map]
static ALLOC_PENDING: LruHashMap<u32, AllocPending> =
    LruHashMap::with_max_entries(IO_MAP_ENTRIES, 0);

/// Live allocations of the targets. Allocated on demand: a map of this size allocated up front
/// would take a hundred MiB.
#[map]
static LIVE: HashMap<LiveKey, LiveAlloc> =
    HashMap::with_max_entries(LIVE_MAP_ENTRIES, BPF_F_NO_PREALLOC);

/// Totals per allocation site, per CPU: a block is often freed on another CPU than the one
/// that allocated it, and BPF programs in Rust have no atomic add. Allocated on demand.
#[map]
static ALLOC_SITES: PerCpuHashMap<AllocSite, AllocStats> =
    PerCpuHashMap::with_max_entries(ALLOC_SITE_ENTRIES, BPF_F_NO_PREALLOC);

/// Names of the threads that allocate, noted when a thread starts a new allocation site:
/// short-lived threads are gone by the time the collector could read their names.
#[map]
static ALLOC_THREAD_NAMES: LruHashMap<u32, [u8; COMM_LEN]> =
    LruHashMap::with_max_entries(THREAD_MAP_ENTRIES, 0);

/// Memory activity per process, per CPU, read by the collector for the memory timeline.
#[map]
static PROCESS_MEMORY: PerCpuHashMap<u32, ProcessMemory> =
    PerCpuHashMap::with_max_entries(TARGET_MAP_ENTRIES, 0);

/// Last heap end returned by `brk`, per process.
#[map]
static BRK_END: HashMap<u32, u64> = HashMap::with_max_entries(TARGET_MAP_ENTRIES, 0);

const BPF_F_NO_PREALLOC: u32 = 1;

/// This CPU's memory totals of process `tgid`, created if new.
#[inline(always)]
fn process_memory(tgid: u32) -> Option<*mut ProcessMemory> {
    if let Some(memory) = PROCESS_MEMORY.get_ptr_mut(&tgid) {
        return Some(memory);
    }
    let _ = PROCESS_MEMORY.insert(&tgid, &ProcessMemory::default(), u64::from(BPF_NOEXIST));
    PROCESS_MEMORY.get_ptr_mut(&tgid)
}

/// Where an allocator was called from: the return address into its caller, which at the
/// entry of a function is on top of the stack (x86-64) or in the link register (arm64).
#[inline(always)]
fn caller_address(ctx: &ProbeContext) -> u64 {
    #[cfg(bpf_target_arch = "x86_64")]
    {
        // SAFETY: `regs` is the probe's register set; the read of user memory is checked.
        let sp = unsafe { (*ctx.regs).rsp };
        unsafe { bpf_probe_read_user(sp as *const u64) }.unwrap_or(0)
    }
    #[cfg(bpf_target_arch = "aarch64")]
    {
        // SAFETY: as above.
        unsafe { (*ctx.regs).regs[30] }
    }
    #[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
    {
        let _ = ctx;
        0
    }
}

/// An allocator function is entered (which one, and how it takes its arguments, is in the
/// attach cookie): note the size, the stack and the caller, unless sampling skips it.
#[uprobe]
pub fn alloc_enter(ctx: ProbeContext) -> u32 {
    let (tgid, tid) = current_tgid_tid();
    if unsafe { TARGETS.get(tgid) }.is_none() || active_map() == RECORDING_STOPPED {
        return 0;
    }
    bump(counter::ALLOC_CALLS);
    // SAFETY: the helper reads the cookie of the link that ran this program.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let arg = |n| ctx.arg::<u64>(n).unwrap_or(0);
    let (size, aux) = match cookie & 0xff {
        alloc_layout::SIZE0 => (arg(0), 0),
        alloc_layout::SIZE1 => (arg(1), 0),
        // An overflowing product makes the call fail: nothing is recorded then.
        alloc_layout::CALLOC => (arg(0).wrapping_mul(arg(1)), 0),
        alloc_layout::REALLOC => (arg(1), arg(0)),
        alloc_layout::REALLOCARRAY => (arg(1).wrapping_mul(arg(2)), arg(0)),
        alloc_layout::POSIX_MEMALIGN => (arg(2), arg(0)),
        _ => return 0,
    };
    let entry = match ALLOC_PENDING.get_ptr_mut(tid) {
        Some(entry) => entry,
        None => {
            let fresh = AllocPending {
                size: 0,
                aux: 0,
                ret_addr: 0,
                weight: 0,
                countdown: 0,
                user_stack_id: STACK_ID_NONE,
                cookie: 0,
            };
            let _ = ALLOC_PENDING.insert(tid, fresh, 0);
            let Some(entry) = ALLOC_PENDING.get_ptr_mut(tid) else {
                return 0;
            };
            entry
        }
    };
    // SAFETY: read_volatile keeps the loader-set constant from being folded at compile time.
    let sample_bytes = unsafe { core::ptr::read_volatile(&ALLOC_SAMPLE_BYTES) };
    // SAFETY: the entry of the current thread, which is here and nowhere else.
    unsafe {
        let weight = if sample_bytes == 0 || size >= sample_bytes {
            size
        } else {
            // About one allocation per `sample_bytes` allocated, standing for all of them.
            (*entry).countdown -= size as i64;
            if (*entry).countdown > 0 {
                0
            } else {
                (*entry).countdown = sample_bytes as i64;
                sample_bytes
            }
        };
        (*entry).size = size;
        (*entry).aux = aux;
        (*entry).cookie = cookie as u32;
        // A zero weight still lets a realloc's return free its old block.
        (*entry).weight = weight;
        if weight != 0 {
            (*entry).ret_addr = caller_address(&ctx);
            (*entry).user_stack_id = user_stack(
                &ctx,
                tgid,
                unwind::SCRATCH_TASK,
                counter::USER_STACK_COLLISIONS,
                counter::USER_STACK_ERRORS,
            );
        }
    }
    0
}

/// Forgets a live allocation that was freed, crediting its site.
#[inline(always)]
fn record_free(tgid: u32, ptr: u64, now: u64) {
    let key = LiveKey { tgid, _pad: 0, ptr };
    let Some(&live) = (unsafe { LIVE.get(&key) }) else {
        return;
    };
    let _ = LIVE.remove(&key);
    if let Some(stats) = ALLOC_SITES.get_ptr_mut(&live.site) {
        // SAFETY: this CPU's copy.
        unsafe {
            (*stats).free_count += 1;
            (*stats).free_bytes += live.bytes;
            (*stats).lifetime_ns += now.saturating_sub(live.time_ns);
        }
    }
    if let Some(memory) = process_memory(tgid) {
        // SAFETY: this CPU's copy.
        unsafe {
            (*memory).free_bytes += live.bytes;
            (*memory).free_count += 1;
        }
    }
}

/// Records a new live allocation and credits its site.
#[inline(always)]
fn record_alloc(tgid: u32, tid: u32, ptr: u64, pending: &AllocPending, now: u64) {
    let site = AllocSite {
        tgid,
        user_stack_id: pending.user_stack_id,
        ret_addr: pending.ret_addr,
        cookie: pending.cookie,
        tid,
    };
    let live = LiveAlloc {
        bytes: pending.weight,
        time_ns: now,
        site,
    };
    if LIVE
        .insert(&LiveKey { tgid, _pad: 0, ptr }, &live, 0)
        .is_err()
    {
        bump(counter::LIVE_MAP_FULL);
    }
    let stats = match ALLOC_SITES.get_ptr_mut(&site) {
        Some(stats) => Some(stats),
        None => {
            let _ = ALLOC_SITES.insert(&site, &AllocStats::default(), u64::from(BPF_NOEXIST));
            if let Ok(comm) = bpf_get_current_comm() {
                let _ = ALLOC_THREAD_NAMES.insert(&tid, &comm, 0);
            }
            ALLOC_SITES.get_ptr_mut(&site)
        }
    };
    match stats {
        // SAFETY: this CPU's copy.
        Some(stats) => unsafe {
            (*stats).alloc_count += 1;
            (*stats).alloc_bytes += pending.weight;
        },
        None => bump(counter::ALLOC_SITES_FULL),
    }
    if let Some(memory) = process_memory(tgid) {
        // SAFETY: this CPU's copy.
        unsafe {
            (*memory).alloc_bytes += pending.weight;
            (*memory).alloc_count += 1;
        }
    }
}

/// An allocator function returns: record the new block (and, for realloc, the old one's end).
#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    let (tgid, tid) = current_tgid_tid();
    let Some(entry) = ALLOC_PENDING.get_ptr_mut(tid) else {
        return 0;
    };
    // SAFETY: the entry of the current thread, which is here and nowhere else.
    let pending = unsafe { *entry };
    if pending.cookie == 0 {
        return 0;
    }
    // SAFETY: as above.
    unsafe { (*entry).cookie = 0 };
    if active_map() == RECORDING_STOPPED {
        return 0;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let ret: u64 = ctx.ret();
    let layout = u64::from(pending.cookie) & 0xff;
    let ptr = if layout == alloc_layout::POSIX_MEMALIGN {
        if ret != 0 {
            return 0;
        }
        // SAFETY: the checked read of the pointer the function stored.
        unsafe { bpf_probe_read_user(pending.aux as *const u64) }.unwrap_or(0)
    } else {
        ret
    };
    let resizes = layout == alloc_layout::REALLOC || layout == alloc_layout::REALLOCARRAY;
    // realloc frees the old block when it returns a new one, or when asked for 0 bytes.
    if resizes && pending.aux != 0 && (ptr != 0 || pending.size == 0) {
        record_free(tgid, pending.aux, now);
    }
    if ptr != 0 && pending.weight != 0 {
        record_alloc(tgid, tid, ptr, &pending, now);
    }
    0
}

/// `free`: the block is no longer live.
#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    let ptr: u64 = ctx.arg(0).unwrap_or(0);
    if ptr == 0 || active_map() == RECORDING_STOPPED {
        return 0;
    }
    let (tgid, _) = current_tgid_tid();
    record_free(tgid, ptr, unsafe { bpf_ktime_get_ns() });
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
