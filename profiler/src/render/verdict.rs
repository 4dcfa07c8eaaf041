//! The bottleneck verdict: what bounds the process, ranked across every event kind collected,
//! with the evidence; and a line on the profile's own quality.

use serde::Serialize;

use crate::{
    assemble::is_entry_function,
    profile::{BlockReason, EventKind, FrameKind, Profile},
};

use super::summary::{Summary, bytes_text};

/// One finding.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    /// `cpu`, `blocked`, `run_queue`, `io` or `memory`.
    pub kind: &'static str,
    /// Share of the targets' wall time it accounts for, percent; for memory, the share of
    /// the heap at its peak that leaked.
    pub score: f64,
    /// The finding in one sentence, code in backticks.
    pub text: String,
}

/// How trustworthy the profile is.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Quality {
    /// Events lost (maps or buffers full), over every kind.
    pub lost_events: u64,
    /// Stacks lost to collisions or errors, or cut short by the unwinder.
    pub stacks_cut_short: u64,
    /// Share of sampled frames without a symbol, percent.
    pub unsymbolized_frames_percent: f64,
    /// Share of events (samples, calls) whose user stack reaches the program's entry or a
    /// thread's start, percent: the lowest of the event kinds' shares (a million allocation
    /// calls must not hide a tenth of CPU samples cut short).
    pub complete_stacks_percent: f64,
    /// The same per event kind.
    pub complete_stacks_percent_by_kind: std::collections::BTreeMap<String, f64>,
    /// The same in one sentence.
    pub text: String,
}

/// Findings below this score are not worth a line.
const MIN_SCORE: f64 = 5.0;

fn us_text(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.0} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn where_from(function: Option<&str>, caller: Option<&str>) -> String {
    match (function, caller) {
        (Some(function), Some(caller)) => format!(" in `{function}` from `{caller}`"),
        (Some(function), None) => format!(" in `{function}`"),
        _ => String::new(),
    }
}

/// The ranked findings of a summary, most important first.
pub fn findings(summary: &Summary) -> Vec<Finding> {
    let mut findings = Vec::new();
    // The targets' wall time: each thread's lifetime when off-CPU time was collected, else
    // the run's duration for every thread seen.
    let thread_time_us: Option<f64> = summary
        .offcpu
        .as_ref()
        .map(|offcpu| offcpu.threads.iter().map(|t| t.total_us as f64).sum());
    let threads_seen = summary
        .cpu
        .as_ref()
        .map_or(1, |cpu| cpu.threads.len().max(1));
    let wall_us = thread_time_us
        .filter(|&us| us > 0.0)
        .unwrap_or(summary.duration_secs * 1e6 * threads_seen as f64)
        .max(1.0);

    if let Some(cpu) = &summary.cpu
        && cpu.samples > 0
    {
        let on_cpu_us = cpu.samples as f64 * 1e6 / summary.frequency_hz.max(1) as f64;
        let score = (100.0 * on_cpu_us / wall_us).min(100.0);
        let mut text = format!(
            "CPU: on-CPU {:.0}% of the time ({:.2} CPUs busy on average)",
            score,
            on_cpu_us / 1e6 / summary.duration_secs.max(1e-9)
        );
        if let Some(top) = cpu.top_self.first() {
            let place = top
                .location
                .as_deref()
                .map(|l| format!(" ({l})"))
                .unwrap_or_default();
            text.push_str(&format!(
                "; {:.0}% of samples in `{}`{place}",
                top.percent, top.function
            ));
        }
        findings.push(Finding {
            kind: "cpu",
            score,
            text,
        });
    }
    if let Some(offcpu) = &summary.offcpu {
        let blocking = offcpu.top_stacks.iter().find(|stack| {
            !matches!(
                stack.reason,
                BlockReason::Preempted | BlockReason::NewThread | BlockReason::BeforeAttach
            )
        });
        if let Some(stack) = blocking {
            let score = 100.0 * stack.us as f64 / wall_us;
            let call = stack
                .syscall
                .as_deref()
                .map(|s| format!(" in `{s}`"))
                .unwrap_or_default();
            let from = match (&stack.function, &stack.caller) {
                (Some(f), Some(c)) => format!(" from `{f}` (called by `{c}`)"),
                (Some(f), None) => format!(" from `{f}`"),
                _ => String::new(),
            };
            findings.push(Finding {
                kind: "blocked",
                score,
                text: format!(
                    "Blocked ({}) {score:.0}% of wall time{call}{from}, thread `{}`",
                    stack.reason.label(),
                    stack.thread
                ),
            });
        }
        let runnable: u64 = offcpu.threads.iter().map(|t| t.runnable_us).sum();
        if let Some(worst) = offcpu.run_queue.iter().max_by_key(|rq| rq.p99_us)
            && worst.p99_us >= 1000
        {
            let score = 100.0 * runnable as f64 / wall_us;
            findings.push(Finding {
                kind: "run_queue",
                score,
                text: format!(
                    "Run-queue delay p99 {} (thread `{}`): waiting for a CPU {score:.0}% of \
                     the time; more runnable threads than CPUs",
                    us_text(worst.p99_us as f64),
                    worst.name
                ),
            });
        }
    }
    if let Some(io) = &summary.io
        && io.total_us > 0
    {
        let score = 100.0 * io.total_us as f64 / wall_us;
        let mut text = format!("I/O: {score:.0}% of wall time in I/O system calls");
        if let Some(stack) = io.top_stacks.first() {
            text.push_str(&format!(
                "; {:.0}% of it in `{}`{}",
                stack.percent,
                stack.syscall,
                where_from(stack.function.as_deref(), stack.caller.as_deref())
            ));
        }
        if let Some(file) = io.files.first() {
            text.push_str(&format!(", slowest file `{}`", file.path));
        }
        findings.push(Finding {
            kind: "io",
            score,
            text,
        });
    }
    if let Some(memory) = &summary.memory {
        let leaked: u64 = memory.leak_candidates.iter().map(|site| site.bytes).sum();
        if let Some(top) = memory.leak_candidates.first() {
            let peak = memory.peak_heap_bytes.max(1) as f64;
            // Untracked allocations may be leaks too: the tracked figure is a floor, and the
            // allocator's own counts say how far the heap really grew.
            let (at_least, untracked) = if memory.untracked_allocations > 0 {
                (
                    "at least ",
                    format!(
                        "; {} allocations went untracked (live-allocation map full) and the \
                         heap grew by {} in all",
                        memory.untracked_allocations,
                        bytes_text(memory.heap_growth_bytes.max(0).unsigned_abs())
                    ),
                )
            } else {
                ("", String::new())
            };
            findings.push(Finding {
                kind: "memory",
                score: (100.0 * leaked as f64 / peak).min(100.0),
                text: format!(
                    "Memory: {at_least}{} allocated and still live at the end (older than \
                     {:.1} s), {} of it{} via `{}`{untracked}",
                    bytes_text(leaked),
                    memory.leak_age_secs,
                    bytes_text(top.bytes),
                    where_from(top.function.as_deref(), top.caller.as_deref()),
                    top.allocator
                ),
            });
        } else if let Some(top) = memory.top_allocating.first() {
            findings.push(Finding {
                kind: "memory",
                score: 0.0,
                text: format!(
                    "Memory: no leak candidates; {} allocated, {:.0}% of it{}",
                    bytes_text(memory.allocated_bytes),
                    top.percent,
                    where_from(top.function.as_deref(), top.caller.as_deref())
                ),
            });
        }
    }
    findings.sort_by(|a, b| b.score.total_cmp(&a.score));
    let (mut kept, rest): (Vec<Finding>, Vec<Finding>) = findings
        .into_iter()
        .partition(|finding| finding.score >= MIN_SCORE);
    if kept.is_empty() {
        kept.extend(rest.into_iter().take(1));
    }
    kept
}

/// The profile-quality line.
pub fn quality(profile: &Profile) -> Quality {
    let losses = &profile.losses;
    let lost_events = losses.lost_samples()
        + losses.process_events_lost
        + losses.offcpu_map_full
        + losses.io_map_full
        + losses.open_events_lost
        + losses.block_pending_full
        + losses.live_map_full
        + losses.alloc_sites_full
        + losses.memory_cap_dropped;
    let truncated = |stack: usize| {
        profile.stacks[stack].iter().any(|&frame| {
            let function = &profile.frames[frame].function;
            function.starts_with(crate::assemble::TRUNCATED_STACK)
                || function.contains("stack lost")
        })
    };
    let mut cut_short = 0;
    // Per kind: (events with a user stack, of which complete).
    let mut by_kind: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    let mut frames_seen = 0u64;
    let mut unsymbolized = 0u64;
    for (kind, samples) in &profile.samples {
        // Live memory at the end is a view of the allocation events, not events of its own.
        let mut ignored = (0, 0);
        let (user_stacks, complete) = if *kind == EventKind::InUse {
            &mut ignored
        } else {
            by_kind.entry(kind.name().to_owned()).or_default()
        };
        for sample in samples {
            if truncated(sample.stack) {
                cut_short += 1;
            }
            let stack = &profile.stacks[sample.stack];
            if let Some(&root) = stack.first()
                && profile.frames[root].kind == FrameKind::User
            {
                // Weighted by events (samples, calls), so a rare odd stack weighs little.
                let events = sample.count.unwrap_or(sample.weight);
                *user_stacks += events;
                if is_entry_function(&profile.frames[root].function) {
                    *complete += events;
                }
            }
            for &frame in &profile.stacks[sample.stack] {
                let frame = &profile.frames[frame];
                if frame.kind == FrameKind::User || frame.kind == FrameKind::Kernel {
                    frames_seen += 1;
                    unsymbolized += u64::from(frame.unsymbolized);
                }
            }
        }
    }
    let unsymbolized_frames_percent = if frames_seen == 0 {
        0.0
    } else {
        (10000.0 * unsymbolized as f64 / frames_seen as f64).round() / 100.0
    };
    let distinct: usize = profile.samples.values().map(Vec::len).sum();
    let complete_stacks_percent_by_kind: std::collections::BTreeMap<String, f64> = by_kind
        .into_iter()
        .filter(|(_, (user_stacks, _))| *user_stacks > 0)
        .map(|(kind, (user_stacks, complete))| {
            let percent = (1000.0 * complete as f64 / user_stacks as f64).round() / 10.0;
            (kind, percent)
        })
        .collect();
    let complete_stacks_percent = complete_stacks_percent_by_kind
        .values()
        .copied()
        .reduce(f64::min)
        .unwrap_or(0.0);
    let per_kind = if complete_stacks_percent_by_kind.len() > 1 {
        let parts: Vec<String> = complete_stacks_percent_by_kind
            .iter()
            .map(|(kind, percent)| format!("{kind} {percent:.1}%"))
            .collect();
        format!(" ({})", parts.join(", "))
    } else {
        String::new()
    };
    Quality {
        lost_events,
        stacks_cut_short: cut_short,
        unsymbolized_frames_percent,
        complete_stacks_percent,
        complete_stacks_percent_by_kind,
        text: format!(
            "Profile quality: {lost_events} events lost; {complete_stacks_percent:.1}% of events \
             with complete user stacks (from the entry point or thread start){per_kind}; \
             {cut_short} of \
             {distinct} \
             distinct stacks cut short or lost; {unsymbolized_frames_percent:.1}% of frames \
             unsymbolized"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{profile::tests::sample_profile, render::summary::summarize};

    #[test]
    fn cpu_bound_profile_names_its_hottest_function() {
        let mut profile = sample_profile();
        profile.frames[2].file = Some("src/hot.c".into());
        profile.frames[2].line = Some(12);
        // 10 samples at 99 Hz in 2 s on one thread: about 5% of the time on-CPU.
        profile.run.duration_secs = 0.1;
        let summary = summarize(&profile);
        let findings = findings(&summary);
        assert_eq!(findings[0].kind, "cpu");
        assert!(
            findings[0]
                .text
                .contains("70% of samples in `hot` (src/hot.c:12)"),
            "{findings:?}"
        );
        assert!((findings[0].score - 100.0).abs() < 1e-9, "capped at 100");
    }

    #[test]
    fn quality_counts_cut_stacks_and_losses() {
        let mut profile = sample_profile();
        profile.losses.sample_map_full = 3;
        profile.losses.io_map_full = 2;
        let mut truncated = profile.frames[0].clone();
        truncated.function = "[stack truncated]".into();
        truncated.unsymbolized = true;
        profile.frames.push(truncated);
        let cut = profile.frames.len() - 1;
        let mut stack = profile.stacks[0].clone();
        stack.insert(0, cut);
        profile.stacks.push(stack);
        profile.samples.get_mut(&EventKind::Cpu).unwrap()[0].stack = profile.stacks.len() - 1;
        // The other sample's stack starts at the program's entry: complete.
        let other = profile.samples[&EventKind::Cpu][1].stack;
        let root = profile.stacks[other][0];
        profile.frames[root].function = "_start".into();
        let quality = quality(&profile);
        assert_eq!(quality.lost_events, 5);
        assert_eq!(quality.stacks_cut_short, 1);
        assert!(quality.unsymbolized_frames_percent > 0.0);
        let samples = &profile.samples[&EventKind::Cpu];
        let expected =
            100.0 * samples[1].weight as f64 / (samples[0].weight + samples[1].weight) as f64;
        assert!((quality.complete_stacks_percent - expected).abs() < 0.1);
        assert!(
            quality.text.starts_with(&format!(
                "Profile quality: 5 events lost; {expected:.1}% of events with complete user \
                 stacks (from the entry point or thread start); 1 of 2"
            )),
            "{}",
            quality.text
        );

        // A million complete allocation calls do not hide the CPU samples cut short.
        let mut calls = profile.samples[&EventKind::Cpu][1].clone();
        calls.count = Some(1_000_000);
        profile
            .samples
            .insert(EventKind::Alloc, vec![calls.clone()]);
        // Live memory is a view of those calls: no share of its own.
        let mut live = calls;
        live.stack = profile.samples[&EventKind::Cpu][0].stack;
        profile.samples.insert(EventKind::InUse, vec![live]);
        let quality = super::quality(&profile);
        assert!((quality.complete_stacks_percent - expected).abs() < 0.1);
        assert_eq!(quality.complete_stacks_percent_by_kind["alloc"], 100.0);
        assert!(
            quality
                .text
                .contains(&format!("(alloc 100.0%, cpu {expected:.1}%)")),
            "{}",
            quality.text
        );
    }

    #[test]
    fn leaks_past_a_full_live_map_are_a_lower_bound() {
        use crate::profile::{AllocSiteStats, MemoryStats, TimelineRow};
        let mut profile = sample_profile();
        profile.run.events.push(EventKind::Alloc);
        let stack = profile.samples[&EventKind::Cpu][0].stack;
        let tracked = AllocSiteStats {
            pid: 42,
            stack,
            alloc_count: 1 << 20,
            alloc_bytes: 16 << 20,
            live_count: 1 << 20,
            live_bytes: 16 << 20,
            old_live_count: 1 << 20,
            old_live_bytes: 16 << 20,
            ..AllocSiteStats::default()
        };
        profile.memory = Some(MemoryStats {
            sites: vec![tracked],
            timeline: vec![TimelineRow {
                time_secs: 2.0,
                heap_live_bytes: 80 << 20,
                ..TimelineRow::default()
            }],
            ..MemoryStats::default()
        });
        let memory = |profile: &Profile| {
            findings(&summarize(profile))
                .into_iter()
                .find(|finding| finding.kind == "memory")
                .unwrap()
                .text
        };
        let exact = memory(&profile);
        assert!(exact.starts_with("Memory: 16.0 MiB allocated"), "{exact}");
        profile.losses.live_map_full = 3_951_424;
        let floor = memory(&profile);
        assert!(
            floor.starts_with("Memory: at least 16.0 MiB allocated")
                && floor.contains("3951424 allocations went untracked")
                && floor.contains("heap grew by 80.0 MiB"),
            "{floor}"
        );
    }
}
