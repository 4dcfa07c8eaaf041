//! Processes chosen by what they run: `attach --comm` and `attach --cgroup` (those running at
//! the start and those that start later, and nothing else), `record --all` (the whole host
//! while the command runs).

use std::{path::PathBuf, process::Command, time::Duration};

use profiler_tests::{
    Spawned, assert_nothing_loaded, have_root, output, profiler, program, read_folded,
    read_summary, serial,
};

/// `cpu_split` under another name, so that its process has another `comm`.
fn renamed_cpu_split(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("other_split");
    std::fs::copy(program("cpu_split"), &path).unwrap();
    path
}

/// Samples of the processes named `name`, and of the one with `pid` among them when the
/// folded stacks name processes by pid (several processes profiled).
fn samples_of(stacks: &[(Vec<String>, u64)], name: &str, pid: Option<u32>) -> u64 {
    stacks
        .iter()
        .filter(|(frames, _)| match pid {
            Some(pid) => frames[0] == format!("{name} ({pid})"),
            None => frames[0] == name || frames[0].starts_with(&format!("{name} (")),
        })
        .map(|(_, weight)| weight)
        .sum()
}

#[test]
fn attach_by_name_follows_running_and_later_processes_and_no_other() {
    let _serial = serial();
    if !have_root("attach_by_name_follows_running_and_later_processes_and_no_other") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let before = Spawned::new(Command::new(program("cpu_split")).arg("9"));
    let other = Spawned::new(Command::new(renamed_cpu_split(scratch.path())).arg("9"));
    let dir = scratch.path().join("out");
    let run = Spawned::new(
        profiler()
            .args([
                "attach",
                "--comm",
                "^cpu_split$",
                "-e",
                "cpu,offcpu",
                "-d",
                "5",
                "-o",
            ])
            .arg(&dir),
    );
    // Started once the programs are attached (a second or less here).
    std::thread::sleep(Duration::from_millis(2000));
    let later = Spawned::new(Command::new(program("cpu_split")).arg("2.5"));
    let out = run.wait_with_output(Duration::from_secs(30));
    assert!(out.status.success());
    let stacks = read_folded(&dir.join("cpu.folded"));
    let (before_samples, later_samples) = (
        samples_of(&stacks, "cpu_split", Some(before.pid())),
        samples_of(&stacks, "cpu_split", Some(later.pid())),
    );
    // Three busy processes share 2 CPUs: two thirds of one each, at 99 Hz.
    assert!(
        before_samples > 150,
        "{before_samples} samples of the running one"
    );
    assert!(
        later_samples > 60,
        "{later_samples} samples of the later one"
    );
    assert_eq!(samples_of(&stacks, "other_split", None), 0, "not selected");
    drop(other);
    assert_nothing_loaded();
}

/// A cgroup v2 folder made for the test, removed when dropped (after its processes exit).
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new() -> TestCgroup {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let root = mounts
            .lines()
            .find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
            })
            .expect("cgroup v2 is mounted (the kernel's unified hierarchy)");
        let path = root.join(format!("profiler-test-{}", std::process::id()));
        std::fs::create_dir(&path).unwrap();
        TestCgroup(path)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        profiler_tests::wait_for(Duration::from_secs(5), || {
            std::fs::remove_dir(&self.0).is_ok()
        });
    }
}

#[test]
fn attach_by_cgroup_follows_a_process_that_joins_it_and_no_other() {
    let _serial = serial();
    if !have_root("attach_by_cgroup_follows_a_process_that_joins_it_and_no_other") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let cgroup = TestCgroup::new();
    let other = Spawned::new(Command::new(renamed_cpu_split(scratch.path())).arg("6"));
    let dir = scratch.path().join("out");
    let run = Spawned::new(
        profiler()
            .args(["attach", "--cgroup"])
            .arg(&cgroup.0)
            .args(["-d", "4", "-o"])
            .arg(&dir),
    );
    std::thread::sleep(Duration::from_millis(1500));
    // As a container starts: into the cgroup, then the program.
    let joined = Spawned::new(
        Command::new("sh")
            .arg("-c")
            .arg(r#"echo $$ > "$1/cgroup.procs" && exec "$2" 2"#)
            .arg("sh")
            .arg(&cgroup.0)
            .arg(program("cpu_split")),
    );
    let out = run.wait_with_output(Duration::from_secs(30));
    assert!(out.status.success());
    let stacks = read_folded(&dir.join("cpu.folded"));
    let joined_samples = samples_of(&stacks, "cpu_split", None);
    assert!(
        joined_samples > 60,
        "{joined_samples} samples of the process in the cgroup"
    );
    assert_eq!(
        samples_of(&stacks, "other_split", None),
        0,
        "outside the cgroup"
    );
    assert_eq!(
        read_summary(&dir)["target"],
        cgroup.0.file_name().unwrap().to_str().unwrap()
    );
    drop((joined, other));
    assert_nothing_loaded();
}

#[test]
fn record_all_profiles_the_host_while_the_command_runs() {
    let _serial = serial();
    if !have_root("record_all_profiles_the_host_while_the_command_runs") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let other = Spawned::new(Command::new(renamed_cpu_split(scratch.path())).arg("9"));
    let dir = scratch.path().join("out");
    let out = output(
        profiler()
            .args(["record", "--all", "-o"])
            .arg(&dir)
            .args(["--", "sleep", "3"]),
    );
    assert!(out.status.success());
    let stacks = read_folded(&dir.join("cpu.folded"));
    let others = samples_of(&stacks, "other_split", None);
    assert!(
        others > 100,
        "{others} samples of a process the command did not start"
    );
    let summary = read_summary(&dir);
    assert_eq!(summary["exit_code"], 0);
    assert_eq!(summary["stop_reason"], "command exited");
    let own: Vec<&(Vec<String>, u64)> = stacks
        .iter()
        .filter(|(frames, _)| frames[0].starts_with("profiler"))
        .collect();
    assert!(own.is_empty(), "the profiler profiles itself: {own:?}");
    drop(other);
    assert_nothing_loaded();
}
