//! The CPU section: where on-CPU samples went, by function (self and total), thread and
//! process.

use std::collections::HashMap;

use serde::Serialize;

use super::percent;
use crate::model::{EventKind, Profile};

/// How many functions the top lists hold.
const TOP_FUNCTIONS: usize = 20;

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

pub(super) fn cpu_summary(profile: &Profile) -> CpuSummary {
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
            *label_ids.entry(frame.label()).or_insert(next)
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
            if profile.frames[frame_id].kind.is_unsymbolized() {
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
        // Heaviest frame first: a name in several modules (`_start` of ld.so and of the
        // program) is shown with the module of most of its weight, the same every time.
        let mut lines: Vec<(&(usize, usize), &u64)> = lines.iter().collect();
        lines.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
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
    // Ties broken down to the name: a thread renamed during the run has two rows.
    threads.sort_by(|a, b| {
        b.samples
            .cmp(&a.samples)
            .then_with(|| (a.tid, a.pid, &a.name).cmp(&(b.tid, b.pid, &b.name)))
    });
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

#[cfg(test)]
mod tests {
    use crate::{
        analysis::summarize,
        model::fixtures::sample_profile,
        render::{json::summary_json, markdown::summary_markdown},
    };

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
}
