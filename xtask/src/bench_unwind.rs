//! `bench-unwind`: what walking user stacks with `.eh_frame` tables costs against the kernel's
//! frame-pointer walker, on the same programs built with and without frame pointers.
//!
//! Per-sample cost is the kernel's own accounting of the sampling program
//! (`kernel.bpf_stats_enabled`, read with bpftool while the run is on): run time over runs.
//! Two copies of the workload keep both CPUs busy, so nearly every run samples a target.
//! Start-up (attach, first sample, table build) and stack completeness come from the
//! profiler's `summary.json`; the profiler's peak RSS from `/proc`.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{profiler_bin, root};

#[derive(clap::Args)]
pub struct UnwindBenchArgs {
    /// Runs of each configuration (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds each run samples for.
    #[arg(long, default_value_t = 4)]
    seconds: u64,
    /// Print the results without writing docs/performance/unwind-results.md.
    #[arg(long)]
    no_write: bool,
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

/// (run time ns, runs) of the loaded program named `cpu_sample`, if loaded.
fn sampling_program_stats() -> Option<(u64, u64)> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "name", "cpu_sample", "--json"])
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

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
}

fn measure(
    program: &Path,
    mode: &str,
    unwind: &str,
    seconds: u64,
    scratch: &Path,
) -> anyhow::Result<UnwindRun> {
    let out_dir = scratch.join(format!(
        "{}-{mode}-{unwind}",
        program.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = std::fs::remove_dir_all(&out_dir);
    // Two copies, one per CPU: nearly every sample lands in a target.
    let script = format!(
        "'{p}' {mode} {seconds} & '{p}' {mode} {seconds}; wait",
        p = program.display()
    );
    let mut child = Command::new(profiler_bin())
        .args(["record", "-F", "999", "--unwind", unwind, "-o"])
        .arg(&out_dir)
        .args(["--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the profiler")?;
    let mut stats = None;
    let mut rss = 0;
    let started = Instant::now();
    while child.try_wait()?.is_none() {
        if started.elapsed() > Duration::from_secs(seconds + 60) {
            let _ = child.kill();
            bail!("the profiler did not finish");
        }
        if let Some(reading) = sampling_program_stats() {
            stats = Some(reading);
        }
        rss = rss.max(peak_rss_kib(child.id()).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(200));
    }
    let Some((run_time_ns, runs)) = stats.filter(|&(_, runs)| runs > 0) else {
        bail!("no run statistics for cpu_sample (is kernel.bpf_stats_enabled on?)");
    };
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join("summary.json")).context("summary.json")?,
    )?;
    let number = |pointer: &str| summary.pointer(pointer).and_then(serde_json::Value::as_f64);
    Ok(UnwindRun {
        ns_per_sample: run_time_ns as f64 / runs as f64,
        complete_percent: number("/quality/complete_stacks_percent").unwrap_or(0.0),
        attach_ms: number("/attach_ms").unwrap_or(0.0),
        first_sample_ms: number("/first_sample_ms").unwrap_or(0.0),
        build_ms: number("/unwind/build_ms").unwrap_or(0.0),
        rows: number("/unwind/rows").unwrap_or(0.0),
        peak_rss_mib: rss as f64 / 1024.0,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Turns on the kernel's per-program run statistics for the benchmark's duration.
struct BpfStats {
    previous: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> anyhow::Result<Self> {
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
    let _stats = BpfStats::enable()?;
    let binaries = [
        compile_variant("fp", "-fno-omit-frame-pointer")?,
        compile_variant("nofp", "-fomit-frame-pointer")?,
    ];
    let scratch = root().join("target/bench-unwind");
    std::fs::create_dir_all(&scratch)?;
    let mut configs = Vec::new();
    for binary in &binaries {
        for mode in ["leaf", "deep"] {
            for unwind in ["fp", "dwarf"] {
                configs.push((binary.clone(), mode, unwind));
            }
        }
    }
    let mut results: Vec<Vec<UnwindRun>> = configs.iter().map(|_| Vec::new()).collect();
    for run in 0..args.runs {
        for (index, (binary, mode, unwind)) in configs.iter().enumerate() {
            let m = measure(binary, mode, unwind, args.seconds, &scratch)?;
            eprintln!(
                "bench: run {}/{} {} {mode} --unwind {unwind}: {:.0} ns/sample, {:.1}% complete, \
                 tables {:.0} ms",
                run + 1,
                args.runs,
                binary.file_name().unwrap_or_default().to_string_lossy(),
                m.ns_per_sample,
                m.complete_percent,
                m.build_ms
            );
            results[index].push(m);
        }
    }
    let mut table = String::from(
        "| program | stack | `--unwind` | kernel time per sample | complete stacks | \
         attached after | first sample after | tables built in | table rows | profiler peak RSS |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for ((binary, mode, unwind), runs) in configs.iter().zip(&results) {
        let pick = |f: fn(&UnwindRun) -> f64| median(runs.iter().map(f).collect());
        let stack = match *mode {
            "leaf" => "7 frames, hot leaf",
            _ => "307 frames (recursion)",
        };
        let _ = writeln!(
            table,
            "| `{}` | {stack} | {unwind} | {:.2} µs | {:.1}% | {:.0} ms | {:.0} ms | {} | {} | {:.1} MiB |",
            binary.file_name().unwrap_or_default().to_string_lossy(),
            pick(|m| m.ns_per_sample) / 1000.0,
            pick(|m| m.complete_percent),
            pick(|m| m.attach_ms),
            pick(|m| m.first_sample_ms),
            if *unwind == "dwarf" {
                format!("{:.0} ms", pick(|m| m.build_ms))
            } else {
                "—".to_owned()
            },
            if *unwind == "dwarf" {
                format!("{:.0}", pick(|m| m.rows))
            } else {
                "—".to_owned()
            },
            pick(|m| m.peak_rss_mib),
        );
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let report = format!(
        "# Stack unwinding cost: latest results\n\n\
         Generated by `cargo xtask bench-unwind --runs {} --seconds {}` on {date}, kernel {}, \
         {} CPUs. Method: see [README.md](README.md#stack-unwinding-bench-unwind). Workload: \
         `tests/programs/unwind_stacks.c` built with `-O2 -fno-omit-frame-pointer` (`_fp`) \
         and `-O2 -fomit-frame-pointer` (`_nofp`), two copies at once, sampled at 999 Hz; \
         medians of {} runs.\n\n{table}",
        args.runs,
        args.seconds,
        kernel.trim(),
        std::thread::available_parallelism().map_or(0, usize::from),
        args.runs,
    );
    println!("{report}");
    if !args.no_write {
        let path = root().join("docs/performance/unwind-results.md");
        std::fs::write(&path, report)?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}
