//! In the object with the stack walker inlined (kernels that give BPF programs no private
//! stacks), the user-stack walks of system-call exits and switch-outs are made by programs of
//! their own, entered by tail call. The verifier explores an inlined walker once per state
//! that reaches it: `sys_exit` and `sched_switch`, each with its walk, took 300 000
//! instructions each, a second each on an idle machine and two on a busy server, most of a
//! start-up. A walking program reaches its walker from one state, and the programs that hand
//! their walks over carry none.
use aya_ebpf::{macros::map, maps::ProgramArray, programs::BtfTracePointContext};
use profiler_common::tail_call;

/// The program `sys_exit` hands its walks over to. One array per tracepoint: the kernel lets
/// a tracing program tail-call only programs of its own hook.
#[map]
static SYS_EXIT_TAIL_CALLS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The program `sched_switch` hands its walks over to.
#[map]
static SCHED_SWITCH_TAIL_CALLS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Hands a system call's exit whose user stack is to be walked over to `sys_exit_walk`.
/// Returns only if that program is not in place.
#[inline(always)]
pub(crate) fn walk_exit(ctx: &BtfTracePointContext) {
    // SAFETY: the entry holds `sys_exit_walk` or nothing; the caller goes on without the walk
    // when this returns.
    unsafe { SYS_EXIT_TAIL_CALLS.tail_call(ctx, tail_call::WALK_EXIT) };
}

/// Hands the switch-out of a target thread whose stack is to be walked over to
/// `sched_switch_walk`. Returns only if that program is not in place.
#[inline(always)]
pub(crate) fn walk_switch_out(ctx: &BtfTracePointContext) {
    // SAFETY: the entry holds `sched_switch_walk` or nothing; the caller goes on without the
    // walk when this returns.
    unsafe { SCHED_SWITCH_TAIL_CALLS.tail_call(ctx, tail_call::WALK_SWITCH_OUT) };
}
