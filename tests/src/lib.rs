//! Harness for the integration tests in `tests/`: locating the profiler and the test programs,
//! running them, reading results, and checking that nothing stays loaded in the kernel.
//!
//! The tests need root (or CAP_BPF + CAP_PERFMON). Without it they skip with a message, except
//! under `CI=true`, where a skip is a failure.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Output},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

/// Names of the profiler's eBPF programs as the kernel lists them (truncated to 15 bytes).
pub const PROGRAM_NAMES: [&str; 17] = [
    "cpu_sample",
    "sched_process_f",
    "sched_process_e",
    "sched_switch",
    "sched_wakeup",
    "task_rename",
    "loader_debug_st",
    "sys_enter",
    "sys_exit",
    "sys_exit_walk",
    "sched_switch_wa",
    "private_stack_p",
    "block_rq_issue",
    "block_rq_comple",
    "alloc_enter",
    "alloc_return",
    "free_enter",
];

pub mod otlp;
pub mod runtimes;

static SERIAL: Mutex<()> = Mutex::new(());

/// Serializes the tests: they share 2 CPUs and check the kernel's list of loaded programs.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether the tests can load eBPF programs. Prints why not and returns false to skip, or
/// panics under `CI=true`.
pub fn have_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("{test}: needs root to load eBPF programs, and CI=true forbids skipping");
    }
    eprintln!("skipping {test}: needs root to load eBPF programs (run `sudo -E cargo xtask test`)");
    false
}

/// Whether the tests' JavaScript tools (Node.js, `tests/js/node_modules`, Chromium) are
/// installed. Prints why not and returns false to skip, or panics under `CI=true`.
pub fn have_js_tools(test: &str) -> bool {
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let modules = js_dir().join("node_modules/pprof-format").exists()
        && js_dir().join("node_modules/playwright-core").exists();
    let chromium = std::env::var_os("PROFILER_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
        .exists();
    if node && modules && chromium {
        return true;
    }
    let missing = format!(
        "node: {node}, tests/js/node_modules: {modules}, chromium: {chromium}          (`sudo -E cargo xtask test` installs them)"
    );
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("{test}: needs its JavaScript tools ({missing}), and CI=true forbids skipping");
    }
    eprintln!("skipping {test}: needs its JavaScript tools ({missing})");
    false
}

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("js")
}

/// Runs `node tests/js/SCRIPT ARGS` and parses the JSON it prints.
pub fn node_json(script: &str, args: &[&Path]) -> serde_json::Value {
    let out = output(Command::new("node").arg(js_dir().join(script)).args(args));
    assert!(out.status.success(), "{script} failed");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
        panic!(
            "{script} printed no JSON ({err}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The profiler binary: `$PROFILER_BIN`, or the workspace's release build.
pub fn profiler_bin() -> PathBuf {
    let path = std::env::var_os("PROFILER_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/profiler"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "profiler binary not found at {}: run `cargo xtask test`, or build it with \
         `cargo build --release -p profiler`",
        path.display()
    );
    path
}

/// A `profiler` command.
pub fn profiler() -> Command {
    Command::new(profiler_bin())
}

/// Path of a test program compiled from `tests/programs/NAME.c`.
pub fn program(name: &str) -> PathBuf {
    Path::new(env!("TEST_PROGRAMS_DIR")).join(name)
}

/// Runs a command to completion, returning its output; echoes stderr for failing tests.
pub fn output(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    eprintln!(
        "{command:?} -> {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs `profiler record ARGS -o DIR -- PROGRAM PROGRAM_ARGS` with a fresh output folder DIR
/// and a test program; returns the folder and the run's output.
pub fn record(args: &[&str], name: &str, program_args: &[&str]) -> (tempfile::TempDir, Output) {
    let dir = tempfile::tempdir().expect("temporary folder");
    let out = output(
        profiler()
            .arg("record")
            .args(args)
            .arg("-o")
            .arg(dir.path())
            .arg("--")
            .arg(program(name))
            .args(program_args),
    );
    (dir, out)
}

/// The build-id of an ELF file, in hex, as `readelf` tells it.
pub fn build_id(path: &Path) -> String {
    let notes = Command::new("readelf")
        .arg("-n")
        .arg(path)
        .output()
        .unwrap_or_else(|err| panic!("cannot run readelf: {err}"));
    String::from_utf8_lossy(&notes.stdout)
        .lines()
        .find_map(|line| line.trim().strip_prefix("Build ID: "))
        .unwrap_or_else(|| panic!("no build-id in {}", path.display()))
        .trim()
        .to_owned()
}

/// A spawned process killed when the guard is dropped, so a failing test leaves nothing behind.
pub struct Spawned(pub Child);

impl Spawned {
    /// Spawns `command`.
    pub fn new(command: &mut Command) -> Self {
        Spawned(
            command
                .spawn()
                .unwrap_or_else(|err| panic!("cannot start {command:?}: {err}")),
        )
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Sends a signal.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own, not yet reaped child.
        unsafe { libc::kill(self.0.id() as libc::pid_t, signal) };
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }

    /// Waits for it to exit (killing it after `timeout`) and returns its output: what it
    /// wrote to the pipes it was given (a few lines: the pipes are read once it exited).
    pub fn wait_with_output(mut self, timeout: Duration) -> Output {
        if !wait_for(timeout, || !self.is_running()) {
            self.signal(libc::SIGKILL);
        }
        let read = |pipe: Option<&mut dyn std::io::Read>| {
            let mut bytes = Vec::new();
            if let Some(pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        };
        let stdout = read(self.0.stdout.as_mut().map(|p| p as &mut dyn std::io::Read));
        let stderr = read(self.0.stderr.as_mut().map(|p| p as &mut dyn std::io::Read));
        let status = self.0.wait().expect("its status");
        eprintln!(
            "{:?} -> {status}\nstderr: {}",
            self.0,
            String::from_utf8_lossy(&stderr)
        );
        Output {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Parsed `cpu.folded` (or any folded file): frames root first, and the weight.
pub fn read_folded(path: &Path) -> Vec<(Vec<String>, u64)> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    text.lines()
        .map(|line| {
            let (stack, weight) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("malformed folded line: {line}"));
            (
                stack.split(';').map(str::to_owned).collect(),
                weight
                    .parse()
                    .unwrap_or_else(|_| panic!("bad weight: {line}")),
            )
        })
        .collect()
}

/// Total weight of stacks whose leaf (last frame) is `leaf`.
pub fn weight_with_leaf(stacks: &[(Vec<String>, u64)], leaf: &str) -> u64 {
    stacks
        .iter()
        .filter(|(frames, _)| frames.last().is_some_and(|f| f == leaf))
        .map(|(_, weight)| weight)
        .sum()
}

/// Total weight of stacks that contain `frame`.
pub fn weight_with_frame(stacks: &[(Vec<String>, u64)], frame: &str) -> u64 {
    stacks
        .iter()
        .filter(|(frames, _)| frames.iter().any(|f| f == frame))
        .map(|(_, weight)| weight)
        .sum()
}

/// `summary.json` of an output folder.
pub fn read_summary(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("summary.json"))
        .unwrap_or_else(|err| panic!("cannot read summary.json in {}: {err}", dir.display()));
    serde_json::from_str(&text).expect("summary.json is JSON")
}

/// Asserts that `tests/programs/pingpong.c`'s two pipes (the pipes a summary shows read,
/// not the one its output goes to) each have `rounds` reads and writes of a byte.
pub fn assert_pingpong_pipes_counted(summary: &serde_json::Value, rounds: u64, context: &str) {
    let files = summary["io"]["files"].as_array().expect("io files");
    let pipes: Vec<_> = files
        .iter()
        .filter(|f| f["kind"] == "pipe" && f["reads"] != 0)
        .collect();
    assert_eq!(pipes.len(), 2, "{context}: two pipes read: {files:#?}");
    for pipe in pipes {
        assert_eq!(pipe["reads"], rounds, "{context}: {pipe}");
        assert_eq!(pipe["writes"], rounds, "{context}: {pipe}");
        assert_eq!(pipe["read_bytes"], rounds, "{context}: {pipe}");
    }
}

/// The profiler's programs currently loaded in the kernel, by name, with their counts.
pub fn loaded_profiler_programs() -> BTreeMap<String, usize> {
    let mut found = BTreeMap::new();
    for info in aya::programs::loaded_programs().filter_map(Result::ok) {
        let Some(name) = info.name_as_str() else {
            continue;
        };
        if PROGRAM_NAMES.contains(&name) {
            *found.entry(name.to_owned()).or_default() += 1;
        }
    }
    found
}

/// Waits up to `timeout` for `condition`; the kernel frees programs shortly after their last
/// file descriptor closes.
pub fn wait_for(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts that none of the profiler's programs is loaded (within a short grace period).
pub fn assert_nothing_loaded() {
    assert!(
        wait_for(Duration::from_secs(3), || loaded_profiler_programs()
            .is_empty()),
        "eBPF programs still loaded after the profiler exited: {:?}",
        loaded_profiler_programs()
    );
}

/// Share of `part` in `total`, in percent.
pub fn percent(part: u64, total: u64) -> f64 {
    assert!(total > 0, "no samples");
    part as f64 * 100.0 / total as f64
}
