//! Rendering a [`Profile`] into the files of an output folder.

pub mod flamegraph;
pub mod folded;
pub mod summary;

use crate::{
    output::OutputDir,
    profile::{EventKind, PROFILE_FILE, Profile},
};

/// Writes every rendered file and the saved profile into `out`; returns the file names.
pub fn render_all(profile: &Profile, out: &OutputDir) -> std::io::Result<Vec<String>> {
    let mut written = Vec::new();
    for &kind in &profile.run.events {
        let lines = folded::folded_lines(profile, kind);
        let name = kind.name();
        out.write(
            &format!("{name}.folded"),
            folded::folded_text(&lines).as_bytes(),
        )?;
        let title = flamegraph_title(profile, kind);
        let svg = flamegraph::flamegraph_svg(&lines, kind, &title)?;
        out.write(&format!("{name}.svg"), &svg)?;
        written.extend([format!("{name}.folded"), format!("{name}.svg")]);
    }
    let summary = summary::summarize(profile);
    out.write("summary.json", summary::summary_json(&summary).as_bytes())?;
    out.write("summary.md", summary::summary_markdown(&summary).as_bytes())?;
    written.extend(["summary.json".to_owned(), "summary.md".to_owned()]);
    let mut saved = Vec::new();
    profile.save(&mut saved)?;
    out.write(PROFILE_FILE, &saved)?;
    written.push(PROFILE_FILE.to_owned());
    Ok(written)
}

fn flamegraph_title(profile: &Profile, kind: EventKind) -> String {
    let what = match kind {
        EventKind::Cpu => "CPU",
    };
    format!(
        "{what}: {} ({:.1} s, {} Hz)",
        profile.run.command.join(" "),
        profile.run.duration_secs,
        profile.run.frequency_hz
    )
}
