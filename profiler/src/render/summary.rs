//! The run summary: `summary.json` for machines and `summary.md` for people.

use std::{collections::HashMap, fmt::Write as _};

use serde::Serialize;

use super::verdict;
use crate::{
    profile::{BlockReason, EventKind, IoDevice, IoFile, IoSyscall, Losses, Profile},
    render::folded::frame_label,
};

/// How many functions the top lists hold.
const TOP_FUNCTIONS: usize = 20;

/// What `summary.json` holds.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// What bounds the process, most important first.
    pub verdict: Vec<verdict::Finding>,
    /// How trustworthy the profile is.
    pub quality: verdict::Quality,
    /// Short name of the target.
    pub target: String,
    /// Profiled command line.
    pub command: Vec<String>,
    /// Root processes.
    pub pids: Vec<u32>,
    /// Whether descendants were followed.
    pub follow_children: bool,
    /// Start, Unix time in milliseconds.
    pub start_unix_ms: u64,
    /// Collection time in seconds.
    pub duration_secs: f64,
    /// Sampling frequency.
    pub frequency_hz: u64,
    /// Event kinds collected.
    pub events: Vec<EventKind>,
    /// Why collection stopped.
    pub stop_reason: String,
    /// Exit code of the launched command.
    pub exit_code: Option<i32>,
    /// Time from profiler start to attached programs, ms.
    pub attach_ms: Option<f64>,
    /// Time from profiler start to the first sample, ms.
    pub first_sample_ms: Option<f64>,
    /// What the unwind tables cost; absent when stacks were walked by frame pointers.
    pub unwind: Option<crate::unwind::UnwindStats>,
    /// Processes that contributed samples.
    pub processes: Vec<ProcessShare>,
    /// CPU section, when `cpu` was collected.
    pub cpu: Option<CpuSummary>,
    /// Off-CPU section, when `offcpu` was collected.
    pub offcpu: Option<OffCpuSummary>,
    /// I/O section, when `io` was collected.
    pub io: Option<IoSummary>,
    /// Memory section, when `alloc` was collected.
    pub memory: Option<MemorySummary>,
    /// What was lost while collecting.
    pub losses: Losses,
}

/// The memory section.
#[derive(Clone, Debug, Serialize)]
pub struct MemorySummary {
    /// `--alloc-sample` bytes: figures are estimates weighted from sampled allocations.
    pub sampled_every_bytes: Option<u64>,
    /// Bytes allocated during the run.
    pub allocated_bytes: u64,
    /// Allocations.
    pub allocations: u64,
    /// Bytes of those freed during the run.
    pub freed_bytes: u64,
    /// Frees of them.
    pub frees: u64,
    /// Bytes allocated during the run and live at the end.
    pub live_bytes: u64,
    /// Allocations live at the end.
    pub live_allocations: u64,
    /// Highest heap in use (allocated during the run, not freed), bytes, and when (s).
    pub peak_heap_bytes: i64,
    /// When the heap peaked, seconds since the start.
    pub peak_heap_at_secs: f64,
    /// Highest RSS, bytes.
    pub peak_rss_bytes: u64,
    /// When RSS peaked, seconds since the start.
    pub peak_rss_at_secs: f64,
    /// Live allocations at least this old at the end count as leak candidates, seconds.
    pub leak_age_secs: f64,
    /// Allocations not tracked because the live-allocation map was full: live and leaked
    /// figures are then lower bounds.
    pub untracked_allocations: u64,
    /// Heap growth over the run from the allocator's own byte counts (allocated less freed),
    /// exact even when allocations went untracked.
    pub heap_growth_bytes: i64,
    /// Sites by bytes allocated.
    pub top_allocating: Vec<MemorySite>,
    /// Sites with allocations live at the end and older than `leak_age_secs`, by bytes.
    pub leak_candidates: Vec<MemorySite>,
    /// Sites by short-lived allocations (allocated and freed during the run).
    pub churn: Vec<MemorySite>,
    /// `mmap`/`munmap`/`brk` totals.
    pub mappings: crate::profile::MappingStats,
    /// Allocator functions probed.
    pub probed: Vec<String>,
}

/// Allocations from one stack.
#[derive(Clone, Debug, Serialize)]
pub struct MemorySite {
    /// Process id.
    pub pid: u32,
    /// The function that called the allocator.
    pub function: Option<String>,
    /// Its caller.
    pub caller: Option<String>,
    /// The allocator function (`malloc`, `calloc`...).
    pub allocator: String,
    /// Bytes this list ranks by (allocated, leaked, or freed).
    pub bytes: u64,
    /// Allocations this list ranks by.
    pub count: u64,
    /// Share of all bytes allocated, percent.
    pub percent: f64,
    /// Bytes live at the end.
    pub live_bytes: u64,
    /// Mean lifetime of those freed, µs.
    pub mean_lifetime_us: f64,
    /// Age of the oldest live one, seconds.
    pub oldest_live_secs: f64,
    /// The whole stack, root first, `;`-separated.
    pub stack: String,
}

/// The I/O section.
#[derive(Clone, Debug, Serialize)]
pub struct IoSummary {
    /// I/O system calls recorded.
    pub calls: u64,
    /// Time in them, µs.
    pub total_us: u64,
    /// Per file, pipe or socket, slowest first.
    pub files: Vec<IoFile>,
    /// Per system call, slowest first.
    pub syscalls: Vec<IoSyscall>,
    /// Block requests the targets issued, per device and operation, slowest first.
    pub devices: Vec<IoDevice>,
    /// Code paths by time in I/O calls.
    pub top_stacks: Vec<IoStack>,
}

/// One code path's I/O time.
#[derive(Clone, Debug, Serialize)]
pub struct IoStack {
    /// Thread name.
    pub thread: String,
    /// The system call (the stack's leaf).
    pub syscall: String,
    /// Innermost user function.
    pub function: Option<String>,
    /// Its caller.
    pub caller: Option<String>,
    /// Time, µs.
    pub us: u64,
    /// Calls.
    pub calls: u64,
    /// Share of all I/O time, percent.
    pub percent: f64,
    /// The whole stack, root first, `;`-separated.
    pub stack: String,
}

/// CPU samples of one process.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessShare {
    /// Process id.
    pub pid: u32,
    /// Program name.
    pub name: String,
    /// CPU samples.
    pub samples: u64,
    /// Share of all CPU samples, percent.
    pub percent: f64,
}

/// The CPU section.
#[derive(Clone, Debug, Serialize)]
pub struct CpuSummary {
    /// Samples counted.
    pub samples: u64,
    /// Samples not counted (in-kernel map full).
    pub lost_samples: u64,
    /// Samples whose stack was lost or cut (collisions, kernel errors).
    pub damaged_stacks: u64,
    /// Share of sampled frames without a symbol, percent.
    pub unsymbolized_frames_percent: f64,
    /// Functions by samples in which they were the leaf.
    pub top_self: Vec<FunctionShare>,
    /// Functions by samples in which they were anywhere on the stack.
    pub top_total: Vec<FunctionShare>,
    /// Samples per thread.
    pub threads: Vec<ThreadShare>,
}

/// One function's share.
#[derive(Clone, Debug, Serialize)]
pub struct FunctionShare {
    /// Function name (as in the folded file, with `_[k]` for kernel functions).
    pub function: String,
    /// Object file.
    pub module: Option<String>,
    /// `file:line` of its most sampled line, when debug info has it.
    pub location: Option<String>,
    /// Samples.
    pub samples: u64,
    /// Share of all samples, percent.
    pub percent: f64,
}

/// One thread's share.
#[derive(Clone, Debug, Serialize)]
pub struct ThreadShare {
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Thread name.
    pub name: String,
    /// Samples.
    pub samples: u64,
    /// Share of all samples, percent.
    pub percent: f64,
}

fn percent(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        // Two decimals are plenty for people and keep the JSON stable.
        (part as f64 * 10_000.0 / total as f64).round() / 100.0
    }
}

/// Accumulates one function's weight and where it was sampled.
#[derive(Default)]
struct FunctionTally {
    module: Option<String>,
    weight: u64,
    lines: HashMap<String, u64>,
}

fn top(tallies: HashMap<String, FunctionTally>, total: u64) -> Vec<FunctionShare> {
    let mut shares: Vec<FunctionShare> = tallies
        .into_iter()
        .map(|(function, tally)| FunctionShare {
            location: tally
                .lines
                .into_iter()
                .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
                .map(|(line, _)| line),
            module: tally.module,
            samples: tally.weight,
            percent: percent(tally.weight, total),
            function,
        })
        .collect();
    shares.sort_by(|a, b| {
        b.samples
            .cmp(&a.samples)
            .then_with(|| a.function.cmp(&b.function))
    });
    shares.truncate(TOP_FUNCTIONS);
    shares
}

fn cpu_summary(profile: &Profile) -> CpuSummary {
    let samples = profile
        .samples
        .get(&EventKind::Cpu)
        .map_or(&[][..], Vec::as_slice);
    let total = profile.total(EventKind::Cpu);
    let mut threads: HashMap<(u32, u32, &str), u64> = HashMap::new();
    // Weight per distinct stack first: a long run has far more samples than stacks.
    let mut stack_weights: HashMap<usize, u64> = HashMap::new();
    for sample in samples {
        *threads
            .entry((sample.pid, sample.tid, sample.thread.as_str()))
            .or_default() += sample.weight;
        *stack_weights.entry(sample.stack).or_default() += sample.weight;
    }
    // Frames that print the same (inlined or not, other lines) are one function.
    let mut label_ids: HashMap<String, usize> = HashMap::new();
    let label_of: Vec<usize> = profile
        .frames
        .iter()
        .map(|frame| {
            let next = label_ids.len();
            *label_ids.entry(frame_label(frame)).or_insert(next)
        })
        .collect();
    let locations: Vec<Option<String>> = profile
        .frames
        .iter()
        .map(|frame| {
            frame.file.as_ref().map(|file| match frame.line {
                Some(line) => format!("{file}:{line}"),
                None => file.clone(),
            })
        })
        .collect();
    let mut self_weight = vec![0u64; label_ids.len()];
    let mut total_weight = vec![0u64; label_ids.len()];
    // Per (label, frame): weight, for each function's hottest line.
    let mut self_lines: HashMap<(usize, usize), u64> = HashMap::new();
    let mut total_lines: HashMap<(usize, usize), u64> = HashMap::new();
    // The last stack that counted a label in its total: recursion counts once per stack.
    let mut counted_in = vec![usize::MAX; label_ids.len()];
    let (mut frames_seen, mut frames_unsymbolized) = (0u64, 0u64);
    for (&stack_index, &weight) in &stack_weights {
        let stack = &profile.stacks[stack_index];
        for (depth, &frame_id) in stack.iter().enumerate() {
            frames_seen += weight;
            if profile.frames[frame_id].unsymbolized {
                frames_unsymbolized += weight;
            }
            let label = label_of[frame_id];
            if counted_in[label] != stack_index {
                counted_in[label] = stack_index;
                total_weight[label] += weight;
                *total_lines.entry((label, frame_id)).or_default() += weight;
            }
            if depth + 1 == stack.len() {
                self_weight[label] += weight;
                *self_lines.entry((label, frame_id)).or_default() += weight;
            }
        }
    }
    let mut labels = vec![String::new(); label_ids.len()];
    for (label, id) in label_ids {
        labels[id] = label;
    }
    let tallies = |weights: &[u64], lines: &HashMap<(usize, usize), u64>| {
        let mut tallies: HashMap<String, FunctionTally> = HashMap::new();
        for (&(label, frame_id), &weight) in lines {
            let tally = tallies
                .entry(labels[label].clone())
                .or_insert_with(|| FunctionTally {
                    module: profile.frames[frame_id].module.clone(),
                    weight: weights[label],
                    lines: HashMap::new(),
                });
            if let Some(location) = &locations[frame_id] {
                *tally.lines.entry(location.clone()).or_default() += weight;
            }
        }
        tallies
    };
    let self_tally = tallies(&self_weight, &self_lines);
    let total_tally = tallies(&total_weight, &total_lines);
    let mut threads: Vec<ThreadShare> = threads
        .into_iter()
        .map(|((pid, tid, name), weight)| ThreadShare {
            pid,
            tid,
            name: name.to_owned(),
            samples: weight,
            percent: percent(weight, total),
        })
        .collect();
    threads.sort_by(|a, b| b.samples.cmp(&a.samples).then_with(|| a.tid.cmp(&b.tid)));
    CpuSummary {
        samples: total,
        lost_samples: profile.losses.lost_samples(),
        damaged_stacks: profile.losses.damaged_stacks(),
        unsymbolized_frames_percent: percent(frames_unsymbolized, frames_seen),
        top_self: top(self_tally, total),
        top_total: top(total_tally, total),
        threads,
    }
}

/// The off-CPU section: where and why the target's threads waited.
#[derive(Clone, Debug, Serialize)]
pub struct OffCpuSummary {
    /// Off-CPU time recorded, µs.
    pub total_us: u64,
    /// Off-CPU periods recorded.
    pub periods: u64,
    /// Shortest period recorded (`--min-block`), µs.
    pub min_block_us: u64,
    /// Shorter periods, counted only.
    pub filtered_periods: u64,
    /// Their time, µs.
    pub filtered_us: u64,
    /// Time per reason, largest first.
    pub reasons: Vec<ReasonShare>,
    /// Blocking stacks by time, largest first.
    pub top_stacks: Vec<BlockingStack>,
    /// Per thread: on-CPU, blocked and runnable-waiting time.
    pub threads: Vec<ThreadTime>,
    /// Per thread: run-queue latency.
    pub run_queue: Vec<RunQueueLatency>,
}

/// Off-CPU time of one reason.
#[derive(Clone, Debug, Serialize)]
pub struct ReasonShare {
    /// The reason.
    pub reason: BlockReason,
    /// Its label.
    pub label: &'static str,
    /// Time, µs.
    pub us: u64,
    /// Share of all off-CPU time, percent.
    pub percent: f64,
}

/// One blocking stack.
#[derive(Clone, Debug, Serialize)]
pub struct BlockingStack {
    /// Thread name.
    pub thread: String,
    /// Innermost symbolized user function: the code that waited.
    pub function: Option<String>,
    /// The user function that called it.
    pub caller: Option<String>,
    /// System call the thread blocked in, when the kernel stack shows one.
    pub syscall: Option<String>,
    /// Why it was off-CPU.
    pub reason: BlockReason,
    /// Time, µs.
    pub us: u64,
    /// Number of off-CPU periods.
    pub periods: u64,
    /// Share of all off-CPU time, percent.
    pub percent: f64,
    /// The whole stack, root first, as in `offcpu.folded`.
    pub stack: String,
}

/// Where one thread's time went.
#[derive(Clone, Debug, Serialize)]
pub struct ThreadTime {
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Thread name.
    pub name: String,
    /// On-CPU time from CPU samples (samples / frequency), µs; `null` without `cpu`.
    pub on_cpu_us: Option<u64>,
    /// Off-CPU time, µs.
    pub off_cpu_us: u64,
    /// Of which runnable, waiting for a CPU (run-queue delay), µs.
    pub runnable_us: u64,
    /// Of which blocked (sleeping, waiting for I/O, locks...), µs.
    pub blocked_us: u64,
    /// On-CPU plus off-CPU time, µs: the thread's lifetime within the run.
    pub total_us: u64,
}

/// Run-queue latency of one thread.
#[derive(Clone, Debug, Serialize)]
pub struct RunQueueLatency {
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Thread name.
    pub name: String,
    /// Number of delays.
    pub count: u64,
    /// Median, µs (upper bound of its log2 bucket).
    pub p50_us: u64,
    /// 99th percentile, µs (upper bound of its log2 bucket).
    pub p99_us: u64,
    /// Longest, µs.
    pub max_us: u64,
    /// Sum, µs.
    pub total_us: u64,
}

/// How many blocking stacks the summary lists.
const TOP_STACKS: usize = 20;

fn offcpu_summary(profile: &Profile) -> OffCpuSummary {
    let samples = profile
        .samples
        .get(&EventKind::OffCpu)
        .map_or(&[][..], Vec::as_slice);
    let total = profile.total(EventKind::OffCpu);
    let mut reasons: HashMap<BlockReason, u64> = HashMap::new();
    let mut stacks: HashMap<(String, String, BlockReason), (u64, u64)> = HashMap::new();
    let mut off_cpu: HashMap<(u32, u32, String), u64> = HashMap::new();
    for sample in samples {
        let reason = sample.reason.unwrap_or(BlockReason::OtherWait);
        *reasons.entry(reason).or_default() += sample.weight;
        let stack: Vec<String> = profile.stacks[sample.stack]
            .iter()
            .map(|&f| frame_label(&profile.frames[f]))
            .collect();
        let entry = stacks
            .entry((sample.thread.clone(), stack.join(";"), reason))
            .or_default();
        entry.0 += sample.weight;
        entry.1 += sample.count.unwrap_or(1);
        *off_cpu
            .entry((sample.pid, sample.tid, sample.thread.clone()))
            .or_default() += sample.weight;
    }
    let mut reasons: Vec<ReasonShare> = reasons
        .into_iter()
        .map(|(reason, us)| ReasonShare {
            reason,
            label: reason.label(),
            us,
            percent: percent(us, total),
        })
        .collect();
    reasons.sort_by(|a, b| b.us.cmp(&a.us).then(a.reason.cmp(&b.reason)));

    let mut top_stacks: Vec<BlockingStack> = stacks
        .into_iter()
        .map(|((thread, stack, reason), (us, periods))| {
            let frames: Vec<&str> = stack.split(';').collect();
            let user: Vec<&str> = frames
                .iter()
                .copied()
                .filter(|f| !f.is_empty() && !f.ends_with("_[k]") && !f.starts_with('['))
                .collect();
            let syscall = frames.iter().find_map(|f| {
                let name = f.strip_suffix("_[k]")?;
                [
                    "__x64_sys_",
                    "__arm64_sys_",
                    "__se_sys_",
                    "__do_sys_",
                    "ksys_",
                ]
                .iter()
                .find_map(|prefix| name.strip_prefix(prefix))
                .map(str::to_owned)
            });
            BlockingStack {
                function: user.last().map(|f| (*f).to_owned()),
                caller: user.len().checked_sub(2).map(|i| user[i].to_owned()),
                syscall,
                reason,
                us,
                periods,
                percent: percent(us, total),
                stack,
                thread,
            }
        })
        .collect();
    top_stacks.sort_by(|a, b| b.us.cmp(&a.us).then_with(|| a.stack.cmp(&b.stack)));
    top_stacks.truncate(TOP_STACKS);

    let per_sample_us = 1_000_000 / profile.run.frequency_hz.max(1);
    let mut on_cpu: HashMap<u32, u64> = HashMap::new();
    let has_cpu = profile.run.events.contains(&EventKind::Cpu);
    for sample in profile.samples.get(&EventKind::Cpu).into_iter().flatten() {
        *on_cpu.entry(sample.tid).or_default() += sample.weight * per_sample_us;
        off_cpu
            .entry((sample.pid, sample.tid, sample.thread.clone()))
            .or_default();
    }
    let runnable: HashMap<u32, u64> = profile
        .run_queue
        .iter()
        .map(|rq| (rq.tid, rq.total_us))
        .collect();
    // One row per thread even if it had several names.
    let mut threads: HashMap<u32, ThreadTime> = HashMap::new();
    for ((pid, tid, name), off) in off_cpu {
        let row = threads.entry(tid).or_insert_with(|| {
            let runnable_us = runnable.get(&tid).copied().unwrap_or(0);
            ThreadTime {
                pid,
                tid,
                name: name.clone(),
                on_cpu_us: has_cpu.then(|| on_cpu.get(&tid).copied().unwrap_or(0)),
                off_cpu_us: 0,
                runnable_us,
                blocked_us: 0,
                total_us: 0,
            }
        });
        row.off_cpu_us += off;
    }
    let mut threads: Vec<ThreadTime> = threads
        .into_values()
        .map(|mut row| {
            row.runnable_us = row.runnable_us.min(row.off_cpu_us);
            row.blocked_us = row.off_cpu_us - row.runnable_us;
            row.total_us = row.off_cpu_us + row.on_cpu_us.unwrap_or(0);
            row
        })
        .collect();
    threads.sort_by_key(|row| (row.pid, row.tid));

    let mut run_queue: Vec<RunQueueLatency> = profile
        .run_queue
        .iter()
        .map(|rq| RunQueueLatency {
            pid: rq.pid,
            tid: rq.tid,
            name: rq.thread.clone(),
            count: rq.count,
            p50_us: rq.quantile_us(0.5),
            p99_us: rq.quantile_us(0.99),
            max_us: rq.max_us,
            total_us: rq.total_us,
        })
        .collect();
    run_queue.sort_by(|a, b| b.p99_us.cmp(&a.p99_us).then(a.tid.cmp(&b.tid)));

    OffCpuSummary {
        total_us: total,
        periods: samples.iter().map(|s| s.count.unwrap_or(1)).sum(),
        min_block_us: profile.run.min_block_us,
        filtered_periods: profile.losses.offcpu_filtered,
        filtered_us: profile.losses.offcpu_filtered_us,
        reasons,
        top_stacks,
        threads,
        run_queue,
    }
}

fn us_text(us: u64) -> String {
    match us {
        0..1_000 => format!("{us} µs"),
        1_000..1_000_000 => format!("{:.1} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

fn offcpu_markdown(md: &mut String, offcpu: &OffCpuSummary) {
    let _ = writeln!(
        md,
        "\n## Off-CPU time\n\n{} off-CPU in {} periods of at least {} µs ({} shorter periods, {}, \
         counted but not recorded).\n",
        us_text(offcpu.total_us),
        offcpu.periods,
        offcpu.min_block_us,
        offcpu.filtered_periods,
        us_text(offcpu.filtered_us)
    );
    if !offcpu.reasons.is_empty() {
        md.push_str("| reason | time | share |\n|---|---:|---:|\n");
        for reason in &offcpu.reasons {
            let _ = writeln!(
                md,
                "| {} | {} | {:.1}% |",
                reason.label,
                us_text(reason.us),
                reason.percent
            );
        }
    }
    md.push_str("\n### Top blocking stacks\n\n");
    if offcpu.top_stacks.is_empty() {
        md.push_str("No off-CPU time recorded.\n");
    } else {
        md.push_str("| share | time | periods | thread | waiting in | called from | system call | reason |\n|---:|---:|---:|---|---|---|---|---|\n");
        for stack in &offcpu.top_stacks {
            let _ = writeln!(
                md,
                "| {:.1}% | {} | {} | {} | {} | {} | {} | {} |",
                stack.percent,
                us_text(stack.us),
                stack.periods,
                md_code(&stack.thread),
                stack.function.as_deref().map(md_code).unwrap_or_default(),
                stack.caller.as_deref().map(md_code).unwrap_or_default(),
                stack.syscall.as_deref().map(md_code).unwrap_or_default(),
                stack.reason.label()
            );
        }
    }
    md.push_str("\n### Where each thread's time went\n\n");
    md.push_str("| thread | tid | on-CPU | blocked | runnable (waiting for a CPU) | total |\n|---|---:|---:|---:|---:|---:|\n");
    for thread in &offcpu.threads {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            md_code(&thread.name),
            thread.tid,
            thread.on_cpu_us.map(us_text).unwrap_or_else(|| "—".into()),
            us_text(thread.blocked_us),
            us_text(thread.runnable_us),
            us_text(thread.total_us)
        );
    }
    md.push_str("\n### Run-queue latency (wakeup or preemption to running)\n\n");
    if offcpu.run_queue.is_empty() {
        md.push_str("No run-queue delays recorded.\n");
    } else {
        md.push_str("| thread | tid | delays | p50 | p99 | max | total |\n|---|---:|---:|---:|---:|---:|---:|\n");
        for rq in &offcpu.run_queue {
            let _ = writeln!(
                md,
                "| {} | {} | {} | ≤{} | ≤{} | {} | {} |",
                md_code(&rq.name),
                rq.tid,
                rq.count,
                us_text(rq.p50_us),
                us_text(rq.p99_us),
                us_text(rq.max_us),
                us_text(rq.total_us)
            );
        }
    }
}

fn io_summary(profile: &Profile) -> IoSummary {
    let samples = profile
        .samples
        .get(&EventKind::Io)
        .map_or(&[][..], Vec::as_slice);
    let total = profile.total(EventKind::Io);
    let mut stacks: HashMap<(String, usize), (u64, u64)> = HashMap::new();
    for sample in samples {
        let entry = stacks
            .entry((sample.thread.clone(), sample.stack))
            .or_default();
        entry.0 += sample.weight;
        entry.1 += sample.count.unwrap_or(1);
    }
    let mut top_stacks: Vec<IoStack> = stacks
        .into_iter()
        .map(|((thread, stack), (us, calls))| {
            let frames: Vec<&crate::profile::Frame> = profile.stacks[stack]
                .iter()
                .map(|&f| &profile.frames[f])
                .collect();
            let user: Vec<&str> = frames
                .iter()
                .filter(|f| f.kind == crate::profile::FrameKind::User && !f.unsymbolized)
                .map(|f| f.function.as_str())
                .collect();
            IoStack {
                thread,
                syscall: frames
                    .last()
                    .map(|f| f.function.clone())
                    .unwrap_or_default(),
                function: user.last().map(|f| (*f).to_owned()),
                caller: user.len().checked_sub(2).map(|i| user[i].to_owned()),
                us,
                calls,
                percent: percent(us, total),
                stack: frames
                    .iter()
                    .map(|f| frame_label(f))
                    .collect::<Vec<_>>()
                    .join(";"),
            }
        })
        .collect();
    top_stacks.sort_by(|a, b| b.us.cmp(&a.us).then_with(|| a.stack.cmp(&b.stack)));
    top_stacks.truncate(TOP_STACKS);
    let stats = profile.io.clone().unwrap_or_default();
    IoSummary {
        calls: stats.syscalls.iter().map(|s| s.count).sum(),
        total_us: total,
        files: stats.files,
        syscalls: stats.syscalls,
        devices: stats.devices,
        top_stacks,
    }
}

fn memory_summary(profile: &Profile) -> MemorySummary {
    let memory = profile.memory.clone().unwrap_or_default();
    let total: u64 = memory.sites.iter().map(|site| site.alloc_bytes).sum();
    let site = |stats: &crate::profile::AllocSiteStats, bytes: u64, count: u64| {
        let frames: Vec<&crate::profile::Frame> = profile.stacks[stats.stack]
            .iter()
            .map(|&f| &profile.frames[f])
            .collect();
        let callers: Vec<&str> = frames
            .iter()
            .rev()
            .skip(1)
            .filter(|f| f.kind == crate::profile::FrameKind::User && !f.unsymbolized)
            .map(|f| f.function.as_str())
            .collect();
        MemorySite {
            pid: stats.pid,
            function: callers.first().map(|f| (*f).to_owned()),
            caller: callers.get(1).map(|f| (*f).to_owned()),
            allocator: frames
                .last()
                .map(|f| f.function.clone())
                .unwrap_or_default(),
            bytes,
            count,
            percent: percent(bytes, total),
            live_bytes: stats.live_bytes,
            mean_lifetime_us: stats.mean_lifetime_us,
            oldest_live_secs: stats.oldest_live_secs,
            stack: frames
                .iter()
                .map(|f| frame_label(f))
                .collect::<Vec<_>>()
                .join(";"),
        }
    };
    let top_allocating: Vec<MemorySite> = memory
        .sites
        .iter()
        .take(TOP_STACKS)
        .map(|s| site(s, s.alloc_bytes, s.alloc_count))
        .collect();
    let mut leaks: Vec<&crate::profile::AllocSiteStats> = memory
        .sites
        .iter()
        .filter(|s| s.old_live_bytes > 0)
        .collect();
    leaks.sort_by_key(|site| std::cmp::Reverse(site.old_live_bytes));
    let mut churn: Vec<&crate::profile::AllocSiteStats> =
        memory.sites.iter().filter(|s| s.free_count > 0).collect();
    churn.sort_by_key(|site| std::cmp::Reverse(site.free_count));
    let peak_heap = crate::memory::peak(&memory.timeline, |r| r.heap_live_bytes as f64);
    let peak_rss = crate::memory::peak(&memory.timeline, |r| r.rss_bytes as f64);
    MemorySummary {
        untracked_allocations: profile.losses.live_map_full,
        heap_growth_bytes: memory.timeline.last().map_or(0, |row| row.heap_live_bytes),
        sampled_every_bytes: (memory.sample_bytes > 0).then_some(memory.sample_bytes),
        allocated_bytes: total,
        allocations: memory.sites.iter().map(|s| s.alloc_count).sum(),
        freed_bytes: memory.sites.iter().map(|s| s.free_bytes).sum(),
        frees: memory.sites.iter().map(|s| s.free_count).sum(),
        live_bytes: memory.sites.iter().map(|s| s.live_bytes).sum(),
        live_allocations: memory.sites.iter().map(|s| s.live_count).sum(),
        peak_heap_bytes: peak_heap.map_or(0, |r| r.heap_live_bytes),
        peak_heap_at_secs: peak_heap.map_or(0.0, |r| r.time_secs),
        peak_rss_bytes: peak_rss.map_or(0, |r| r.rss_bytes),
        peak_rss_at_secs: peak_rss.map_or(0.0, |r| r.time_secs),
        leak_age_secs: memory.leak_age_secs,
        top_allocating,
        leak_candidates: leaks
            .into_iter()
            .take(TOP_STACKS)
            .map(|s| site(s, s.old_live_bytes, s.old_live_count))
            .collect(),
        churn: churn
            .into_iter()
            .take(TOP_STACKS)
            .map(|s| site(s, s.free_bytes, s.free_count))
            .collect(),
        mappings: memory.mappings,
        probed: memory.probed,
    }
}

fn memory_markdown(md: &mut String, memory: &MemorySummary) {
    md.push_str("\n## Memory\n\n");
    if let Some(every) = memory.sampled_every_bytes {
        let _ = writeln!(
            md,
            "Sampled: about one allocation per {}, weighted up; figures are estimates.\n",
            bytes_text(every)
        );
    }
    let _ = writeln!(
        md,
        "- Allocated during the run: {} in {} allocations; freed {} ({}); live at the end {} ({})",
        bytes_text(memory.allocated_bytes),
        memory.allocations,
        bytes_text(memory.freed_bytes),
        memory.frees,
        bytes_text(memory.live_bytes),
        memory.live_allocations
    );
    let _ = writeln!(
        md,
        "- Peak heap in use: {} at {:.1} s; peak RSS: {} at {:.1} s (see `memory-timeline.svg`)",
        bytes_text(memory.peak_heap_bytes.max(0) as u64),
        memory.peak_heap_at_secs,
        bytes_text(memory.peak_rss_bytes),
        memory.peak_rss_at_secs
    );
    let m = &memory.mappings;
    let _ = writeln!(
        md,
        "- mmap: {} calls, {}; munmap: {} calls, {}; brk: {} calls, heap end moved {} bytes",
        m.mmap_count,
        bytes_text(m.mmap_bytes),
        m.munmap_count,
        bytes_text(m.munmap_bytes),
        m.brk_count,
        m.brk_bytes
    );
    let table = |md: &mut String, title: &str, sites: &[MemorySite], what: &str| {
        let _ = writeln!(md, "\n### {title}\n");
        if sites.is_empty() {
            md.push_str("None.\n");
            return;
        }
        let _ = writeln!(
            md,
            "| {what} | count | share | function | caller | via | live at end | mean lifetime | oldest live |\n|---:|---:|---:|---|---|---|---:|---:|---:|"
        );
        for site in sites {
            let _ = writeln!(
                md,
                "| {} | {} | {:.1}% | {} | {} | {} | {} | {:.1} µs | {:.1} s |",
                bytes_text(site.bytes),
                site.count,
                site.percent,
                site.function.as_deref().map_or_else(String::new, md_code),
                site.caller.as_deref().map_or_else(String::new, md_code),
                md_code(&site.allocator),
                bytes_text(site.live_bytes),
                site.mean_lifetime_us,
                site.oldest_live_secs
            );
        }
    };
    table(
        md,
        &format!(
            "Leak candidates (live at the end, older than {:.1} s)",
            memory.leak_age_secs
        ),
        &memory.leak_candidates,
        "leaked",
    );
    table(
        md,
        "Top allocating stacks",
        &memory.top_allocating,
        "allocated",
    );
    table(
        md,
        "Churn: allocations freed during the run",
        &memory.churn,
        "freed",
    );
}

/// A byte count in binary units (`976.6 KiB`).
pub(super) fn bytes_text(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn io_markdown(md: &mut String, io: &IoSummary) {
    let _ = writeln!(
        md,
        "\n## I/O\n\n{} I/O system calls, {} in them.\n",
        io.calls,
        us_text(io.total_us)
    );
    md.push_str("### Code paths by time in I/O calls\n\n");
    if io.top_stacks.is_empty() {
        md.push_str("No I/O calls recorded.\n");
    } else {
        md.push_str("| share | time | calls | call | function | caller | thread |\n|---:|---:|---:|---|---|---|---|\n");
        for stack in &io.top_stacks {
            let _ = writeln!(
                md,
                "| {:.1}% | {} | {} | {} | {} | {} | {} |",
                stack.percent,
                us_text(stack.us),
                stack.calls,
                md_code(&stack.syscall),
                stack.function.as_deref().map_or_else(String::new, md_code),
                stack.caller.as_deref().map_or_else(String::new, md_code),
                md_code(&stack.thread)
            );
        }
    }
    md.push_str("\n### Files, pipes and sockets (slowest first)\n\n");
    if io.files.is_empty() {
        md.push_str("None.\n");
    } else {
        md.push_str("| path | kind | time | read | reads | written | writes | fsyncs | opens | errors |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for file in &io.files {
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} µs | {} | {} | {} | {} | {} | {} | {} |",
                md_code(&file.path),
                file.kind,
                file.total_us,
                bytes_text(file.read_bytes),
                file.reads,
                bytes_text(file.write_bytes),
                file.writes,
                file.fsyncs,
                file.opens,
                file.errors
            );
        }
    }
    md.push_str("\n### System calls (slowest first)\n\n");
    if io.syscalls.is_empty() {
        md.push_str("None.\n");
    } else {
        md.push_str("| call | count | bytes | total | p50 | p99 | max | errors |\n|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for call in &io.syscalls {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.0} µs | ≤{:.1} µs | ≤{:.1} µs | {:.1} µs | {} |",
                md_code(&call.name),
                call.count,
                bytes_text(call.bytes),
                call.total_us,
                call.p50_us,
                call.p99_us,
                call.max_us,
                call.errors
            );
        }
    }
    md.push_str("\n### Block devices (requests issued by the targets)\n\n");
    if io.devices.is_empty() {
        md.push_str("None: the targets issued no block requests themselves (page-cache hits, or writeback by kernel threads).\n");
    } else {
        md.push_str("| device | operation | requests | bytes | total | mean | max |\n|---|---|---:|---:|---:|---:|---:|\n");
        for device in &io.devices {
            let name = match &device.name {
                Some(name) => format!("{name} ({})", device.device),
                None => device.device.clone(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.0} µs | {:.1} µs | {:.1} µs |",
                md_code(&name),
                device.operation,
                device.requests,
                bytes_text(device.bytes),
                device.total_us,
                device.avg_us,
                device.max_us
            );
        }
    }
}

/// Summarizes a profile.
pub fn summarize(profile: &Profile) -> Summary {
    let run = &profile.run;
    let total = profile.total(EventKind::Cpu);
    let mut per_process: HashMap<u32, u64> = HashMap::new();
    for sample in profile.samples.get(&EventKind::Cpu).into_iter().flatten() {
        *per_process.entry(sample.pid).or_default() += sample.weight;
    }
    let names = profile.process_names();
    let mut processes: Vec<ProcessShare> = per_process
        .into_iter()
        .map(|(pid, samples)| ProcessShare {
            pid,
            name: names.name(pid),
            samples,
            percent: percent(samples, total),
        })
        .collect();
    processes.sort_by(|a, b| b.samples.cmp(&a.samples).then_with(|| a.pid.cmp(&b.pid)));
    let mut summary = Summary {
        verdict: Vec::new(),
        quality: verdict::quality(profile),
        target: run.target.clone(),
        command: run.command.clone(),
        pids: run.root_pids.clone(),
        follow_children: run.follow_children,
        start_unix_ms: run.start_unix_ms,
        duration_secs: run.duration_secs,
        frequency_hz: run.frequency_hz,
        events: run.events.clone(),
        stop_reason: run.stop_reason.clone(),
        exit_code: run.exit_code,
        attach_ms: run.attach_ms,
        first_sample_ms: run.first_sample_ms,
        unwind: run.unwind,
        processes,
        cpu: run
            .events
            .contains(&EventKind::Cpu)
            .then(|| cpu_summary(profile)),
        offcpu: run
            .events
            .contains(&EventKind::OffCpu)
            .then(|| offcpu_summary(profile)),
        io: run
            .events
            .contains(&EventKind::Io)
            .then(|| io_summary(profile)),
        memory: run
            .events
            .contains(&EventKind::Alloc)
            .then(|| memory_summary(profile)),
        losses: profile.losses.clone(),
    };
    summary.verdict = verdict::findings(&summary);
    summary
}

/// `summary.json`.
pub fn summary_json(summary: &Summary) -> String {
    let mut json = serde_json::to_string_pretty(summary).expect("summary serializes");
    json.push('\n');
    json
}

fn md_code(text: &str) -> String {
    format!("`{}`", text.replace('`', "'").replace('|', "\\|"))
}

/// `summary.md`.
pub fn summary_markdown(summary: &Summary) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Profile of {}\n", md_code(&summary.target));
    md.push_str("## Verdict\n\n");
    for (rank, finding) in summary.verdict.iter().enumerate() {
        let _ = writeln!(md, "{}. {}", rank + 1, finding.text);
    }
    if summary.verdict.is_empty() {
        md.push_str("Nothing collected to judge.\n");
    }
    let _ = writeln!(md, "\n{}\n", summary.quality.text);
    let _ = writeln!(md, "- Command: {}", md_code(&summary.command.join(" ")));
    let pids: Vec<String> = summary.pids.iter().map(u32::to_string).collect();
    let _ = writeln!(
        md,
        "- Processes: {}{}",
        pids.join(", "),
        if summary.follow_children {
            " and their descendants"
        } else {
            ""
        }
    );
    let _ = write!(
        md,
        "- Duration: {:.2} s at {} Hz; stopped: {}",
        summary.duration_secs, summary.frequency_hz, summary.stop_reason
    );
    if let Some(code) = summary.exit_code {
        let _ = write!(md, " (exit code {code})");
    }
    md.push('\n');
    if let Some(attach) = summary.attach_ms {
        let _ = write!(md, "- Start-up: attached after {attach:.0} ms");
        if let Some(first) = summary.first_sample_ms {
            let _ = write!(md, ", first sample after {first:.0} ms");
        }
        md.push('\n');
    }
    match &summary.unwind {
        Some(unwind) => {
            let _ = writeln!(
                md,
                "- User stacks: unwound with the `.eh_frame` tables of {} objects ({} of {} \
                 rows, built in {:.0} ms); {} objects without tables walked by frame pointers",
                unwind.objects,
                unwind.rows,
                unwind.capacity,
                unwind.build_ms,
                unwind.objects_without_tables
            );
        }
        None => md.push_str("- User stacks: frame pointers only (`--unwind fp`)\n"),
    }
    if let Some(cpu) = &summary.cpu {
        let _ = writeln!(
            md,
            "- CPU samples: {} (lost: {}, stacks damaged: {}, unsymbolized frames: {:.1}%)",
            cpu.samples, cpu.lost_samples, cpu.damaged_stacks, cpu.unsymbolized_frames_percent
        );
        if summary.processes.len() > 1 {
            md.push_str(
                "\n## Processes\n\n| process | pid | samples | share |\n|---|---:|---:|---:|\n",
            );
            for process in &summary.processes {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {:.1}% |",
                    md_code(&process.name),
                    process.pid,
                    process.samples,
                    process.percent
                );
            }
        }
        for (title, list) in [
            (
                "Top functions by self time (leaf of the stack)",
                &cpu.top_self,
            ),
            (
                "Top functions by total time (anywhere on the stack)",
                &cpu.top_total,
            ),
        ] {
            let _ = writeln!(md, "\n## {title}\n");
            if list.is_empty() {
                md.push_str("No samples.\n");
                continue;
            }
            md.push_str("| share | samples | function | where |\n|---:|---:|---|---|\n");
            for function in list {
                let place = function
                    .location
                    .as_deref()
                    .or(function.module.as_deref())
                    .unwrap_or("");
                let _ = writeln!(
                    md,
                    "| {:.1}% | {} | {} | {} |",
                    function.percent,
                    function.samples,
                    md_code(&function.function),
                    md_code(place)
                );
            }
        }
        md.push_str("\n## Threads\n\n");
        if cpu.threads.is_empty() {
            md.push_str("No samples.\n");
        } else {
            md.push_str("| thread | pid | tid | samples | share |\n|---|---:|---:|---:|---:|\n");
            for thread in &cpu.threads {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {:.1}% |",
                    md_code(&thread.name),
                    thread.pid,
                    thread.tid,
                    thread.samples,
                    thread.percent
                );
            }
        }
    }
    if let Some(offcpu) = &summary.offcpu {
        offcpu_markdown(&mut md, offcpu);
    }
    if let Some(io) = &summary.io {
        io_markdown(&mut md, io);
    }
    if let Some(memory) = &summary.memory {
        memory_markdown(&mut md, memory);
    }
    let losses = &summary.losses;
    if losses.process_events_lost + losses.target_map_full > 0 {
        let _ = writeln!(
            md,
            "\n## Losses\n\n- process notifications lost: {}\n- child processes not followed (target map full): {}",
            losses.process_events_lost, losses.target_map_full
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::tests::sample_profile;

    #[test]
    fn shares_by_self_total_and_thread() {
        let mut profile = sample_profile();
        profile.frames[2].file = Some("src/hot.c".into());
        profile.frames[2].line = Some(12);
        let summary = summarize(&profile);
        let cpu = summary.cpu.as_ref().unwrap();
        assert_eq!(cpu.samples, 10);
        assert_eq!(cpu.top_self[0].function, "hot");
        assert_eq!(cpu.top_self[0].percent, 70.0);
        assert_eq!(cpu.top_self[0].location.as_deref(), Some("src/hot.c:12"));
        assert_eq!(cpu.top_self[1].function, "cold");
        assert_eq!(cpu.top_self[1].percent, 30.0);
        assert_eq!(cpu.top_total[0].function, "main");
        assert_eq!(cpu.top_total[0].percent, 100.0);
        assert_eq!(cpu.threads.len(), 1);
        assert_eq!(cpu.threads[0].percent, 100.0);

        let md = summary_markdown(&summary);
        assert!(
            md.contains("| 70.0% | 7 | `hot` | `src/hot.c:12` |"),
            "{md}"
        );
        assert!(md.contains("| `demo` | 42 | 42 | 10 | 100.0% |"), "{md}");
        let json: serde_json::Value = serde_json::from_str(&summary_json(&summary)).unwrap();
        assert_eq!(json["cpu"]["top_self"][0]["function"], "hot");
        assert_eq!(json["frequency_hz"], 99);
    }

    #[test]
    fn process_shares_count_cpu_samples_only() {
        let mut profile = sample_profile();
        let mut blocked = profile.samples[&EventKind::Cpu][0].clone();
        blocked.weight = 5_000_000;
        profile.samples.insert(EventKind::OffCpu, vec![blocked]);
        let summary = summarize(&profile);
        assert_eq!(summary.processes[0].samples, 10);
        assert_eq!(summary.processes[0].percent, 100.0);
    }

    #[test]
    fn recursion_counts_once_in_total() {
        let mut profile = sample_profile();
        let main = profile.stacks[0][0];
        profile.stacks[0] = vec![main, main, main];
        let summary = summarize(&profile);
        let main_total = summary
            .cpu
            .unwrap()
            .top_total
            .into_iter()
            .find(|f| f.function == "main")
            .unwrap();
        assert_eq!(main_total.samples, 10);
    }

    #[test]
    fn empty_profile_summarizes() {
        let mut profile = sample_profile();
        profile.samples.clear();
        let summary = summarize(&profile);
        assert_eq!(summary.cpu.as_ref().unwrap().samples, 0);
        assert!(summary_markdown(&summary).contains("No samples."));
    }
}
