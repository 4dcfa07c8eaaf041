//! Python frames walked in the kernel: Debian's CPython 3.11 (and the other builds of the
//! versions the profiler knows found on the machine: pyenv's shared 3.11, 3.12, 3.13) running
//! `tests/runtimes/` scripts with known behaviour, by `record` and `attach`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use profiler_tests::{runtimes::*, *};

/// Debian's interpreter, which the set-up installs.
const DEBIAN_PYTHON: &str = "/usr/bin/python3.11";

/// The CPython builds on this machine of the versions the profiler knows, with their
/// versions: Debian's 3.11 (static), and others found on `PATH` or under pyenv (shared
/// `libpython3.N.so`).
fn pythons() -> Vec<(PathBuf, &'static str)> {
    const KNOWN: [&str; 6] = ["3.8", "3.9", "3.10", "3.11", "3.12", "3.13"];
    let mut found = vec![(PathBuf::from(DEBIAN_PYTHON), "3.11")];
    let debian = std::fs::canonicalize(DEBIAN_PYTHON).ok();
    let pyenv = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".pyenv")));
    let mut candidates: Vec<(PathBuf, &str)> = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .flat_map(|dir| {
                    KNOWN.map(|version| (dir.join(format!("python{version}")), version))
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(versions) = pyenv.map(|root| root.join("versions"))
        && let Ok(entries) = std::fs::read_dir(versions)
    {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(version) = KNOWN
                .iter()
                .find(|version| name.starts_with(&format!("{version}.")))
            {
                candidates.push((entry.path().join(format!("bin/python{version}")), *version));
            }
        }
    }
    for (candidate, version) in candidates {
        // pyenv's shims are scripts: only real interpreters, each once.
        let Ok(real) = std::fs::canonicalize(&candidate) else {
            continue;
        };
        let is_elf = std::fs::read(&real).is_ok_and(|bytes| bytes.starts_with(b"\x7fELF"));
        if is_elf
            && Some(&real) != debian.as_ref()
            && !found
                .iter()
                .any(|(known, _)| std::fs::canonicalize(known).ok() == Some(real.clone()))
        {
            found.push((real, version));
        }
    }
    found
}

fn python(interpreter: &Path, script: &str, seconds: f64) -> Command {
    let mut command = Command::new(interpreter);
    command
        .arg(runtimes_dir().join(script))
        .arg(seconds.to_string());
    command
}

/// Weight of stacks where the frame `caller` is above (calls, through whatever) a frame that
/// `callee` picks.
fn weight_calling(
    stacks: &[(Vec<String>, u64)],
    caller: &str,
    callee: impl Fn(&str) -> bool,
) -> u64 {
    stacks
        .iter()
        .filter(|(frames, _)| {
            let above = frames.iter().position(|frame| frame == caller);
            let below = frames.iter().position(|frame| callee(frame));
            matches!((above, below), (Some(above), Some(below)) if above < below)
        })
        .map(|(_, weight)| weight)
        .sum()
}

/// Asserts the verdict names `hot_a` with its file and `def` line.
fn assert_verdict_names_hot_a(dir: &Path) {
    let verdict = read_summary(dir)["verdict"].to_string();
    assert!(verdict.contains("`hot_a` ("), "{verdict}");
    assert!(verdict.contains("hot.py:7)"), "{verdict}");
}

#[test]
fn python_functions_split_70_30_by_record_and_attach() {
    if !have_root("python") || !have_runtime("python", DEBIAN_PYTHON) {
        return;
    }
    let _serial = serial();
    for (interpreter, version) in pythons() {
        eprintln!("{} ({version})", interpreter.display());
        let (dir, _) = record_command(&[], &python(&interpreter, "hot.py", 3.0));
        let stacks = assert_split(dir.path(), "hot_a", "hot_b");
        assert_reach(&stacks, "driver", 95.0);
        assert_reach(&stacks, "_start", 95.0);
        assert_verdict_names_hot_a(dir.path());
    }

    let process =
        Spawned::new(python(Path::new(DEBIAN_PYTHON), "hot.py", 20.0).stdout(Stdio::null()));
    std::thread::sleep(Duration::from_millis(1000));
    let dir = attach_for(3, process.pid(), &[]);
    let stacks = assert_split(dir.path(), "hot_a", "hot_b");
    assert_reach(&stacks, "driver", 95.0);
    assert_verdict_names_hot_a(dir.path());
    drop(process);
    assert_nothing_loaded();
}

#[test]
fn python_threads_sleeps_and_writes_keep_their_functions() {
    if !have_root("python_threads") || !have_runtime("python_threads", DEBIAN_PYTHON) {
        return;
    }
    let _serial = serial();
    let (dir, _) = record_command(
        &["-e", "cpu,offcpu,io"],
        &python(Path::new(DEBIAN_PYTHON), "threads.py", 3.0),
    );
    // Each spinning thread (named by the script) is in its own function.
    let cpu = read_folded(&dir.path().join("cpu.folded"));
    for (thread, own, other) in [
        ("spin-a", "spin_a", "spin_b"),
        ("spin-b", "spin_b", "spin_a"),
    ] {
        let of_thread: Vec<(Vec<String>, u64)> = cpu
            .iter()
            .filter(|(frames, _)| frames[0] == thread)
            .cloned()
            .collect();
        let total: u64 = of_thread.iter().map(|(_, weight)| weight).sum();
        let in_own = weight_with_frame(&of_thread, own);
        assert!(total >= 300, "{thread}: {total} samples");
        assert!(
            percent(in_own, total) >= 95.0,
            "{thread}: {in_own} of {total} samples in {own}"
        );
        assert_eq!(
            weight_with_frame(&of_thread, other),
            0,
            "{thread} in {other}"
        );
    }
    // `time.sleep` in `nap` is off-CPU time under `nap`, in the kernel's sleep; the rest of
    // the napper's waits (for the GIL, when it wakes) are under `nap` too.
    let offcpu = read_folded(&dir.path().join("offcpu.folded"));
    let napper: Vec<(Vec<String>, u64)> = offcpu
        .iter()
        .filter(|(frames, _)| frames[0] == "napper")
        .cloned()
        .collect();
    let napper_total: u64 = napper.iter().map(|(_, weight)| weight).sum();
    let sleeping = weight_calling(&napper, "nap", |frame| frame.contains("nanosleep"));
    let in_nap = weight_with_frame(&napper, "nap");
    assert!(
        percent(in_nap, napper_total) >= 95.0 && percent(sleeping, napper_total) >= 50.0,
        "of the napper's {napper_total} µs off CPU, {in_nap} under nap, {sleeping} in its sleep"
    );
    // The file writes and syncs of `write_out` are I/O under it.
    let io = read_folded(&dir.path().join("io.folded"));
    let syncs = weight_calling(&io, "write_out", |frame| frame.starts_with("fsync"));
    let writes: Vec<&(Vec<String>, u64)> = io
        .iter()
        .filter(|(frames, _)| frames.iter().any(|frame| frame == "write_out"))
        .collect();
    assert!(
        syncs > 0,
        "no fsync under write_out in io.folded: {writes:?}"
    );
    assert_nothing_loaded();
}

#[test]
fn python_interpreter_frames_are_kept_on_request() {
    if !have_root("python_interpreter") || !have_runtime("python_interpreter", DEBIAN_PYTHON) {
        return;
    }
    let _serial = serial();
    let (dir, _) = record_command(
        &["--python-interpreter-frames"],
        &python(Path::new(DEBIAN_PYTHON), "hot.py", 1.0),
    );
    let stacks = read_folded(&dir.path().join("cpu.folded"));
    let total: u64 = stacks.iter().map(|(_, weight)| weight).sum();
    // The evaluation loop stays in place under each run of Python functions (the default
    // puts the functions in its place).
    let kept = weight_containing(&stacks, "_PyEval_EvalFrameDefault");
    assert!(percent(kept, total) >= 90.0, "{kept} of {total}");
    assert!(weight_with_frame(&stacks, "hot_a") > 0);
    let (dir, _) = record_command(&[], &python(Path::new(DEBIAN_PYTHON), "hot.py", 1.0));
    let stacks = read_folded(&dir.path().join("cpu.folded"));
    let total: u64 = stacks.iter().map(|(_, weight)| weight).sum();
    // Only samples taken before the collector found the interpreter (its start-up, a few
    // milliseconds) keep the evaluation loop.
    let kept = weight_containing(&stacks, "_PyEval_EvalFrameDefault");
    assert!(percent(kept, total) <= 2.0, "{kept} of {total}");
}
