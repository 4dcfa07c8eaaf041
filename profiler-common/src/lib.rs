//! Records shared by the eBPF programs (`profiler-ebpf`) and the collector (`profiler`).
//!
//! Every type here is `#[repr(C)]` with explicit padding and a size assertion, because the two
//! sides are compiled by different compilers for different targets and meet only in map memory.
#![no_std]
#![deny(missing_docs)]

/// Length of a kernel task name (`TASK_COMM_LEN`), NUL-padded.
pub const COMM_LEN: usize = 16;

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
/// Stack id standing for a stack lost because the stack map was full.
pub const STACK_ID_MAP_FULL: i32 = -4;
/// Stack id of events whose stack was not walked, by design (stack sampling of short I/O
/// calls): counted and timed exactly, in no flamegraph.
pub const STACK_ID_UNSAMPLED: i32 = -5;
/// Stack id of a sampled off-CPU period whose user stack could not be walked: the thread ran
/// on (left the system call, or returned from a fault) before its stack could be read.
pub const STACK_ID_RAN_ON: i32 = -6;
/// Frames kept of a kernel stack (`PERF_MAX_STACK_DEPTH`, as the kernel's stack-trace map kept).
pub const MAX_KERNEL_FRAMES: usize = 127;
/// Capacity of the map of kernel stacks not yet drained by the collector (allocated on
/// demand; drained every second).
pub const KERNEL_STACK_ENTRIES: u32 = 16 * 1024;
/// Capacity of the map of every distinct kernel stack's hash in a run, by id (allocated on
/// demand): a stack seen before is not stored again.
pub const KERNEL_STACK_HASH_ENTRIES: u32 = 1 << 18;
/// Frames the kernel's frame-pointer walker returns at most (`kernel.perf_event_max_stack`'s
/// default, `PERF_MAX_STACK_DEPTH`): user stacks under `--unwind fp`.
pub const MAX_FP_FRAMES: usize = 127;

/// A kernel stack, by the hash of its frames.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelStack {
    /// Hash of the frames; tells two stacks of one id apart.
    pub hash: u64,
    /// Frames in use.
    pub len: u64,
    /// Return addresses, innermost first.
    pub frames: [u64; MAX_KERNEL_FRAMES],
}
const _: () = assert!(size_of::<KernelStack>() == 16 + 8 * MAX_KERNEL_FRAMES);

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
    /// No longer counted (it was the kernel stack-trace map's bucket collisions for user
    /// stacks); user stacks lost to an id collision are in [`USER_STACKS_LOST`]. Kept so that
    /// the indices stay put.
    pub const USER_STACK_COLLISIONS: u32 = 1;
    /// Kernel stacks lost because another kernel stack of the run has the same id (31 bits of
    /// the hash).
    pub const KERNEL_STACK_COLLISIONS: u32 = 2;
    /// User stacks the kernel failed to collect for another reason.
    pub const USER_STACK_ERRORS: u32 = 3;
    /// Kernel stacks the kernel failed to collect, or lost because the map of kernel stacks
    /// not yet drained by the collector was full.
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
    /// Stacks of off-CPU periods lost because another stack of the run has the same id.
    pub const OFFCPU_STACK_COLLISIONS: u32 = 11;
    /// I/O calls dropped because the I/O totals map was full.
    pub const IO_MAP_FULL: u32 = 12;
    /// I/O calls not timed because the map of calls in progress was full.
    pub const IO_PENDING_FULL: u32 = 13;
    /// File opens whose path was lost because the ring buffer was full.
    pub const OPEN_EVENTS_LOST: u32 = 14;
    /// Block requests not timed because the map of requests in flight was full.
    pub const BLOCK_PENDING_FULL: u32 = 15;
    /// I/O calls of target threads (recorded or not).
    pub const IO_CALLS: u32 = 16;
    /// Allocations not tracked as live because the live-allocation map was full.
    pub const LIVE_MAP_FULL: u32 = 17;
    /// Allocation sites not counted because the site map was full.
    pub const ALLOC_SITES_FULL: u32 = 18;
    /// Allocation calls of target threads seen (sampled or not).
    pub const ALLOC_CALLS: u32 = 19;
    /// User stacks walked by the in-kernel unwinder.
    pub const UNWIND_STACKS: u32 = 20;
    /// Frames the in-kernel unwinder walked with an unwind table row.
    pub const UNWIND_TABLE_FRAMES: u32 = 21;
    /// Frames the in-kernel unwinder walked by frame pointer (no row for the address).
    pub const UNWIND_FP_FRAMES: u32 = 22;
    /// User stacks lost because another stack of the run has the same id (31 bits of the
    /// hash).
    pub const USER_STACKS_LOST: u32 = 23;
    /// User stacks lost because the map of stacks not yet drained by the collector was full.
    pub const USER_STACK_MAP_FULL: u32 = 24;
    /// Sampled off-CPU periods whose user stack could not be walked: the thread ran on
    /// before its next system-call exit or switch-out.
    pub const OFFCPU_STACKS_RAN_ON: u32 = 25;
    /// User stacks walked for off-CPU periods and I/O calls: the walks the stack-sampling
    /// threshold governs, read at every tick of the collector (see `collect::budget`).
    pub const EVENT_STACKS_WALKED: u32 = 26;
    /// Number of counters.
    pub const COUNT: u32 = 27;
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
/// Index in the `CONTROL` array of the off-CPU stack-sampling threshold, ns: a period at least
/// this long gets its stacks; a shorter one with probability (its time / this), weighted at
/// this. 0: every period. Set, and changed during the run, by the collector's overhead budget.
pub const CONTROL_OFFCPU_SAMPLE_BELOW_NS: u32 = 3;
/// Index in the `CONTROL` array of the same threshold for I/O calls, ns.
pub const CONTROL_IO_SAMPLE_BELOW_NS: u32 = 4;
/// Index in the `CONTROL` array of a flag the collector sets once the off-CPU threshold has
/// been above 0: periods may be pending their user stack from then on, even at threshold 0.
pub const CONTROL_OFFCPU_SAMPLED: u32 = 5;
/// Index in the `CONTROL` array of the target set's stamp: a new random value written after
/// every change of `TARGETS` (by the collector, and by the fork program), so the per-CPU
/// cache of whether the current thread is a target knows when it is stale.
pub const CONTROL_TARGETS_STAMP: u32 = 6;
/// Number of `CONTROL` entries.
pub const CONTROL_ENTRIES: u32 = 7;

/// Where, in the object with the stack walker inlined (kernels without private stacks), the
/// programs that walk user stacks are found by the ones that hand their walks over to them by
/// tail call; set by the collector.
pub mod tail_call {
    /// In `SYS_EXIT_TAIL_CALLS`: `sys_exit_walk`, which walks the stack of a system call's
    /// exit (a sampled I/O call's, a sampled off-CPU period's).
    pub const WALK_EXIT: u32 = 0;
    /// In `SCHED_SWITCH_TAIL_CALLS` (one array per tracepoint: the kernel lets a tracing
    /// program tail-call only programs of its own hook): `sched_switch_walk`, which walks the
    /// stack of a thread leaving the CPU.
    pub const WALK_SWITCH_OUT: u32 = 0;
}

/// Offsets of the fields the thread-name program reads from the classic `task_rename`
/// tracepoint record, checked against tracefs' `format` file by the collector before loading.
pub mod tracepoint_fields {
    /// `task_rename`: `pid_t pid` (the renamed thread, not necessarily the caller).
    pub const RENAME_PID: usize = 8;
    /// `task_rename`: `char newcomm[16]`.
    pub const RENAME_NEWCOMM: usize = 28;
}

/// Capacity of the per-thread scheduler state map.
pub const THREAD_MAP_ENTRIES: u32 = 16 * 1024;

/// The word and bit of `tid` in a bitmap of tids, 64 to a word.
#[inline(always)]
pub const fn tid_bit(tid: u32) -> (u32, u64) {
    (tid / 64, 1 << (tid % 64))
}

/// The word and byte of `tid` in a map of tids with a byte each, 8 to a word: what a BPF
/// program sets, since it has no atomic operations (built from Rust) and a byte is stored whole.
#[inline(always)]
pub const fn tid_byte(tid: u32) -> (u32, u32) {
    (tid / 8, tid % 8)
}

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

/// A sampled off-CPU period whose user stack is still to be walked, at the thread's next
/// system-call exit or switch-out (the walk needs the thread's own context).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingWalk {
    /// The period's time, ns; 0 when nothing is pending.
    pub total_ns: u64,
    /// Its flamegraph weight, ns.
    pub stack_ns: u64,
    /// User stack pointer and instruction pointer the thread blocked with.
    pub user_sp: u64,
    /// See `user_sp`.
    pub user_ip: u64,
    /// Kernel stack id, read at switch-in.
    pub kernel_stack_id: i32,
    /// Task state at switch-out, see [`OffCpuStart::state`].
    pub state: u32,
}
const _: () = assert!(size_of::<PendingWalk>() == 40);

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
    /// Flamegraph weight, ns: the period's own time when every stack is walked; with stack
    /// sampling, at least the threshold for a walked period and 0 for the others.
    pub stack_ns: u64,
}
const _: () = assert!(size_of::<OffCpuTime>() == 24);

/// Everything the scheduler programs keep about one target thread, in one map entry so a
/// context switch costs a single lookup per thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadState {
    /// The current (or last) off-CPU period.
    pub off_cpu: OffCpuStart,
    /// A sampled period waiting for its user stack.
    pub pending: PendingWalk,
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
    /// The kernel's own count of the thread's arrivals on a CPU (`sched_info.pcount`) and sum
    /// of their run-queue delays (`sched_info.run_delay`) at its last switch-out: the delays
    /// since are the differences. 0 for a thread born during the run (the kernel's start at 0
    /// too); [`RUN_DELAY_UNKNOWN`] until the first switch-out of a thread that existed before.
    pub sched_pcount: u64,
    /// See `sched_pcount`.
    pub sched_run_delay_ns: u64,
    /// The I/O call the thread is in while off the CPU (`start_ns` 0: none): moved here from
    /// the CPU's slot as it leaves it, taken by the call's exit.
    pub io: IoPending,
}
const _: () = assert!(size_of::<ThreadState>() == 48 + 40 + 8 + 24 + 8 * RUNQ_SLOTS + 16 + 32);

/// [`ThreadState::sched_pcount`] of a thread whose counts before its first switch-out are not
/// known: that switch-out only notes them.
pub const RUN_DELAY_UNKNOWN: u64 = u64::MAX;

/// Kinds of [`ProcessEvent`].
pub mod process_event {
    /// A profiled process forked a new process, now profiled too.
    pub const FORK: u32 = 1;
    /// A profiled process executed a new program.
    pub const EXEC: u32 = 2;
    /// The unwinder met an address of the process it has no table for (the process is new,
    /// executed a program, or mapped a library): load its tables.
    pub const UNWIND_TABLES_MISSING: u32 = 3;
    /// A profiled process closed a range of its fds (`close_range`): the files opened during
    /// the run may no longer be what their fd numbers name.
    pub const FILES_CLOSED: u32 = 4;
    /// A process that is not profiled executed a new program (told only when processes are
    /// selected by name or cgroup): the collector may make it a target.
    pub const UNTARGETED_EXEC: u32 = 5;
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

/// Indices of the block-request programs' `BLOCK_FIELD_OFFSETS` global: where the classic
/// `block` tracepoint records hold the fields read, taken from tracefs' `format` files at load
/// (6.x kernels added `ioprio` before `rwbs`).
pub mod block_field {
    /// `block_rq_issue` / `block_rq_complete`: `dev_t dev`.
    pub const DEV: usize = 0;
    /// `block_rq_issue` / `block_rq_complete`: `sector_t sector`.
    pub const SECTOR: usize = 1;
    /// `block_rq_issue`: `unsigned int bytes`.
    pub const BYTES: usize = 2;
    /// `block_rq_issue` / `block_rq_complete`: `char rwbs[]` (operation letters).
    pub const RWBS: usize = 3;
    /// Entries.
    pub const COUNT: usize = 4;
}

/// Entries of the `SYSCALLS` array: system call numbers the I/O programs look at.
pub const SYSCALL_TABLE_ENTRIES: u32 = 512;

/// What an I/O system call does with its arguments, encoded in a `SYSCALLS` array value as
/// `kind << 8 | index`, where `index` (1-based) names the call in the collector's table.
pub mod io_kind {
    /// Reads or writes through the fd in `args[0]`; returns bytes moved.
    pub const TRANSFER: u32 = 1;
    /// Flushes the fd in `args[0]` (fsync and friends).
    pub const SYNC: u32 = 2;
    /// Opens `args[0]` (a path); returns the new fd.
    pub const OPEN: u32 = 3;
    /// Opens `args[1]` relative to the directory fd `args[0]`; returns the new fd.
    pub const OPEN_AT: u32 = 4;
    /// Closes the fd in `args[0]`.
    pub const CLOSE: u32 = 5;
    /// `mmap(addr, length, ...)`: maps `args[1]` bytes.
    pub const MMAP: u32 = 6;
    /// `munmap(addr, length)`: unmaps `args[1]` bytes.
    pub const MUNMAP: u32 = 7;
    /// `brk(addr)`: moves the heap's end; returns the new end.
    pub const BRK: u32 = 8;
    /// `dup2`/`dup3(old, new)`: the fd returned now names another file.
    pub const DUP: u32 = 9;
    /// `close_range(first, last)`: closes a range of fds.
    pub const CLOSE_RANGE: u32 = 10;
}

/// Capacity of the I/O maps (totals, calls in progress, open files).
pub const IO_MAP_ENTRIES: u32 = 16 * 1024;
/// Longest path an open event carries, including the NUL.
pub const PATH_LEN: usize = 256;

/// An I/O system call in progress on a target thread, kept from entry to exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoPending {
    /// `CLOCK_MONOTONIC` time of the entry, ns.
    pub start_ns: u64,
    /// `args[0]` and `args[1]`; for a close, `args[1]` is the inode `file_id` of the fd, read
    /// at the entry.
    pub args: [u64; 2],
    /// The `SYSCALLS` value of the call.
    pub call: u32,
    /// Explicit padding.
    pub _pad: u32,
}
const _: () = assert!(size_of::<IoPending>() == 32);

/// Key of the open-files map: which file an fd of a process names since when.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FdKey {
    /// Process id.
    pub tgid: u32,
    /// File descriptor.
    pub fd: i32,
}
const _: () = assert!(size_of::<FdKey>() == 8);

/// Key of the in-kernel I/O aggregation: time, calls and bytes per thread, stack, call and file.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IoKey {
    /// Process id.
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// User stack id, or a `STACK_ID_*` value.
    pub user_stack_id: i32,
    /// Index of the call in the collector's table (the low byte of its `SYSCALLS` value).
    pub call: u32,
    /// File descriptor (the new one for opens).
    pub fd: i32,
    /// Explicit padding.
    pub _pad: u32,
    /// Open time (ns) of the file the fd names, as reported in its [`OpenEvent`]; for fds
    /// opened before the programs were attached or by calls they do not watch (pipes,
    /// sockets, dups), [`FILE_ID_INODE`] with the inode's type and number (see
    /// [`inode_file_id`]); 0 when neither is known.
    pub file_id: u64,
    /// Thread name.
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<IoKey>() == 48);

/// Marks an [`IoKey::file_id`] that names an inode rather than an open.
pub const FILE_ID_INODE: u64 = 1 << 63;

/// The `file_id` of an fd known by its inode: `FILE_ID_INODE | type << 48 | number`, where
/// `type` is the `S_IFMT` bits of the mode shifted down by 12 (`S_IFIFO` = 1, `S_IFSOCK` = 12).
#[inline(always)]
pub fn inode_file_id(mode: u16, inode: u64) -> u64 {
    FILE_ID_INODE | (u64::from(mode >> 12) << 48) | (inode & ((1 << 48) - 1))
}

/// Totals of one [`IoKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoTotal {
    /// Calls.
    pub count: u64,
    /// Time in the calls, ns.
    pub total_ns: u64,
    /// Bytes moved (sum of positive return values of transfers).
    pub bytes: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Time the flamegraph gives the key's stack, ns: a walked call's own time, or the
    /// sampling threshold for a shorter call (walked with probability time / threshold), so
    /// that it adds up to the calls' time on average. 0 for calls not walked.
    pub stack_ns: u64,
}
const _: () = assert!(size_of::<IoTotal>() == 40);

/// A file a target opened: its fd, open time (the `file_id` of later calls) and path as passed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenEvent {
    /// Process id.
    pub tgid: u32,
    /// The new file descriptor.
    pub fd: i32,
    /// Open time, ns.
    pub open_ns: u64,
    /// Directory fd of `openat` (`AT_FDCWD` = -100 for the working directory).
    pub dir_fd: i32,
    /// Explicit padding.
    pub _pad: u32,
    /// The path as the program passed it, NUL-terminated.
    pub path: [u8; PATH_LEN],
}
const _: () = assert!(size_of::<OpenEvent>() == 24 + PATH_LEN);

/// Latency histogram slots per I/O call: log2 of the latency in ns with four linear sub-buckets
/// each (a slot spans at most a quarter of its lower bound).
pub const LATENCY_SLOTS: u32 = 4 * 48;
/// Most distinct I/O calls the histograms keep (indices 1..MAX_IO_CALLS).
pub const MAX_IO_CALLS: u32 = 32;

/// Floor of log2, 0 for 0. Written with shifts: BPF has no count-leading-zeros instruction.
#[inline(always)]
pub fn floor_log2(mut value: u64) -> u32 {
    let mut result = 0;
    for shift in [32, 16, 8, 4, 2, 1] {
        if value >= 1 << shift {
            value >>= shift;
            result += shift;
        }
    }
    result
}

/// Histogram slot of a latency in ns.
#[inline(always)]
pub fn latency_slot(ns: u64) -> u32 {
    if ns < 4 {
        return ns as u32;
    }
    let msb = floor_log2(ns);
    let sub = ((ns >> (msb - 2)) & 3) as u32;
    let slot = msb * 4 + sub;
    if slot < LATENCY_SLOTS {
        slot
    } else {
        LATENCY_SLOTS - 1
    }
}

/// Smallest latency in ns that falls in `slot` (the inverse of [`latency_slot`]).
pub fn latency_slot_floor(slot: u32) -> u64 {
    if slot < 8 {
        // Slots 0-3 hold 0-3 ns; 4-7 are unused by latency_slot (msb >= 2 starts at 8).
        return u64::from(slot);
    }
    let msb = slot / 4;
    let sub = u64::from(slot % 4);
    (4 + sub) << (msb - 2)
}

/// Key of the block-request statistics: device and operation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockKey {
    /// Device number (`dev_t`, kernel encoding: major << 20 | minor).
    pub dev: u32,
    /// First letters of the request's `rwbs` (operation and flags), NUL-padded.
    pub rwbs: [u8; 4],
}
const _: () = assert!(size_of::<BlockKey>() == 8);

/// A block request of a target in flight, keyed by device and sector.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockPending {
    /// Issue time, ns.
    pub start_ns: u64,
    /// Request size, bytes.
    pub bytes: u64,
    /// Device and operation.
    pub key: BlockKey,
}
const _: () = assert!(size_of::<BlockPending>() == 24);

/// Key of the block requests in flight.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockRequest {
    /// Device number.
    pub dev: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Start sector.
    pub sector: u64,
}
const _: () = assert!(size_of::<BlockRequest>() == 16);

/// Statistics of one [`BlockKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Requests completed.
    pub count: u64,
    /// Bytes.
    pub bytes: u64,
    /// Issue-to-completion time, ns.
    pub total_ns: u64,
    /// Longest request, ns.
    pub max_ns: u64,
}
const _: () = assert!(size_of::<BlockStats>() == 32);

/// How an allocator function takes its arguments, the low byte of its uprobe cookie (the rest
/// is the function's index in the collector's table, for its name).
pub mod alloc_layout {
    /// `size` in the first argument (malloc, valloc, pvalloc).
    pub const SIZE0: u64 = 1;
    /// `size` in the second argument (memalign, aligned_alloc).
    pub const SIZE1: u64 = 2;
    /// `calloc(count, size)`.
    pub const CALLOC: u64 = 3;
    /// `realloc(ptr, size)`.
    pub const REALLOC: u64 = 4;
    /// `reallocarray(ptr, count, size)`.
    pub const REALLOCARRAY: u64 = 5;
    /// `posix_memalign(&ptr, alignment, size)`: the pointer is stored, 0 returned.
    pub const POSIX_MEMALIGN: u64 = 6;
    /// `free(ptr)`.
    pub const FREE: u64 = 7;
}

/// An allocator call in progress on a target thread, and the thread's sampling state; one
/// entry per thread, reused.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocPending {
    /// Requested size, bytes.
    pub size: u64,
    /// `realloc`: the old pointer; `posix_memalign`: where the new pointer will be stored.
    pub aux: u64,
    /// Return address into the caller, read at the allocator's entry.
    pub ret_addr: u64,
    /// Bytes this allocation stands for (its size, or more when sampled); 0 when not recorded.
    pub weight: u64,
    /// Bytes left until the next sampled allocation (`--alloc-sample`).
    pub countdown: i64,
    /// User stack at the allocator's entry.
    pub user_stack_id: i32,
    /// The allocator function's uprobe cookie.
    pub cookie: u32,
}
const _: () = assert!(size_of::<AllocPending>() == 48);

/// Where allocations come from: thread, user stack, caller and allocator function.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AllocSite {
    /// Process id.
    pub tgid: u32,
    /// User stack at the allocator's entry, or a `STACK_ID_*` value.
    pub user_stack_id: i32,
    /// Return address into the allocator's caller (always right, whatever the unwinder did).
    pub ret_addr: u64,
    /// The allocator function's uprobe cookie.
    pub cookie: u32,
    /// Thread id.
    pub tid: u32,
}
const _: () = assert!(size_of::<AllocSite>() == 24);

/// Totals of one [`AllocSite`] on one CPU (allocations and frees of one site happen on any CPU;
/// the collector sums the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocStats {
    /// Allocations recorded.
    pub alloc_count: u64,
    /// Their bytes (weighted when sampled).
    pub alloc_bytes: u64,
    /// Those of them freed during the run.
    pub free_count: u64,
    /// Their bytes.
    pub free_bytes: u64,
    /// Sum of the freed ones' lifetimes, ns.
    pub lifetime_ns: u64,
}
const _: () = assert!(size_of::<AllocStats>() == 40);

/// Key of the live-allocation map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LiveKey {
    /// Process id.
    pub tgid: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// The allocation's address.
    pub ptr: u64,
}
const _: () = assert!(size_of::<LiveKey>() == 16);

/// A live allocation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveAlloc {
    /// Bytes it stands for (its size, or more when sampled).
    pub bytes: u64,
    /// When it was made, ns.
    pub time_ns: u64,
    /// Where.
    pub site: AllocSite,
}
const _: () = assert!(size_of::<LiveAlloc>() == 40);

/// Memory activity of one process, per CPU (summed by the collector).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessMemory {
    /// Bytes allocated (weighted when sampled).
    pub alloc_bytes: u64,
    /// Allocations recorded.
    pub alloc_count: u64,
    /// Bytes of recorded allocations freed.
    pub free_bytes: u64,
    /// Recorded allocations freed.
    pub free_count: u64,
    /// `mmap` calls that succeeded, and their bytes.
    pub mmap_count: u64,
    /// Bytes mapped.
    pub mmap_bytes: u64,
    /// `munmap` calls that succeeded.
    pub munmap_count: u64,
    /// Bytes unmapped.
    pub munmap_bytes: u64,
    /// `brk` calls.
    pub brk_count: u64,
    /// Net growth of the heap end through `brk`, bytes (may go down).
    pub brk_bytes: i64,
}
const _: () = assert!(size_of::<ProcessMemory>() == 80);

/// Capacity of the live-allocation map (allocated on demand, not up front).
pub const LIVE_MAP_ENTRIES: u32 = 1 << 20;
/// Capacity of the allocation-site map.
pub const ALLOC_SITE_ENTRIES: u32 = 32 * 1024;

/// Deepest user stack the in-kernel unwinder walks, frames.
pub const MAX_USER_FRAMES: usize = 512;
/// Capacity of the map of user stacks walked by the in-kernel unwinder and not yet drained by
/// the collector (allocated on demand; drained every second).
pub const USER_STACK_ENTRIES: u32 = 16 * 1024;
/// Capacity of the map of every distinct user stack's hash in a run, by id (allocated on
/// demand, 8 bytes a value): the stacks a run can tell apart.
pub const USER_STACK_HASH_ENTRIES: u32 = 1 << 20;
/// Unwind rows live in chunks of `1 << UNWIND_CHUNK_SHIFT` rows (8 MiB), made as objects need
/// them: a row's index names its chunk (high bits) and its place in it (low bits). An
/// object's rows are contiguous within a chunk; one larger than a chunk is split into pieces
/// by address, each described as a mapping of its own.
pub const UNWIND_CHUNK_SHIFT: u32 = 20;
/// Rows in one chunk.
pub const UNWIND_CHUNK_ROWS: u32 = 1 << UNWIND_CHUNK_SHIFT;
/// Chunks the unwinder can be given: 256 M rows, 2 GiB, far past any default.
pub const MAX_UNWIND_CHUNKS: u32 = 256;
/// Default most rows the chunks may hold together (8 bytes a row, 64 MiB), made only as
/// objects need them: rustc's libraries take about 3 M.
pub const DEFAULT_UNWIND_ROWS: u32 = 8 * UNWIND_CHUNK_ROWS;
/// Most rows one object's table may have (larger objects unwind by frame pointers): a bound
/// on what compiling one object takes, 24 bytes a rule, for a hostile file.
pub const MAX_OBJECT_ROWS: u32 = 1 << 23;
/// Executable mappings per process the unwinder knows (the rest unwind by frame pointers).
pub const MAX_PROCESS_MAPPINGS: usize = 256;
/// Capacity of the map of processes with unwind tables.
pub const UNWIND_PROCESS_ENTRIES: u32 = 4 * 1024;
/// Capacity of the map of objects with unwind tables, by file.
pub const UNWIND_OBJECT_ENTRIES: u32 = 8 * 1024;

/// What an [`UnwindRow`] says about the frame of an address it covers (x86-64).
pub mod unwind_kind {
    /// No unwind information: unwind this frame by the frame pointer.
    pub const NONE: u8 = 0;
    /// CFA = `rsp` + 8 × `cfa_offset`.
    pub const CFA_RSP: u8 = 1;
    /// CFA = `rbp` + 8 × `cfa_offset`.
    pub const CFA_RBP: u8 = 2;
    /// A PLT stub: CFA = `rsp` + 8 × `cfa_offset`, plus 8 when `(pc & 15) >= rbp_offset` (the
    /// expression every linker emits for `.plt`; `rbp_offset` holds the threshold).
    pub const PLT: u8 = 3;
    /// The outermost frame (`_start`, a thread's start): the return address is undefined.
    pub const END: u8 = 4;
}

/// One row of a compiled unwind table: how to find the caller's frame from any address at or
/// above `address` (up to the next row) in one object.
///
/// The return address is always at CFA - 8 (x86-64 psABI). Eight bytes, the kernel's array
/// element size, so a table costs 8 bytes a row. Offsets are in 8-byte words (stack slots are
/// 8-byte aligned on x86-64): frames up to 256 KiB; larger ones are walked by frame pointer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindRow {
    /// First address covered, in the object's own address space (file virtual address).
    pub address: u32,
    /// Offset added to the CFA base register, in 8-byte words.
    pub cfa_offset: i16,
    /// Where the caller's `rbp` is saved, relative to the CFA, in 8-byte words; 0 when `rbp`
    /// is unchanged. For [`unwind_kind::PLT`] rows, the PLT threshold (in bytes) instead.
    pub rbp_offset: i8,
    /// One of the [`unwind_kind`] values.
    pub kind: u8,
}
const _: () = assert!(size_of::<UnwindRow>() == 8);

/// One executable mapping of a process and the rows of its object.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindMapping {
    /// First address of the mapping.
    pub start: u64,
    /// First address after the mapping.
    pub end: u64,
    /// Load bias: object address = process address - `bias` (wrapping).
    pub bias: u64,
    /// Index of the first row of the object's (or, for one split into pieces, this piece's)
    /// rows: chunk and place in it (see [`UNWIND_CHUNK_SHIFT`]).
    pub first_row: u32,
    /// Number of rows (0: unwind this mapping by frame pointers), all in one chunk.
    pub row_count: u32,
}
const _: () = assert!(size_of::<UnwindMapping>() == 32);

/// A mapped file as the kernel knows it: its filesystem's device (the kernel's `dev_t`,
/// `major << 20 | minor`) and its inode number.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FileKey {
    /// Device of the file's filesystem.
    pub device: u64,
    /// Inode number.
    pub inode: u64,
}
const _: () = assert!(size_of::<FileKey>() == 16);

/// Where one object's rows are, found from the file behind an address: how the unwinder walks
/// a process whose mappings it has not been told yet (a new exec, a library just loaded).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObjectUnwind {
    /// File offsets `[text_start, text_end)` of the object's executable segment.
    pub text_start: u64,
    /// End of the executable segment's file range.
    pub text_end: u64,
    /// Object address = file offset + `address_delta` (wrapping), in that segment.
    pub address_delta: u64,
    /// Index of the object's first row (see [`UNWIND_CHUNK_SHIFT`]); objects split into
    /// pieces are not published by file.
    pub first_row: u32,
    /// Number of rows of the object (never 0), all in one chunk.
    pub row_count: u32,
}
const _: () = assert!(size_of::<ObjectUnwind>() == 32);

/// The executable mappings of one process, sorted by address.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessUnwind {
    /// Entries of `mappings` in use.
    pub mapping_count: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Where the kernel's uretprobe trampoline is in this process (the start of its
    /// `[uprobes]` mapping), 0 if none: a return address there stands for one the kernel
    /// saved when a return probe (the allocation probes') hijacked it.
    pub uretprobe_trampoline: u64,
    /// Mappings sorted by `start`, not overlapping.
    pub mappings: [UnwindMapping; MAX_PROCESS_MAPPINGS],
}
const _: () = assert!(size_of::<ProcessUnwind>() == 16 + 32 * MAX_PROCESS_MAPPINGS);

/// Marks a user-stack entry as a Python frame (the rest is its code object's address) rather
/// than a native address: the in-kernel unwinder appends a CPython thread's frames, newest
/// first, after its native frames. User addresses never have this bit.
pub const PYTHON_FRAME: u64 = 1 << 63;
/// Marks a Python frame as the first one its evaluation loop (`_PyEval_EvalFrameDefault`)
/// ran: the native frame it belongs under. With no code object (0), the entry stands for a
/// frame the evaluation loop put on the C stack (3.12 and later): the frame before it was
/// the loop's first.
pub const PYTHON_ENTRY_FRAME: u64 = 1 << 62;
/// [`PythonOffsets::cframe_current_frame`] when the thread state points at its newest frame
/// itself (3.13 and later).
pub const PYTHON_FRAME_DIRECT: u32 = u32::MAX;
/// [`PythonOffsets::frame_is_entry`] when each frame had an evaluation loop of its own.
pub const PYTHON_EVERY_FRAME_ENTRY: u32 = u32::MAX;
/// `_PyInterpreterFrame.owner` of a frame the evaluation loop put on the C stack.
pub const PYTHON_FRAME_OWNED_BY_CSTACK: u8 = 3;
/// Python frames recorded per stack, at most.
pub const MAX_PYTHON_FRAMES: u32 = 128;
/// Threads of a Python process searched for the current one's state, at most.
pub const MAX_PYTHON_THREADS: u32 = 256;
/// Capacity of the map of Python processes.
pub const PYTHON_PROCESS_ENTRIES: u32 = 1024;

/// Where a CPython interpreter keeps its threads' frames, and how to walk to them: offsets
/// (bytes) into its structures, which change with its minor version.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PythonOffsets {
    /// `_PyRuntimeState.interpreters.main`.
    pub runtime_main_interpreter: u32,
    /// `PyInterpreterState.threads.head`.
    pub interpreter_threads: u32,
    /// `PyThreadState.next`.
    pub thread_next: u32,
    /// The thread's id in its `PyThreadState`: `.native_thread_id` (3.11 and later), or
    /// `.thread_id` (`pthread_self()`, before); see `thread_id_is_pthread`.
    pub thread_id: u32,
    /// Whether `thread_id` is `pthread_self()` (the thread's TLS base) rather than its kernel
    /// thread id.
    pub thread_id_is_pthread: u32,
    /// `PyThreadState.cframe` (3.11, 3.12), `.current_frame` (3.13).
    pub thread_frame: u32,
    /// `_PyCFrame.current_frame`, or [`PYTHON_FRAME_DIRECT`].
    pub cframe_current_frame: u32,
    /// `_PyInterpreterFrame.f_code` (3.11, 3.12), `.f_executable` (3.13).
    pub frame_code: u32,
    /// `_PyInterpreterFrame.previous`.
    pub frame_previous: u32,
    /// `_PyInterpreterFrame.is_entry` (3.11), [`PYTHON_EVERY_FRAME_ENTRY`] (before 3.11: one
    /// evaluation loop per `PyFrameObject`), else 0.
    pub frame_is_entry: u32,
    /// `_PyInterpreterFrame.owner` (3.12 and later, where entries are frames on the C
    /// stack), else 0.
    pub frame_owner: u32,
    /// Explicit padding.
    pub _pad: u32,
}

/// A process running CPython: where its `_PyRuntime` is, and its version's offsets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PythonProcess {
    /// Address of `_PyRuntime` in the process.
    pub runtime: u64,
    /// How to walk from it to the frames.
    pub offsets: PythonOffsets,
}
const _: () = assert!(size_of::<PythonProcess>() == 56);

/// Why the in-kernel unwinder stopped walking a user stack.
pub mod stack_end {
    /// It reached the outermost frame (an [`super::unwind_kind::END`] row).
    pub const ENTRY: u32 = 0;
    /// A frame-pointer walk reached a zero frame pointer or return address (probably the
    /// outermost frame, but nothing says so).
    pub const FRAME_POINTER_END: u32 = 1;
    /// It walked [`super::MAX_USER_FRAMES`] frames (the kernel's frame-pointer walker:
    /// [`super::MAX_FP_FRAMES`]).
    pub const DEPTH: u32 = 2;
    /// Reading the stack failed (a bad frame pointer or CFA).
    pub const READ_FAILED: u32 = 3;
    /// The next frame was not above the current one (corrupt stack or wrong unwind rule).
    pub const NOT_ADVANCING: u32 = 4;
    /// The kernel's frame-pointer walker (`--unwind fp`) stopped short of its depth limit; it
    /// does not say why.
    pub const KERNEL_WALKER: u32 = 5;
}

/// A user stack walked by the in-kernel unwinder: return addresses, innermost first.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UserStack {
    /// Hash of the frames (also the map key's source); tells two stacks of one key apart.
    pub hash: u64,
    /// Frames in use.
    pub len: u32,
    /// A [`stack_end`] value.
    pub end: u32,
    /// The sampled address, then the return addresses.
    pub frames: [u64; MAX_USER_FRAMES],
}
const _: () = assert!(size_of::<UserStack>() == 16 + 8 * MAX_USER_FRAMES);

/// Totals add up field by field: the collector sums per-CPU copies and successive drains.
macro_rules! add_fields {
    ($type:ty: $($field:ident),+ $(; max $max:ident)?) => {
        impl core::ops::AddAssign for $type {
            fn add_assign(&mut self, other: Self) {
                $(self.$field += other.$field;)+
                $(self.$max = self.$max.max(other.$max);)?
            }
        }
    };
}
add_fields!(OffCpuTime: total_ns, count, stack_ns);
add_fields!(IoTotal: count, total_ns, bytes, errors, stack_ns);
add_fields!(AllocStats: alloc_count, alloc_bytes, free_count, free_bytes, lifetime_ns);
add_fields!(BlockStats: count, bytes, total_ns; max max_ns);
add_fields!(ProcessMemory: alloc_bytes, alloc_count, free_bytes, free_count, mmap_count,
    mmap_bytes, munmap_count, munmap_bytes, brk_count, brk_bytes);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers with no padding.
    unsafe impl aya::Pod for super::AllocSite {}
    // SAFETY: plain `#[repr(C)]` integers with no padding.
    unsafe impl aya::Pod for super::AllocStats {}
    // SAFETY: plain `#[repr(C)]` integers with no padding.
    unsafe impl aya::Pod for super::LiveKey {}
    // SAFETY: plain `#[repr(C)]` integers with no padding.
    unsafe impl aya::Pod for super::LiveAlloc {}
    // SAFETY: plain `#[repr(C)]` integers with no padding.
    unsafe impl aya::Pod for super::ProcessMemory {}
    // SAFETY: plain `#[repr(C)]` integers with no padding.
    unsafe impl aya::Pod for super::IoPending {}
    // SAFETY: plain `#[repr(C)]` integers with no padding.
    unsafe impl aya::Pod for super::FdKey {}
    // SAFETY: plain `#[repr(C)]` integers with no padding.
    unsafe impl aya::Pod for super::IoKey {}
    // SAFETY: plain `#[repr(C)]` integers with no padding.
    unsafe impl aya::Pod for super::IoTotal {}
    // SAFETY: plain `#[repr(C)]` integers with no padding.
    unsafe impl aya::Pod for super::OpenEvent {}
    // SAFETY: plain `#[repr(C)]` integers with no padding.
    unsafe impl aya::Pod for super::BlockKey {}
    // SAFETY: plain `#[repr(C)]` integers with no padding.
    unsafe impl aya::Pod for super::BlockPending {}
    // SAFETY: plain `#[repr(C)]` integers with no padding.
    unsafe impl aya::Pod for super::BlockRequest {}
    // SAFETY: plain `#[repr(C)]` integers with no padding.
    unsafe impl aya::Pod for super::BlockStats {}
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
    // SAFETY: plain `#[repr(C)]` integers with no padding.
    unsafe impl aya::Pod for super::UnwindRow {}
    // SAFETY: plain `#[repr(C)]` integers with no padding.
    unsafe impl aya::Pod for super::UnwindMapping {}
    // SAFETY: plain `#[repr(C)]` integers with no padding.
    unsafe impl aya::Pod for super::ProcessUnwind {}
    // SAFETY: plain `#[repr(C)]` integers with no padding.
    unsafe impl aya::Pod for super::PythonProcess {}
    // SAFETY: plain `#[repr(C)]` integers with no padding.
    unsafe impl aya::Pod for super::FileKey {}
    // SAFETY: plain `#[repr(C)]` integers with no padding.
    unsafe impl aya::Pod for super::ObjectUnwind {}
    // SAFETY: plain `#[repr(C)]` integers with no padding.
    unsafe impl aya::Pod for super::UserStack {}
    unsafe impl aya::Pod for super::KernelStack {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tid_has_a_bit_and_a_byte_of_its_own_within_maps_sized_for_pid_max() {
        extern crate std;
        let mut bits = std::collections::HashSet::new();
        let mut bytes = std::collections::HashSet::new();
        for tid in 0..4096 {
            assert!(bits.insert(tid_bit(tid)), "tid {tid}'s bit is another's");
            assert!(bytes.insert(tid_byte(tid)), "tid {tid}'s byte is another's");
        }
        // The loader makes `pid_max.div_ceil(64)` and `.div_ceil(8)` words: the last tid fits.
        for pid_max in [1u32, 63, 64, 65, 32_768, 4_194_304] {
            assert!(tid_bit(pid_max - 1).0 < pid_max.div_ceil(64));
            assert!(tid_byte(pid_max - 1).0 < pid_max.div_ceil(8));
        }
        assert_eq!(tid_bit(4_194_303), (65_535, 1 << 63));
        assert_eq!(tid_byte(4_194_303), (524_287, 7));
    }

    #[test]
    fn totals_add_field_by_field() {
        let mut block = BlockStats {
            count: 1,
            bytes: 10,
            total_ns: 5,
            max_ns: 5,
        };
        block += BlockStats {
            count: 2,
            bytes: 20,
            total_ns: 9,
            max_ns: 7,
        };
        assert_eq!(
            block,
            BlockStats {
                count: 3,
                bytes: 30,
                total_ns: 14,
                max_ns: 7
            }
        );
    }

    #[test]
    fn floor_log2_matches_leading_zeros() {
        for value in [1u64, 2, 3, 4, 1000, 1 << 40, u64::MAX] {
            assert_eq!(floor_log2(value), 63 - value.leading_zeros());
        }
        assert_eq!(floor_log2(0), 0);
    }

    #[test]
    fn latency_slots_round_trip() {
        for ns in [0, 1, 3, 8, 9, 15, 16, 1000, 1_000_000, 123_456_789] {
            let slot = latency_slot(ns);
            let floor = latency_slot_floor(slot);
            assert!(floor <= ns, "{ns} in slot {slot} with floor {floor}");
            assert!(
                latency_slot_floor(slot + 1) > ns,
                "{ns}: next slot starts above it"
            );
        }
        assert_eq!(latency_slot(u64::MAX), LATENCY_SLOTS - 1);
        let mut last = 0;
        for slot in 8..LATENCY_SLOTS {
            assert!(latency_slot_floor(slot) > last);
            last = latency_slot_floor(slot);
        }
    }
}
