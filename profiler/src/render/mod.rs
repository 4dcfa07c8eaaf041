//! Rendering a [`Profile`] into the files of an output folder.

pub mod diff;
pub mod export;
pub mod flamegraph;
pub mod folded;
pub mod json;
pub mod markdown;
pub mod otlp;
pub mod report;
pub mod timeline;

use flamegraph::View;

use crate::{
    analysis::Summary,
    model::{EventKind, PROFILE_FILE, Profile},
    output::OutputDir,
};

/// The flamegraph views a profile has: one per collected kind, plus wall-clock time when both
/// on- and off-CPU time were collected.
pub fn views(profile: &Profile) -> Vec<View> {
    let mut views: Vec<View> = Vec::new();
    for &kind in &profile.run.events {
        views.push(View::Kind(kind));
        if kind == EventKind::Alloc {
            views.push(View::Kind(EventKind::InUse));
        }
    }
    if profile.run.events.contains(&EventKind::Cpu)
        && profile.run.events.contains(&EventKind::OffCpu)
    {
        views.push(View::Wall);
    }
    views
}

/// Folded lines of a view.
pub fn view_lines(profile: &Profile, view: View) -> Vec<(String, u64)> {
    match view {
        View::Kind(kind) => folded::folded_lines(profile, kind),
        View::Wall => folded::wall_lines(profile),
    }
}

/// Writes every rendered file and the saved profile into `out` (`summary` is the profile's,
/// computed once by the caller); returns the file names.
pub fn render_all(
    profile: &Profile,
    summary: &Summary,
    out: &OutputDir,
) -> std::io::Result<Vec<String>> {
    // The saved profile first: whatever fails later, `profiler report` can redo the rest.
    out.write_with(PROFILE_FILE, |file| profile.save(file))?;
    let mut written = vec![PROFILE_FILE.to_owned()];
    let mut flamegraphs = Vec::new();
    for view in views(profile) {
        let lines = view_lines(profile, view);
        let name = view.name();
        out.write_with(&format!("{name}.folded"), |file| {
            folded::write_folded(&lines, file)
        })?;
        let title = format!(
            "{}: {} ({:.1} s)",
            view.label(),
            profile.run.command.join(" "),
            profile.run.duration_secs
        );
        let svg = flamegraph::flamegraph_svg(&lines, view, &title)?;
        out.write(&format!("{name}.svg"), &svg)?;
        written.extend([format!("{name}.folded"), format!("{name}.svg")]);
        flamegraphs.push((view, svg));
    }
    let mut timeline = None;
    if let Some(memory) = &profile.memory {
        out.write(
            "memory-timeline.csv",
            timeline::timeline_csv(&memory.timeline).as_bytes(),
        )?;
        let title = format!(
            "Memory: {} ({:.1} s)",
            profile.run.command.join(" "),
            profile.run.duration_secs
        );
        let svg = timeline::timeline_svg(&memory.timeline, &title)?;
        out.write("memory-timeline.svg", svg.as_bytes())?;
        timeline = Some(svg);
        written.extend([
            "memory-timeline.csv".to_owned(),
            "memory-timeline.svg".to_owned(),
        ]);
    }
    out.write("profile.pb.gz", &export::pprof_gz(profile)?)?;
    out.write_with("speedscope.json", |file| {
        export::write_speedscope(profile, file)
    })?;
    written.extend(["profile.pb.gz".to_owned(), "speedscope.json".to_owned()]);
    out.write("summary.json", json::summary_json(summary).as_bytes())?;
    out.write("summary.md", markdown::summary_markdown(summary).as_bytes())?;
    written.extend(["summary.json".to_owned(), "summary.md".to_owned()]);
    let html = report::report_html(summary, &flamegraphs, timeline.as_deref());
    out.write("report.html", html.as_bytes())?;
    written.push("report.html".to_owned());
    out.remove_other_outputs(&written, is_output_name)?;
    Ok(written)
}

/// Whether `render_all` writes a file of this name for some profile: a reused folder loses
/// those this run did not write, so it never shows one run's summary beside another's graphs.
pub fn is_output_name(name: &str) -> bool {
    const FIXED: [&str; 8] = [
        PROFILE_FILE,
        "memory-timeline.csv",
        "memory-timeline.svg",
        "profile.pb.gz",
        "speedscope.json",
        "summary.json",
        "summary.md",
        "report.html",
    ];
    let view = name
        .strip_suffix(".folded")
        .or_else(|| name.strip_suffix(".svg"));
    FIXED.contains(&name)
        || view.is_some_and(|view| {
            view == View::Wall.name()
                || EventKind::ALL
                    .iter()
                    .chain(&[EventKind::InUse])
                    .any(|kind| kind.name() == view)
        })
}
