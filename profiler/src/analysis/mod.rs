//! The analysis of a profile, computed once: per-kind sections ([`cpu`], [`offcpu`], [`io`],
//! [`memory`]), the profile's [`quality`] and the ranked [`verdict`]. Plain data in, plain data
//! out; `render` writes it as markdown, JSON and HTML.

use std::collections::HashMap;

use serde::Serialize;

use crate::model::{EventKind, Frame, Losses, Profile, RunInfo};

/// How many stacks the top lists hold.
const TOP_STACKS: usize = 20;

pub mod cpu;
pub mod io;
pub mod memory;
pub mod offcpu;
pub mod quality;
pub mod verdict;

/// What `summary.json` holds.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// What bounds the process, most important first.
    pub verdict: Vec<verdict::Finding>,
    /// How trustworthy the profile is.
    pub quality: quality::Quality,
    /// The run: target, command, duration, frequency, events, why it stopped...
    #[serde(flatten)]
    pub run: RunInfo,
    /// The root processes (`run.root_pids`) under the name `summary.json` has always used.
    pub pids: Vec<u32>,
    /// Processes that contributed samples.
    pub processes: Vec<ProcessShare>,
    /// CPU section, when `cpu` was collected.
    pub cpu: Option<cpu::CpuSummary>,
    /// Off-CPU section, when `offcpu` was collected.
    pub offcpu: Option<offcpu::OffCpuSummary>,
    /// I/O section, when `io` was collected.
    pub io: Option<io::IoSummary>,
    /// Memory section, when `alloc` was collected.
    pub memory: Option<memory::MemorySummary>,
    /// What was lost while collecting.
    pub losses: Losses,
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

fn percent(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        // Two decimals are plenty for people and keep the JSON stable.
        (part as f64 * 10_000.0 / total as f64).round() / 100.0
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
        quality: quality::quality(profile),
        run: run.clone(),
        pids: run.root_pids.clone(),
        processes,
        cpu: run
            .events
            .contains(&EventKind::Cpu)
            .then(|| cpu::cpu_summary(profile)),
        offcpu: run
            .events
            .contains(&EventKind::OffCpu)
            .then(|| offcpu::offcpu_summary(profile)),
        io: run
            .events
            .contains(&EventKind::Io)
            .then(|| io::io_summary(profile)),
        memory: run
            .events
            .contains(&EventKind::Alloc)
            .then(|| memory::memory_summary(profile)),
        losses: profile.losses.clone(),
    };
    summary.verdict = verdict::findings(&summary);
    summary
}

/// Who waited in a stack: the innermost program frames outside the C library and runtime
/// (theirs, when nothing else is known), and the wrapper the wait went through.
pub(super) struct Waiter<'a> {
    /// The code that waited.
    pub function: Option<&'a Frame>,
    /// Its caller.
    pub caller: Option<&'a Frame>,
    /// The C library or runtime function between it and the system call, if any.
    pub via: Option<&'a Frame>,
}

/// Who waited in `frames` (root first); see [`Waiter`].
pub(super) fn waiter<'a>(frames: &[&'a Frame]) -> Waiter<'a> {
    let code: Vec<&'a Frame> = frames
        .iter()
        .copied()
        .filter(|f| f.kind.is_program_code() && !f.function.is_empty())
        .collect();
    let own: Vec<&'a Frame> = code
        .iter()
        .copied()
        .filter(|f| !f.in_system_library())
        .collect();
    let via = code
        .last()
        .copied()
        .filter(|f| f.in_system_library() && !own.is_empty());
    let named = if own.is_empty() { code } else { own };
    Waiter {
        function: named.last().copied(),
        caller: named.len().checked_sub(2).map(|i| named[i]),
        via,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{Sample, fixtures::sample_profile},
        render::markdown::summary_markdown,
    };

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
    fn empty_profile_summarizes() {
        let mut profile = sample_profile();
        profile.samples.clear();
        let summary = summarize(&profile);
        assert_eq!(summary.cpu.as_ref().unwrap().samples, 0);
        assert!(summary_markdown(&summary).contains("No samples."));
    }

    #[test]
    fn ties_are_broken_the_same_way_every_time() {
        // Two threads with the same stacks and weights, one of them renamed during the run:
        // every table has ties, which hash order must not decide.
        let mut profile = sample_profile();
        profile.run.events = vec![EventKind::Cpu, EventKind::OffCpu, EventKind::Io];
        let base = profile.samples[&EventKind::Cpu].clone();
        let mut all = Vec::new();
        for (tid, name) in [(42, "demo"), (43, "twin"), (43, "renamed")] {
            for sample in &base {
                let mut sample = sample.clone();
                sample.tid = tid;
                sample.thread = name.into();
                all.push(sample);
            }
        }
        let waits: Vec<Sample> = all
            .iter()
            .map(|sample| Sample {
                reason: Some(crate::model::BlockReason::Lock),
                count: Some(1),
                ..sample.clone()
            })
            .collect();
        profile.samples.insert(EventKind::Cpu, all);
        profile.samples.insert(EventKind::OffCpu, waits.clone());
        profile.samples.insert(EventKind::Io, waits);
        let first = crate::render::json::summary_json(&summarize(&profile));
        for _ in 0..20 {
            assert_eq!(
                crate::render::json::summary_json(&summarize(&profile)),
                first
            );
        }
    }
}
