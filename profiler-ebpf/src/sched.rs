//! Off-CPU and run-queue time: the `sched_switch`/`sched_wakeup` programs that time each target
//! thread's off-CPU periods (with the stacks it left the CPU with, every period's or a
//! sample's) and run-queue delays, and the double-buffered off-CPU time maps.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, map, tracepoint},
    maps::HashMap,
    programs::{BtfTracePointContext, TracePointContext},
};
use profiler_common::{
    COMM_LEN, CONTROL_ATTACH_NS, OFFCPU_MAP_ENTRIES, OFFCPU_STATE_BEFORE_ATTACH,
    OFFCPU_STATE_PREEMPTED, OffCpuKey, OffCpuTime, PendingWalk, RECORDING_STOPPED,
    RUN_DELAY_UNKNOWN, STACK_ID_NONE, STACK_ID_UNSAMPLED, ThreadState, counter, floor_log2,
    tracepoint_fields,
};

use crate::{
    current,
    helpers::{
        active_map, add_to_counter, btf_field, bump, current_comm, event_user_stack, field,
        stack_sampled,
    },
    io_pending,
    maps::{CONTROL, THREADS, may_be_target_thread},
    offcpu_stacks,
    process::{TASK_STRUCT_PID_OFFSET, TASK_STRUCT_TGID_OFFSET, task_field},
    stack_store, unwind,
};

/// Off-CPU periods shorter than this are counted but not recorded, ns.
#[unsafe(no_mangle)]
static MIN_BLOCK_NS: u64 = 0;

/// Offsets of `task_struct.sched_info.pcount` and `.run_delay`, from the kernel's BTF; 0 on a
/// kernel without them (no `CONFIG_SCHED_INFO`), where `sched_wakeup` times the delays.
#[unsafe(no_mangle)]
static RUN_DELAY_OFFSETS: [u32; 2] = [0; 2];

/// Off-CPU time per thread, stacks and state; double-buffered like the sample maps.
#[map]
static OFFCPU_0: HashMap<OffCpuKey, OffCpuTime> = HashMap::with_max_entries(OFFCPU_MAP_ENTRIES, 0);
#[map]
static OFFCPU_1: HashMap<OffCpuKey, OffCpuTime> = HashMap::with_max_entries(OFFCPU_MAP_ENTRIES, 0);

/// Adds `time` to `key`'s total in the active map of the pair.
#[inline(always)]
pub(crate) fn add_offcpu_time(active: u64, key: &OffCpuKey, time: &OffCpuTime) {
    let times = if active == 0 { &OFFCPU_0 } else { &OFFCPU_1 };
    match times.get_ptr_mut(key) {
        // SAFETY: the key holds the tid, and a thread's periods are accounted one at a time.
        Some(total) => unsafe {
            (*total).total_ns += time.total_ns;
            (*total).count += time.count;
            (*total).stack_ns += time.stack_ns;
        },
        None => {
            if times.insert(key, time, u64::from(BPF_NOEXIST)).is_err() {
                bump(counter::OFFCPU_MAP_FULL);
            }
        }
    }
}

/// `TASK_DEAD`: the task's last switch-out.
const TASK_DEAD: u32 = 0x80;
/// `TASK_NOLOAD`: with `TASK_UNINTERRUPTIBLE`, an idle wait (`TASK_IDLE`), not I/O.
const TASK_NOLOAD: u32 = 0x400;
/// `TASK_REPORT_IDLE`, how `sched_switch`'s record reports an idle wait.
const TASK_REPORT_IDLE: u32 = 0x80;

/// The live `THREADS` entry of a target thread, if it is one.
#[inline(always)]
fn target_thread(tid: u32) -> Option<*mut ThreadState> {
    let thread = THREADS.get_ptr_mut(tid)?;
    // SAFETY: plain read of a map value.
    (unsafe { (*thread).exited } == 0).then_some(thread)
}

/// Adds `count` run-queue delays totalling `total_ns` to a target thread's figures.
#[inline(always)]
fn add_run_queue_delays(thread: *mut ThreadState, count: u64, total_ns: u64) {
    // Several at once only after switch-outs not seen here: their mean stands for each.
    let delay = total_ns / count.max(1);
    // SAFETY: only this thread's own switches (and wakeups) touch its entry.
    unsafe {
        (*thread).run_queue_count += count;
        (*thread).run_queue_total_ns += total_ns;
        if delay > (*thread).run_queue_max_ns {
            (*thread).run_queue_max_ns = delay;
        }
        if let Some(bucket) = (*thread)
            .run_queue_slots
            .get_mut(floor_log2(delay / 1000) as usize)
        {
            *bucket += count;
        }
    }
}

/// The current thread, a target, leaves the CPU: the run-queue delays it had since its last
/// switch-out, from the kernel's own accounting (`sched_info`, which the scheduler keeps for
/// every task): no program at each of the machine's wakeups, where the run queue is locked.
/// Nothing on a kernel without it. A function of its own: inlined, its values joined the
/// scheduler program's frame, on which the walker's frames sit, and kernels before 6.13 allow
/// 512 bytes for them all. `task` is the thread's, from the tracepoint (see [`btf_field`]).
#[inline(never)]
fn settle_run_delays(thread: *mut ThreadState, task: *const u8) {
    if !run_delays_from_kernel() {
        return;
    }
    let pcount: u64 = btf_field(task, &RUN_DELAY_OFFSETS[0]);
    let run_delay: u64 = btf_field(task, &RUN_DELAY_OFFSETS[1]);
    // SAFETY: as above.
    let (last_pcount, last_run_delay) =
        unsafe { ((*thread).sched_pcount, (*thread).sched_run_delay_ns) };
    if last_pcount != RUN_DELAY_UNKNOWN && pcount > last_pcount {
        add_run_queue_delays(
            thread,
            pcount - last_pcount,
            run_delay.saturating_sub(last_run_delay),
        );
    }
    // SAFETY: as above.
    unsafe {
        (*thread).sched_pcount = pcount;
        (*thread).sched_run_delay_ns = run_delay;
    }
}

/// Whether [`settle_run_delays`] times the run-queue delays (else `sched_wakeup` and the
/// switch-in do). Read where needed, not held: a value held across the walk takes stack.
#[inline(always)]
fn run_delays_from_kernel() -> bool {
    // SAFETY: read_volatile keeps the loader-set constant from being folded at compile time.
    unsafe { core::ptr::read_volatile(&RUN_DELAY_OFFSETS[0]) != 0 }
}

/// Where [`switch_out`] gets the user stack it needs.
#[derive(Clone, Copy)]
enum SwitchOutWalk {
    /// From the walker, a function of its own.
    #[cfg(not(feature = "inline-walk"))]
    Here,
    /// From `sched_switch_walk`, handed the switch-out over.
    #[cfg(feature = "inline-walk")]
    HandOver,
    /// Walked already, by `sched_switch_walk` as it starts: the walker is then reached from
    /// one state (reached from each of `switch_out`'s, it took 308 000 instructions).
    #[cfg(feature = "inline-walk")]
    Walked(i32),
}

/// A target thread leaves the CPU: remember when, where and why.
///
/// Every target thread has a `THREADS` entry (made by the collector for threads that existed
/// at attach, at fork for later ones), so one lookup both filters and finds (after the tid
/// maps and the per-CPU word have turned away most threads that are not). With stack
/// sampling on, nothing is walked here (the period's length, which decides, is not known
/// yet): only where the thread stands is noted.
///
/// How `walk` says (see [`SwitchOutWalk`]): in the object with the walker inlined, a
/// switch-out whose stack is to be walked is handed over to `sched_switch_walk`, which walks
/// first and runs this again; nothing before the hand-over changes anything that a second run
/// would count twice.
#[inline(always)]
fn switch_out(ctx: &BtfTracePointContext, now: u64, active: u64, walk: SwitchOutWalk) {
    // The tracepoint's `preempt` and `prev_state` (see `sched_switch`).
    let preempt: u64 = ctx.arg(0);
    let state = ctx.arg::<u64>(3) as u32;
    // The current task, as the tracepoint hands it over: its ids are plain loads.
    let task: *const u8 = ctx.arg(1);
    let (tgid, tid) = (
        task_field(task, &TASK_STRUCT_TGID_OFFSET),
        task_field(task, &TASK_STRUCT_PID_OFFSET),
    );
    let thread = target_thread(tid);
    io_pending::leave_cpu(tid, thread);
    let Some(thread) = thread else {
        return;
    };
    // Again in `sched_switch_walk`: a second run finds the delays already taken.
    settle_run_delays(thread, task);
    let below = offcpu_stacks::sample_below_ns();
    // A sampled period still pending (the thread ran no system call since) and a new period
    // with every stack walked share one walk: the stack is the same.
    let pending = offcpu_stacks::pending_in_place(thread);
    let walked = if below != 0 && pending != Some(true) {
        None
    } else {
        match walk {
            #[cfg(not(feature = "inline-walk"))]
            SwitchOutWalk::Here => Some(event_user_stack(ctx, tgid, unwind::SCRATCH_TASK)),
            #[cfg(feature = "inline-walk")]
            SwitchOutWalk::HandOver => {
                crate::walk_calls::walk_switch_out(ctx);
                // The walking program is not in place: the period goes without the walk.
                None
            }
            #[cfg(feature = "inline-walk")]
            SwitchOutWalk::Walked(user_stack_id) => Some(user_stack_id),
        }
    };
    let user = walked.unwrap_or(STACK_ID_UNSAMPLED);
    if let Some(in_place) = pending {
        let user = offcpu_stacks::walked_or_ran_on(walked.filter(|_| in_place));
        offcpu_stacks::record_pending(thread, tgid, tid, active, user);
    }
    if state & TASK_DEAD != 0 {
        // An exiting thread is gone, not off-CPU; the collector keeps its run-queue figures.
        // SAFETY: only this thread's own switches and wakeups touch its entry.
        unsafe {
            (*thread).off_cpu.start_ns = 0;
            (*thread).exited = 1;
        }
        return;
    }
    // Preempted, or still running: runnable, waiting for a CPU from now on.
    let preempted = preempt & 0xff != 0 || state == 0;
    // Under stack sampling nothing more is read here, in the scheduler with its run queue
    // locked: where the thread stands is read at switch-in, for a sampled period only.
    let (user_stack_id, kernel_stack_id) = if below == 0 {
        let kernel = stack_store::current_kernel_stack(
            ctx,
            unwind::SCRATCH_TASK,
            counter::OFFCPU_STACK_COLLISIONS,
        );
        (user, kernel)
    } else {
        (STACK_ID_UNSAMPLED, STACK_ID_NONE)
    };
    // SAFETY: only this thread's own switches and wakeups touch its entry.
    unsafe {
        let off_cpu = &mut (*thread).off_cpu;
        off_cpu.start_ns = now;
        // Else `sched_wakeup` and the switch-in time the delays, from `runnable_ns`.
        off_cpu.runnable_ns = if preempted && !run_delays_from_kernel() {
            now
        } else {
            0
        };
        off_cpu.tgid = tgid;
        off_cpu.user_stack_id = user_stack_id;
        off_cpu.kernel_stack_id = kernel_stack_id;
        off_cpu.state = if preempted {
            OFFCPU_STATE_PREEMPTED
        } else if state & TASK_NOLOAD != 0 {
            TASK_REPORT_IDLE
        } else {
            state & 0x7f
        };
        // The name is read once per thread, and `task_rename` keeps it current: a copy at
        // every switch would cost more.
        if off_cpu.comm[0] == 0 {
            off_cpu.comm = current_comm();
        }
    }
}

/// A thread gets the CPU back: if it is a target thread, account its off-CPU period and
/// run-queue delay. Its kernel stack is read here, from the task still asleep, and only for
/// a period that is sampled; its user stack, if not walked at switch-out, is walked once the
/// thread runs (see [`offcpu_stacks::settle_pending`]).
#[inline(always)]
fn switch_in(now: u64, tid: u32, task: *const u8, active: u64) {
    let Some(thread) = target_thread(tid) else {
        return;
    };
    // Read field by field, not copied whole: kernels before 6.13 allow 512 bytes of stack for
    // a program and the callbacks it calls, and a copy took 72 of them.
    let start = unsafe { &raw const (*thread).off_cpu };
    // SAFETY: only this thread's own switches and wakeups touch its entry.
    let (start_ns, tgid) = unsafe { ((*start).start_ns, (*start).tgid) };
    let mut key = OffCpuKey {
        tgid,
        tid,
        user_stack_id: STACK_ID_NONE,
        kernel_stack_id: STACK_ID_NONE,
        state: OFFCPU_STATE_BEFORE_ATTACH,
        _pad: 0,
        // SAFETY: as above.
        comm: unsafe { (*start).comm },
    };
    // Off-CPU since before the programs were attached: stack unknown, nothing to sample.
    let since = if start_ns != 0 {
        start_ns
    } else {
        CONTROL.get(CONTROL_ATTACH_NS).copied().unwrap_or(now)
    };
    let off_cpu = now.saturating_sub(since);
    let mut walk_later = false;
    let below = offcpu_stacks::sample_below_ns();
    let mut stack_ns = off_cpu;
    if start_ns != 0 {
        // SAFETY: as above.
        let (state, user_stack_id) = unsafe { ((*start).state, (*start).user_stack_id) };
        key.state = state;
        if user_stack_id != STACK_ID_UNSAMPLED {
            // Walked at switch-out: the threshold was 0 then.
            key.user_stack_id = user_stack_id;
            // SAFETY: as above.
            key.kernel_stack_id = unsafe { (*start).kernel_stack_id };
        } else if stack_sampled(off_cpu, below) {
            key.kernel_stack_id = stack_store::sleeping_task_stack(task, unwind::SCRATCH_TASK);
            stack_ns = off_cpu.max(below);
            walk_later = true;
        } else {
            key.user_stack_id = STACK_ID_UNSAMPLED;
            key.kernel_stack_id = STACK_ID_UNSAMPLED;
            stack_ns = 0;
        }
    }
    // SAFETY: read_volatile keeps the loader-set constant from being folded at compile time.
    let min_block = unsafe { core::ptr::read_volatile(&MIN_BLOCK_NS) };
    if off_cpu < min_block {
        bump(counter::OFFCPU_FILTERED);
        add_to_counter(counter::OFFCPU_FILTERED_NS, off_cpu);
    } else if walk_later {
        // Its user registers, saved as it entered the kernel, are where it stood as it left
        // the CPU: it has not been back in user mode since.
        let (user_sp, user_ip) = offcpu_stacks::user_position(task);
        // SAFETY: as above; the thread is not running, so its own programs are not either.
        unsafe {
            (*thread).pending = PendingWalk {
                total_ns: off_cpu.max(1),
                stack_ns,
                user_sp,
                user_ip,
                kernel_stack_id: key.kernel_stack_id,
                state: key.state,
            };
        }
    } else {
        let time = OffCpuTime {
            total_ns: off_cpu,
            count: 1,
            stack_ns,
        };
        add_offcpu_time(active, &key, &time);
    }
    // SAFETY: as above.
    unsafe {
        let runnable_ns = (*start).runnable_ns;
        (*thread).off_cpu.start_ns = 0;
        (*thread).off_cpu.runnable_ns = 0;
        if runnable_ns != 0 {
            add_run_queue_delays(thread, 1, now.saturating_sub(runnable_ns));
        }
    }
    // The thread about to run here is a target, with or without a walk pending: its system
    // calls need not look it up.
    // SAFETY: as above.
    let pending = unsafe { (*thread).pending.total_ns } != 0;
    current::remember_target_thread(tid, pending);
}

/// Whether thread `prev` or `next` of a switch may be a target thread.
#[inline(always)]
fn concerns_targets(prev: u32, next: u32) -> bool {
    may_be_target_thread(prev) || may_be_target_thread(next)
}

/// Every context switch: the outgoing target thread starts an off-CPU period, the incoming one
/// ends its own. A BTF tracepoint: it hands over the incoming task itself, whose kernel stack
/// is read while it still sleeps.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    // sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
    // unsigned int prev_state)
    let next: *const u8 = ctx.arg(2);
    let prev = task_field(ctx.arg(1), &TASK_STRUCT_PID_OFFSET);
    // Most switches of a busy machine are no target's: known from the tid maps, before the
    // clock or any other map is read (300 ns a switch to 160 under pgbench). The pid is read
    // again below, not held across: held, the verifier explored the program twice over when
    // it had the walker inlined (635 000 instructions, not 310 000).
    if !concerns_targets(prev, task_field(next, &TASK_STRUCT_PID_OFFSET)) {
        return 0;
    }
    let active = active_map();
    if active == RECORDING_STOPPED {
        return 0;
    }
    // Asked before the switch-in, which makes the per-CPU word the incoming thread's.
    let prev_may_be_target = prev != 0 && !current::known_not_target(prev);
    let now = unsafe { bpf_ktime_get_ns() };
    // The switch-in first: the switch-out may end this program, handed over for its walk.
    let next_tid = task_field(next, &TASK_STRUCT_PID_OFFSET);
    if next_tid != 0 {
        switch_in(now, next_tid, next, active);
    }
    if prev_may_be_target {
        #[cfg(not(feature = "inline-walk"))]
        let walk = SwitchOutWalk::Here;
        #[cfg(feature = "inline-walk")]
        let walk = SwitchOutWalk::HandOver;
        switch_out(&ctx, now, active, walk);
    }
    0
}

/// The switch-out of a target thread whose stack is to be walked, handed over by
/// `sched_switch` (object with the walker inlined only; see `walk_calls`).
#[cfg(feature = "inline-walk")]
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_walk(ctx: BtfTracePointContext) -> i32 {
    let tgid = task_field(ctx.arg(1), &TASK_STRUCT_TGID_OFFSET);
    let walked = event_user_stack(&ctx, tgid, unwind::SCRATCH_TASK);
    let active = active_map();
    if active == RECORDING_STOPPED {
        return 0;
    }
    // Later than `sched_switch`'s by the walk: the period starts that much later.
    let now = unsafe { bpf_ktime_get_ns() };
    switch_out(&ctx, now, active, SwitchOutWalk::Walked(walked));
    0
}

/// A target thread becomes runnable: its run-queue delay starts. Only on a kernel without
/// `sched_info` (see [`settle_run_delays`]). A BTF tracepoint: the classic one first copies a
/// record at every wakeup of the machine, a cost no program statistics show.
#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> i32 {
    match try_sched_wakeup(ctx) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

#[inline(always)]
fn try_sched_wakeup(ctx: BtfTracePointContext) -> Result<i32, i32> {
    // sched_wakeup(struct task_struct *p)
    let task: *const u8 = ctx.arg(0);
    let tid = task_field(task, &TASK_STRUCT_PID_OFFSET);
    if !may_be_target_thread(tid) {
        return Err(0);
    }
    let thread = target_thread(tid).ok_or(0)?;
    if active_map() == RECORDING_STOPPED {
        return Err(0);
    }
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: only this thread's own switches and wakeups touch its entry.
    unsafe {
        if (*thread).off_cpu.runnable_ns == 0 {
            (*thread).off_cpu.runnable_ns = now;
        }
    }
    Ok(0)
}

/// A target thread is renamed (`pthread_setname_np`, `prctl(PR_SET_NAME)`, a write to its
/// `comm` file): its later off-CPU records and its run-queue figures carry the new name. A new
/// thread often blocks or is preempted before it names itself.
#[tracepoint(category = "task", name = "task_rename")]
pub fn task_rename(ctx: TracePointContext) -> u32 {
    let tid: i32 = field(&ctx, tracepoint_fields::RENAME_PID);
    let Some(thread) = THREADS.get_ptr_mut(tid as u32) else {
        return 0;
    };
    // Four aligned words: the verifier refuses context reads not aligned to their size, and
    // `newcomm` sits at an offset that is a multiple of 4 only.
    let at = tracepoint_fields::RENAME_NEWCOMM;
    let words: [u32; 4] = [
        field(&ctx, at),
        field(&ctx, at + 4),
        field(&ctx, at + 8),
        field(&ctx, at + 12),
    ];
    // SAFETY: four u32 are sixteen bytes, any bit pattern a valid byte array.
    let comm: [u8; COMM_LEN] = unsafe { core::mem::transmute(words) };
    // SAFETY: a plain write to a map value; a switch reading it at the same time sees either
    // name, or for one record a mix of both.
    unsafe { (*thread).off_cpu.comm = comm };
    0
}
