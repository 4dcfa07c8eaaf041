//! Managed runtimes: JIT code named from the runtimes' perf maps, stacks whole through it.
//! Real runtimes: Debian's OpenJDK 17 and Node.js, running `tests/runtimes/` programs whose
//! two hot functions split the CPU 70/30.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use profiler_tests::{runtimes::*, *};

/// `Hot.java` compiled into a folder of its own.
fn compiled_java() -> tempfile::TempDir {
    let classes = tempfile::tempdir().unwrap();
    let out = output(
        Command::new("javac")
            .arg("-d")
            .arg(classes.path())
            .arg(runtimes_dir().join("Hot.java")),
    );
    assert!(out.status.success(), "javac failed");
    classes
}

fn java(classes: &Path, flags: &[&str], millis: u32) -> Command {
    let mut command = Command::new("java");
    command
        .args(flags)
        .arg("-cp")
        .arg(classes)
        .arg("Hot")
        .arg(millis.to_string());
    command
}

/// Node.js running `hot.js` in `dir` (where V8 writes its own log beside the perf map).
fn node(dir: &Path, millis: u32) -> Command {
    let mut command = Command::new("node");
    command
        .current_dir(dir)
        .arg("--perf-basic-prof")
        .arg(runtimes_dir().join("hot.js"))
        .arg(millis.to_string());
    command
}

/// Removes the perf map runtime `pid` wrote in `/tmp` (it outlives the process).
fn remove_perf_map(pid: impl std::fmt::Display) {
    let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
}

/// The pid `record` launched.
fn recorded_pid(dir: &Path) -> u64 {
    read_summary(dir)["root_pids"][0]
        .as_u64()
        .expect("a root pid")
}

#[test]
fn java_methods_are_named_by_record_without_perf_map_flags() {
    if !have_root("java record") || !have_runtime("java record", "javac") {
        return;
    }
    let _serial = serial();
    let classes = compiled_java();
    let command = java(classes.path(), &["-XX:+PreserveFramePointer"], 4000);
    let (dir, _) = record_command(&[], &command);
    let stacks = assert_split(dir.path(), "void Hot.hotA()", "void Hot.hotB()");
    // Through the JIT code and the interpreter, to the launcher's Java thread.
    assert_reach(&stacks, "JavaMain", 90.0);
    let summary = read_summary(dir.path());
    let jit = &summary["jit"];
    assert!(jit["jvm_maps_written"].as_u64() >= Some(1), "{jit}");
    remove_perf_map(recorded_pid(dir.path()));
    assert_nothing_loaded();
}

#[test]
fn java_attach_names_methods_of_a_jvm_started_without_any_flag() {
    if !have_root("java attach") || !have_runtime("java attach", "javac") {
        return;
    }
    let _serial = serial();
    let classes = compiled_java();
    let stdout = tempfile::NamedTempFile::new().unwrap();
    let mut jvm = Spawned::new(
        java(classes.path(), &[], 20_000)
            .stdout(stdout.reopen().unwrap())
            .stderr(Stdio::null()),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let dir = attach_for(3, jvm.pid(), &[]);
    assert!(jvm.is_running(), "the JVM did not survive being asked");
    let stacks = assert_split(dir.path(), "void Hot.hotA()", "void Hot.hotB()");
    assert!(!stacks.is_empty());
    // Without PreserveFramePointer the walk stops in the JIT code: the summary says why.
    let summary = read_summary(dir.path());
    let quality = summary["quality"]["text"].as_str().unwrap_or_default();
    assert!(quality.contains("-XX:+PreserveFramePointer"), "{quality}");
    // The attach trigger was removed, and SIGQUIT printed no thread dump.
    assert!(!Path::new(&format!("/tmp/.attach_pid{}", jvm.pid())).exists());
    let printed = std::fs::read_to_string(stdout.path()).unwrap();
    assert!(!printed.contains("Full thread dump"), "{printed}");
    remove_perf_map(jvm.pid());
    drop(jvm);
    assert_nothing_loaded();
}

#[test]
fn no_jvm_attach_leaves_the_jvm_alone_and_jit_frames_by_address() {
    if !have_root("no jvm attach") || !have_runtime("no jvm attach", "javac") {
        return;
    }
    let _serial = serial();
    let classes = compiled_java();
    let command = java(classes.path(), &["-XX:+PreserveFramePointer"], 2000);
    let (dir, _) = record_command(&["--no-jvm-attach"], &command);
    let pid = recorded_pid(dir.path());
    assert!(!Path::new(&format!("/tmp/perf-{pid}.map")).exists());
    assert!(!Path::new(&format!("/tmp/.java_pid{pid}")).exists());
    let stacks = read_folded(&dir.path().join("cpu.folded"));
    assert_eq!(weight_containing(&stacks, "Hot.hotA"), 0);
    let total: u64 = stacks.iter().map(|(_, weight)| weight).sum();
    let by_address = weight_containing(&stacks, "[jit] 0x");
    assert!(
        percent(by_address, total) > 50.0,
        "JIT code not shown by address: {by_address} of {total}"
    );
    let summary = read_summary(dir.path());
    assert_eq!(summary["jit"]["jvms"], 0, "{}", summary["jit"]);
}

#[test]
fn node_functions_are_named_from_its_perf_map_by_record_and_attach() {
    if !have_root("node") || !have_runtime("node", "node") {
        return;
    }
    let _serial = serial();
    let logs = tempfile::tempdir().unwrap();
    let (dir, _) = record_command(&[], &node(logs.path(), 4000));
    let stacks = assert_split(dir.path(), "hotA", "hotB");
    assert_reach(&stacks, "node::Start", 90.0);
    let summary = read_summary(dir.path());
    let verdict = summary["verdict"].to_string();
    assert!(verdict.contains("hotA"), "{verdict}");
    remove_perf_map(recorded_pid(dir.path()));

    let process = Spawned::new(node(logs.path(), 20_000).stdout(Stdio::null()));
    std::thread::sleep(Duration::from_millis(1000));
    let dir = attach_for(3, process.pid(), &[]);
    let stacks = assert_split(dir.path(), "hotA", "hotB");
    assert_reach(&stacks, "node::Start", 90.0);
    remove_perf_map(process.pid());
    drop(process);
    assert_nothing_loaded();
}

/// `hot.go` built into a folder of its own.
fn built_go() -> (tempfile::TempDir, PathBuf) {
    let folder = tempfile::tempdir().unwrap();
    let binary = folder.path().join("hot");
    let out = output(
        Command::new("go")
            .args(["build", "-o"])
            .arg(&binary)
            .arg(runtimes_dir().join("hot.go"))
            // Its own cache: nothing written to the user's.
            .env("GOCACHE", folder.path().join("cache")),
    );
    assert!(out.status.success(), "go build failed");
    (folder, binary)
}

#[test]
fn go_functions_are_named_and_goroutine_stacks_whole() {
    if !have_root("go") || !have_runtime("go", "go") {
        return;
    }
    let _serial = serial();
    let (_folder, binary) = built_go();
    let mut command = Command::new(&binary);
    command.arg("4000");
    let (dir, _) = record_command(&[], &command);
    let stacks = assert_split(dir.path(), "main.hotA", "main.hotB");
    // Through main.main (its compressed .debug_frame is read) to the goroutine's bottom.
    assert_reach(&stacks, "main.main", 90.0);
    let quality = read_summary(dir.path())["quality"]["complete_stacks_percent"].clone();
    assert!(quality.as_f64() >= Some(90.0), "{quality}");

    let process = Spawned::new(Command::new(&binary).arg("20000"));
    std::thread::sleep(Duration::from_millis(500));
    let dir = attach_for(3, process.pid(), &[]);
    let stacks = assert_split(dir.path(), "main.hotA", "main.hotB");
    assert_reach(&stacks, "main.main", 90.0);
    drop(process);
    assert_nothing_loaded();
}

#[test]
fn node_functions_are_named_from_its_jitdump_file() {
    if !have_root("node jitdump") || !have_runtime("node jitdump", "node") {
        return;
    }
    let _serial = serial();
    // `--perf-prof`: V8 writes `jit-PID.dump` in its working folder and maps it, no perf map.
    let folder = tempfile::tempdir().unwrap();
    let mut command = Command::new("node");
    command
        .current_dir(folder.path())
        .arg("--perf-prof")
        .arg(runtimes_dir().join("hot.js"))
        .arg("4000");
    let (dir, _) = record_command(&[], &command);
    let pid = recorded_pid(dir.path());
    assert!(!Path::new(&format!("/tmp/perf-{pid}.map")).exists());
    assert!(folder.path().join(format!("jit-{pid}.dump")).exists());
    let stacks = assert_split(dir.path(), "hotA", "hotB");
    assert_reach(&stacks, "node::Start", 90.0);
    assert_nothing_loaded();
}
