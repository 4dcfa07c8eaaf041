//! Stacks of off-CPU periods under stack sampling: the kernel stack read from the sleeping
//! task when it is switched back in (its length known by then: `stack_store`), and the user
//! stack walked later, in the thread's own context, at its next system-call exit (by the
//! `sys_exit` program, `syscalls`) or switch-out.
use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_task_pt_regs},
};
use profiler_common::{
    CONTROL_OFFCPU_SAMPLE_BELOW_NS, CONTROL_OFFCPU_SAMPLED, OffCpuKey, OffCpuTime, PendingWalk,
    RECORDING_STOPPED, STACK_ID_RAN_ON, ThreadState, counter,
};

use crate::{
    current::{self, Known},
    helpers::{active_map, bump},
    maps::{CONTROL, THREADS},
    sched::add_offcpu_time,
};

/// The off-CPU stack-sampling threshold, ns (0: every period walked).
#[inline(always)]
pub(crate) fn sample_below_ns() -> u64 {
    CONTROL
        .get(CONTROL_OFFCPU_SAMPLE_BELOW_NS)
        .copied()
        .unwrap_or(0)
}

/// The current thread's user stack and instruction pointers, `(sp, ip)`.
#[inline(always)]
fn current_user_position() -> (u64, u64) {
    // SAFETY: a helper valid in every tracing program.
    user_position(unsafe { bpf_get_current_task_btf() } as *const u8)
}

/// Task `task`'s user stack and instruction pointers, `(sp, ip)`, as saved when it last
/// entered the kernel. `task` must be a trusted task pointer (the current task's, or one a
/// BTF tracepoint hands over).
#[inline(always)]
pub(crate) fn user_position(task: *const u8) -> (u64, u64) {
    // SAFETY: a helper valid in every tracing program, given a trusted task pointer.
    let regs = unsafe { bpf_task_pt_regs(task as *mut _) } as *const pt_regs;
    // Two words, not the whole 168-byte frame: this runs beside a stack walk that holds one.
    // Read by helper, not by plain loads as the system-call programs read theirs: plain loads
    // here made the scheduler program's frame 8 bytes larger, past the 512 bytes that kernels
    // before 6.13 allow it with the walker inlined.
    // SAFETY: only the fields' addresses are computed from `regs`; the reads are checked.
    unsafe {
        (
            bpf_probe_read_kernel(&raw const (*regs).rsp).unwrap_or(0),
            bpf_probe_read_kernel(&raw const (*regs).rip).unwrap_or(0),
        )
    }
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

/// The user stack id of a pending period: the one walked for it (`None`: the thread ran on,
/// nothing to walk).
#[inline(always)]
pub(crate) fn walked_or_ran_on(user_stack_id: Option<i32>) -> i32 {
    user_stack_id.unwrap_or_else(|| {
        bump(counter::OFFCPU_STACKS_RAN_ON);
        STACK_ID_RAN_ON
    })
}

/// Accounts and clears the current thread's pending period (see [`pending_in_place`]) with
/// its user stack id (see [`walked_or_ran_on`]).
///
/// A function of its own, not inlined: its records would take 64 bytes of the scheduler
/// program's frame, which kernels before 6.13 limit with the callbacks' to 512 bytes.
#[inline(never)]
pub(crate) fn record_pending(
    thread: *mut ThreadState,
    tgid: u32,
    tid: u32,
    active: u64,
    user_stack_id: i32,
) {
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

/// Whether `sys_exit` settles pending periods: set by the loader when off-CPU stacks may be
/// sampled (else nothing is ever pending, and the check would cost every target's calls).
#[unsafe(no_mangle)]
static SETTLE_AT_EXIT: u32 = 0;

/// A pending period found at a system-call exit.
#[derive(Clone, Copy)]
pub(crate) struct AtExit {
    /// The thread stands where it blocked: its user stack is the period's.
    pub(crate) in_place: bool,
    /// The active map of the pair.
    pub(crate) active: u64,
}

/// At a system call's exit: the current thread's sampled period pending, if it has one (then
/// to be settled with [`record_pending`], its user stack walked when it is in place). `known`
/// is what the per-CPU cache said of the thread.
#[inline(always)]
pub(crate) fn pending_at_exit(
    tgid: u32,
    tid: u32,
    known: Option<Known>,
) -> Option<(*mut ThreadState, AtExit)> {
    // SAFETY: read_volatile keeps the loader-set constant from being folded at compile time.
    if unsafe { core::ptr::read_volatile(&SETTLE_AT_EXIT) } == 0 {
        return None;
    }
    // Nothing can be pending while every stack is walked at switch-out, and has been all run.
    if sample_below_ns() == 0 && CONTROL.get(CONTROL_OFFCPU_SAMPLED).copied().unwrap_or(0) == 0 {
        return None;
    }
    // Few of a target's system calls have a walk pending: known from the per-CPU cache,
    // mostly, before any lookup.
    match known {
        Some(Known::NotTarget | Known::NothingPending) => return None,
        Some(Known::Target | Known::Pending) => {}
        None if !current::is_target(tgid, tid) => return None,
        None => {}
    }
    let thread = THREADS.get_ptr_mut(tid)?;
    let active = active_map();
    if active == RECORDING_STOPPED {
        return None;
    }
    // The cache's word is left as it is: written here, it could overwrite the Pending that a
    // switch-in wrote while this program was preempted. Until the next switch-in, this
    // thread's system calls look the entry up.
    let in_place = pending_in_place(thread)?;
    Some((thread, AtExit { in_place, active }))
}
