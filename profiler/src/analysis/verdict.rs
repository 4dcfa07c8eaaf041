//! The bottleneck verdict: what bounds the process, ranked across every event kind collected,
//! with the evidence; and a line on the profile's own quality.

use serde::Serialize;

use super::Summary;
use crate::{
    model::BlockReason,
    text::{bytes, duration_us},
};

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

/// A thread on-CPU at least this share of its life (percent) is CPU-bound.
const BUSY_THREAD: f64 = 80.0;

/// The thread with the most on-CPU time, and its share of its own life in the run, percent
/// (its lifetime from the off-CPU accounting, else the run's duration).
fn busiest_thread(summary: &Summary, us_per_sample: f64) -> Option<(&str, f64)> {
    let cpu = summary.cpu.as_ref()?;
    let thread = cpu.threads.first()?;
    let lifetime_us = summary
        .offcpu
        .as_ref()
        .and_then(|offcpu| offcpu.threads.iter().find(|t| t.tid == thread.tid))
        .map(|t| t.total_us as f64)
        .filter(|&us| us > 0.0)
        .unwrap_or(summary.run.duration_secs * 1e6);
    let share = (100.0 * thread.samples as f64 * us_per_sample / lifetime_us.max(1.0)).min(100.0);
    Some((&thread.name, share))
}

/// Findings below this score are not worth a line.
const MIN_SCORE: f64 = 5.0;

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
    let all_us = thread_time_us
        .filter(|&us| us > 0.0)
        .unwrap_or(summary.run.duration_secs * 1e6 * threads_seen as f64)
        .max(1.0);
    // Threads waiting for work (in their event loop) or asleep since before the attach are
    // idle, not contended: the shares below are of the rest of the threads' time, so a
    // server's bottleneck is not diluted by the workers waiting for clients.
    let idle_us: f64 = summary.offcpu.as_ref().map_or(0.0, |offcpu| {
        offcpu
            .reasons
            .iter()
            .filter(|share| is_idle(share.reason))
            .map(|share| share.us as f64)
            .sum()
    });
    let wall_us = (all_us - idle_us).max(all_us / 100.0).max(1.0);

    if let Some(cpu) = &summary.cpu
        && cpu.samples > 0
    {
        let us_per_sample = 1e6 / summary.run.frequency_hz.max(1) as f64;
        let on_cpu_us = cpu.samples as f64 * us_per_sample;
        let cpus_busy = on_cpu_us / 1e6 / summary.run.duration_secs.max(1e-9);
        let of_cpus = match summary.run.cpus {
            0 => String::new(),
            cpus => format!(" of {cpus}"),
        };
        let share = (100.0 * on_cpu_us / wall_us).min(100.0);
        // Idle threads dilute the share of the whole: a thread on-CPU nearly all its life is
        // CPU-bound, however many others wait for work.
        let busiest = busiest_thread(summary, us_per_sample);
        let (score, mut text) = match busiest {
            Some((name, thread_share)) if thread_share >= BUSY_THREAD && share < BUSY_THREAD => (
                thread_share,
                format!(
                    "CPU: thread `{name}` on-CPU {thread_share:.0}% of its time, CPU-bound \
                     ({cpus_busy:.2}{of_cpus} CPUs busy on average)"
                ),
            ),
            _ => (
                share,
                format!(
                    "CPU: on-CPU {share:.0}% of the time ({cpus_busy:.2}{of_cpus} CPUs busy on \
                     average)"
                ),
            ),
        };
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
            !is_idle(stack.reason)
                && !matches!(
                    stack.reason,
                    BlockReason::Preempted | BlockReason::NewThread
                )
        });
        if let Some(stack) = blocking {
            let score = 100.0 * stack.us as f64 / wall_us;
            let call = stack
                .syscall
                .as_deref()
                .map(|s| format!(" in `{s}`"))
                .unwrap_or_default();
            let via = stack
                .via
                .as_deref()
                .map(|v| format!(" via `{v}`"))
                .unwrap_or_default();
            let from = match (&stack.function, &stack.caller) {
                (Some(f), Some(c)) => format!(" from `{f}`{via} (called by `{c}`)"),
                (Some(f), None) => format!(" from `{f}`{via}"),
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
        let on_cpu: u64 = offcpu.threads.iter().filter_map(|t| t.on_cpu_us).sum();
        if let Some(worst) = offcpu.run_queue.iter().max_by_key(|rq| rq.p99_us)
            && worst.p99_us >= 1000
        {
            // Of the time the threads could run, how much they waited for a CPU (a wakeup from
            // an idle wait is runnable too, so this is not a share of the active time).
            let ready_us = match on_cpu {
                0 => wall_us,
                on_cpu => (on_cpu + runnable) as f64,
            };
            let score = (100.0 * runnable as f64 / ready_us.max(1.0)).min(100.0);
            findings.push(Finding {
                kind: "run_queue",
                score,
                text: format!(
                    "Run-queue delay p99 {} (thread `{}`): waiting for a CPU {score:.0}% of \
                     the time ready to run; more runnable threads than CPUs",
                    duration_us(worst.p99_us),
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
                        bytes(memory.heap_growth_bytes.max(0).unsigned_abs())
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
                    bytes(leaked),
                    memory.leak_age_secs,
                    bytes(top.bytes),
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
                    bytes(memory.allocated_bytes),
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
    // Idle time is said last, whatever its share: it is what the targets were not doing.
    let idle_share = 100.0 * idle_us / all_us;
    if idle_share >= MIN_SCORE {
        let place = summary
            .offcpu
            .as_ref()
            .and_then(|offcpu| {
                offcpu
                    .top_stacks
                    .iter()
                    .find(|s| s.reason == BlockReason::Poll)
            })
            .map(|stack| {
                let call = stack
                    .syscall
                    .as_deref()
                    .map(|s| format!(" `{s}`"))
                    .unwrap_or_default();
                format!(
                    " (mostly{call}{})",
                    where_from(stack.function.as_deref(), stack.caller.as_deref())
                )
            })
            .unwrap_or_default();
        kept.push(Finding {
            kind: "idle",
            score: idle_share,
            text: format!(
                "Idle: {idle_share:.0}% of the threads' time waiting for work in an event \
                 loop{place} or asleep since before the attach; the shares above leave it out"
            ),
        });
    }
    kept
}

/// Off-CPU reasons that mean waiting for work rather than for a resource: event-loop waits
/// (epoll, poll, select) and sleeps that began before the attach.
fn is_idle(reason: BlockReason) -> bool {
    matches!(reason, BlockReason::Poll | BlockReason::BeforeAttach)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::{
        analysis::summarize,
        model::{EventKind, Profile, fixtures::sample_profile},
    };

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
    fn a_busy_thread_among_idle_ones_is_cpu_bound() {
        // One thread on-CPU its whole 2 s, seven idle ones: 12.5% of the threads' time.
        let mut profile = sample_profile();
        profile.run.duration_secs = 10.0 / 99.0;
        profile.run.events.push(EventKind::OffCpu);
        let on_cpu_us = 10 * 1_000_000 / 99;
        let mut idle = profile.samples[&EventKind::Cpu][0].clone();
        idle.weight = 7 * on_cpu_us;
        idle.tid = 43;
        idle.thread = "idle".into();
        idle.reason = Some(BlockReason::Lock);
        profile.samples.insert(EventKind::OffCpu, vec![idle]);
        let summary = summarize(&profile);
        let findings = findings(&summary);
        assert_eq!(findings[0].kind, "cpu", "{findings:?}");
        assert!(
            findings[0]
                .text
                .starts_with("CPU: thread `demo` on-CPU 100% of its time, CPU-bound (1.00 of 2"),
            "{findings:?}"
        );
    }

    #[test]
    fn idle_waits_are_said_last_and_left_out_of_the_shares() {
        // A server: 10 s waiting in epoll for clients, 1 s waiting for the disk, 0.1 s on-CPU.
        let mut profile = sample_profile();
        profile.run.duration_secs = 11.1;
        profile.run.events.push(EventKind::OffCpu);
        let wait = |reason, us| {
            let mut sample = profile.samples[&EventKind::Cpu][0].clone();
            sample.weight = us;
            sample.reason = Some(reason);
            sample
        };
        let offcpu = vec![
            wait(BlockReason::Poll, 10_000_000),
            wait(BlockReason::Io, 1_000_000),
        ];
        profile.samples.insert(EventKind::OffCpu, offcpu);
        let summary = summarize(&profile);
        let findings = findings(&summary);
        let kinds: Vec<&str> = findings.iter().map(|f| f.kind).collect();
        assert_eq!(kinds.first(), Some(&"blocked"), "{findings:?}");
        assert!(
            findings[0].text.starts_with("Blocked (I/O) 9"),
            "{findings:?}"
        );
        assert_eq!(kinds.last(), Some(&"idle"), "{findings:?}");
        assert!(
            findings.last().unwrap().text.starts_with("Idle: 90%"),
            "{findings:?}"
        );
    }

    #[test]
    fn leaks_past_a_full_live_map_are_a_lower_bound() {
        use crate::model::{AllocSiteStats, MemoryStats, TimelineRow};
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
