//! The profile's own quality: events lost, stacks cut short or incomplete, frames without a
//! symbol.

use serde::Serialize;

use crate::model::{EventKind, FrameKind, Profile, is_entry_function};

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
        profile.stacks[stack]
            .iter()
            .any(|&frame| matches!(profile.frames[frame].kind, FrameKind::Missing(_)))
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
                && !profile.frames[root].kind.is_kernel()
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
                frames_seen += 1;
                unsymbolized += u64::from(frame.kind.is_unnamed());
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
    use crate::model::{Frame, fixtures::sample_profile};

    #[test]
    fn quality_counts_cut_stacks_and_losses() {
        let mut profile = sample_profile();
        profile.losses.sample_map_full = 3;
        profile.losses.io_map_full = 2;
        profile.frames.push(Frame::truncated(""));
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
}
