//! Records shared by the eBPF programs (`profiler-ebpf`) and the collector (`profiler`).
//!
//! Every type here is `#[repr(C)]` with explicit padding and a size assertion, because the two
//! sides are compiled by different compilers for different targets and meet only in map memory.
#![no_std]
#![deny(missing_docs)]

/// Length of a kernel task name (`TASK_COMM_LEN`), NUL-padded.
pub const COMM_LEN: usize = 16;

/// Capacity of the stack-trace map shared by user and kernel stacks.
///
/// `bpf_get_stackid` hashes a stack into one bucket and fails with `-EEXIST` when a different
/// stack already occupies it, so this bounds both the number of distinct stacks and the collision
/// rate (about `distinct_stacks / STACK_MAP_ENTRIES` per new stack). Each entry costs
/// `PERF_MAX_STACK_DEPTH * 8` bytes of kernel memory.
pub const STACK_MAP_ENTRIES: u32 = 16 * 1024;

/// Capacity of each of the two sample-count maps (see [`SampleKey`]).
pub const SAMPLE_MAP_ENTRIES: u32 = 32 * 1024;

/// Capacity of the map of profiled processes.
pub const TARGET_MAP_ENTRIES: u32 = 8 * 1024;

/// Stack id recorded when no stack of that kind exists (user mode sample: no kernel stack;
/// kernel thread: no user stack).
pub const STACK_ID_NONE: i32 = -1;
/// Stack id recorded when the stack map bucket was taken by another stack (`-EEXIST`).
pub const STACK_ID_COLLISION: i32 = -2;
/// Stack id recorded when the kernel could not walk the stack for another reason.
pub const STACK_ID_ERROR: i32 = -3;

/// Key of the in-kernel sample aggregation: one count per thread, name and stack pair.
///
/// The thread name is part of the key so a thread renamed during the run keeps each name's
/// samples, and so the collector still knows the name of a thread that exited before a drain.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SampleKey {
    /// Process id (`tgid`).
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// Id in the stack map of the user stack, or one of the `STACK_ID_*` values.
    pub user_stack_id: i32,
    /// Id in the stack map of the kernel stack, or one of the `STACK_ID_*` values.
    pub kernel_stack_id: i32,
    /// Thread name at sample time.
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<SampleKey>() == 32);

/// Values of [`TargetFlags`]: what to do for a profiled process.
pub type TargetFlags = u32;
/// Also profile processes this one forks, transitively.
pub const TARGET_FOLLOW_CHILDREN: TargetFlags = 1;

/// Indices into the per-CPU `COUNTERS` array.
pub mod counter {
    /// CPU samples taken from target threads.
    pub const CPU_SAMPLES: u32 = 0;
    /// User stacks lost to a stack-map bucket collision.
    pub const USER_STACK_COLLISIONS: u32 = 1;
    /// Kernel stacks lost to a stack-map bucket collision.
    pub const KERNEL_STACK_COLLISIONS: u32 = 2;
    /// User stacks the kernel failed to collect for another reason.
    pub const USER_STACK_ERRORS: u32 = 3;
    /// Kernel stacks the kernel failed to collect for another reason.
    pub const KERNEL_STACK_ERRORS: u32 = 4;
    /// Samples dropped because the sample-count map was full.
    pub const SAMPLE_MAP_FULL: u32 = 5;
    /// Process events dropped because the ring buffer was full.
    pub const PROCESS_EVENTS_LOST: u32 = 6;
    /// New processes not followed because the target map was full.
    pub const TARGET_MAP_FULL: u32 = 7;
    /// Off-CPU periods shorter than the minimum block time, not recorded.
    pub const OFFCPU_FILTERED: u32 = 8;
    /// Total time of the filtered off-CPU periods, ns.
    pub const OFFCPU_FILTERED_NS: u32 = 9;
    /// Off-CPU periods or run-queue delays dropped because a map was full.
    pub const OFFCPU_MAP_FULL: u32 = 10;
    /// Stacks of switch-outs lost to a stack-map collision.
    pub const OFFCPU_STACK_COLLISIONS: u32 = 11;
    /// Number of counters.
    pub const COUNT: u32 = 12;
}

/// Index in the `CONTROL` array of the sample-count map the programs currently write (0 or 1),
/// or [`RECORDING_STOPPED`].
pub const CONTROL_ACTIVE_SAMPLE_MAP: u32 = 0;
/// `CONTROL[CONTROL_ACTIVE_SAMPLE_MAP]` once the run has ended: the programs record nothing and
/// leave their per-thread state as it was at the end, for the collector to read.
pub const RECORDING_STOPPED: u64 = 2;
/// Index in the `CONTROL` array of the earliest sample's `CLOCK_MONOTONIC` time in ns
/// (0 until the first sample).
pub const CONTROL_FIRST_SAMPLE_NS: u32 = 1;
/// Index in the `CONTROL` array of the `CLOCK_MONOTONIC` time the programs were attached, ns.
pub const CONTROL_ATTACH_NS: u32 = 2;
/// Number of `CONTROL` entries.
pub const CONTROL_ENTRIES: u32 = 3;

/// Offsets of the fields the scheduler programs read from the classic `sched` tracepoint
/// records, checked against tracefs' `format` files by the collector before loading.
pub mod tracepoint_fields {
    /// `sched_switch`: `long prev_state` (a `TASK_REPORT` bit mask).
    pub const SWITCH_PREV_STATE: usize = 32;
    /// `sched_switch`: `pid_t next_pid`.
    pub const SWITCH_NEXT_PID: usize = 56;
    /// `sched_wakeup` / `sched_wakeup_new`: `pid_t pid`.
    pub const WAKEUP_PID: usize = 24;
}

/// Capacity of the per-thread scheduler state map.
pub const THREAD_MAP_ENTRIES: u32 = 16 * 1024;
/// Capacity of each of the two off-CPU time maps (see [`OffCpuKey`]).
pub const OFFCPU_MAP_ENTRIES: u32 = 32 * 1024;
/// Log2 buckets of the run-queue delay histogram, in microseconds (bucket `i` holds delays in
/// `[2^i, 2^(i+1))` µs; bucket 0 also holds delays under 1 µs).
pub const RUNQ_SLOTS: usize = 32;

/// `state` of an [`OffCpuKey`] for a thread that went off-CPU before the programs were attached
/// (its stack is unknown).
pub const OFFCPU_STATE_BEFORE_ATTACH: u32 = 0xffff_0001;
/// `state` of an [`OffCpuKey`] for a new thread waiting for its first run.
pub const OFFCPU_STATE_NEW_THREAD: u32 = 0xffff_0002;
/// `state` of an [`OffCpuKey`] for a thread preempted while runnable.
pub const OFFCPU_STATE_PREEMPTED: u32 = 0xffff_0003;

/// A target thread's last switch-out, kept (and reused) per thread so that a switch costs
/// in-place updates rather than map insertions and deletions.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffCpuStart {
    /// `CLOCK_MONOTONIC` time of the switch-out, ns; 0 while the thread is on a CPU.
    pub start_ns: u64,
    /// When the thread became runnable again (woken or preempted), ns; 0 if not yet.
    pub runnable_ns: u64,
    /// Process id.
    pub tgid: u32,
    /// User stack id at switch-out, or a `STACK_ID_*` value.
    pub user_stack_id: i32,
    /// Kernel stack id at switch-out, or a `STACK_ID_*` value.
    pub kernel_stack_id: i32,
    /// Task state at switch-out (`TASK_*` bits), or an `OFFCPU_STATE_*` value.
    pub state: u32,
    /// Thread name.
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<OffCpuStart>() == 48);

/// Key of the in-kernel off-CPU aggregation: time per thread, stack pair and state.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OffCpuKey {
    /// Process id.
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// User stack id at switch-out, or a `STACK_ID_*` value.
    pub user_stack_id: i32,
    /// Kernel stack id at switch-out, or a `STACK_ID_*` value.
    pub kernel_stack_id: i32,
    /// Task state at switch-out, see [`OffCpuStart::state`].
    pub state: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Thread name.
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<OffCpuKey>() == 40);

/// Off-CPU time of one [`OffCpuKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffCpuTime {
    /// Total time off-CPU, ns (blocked, then waiting for a CPU once woken).
    pub total_ns: u64,
    /// Number of off-CPU periods.
    pub count: u64,
}
const _: () = assert!(size_of::<OffCpuTime>() == 16);

/// Everything the scheduler programs keep about one target thread, in one map entry so a
/// context switch costs a single lookup per thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadState {
    /// The current (or last) off-CPU period.
    pub off_cpu: OffCpuStart,
    /// Non-zero once the thread exited; the collector then takes the entry out.
    pub exited: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Run-queue delays (wakeup or preemption to running): count.
    pub run_queue_count: u64,
    /// Sum of the delays, ns.
    pub run_queue_total_ns: u64,
    /// Longest delay, ns.
    pub run_queue_max_ns: u64,
    /// Log2 histogram of the delays in µs, see [`RUNQ_SLOTS`].
    pub run_queue_slots: [u64; RUNQ_SLOTS],
}
const _: () = assert!(size_of::<ThreadState>() == 48 + 8 + 24 + 8 * RUNQ_SLOTS);

/// Kinds of [`ProcessEvent`].
pub mod process_event {
    /// A profiled process forked a new process, now profiled too.
    pub const FORK: u32 = 1;
    /// A profiled process executed a new program.
    pub const EXEC: u32 = 2;
}

/// A change in the set of profiled processes or their programs, streamed so the collector
/// can read the process's memory map while it is still there.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessEvent {
    /// One of the [`process_event`] kinds.
    pub kind: u32,
    /// The process (`tgid`) the event is about.
    pub pid: u32,
    /// The forking process for `FORK`; the same as `pid` for `EXEC`.
    pub parent_pid: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// `CLOCK_MONOTONIC` time of the event in ns.
    pub time_ns: u64,
    /// Name of the calling task.
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<ProcessEvent>() == 40);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers with no padding.
    unsafe impl aya::Pod for super::SampleKey {}
    // SAFETY: plain `#[repr(C)]` integers with no padding.
    unsafe impl aya::Pod for super::ProcessEvent {}
    // SAFETY: plain `#[repr(C)]` integers with no padding.
    unsafe impl aya::Pod for super::OffCpuStart {}
    // SAFETY: plain `#[repr(C)]` integers with no padding.
    unsafe impl aya::Pod for super::OffCpuKey {}
    // SAFETY: plain `#[repr(C)]` integers with no padding.
    unsafe impl aya::Pod for super::OffCpuTime {}
    // SAFETY: plain `#[repr(C)]` integers with no padding.
    unsafe impl aya::Pod for super::ThreadState {}
}
