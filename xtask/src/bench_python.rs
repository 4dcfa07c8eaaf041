//! `bench-python`: what reading Python frames costs, per sample and to a Python workload,
//! against py-spy on the same run.
//!
//! The workload (Debian's python3.11) calls a hot pair of functions twelve Python frames deep
//! and counts its rounds over a fixed window. Each round of the benchmark runs it, interleaved:
//! alone; under `profiler attach` at 99 and 999 Hz; the same at 999 Hz with
//! `--no-python-frames` (native stacks only: the baseline of the per-sample cost); and under
//! `py-spy record` at 99 and 999 Hz (its default, which stops the target to read it). Per-sample
//! cost is the kernel's accounting of the sampling program (`kernel.bpf_stats_enabled`).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{
    bench_unwind::{BpfStats, program_stats},
    profiler_bin, report, root,
};

#[derive(clap::Args)]
pub struct PythonBenchArgs {
    /// Interleaved rounds (the median and range are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds each workload runs (each tool samples from 1 s after its start to 1 s before
    /// its end).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Print the results without writing docs/performance/python-results.md.
    #[arg(long)]
    no_write: bool,
}

const PYTHON: &str = "/usr/bin/python3.11";
const PY_SPY_VERSION: &str = "0.4.3";

/// Rounds of `hot_a` + `hot_b` calls (the runtime tests' `tests/runtimes/hot.py`, on
/// `sys.path` as argv[2]), through a twelve-frame chain, counted over argv[1] seconds.
const WORKLOAD: &str = r#"
import sys, time

sys.path.insert(0, sys.argv[2])
from hot import hot_a, hot_b

def chain(depth):
    if depth == 0:
        hot_a(700)
        hot_b(300)
    else:
        chain(depth - 1)

def main(seconds):
    end = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < end:
        chain(10)
        rounds += 1
    print("rounds", rounds)

main(float(sys.argv[1]))
"#;

/// py-spy: on `PATH`, or unpacked from its wheel on PyPI into `target/peers`.
fn py_spy() -> anyhow::Result<PathBuf> {
    if Command::new("py-spy")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(PathBuf::from("py-spy"));
    }
    let peers = root().join("target/peers");
    let unpacked = peers.join(format!("py-spy-{PY_SPY_VERSION}"));
    let binary = unpacked.join(format!("py_spy-{PY_SPY_VERSION}.data/scripts/py-spy"));
    if binary.exists() {
        return Ok(binary);
    }
    eprintln!("bench: fetching py-spy {PY_SPY_VERSION} from PyPI");
    let wheels = peers.join("wheels");
    crate::run(
        Command::new("pip")
            .args(["download", "--no-deps", "--only-binary=:all:", "-d"])
            .arg(&wheels)
            .arg(format!("py-spy=={PY_SPY_VERSION}")),
    )?;
    let wheel = std::fs::read_dir(&wheels)?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.to_string_lossy().contains("py_spy"))
        .context("pip downloaded no py-spy wheel")?;
    crate::run(
        Command::new(PYTHON)
            .args(["-m", "zipfile", "-e"])
            .arg(&wheel)
            .arg(&unpacked),
    )?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755))?;
    Ok(binary)
}

fn start(script: &Path, seconds: u64) -> anyhow::Result<Child> {
    Command::new(PYTHON)
        // No bytecode cache written into tests/runtimes.
        .arg("-B")
        .arg(script)
        .arg(seconds.to_string())
        .arg(root().join("tests/runtimes"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting python3.11")
}

/// Rounds per second the workload printed.
fn throughput(child: Child, seconds: u64) -> anyhow::Result<f64> {
    crate::bench::rounds_per_second(child, seconds as f64)
}

/// One profiler run: the workload's throughput and the sampling program's ns per run.
fn profiler_run(
    script: &Path,
    scratch: &Path,
    seconds: u64,
    hz: u32,
    extra: &[&str],
) -> anyhow::Result<(f64, f64)> {
    let workload = start(script, seconds)?;
    std::thread::sleep(Duration::from_secs(1));
    let out = scratch.join("profile");
    let _ = std::fs::remove_dir_all(&out);
    let mut profiler = Command::new(profiler_bin())
        .args([
            "attach",
            "-F",
            &hz.to_string(),
            "-d",
            &(seconds - 2).to_string(),
        ])
        .args(extra)
        .arg("-o")
        .arg(&out)
        .arg(workload.id().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stats = None;
    while profiler.try_wait()?.is_none() {
        if let Some(reading) = program_stats("cpu_sample") {
            stats = Some(reading);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let rate = throughput(workload, seconds)?;
    let Some((run_time_ns, runs)) = stats.filter(|&(_, runs)| runs > 0) else {
        bail!("no run statistics for cpu_sample");
    };
    let folded = std::fs::read_to_string(out.join("cpu.folded")).unwrap_or_default();
    if !extra.contains(&"--no-python-frames") && !folded.contains("hot_a") {
        bail!("the profile names no Python function");
    }
    Ok((rate, run_time_ns as f64 / runs as f64))
}

fn py_spy_run(
    py_spy: &Path,
    script: &Path,
    scratch: &Path,
    seconds: u64,
    hz: u32,
) -> anyhow::Result<f64> {
    let workload = start(script, seconds)?;
    std::thread::sleep(Duration::from_secs(1));
    let out = scratch.join("py-spy.txt");
    let _ = std::fs::remove_file(&out);
    let status = Command::new(py_spy)
        .args(["record", "-f", "raw", "-r", &hz.to_string(), "-d"])
        .arg((seconds - 2).to_string())
        .arg("-o")
        .arg(&out)
        .args(["-p", &workload.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    let rate = throughput(workload, seconds)?;
    if !status.success()
        || !std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("hot_a")
    {
        bail!("py-spy record failed ({status})");
    }
    Ok(rate)
}

pub fn python(args: &PythonBenchArgs) -> anyhow::Result<()> {
    crate::bench::ensure_tools()?;
    if args.seconds < 4 {
        bail!("--seconds must be at least 4");
    }
    let _stats = BpfStats::enable()?;
    let py_spy = py_spy()?;
    let scratch = root().join("target/bench-python");
    std::fs::create_dir_all(&scratch)?;
    let script = scratch.join("workload.py");
    std::fs::write(&script, WORKLOAD)?;
    let seconds = args.seconds;
    let mut alone = Vec::new();
    let (mut ours_99, mut ours_999, mut native_999) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ns_python, mut ns_native) = (Vec::new(), Vec::new());
    let (mut spy_99, mut spy_999) = (Vec::new(), Vec::new());
    for round in 0..args.runs {
        alone.push(throughput(start(&script, seconds)?, seconds)?);
        ours_99.push(profiler_run(&script, &scratch, seconds, 99, &[])?.0);
        let (rate, ns) = profiler_run(&script, &scratch, seconds, 999, &[])?;
        ours_999.push(rate);
        ns_python.push(ns);
        let (rate, ns) = profiler_run(&script, &scratch, seconds, 999, &["--no-python-frames"])?;
        native_999.push(rate);
        ns_native.push(ns);
        spy_99.push(py_spy_run(&py_spy, &script, &scratch, seconds, 99)?);
        spy_999.push(py_spy_run(&py_spy, &script, &scratch, seconds, 999)?);
        eprintln!(
            "bench: round {}/{}: alone {:.0}/s; profiler 99 Hz {:.0}, 999 Hz {:.0} ({:.0} ns a \
             sample; {:.0} without Python frames, {:.0}/s); py-spy 99 Hz {:.0}, 999 Hz {:.0}",
            round + 1,
            args.runs,
            alone[round],
            ours_99[round],
            ours_999[round],
            ns_python[round],
            ns_native[round],
            native_999[round],
            spy_99[round],
            spy_999[round],
        );
    }
    let added: Vec<f64> = ns_python
        .iter()
        .zip(&ns_native)
        .map(|(python, native)| python - native)
        .collect();
    let row = |label: &str, values: &[f64]| {
        format!(
            "| {label} | {} | {} |\n",
            report::median_and_range(values, 0, ""),
            report::paired_ratio(values, &alone)
        )
    };
    let alone_row = format!(
        "| alone | {} | — |\n",
        report::median_and_range(&alone, 0, "")
    );
    let page = format!(
        "# Python frames: latest results\n\n\
         Generated by `cargo xtask bench-python --runs {runs} --seconds {seconds}` on {machine}. \
         Method: see [README.md](README.md#python-frames-bench-python). Debian's python3.11 \
         calling `hot_a` and `hot_b` through twelve Python frames, rounds per second over \
         {seconds} s, each tool attached from 1 s after the start to 1 s before the end; \
         {runs} interleaved rounds, median and range.\n\n\
         | run | rounds/s | against alone, same round |\n|---|---:|---:|\n\
         {alone_row}{ours_99_row}{ours_999_row}{native_row}{spy_99_row}{spy_999_row}\n\
         | sampling program (`cpu_sample`), per run | ns |\n|---|---:|\n\
         | with Python frames (14 a stack) | {ns_python} |\n\
         | `--no-python-frames` (native frames only) | {ns_native} |\n\
         | added by the Python frames, same round | {added} |\n",
        runs = args.runs,
        machine = report::machine(),
        alone_row = alone_row,
        ours_99_row = row("`profiler attach -F 99`", &ours_99),
        ours_999_row = row("`profiler attach -F 999`", &ours_999),
        native_row = row("`profiler attach -F 999 --no-python-frames`", &native_999),
        spy_99_row = row(
            "`py-spy record -r 99` (stops the target to read it)",
            &spy_99
        ),
        spy_999_row = row("`py-spy record -r 999`", &spy_999),
        ns_python = report::median_and_range(&ns_python, 0, " ns"),
        ns_native = report::median_and_range(&ns_native, 0, " ns"),
        added = report::median_and_range(&added, 0, " ns"),
    );
    report::publish("python-results.md", &page, !args.no_write)
}
