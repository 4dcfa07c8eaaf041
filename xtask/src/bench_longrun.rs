//! `bench-longrun`: an incident-length capture over a program with many distinct stacks,
//! against perf. Two threads take pseudo-random call paths (`unwind_random_paths.c`, built
//! with frame pointers so perf's `-g` walks them too); each tool attaches to it for the same
//! time at the same frequency. Reported per tool: samples, the share whose stack reaches the
//! thread function, the tool's own CPU time and peak RSS (`wait4`), its RSS after 10 s and at
//! the end (flat or growing), and how long it took to stop after the capture ended.

use std::{
    fmt::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{compile_program, profiler_bin, report, root};

#[derive(clap::Args)]
pub struct LongRunBenchArgs {
    /// Rounds (each tool once per round, in turn); medians and ranges are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds each tool captures.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Sampling frequency, Hz.
    #[arg(long, default_value_t = 999)]
    frequency: u64,
    /// Print the results without writing docs/performance/longrun-results.md.
    #[arg(long)]
    no_write: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tool {
    Profiler,
    Perf,
}

impl Tool {
    fn label(self) -> &'static str {
        match self {
            Tool::Profiler => "profiler `attach -e cpu`",
            Tool::Perf => "perf `record -g`",
        }
    }
}

/// One capture's figures.
#[derive(Default, Clone, Copy)]
struct Capture {
    samples: f64,
    whole_percent: f64,
    cpu_s: f64,
    peak_rss_mib: f64,
    rss_10s_mib: f64,
    rss_end_mib: f64,
    stop_s: f64,
    /// perf: `perf script` after the capture, the step that turns samples into stacks.
    post_s: f64,
}

/// Share (percent) and count of the samples in folded `text` whose stack has `frame`.
fn folded_share(text: &str, frame: &str) -> (f64, f64) {
    let (mut all, mut with) = (0u64, 0u64);
    for line in text.lines() {
        let Some((stack, weight)) = line.rsplit_once(' ') else {
            continue;
        };
        let weight: u64 = weight.parse().unwrap_or(0);
        all += weight;
        if stack.split(';').any(|f| f == frame) {
            with += weight;
        }
    }
    (100.0 * with as f64 / all.max(1) as f64, all as f64)
}

/// Share (percent) and count of the samples in `perf script` output whose callchain has
/// `frame`.
fn perf_share(text: &str, frame: &str) -> (f64, f64) {
    let (mut all, mut with) = (0u64, 0u64);
    for block in text.split("\n\n").filter(|block| !block.trim().is_empty()) {
        all += 1;
        if block
            .lines()
            .any(|line| line.split_whitespace().nth(1) == Some(frame))
        {
            with += 1;
        }
    }
    (100.0 * with as f64 / all.max(1) as f64, all as f64)
}

fn capture(
    tool: Tool,
    program: &Path,
    args: &LongRunBenchArgs,
    scratch: &Path,
) -> anyhow::Result<Capture> {
    let mut workload = Command::new(program)
        .arg((args.seconds + 20).to_string())
        .spawn()
        .context("starting the workload")?;
    std::thread::sleep(Duration::from_millis(300));
    let pid = workload.id().to_string();
    let out = scratch.join("profile");
    let perf_data = scratch.join("perf.data");
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_file(&perf_data);
    let frequency = args.frequency.to_string();
    let mut command = match tool {
        Tool::Profiler => {
            let mut command = Command::new(profiler_bin());
            command
                .args(["attach", "-e", "cpu", "-F", &frequency, "-d"])
                .arg(format!("{}s", args.seconds))
                .arg("-o")
                .arg(&out)
                .arg(&pid);
            command
        }
        Tool::Perf => {
            let mut command = Command::new("perf");
            command
                .args(["record", "-q", "-g", "-F", &frequency, "-p", &pid, "-o"])
                .arg(&perf_data)
                .args(["--", "sleep", &args.seconds.to_string()]);
            command
        }
    };
    let started = Instant::now();
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", tool.label()))?;
    let child_pid = child.id();
    // Sampled while it runs: RSS after 10 s and at the end of the capture.
    let sampler = std::thread::spawn({
        let seconds = args.seconds;
        move || {
            let (mut at_10s, mut at_end) = (0, 0);
            let begin = Instant::now();
            while begin.elapsed() < Duration::from_secs(seconds) {
                if let Some(rss) = crate::bench::status_kib(child_pid, "VmRSS") {
                    if begin.elapsed() <= Duration::from_secs(10) {
                        at_10s = rss;
                    }
                    at_end = rss;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            (at_10s, at_end)
        }
    });
    let waited = crate::bench::wait_rusage(child_pid as libc::pid_t);
    // Reaped by wait4: dropping `child` closes nothing that matters and does not wait.
    drop(child);
    let (status, cpu_s, peak_kib) = waited?;
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{} failed (wait status {status:#x})", tool.label());
    }
    let wall = started.elapsed().as_secs_f64();
    let (rss_10s, rss_end) = sampler.join().unwrap_or((0, 0));
    let _ = workload.kill();
    let _ = workload.wait();
    let mut result = Capture {
        cpu_s,
        peak_rss_mib: peak_kib as f64 / 1024.0,
        rss_10s_mib: rss_10s as f64 / 1024.0,
        rss_end_mib: rss_end as f64 / 1024.0,
        ..Capture::default()
    };
    match tool {
        Tool::Profiler => {
            let summary: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(out.join("summary.json")).context("summary.json")?,
            )?;
            let attach_s = summary["attach_ms"].as_f64().unwrap_or(0.0) / 1000.0;
            result.stop_s = wall - attach_s - args.seconds as f64;
            let folded = std::fs::read_to_string(out.join("cpu.folded"))?;
            (result.whole_percent, result.samples) = folded_share(&folded, "walker");
        }
        Tool::Perf => {
            result.stop_s = wall - args.seconds as f64;
            let post = Instant::now();
            let script = Command::new("perf")
                .args(["script", "-F", "ip,sym", "-i"])
                .arg(&perf_data)
                .stderr(Stdio::null())
                .output()?;
            result.post_s = post.elapsed().as_secs_f64();
            (result.whole_percent, result.samples) =
                perf_share(&String::from_utf8_lossy(&script.stdout), "walker");
        }
    }
    Ok(result)
}

/// Median and range of one figure over the rounds.
fn summarize(captures: &[Capture], pick: fn(&Capture) -> f64, digits: usize) -> String {
    let values: Vec<f64> = captures.iter().map(pick).collect();
    report::median_and_range(&values, digits, "")
}

pub fn longrun(args: &LongRunBenchArgs) -> anyhow::Result<()> {
    crate::bench::ensure_tools()?;
    let program = compile_program("unwind_random_paths")?;
    let scratch = root().join("target/bench-longrun");
    std::fs::create_dir_all(&scratch)?;
    let tools = [Tool::Profiler, Tool::Perf];
    let mut results: Vec<Vec<Capture>> = vec![Vec::new(); tools.len()];
    for round in 0..args.runs {
        for (index, tool) in tools.iter().enumerate() {
            let capture = capture(*tool, &program, args, &scratch)?;
            eprintln!(
                "bench: round {}/{} {}: {:.0} samples, {:.2}% whole, CPU {:.2} s, RSS {:.0} \
                 MiB after 10 s, {:.0} MiB at the end, stopped in {:.2} s",
                round + 1,
                args.runs,
                tool.label(),
                capture.samples,
                capture.whole_percent,
                capture.cpu_s,
                capture.rss_10s_mib,
                capture.rss_end_mib,
                capture.stop_s
            );
            results[index].push(capture);
        }
    }
    let mut table = String::from(
        "| tool | samples | reaching the thread function | own CPU | peak RSS | RSS after 10 s \
         | RSS at the end | stop after the capture | `perf script` |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (tool, captures) in tools.iter().zip(&results) {
        let _ = writeln!(
            table,
            "| {} | {} | {}% | {} s | {} MiB | {} MiB | {} MiB | {} s | {} |",
            tool.label(),
            summarize(captures, |c| c.samples, 0),
            summarize(captures, |c| c.whole_percent, 2),
            summarize(captures, |c| c.cpu_s, 2),
            summarize(captures, |c| c.peak_rss_mib, 0),
            summarize(captures, |c| c.rss_10s_mib, 0),
            summarize(captures, |c| c.rss_end_mib, 0),
            summarize(captures, |c| c.stop_s, 2),
            if *tool == Tool::Perf {
                format!("{} s", summarize(captures, |c| c.post_s, 1))
            } else {
                "—".to_owned()
            },
        );
    }
    // Paired by round: a slow spell of the machine moves both tools.
    let per_round = |pick: fn(&Capture) -> f64| {
        let values = |captures: &[Capture]| captures.iter().map(pick).collect::<Vec<f64>>();
        report::paired_ratio(&values(&results[0]), &values(&results[1]))
    };
    let _ = writeln!(
        table,
        "\nProfiler / perf in the same round: samples reaching the thread function {}, own CPU \
         {}, peak RSS {}, stop after the capture {}.",
        per_round(|c| c.whole_percent),
        per_round(|c| c.cpu_s),
        per_round(|c| c.peak_rss_mib),
        per_round(|c| c.stop_s),
    );
    let page = format!(
        "# Long captures: latest results\n\n\
         Generated by `cargo xtask bench-longrun --runs {} --seconds {} --frequency {}` on \
         {}. Method: see [README.md](README.md#long-captures-bench-longrun). \
         Each tool attaches for {} s at {} Hz to `tests/programs/unwind_random_paths.c` (two \
         threads on pseudo-random call paths, 1 to 64 calls deep, built with frame pointers); \
         median and range of {} rounds.\n\n{table}",
        args.runs,
        args.seconds,
        args.frequency,
        report::machine(),
        args.seconds,
        args.frequency,
        args.runs,
    );
    report::publish("longrun-results.md", &page, !args.no_write)
}
