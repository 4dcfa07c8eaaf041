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
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{btf_tracepoint, map, perf_event, tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf, StackTrace},
    programs::{
        BtfTracePointContext, PerfEventContext, TracePointContext, tracing::StackIdContext,
    },
};
use aya_log_ebpf::debug;
use profiler_common::{
    COMM_LEN, CONTROL_ACTIVE_SAMPLE_MAP, CONTROL_ATTACH_NS, CONTROL_ENTRIES,
    CONTROL_FIRST_SAMPLE_NS, OFFCPU_MAP_ENTRIES, OFFCPU_STATE_BEFORE_ATTACH,
    OFFCPU_STATE_NEW_THREAD, OFFCPU_STATE_PREEMPTED, OffCpuKey, OffCpuStart, OffCpuTime,
    ProcessEvent, RECORDING_STOPPED, RUNQ_SLOTS, SAMPLE_MAP_ENTRIES, STACK_ID_COLLISION,
    STACK_ID_ERROR, STACK_ID_NONE, STACK_MAP_ENTRIES, SampleKey, TARGET_FOLLOW_CHILDREN,
    TARGET_MAP_ENTRIES, THREAD_MAP_ENTRIES, TargetFlags, ThreadState, counter, process_event,
    tracepoint_fields,
};

/// Offsets of `pid` and `tgid` in `struct task_struct`, read from the kernel's BTF by the
/// collector.
#[unsafe(no_mangle)]
static TASK_STRUCT_PID_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static TASK_STRUCT_TGID_OFFSET: u32 = 0;
/// Non-zero when the scheduler programs run: new target threads then get a `THREADS` entry.
#[unsafe(no_mangle)]
static TRACK_THREADS: u32 = 0;
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
fn bump(index: u32) {
    if let Some(count) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and programs do not preempt each other on one CPU.
        unsafe { *count += 1 };
    }
}

#[inline(always)]
fn add_to_counter(index: u32, value: u64) {
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
    let user_stack_id = stack_id(
        ctx.get_stackid(&STACKS, u64::from(BPF_F_USER_STACK)),
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

fn send_process_event(kind: u32, pid: u32, parent_pid: u32) {
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
    debug!(&ctx, "target {} executed a new program", tgid);
    send_process_event(process_event::EXEC, tgid, tgid);
    0
}

/// Floor of log2, 0 for 0.
#[inline(always)]
fn log2(mut value: u64) -> usize {
    let mut result = 0;
    for shift in [32, 16, 8, 4, 2, 1] {
        if value >= 1 << shift {
            value >>= shift;
            result += shift;
        }
    }
    result
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
    let user_stack_id = stack_id(
        ctx.get_stackid(&STACKS, u64::from(BPF_F_USER_STACK)),
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
            if let Some(bucket) = (*thread).run_queue_slots.get_mut(log2(delay / 1000)) {
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
