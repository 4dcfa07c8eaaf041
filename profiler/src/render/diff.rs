//! `profiler diff`: differential flamegraphs of two profiles and what grew or shrank, with a
//! regression gate for CI.

use std::{collections::BTreeMap, fmt::Write as _};

use inferno::{
    differential,
    flamegraph::{self, Options},
};
use serde::Serialize;

use super::{flamegraph::View, folded, views};
use crate::{
    model::{EventKind, Frame, Profile},
    output::OutputDir,
};

/// One function's share before and after.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShareChange {
    /// The function the weight is attributed to (see [`attributed_function`]).
    pub function: String,
    /// Its share of the kind's total before, percent.
    pub before_percent: f64,
    /// After, percent.
    pub after_percent: f64,
    /// `after - before`, percentage points.
    pub delta_points: f64,
}

/// The comparison of one event kind.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KindDiff {
    /// The view (`cpu`, `offcpu`, `io`, `alloc`, `inuse`).
    pub kind: &'static str,
    /// Its unit.
    pub unit: &'static str,
    /// Total weight before.
    pub before_total: u64,
    /// Total weight after.
    pub after_total: u64,
    /// Functions whose share grew, most first.
    pub grew: Vec<ShareChange>,
    /// Functions whose share shrank, most first.
    pub shrank: Vec<ShareChange>,
}

/// `diff-summary.json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DiffSummary {
    /// Command of the first profile.
    pub before: Vec<String>,
    /// Command of the second.
    pub after: Vec<String>,
    /// One entry per event kind both profiles have.
    pub kinds: Vec<KindDiff>,
    /// `--fail-above`, if given.
    pub fail_above_points: Option<f64>,
    /// Functions whose share grew by more than that.
    pub regressions: Vec<String>,
}

/// How many functions each list holds.
const TOP: usize = 15;

/// The function a stack's weight belongs to (as its folded label): the leaf for CPU; for
/// kinds whose leaf is a system call or an allocator function, the code that called it; for
/// off-CPU time, the innermost frame outside the kernel (the kernel frames below it are the
/// scheduler's).
pub fn attributed_function(kind: EventKind, frames: &[&Frame]) -> String {
    let found = match kind {
        EventKind::Cpu => frames.last(),
        EventKind::Io | EventKind::Alloc | EventKind::InUse => {
            frames.len().checked_sub(2).and_then(|i| frames.get(i))
        }
        EventKind::OffCpu => frames.iter().rev().find(|frame| !frame.kind.is_kernel()),
    };
    found.map_or_else(|| "[unknown]".to_owned(), |frame| frame.label())
}

/// Total weight of one kind, and each attributed function's share of it, percent.
fn shares(kind: EventKind, profile: &Profile) -> (u64, BTreeMap<String, f64>) {
    let samples = profile.samples.get(&kind).map_or(&[][..], Vec::as_slice);
    let total: u64 = samples.iter().map(|sample| sample.weight).sum();
    let mut shares: BTreeMap<String, f64> = BTreeMap::new();
    for sample in samples {
        let frames: Vec<&Frame> = profile.stacks[sample.stack]
            .iter()
            .map(|&frame| &profile.frames[frame])
            .collect();
        *shares
            .entry(attributed_function(kind, &frames))
            .or_default() += 100.0 * sample.weight as f64 / total.max(1) as f64;
    }
    (total, shares)
}

/// Compares the share of each function in one kind.
pub fn compare_kind(kind: EventKind, before: &Profile, after: &Profile) -> KindDiff {
    let (before_total, before_shares) = shares(kind, before);
    let (after_total, after_shares) = shares(kind, after);
    let mut changes: Vec<ShareChange> = before_shares
        .keys()
        .chain(after_shares.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|function| {
            let before = before_shares.get(function).copied().unwrap_or(0.0);
            let after = after_shares.get(function).copied().unwrap_or(0.0);
            let round = |v: f64| (v * 100.0).round() / 100.0;
            ShareChange {
                function: function.clone(),
                before_percent: round(before),
                after_percent: round(after),
                delta_points: round(after - before),
            }
        })
        .collect();
    changes.sort_by(|a, b| b.delta_points.total_cmp(&a.delta_points));
    let grew = changes
        .iter()
        .filter(|c| c.delta_points > 0.0)
        .take(TOP)
        .cloned()
        .collect();
    let shrank = changes
        .iter()
        .rev()
        .filter(|c| c.delta_points < 0.0)
        .take(TOP)
        .cloned()
        .collect();
    KindDiff {
        kind: kind.name(),
        unit: kind.unit(),
        before_total,
        after_total,
        grew,
        shrank,
    }
}

/// The differential flamegraph of two folded profiles: the first scaled to the second's total
/// (runs differ in length), frames coloured red where the second grew and blue where it shrank.
pub fn diff_svg(
    before: &[(String, u64)],
    after: &[(String, u64)],
    title: &str,
    unit: &str,
) -> std::io::Result<(String, Vec<u8>)> {
    let text = |lines: &[(String, u64)]| folded::folded_text(lines);
    let mut differential = Vec::new();
    differential::from_readers(
        differential::Options {
            normalize: true,
            strip_hex: false,
        },
        text(before).as_bytes(),
        text(after).as_bytes(),
        &mut differential,
    )?;
    let differential = String::from_utf8(differential).map_err(std::io::Error::other)?;
    // inferno writes the stacks in hash order: sorted, the same profiles give the same file.
    let mut lines: Vec<&str> = differential.lines().collect();
    lines.sort_unstable();
    let differential: String = lines.iter().flat_map(|line| [*line, "\n"]).collect();
    let mut svg = Vec::new();
    if differential.trim().is_empty() {
        return Ok((
            differential,
            super::flamegraph::empty_svg(title).into_bytes(),
        ));
    }
    let mut options = Options::default();
    options.title = title.to_owned();
    options.count_name = unit.to_owned();
    flamegraph::from_lines(&mut options, differential.lines(), &mut svg)
        .map_err(std::io::Error::other)?;
    Ok((differential, svg))
}

/// Writes the differential files of every kind both profiles have into `out`; returns the
/// summary and the names of the files written.
pub fn write_diff(
    before: &Profile,
    after: &Profile,
    fail_above_points: Option<f64>,
    out: &OutputDir,
) -> std::io::Result<(DiffSummary, Vec<String>)> {
    let before_views = views(before);
    let mut kinds = Vec::new();
    let mut written = Vec::new();
    for view in views(after) {
        let View::Kind(kind) = view else {
            continue;
        };
        if !before_views.contains(&view) {
            continue;
        }
        let before_lines = super::view_lines(before, view);
        let after_lines = super::view_lines(after, view);
        let title = format!(
            "{}: {} → {}",
            view.label(),
            before.run.command.join(" "),
            after.run.command.join(" ")
        );
        let (folded, svg) = diff_svg(&before_lines, &after_lines, &title, view.unit())?;
        let name = format!("diff-{}", kind.name());
        out.write(&format!("{name}.folded"), folded.as_bytes())?;
        out.write(&format!("{name}.svg"), &svg)?;
        written.extend([format!("{name}.folded"), format!("{name}.svg")]);
        kinds.push(compare_kind(kind, before, after));
    }
    let regressions = fail_above_points
        .map(|limit| {
            kinds
                .iter()
                .flat_map(|kind| {
                    kind.grew
                        .iter()
                        .filter(move |change| change.delta_points > limit)
                        .map(move |change| {
                            format!(
                                "`{}` grew from {:.1}% to {:.1}% of {} (+{:.1} points)",
                                change.function,
                                change.before_percent,
                                change.after_percent,
                                kind.kind,
                                change.delta_points
                            )
                        })
                })
                .collect()
        })
        .unwrap_or_default();
    let summary = DiffSummary {
        before: before.run.command.clone(),
        after: after.run.command.clone(),
        kinds,
        fail_above_points,
        regressions,
    };
    let mut json = serde_json::to_string_pretty(&summary).map_err(std::io::Error::other)?;
    json.push('\n');
    out.write("diff-summary.json", json.as_bytes())?;
    out.write("diff-summary.md", diff_markdown(&summary).as_bytes())?;
    written.extend(["diff-summary.json".to_owned(), "diff-summary.md".to_owned()]);
    Ok((summary, written))
}

fn diff_markdown(summary: &DiffSummary) -> String {
    let mut md = format!(
        "# Profile diff\n\n- Before: `{}`\n- After: `{}`\n",
        summary.before.join(" "),
        summary.after.join(" ")
    );
    if let Some(limit) = summary.fail_above_points {
        if summary.regressions.is_empty() {
            let _ = writeln!(
                md,
                "- Gate: no function grew more than {limit} points: pass"
            );
        } else {
            let _ = writeln!(md, "- Gate: more than {limit} points: **fail**");
            for regression in &summary.regressions {
                let _ = writeln!(md, "  - {regression}");
            }
        }
    }
    for kind in &summary.kinds {
        let _ = writeln!(
            md,
            "\n## {} ({}: {} before, {} after)\n",
            kind.kind, kind.unit, kind.before_total, kind.after_total
        );
        for (title, list) in [("Grew", &kind.grew), ("Shrank", &kind.shrank)] {
            let _ = writeln!(md, "### {title}\n");
            if list.is_empty() {
                md.push_str("Nothing.\n\n");
                continue;
            }
            md.push_str("| function | before | after | change |\n|---|---:|---:|---:|\n");
            for change in list {
                let _ = writeln!(
                    md,
                    "| `{}` | {:.1}% | {:.1}% | {:+.1} points |",
                    change.function.replace('|', "\\|"),
                    change.before_percent,
                    change.after_percent,
                    change.delta_points
                );
            }
            md.push('\n');
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        FrameKind, Interner, Sample,
        fixtures::{run_info, user_frame},
    };

    fn lines(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
        pairs.iter().map(|(s, w)| ((*s).to_owned(), *w)).collect()
    }

    fn kernel(name: &str) -> Frame {
        Frame {
            kind: FrameKind::Kernel,
            ..user_frame(name)
        }
    }

    /// A CPU profile of one thread with these user stacks and weights.
    fn cpu_profile(stacks: &[(&[&str], u64)]) -> Profile {
        let mut profile = Profile::new(run_info());
        let mut interner = Interner::default();
        let samples = stacks
            .iter()
            .map(|&(names, weight)| {
                let frames = names
                    .iter()
                    .map(|name| interner.frame(&mut profile, user_frame(name)))
                    .collect();
                Sample {
                    pid: 42,
                    tid: 42,
                    thread: "t".into(),
                    stack: interner.stack(&mut profile, frames),
                    weight,
                    reason: None,
                    count: None,
                }
            })
            .collect();
        profile.samples.insert(EventKind::Cpu, samples);
        profile
    }

    #[test]
    fn attributes_weight_to_the_code_that_matters() {
        let [main, hot, flush, cache_insert, malloc, nap] =
            ["main", "hot", "flush", "cache_insert", "malloc", "nap"].map(user_frame);
        let [fsync, do_nanosleep, schedule] = ["fsync", "do_nanosleep", "__schedule"].map(kernel);
        assert_eq!(attributed_function(EventKind::Cpu, &[&main, &hot]), "hot");
        assert_eq!(
            attributed_function(EventKind::Io, &[&main, &flush, &fsync]),
            "flush"
        );
        assert_eq!(
            attributed_function(EventKind::Alloc, &[&main, &cache_insert, &malloc]),
            "cache_insert"
        );
        assert_eq!(
            attributed_function(EventKind::OffCpu, &[&main, &nap, &do_nanosleep, &schedule]),
            "nap"
        );
    }

    #[test]
    fn share_changes_are_in_points_and_sorted() {
        let parse: &[&str] = &["main", "parse"];
        let write: &[&str] = &["main", "write"];
        let diff = compare_kind(
            EventKind::Cpu,
            &cpu_profile(&[(parse, 50), (write, 50)]),
            &cpu_profile(&[(parse, 80), (write, 20)]),
        );
        let before = lines(&[("t;main;parse", 50), ("t;main;write", 50)]);
        let after = lines(&[("t;main;parse", 80), ("t;main;write", 20)]);
        assert_eq!(diff.grew[0].function, "parse");
        assert_eq!(diff.grew[0].delta_points, 30.0);
        assert_eq!(diff.shrank[0].function, "write");
        assert_eq!(diff.shrank[0].delta_points, -30.0);
        let (folded, svg) = diff_svg(&before, &after, "CPU", "samples").unwrap();
        assert!(folded.contains("t;main;parse 50 80"), "{folded}");
        assert!(String::from_utf8(svg).unwrap().contains("<svg"));
    }
}
