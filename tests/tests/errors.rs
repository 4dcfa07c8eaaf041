//! Bad input gets a one-line error, a non-zero exit, and leaves nothing loaded or half-written.

use std::{os::unix::fs::PermissionsExt as _, path::Path, process::Command, time::Duration};

use profiler_tests::{
    Spawned, assert_nothing_loaded, have_root, output, profiler, profiler_bin, program, serial,
};

/// Runs the profiler with `args`, expecting failure with `expected` in a one-line error.
fn assert_fails(command: &mut Command, expected: &str) {
    let out = output(command);
    assert!(!out.status.success(), "expected failure");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines.iter().any(|line| line.contains(expected)),
        "error mentions `{expected}`: {stderr}"
    );
    assert!(lines.len() <= 3, "a short error, not a dump: {stderr}");
}

#[test]
fn bad_targets_and_options_fail_clearly() {
    let _serial = serial();
    if !have_root("bad_targets_and_options_fail_clearly") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    assert_fails(
        profiler()
            .args(["attach", "-o"])
            .arg(&out_dir)
            .arg("999999999"),
        "no process with pid 999999999",
    );
    assert_fails(
        profiler().args(["attach", "-o"]).arg(&out_dir).arg("2"),
        "kernel thread",
    );
    assert_fails(
        profiler()
            .args(["record", "-o"])
            .arg(&out_dir)
            .args(["--", "no-such-command-xyz"]),
        "command not found: no-such-command-xyz",
    );
    assert_fails(
        profiler().args(["attach", "--events", "cpu,gpu", "1"]),
        "unknown event kind `gpu`",
    );
    assert_fails(profiler().args(["attach", "-F", "0", "1"]), "frequency");
    // A file where the folder should be, and a folder under /proc: refused.
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    assert_fails(
        profiler()
            .args(["record", "-o"])
            .arg(&file)
            .args(["--", "true"]),
        "exists and is not a folder",
    );
    assert_fails(
        profiler().args(["record", "-o", "/proc/profiler-test", "--", "true"]),
        "inside the system folder /proc",
    );
    // Nothing was started, nothing written where results would have gone.
    assert!(!out_dir.exists());
    assert_nothing_loaded();
}

#[test]
fn a_thread_id_is_refused_with_its_process_id() {
    let _serial = serial();
    if !have_root("a_thread_id_is_refused_with_its_process_id") {
        return;
    }
    let target = Spawned::new(Command::new(program("named_threads")).arg("10"));
    let task_dir = format!("/proc/{}/task", target.pid());
    assert!(profiler_tests::wait_for(Duration::from_secs(2), || {
        std::fs::read_dir(&task_dir).map(|d| d.count()).unwrap_or(0) >= 3
    }));
    let tid = std::fs::read_dir(&task_dir)
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|&tid| tid != target.pid())
        .unwrap();
    assert_fails(
        profiler().args(["attach", "-d", "1"]).arg(tid.to_string()),
        &format!("is a thread of process {}", target.pid()),
    );
}

#[test]
fn without_privileges_the_error_names_what_is_missing() {
    let _serial = serial();
    if !have_root("without_privileges_the_error_names_what_is_missing") {
        return;
    }
    // A copy of the binary that an unprivileged user can execute.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let binary = dir.path().join("profiler");
    std::fs::copy(profiler_bin(), &binary).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out_dir = dir.path().join("out");
    assert_fails(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(Path::new(&binary))
            .args(["record", "-o"])
            .arg(&out_dir)
            .args(["--", "true"]),
        "needs root or the capabilities CAP_BPF and CAP_PERFMON",
    );
    assert!(!out_dir.exists());
}
