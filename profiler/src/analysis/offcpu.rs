//! The off-CPU section: why threads were off-CPU, the stacks they blocked in, where each
//! thread's time went, and run-queue latency.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::{TOP_STACKS, percent, waiter};
use crate::model::{BlockReason, EventKind, Frame, Profile};

/// The off-CPU section: where and why the target's threads waited.
#[derive(Clone, Debug, Serialize)]
pub struct OffCpuSummary {
    /// Off-CPU time recorded, µs (exact, also under stack sampling).
    pub total_us: u64,
    /// Off-CPU periods recorded (exact).
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
    /// The code that waited: the innermost symbolized user function outside the C library
    /// and runtime (the innermost of theirs when nothing else is known).
    pub function: Option<String>,
    /// The user function that called it.
    pub caller: Option<String>,
    /// The C library or runtime function it waited through (`pthread_cond_wait`, `read`),
    /// when that is not `function` itself.
    pub via: Option<String>,
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

pub(super) fn offcpu_summary(profile: &Profile) -> OffCpuSummary {
    let samples = profile
        .samples
        .get(&EventKind::OffCpu)
        .map_or(&[][..], Vec::as_slice);
    let total = profile.total(EventKind::OffCpu);
    // When some periods' stacks were not walked, the samples are the walked ones weighted
    // up: the totals are the exact ones, the shares an estimate from the sample. When every
    // one was walked, the samples are the totals (to the rounding of each to µs).
    let sampling = profile
        .run
        .stack_sampling
        .as_ref()
        .filter(|sampling| sampling.offcpu.is_some_and(|o| o.walked < o.events));
    let mut reasons: HashMap<BlockReason, u64> = HashMap::new();
    // Per thread, folded stack and reason: (time, periods, one of the profile's stacks).
    let mut stacks: HashMap<(String, String, BlockReason), (u64, u64, usize)> = HashMap::new();
    // Ordered: a thread with several names gets the first in order, the same every time.
    let mut off_cpu: BTreeMap<(u32, u32, String), u64> = BTreeMap::new();
    for sample in samples {
        let reason = sample.reason.unwrap_or(BlockReason::OtherWait);
        *reasons.entry(reason).or_default() += sample.weight;
        let stack: Vec<String> = profile.stacks[sample.stack]
            .iter()
            .map(|&f| profile.frames[f].label())
            .collect();
        let entry = stacks
            .entry((sample.thread.clone(), stack.join(";"), reason))
            .or_insert((0, 0, sample.stack));
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
        .map(|((thread, stack, reason), (us, periods, frames))| {
            let frames: Vec<&Frame> = profile.stacks[frames]
                .iter()
                .map(|&f| &profile.frames[f])
                .collect();
            // The wait is named by the code that waits, past the C library's wrappers (which
            // stay on the stack).
            let waiter = waiter(&frames);
            let syscall = frames.iter().find_map(|f| {
                let name = f.kind.is_kernel().then_some(f.function.as_str())?;
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
                function: waiter.function.map(Frame::label),
                caller: waiter.caller.map(Frame::label),
                via: waiter.via.map(Frame::label),
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
    top_stacks.sort_by(|a, b| {
        b.us.cmp(&a.us)
            .then_with(|| (&a.stack, &a.thread, a.reason).cmp(&(&b.stack, &b.thread, b.reason)))
    });
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
    // Under stack sampling, each thread's exact time rather than its samples' estimate.
    let exact_by_thread = sampling.map(|sampling| &sampling.offcpu_us_by_thread);
    let mut threads: Vec<ThreadTime> = threads
        .into_values()
        .map(|mut row| {
            if let Some(&exact) = exact_by_thread.and_then(|by_thread| by_thread.get(&row.tid)) {
                row.off_cpu_us = exact;
            }
            row.runnable_us = row.runnable_us.min(row.off_cpu_us);
            row.blocked_us = row.off_cpu_us - row.runnable_us;
            row.total_us = row.off_cpu_us + row.on_cpu_us.unwrap_or(0);
            row
        })
        .collect();
    threads.sort_by(|a, b| (a.pid, a.tid, &a.name).cmp(&(b.pid, b.tid, &b.name)));

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
    run_queue.sort_by(|a, b| {
        b.p99_us
            .cmp(&a.p99_us)
            .then_with(|| (a.tid, a.pid, &a.name).cmp(&(b.tid, b.pid, &b.name)))
    });

    let exact = sampling.and_then(|sampling| sampling.offcpu);
    OffCpuSummary {
        total_us: exact.map_or(total, |exact| exact.total_us),
        periods: exact.map_or_else(
            || samples.iter().map(|s| s.count.unwrap_or(1)).sum(),
            |exact| exact.events,
        ),
        min_block_us: profile.run.min_block_us,
        filtered_periods: profile.losses.offcpu_filtered,
        filtered_us: profile.losses.offcpu_filtered_us,
        reasons,
        top_stacks,
        threads,
        run_queue,
    }
}
