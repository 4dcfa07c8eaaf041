//! Folded stacks (`cpu.folded`): the interchange format of flamegraph tools.
//!
//! One line per distinct stack, `root;...;leaf WEIGHT`, where the root is the thread name
//! (preceded by `process (pid)` when several processes were profiled). Kernel frames carry
//! inferno's `_[k]` suffix and inlined frames `_[i]`.

use std::collections::BTreeMap;

use crate::model::{EventKind, Frame, Profile, Sample};

/// Folded lines of one event kind, merged and sorted by stack.
pub fn folded_lines(profile: &Profile, kind: EventKind) -> Vec<(String, u64)> {
    let mut merged = BTreeMap::new();
    add_lines(profile, kind, &mut merged, |sample| sample.weight, |_| None);
    merged.into_iter().collect()
}

/// The wall-clock view: CPU samples turned into microseconds (one sample is `1 / frequency`)
/// and off-CPU microseconds, each off-CPU stack topped with an `[off-CPU: reason]` frame, so a
/// thread's on- and off-CPU time add up to the time it existed.
pub fn wall_lines(profile: &Profile) -> Vec<(String, u64)> {
    let mut merged = BTreeMap::new();
    let per_sample_us = 1_000_000 / profile.run.frequency_hz.max(1);
    add_lines(
        profile,
        EventKind::Cpu,
        &mut merged,
        |s| s.weight * per_sample_us,
        |_| None,
    );
    add_lines(
        profile,
        EventKind::OffCpu,
        &mut merged,
        |s| s.weight,
        |sample| {
            sample
                .reason
                .map(|reason| format!("[off-CPU: {}]", reason.label()))
        },
    );
    merged.into_iter().collect()
}

fn add_lines(
    profile: &Profile,
    kind: EventKind,
    merged: &mut BTreeMap<String, u64>,
    weight: impl Fn(&Sample) -> u64,
    leaf: impl Fn(&Sample) -> Option<String>,
) {
    let multi_process = profile.is_multi_process();
    let labels: Vec<String> = profile.frames.iter().map(Frame::label).collect();
    let names = profile.process_names();
    for sample in profile.samples.get(&kind).into_iter().flatten() {
        let mut line = String::new();
        if multi_process {
            line.push_str(&names.label(sample.pid));
            line.push(';');
        }
        line.push_str(&sample.thread.replace(';', ":"));
        for &frame in &profile.stacks[sample.stack] {
            line.push(';');
            line.push_str(&labels[frame]);
        }
        if let Some(leaf) = leaf(sample) {
            line.push(';');
            line.push_str(&leaf);
        }
        *merged.entry(line).or_default() += weight(sample);
    }
}

/// Writes the folded file.
pub fn write_folded(lines: &[(String, u64)], out: &mut dyn std::io::Write) -> std::io::Result<()> {
    for (stack, weight) in lines {
        writeln!(out, "{stack} {weight}")?;
    }
    Ok(())
}

/// The folded file's text.
pub fn folded_text(lines: &[(String, u64)]) -> String {
    let mut text = String::new();
    for (stack, weight) in lines {
        text.push_str(stack);
        text.push(' ');
        text.push_str(&weight.to_string());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FrameKind, Process, Sample, fixtures::sample_profile};

    #[test]
    fn folds_one_line_per_stack_root_first() {
        let profile = sample_profile();
        let lines = folded_lines(&profile, EventKind::Cpu);
        let text = folded_text(&lines);
        assert_eq!(text, "demo;main;work;cold 3\ndemo;main;work;hot 7\n");
        let mut written = Vec::new();
        write_folded(&lines, &mut written).unwrap();
        assert_eq!(written, text.as_bytes());
    }

    #[test]
    fn prefixes_process_when_several_and_marks_kernel_and_inlined() {
        let mut profile = sample_profile();
        profile.frames[2].kind = FrameKind::Kernel;
        profile.frames[3].kind = FrameKind::Inlined;
        profile.frames[3].function = "a;b".into();
        profile.processes.push(Process {
            pid: 43,
            name: "child".into(),
            command: vec![],
            container: None,
        });
        profile
            .samples
            .get_mut(&EventKind::Cpu)
            .unwrap()
            .push(Sample {
                pid: 43,
                tid: 44,
                thread: "worker".into(),
                stack: 0,
                weight: 1,
                reason: None,
                count: None,
            });
        let lines = folded_lines(&profile, EventKind::Cpu);
        assert_eq!(
            lines,
            vec![
                ("child (43);worker;main;work;hot_[k]".to_owned(), 1),
                ("demo (42);demo;main;work;a:b_[i]".to_owned(), 3),
                ("demo (42);demo;main;work;hot_[k]".to_owned(), 7),
            ]
        );
    }

    #[test]
    fn wall_view_converts_samples_and_marks_off_cpu_time() {
        let mut profile = sample_profile();
        profile.run.frequency_hz = 100; // one sample = 10 000 µs
        let mut blocked = profile.samples[&EventKind::Cpu][0].clone();
        blocked.weight = 5000;
        blocked.reason = Some(crate::model::BlockReason::Pipe);
        profile.samples.insert(EventKind::OffCpu, vec![blocked]);
        let lines = wall_lines(&profile);
        assert_eq!(
            lines,
            vec![
                ("demo;main;work;cold".to_owned(), 30_000),
                ("demo;main;work;hot".to_owned(), 70_000),
                ("demo;main;work;hot;[off-CPU: pipe wait]".to_owned(), 5000),
            ]
        );
    }

    #[test]
    fn merges_threads_with_the_same_name() {
        let mut profile = sample_profile();
        let mut other = profile.samples[&EventKind::Cpu][0].clone();
        other.tid = 99;
        profile
            .samples
            .get_mut(&EventKind::Cpu)
            .unwrap()
            .push(other);
        let lines = folded_lines(&profile, EventKind::Cpu);
        assert_eq!(lines[1], ("demo;main;work;hot".to_owned(), 14));
    }
}
