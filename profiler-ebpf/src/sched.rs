//! Off-CPU and run-queue time: the `sched_switch`/`sched_wakeup` programs that time each target
//! thread's off-CPU periods (with the stacks it left the CPU with) and run-queue delays, and
//! the double-buffered off-CPU time maps.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_comm, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::HashMap,
    programs::{TracePointContext, tracing::StackIdContext as _},
};
use profiler_common::{
    COMM_LEN, CONTROL_ATTACH_NS, OFFCPU_MAP_ENTRIES, OFFCPU_STATE_BEFORE_ATTACH,
    OFFCPU_STATE_PREEMPTED, OffCpuKey, OffCpuTime, RECORDING_STOPPED, STACK_ID_NONE, ThreadState,
    counter, floor_log2, tracepoint_fields,
};

use crate::{
    helpers::{active_map, add_to_counter, bump, current_tgid_tid, field, stack_id, user_stack},
    maps::{CONTROL, STACKS, THREADS},
    unwind,
};

/// Off-CPU periods shorter than this are counted but not recorded, ns.
#[unsafe(no_mangle)]
static MIN_BLOCK_NS: u64 = 0;

/// Off-CPU time per thread, stacks and state; double-buffered like the sample maps.
#[map]
static OFFCPU_0: HashMap<OffCpuKey, OffCpuTime> = HashMap::with_max_entries(OFFCPU_MAP_ENTRIES, 0);
#[map]
static OFFCPU_1: HashMap<OffCpuKey, OffCpuTime> = HashMap::with_max_entries(OFFCPU_MAP_ENTRIES, 0);

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
        // The name is read once per thread, and `task_rename` keeps it current: a copy at
        // every switch would cost more.
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
    match try_sched_switch(ctx) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

#[inline(always)]
fn try_sched_switch(ctx: TracePointContext) -> Result<u32, u32> {
    let active = active_map();
    if active == RECORDING_STOPPED {
        return Err(0);
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
    Ok(0)
}

/// A target thread becomes runnable: its run-queue delay starts.
#[tracepoint(category = "sched", name = "sched_wakeup")]
pub fn sched_wakeup(ctx: TracePointContext) -> u32 {
    match try_sched_wakeup(ctx) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

#[inline(always)]
fn try_sched_wakeup(ctx: TracePointContext) -> Result<u32, u32> {
    let tid: i32 = field(&ctx, tracepoint_fields::WAKEUP_PID);
    let thread = target_thread(tid as u32).ok_or(0u32)?;
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
