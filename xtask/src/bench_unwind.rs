//! `bench-unwind`: what walking user stacks with `.eh_frame` tables costs against the kernel's
//! frame-pointer walker and against profile-bee's `--dwarf`, on the same programs built with and
//! without frame pointers.
//!
//! Per-sample cost is the kernel's own accounting of the sampling program
//! (`kernel.bpf_stats_enabled`, read with bpftool while the run is on): run time over runs,
//! tail calls included. Two busy threads keep both CPUs on the target, so nearly every run
//! samples it. Completeness comes from the folded output; start-up from the profiler's
//! `summary.json`; peak RSS from `/proc`.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{profiler_bin, report, root};

#[derive(clap::Args)]
pub struct UnwindBenchArgs {
    /// Runs of each configuration (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds each run samples for.
    #[arg(long, default_value_t = 4)]
    seconds: u64,
    /// Print the results without writing docs/performance/unwind-results.md and
    /// unwind-rustc-results.md.
    #[arg(long)]
    no_write: bool,
    /// Only the big-binary part (rustc).
    #[arg(long)]
    rustc_only: bool,
}

/// Who walks the stacks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unwinder {
    /// `profiler record --unwind fp|dwarf`.
    Profiler(&'static str),
    /// `probee --dwarf -p PID`.
    ProfileBee,
}

impl Unwinder {
    fn label(self) -> String {
        match self {
            Unwinder::Profiler(mode) => format!("profiler `--unwind {mode}`"),
            Unwinder::ProfileBee => "profile-bee 0.3.13 `--dwarf`".to_owned(),
        }
    }

    /// Name of the perf-event program whose run time is the cost per sample (tail calls
    /// included).
    fn sampling_program(self) -> &'static str {
        match self {
            Unwinder::Profiler(_) => "cpu_sample",
            Unwinder::ProfileBee => "profile_cpu",
        }
    }
}

/// One run's figures.
#[derive(Default)]
struct UnwindRun {
    ns_per_sample: f64,
    complete_percent: f64,
    attach_ms: f64,
    first_sample_ms: f64,
    build_ms: f64,
    rows: f64,
    peak_rss_mib: f64,
}

/// Builds `tests/programs/unwind_stacks.c` with the given frame-pointer flag.
fn compile_variant(suffix: &str, flag: &str) -> anyhow::Result<PathBuf> {
    let out_dir = root().join("target/programs");
    std::fs::create_dir_all(&out_dir)?;
    let output = out_dir.join(format!("unwind_stacks_{suffix}"));
    crate::run(
        Command::new("cc")
            .args(["-O2", "-g", flag, "-pthread", "-o"])
            .arg(&output)
            .arg(root().join("tests/programs/unwind_stacks.c"))
            .arg(format!("-I{}", root().join("tests/programs").display())),
    )?;
    Ok(output)
}

/// (run time ns, runs) of the loaded program named `name`, if loaded.
pub(crate) fn program_stats(name: &str) -> Option<(u64, u64)> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "name", name, "--json"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let program = if value.is_array() {
        value.get(0)?.clone()
    } else {
        value
    };
    Some((
        program.get("run_time_ns")?.as_u64()?,
        program.get("run_cnt")?.as_u64()?,
    ))
}

/// Share of the samples in a folded file whose stack starts at an entry function.
pub(crate) fn folded_complete_percent(path: &Path) -> f64 {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (mut total, mut complete) = (0u64, 0u64);
    for line in text.lines() {
        let Some((stack, count)) = line.rsplit_once(' ') else {
            continue;
        };
        let count: u64 = count.parse().unwrap_or(0);
        total += count;
        // Thread name first; profile-bee puts an `[unknown]` frame before `_start`.
        if stack
            .split(';')
            .skip(1)
            .take(2)
            .any(|frame| ["_start", "clone3", "__clone3"].contains(&frame))
        {
            complete += count;
        }
    }
    if total == 0 {
        0.0
    } else {
        100.0 * complete as f64 / total as f64
    }
}

fn measure(
    program: &Path,
    mode: &str,
    unwinder: Unwinder,
    seconds: u64,
    scratch: &Path,
) -> anyhow::Result<UnwindRun> {
    let name = program.file_name().unwrap_or_default().to_string_lossy();
    let out_dir = scratch.join(format!(
        "{name}-{mode}-{}",
        match unwinder {
            Unwinder::Profiler(unwind) => unwind,
            Unwinder::ProfileBee => "profile-bee",
        }
    ));
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir)?;
    // One process, two busy threads: every CPU samples the target.
    let mut workload = None;
    let started = Instant::now();
    let mut child = match unwinder {
        Unwinder::Profiler(unwind) => Command::new(profiler_bin())
            .args(["record", "-F", "999", "--unwind", unwind, "-o"])
            .arg(&out_dir)
            .arg("--")
            .arg(program)
            .args([mode, &seconds.to_string(), "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the profiler")?,
        Unwinder::ProfileBee => {
            // Attached to a running process: launched by profile-bee, the process exits
            // before it symbolizes and every frame is lost.
            let target = Command::new(program)
                .args([mode, &(seconds + 2).to_string(), "2"])
                .spawn()?;
            std::thread::sleep(Duration::from_millis(300));
            let pid = target.id();
            workload = Some(target);
            Command::new(profile_bee()?)
                .args(["--dwarf", "-f", "999", "-t", &(seconds * 1000).to_string()])
                .args(["-p", &pid.to_string(), "-o"])
                .arg(out_dir.join("cpu.folded"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting profile-bee")?
        }
    };
    let mut stats = None;
    let mut attached_ms = None;
    let mut rss = 0;
    while child.try_wait()?.is_none() {
        if started.elapsed() > Duration::from_secs(seconds + 60) {
            let _ = child.kill();
            bail!("{} did not finish", unwinder.label());
        }
        if let Some(reading) = program_stats(unwinder.sampling_program()) {
            attached_ms.get_or_insert(started.elapsed().as_secs_f64() * 1000.0);
            stats = Some(reading);
        }
        rss = rss.max(crate::bench::status_kib(child.id(), "VmHWM").unwrap_or(0));
        std::thread::sleep(Duration::from_millis(if attached_ms.is_some() {
            200
        } else {
            10
        }));
    }
    if let Some(mut workload) = workload {
        let _ = workload.wait();
    }
    let Some((run_time_ns, runs)) = stats.filter(|&(_, runs)| runs > 0) else {
        bail!("no run statistics for {}", unwinder.label());
    };
    let mut run = UnwindRun {
        ns_per_sample: run_time_ns as f64 / runs as f64,
        complete_percent: folded_complete_percent(&out_dir.join("cpu.folded")),
        attach_ms: attached_ms.unwrap_or(0.0),
        peak_rss_mib: rss as f64 / 1024.0,
        ..UnwindRun::default()
    };
    if let Unwinder::Profiler(_) = unwinder {
        let summary: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out_dir.join("summary.json")).context("summary.json")?,
        )?;
        let number = |pointer: &str| summary.pointer(pointer).and_then(serde_json::Value::as_f64);
        run.attach_ms = number("/attach_ms").unwrap_or(0.0);
        run.first_sample_ms = number("/first_sample_ms").unwrap_or(0.0);
        run.build_ms = number("/unwind/build_ms").unwrap_or(0.0);
        run.rows = number("/unwind/rows").unwrap_or(0.0);
    }
    Ok(run)
}

/// profile-bee's binary: on `PATH`, or installed into `target/peers` (a 10-minute build).
pub(crate) fn profile_bee() -> anyhow::Result<PathBuf> {
    let installed = root().join("target/peers/bin/probee");
    if installed.exists() {
        return Ok(installed);
    }
    if Command::new("probee")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(PathBuf::from("probee"));
    }
    eprintln!("bench: building profile-bee 0.3.13 (about 10 minutes)");
    crate::run(
        Command::new("cargo")
            .args([
                "install",
                "profile-bee@0.3.13",
                "--locked",
                "--no-default-features",
            ])
            .arg("--root")
            .arg(root().join("target/peers")),
    )?;
    Ok(installed)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Turns on the kernel's per-program run statistics for the benchmark's duration.
pub(crate) struct BpfStats {
    previous: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub(crate) fn enable() -> anyhow::Result<Self> {
        let previous = std::fs::read_to_string(BPF_STATS).context("reading bpf_stats_enabled")?;
        std::fs::write(BPF_STATS, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(BpfStats { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, self.previous.trim());
    }
}

pub fn unwind(args: &UnwindBenchArgs) -> anyhow::Result<()> {
    crate::bench::ensure_tools()?;
    if !args.rustc_only {
        small_programs(args)?;
    }
    let scratch = root().join("target/bench-unwind");
    std::fs::create_dir_all(&scratch)?;
    let section = crate::bench_rustc::section(args.runs, &scratch)?;
    let page = format!(
        "# Stack unwinding, a big binary: latest results\n\n\
         Generated by `cargo xtask bench-unwind --runs {}` on {}. Method: see \
         [README.md](README.md#stack-unwinding-bench-unwind).\n\n{section}",
        args.runs,
        report::machine(),
    );
    report::publish("unwind-rustc-results.md", &page, !args.no_write)
}

/// The small programs, with and without frame pointers, against profile-bee.
fn small_programs(args: &UnwindBenchArgs) -> anyhow::Result<()> {
    let _stats = BpfStats::enable()?;
    let binaries = [
        compile_variant("fp", "-fno-omit-frame-pointer")?,
        compile_variant("nofp", "-fomit-frame-pointer")?,
    ];
    let scratch = root().join("target/bench-unwind");
    std::fs::create_dir_all(&scratch)?;
    profile_bee()?;
    let mut configs = Vec::new();
    for binary in &binaries {
        for mode in ["leaf", "deep"] {
            for unwinder in [
                Unwinder::Profiler("fp"),
                Unwinder::Profiler("dwarf"),
                Unwinder::ProfileBee,
            ] {
                configs.push((binary.clone(), mode, unwinder));
            }
        }
    }
    let mut results: Vec<Vec<UnwindRun>> = configs.iter().map(|_| Vec::new()).collect();
    for run in 0..args.runs {
        for (index, (binary, mode, unwinder)) in configs.iter().enumerate() {
            let m = measure(binary, mode, *unwinder, args.seconds, &scratch)?;
            eprintln!(
                "bench: run {}/{} {} {mode} {}: {:.0} ns/sample, {:.1}% complete, tables {:.0} ms",
                run + 1,
                args.runs,
                binary.file_name().unwrap_or_default().to_string_lossy(),
                unwinder.label(),
                m.ns_per_sample,
                m.complete_percent,
                m.build_ms
            );
            results[index].push(m);
        }
    }
    let mut table = String::from(
        "| program | stack | unwinder | kernel time per sample | complete stacks | \
         attached after | first sample after | tables built in | table rows | peak RSS |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for ((binary, mode, unwinder), runs) in configs.iter().zip(&results) {
        let dwarf = *unwinder == Unwinder::Profiler("dwarf");
        let pick = |f: fn(&UnwindRun) -> f64| median(runs.iter().map(f).collect());
        let stack = match *mode {
            "leaf" => "7 frames, hot leaf",
            _ => "307 frames (recursion)",
        };
        let _ = writeln!(
            table,
            "| `{}` | {stack} | {} | {:.2} µs | {:.1}% | {:.0} ms | {} | {} | {} | {:.1} MiB |",
            binary.file_name().unwrap_or_default().to_string_lossy(),
            unwinder.label(),
            pick(|m| m.ns_per_sample) / 1000.0,
            pick(|m| m.complete_percent),
            pick(|m| m.attach_ms),
            if let Unwinder::Profiler(_) = unwinder {
                format!("{:.0} ms", pick(|m| m.first_sample_ms))
            } else {
                "—".to_owned()
            },
            if dwarf {
                format!("{:.0} ms", pick(|m| m.build_ms))
            } else {
                "—".to_owned()
            },
            if dwarf {
                format!("{:.0}", pick(|m| m.rows))
            } else {
                "—".to_owned()
            },
            pick(|m| m.peak_rss_mib),
        );
    }
    let page = format!(
        "# Stack unwinding cost: latest results\n\n\
         Generated by `cargo xtask bench-unwind --runs {} --seconds {}` on {}. \
         Method: see [README.md](README.md#stack-unwinding-bench-unwind). Workload: \
         `tests/programs/unwind_stacks.c` built with `-O2 -fno-omit-frame-pointer` (`_fp`) \
         and `-O2 -fomit-frame-pointer` (`_nofp`), two busy threads, sampled at 999 Hz; \
         medians of {} runs. The profiler launches the workload (`record`); profile-bee \
         attaches to it (`-p`), its attach time measured from its start to its sampling \
         program appearing.\n\n{table}",
        args.runs,
        args.seconds,
        report::machine(),
        args.runs,
    );
    report::publish("unwind-results.md", &page, !args.no_write)
}
