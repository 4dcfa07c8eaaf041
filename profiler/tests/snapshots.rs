//! Snapshots of the rendered text outputs of one saved profile (`tests/data/etl-profile.json`:
//! two processes, every event kind, inlined, unsymbolized, truncated and lost frames), and of a
//! diff against a changed copy. Reviewed once; a change to any output shows in review as a
//! changed `.snap` file (`cargo insta review`, or `INSTA_UPDATE=always` and read the diff).

use std::io::Write;

use flate2::{Compression, write::GzEncoder};
use profiler::{analysis, model::Profile, output::OutputDir, render};

fn fixture() -> Profile {
    let json = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/etl-profile.json"
    ))
    .expect("fixture");
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(&json).unwrap();
    Profile::read(gz.finish().unwrap().as_slice(), "etl-profile.json").expect("valid fixture")
}

fn read(out: &OutputDir, name: &str) -> String {
    std::fs::read_to_string(out.path().join(name)).unwrap_or_else(|err| panic!("{name}: {err}"))
}

#[test]
fn rendered_outputs_match_their_snapshots() {
    let profile = fixture();
    let dir = tempfile::tempdir().unwrap();
    let out = OutputDir::prepare(&dir.path().join("out")).unwrap();
    let summary = analysis::summarize(&profile);
    let written = render::render_all(&profile, &summary, &out).unwrap();
    insta::assert_snapshot!("files", written.join("\n"));
    for name in &written {
        let text_output = [".md", ".json", ".folded", ".csv"]
            .iter()
            .any(|suffix| name.ends_with(suffix));
        if text_output {
            insta::assert_snapshot!(name.clone(), read(&out, name));
        }
    }
}

#[test]
fn diff_outputs_match_their_snapshots() {
    let before = fixture();
    let mut after = fixture();
    // The change under review: `parse_row` got twice as slow, `compress` half as slow.
    for sample in after.samples.values_mut().flatten() {
        match sample.stack {
            0 | 1 => sample.weight *= 2,
            2 | 4 => sample.weight /= 2,
            _ => {}
        }
    }
    after.run.command = vec![
        "etl".into(),
        "--rows".into(),
        "1000".into(),
        "--fast".into(),
    ];
    let dir = tempfile::tempdir().unwrap();
    let out = OutputDir::prepare(&dir.path().join("diff")).unwrap();
    let (_, written) = render::diff::write_diff(&before, &after, Some(5.0), &out).unwrap();
    insta::assert_snapshot!("diff-files", written.join("\n"));
    for name in written.iter().filter(|name| !name.ends_with(".svg")) {
        insta::assert_snapshot!(name.clone(), read(&out, name));
    }
}

#[test]
fn saved_profiles_keep_their_format() {
    // What `report` reads back from older runs: saving the fixture must give its JSON again.
    let mut saved = Vec::new();
    fixture().save(&mut saved).unwrap();
    let json: serde_json::Value =
        serde_json::from_reader(flate2::read::GzDecoder::new(saved.as_slice())).unwrap();
    let original: serde_json::Value = serde_json::from_slice(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/etl-profile.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(json, original);
}

#[test]
fn rendering_twice_gives_the_same_bytes() {
    // `profiler report` on the same saved profile must give byte-identical files: ties in
    // every table are broken by name, never by hash order.
    let profile = fixture();
    let dir = tempfile::tempdir().unwrap();
    let render = |name: &str| {
        let out = OutputDir::prepare(&dir.path().join(name)).unwrap();
        let summary = analysis::summarize(&profile);
        let written = render::render_all(&profile, &summary, &out).unwrap();
        (out, written)
    };
    let (first, written) = render("first");
    let (second, _) = render("second");
    for name in &written {
        let a = std::fs::read(first.path().join(name)).unwrap();
        let b = std::fs::read(second.path().join(name)).unwrap();
        assert!(a == b, "{name} differs between two renderings");
    }
}
