//! Helpers of the runtime tests (`tests/runtimes.rs`, `tests/python.rs`): the programs in
//! `tests/runtimes/`, recording and attaching at a rate that makes a 70/30 split measurable,
//! and the checks on what comes out.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{output, percent, profiler, read_folded, weight_with_frame};

/// Whether `program VERSION_FLAG` runs. Prints why not and returns false to skip, or panics
/// under `CI=true`.
pub fn have_runtime(test: &str, program: &str) -> bool {
    // `go` takes a command, not a flag.
    let found = Command::new(program)
        .arg(if program == "go" {
            "version"
        } else {
            "--version"
        })
        .output()
        .is_ok_and(|out| out.status.success());
    if found {
        return true;
    }
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!(
            "{test}: needs {program} (`cargo xtask test` installs it), and CI=true forbids skipping"
        );
    }
    eprintln!("skipping {test}: needs {program} (`sudo -E cargo xtask test` installs it)");
    false
}

/// Thousands of samples per run: at 300, a 70/30 share wanders by ±3 points one run in four.
pub const SAMPLING_HZ: &str = "999";

pub fn runtimes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("runtimes")
}

pub fn record_command(
    args: &[&str],
    command: &Command,
) -> (tempfile::TempDir, std::process::Output) {
    let dir = tempfile::tempdir().unwrap();
    let mut profiler = profiler();
    if let Some(cwd) = command.get_current_dir() {
        profiler.current_dir(cwd);
    }
    let out = output(
        profiler
            .args(["record", "-F", SAMPLING_HZ])
            .args(args)
            .arg("-o")
            .arg(dir.path())
            .arg("--")
            .arg(command.get_program())
            .args(command.get_args()),
    );
    assert!(out.status.success(), "record failed");
    (dir, out)
}

pub fn attach_for(seconds: u32, pid: u32, args: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = output(
        profiler()
            .args(["attach", "-F", SAMPLING_HZ, "-d", &seconds.to_string()])
            .args(args)
            .arg("-o")
            .arg(dir.path())
            .arg(pid.to_string()),
    );
    assert!(out.status.success(), "attach failed");
    dir
}

/// Weight of stacks with a frame whose name contains `part`.
pub fn weight_containing(stacks: &[(Vec<String>, u64)], part: &str) -> u64 {
    stacks
        .iter()
        .filter(|(frames, _)| frames.iter().any(|frame| frame.contains(part)))
        .map(|(_, weight)| weight)
        .sum()
}

/// Asserts the two hot functions (frames named `a`, `b`) split their samples 70/30 within 3
/// points, printing the heaviest stacks when not, and that no frame anywhere is nameless.
pub fn assert_split(dir: &Path, a: &str, b: &str) -> Vec<(Vec<String>, u64)> {
    let stacks = read_folded(&dir.join("cpu.folded"));
    let (hot_a, hot_b) = (weight_with_frame(&stacks, a), weight_with_frame(&stacks, b));
    let total: u64 = stacks.iter().map(|(_, weight)| weight).sum();
    let share = percent(hot_a, hot_a + hot_b);
    eprintln!("{a}: {hot_a}, {b}: {hot_b} of {total} samples: {share:.1}%");
    assert!(
        percent(hot_a + hot_b, total) > 80.0,
        "the hot functions are not named in most samples: {a} {hot_a}, {b} {hot_b} of {total}"
    );
    if (share - 70.0).abs() > 3.0 {
        // Where the samples went says whether frames were misnamed or the workload drifted.
        let mut heaviest: Vec<_> = stacks.iter().collect();
        heaviest.sort_by_key(|(_, weight)| std::cmp::Reverse(*weight));
        for (frames, weight) in heaviest.iter().take(8) {
            eprintln!("{weight:6} {}", frames.join(";"));
        }
        panic!("{a} has {share:.1}% of the two");
    }
    for (frames, _) in &stacks {
        // The first field is the process's name.
        assert!(
            frames[1..].iter().all(|frame| !frame.trim().is_empty()),
            "a nameless frame in {frames:?}"
        );
    }
    stacks
}

pub fn assert_reach(stacks: &[(Vec<String>, u64)], entry: &str, at_least: f64) {
    let total: u64 = stacks.iter().map(|(_, weight)| weight).sum();
    let reaching = percent(weight_containing(stacks, entry), total);
    assert!(
        reaching >= at_least,
        "{reaching:.1}% of stacks reach {entry}, fewer than {at_least}%"
    );
}
