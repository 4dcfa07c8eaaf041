//! `bench-startup`: how long after it is started each tool takes its first sample of the
//! workload, for `record` (the tool launches the program) and `attach` (the program is
//! already running), with CPU sampling alone and with every event kind.
//!
//! Every figure is the same quantity: the `CLOCK_MONOTONIC` time of the tool's first sample of
//! the workload minus the time just before the benchmark spawned the tool. perf records
//! monotonic timestamps (`-k CLOCK_MONOTONIC`), bpftrace prints `nsecs` (the same clock) at its
//! first sample, and the profiler reports its first sample in `summary.json`, relative to its
//! own start (a millisecond or so after the spawn, not counted).

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{profiler_bin, report, root};

#[derive(clap::Args)]
pub struct StartupBenchArgs {
    /// Interleaved rounds of every configuration (the median and range are reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Print the results without writing docs/performance/startup-results.md.
    #[arg(long)]
    no_write: bool,
}

/// A tool and how it is started.
#[derive(Clone, Copy)]
enum Tool {
    /// `profiler record|attach -e EVENTS`.
    Profiler(&'static str),
    /// `perf record -g`.
    Perf,
    /// `bpftrace` with a `profile:hz:99` probe filtered to the workload.
    Bpftrace,
}

impl Tool {
    fn label(self) -> String {
        match self {
            Tool::Profiler(events) => format!("profiler `-e {events}`"),
            Tool::Perf => "perf `record -g`".to_owned(),
            Tool::Bpftrace => "bpftrace `profile:hz:99`".to_owned(),
        }
    }
}

const ALL_EVENTS: &str = "cpu,offcpu,io,alloc";
const TOOLS: [Tool; 4] = [
    Tool::Profiler("cpu"),
    Tool::Profiler(ALL_EVENTS),
    Tool::Perf,
    Tool::Bpftrace,
];

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Builds the workload: `busy_threads SECONDS THREADS` spins.
fn workload() -> anyhow::Result<PathBuf> {
    let out_dir = root().join("target/programs");
    std::fs::create_dir_all(&out_dir)?;
    let output = out_dir.join("startup_busy");
    let programs = root().join("tests/programs");
    crate::run(
        Command::new("cc")
            .args(["-O2", "-g", "-pthread", "-I"])
            .arg(&programs)
            .arg(programs.join("busy_threads.c"))
            .arg("-o")
            .arg(&output),
    )?;
    Ok(output)
}

/// Milliseconds from the spawn of `tool` to its first sample of the workload; `attach_to`
/// is the running workload's pid, `None` to launch it.
fn first_sample_ms(
    tool: Tool,
    program: &Path,
    attach_to: Option<u32>,
    scratch: &Path,
) -> anyhow::Result<f64> {
    let out = scratch.join("out");
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_file(scratch.join("perf.data"));
    let run_for = ["1", "1"];
    let mut command = match tool {
        Tool::Profiler(events) => {
            let mut command = Command::new(profiler_bin());
            match attach_to {
                Some(_) => command.args(["attach", "-d", "1", "-e", events, "-o"]),
                None => command.args(["record", "-e", events, "-o"]),
            };
            command.arg(&out);
            match attach_to {
                Some(pid) => command.arg(pid.to_string()),
                None => command.arg("--").arg(program).args(run_for),
            };
            command
        }
        Tool::Perf => {
            let mut command = Command::new("perf");
            command
                .args([
                    "record",
                    "-q",
                    "-k",
                    "CLOCK_MONOTONIC",
                    "-F",
                    "99",
                    "-g",
                    "-o",
                ])
                .arg(scratch.join("perf.data"));
            match attach_to {
                Some(pid) => command.args(["-p", &pid.to_string(), "--", "sleep", "1"]),
                None => command.arg("--").arg(program).args(run_for),
            };
            command
        }
        Tool::Bpftrace => {
            let filter = attach_to.map_or("cpid".to_owned(), |pid| pid.to_string());
            let mut command = Command::new("bpftrace");
            command.arg("-e").arg(format!(
                "profile:hz:99 /pid == {filter}/ {{ printf(\"first %lld\\n\", nsecs); exit(); }}"
            ));
            if attach_to.is_none() {
                command
                    .arg("-c")
                    .arg(format!("{} {}", program.display(), run_for.join(" ")));
            }
            command
        }
    };
    command.stdout(Stdio::piped()).stderr(Stdio::null());
    let spawned_ns = monotonic_ns();
    let child = command
        .spawn()
        .with_context(|| format!("starting {}", tool.label()))?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!("{} failed: {}", tool.label(), output.status);
    }
    let since_spawn = |ns: u64| (ns.saturating_sub(spawned_ns)) as f64 / 1e6;
    match tool {
        Tool::Profiler(_) => {
            let summary: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(out.join("summary.json")).context("summary.json")?,
            )?;
            summary["first_sample_ms"]
                .as_f64()
                .context("no first sample in summary.json")
        }
        Tool::Perf => {
            let script = Command::new("perf")
                .args(["script", "-F", "time", "-i"])
                .arg(scratch.join("perf.data"))
                .stderr(Stdio::null())
                .output()?;
            let text = String::from_utf8_lossy(&script.stdout);
            let seconds: f64 = text
                .split_whitespace()
                .next()
                .and_then(|time| time.trim_end_matches(':').parse().ok())
                .context("no sample in perf.data")?;
            Ok(since_spawn((seconds * 1e9) as u64))
        }
        Tool::Bpftrace => {
            let text = String::from_utf8_lossy(&output.stdout);
            let ns: u64 = text
                .lines()
                .find_map(|line| line.strip_prefix("first ")?.trim().parse().ok())
                .context("bpftrace printed no sample")?;
            Ok(since_spawn(ns))
        }
    }
}

pub fn startup(args: &StartupBenchArgs) -> anyhow::Result<()> {
    crate::bench::ensure_tools()?;
    let program = workload()?;
    let scratch = root().join("target/bench-startup");
    std::fs::create_dir_all(&scratch)?;
    let modes = ["record", "attach"];
    let mut results = vec![vec![Vec::new(); TOOLS.len()]; modes.len()];
    for round in 0..args.runs {
        // One long-running workload per round for the attaches, each tool in turn.
        let mut running = Command::new(&program)
            .args(["600", "1"])
            .spawn()
            .context("starting the workload")?;
        std::thread::sleep(Duration::from_millis(200));
        let outcome = (|| -> anyhow::Result<()> {
            for (mode_index, mode) in modes.iter().enumerate() {
                for (tool_index, tool) in TOOLS.iter().enumerate() {
                    let attach_to = (*mode == "attach").then(|| running.id());
                    let ms = first_sample_ms(*tool, &program, attach_to, &scratch)?;
                    eprintln!(
                        "bench: round {}/{} {mode} {}: first sample after {ms:.0} ms",
                        round + 1,
                        args.runs,
                        tool.label()
                    );
                    results[mode_index][tool_index].push(ms);
                }
            }
            Ok(())
        })();
        let _ = running.kill();
        let _ = running.wait();
        outcome?;
    }
    let mut table = String::from(
        "| tool | `record` (launches the program) | against perf, same round | `attach` \
         (program running) | against perf, same round |\n|---|---:|---:|---:|---:|\n",
    );
    let perf = TOOLS
        .iter()
        .position(|tool| matches!(tool, Tool::Perf))
        .expect("perf is a peer");
    for (tool_index, tool) in TOOLS.iter().enumerate() {
        let against_perf = |mode: usize| match tool {
            Tool::Profiler(_) => {
                report::paired_ratio(&results[mode][tool_index], &results[mode][perf])
            }
            _ => "—".to_owned(),
        };
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} | {} |",
            tool.label(),
            report::median_and_range(&results[0][tool_index], 0, " ms"),
            against_perf(0),
            report::median_and_range(&results[1][tool_index], 0, " ms"),
            against_perf(1),
        );
    }
    let page = format!(
        "# Start-up: latest results\n\n\
         Generated by `cargo xtask bench-startup --runs {}` on {}. \
         Method: see [README.md](README.md#start-up-bench-startup). Time from spawning the tool \
         to its first sample of the workload (`tests/programs/busy_threads.c`, one spinning \
         thread), at 99 Hz; median and range of {} interleaved rounds.\n\n{table}",
        args.runs,
        report::machine(),
        args.runs,
    );
    report::publish("startup-results.md", &page, !args.no_write)
}
