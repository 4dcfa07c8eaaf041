//! Stacks of off-CPU periods under stack sampling: the kernel stack read from the sleeping
//! task when it is switched back in (its length known by then), and the user stack walked
//! later, in the thread's own context, at its next system-call exit or switch-out.
use aya_ebpf::{
    bindings::{BPF_NOEXIST, pt_regs},
    helpers::{bpf_get_current_task_btf, bpf_task_pt_regs, generated::bpf_get_task_stack},
    macros::{btf_tracepoint, map},
    maps::{HashMap, PerCpuArray},
    programs::BtfTracePointContext,
};
use profiler_common::{
    CONTROL_OFFCPU_SAMPLE_BELOW_NS, CONTROL_OFFCPU_SAMPLED, KERNEL_STACK_ID_TASK_BIT, KernelStack,
    MAX_KERNEL_FRAMES, OFFCPU_KERNEL_STACK_ENTRIES, OffCpuKey, OffCpuTime, PendingWalk,
    RECORDING_STOPPED, STACK_ID_COLLISION, STACK_ID_ERROR, STACK_ID_MAP_FULL, STACK_ID_RAN_ON,
    ThreadState, counter,
};

use crate::{
    helpers::{FNV_OFFSET, FNV_PRIME, active_map, bump, current_tgid_tid, register, user_stack},
    maps::{CONTROL, THREADS},
    sched::add_offcpu_time,
    unwind,
};

/// Kernel stacks of off-CPU periods, by id (`KERNEL_STACK_ID_TASK_BIT` | hash bits).
#[map]
static OFFCPU_KERNEL_STACKS: HashMap<u32, KernelStack> =
    HashMap::with_max_entries(OFFCPU_KERNEL_STACK_ENTRIES, 0);

/// One stack per CPU to read a task's stack into (too large for the BPF stack).
#[map]
static KERNEL_STACK_SCRATCH: PerCpuArray<KernelStack> = PerCpuArray::with_max_entries(1, 0);

/// The off-CPU stack-sampling threshold, ns (0: every period walked).
#[inline(always)]
pub(crate) fn sample_below_ns() -> u64 {
    CONTROL
        .get(CONTROL_OFFCPU_SAMPLE_BELOW_NS)
        .copied()
        .unwrap_or(0)
}

/// The kernel stack `task` sleeps in, stored by hash: its id, or a `STACK_ID_*` value. `task`
/// must be off its CPU (the stack is read from its saved frame).
#[inline(always)]
pub(crate) fn sleeping_task_stack(task: *const u8) -> i32 {
    let Some(stack) = KERNEL_STACK_SCRATCH.get_ptr_mut(0) else {
        return STACK_ID_ERROR;
    };
    // SAFETY: `task` is the tracepoint's trusted task pointer; the buffer is this CPU's
    // scratch value, `MAX_KERNEL_FRAMES` words long.
    let bytes = unsafe {
        bpf_get_task_stack(
            task as *mut _,
            (*stack).frames.as_mut_ptr().cast(),
            (MAX_KERNEL_FRAMES * 8) as u32,
            0,
        )
    };
    if bytes <= 0 {
        bump(counter::KERNEL_STACK_ERRORS);
        return STACK_ID_ERROR;
    }
    let len = bytes as u64 / 8;
    // Every word, without a branch on the length (one the verifier would follow at each of
    // them): the helper zeroes the buffer past the stack.
    let mut hash = FNV_OFFSET;
    for index in 0..MAX_KERNEL_FRAMES {
        // SAFETY: this CPU's scratch value, index in bounds.
        hash = (hash ^ unsafe { (*stack).frames[index] }).wrapping_mul(FNV_PRIME);
    }
    hash = (hash ^ len).wrapping_mul(FNV_PRIME);
    // SAFETY: as above.
    unsafe {
        (*stack).hash = hash;
        (*stack).len = len;
    }
    let id = KERNEL_STACK_ID_TASK_BIT | (hash as u32 & (KERNEL_STACK_ID_TASK_BIT - 1));
    // SAFETY: a map value, only compared.
    match unsafe { OFFCPU_KERNEL_STACKS.get(&id) } {
        Some(stored) if stored.hash == hash => return id as i32,
        Some(_) => {
            bump(counter::KERNEL_STACK_COLLISIONS);
            return STACK_ID_COLLISION;
        }
        None => {}
    }
    // SAFETY: filled above.
    if OFFCPU_KERNEL_STACKS
        .insert(&id, unsafe { &*stack }, u64::from(BPF_NOEXIST))
        .is_err()
    {
        // SAFETY: as above.
        return match unsafe { OFFCPU_KERNEL_STACKS.get(&id) } {
            // Another CPU stored it first.
            Some(stored) if stored.hash == hash => id as i32,
            Some(_) => {
                bump(counter::KERNEL_STACK_COLLISIONS);
                STACK_ID_COLLISION
            }
            None => {
                bump(counter::KERNEL_STACK_ERRORS);
                STACK_ID_MAP_FULL
            }
        };
    }
    id as i32
}

/// The current thread's user stack and instruction pointers, `(sp, ip)`.
#[inline(always)]
pub(crate) fn current_user_position() -> (u64, u64) {
    // SAFETY: helpers valid in every tracing program.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    // Two words, not the whole 168-byte frame: this runs beside a stack walk that holds one.
    (
        register(regs, |regs| &regs.rsp),
        register(regs, |regs| &regs.rip),
    )
}

/// Whether the current thread has a sampled period pending, and if so whether it still stands
/// where it blocked (a system call's exit, or a switch-out before it ran any user code): only
/// then is its user stack the one it blocked with. The period stays in the thread's entry
/// until [`record_pending`]: a copy held across the stack walk would take 48 bytes of a stack
/// that kernels before 6.13 limit to 512 for a program and its callbacks together.
#[inline(always)]
pub(crate) fn pending_in_place(thread: *const ThreadState) -> Option<bool> {
    // SAFETY: only this thread's own programs touch its pending walk (it is switched in, which
    // writes it, only while it is not running).
    let pending = unsafe { &raw const (*thread).pending };
    // SAFETY: as above.
    if unsafe { (*pending).total_ns } == 0 {
        return None;
    }
    let (sp, ip) = current_user_position();
    // SAFETY: as above.
    Some(unsafe { sp == (*pending).user_sp && ip == (*pending).user_ip })
}

/// Accounts and clears the current thread's pending period (see [`pending_in_place`]), with
/// the user stack walked for it (`None`: the thread ran on, nothing to walk).
#[inline(always)]
pub(crate) fn record_pending(
    thread: *mut ThreadState,
    tgid: u32,
    tid: u32,
    active: u64,
    user_stack_id: Option<i32>,
) {
    let user_stack_id = user_stack_id.unwrap_or_else(|| {
        bump(counter::OFFCPU_STACKS_RAN_ON);
        STACK_ID_RAN_ON
    });
    // SAFETY: as in `pending_in_place`; plain reads and writes of a map value.
    unsafe {
        let pending = &raw mut (*thread).pending;
        let key = OffCpuKey {
            tgid,
            tid,
            user_stack_id,
            kernel_stack_id: (*pending).kernel_stack_id,
            state: (*pending).state,
            _pad: 0,
            comm: (*thread).off_cpu.comm,
        };
        let time = OffCpuTime {
            total_ns: (*pending).total_ns,
            count: 1,
            stack_ns: (*pending).stack_ns,
        };
        *pending = PendingWalk::default();
        add_offcpu_time(active, &key, &time);
    }
}

/// A system call returns: a target thread with a sampled period pending gets its user stack
/// walked here, where it stands as it blocked (most periods are spent in a system call).
/// Attached only when off-CPU stacks may be sampled; separate from the I/O program so each
/// has one stack walk.
#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_offcpu(ctx: BtfTracePointContext) -> i32 {
    // Nothing can be pending while every stack is walked at switch-out, and has been all run.
    if sample_below_ns() == 0 && CONTROL.get(CONTROL_OFFCPU_SAMPLED).copied().unwrap_or(0) == 0 {
        return 0;
    }
    let (tgid, tid) = current_tgid_tid();
    let Some(thread) = THREADS.get_ptr_mut(tid) else {
        return 0;
    };
    let active = active_map();
    if active == RECORDING_STOPPED {
        return 0;
    }
    let Some(in_place) = pending_in_place(thread) else {
        return 0;
    };
    let user_stack_id = in_place.then(|| {
        user_stack(
            &ctx,
            tgid,
            unwind::SCRATCH_TASK,
            counter::OFFCPU_STACK_COLLISIONS,
            counter::USER_STACK_ERRORS,
        )
    });
    record_pending(thread, tgid, tid, active, user_stack_id);
    0
}
