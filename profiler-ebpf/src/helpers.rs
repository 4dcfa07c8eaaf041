//! Helpers shared by the event families: loss counters, the recording switch, the current
//! task's ids, stack ids (kernel walker or unwind tables), classic tracepoint fields and the
//! per-process memory totals.
use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_NOEXIST, pt_regs},
    helpers::{bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_loop, bpf_probe_read_kernel},
    macros::map,
    maps::PerCpuArray,
    programs::TracePointContext,
};
use profiler_common::{COMM_LEN, CONTROL_ACTIVE_SAMPLE_MAP, ProcessMemory, counter};

use crate::{
    maps::{CONTROL, COUNTERS, PROCESS_MEMORY, UNWIND_WITH_TABLES},
    stack_store, unwind,
};

/// The current task's name, zero-padded. aya's `bpf_get_current_comm` zeroes its byte buffer
/// with a call to a `memset` subprogram, at every I/O call; here two word stores do it
/// (volatile: the compiler would make them the same `memset` call). Zeroed all the same:
/// before 6.4 the kernel copies the name without padding the rest, and the name is part of
/// map keys.
#[inline(always)]
pub(crate) fn current_comm() -> [u8; COMM_LEN] {
    let mut words = core::mem::MaybeUninit::<[u64; COMM_LEN / 8]>::uninit();
    let first = words.as_mut_ptr().cast::<u64>();
    // SAFETY: both words of `words` are written before it is read, and the helper writes at
    // most COMM_LEN bytes into it.
    unsafe {
        core::ptr::write_volatile(first, 0);
        core::ptr::write_volatile(first.add(1), 0);
        aya_ebpf::helpers::generated::bpf_get_current_comm(first.cast(), COMM_LEN as u32);
        core::mem::transmute::<[u64; COMM_LEN / 8], [u8; COMM_LEN]>(words.assume_init())
    }
}

/// FNV-1a, the hash of the stacks the programs store by hash.
pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
pub(crate) const FNV_PRIME: u64 = 0x100_0000_01b3;

/// Most frames [`hash_frames`] reads: the kernel's walker returns at most as many
/// (`PERF_MAX_STACK_DEPTH`), for user and kernel stacks alike.
const HASHED_FRAMES: usize = profiler_common::MAX_FP_FRAMES;
const _: () = assert!(profiler_common::MAX_KERNEL_FRAMES == HASHED_FRAMES);
/// Frames hashed per callback call.
const FRAMES_PER_STEP: usize = 4;

/// A hash of frames in progress, shared with [`hash_step`].
#[repr(C)]
struct FrameHash {
    frames: *const [u64; HASHED_FRAMES],
    len: u64,
    hash: u64,
}

/// The FNV-1a hash of the first `len` of `frames` (and of `len`), in a `bpf_loop`: the
/// verifier checks the callback once, where an unrolled loop over every word cost seconds of
/// verification across the programs, and only the frames in use are read.
#[inline(always)]
pub(crate) fn hash_frames(frames: *const [u64; HASHED_FRAMES], len: u64) -> u64 {
    let len = len.min(HASHED_FRAMES as u64);
    let mut state = FrameHash {
        frames,
        len,
        hash: FNV_OFFSET,
    };
    // SAFETY: the callback only reads `state` and the frames it points to.
    unsafe {
        bpf_loop(
            len.div_ceil(FRAMES_PER_STEP as u64) as u32,
            hash_step as *mut c_void,
            &mut state as *mut FrameHash as *mut c_void,
            0,
        )
    };
    (state.hash ^ len).wrapping_mul(FNV_PRIME)
}

/// Folds the next `FRAMES_PER_STEP` frames into the hash. Returns 1 to stop the loop.
unsafe extern "C" fn hash_step(index: u64, state: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer given by `hash_frames`.
    let state = unsafe { &mut *(state as *mut FrameHash) };
    for step in 0..FRAMES_PER_STEP {
        let at = index as usize * FRAMES_PER_STEP + step;
        if at as u64 >= state.len || at >= HASHED_FRAMES {
            return 1;
        }
        // SAFETY: a map value of `HASHED_FRAMES` words, `at` in bounds.
        let frame = unsafe { (*state.frames)[at] };
        state.hash = (state.hash ^ frame).wrapping_mul(FNV_PRIME);
    }
    0
}

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
pub(crate) fn active_map() -> u64 {
    CONTROL.get(CONTROL_ACTIVE_SAMPLE_MAP).copied().unwrap_or(0)
}

#[inline(always)]
pub(crate) fn current_tgid_tid() -> (u32, u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    ((pid_tgid >> 32) as u32, pid_tgid as u32)
}

/// The current thread's user stack id: walked with the unwind tables when the collector
/// loaded them, else by the kernel's frame-pointer walker; stored in `USER_STACKS` either way.
#[inline(always)]
pub(crate) fn user_stack<C: EbpfContext>(ctx: &C, tgid: u32, scratch_slot: u32) -> i32 {
    // SAFETY: read_volatile keeps the loader-set constant from being folded at compile time.
    if unsafe { core::ptr::read_volatile(&UNWIND_WITH_TABLES) } != 0 {
        unwind::user_stack_id(tgid, scratch_slot)
    } else {
        stack_store::fp_user_stack_id(ctx, scratch_slot)
    }
}

/// [`user_stack`] for an off-CPU period or an I/O call, counted: the collector looks at the
/// count every tick, to catch a load that arrived while every stack is walked.
#[inline(always)]
pub(crate) fn event_user_stack<C: EbpfContext>(ctx: &C, tgid: u32, scratch_slot: u32) -> i32 {
    bump(counter::EVENT_STACKS_WALKED);
    user_stack(ctx, tgid, scratch_slot)
}

/// Reads one word of a saved register set, not the whole set. `regs` must be a pointer the
/// verifier knows the type of (a BTF tracepoint's argument, `bpf_task_pt_regs`): it then
/// takes a plain load, which the kernel guards against faults, where a
/// `bpf_probe_read_kernel` call cost about 25 ns, at every system call of a target.
#[inline(always)]
pub(crate) fn register(regs: *const pt_regs, field: fn(&pt_regs) -> &u64) -> u64 {
    // SAFETY: a typed kernel pointer; the verifier checks the field's offset against the
    // kernel's `pt_regs` and has the load recover from a fault.
    unsafe { *field(&*regs) }
}

/// Reads a field of a kernel object at a loader-set `offset`. `base` must be a pointer the
/// verifier knows the type of (a BTF tracepoint's argument, `bpf_get_current_task_btf`), and
/// `offset` a load-time constant (read-only data, which the verifier reads as a known value):
/// the verifier then checks the field against the kernel's type and has a plain load recover
/// from a fault, where a `bpf_probe_read_kernel` call costs a helper call at each switch.
#[inline(always)]
pub(crate) fn btf_field<T: Copy>(base: *const u8, offset: &'static u32) -> T {
    // SAFETY: read_volatile keeps the loader-set constant from being folded at compile time;
    // the load is checked by the verifier as above.
    unsafe {
        let offset = core::ptr::read_volatile(offset);
        core::ptr::read_volatile(base.wrapping_add(offset as usize).cast::<T>())
    }
}

/// State of each CPU's generator for [`random_u32`]; 0 until first used.
#[map]
static RANDOM_STATE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// A uniform 32-bit random number from this CPU's xorshift64* generator, seeded from the
/// kernel's. Drawn at most target events (each I/O call, each off-CPU period, to decide
/// whether its stacks are walked): plain arithmetic on a per-CPU word the kernel looks up
/// inline, where `bpf_get_prandom_u32` is a helper call. A program preempted between the
/// read and the write may draw a number twice, which sampling does not mind.
#[inline(always)]
fn random_u32() -> u32 {
    let Some(state) = RANDOM_STATE.get_ptr_mut(0) else {
        // SAFETY: a helper valid in every program.
        return unsafe { bpf_get_prandom_u32() };
    };
    // SAFETY: this CPU's word.
    let mut x = unsafe { *state };
    if x == 0 {
        // SAFETY: as above; odd, so never 0.
        x = unsafe { u64::from(bpf_get_prandom_u32()) << 32 | u64::from(bpf_get_prandom_u32()) }
            | 1;
    }
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    // SAFETY: as above.
    unsafe { *state = x };
    (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
}

/// Whether an event of `ns` (an off-CPU period, an I/O call) gets its stacks: always at or
/// above `below`, else with probability `ns / below`, so each walked one stands for
/// `max(ns, below)` and stacks' times stay right on average.
#[inline(always)]
pub(crate) fn stack_sampled(ns: u64, below: u64) -> bool {
    // A uniform draw in [0, below): a 32-bit random number scaled, not taken modulo (which
    // favours small values when `below` is not a power of two). `below` < 2^32.
    below == 0 || ns >= below || (u64::from(random_u32()) * below) >> 32 < ns
}

/// Reads a field of a classic tracepoint record at a verified constant offset.
#[inline(always)]
pub(crate) fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: the collector checked the offsets against tracefs before loading, and the
    // verifier bounds-checks context reads.
    unsafe { *(ctx.as_ptr() as *const u8).add(offset).cast::<T>() }
}

/// Reads a kernel value at `base + offset`.
#[inline(always)]
pub(crate) fn read_at<T>(base: *const u8, offset: u32) -> Option<T> {
    // SAFETY: `bpf_probe_read_kernel` checks the address.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }.ok()
}

/// This CPU's memory totals of process `tgid`, created if new.
#[inline(always)]
pub(crate) fn process_memory(tgid: u32) -> Option<*mut ProcessMemory> {
    if let Some(memory) = PROCESS_MEMORY.get_ptr_mut(&tgid) {
        return Some(memory);
    }
    let _ = PROCESS_MEMORY.insert(&tgid, &ProcessMemory::default(), u64::from(BPF_NOEXIST));
    PROCESS_MEMORY.get_ptr_mut(&tgid)
}
