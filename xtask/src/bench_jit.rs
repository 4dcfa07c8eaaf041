//! `bench-jit`: what naming a JVM's compiled methods costs, on a JVM with 20 000+ of them.
//!
//! The workload (generated Java: 50 classes of 500 small methods, every one called each round)
//! counts its rounds over a fixed window. Each round of the benchmark runs it three ways,
//! interleaved: alone, under `profiler attach` (which asks the JVM for its perf map at once,
//! after 1, 2, 4 s and every 8 s, and reads it), and under `perf record -g` (the peer, which
//! reads no map while recording). Reported: the workload's throughput against running alone in
//! the same round, the methods in the map, how long the JVM took to write it (longest
//! request), and the collector's time reading maps over the run.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{profiler_bin, report, root};

#[derive(clap::Args)]
pub struct JitBenchArgs {
    /// Interleaved rounds (the median and range are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds each workload runs (its first 4 s, while it compiles, are not counted).
    #[arg(long, default_value_t = 16)]
    seconds: u64,
    /// Print the results without writing docs/performance/jit-results.md.
    #[arg(long)]
    no_write: bool,
}

const CLASSES: usize = 50;
const METHODS_PER_CLASS: usize = 500;
const WARM_UP_SECS: u64 = 4;

/// Writes and compiles the workload; returns its class folder.
fn workload(scratch: &Path) -> anyhow::Result<PathBuf> {
    let sources = scratch.join("src");
    let classes = scratch.join("classes");
    std::fs::create_dir_all(&sources)?;
    std::fs::create_dir_all(&classes)?;
    for class in 0..CLASSES {
        let mut text = format!("public class C{class} {{\n");
        for method in 0..METHODS_PER_CLASS {
            let constant = 2 * (class * METHODS_PER_CLASS + method) + 1;
            let shift = 1 + method % 13;
            let _ = writeln!(
                text,
                "    static long m{method}(long x) {{ return x * {constant}L + (x >>> {shift}); }}"
            );
        }
        text.push_str("    static long all(long x) {\n");
        for method in 0..METHODS_PER_CLASS {
            let _ = writeln!(text, "        x = m{method}(x);");
        }
        text.push_str("        return x;\n    }\n}\n");
        std::fs::write(sources.join(format!("C{class}.java")), text)?;
    }
    let mut main = String::from(
        "public class Main {\n    public static void main(String[] args) {\n        \
         long start = System.nanoTime();\n        \
         long from = start + Long.parseLong(args[1]) * 1_000_000_000L;\n        \
         long end = start + Long.parseLong(args[0]) * 1_000_000_000L;\n        \
         long x = 1, rounds = 0;\n        while (true) {\n",
    );
    for class in 0..CLASSES {
        let _ = writeln!(main, "            x = C{class}.all(x);");
    }
    main.push_str(
        "            long now = System.nanoTime();\n            \
         if (now >= end) break;\n            if (now >= from) rounds++;\n        }\n        \
         System.out.println(\"rounds \" + rounds + \" \" + (x & 1));\n    }\n}\n",
    );
    std::fs::write(sources.join("Main.java"), main)?;
    let files: Vec<PathBuf> = std::fs::read_dir(&sources)?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()?;
    crate::run(Command::new("javac").arg("-d").arg(&classes).args(&files))?;
    Ok(classes)
}

fn start_jvm(classes: &Path, seconds: u64) -> anyhow::Result<Child> {
    // Every method compiled at its first call (`-Xcomp`), by C1 only: all of them within the
    // warm-up, and no C2 recompilation waves to make the throughput wander between runs; not
    // inlined, so each is compiled on its own (and named).
    Command::new("java")
        .args([
            "-Xcomp",
            "-XX:TieredStopAtLevel=1",
            "-XX:CompileCommand=quiet",
            "-XX:CompileCommand=dontinline,C*.m*",
        ])
        .arg("-cp")
        .arg(classes)
        .args(["Main", &seconds.to_string(), &WARM_UP_SECS.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting java (openjdk-17-jdk-headless)")
}

/// Rounds per second the workload printed, over the time it counted them.
fn throughput(child: Child, seconds: u64) -> anyhow::Result<f64> {
    crate::bench::rounds_per_second(child, (seconds - WARM_UP_SECS) as f64)
}

/// What the profiler's summary says of the JIT names.
struct Naming {
    functions: f64,
    maps_written: f64,
    request_ms: f64,
    read_ms: f64,
}

pub fn jit(args: &JitBenchArgs) -> anyhow::Result<()> {
    crate::bench::ensure_tools()?;
    if args.seconds <= WARM_UP_SECS + 2 {
        bail!("--seconds must be over {}", WARM_UP_SECS + 2);
    }
    let scratch = root().join("target/bench-jit");
    let classes = workload(&scratch)?;
    let seconds = args.seconds;
    // Attached 1 s after the start, stopped a second before the workload ends.
    let tool_seconds = (seconds - 2).to_string();
    let (mut alone, mut profiled, mut perf) = (Vec::new(), Vec::new(), Vec::new());
    let mut naming = Vec::new();
    for round in 0..args.runs {
        alone.push(throughput(start_jvm(&classes, seconds)?, seconds)?);

        let jvm = start_jvm(&classes, seconds)?;
        std::thread::sleep(Duration::from_secs(1));
        let out = scratch.join("profile");
        let _ = std::fs::remove_dir_all(&out);
        let status = Command::new(profiler_bin())
            .args(["attach", "-d", &tool_seconds, "-o"])
            .arg(&out)
            .arg(jvm.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        profiled.push(throughput(jvm, seconds)?);
        if !status.success() {
            bail!("profiler attach failed: {status}");
        }
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json"))?)?;
        let jit = &summary["jit"];
        let number = |key: &str| jit[key].as_f64().unwrap_or(0.0);
        naming.push(Naming {
            functions: number("functions"),
            maps_written: number("jvm_maps_written"),
            request_ms: number("jvm_request_ms_max"),
            read_ms: number("read_ms"),
        });

        let jvm = start_jvm(&classes, seconds)?;
        std::thread::sleep(Duration::from_secs(1));
        let data = scratch.join("perf.data");
        let _ = std::fs::remove_file(&data);
        let recorder = Command::new("perf")
            .args(["record", "-g", "-F", "99", "-o"])
            .arg(&data)
            .args(["-p", &jvm.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        std::thread::sleep(Duration::from_secs(seconds - 2));
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(recorder.id() as libc::pid_t, libc::SIGINT) };
        recorder.wait_with_output()?;
        perf.push(throughput(jvm, seconds)?);
        if std::fs::metadata(&data).map_or(0, |m| m.len()) == 0 {
            bail!("perf record wrote nothing");
        }
        let last = naming.last().expect("pushed above");
        eprintln!(
            "bench: round {}/{}: alone {:.0}/s, profiler {:.0}/s, perf {:.0}/s; {} methods, \
             {} maps, longest {:.1} ms, read {:.1} ms",
            round + 1,
            args.runs,
            alone[round],
            profiled[round],
            perf[round],
            last.functions,
            last.maps_written,
            last.request_ms,
            last.read_ms
        );
    }
    let column = |pick: fn(&Naming) -> f64| naming.iter().map(pick).collect::<Vec<f64>>();
    let page = format!(
        "# JIT names: latest results\n\n\
         Generated by `cargo xtask bench-jit --runs {runs} --seconds {seconds}` on {machine}. \
         Method: see [README.md](README.md#jit-names-bench-jit). A JVM (OpenJDK 17, every method \
         compiled at its first call by C1: `-Xcomp -XX:TieredStopAtLevel=1`) running generated code, {CLASSES} classes of \
         {METHODS_PER_CLASS} small methods (not inlined, so each is compiled) all called every \
         round; rounds per second after a {WARM_UP_SECS} s warm-up, with each tool attached 1 s \
         after the start until 1 s before the end; {runs} interleaved rounds, median and range.\n\n\
         | run | rounds/s | against alone, same round |\n|---|---:|---:|\n\
         | alone | {alone} | — |\n\
         | `profiler attach` (99 Hz; asks for the perf map at 0, 1, 2, 4 s, then every 8 s) | \
         {profiled} | {profiled_ratio} |\n\
         | `perf record -g -F 99` (reads no map while recording) | {perf} | {perf_ratio} |\n\n\
         | naming, per profiler run | |\n|---|---:|\n\
         | compiled methods named (JVM's map) | {functions} |\n\
         | maps the JVM wrote at the profiler's request | {maps} |\n\
         | longest the JVM took to write its map and answer | {request} |\n\
         | collector's time reading the maps, whole run | {read} |\n",
        runs = args.runs,
        machine = report::machine(),
        alone = report::median_and_range(&alone, 0, ""),
        profiled = report::median_and_range(&profiled, 0, ""),
        profiled_ratio = report::paired_ratio(&profiled, &alone),
        perf = report::median_and_range(&perf, 0, ""),
        perf_ratio = report::paired_ratio(&perf, &alone),
        functions = report::median_and_range(&column(|n| n.functions), 0, ""),
        maps = report::median_and_range(&column(|n| n.maps_written), 0, ""),
        request = report::median_and_range(&column(|n| n.request_ms), 1, " ms"),
        read = report::median_and_range(&column(|n| n.read_ms), 1, " ms"),
    );
    report::publish("jit-results.md", &page, !args.no_write)
}
