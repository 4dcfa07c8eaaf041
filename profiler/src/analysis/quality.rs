//! The profile's own quality: events lost, stacks cut short or incomplete, frames without a
//! symbol.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::{EventKind, FrameKind, JIT_MODULE, Missing, Profile, StackSamplingRun};

/// How trustworthy the profile is.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Quality {
    /// Events lost (maps or buffers full), over every kind.
    pub lost_events: u64,
    /// Stacks lost to collisions or errors, or cut short by the unwinder.
    pub stacks_cut_short: u64,
    /// Events (samples, periods, calls) whose user or kernel stack was lost, over every kind:
    /// the weight of the `[… stack lost …]` frames in the folded files, by events.
    pub stacks_lost: u64,
    /// The same by cause (the lost frame's name).
    pub stacks_lost_by_cause: BTreeMap<String, u64>,
    /// Share of sampled frames without a symbol, percent.
    pub unsymbolized_frames_percent: f64,
    /// Share of events (samples, calls) whose user stack reaches the program's entry or a
    /// thread's start, percent: the lowest of the event kinds' shares, by events and, for
    /// off-CPU and I/O, by time (a million allocation calls must not hide a tenth of CPU
    /// samples cut short; a thousand whole short waits must not hide one cut wait of seconds).
    pub complete_stacks_percent: f64,
    /// The share by events, per event kind.
    pub complete_stacks_percent_by_kind: BTreeMap<String, f64>,
    /// The share of time, for the kinds weighted by time (`offcpu`, `io`).
    pub complete_stacks_percent_by_time: BTreeMap<String, f64>,
    /// Events whose user stack was cut where it entered JIT code: a runtime that keeps no
    /// frame pointers in its compiled code (a JVM without `-XX:+PreserveFramePointer`).
    pub stacks_cut_in_jit_code: u64,
    /// How off-CPU periods and I/O calls had their stacks sampled, when some were not walked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack_sampling: Option<StackSamplingRun>,
    /// The same in one sentence.
    pub text: String,
}

/// The stack sampling of off-CPU periods and I/O calls, in words.
fn stack_sampling_text(sampling: &StackSamplingRun) -> String {
    let kinds: Vec<String> = [
        ("off-CPU", "periods", sampling.offcpu),
        ("I/O", "calls", sampling.io),
    ]
    .into_iter()
    .filter_map(|(kind, unit, events)| {
        let events = events?;
        (events.walked < events.events).then(|| {
            // Profiles saved before thresholds were per kind have none of their own.
            let below = match events.max_below_us {
                0 => sampling.max_below_us,
                below => below,
            };
            format!(
                "{kind} stacks walked for 1 in {} {unit} ({} of {}; threshold at most {below} µs)",
                events.one_in(),
                events.walked,
                events.events
            )
        })
    })
    .collect();
    if kinds.is_empty() {
        return String::new();
    }
    let why = match (
        sampling.max_overhead_percent,
        sampling.measured_overhead_percent,
    ) {
        // Over budget with the stacks sampled: what is left is what is never sampled.
        (Some(budget), Some(measured)) if measured > budget => format!(
            "to stay under {budget}% overhead, not met: measured {measured:.1}% with every \
             event still counted and timed; fewer kinds with -e cost less"
        ),
        (Some(budget), Some(measured)) => {
            format!("to stay under {budget}% overhead; measured {measured:.1}%")
        }
        (Some(budget), None) => format!("to stay under {budget}% overhead"),
        (None, _) => "--sample-stacks-below".to_owned(),
    };
    format!(
        "; {}: a duration-weighted sample ({why}), times exact",
        kinds.join(", ")
    )
}

/// The objects walked by frame pointers because of a limit of the profiler's, in words.
fn objects_past_a_limit(profile: &Profile) -> String {
    let Some(unwind) = &profile.run.unwind else {
        return String::new();
    };
    let names: Vec<&str> = unwind
        .without_tables
        .iter()
        .filter(|object| object.reason.is_a_limit())
        .map(|object| {
            let path = object.path.as_str();
            path.rsplit('/').next().unwrap_or(path)
        })
        .collect();
    if names.is_empty() {
        return String::new();
    }
    format!(
        "; {} objects walked by frame pointers for lack of unwind-table room ({}; see \
         --unwind-rows)",
        names.len(),
        names.join(", ")
    )
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
    let mut cut_in_jit = 0;
    // A cut stack whose outermost frame is JIT code: the walk stopped in that code.
    let cut_in_jit_code = |stack: usize| match profile.stacks[stack].as_slice() {
        [first, second, ..] => {
            profile.frames[*first].kind == FrameKind::Missing(Missing::Truncated)
                && (profile.frames[*second].kind == FrameKind::Jit
                    || profile.frames[*second].module.as_deref() == Some(JIT_MODULE))
        }
        _ => false,
    };
    // Per kind: (events with a user stack, of which complete), and the same in time.
    let mut by_kind: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut by_time: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut frames_seen = 0u64;
    let mut unsymbolized = 0u64;
    let mut stacks_lost_by_cause: BTreeMap<String, u64> = BTreeMap::new();
    for (kind, samples) in &profile.samples {
        // Live memory at the end is a view of the allocation events, not events of its own.
        let mut ignored = (0, 0);
        let (user_stacks, complete) = if *kind == EventKind::InUse {
            &mut ignored
        } else {
            by_kind.entry(kind.name().to_owned()).or_default()
        };
        let mut untimed = (0, 0);
        let (user_time, complete_time) = if matches!(kind, EventKind::OffCpu | EventKind::Io) {
            by_time.entry(kind.name().to_owned()).or_default()
        } else {
            &mut untimed
        };
        for sample in samples {
            if truncated(sample.stack) {
                cut_short += 1;
                if cut_in_jit_code(sample.stack) {
                    cut_in_jit += sample.count.unwrap_or(sample.weight);
                }
            }
            if *kind != EventKind::InUse {
                for &frame in &profile.stacks[sample.stack] {
                    let frame = &profile.frames[frame];
                    if let FrameKind::Missing(Missing::UserStack(_) | Missing::KernelStack(_)) =
                        frame.kind
                    {
                        let cause = frame.function.trim_matches(['[', ']']).to_owned();
                        *stacks_lost_by_cause.entry(cause).or_default() +=
                            sample.count.unwrap_or(sample.weight);
                    }
                }
            }
            let stack = &profile.stacks[sample.stack];
            if let Some(&root) = stack.first()
                && !profile.frames[root].kind.is_kernel()
            {
                // Weighted by events (samples, calls), so a rare odd stack weighs little.
                let events = sample.count.unwrap_or(sample.weight);
                *user_stacks += events;
                *user_time += sample.weight;
                if profile.is_entry_frame(&profile.frames[root]) {
                    *complete += events;
                    *complete_time += sample.weight;
                }
            }
            // By events, as the CPU line counts them: one number wherever it is stated.
            let events = sample.count.unwrap_or(sample.weight);
            for &frame in &profile.stacks[sample.stack] {
                frames_seen += events;
                if profile.frames[frame].kind.is_unsymbolized() {
                    unsymbolized += events;
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
    let shares = |totals: BTreeMap<String, (u64, u64)>| -> BTreeMap<String, f64> {
        totals
            .into_iter()
            .filter(|(_, (all, _))| *all > 0)
            .map(|(kind, (all, complete))| {
                let percent = (1000.0 * complete as f64 / all as f64).round() / 10.0;
                (kind, percent)
            })
            .collect()
    };
    let complete_stacks_percent_by_kind = shares(by_kind);
    let complete_stacks_percent_by_time = shares(by_time);
    let complete_stacks_percent = complete_stacks_percent_by_kind
        .values()
        .chain(complete_stacks_percent_by_time.values())
        .copied()
        .reduce(f64::min)
        .unwrap_or(0.0);
    // Each kind's share, and its share of time where that is worse by a point or more.
    let parts: Vec<String> = complete_stacks_percent_by_kind
        .iter()
        .map(
            |(kind, percent)| match complete_stacks_percent_by_time.get(kind) {
                Some(time) if *time < percent - 1.0 => {
                    format!("{kind} {percent:.1}% / {time:.1}% of time")
                }
                _ => format!("{kind} {percent:.1}%"),
            },
        )
        .collect();
    let per_kind = if parts.len() > 1 || parts.iter().any(|part| part.contains(" of time")) {
        format!(" ({})", parts.join(", "))
    } else {
        String::new()
    };
    let stacks_lost: u64 = stacks_lost_by_cause.values().sum();
    let lost_stacks = if stacks_lost == 0 {
        String::new()
    } else {
        let causes: Vec<String> = stacks_lost_by_cause
            .iter()
            .map(|(cause, count)| format!("{count} {cause}"))
            .collect();
        format!(", {stacks_lost} stacks lost ({})", causes.join(", "))
    };
    let stack_sampling = profile.run.stack_sampling.clone().map(|mut sampling| {
        // Per thread, it is in the off-CPU section.
        sampling.offcpu_us_by_thread.clear();
        sampling
    });
    let limited = objects_past_a_limit(profile);
    let sampled = stack_sampling
        .as_ref()
        .map_or(String::new(), stack_sampling_text);
    let jit = match cut_in_jit {
        0 => String::new(),
        events => format!(
            "; {events} events with stacks cut in JIT code without frame pointers (start a \
             JVM with -XX:+PreserveFramePointer; see docs/runtimes.md)"
        ),
    };
    Quality {
        lost_events,
        stacks_cut_in_jit_code: cut_in_jit,
        stacks_cut_short: cut_short,
        stacks_lost,
        stacks_lost_by_cause,
        unsymbolized_frames_percent,
        complete_stacks_percent,
        complete_stacks_percent_by_kind,
        complete_stacks_percent_by_time,
        stack_sampling,
        text: format!(
            "Profile quality: {lost_events} events lost{lost_stacks}; \
             {complete_stacks_percent:.1}% of events \
             (or of time, where worse) with complete user stacks (from the entry point or \
             thread start){per_kind}; \
             {cut_short} of \
             {distinct} \
             distinct stacks cut short or lost; {unsymbolized_frames_percent:.1}% of frames \
             unsymbolized{sampled}{limited}{jit}"
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
        // The stand-in for a cut stack's outer frames counts as a cut stack, not as an
        // unsymbolized frame.
        assert_eq!(quality.unsymbolized_frames_percent, 0.0);
        let samples = &profile.samples[&EventKind::Cpu];
        let expected =
            100.0 * samples[1].weight as f64 / (samples[0].weight + samples[1].weight) as f64;
        assert!((quality.complete_stacks_percent - expected).abs() < 0.1);
        assert!(
            quality.text.starts_with(&format!(
                "Profile quality: 5 events lost; {expected:.1}% of events (or of time, where \
                 worse) with complete user stacks (from the entry point or thread start); 1 of 2"
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
    fn off_cpu_quality_weighs_time_too() {
        // A thousand whole waits of 1 ms, and one cut wait of 3 s.
        let mut profile = sample_profile();
        let whole = profile.samples[&EventKind::Cpu][0].stack;
        let root = profile.stacks[whole][0];
        profile.frames[root].function = "_start".into();
        profile.frames.push(Frame::truncated(": unreadable frame"));
        let cut = profile.frames.len() - 1;
        profile.stacks.push(vec![cut, profile.stacks[whole][2]]);
        let cut_stack = profile.stacks.len() - 1;
        let mut short = profile.samples[&EventKind::Cpu][0].clone();
        short.weight = 1_000_000;
        short.count = Some(1000);
        let mut long = short.clone();
        long.stack = cut_stack;
        long.weight = 3_000_000;
        long.count = Some(1);
        profile.samples.clear();
        profile.samples.insert(EventKind::OffCpu, vec![short, long]);
        let quality = quality(&profile);
        assert_eq!(quality.complete_stacks_percent_by_kind["offcpu"], 99.9);
        assert_eq!(quality.complete_stacks_percent_by_time["offcpu"], 25.0);
        assert_eq!(quality.complete_stacks_percent, 25.0);
        assert!(
            quality.text.contains("(offcpu 99.9% / 25.0% of time)"),
            "{}",
            quality.text
        );
    }

    #[test]
    fn sampled_stacks_are_stated() {
        let mut profile = sample_profile();
        // Every stack walked: nothing to state.
        assert_eq!(quality(&profile).stack_sampling, None);
        let mut sampling = crate::model::StackSamplingRun {
            max_overhead_percent: Some(3.0),
            measured_overhead_percent: Some(2.44),
            max_below_us: 2000,
            last_below_us: 1000,
            adjustments: 3,
            offcpu: Some(crate::model::SampledEvents {
                events: 1200,
                walked: 100,
                total_us: 5_000_000,
                max_below_us: 1500,
            }),
            io: Some(crate::model::SampledEvents {
                events: 10,
                walked: 10,
                total_us: 50,
                max_below_us: 0,
            }),
            offcpu_us_by_thread: Default::default(),
        };
        profile.run.stack_sampling = Some(sampling.clone());
        let text = quality(&profile).text;
        assert!(
            text.ends_with(
                "; off-CPU stacks walked for 1 in 12 periods (100 of 1200; threshold at most 1500 \
                 µs): a duration-weighted sample (to stay under 3% overhead; measured 2.4%), \
                 times exact"
            ),
            "{text}"
        );
        sampling.measured_overhead_percent = Some(7.44);
        profile.run.stack_sampling = Some(sampling.clone());
        assert!(
            quality(&profile).text.contains(
                "(to stay under 3% overhead, not met: measured 7.4% with every event still \
                 counted and timed; fewer kinds with -e cost less)"
            ),
            "{}",
            quality(&profile).text
        );
        sampling.max_overhead_percent = None;
        sampling.offcpu = None;
        // A profile saved before thresholds were per kind: the run's highest.
        sampling.io = Some(crate::model::SampledEvents {
            events: 1000,
            walked: 4,
            total_us: 50,
            max_below_us: 0,
        });
        profile.run.stack_sampling = Some(sampling);
        let text = quality(&profile).text;
        assert!(
            text.ends_with(
                "; I/O stacks walked for 1 in 250 calls (4 of 1000; threshold at most 2000 µs): \
                 a duration-weighted sample (--sample-stacks-below), times exact"
            ),
            "{text}"
        );
    }
}
