//! Tables collected beside the samples: run-queue delays, losses, memory and I/O statistics,
//! and what the unwind tables cost.

use serde::{Deserialize, Serialize};

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
    /// Samples whose user stack was lost because the map of stacks not yet drained was full.
    #[serde(default, skip_serializing_if = "super::is_zero")]
    pub user_stack_map_full: u64,
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

impl TimelineRow {
    /// The row with the largest value of `value`, if any.
    pub fn peak(rows: &[TimelineRow], value: impl Fn(&TimelineRow) -> f64) -> Option<&TimelineRow> {
        rows.iter().max_by(|a, b| value(a).total_cmp(&value(b)))
    }
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
    /// fsync and fdatasync calls.
    pub fsyncs: u64,
    /// sync_file_range calls (writeback of a range, not an fsync); left out when none, so
    /// profiles without any keep their saved form.
    #[serde(default, skip_serializing_if = "super::is_zero")]
    pub sync_file_ranges: u64,
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
            + self.user_stack_map_full
            + self.user_stack_errors
            + self.kernel_stack_errors
    }
}

/// Why an object's code is walked by frame pointers instead of its unwind table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoTableReason {
    /// No `.eh_frame` or `.debug_frame`, or one that could not be compiled.
    NoUnwindInfo,
    /// More rows than one object may have.
    TooManyRows,
    /// The tables held as many rows as `--unwind-rows` allows.
    TablesFull,
    /// Loading the rows into the kernel failed.
    LoadFailed,
}

impl NoTableReason {
    /// Whether a limit of the profiler's, not the object, left it without a table.
    pub fn is_a_limit(self) -> bool {
        matches!(self, NoTableReason::TooManyRows | NoTableReason::TablesFull)
    }

    /// The reason in a few words.
    pub fn describe(self) -> &'static str {
        match self {
            NoTableReason::NoUnwindInfo => "no unwind information",
            NoTableReason::TooManyRows => "more rows than one object may have",
            NoTableReason::TablesFull => "unwind tables full",
            NoTableReason::LoadFailed => "loading its rows failed",
        }
    }
}

/// An object walked by frame pointers, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectWithoutTable {
    /// Path as mapped.
    pub path: String,
    /// Why it has no table.
    pub reason: NoTableReason,
    /// Rows its table would have had (0 when it has no unwind information).
    pub rows: u64,
}

/// Objects named in [`UnwindStats::without_tables`] at most; the count covers every one.
pub const MAX_NAMED_OBJECTS_WITHOUT_TABLES: usize = 64;

/// Where the names of JIT code came from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JitStats {
    /// Processes with code compiled at run time (anonymous executable memory).
    pub processes: u32,
    /// Functions their perf maps (`/tmp/perf-PID.map`) and jitdump files (`jit-PID.dump`)
    /// named.
    pub functions: u64,
    /// JVMs asked for their perf map.
    pub jvms: u32,
    /// Perf maps those JVMs wrote at the profiler's request.
    pub jvm_maps_written: u32,
    /// The longest a JVM took to write its map and answer, milliseconds.
    #[serde(default)]
    pub jvm_request_ms_max: f64,
    /// Time the collector spent reading perf maps, over the run, milliseconds.
    #[serde(default)]
    pub read_ms: f64,
}

/// The Python processes of a run and how their functions were named.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PythonStats {
    /// Processes running CPython.
    pub processes: u32,
    /// Their versions and interpreter objects (`3.11 python3.11`), each once; an unknown
    /// version is marked `(not walked)`.
    pub interpreters: Vec<String>,
    /// Functions named from their code objects.
    pub functions: u64,
    /// Code objects that could not be read (the process was gone, or the address no longer
    /// held one): their frames are `[python code]`.
    pub unnamed: u64,
}

/// What building the tables cost, for the summary and the benchmark.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UnwindStats {
    /// Objects compiled.
    pub objects: u32,
    /// Rows loaded into the kernel.
    pub rows: u32,
    /// The most rows the tables may hold (`--unwind-rows`), in chunks made on demand.
    pub capacity: u32,
    /// Objects left to frame pointers: unreadable, without tables, or past the capacity.
    pub objects_without_tables: u32,
    /// The first of them, and why (left out when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub without_tables: Vec<ObjectWithoutTable>,
    /// Time spent reading, compiling and loading tables, ms.
    pub build_ms: f64,
    /// Objects whose tables came from the cache of compiled tables instead of compiling.
    #[serde(default)]
    pub from_cache: u32,
    /// Processes whose mappings were described to the kernel (counting reloads).
    pub process_loads: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
