//! Helpers shared by the event families: loss counters, the recording switch, the current
//! task's ids, stack ids (kernel walker or unwind tables), classic tracepoint fields and the
//! per-process memory totals.
use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST, pt_regs},
    helpers::{bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_probe_read_kernel},
    programs::{TracePointContext, tracing::StackIdContext},
};
use profiler_common::{
    CONTROL_ACTIVE_SAMPLE_MAP, ProcessMemory, STACK_ID_COLLISION, STACK_ID_ERROR, STACK_ID_NONE,
};

use crate::{
    maps::{CONTROL, COUNTERS, PROCESS_MEMORY, STACKS, UNWIND_WITH_TABLES},
    unwind,
};

/// FNV-1a, the hash of the stacks the programs store by hash.
pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
pub(crate) const FNV_PRIME: u64 = 0x100_0000_01b3;

const EEXIST: i32 = 17;
const EFAULT: i32 = 14;

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

/// Turns a `bpf_get_stackid` result into a stack id, counting what went wrong.
#[inline(always)]
pub(crate) fn stack_id(result: Result<i64, i32>, collisions: u32, errors: u32) -> i32 {
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
pub(crate) fn user_stack<C: StackIdContext>(
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

/// Reads one word of a saved register set (`regs` a kernel pointer), not the whole set.
#[inline(always)]
pub(crate) fn register(regs: *const pt_regs, field: fn(&pt_regs) -> &u64) -> u64 {
    // SAFETY: only the field's address is computed from `regs`; the read is checked.
    unsafe { bpf_probe_read_kernel(field(&*regs) as *const u64) }.unwrap_or(0)
}

/// Whether an event of `ns` (an off-CPU period, an I/O call) gets its stacks: always at or
/// above `below`, else with probability `ns / below`, so each walked one stands for
/// `max(ns, below)` and stacks' times stay right on average.
#[inline(always)]
pub(crate) fn stack_sampled(ns: u64, below: u64) -> bool {
    // A uniform draw in [0, below): a 32-bit random number scaled, not taken modulo (which
    // favours small values when `below` is not a power of two). `below` < 2^32.
    // SAFETY: a helper valid in every program.
    below == 0 || ns >= below || (u64::from(unsafe { bpf_get_prandom_u32() }) * below) >> 32 < ns
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
