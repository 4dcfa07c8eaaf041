//! The report files of a run, read back by independent tools: pprof by the `pprof-format`
//! decoder, speedscope as JSON, `report.html` in headless Chromium; and `profiler diff`.

use std::path::Path;

use profiler_tests::{
    assert_nothing_loaded, have_js_tools, have_root, node_json, output, profiler, read_folded,
    read_summary, record, serial,
};

fn folded_total(dir: &Path, view: &str) -> u64 {
    read_folded(&dir.join(format!("{view}.folded")))
        .iter()
        .map(|(_, weight)| weight)
        .sum()
}

#[test]
fn every_event_kind_reaches_pprof_speedscope_and_the_html_report() {
    let _serial = serial();
    if !have_root("every_event_kind_reaches_pprof_speedscope_and_the_html_report")
        || !have_js_tools("every_event_kind_reaches_pprof_speedscope_and_the_html_report")
    {
        return;
    }
    // Every stack walked: the exports' off-CPU total is then the summary's to the µs. Under
    // stack sampling the exports carry the weighted sample and the summary the exact time
    // (the allocator's memory calls alone can take this run past the default budget).
    let (dir, out) = record(
        &[
            "--events",
            "cpu,offcpu,alloc",
            "-F",
            "499",
            "--max-overhead",
            "100",
        ],
        "alloc_patterns",
        &["1"],
    );
    assert!(out.status.success());
    let dir = dir.path();
    let summary = read_summary(dir);
    let verdict = summary["verdict"].as_array().unwrap();
    assert!(!verdict.is_empty(), "a verdict: {summary:#}");
    assert!(
        summary["quality"]["text"]
            .as_str()
            .unwrap()
            .starts_with("Profile quality:")
    );
    let markdown = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(
        markdown.contains("## Verdict\n\n1. "),
        "the summary opens with it"
    );

    // pprof, decoded by an independent implementation.
    let pprof = node_json("read-pprof.mjs", &[&dir.join("profile.pb.gz")]);
    let total = |name: &str| -> u64 {
        pprof["types"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == name)
            .unwrap_or_else(|| panic!("sample type {name} in {pprof}"))["total"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(
        total("samples"),
        summary["cpu"]["samples"].as_u64().unwrap()
    );
    assert_eq!(
        total("off-cpu"),
        1000 * summary["offcpu"]["total_us"].as_u64().unwrap()
    );
    assert_eq!(
        total("alloc_space"),
        summary["memory"]["allocated_bytes"].as_u64().unwrap()
    );
    assert_eq!(
        total("inuse_space"),
        summary["memory"]["live_bytes"].as_u64().unwrap()
    );
    assert_eq!(total("inuse_space"), folded_total(dir, "inuse"));
    let alloc = pprof["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "alloc_space")
        .unwrap();
    assert_eq!(alloc["unit"], "bytes");
    assert_eq!(alloc["heaviest_leaf"], "malloc", "the 64 MiB block");

    // speedscope: one profile per view, weights as in the folded files.
    let speedscope: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("speedscope.json")).unwrap())
            .unwrap();
    assert_eq!(
        speedscope["$schema"],
        "https://www.speedscope.app/file-format-schema.json"
    );
    let profiles = speedscope["profiles"].as_array().unwrap();
    let names: Vec<&str> = profiles
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "cpu (samples)",
            "offcpu (microseconds)",
            "alloc (bytes)",
            "inuse (bytes)"
        ]
    );
    for (profile, view) in profiles.iter().zip(["cpu", "offcpu", "alloc", "inuse"]) {
        assert_eq!(
            profile["endValue"].as_u64().unwrap(),
            folded_total(dir, view),
            "{view}"
        );
    }

    // The page, in a real browser: no request leaves the file, no error, every flamegraph
    // with frames zooms on a click.
    let page = node_json("check-report.mjs", &[&dir.join("report.html")]);
    assert_eq!(page["requests"].as_array().unwrap().len(), 1, "{page}");
    assert!(page["requests"][0].as_str().unwrap().starts_with("file://"));
    assert_eq!(page["errors"].as_array().unwrap().len(), 0, "{page}");
    assert!(!page["verdict"].as_array().unwrap().is_empty());
    let sections: Vec<&str> = page["sections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for section in ["verdict", "flamegraphs", "memory", "scheduler"] {
        assert!(sections.contains(&section), "{section} in {sections:?}");
    }
    let flamegraphs = page["flamegraphs"].as_array().unwrap();
    assert_eq!(
        flamegraphs.len(),
        5,
        "cpu, offcpu, alloc, inuse, wall: {page}"
    );
    for flamegraph in flamegraphs {
        assert_eq!(flamegraph["visible"], true, "{flamegraph}");
        assert_eq!(flamegraph["script_ran"], true, "{flamegraph}");
        assert!(flamegraph["frames"].as_u64().unwrap() > 3, "{flamegraph}");
        assert_eq!(flamegraph["zoomed"], true, "{flamegraph}");
    }

    // `profiler report` writes them again: the exports byte for byte, the page with the same
    // verdict (table rows of equal weight may come in another order).
    let verdict_of = |html: &str| {
        html[html.find("<ol class=\"verdict\">").unwrap()..]
            .split("</ol>")
            .next()
            .unwrap()
            .to_owned()
    };
    let old_page = std::fs::read_to_string(dir.join("report.html")).unwrap();
    let before: Vec<Vec<u8>> = ["profile.pb.gz", "speedscope.json"]
        .iter()
        .map(|name| std::fs::read(dir.join(name)).unwrap())
        .collect();
    for name in ["report.html", "profile.pb.gz", "speedscope.json"] {
        std::fs::remove_file(dir.join(name)).unwrap();
    }
    assert!(output(profiler().arg("report").arg(dir)).status.success());
    for (name, old) in ["profile.pb.gz", "speedscope.json"].iter().zip(before) {
        assert_eq!(
            std::fs::read(dir.join(name)).unwrap(),
            old,
            "{name} regenerated"
        );
    }
    let new_page = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert_eq!(verdict_of(&new_page), verdict_of(&old_page));

    // From the saved profile, `report` is byte for byte the same every time: every file.
    let files = |dir: &Path| -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&path).unwrap())
            })
            .collect();
        files.sort();
        files
    };
    let first = files(dir);
    assert!(output(profiler().arg("report").arg(dir)).status.success());
    let second = files(dir);
    assert_eq!(first.len(), second.len());
    for ((name, a), (_, b)) in first.iter().zip(&second) {
        assert!(a == b, "{name} differs between two `profiler report` runs");
    }
    assert_nothing_loaded();
}

#[test]
fn diff_shows_what_grew_and_gates_on_it() {
    let _serial = serial();
    if !have_root("diff_shows_what_grew_and_gates_on_it") {
        return;
    }
    let (before, out) = record(&["-F", "199"], "cpu_split", &["1"]);
    assert!(out.status.success());
    // The same two functions, plus a second process spinning in child_spin: a regression.
    let (after, out) = record(&["-F", "199"], "forker", &["1"]);
    assert!(out.status.success());
    let diff_dir = tempfile::tempdir().unwrap();
    let diff = |limit: &str| {
        output(
            profiler()
                .arg("diff")
                .arg(before.path())
                .arg(after.path())
                .arg("-o")
                .arg(diff_dir.path())
                .args(["--fail-above", limit]),
        )
    };
    let gated = diff("20");
    assert_eq!(
        gated.status.code(),
        Some(3),
        "a function grew by more than 20 points"
    );
    let stderr = String::from_utf8_lossy(&gated.stderr);
    assert!(stderr.contains("regression: `"), "{stderr}");
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(diff_dir.path().join("diff-summary.json")).unwrap(),
    )
    .unwrap();
    let cpu = &summary["kinds"][0];
    assert_eq!(cpu["kind"], "cpu");
    let grew: Vec<&str> = cpu["grew"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["function"].as_str().unwrap())
        .collect();
    assert!(
        grew.contains(&"child_spin") && grew.contains(&"parent_spin"),
        "{grew:?}"
    );
    let shrank: Vec<&str> = cpu["shrank"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["function"].as_str().unwrap())
        .collect();
    assert!(shrank.contains(&"hot_path"), "{shrank:?}");
    let svg = std::fs::read_to_string(diff_dir.path().join("diff-cpu.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("parent_spin"));
    assert!(
        diff("100").status.success(),
        "nothing grows by more than 100 points"
    );
}
