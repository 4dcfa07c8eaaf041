//! Process bookkeeping: the `sched_process_fork`/`sched_process_exec` programs that keep the
//! target set and the target threads' `THREADS` entries up to date, and the process events
//! streamed to the collector.
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, map},
    maps::RingBuf,
    programs::BtfTracePointContext,
};
use aya_log_ebpf::debug;
use profiler_common::{
    OFFCPU_STATE_NEW_THREAD, ProcessEvent, RUN_DELAY_UNKNOWN, TARGET_FOLLOW_CHILDREN, ThreadState,
    counter, process_event,
};

use crate::{
    current,
    helpers::{btf_field, bump, current_comm, current_tgid_tid},
    maps::{TARGETS, THREAD_ZERO, THREADS},
    unwind, unwind_mappings,
};

/// Offsets of `pid` and `tgid` in `struct task_struct`, read from the kernel's BTF by the
/// collector.
#[unsafe(no_mangle)]
pub(crate) static TASK_STRUCT_PID_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
pub(crate) static TASK_STRUCT_TGID_OFFSET: u32 = 0;

/// Non-zero when the scheduler programs run: new target threads then get a `THREADS` entry.
#[unsafe(no_mangle)]
static TRACK_THREADS: u32 = 0;

/// Whether the scheduler programs run.
#[inline(always)]
fn tracks_threads() -> bool {
    // SAFETY: read_volatile keeps the loader-set constant from being folded at compile time.
    unsafe { core::ptr::read_volatile(&TRACK_THREADS) != 0 }
}

/// Non-zero when processes are selected by name or cgroup: an exec outside the targets is
/// streamed too, for the collector to judge the new program.
#[unsafe(no_mangle)]
static REPORT_UNTARGETED_EXECS: u32 = 0;

/// Target of the programs' log records: the crate's name, as the collector shows them (the
/// default would be this module's path).
const LOG_TARGET: &str = "profiler";

/// Forks, execs and unwind-table requests ([`ProcessEvent`]s), streamed to the collector.
#[map]
static PROCESS_EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// Streams a [`ProcessEvent`] to the collector, counting it as lost when the ring is full.
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
        comm: current_comm(),
    });
    entry.submit(0);
}

/// Reads a `u32` field of a kernel `task_struct` at a loader-set offset; `task` must be a
/// pointer the verifier knows the type of (see [`btf_field`]).
#[inline(always)]
pub(crate) fn task_field(task: *const u8, offset: &'static u32) -> u32 {
    btf_field(task, offset)
}

/// The thread of process `tgid` that executed a program, now its leader under the leader's
/// tid (the kernel gives it to a thread other than the leader that executes one, and the old
/// leader dies): its name changes with the program, read again at its next switch-out; and
/// the old leader's entry, marked exited, becomes a live one for it, else nothing accounted
/// its switches from now on.
#[inline(always)]
fn thread_after_exec(tgid: u32) {
    if !tracks_threads() {
        return;
    }
    if let Some(thread) = THREADS.get_ptr_mut(tgid)
        // SAFETY: plain read of a map value.
        && unsafe { (*thread).exited } == 0
    {
        // SAFETY: the thread is running here; its switch programs cannot run concurrently.
        unsafe { (*thread).off_cpu.comm[0] = 0 };
        return;
    }
    // Unlike a new thread's, its counts in the kernel did not start at 0: its first
    // switch-out only notes them.
    if let Some(thread) = new_thread_entry(tgid) {
        // SAFETY: as above.
        unsafe { (*thread).sched_pcount = RUN_DELAY_UNKNOWN };
    }
}

/// A new `THREADS` entry for target thread `tid`, replacing any stale one (a thread that
/// exited before the collector took it), and `tid` marked as a target's for `sched_switch`.
/// `None` if the map is full (counted).
#[inline(always)]
fn new_thread_entry(tid: u32) -> Option<*mut ThreadState> {
    crate::maps::mark_forked_thread(tid);
    if THREADS.insert(tid, &THREAD_ZERO, 0).is_err() {
        bump(counter::OFFCPU_MAP_FULL);
        return None;
    }
    THREADS.get_ptr_mut(tid)
}

/// A new thread of a target: with the scheduler programs running it is a target thread from
/// now on, waiting for its first run.
#[inline(always)]
fn add_new_thread(tid: u32, tgid: u32) {
    if !tracks_threads() {
        return;
    }
    let Some(thread) = new_thread_entry(tid) else {
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
    match try_sched_process_fork(ctx) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

#[inline(always)]
fn try_sched_process_fork(ctx: BtfTracePointContext) -> Result<i32, i32> {
    // Any fork: the child's tid may be one a CPU's cache still names, of a thread gone. Once,
    // before the child can run: no word can name it between this and its entry below.
    current::targets_changed();
    let (parent_tgid, _) = current_tgid_tid();
    let &flags = unsafe { TARGETS.get(parent_tgid) }.ok_or(0)?;
    let child: *const u8 = ctx.arg(1);
    let child_tid = task_field(child, &TASK_STRUCT_PID_OFFSET);
    let child_tgid = task_field(child, &TASK_STRUCT_TGID_OFFSET);
    if child_tgid == parent_tgid {
        add_new_thread(child_tid, child_tgid);
        return Ok(0);
    }
    if flags & TARGET_FOLLOW_CHILDREN == 0 {
        return Err(0);
    }
    if TARGETS.insert(child_tgid, flags, 0).is_err() {
        bump(counter::TARGET_MAP_FULL);
        return Err(0);
    }
    add_new_thread(child_tid, child_tgid);
    unwind::inherit_process(parent_tgid, child_tgid);
    debug!(
        &ctx,
        target: LOG_TARGET,
        "following new process {} forked by {}",
        child_tgid,
        parent_tgid
    );
    send_process_event(process_event::FORK, child_tgid, parent_tgid);
    Ok(0)
}

/// A target executed a new program: the collector must read its new memory map. Another
/// process's exec is told when processes are selected by what they run.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    match try_sched_process_exec(ctx) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

#[inline(always)]
fn try_sched_process_exec(ctx: BtfTracePointContext) -> Result<i32, i32> {
    let (tgid, _) = current_tgid_tid();
    if unsafe { TARGETS.get(tgid) }.is_none() {
        // SAFETY: read_volatile keeps the loader-set constant from being folded at compile time.
        if unsafe { core::ptr::read_volatile(&REPORT_UNTARGETED_EXECS) } != 0 {
            send_process_event(process_event::UNTARGETED_EXEC, tgid, tgid);
        }
        return Err(0);
    }
    thread_after_exec(tgid);
    unwind::forget_process(tgid);
    unwind_mappings::learn_exec(tgid);
    debug!(&ctx, target: LOG_TARGET, "target {} executed a new program", tgid);
    send_process_event(process_event::EXEC, tgid, tgid);
    Ok(0)
}
