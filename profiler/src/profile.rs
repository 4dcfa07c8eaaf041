//! The profile model: what a run collected, symbolized, in plain data.
//!
//! Every rendered file (folded stacks, flamegraphs, summaries) is a function of a [`Profile`],
//! and the profile is saved next to them (`profile.json.gz`) so `profiler report DIR` can
//! render them again, elsewhere and later, without the target or its binaries.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io::{BufReader, BufWriter, Write},
    path::Path,
};

use flate2::{Compression, read::GzDecoder, write::GzEncoder};
use serde::{Deserialize, Serialize};

/// File name of the saved profile inside an output folder.
pub const PROFILE_FILE: &str = "profile.json.gz";

/// Format version of the saved profile; bumped on incompatible changes.
pub const FORMAT_VERSION: u32 = 1;

/// Largest saved profile `read` accepts once decompressed (bounds the time a read takes: about
/// two seconds for this much whitespace).
pub const MAX_PROFILE_JSON_BYTES: u64 = 512 << 20;

/// Memory a read profile may keep, as [`crate::bounded_de`] charges it; what it really holds
/// stays under twice this.
pub const MAX_PROFILE_MEMORY: u64 = 384 << 20;

/// Largest folded text one kind may render to (the names of every sample's stack, end to end):
/// a few kilobytes of saved profile must not render gigabytes.
pub const MAX_RENDERED_TEXT: u64 = 256 << 20;

/// Largest total weight or count of one kind a saved profile may have: sums of a few such
/// totals (wall-clock time adds on- and off-CPU time) cannot wrap.
pub const MAX_TOTAL: u64 = 1 << 60;

/// A kind of event the profiler collects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// On-CPU samples (perf_event CPU clock); weight = samples.
    Cpu,
    /// Off-CPU periods (scheduler switch-out to switch-in); weight = microseconds.
    OffCpu,
    /// I/O system calls; weight = microseconds in the calls.
    Io,
    /// Heap allocations; weight = bytes allocated during the run.
    Alloc,
    /// Heap allocations still live at the end (collected with `Alloc`); weight = bytes.
    InUse,
}

impl EventKind {
    /// Every kind `--events` selects, in presentation order (`InUse` comes with `Alloc`).
    pub const ALL: [EventKind; 4] = [
        EventKind::Cpu,
        EventKind::OffCpu,
        EventKind::Io,
        EventKind::Alloc,
    ];

    /// Name used on the command line and in file names.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Cpu => "cpu",
            EventKind::OffCpu => "offcpu",
            EventKind::Io => "io",
            EventKind::Alloc => "alloc",
            EventKind::InUse => "inuse",
        }
    }

    /// Unit of a sample's weight.
    pub fn unit(self) -> &'static str {
        match self {
            EventKind::Cpu => "samples",
            EventKind::OffCpu | EventKind::Io => "microseconds",
            EventKind::Alloc | EventKind::InUse => "bytes",
        }
    }
}

/// Why a thread was off-CPU, from its state at switch-out and where in the kernel it blocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockReason {
    /// Timed sleep (`nanosleep`, `clock_nanosleep`, timeouts).
    Sleep,
    /// Waiting for I/O: uninterruptible sleep, page cache, block devices, fsync.
    Io,
    /// Waiting for a lock (futex, mutex, condition variable).
    Lock,
    /// Waiting on a pipe.
    Pipe,
    /// Waiting on a socket.
    Socket,
    /// Waiting in poll/select/epoll.
    Poll,
    /// Waiting for a child process.
    ChildWait,
    /// Preempted while runnable: waiting for a CPU.
    Preempted,
    /// A new thread waiting for its first run.
    NewThread,
    /// Off-CPU since before the profiler attached (stack unknown).
    BeforeAttach,
    /// Another interruptible wait.
    OtherWait,
}

impl BlockReason {
    /// Human label.
    pub fn label(self) -> &'static str {
        match self {
            BlockReason::Sleep => "sleep",
            BlockReason::Io => "I/O",
            BlockReason::Lock => "lock/futex",
            BlockReason::Pipe => "pipe wait",
            BlockReason::Socket => "socket wait",
            BlockReason::Poll => "poll/epoll",
            BlockReason::ChildWait => "waiting for a child",
            BlockReason::Preempted => "preempted",
            BlockReason::NewThread => "new thread",
            BlockReason::BeforeAttach => "off-CPU since before attach",
            BlockReason::OtherWait => "other wait",
        }
    }
}

impl std::str::FromStr for EventKind {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .ok_or_else(|| {
                let known: Vec<_> = EventKind::ALL.iter().map(|kind| kind.name()).collect();
                format!("unknown event kind `{name}` (known: {})", known.join(", "))
            })
    }
}

/// Where a frame's code lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameKind {
    /// User-space code.
    User,
    /// Kernel code.
    Kernel,
}

/// One symbolized frame. Inlined calls are frames of their own, marked `inlined`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Frame {
    /// Demangled function name, or `[module]` / `[unknown]` when no symbol covers the address.
    pub function: String,
    /// Object file (executable, library, `[kernel]`) the code belongs to, when known.
    pub module: Option<String>,
    /// Source file of the sampled line, when debug info has it.
    pub file: Option<String>,
    /// Source line, when debug info has it.
    pub line: Option<u32>,
    /// User or kernel code.
    pub kind: FrameKind,
    /// Whether the compiler inlined this call into its caller.
    pub inlined: bool,
    /// Whether no symbol covered the address.
    pub unsymbolized: bool,
}

/// A process seen during the run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    /// Process id.
    pub pid: u32,
    /// Program name (`comm` of the process).
    pub name: String,
    /// Command line, when it could be read.
    pub command: Vec<String>,
}

/// One aggregated sample: a weight on a stack of one thread.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Thread name.
    pub thread: String,
    /// Index into [`Profile::stacks`].
    pub stack: usize,
    /// Weight in the event kind's unit.
    pub weight: u64,
    /// Off-CPU samples: why the thread was off-CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<BlockReason>,
    /// Off-CPU and I/O samples: number of periods or calls merged into this sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// Run-queue delays of one thread: time from wakeup or preemption to running.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunQueue {
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Thread name.
    pub thread: String,
    /// Number of delays.
    pub count: u64,
    /// Sum of delays, µs.
    pub total_us: u64,
    /// Longest delay, µs.
    pub max_us: u64,
    /// Log2 histogram: entry `i` counts delays in `[2^i, 2^(i+1))` µs (entry 0 includes < 1 µs).
    pub histogram: Vec<u64>,
}

impl RunQueue {
    /// The `q` quantile (0..=1) as the upper bound of its log2 bucket in µs, capped at the max.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let wanted = (q * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (slot, &count) in self.histogram.iter().enumerate() {
            seen += count;
            if seen >= wanted {
                return (1u64 << (slot + 1).min(63)).min(self.max_us.max(1));
            }
        }
        self.max_us
    }
}

/// What was lost or degraded while collecting, per cause.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Losses {
    /// Samples whose user stack was lost to a stack-map collision.
    pub user_stack_collisions: u64,
    /// Samples whose kernel stack was lost to a stack-map collision.
    pub kernel_stack_collisions: u64,
    /// Samples whose user stack the kernel failed to collect.
    pub user_stack_errors: u64,
    /// Samples whose kernel stack the kernel failed to collect.
    pub kernel_stack_errors: u64,
    /// Samples dropped because the in-kernel sample map was full.
    pub sample_map_full: u64,
    /// Process fork/exec notifications dropped.
    pub process_events_lost: u64,
    /// New child processes not followed because the target map was full.
    pub target_map_full: u64,
    /// Off-CPU periods shorter than `--min-block`, counted but not recorded.
    #[serde(default)]
    pub offcpu_filtered: u64,
    /// Their total time, µs.
    #[serde(default)]
    pub offcpu_filtered_us: u64,
    /// Off-CPU periods or run-queue delays dropped because a map was full.
    #[serde(default)]
    pub offcpu_map_full: u64,
    /// Switch-out stacks lost to stack-map collisions.
    #[serde(default)]
    pub offcpu_stack_collisions: u64,
    /// I/O calls of target threads seen.
    #[serde(default)]
    pub io_calls: u64,
    /// I/O calls not recorded because a map was full.
    #[serde(default)]
    pub io_map_full: u64,
    /// File opens whose path was lost (ring buffer full).
    #[serde(default)]
    pub open_events_lost: u64,
    /// Block requests not timed because the map of requests in flight was full.
    #[serde(default)]
    pub block_pending_full: u64,
    /// Allocator calls of target threads seen (sampled or not).
    #[serde(default)]
    pub alloc_calls: u64,
    /// Allocations not tracked as live (their frees go unseen) because the map was full.
    #[serde(default)]
    pub live_map_full: u64,
    /// Allocations not counted per site because the site map was full.
    #[serde(default)]
    pub alloc_sites_full: u64,
    /// Events (samples, periods, calls) dropped because the collector's state reached
    /// `--max-memory`.
    #[serde(default)]
    pub memory_cap_dropped: u64,
}

/// Heap and memory-mapping activity of the targets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryStats {
    /// `--alloc-sample` bytes; 0 when every allocation was recorded.
    pub sample_bytes: u64,
    /// Live allocations older than this at the end are leak candidates, seconds.
    pub leak_age_secs: f64,
    /// Per allocation site (stack), largest first.
    pub sites: Vec<AllocSiteStats>,
    /// Heap and RSS over time.
    pub timeline: Vec<TimelineRow>,
    /// `mmap`/`munmap`/`brk` totals over the targets.
    pub mappings: MappingStats,
    /// Allocator functions probed, as `function@object`.
    pub probed: Vec<String>,
}

/// Allocations from one stack.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AllocSiteStats {
    /// Process id.
    pub pid: u32,
    /// Index into [`Profile::stacks`] (root first, allocator function last).
    pub stack: usize,
    /// Allocations and their bytes.
    pub alloc_count: u64,
    /// Bytes allocated.
    pub alloc_bytes: u64,
    /// Of those, freed during the run.
    pub free_count: u64,
    /// Bytes freed.
    pub free_bytes: u64,
    /// Mean lifetime of the freed ones, µs.
    pub mean_lifetime_us: f64,
    /// Still live at the end.
    pub live_count: u64,
    /// Their bytes.
    pub live_bytes: u64,
    /// Live at the end and older than [`MemoryStats::leak_age_secs`].
    pub old_live_count: u64,
    /// Their bytes.
    pub old_live_bytes: u64,
    /// Age of the oldest live allocation at the end, seconds.
    pub oldest_live_secs: f64,
}

/// One point of the memory timeline.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TimelineRow {
    /// Since the start of profiling, seconds.
    pub time_secs: f64,
    /// Bytes allocated during the run and not freed, over the targets.
    pub heap_live_bytes: i64,
    /// Resident set size over the targets, bytes.
    pub rss_bytes: u64,
    /// Allocation rate since the previous row, bytes per second.
    pub alloc_bytes_per_sec: f64,
}

/// Memory-mapping system calls of the targets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MappingStats {
    /// Successful `mmap` calls.
    pub mmap_count: u64,
    /// Bytes they mapped.
    pub mmap_bytes: u64,
    /// Successful `munmap` calls.
    pub munmap_count: u64,
    /// Bytes they unmapped.
    pub munmap_bytes: u64,
    /// `brk` calls.
    pub brk_count: u64,
    /// Net growth of the heap end through `brk`, bytes.
    pub brk_bytes: i64,
}

/// I/O of the targets: per file, per system call and per block device.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IoStats {
    /// Per file (or pipe, socket), slowest first.
    pub files: Vec<IoFile>,
    /// Per system call, slowest first.
    pub syscalls: Vec<IoSyscall>,
    /// Per block device and operation, for requests the targets issued, slowest first.
    pub devices: Vec<IoDevice>,
}

/// I/O on one file, pipe or socket.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IoFile {
    /// Path, or `pipe:[inode]` / `socket:[inode]` / `anon_inode:...` as `/proc` names them.
    pub path: String,
    /// `file`, `pipe`, `socket` or `other`.
    pub kind: String,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Read calls.
    pub reads: u64,
    /// Write calls.
    pub writes: u64,
    /// fsync, fdatasync and sync_file_range calls.
    pub fsyncs: u64,
    /// Opens.
    pub opens: u64,
    /// Closes.
    pub closes: u64,
    /// Failed calls.
    pub errors: u64,
    /// Time in all these calls, µs.
    pub total_us: f64,
}

/// One system call's totals and latency.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IoSyscall {
    /// Name.
    pub name: String,
    /// Calls.
    pub count: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Failed calls.
    pub errors: u64,
    /// Time in the calls, µs.
    pub total_us: f64,
    /// Median latency, µs (upper end of its histogram slot, a quarter octave wide).
    pub p50_us: f64,
    /// 99th percentile latency, µs (likewise).
    pub p99_us: f64,
    /// Longest call, µs (exact).
    pub max_us: f64,
}

/// Block requests of one device and operation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IoDevice {
    /// `major:minor`.
    pub device: String,
    /// Kernel name (`vda`, `nvme0n1`), when known.
    pub name: Option<String>,
    /// `read`, `write`, `flush`, `discard` or `other`.
    pub operation: String,
    /// Requests completed.
    pub requests: u64,
    /// Bytes.
    pub bytes: u64,
    /// Issue-to-completion time, µs.
    pub total_us: f64,
    /// Mean, µs.
    pub avg_us: f64,
    /// Longest, µs.
    pub max_us: f64,
}

impl Losses {
    /// Samples not counted at all.
    pub fn lost_samples(&self) -> u64 {
        self.sample_map_full
    }

    /// Samples counted but with a stack missing or cut.
    pub fn damaged_stacks(&self) -> u64 {
        self.user_stack_collisions
            + self.kernel_stack_collisions
            + self.user_stack_errors
            + self.kernel_stack_errors
    }
}

/// Facts about the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Short name of the target (program name), used in the output folder name.
    pub target: String,
    /// The profiled command line (`record`), or the first attached process's.
    pub command: Vec<String>,
    /// Processes given on the command line (`attach`) or launched (`record`).
    pub root_pids: Vec<u32>,
    /// Whether descendants of the root processes were profiled too.
    pub follow_children: bool,
    /// Start of collection, Unix time in milliseconds.
    pub start_unix_ms: u64,
    /// Collection time in seconds.
    pub duration_secs: f64,
    /// Sampling frequency in Hz.
    pub frequency_hz: u64,
    /// Shortest off-CPU period recorded, µs.
    #[serde(default)]
    pub min_block_us: u64,
    /// Event kinds collected.
    pub events: Vec<EventKind>,
    /// `--alloc-sample` bytes (0: every allocation recorded).
    #[serde(default)]
    pub alloc_sample_bytes: u64,
    /// Why collection stopped.
    pub stop_reason: String,
    /// Exit code of the launched command (`record`), when it exited.
    pub exit_code: Option<i32>,
    /// Time from the start of the profiler to the programs being attached, in milliseconds.
    pub attach_ms: Option<f64>,
    /// Time from the start of the profiler to the first sample, in milliseconds.
    pub first_sample_ms: Option<f64>,
    /// What the unwind tables cost; `None` when user stacks were walked by frame pointers.
    #[serde(default)]
    pub unwind: Option<crate::unwind::UnwindStats>,
    /// Kernel release the profile was taken on.
    pub kernel: String,
    /// Version of the profiler that took it.
    pub profiler_version: String,
}

/// A collected, symbolized profile.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Saved-format version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// Facts about the run.
    pub run: RunInfo,
    /// Processes seen.
    pub processes: Vec<Process>,
    /// Interned frames.
    pub frames: Vec<Frame>,
    /// Interned stacks: indices into `frames`, root (outermost caller) first.
    pub stacks: Vec<Vec<usize>>,
    /// Samples per event kind.
    pub samples: BTreeMap<EventKind, Vec<Sample>>,
    /// Run-queue delays per thread (collected with `offcpu`).
    #[serde(default)]
    pub run_queue: Vec<RunQueue>,
    /// I/O tables (collected with `io`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io: Option<IoStats>,
    /// Allocation sites, timeline and mappings (collected with `alloc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    /// What was lost while collecting.
    pub losses: Losses,
}

/// Errors reading a saved profile.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a saved profile, or is damaged.
    #[error("{path} is not a valid saved profile: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Profile {
    /// An empty profile for a run.
    pub fn new(run: RunInfo) -> Self {
        Profile {
            format_version: FORMAT_VERSION,
            run,
            processes: Vec::new(),
            frames: Vec::new(),
            stacks: Vec::new(),
            samples: BTreeMap::new(),
            run_queue: Vec::new(),
            io: None,
            memory: None,
            losses: Losses::default(),
        }
    }

    /// Total weight of one event kind.
    pub fn total(&self, kind: EventKind) -> u64 {
        self.samples.get(&kind).map_or(0, |samples| {
            samples.iter().map(|sample| sample.weight).sum()
        })
    }

    /// Whether more than one process contributed samples, in which case stacks are prefixed
    /// with a `process (pid)` frame.
    pub fn is_multi_process(&self) -> bool {
        let mut pids = self.samples.values().flatten().map(|sample| sample.pid);
        let Some(first) = pids.next() else {
            return false;
        };
        pids.any(|pid| pid != first)
    }

    /// Checks that no kind's folded text passes [`MAX_RENDERED_TEXT`]; frame indices must be
    /// valid.
    fn check_rendered_size(&self) -> Result<(), String> {
        let stack_text: Vec<u64> = self
            .stacks
            .iter()
            .map(|stack| {
                stack.iter().fold(0_u64, |sum, &frame| {
                    // Each frame: its name, a separator and at most a `_[k]` suffix.
                    sum.saturating_add(self.frames[frame].function.len() as u64 + 5)
                })
            })
            .collect();
        let process_prefix = self
            .processes
            .iter()
            .map(|process| process.name.len() as u64 + 16)
            .max()
            .unwrap_or(16);
        for (kind, samples) in &self.samples {
            let text = samples.iter().fold(0_u64, |sum, sample| {
                sum.saturating_add(
                    stack_text[sample.stack] + sample.thread.len() as u64 + process_prefix,
                )
            });
            if text > MAX_RENDERED_TEXT {
                return Err(format!(
                    "{} stacks would render to more than {} MiB of text",
                    kind.name(),
                    MAX_RENDERED_TEXT >> 20
                ));
            }
        }
        Ok(())
    }

    /// Process names by pid, built once for lookups per sample (a saved profile may name a
    /// million processes).
    pub fn process_names(&self) -> ProcessNames<'_> {
        ProcessNames(
            self.processes
                .iter()
                .map(|process| (process.pid, process.name.as_str()))
                .collect(),
        )
    }

    /// Writes the profile, gzipped JSON, to `writer`.
    pub fn save(&self, writer: impl Write) -> std::io::Result<()> {
        let mut encoder = GzEncoder::new(BufWriter::new(writer), Compression::fast());
        serde_json::to_writer(&mut encoder, self)?;
        encoder.finish()?.flush()
    }

    /// Reads a profile saved by [`Profile::save`], checking it is consistent.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let display = path.display().to_string();
        let file = File::open(path).map_err(|source| LoadError::Io {
            path: display.clone(),
            source,
        })?;
        Self::read(BufReader::new(file), &display)
    }

    /// Reads a saved profile from gzip-compressed bytes (what [`Profile::save`] writes), named
    /// `display` in errors. Truncated, damaged or crafted input is an error, never a panic,
    /// and decompression stops at `MAX_PROFILE_BYTES`.
    pub fn read(compressed: impl std::io::Read, display: &str) -> Result<Self, LoadError> {
        let invalid = |reason: String| LoadError::Invalid {
            path: display.to_owned(),
            reason,
        };
        let json = BufReader::with_capacity(
            1 << 16,
            LimitedReader {
                inner: GzDecoder::new(compressed),
                left: MAX_PROFILE_JSON_BYTES,
            },
        );
        let budget = crate::bounded_de::Budget::new(MAX_PROFILE_MEMORY);
        let mut deserializer = serde_json::Deserializer::from_reader(json);
        let profile: Profile = crate::bounded_de::deserialize(&mut deserializer, &budget)
            .and_then(|profile| deserializer.end().map(|()| profile))
            .map_err(|err| invalid(err.to_string()))?;
        profile.validate().map_err(invalid)?;
        Ok(profile)
    }

    /// Checks internal references so renderers can index without panicking.
    pub fn validate(&self) -> Result<(), String> {
        if self.format_version != FORMAT_VERSION {
            return Err(format!(
                "format version {} (this profiler reads {FORMAT_VERSION})",
                self.format_version
            ));
        }
        for (index, stack) in self.stacks.iter().enumerate() {
            if let Some(&frame) = stack.iter().find(|&&frame| frame >= self.frames.len()) {
                return Err(format!("stack {index} refers to missing frame {frame}"));
            }
        }
        if let Some(memory) = &self.memory
            && let Some(site) = memory.sites.iter().find(|s| s.stack >= self.stacks.len())
        {
            return Err(format!(
                "allocation site refers to missing stack {}",
                site.stack
            ));
        }
        for (kind, samples) in &self.samples {
            if let Some(sample) = samples.iter().find(|s| s.stack >= self.stacks.len()) {
                return Err(format!(
                    "{} sample refers to missing stack {}",
                    kind.name(),
                    sample.stack
                ));
            }
            bounded_total(samples.iter().map(|s| s.weight), kind.name())?;
            bounded_total(samples.iter().map(|s| s.count.unwrap_or(1)), kind.name())?;
        }
        self.check_rendered_size()?;
        if !(1..=1_000_000).contains(&self.run.frequency_hz) {
            return Err(format!("frequency {} Hz", self.run.frequency_hz));
        }
        // On-CPU samples become microseconds in the wall-clock view.
        let cpu_us = self
            .total(EventKind::Cpu)
            .checked_mul(1_000_000 / self.run.frequency_hz);
        if cpu_us.is_none_or(|us| us > MAX_TOTAL) {
            return Err("on-CPU time too large".into());
        }
        if !(self.run.duration_secs.is_finite() && self.run.duration_secs >= 0.0) {
            return Err(format!("duration {}", self.run.duration_secs));
        }
        if let Some(memory) = &self.memory {
            let sites = &memory.sites;
            let fields: [(&str, SiteField); 8] = [
                ("allocated bytes", |s| s.alloc_bytes),
                ("freed bytes", |s| s.free_bytes),
                ("live bytes", |s| s.live_bytes),
                ("old live bytes", |s| s.old_live_bytes),
                ("allocations", |s| s.alloc_count),
                ("frees", |s| s.free_count),
                ("live allocations", |s| s.live_count),
                ("old live allocations", |s| s.old_live_count),
            ];
            for (what, field) in fields {
                bounded_total(sites.iter().map(field), what)?;
            }
        }
        Ok(())
    }
}

/// Process names by pid.
pub struct ProcessNames<'a>(HashMap<u32, &'a str>);

impl ProcessNames<'_> {
    /// Name of a process, falling back to the pid.
    pub fn name(&self, pid: u32) -> String {
        self.0
            .get(&pid)
            .map_or_else(|| pid.to_string(), |name| (*name).to_owned())
    }

    /// `name (pid)`, the root frame of a process's stacks.
    pub fn label(&self, pid: u32) -> String {
        format!("{} ({pid})", self.name(pid))
    }
}

/// One count of an allocation site.
type SiteField = fn(&AllocSiteStats) -> u64;

/// Checks that `values` add up to at most [`MAX_TOTAL`].
fn bounded_total(values: impl Iterator<Item = u64>, what: &str) -> Result<(), String> {
    let mut total: u64 = 0;
    for value in values {
        total = total
            .checked_add(value)
            .filter(|&total| total <= MAX_TOTAL)
            .ok_or_else(|| format!("{what}: total past {MAX_TOTAL}"))?;
    }
    Ok(())
}

/// A reader that fails, rather than ends, past `left` bytes: a cut-off profile would only be
/// reported as damaged, this says why.
struct LimitedReader<R> {
    inner: R,
    left: u64,
}

impl<R: std::io::Read> std::io::Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // One byte more tells a file of exactly the limit from a larger one.
            return match self.inner.read(&mut [0])? {
                0 => Ok(0),
                _ => Err(std::io::Error::other(format!(
                    "larger than {} MiB once decompressed",
                    MAX_PROFILE_JSON_BYTES >> 20
                ))),
            };
        }
        let len = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let read = self.inner.read(&mut buf[..len])?;
        self.left -= read as u64;
        Ok(read)
    }
}

/// Interns frames and stacks while a profile is built.
#[derive(Default)]
pub struct Interner {
    frames: HashMap<Frame, usize>,
    stacks: HashMap<Vec<usize>, usize>,
}

impl Interner {
    /// Index of `frame` in `profile.frames`, adding it if new.
    pub fn frame(&mut self, profile: &mut Profile, frame: Frame) -> usize {
        *self.frames.entry(frame).or_insert_with_key(|frame| {
            profile.frames.push(frame.clone());
            profile.frames.len() - 1
        })
    }

    /// Index of `stack` in `profile.stacks`, adding it if new.
    pub fn stack(&mut self, profile: &mut Profile, stack: Vec<usize>) -> usize {
        *self.stacks.entry(stack).or_insert_with_key(|stack| {
            profile.stacks.push(stack.clone());
            profile.stacks.len() - 1
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Every input the fuzzer kept (`fuzz/corpus/load_profile`) still reads as an error or a
    /// profile the renderers can use, and no prefix of a valid file is accepted.
    #[test]
    fn saved_profile_corpus_never_panics() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/load_profile");
        let mut valid = 0;
        for entry in std::fs::read_dir(&corpus).expect("the fuzz corpus is in the repository") {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let read = Profile::read(&bytes[..], "corpus");
            // Small versions of the bombs of docs/safety.md: these are refused at any size
            // (the others are valid profiles when small).
            let name = path.file_name().unwrap().to_string_lossy();
            let refused = ["nesting", "long-number", "long-string", "huge-weights"];
            if refused.iter().any(|bomb| name == format!("bomb-{bomb}")) {
                assert!(read.is_err(), "{name} accepted");
            }
            if let Ok(profile) = read {
                valid += 1;
                let _ = crate::render::summary::summarize(&profile);
                for view in crate::render::views(&profile) {
                    let _ = crate::render::view_lines(&profile, view);
                }
                for len in (0..bytes.len()).step_by(bytes.len() / 50 + 1) {
                    assert!(
                        Profile::read(&bytes[..len], "prefix").is_err(),
                        "{} accepted cut at {len}",
                        path.display()
                    );
                }
            }
        }
        assert!(valid >= 2, "the corpus keeps real profiles as seeds");
    }

    pub(crate) fn run_info() -> RunInfo {
        RunInfo {
            target: "demo".into(),
            command: vec!["demo".into(), "--fast".into()],
            root_pids: vec![42],
            follow_children: true,
            start_unix_ms: 1_700_000_000_000,
            duration_secs: 2.0,
            frequency_hz: 99,
            min_block_us: 1,
            events: vec![EventKind::Cpu],
            alloc_sample_bytes: 0,
            stop_reason: "target exited".into(),
            exit_code: Some(0),
            attach_ms: Some(12.0),
            unwind: None,
            first_sample_ms: Some(20.0),
            kernel: "6.18.0".into(),
            profiler_version: "0.1.0".into(),
        }
    }

    pub(crate) fn user_frame(name: &str) -> Frame {
        Frame {
            function: name.into(),
            module: Some("demo".into()),
            file: None,
            line: None,
            kind: FrameKind::User,
            inlined: false,
            unsymbolized: false,
        }
    }

    /// A profile with `main;work;hot` x7 and `main;work;cold` x3 on one thread.
    pub(crate) fn sample_profile() -> Profile {
        let mut profile = Profile::new(run_info());
        let mut interner = Interner::default();
        let main = interner.frame(&mut profile, user_frame("main"));
        let work = interner.frame(&mut profile, user_frame("work"));
        let hot = interner.frame(&mut profile, user_frame("hot"));
        let cold = interner.frame(&mut profile, user_frame("cold"));
        let hot_stack = interner.stack(&mut profile, vec![main, work, hot]);
        let cold_stack = interner.stack(&mut profile, vec![main, work, cold]);
        let sample = |stack, weight| Sample {
            pid: 42,
            tid: 42,
            thread: "demo".into(),
            stack,
            weight,
            reason: None,
            count: None,
        };
        profile.processes.push(Process {
            pid: 42,
            name: "demo".into(),
            command: vec!["demo".into()],
        });
        profile.samples.insert(
            EventKind::Cpu,
            vec![sample(hot_stack, 7), sample(cold_stack, 3)],
        );
        profile
    }

    #[test]
    fn save_and_load_round_trip() {
        let profile = sample_profile();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PROFILE_FILE);
        profile.save(File::create(&path).unwrap()).unwrap();
        assert_eq!(Profile::load(&path).unwrap(), profile);
    }

    #[test]
    fn load_rejects_garbage_and_dangling_references() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PROFILE_FILE);
        std::fs::write(&path, b"not gzip").unwrap();
        assert!(matches!(
            Profile::load(&path),
            Err(LoadError::Invalid { .. })
        ));

        let mut profile = sample_profile();
        profile.stacks[0].push(99);
        profile.save(File::create(&path).unwrap()).unwrap();
        let err = Profile::load(&path).unwrap_err().to_string();
        assert!(err.contains("missing frame 99"), "{err}");
    }

    #[test]
    fn run_queue_quantiles_use_bucket_bounds() {
        // 90 delays in [1, 2) µs, 10 in [64, 128) µs, the longest 100 µs.
        let mut histogram = vec![0; 32];
        histogram[0] = 90;
        histogram[6] = 10;
        let run_queue = RunQueue {
            pid: 1,
            tid: 1,
            thread: "t".into(),
            count: 100,
            total_us: 1200,
            max_us: 100,
            histogram,
        };
        assert_eq!(run_queue.quantile_us(0.5), 2);
        assert_eq!(run_queue.quantile_us(0.9), 2);
        assert_eq!(run_queue.quantile_us(0.99), 100, "capped at the max");
    }

    #[test]
    fn interner_deduplicates() {
        let mut profile = Profile::new(run_info());
        let mut interner = Interner::default();
        let a = interner.frame(&mut profile, user_frame("a"));
        assert_eq!(interner.frame(&mut profile, user_frame("a")), a);
        let s = interner.stack(&mut profile, vec![a]);
        assert_eq!(interner.stack(&mut profile, vec![a]), s);
        assert_eq!((profile.frames.len(), profile.stacks.len()), (1, 1));
    }

    #[test]
    fn event_kind_parses_and_rejects_unknown() {
        assert_eq!("cpu".parse::<EventKind>(), Ok(EventKind::Cpu));
        assert_eq!("offcpu".parse::<EventKind>(), Ok(EventKind::OffCpu));
        let err = "gpu".parse::<EventKind>().unwrap_err();
        assert!(err.contains("unknown event kind `gpu`"), "{err}");
    }
}
