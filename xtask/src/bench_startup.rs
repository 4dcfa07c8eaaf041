//! `bench-startup`: how long after it is started each tool takes its first sample of the
//! workload, for `record` (the tool launches the program) and `attach` (the program is
//! already running), with CPU sampling alone and with every event kind.
//!
//! Every figure is the same quantity: the `CLOCK_MONOTONIC` time of the tool's first sample of
//! the workload minus the time just before the benchmark spawned the tool. perf records
//! monotonic timestamps (`-k CLOCK_MONOTONIC`), bpftrace prints `nsecs` (the same clock) at its
//! first sample, and the profiler reports its first sample in `summary.json`, relative to its
//! own start (a millisecond or so after the spawn, not counted). profile-bee reports none: its
//! sampling program's first run, polled (see [`profile_bee_first_run_ms`]).

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

/// Whether the profiler finds the workload's unwind tables compiled by an earlier run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cache {
    /// An empty cache folder: every table compiled.
    Cold,
    /// A cache folder an earlier run filled.
    Warm,
}

/// A tool and how it is started.
#[derive(Clone, Copy)]
enum Tool {
    /// `profiler record|attach -e EVENTS`.
    Profiler(&'static str, Cache),
    /// `perf record -g`.
    Perf,
    /// `bpftrace` with a `profile:hz:99` probe filtered to the workload.
    Bpftrace,
    /// profile-bee `--dwarf` at 99 Hz.
    ProfileBee,
}

impl Tool {
    fn label(self) -> String {
        match self {
            Tool::Profiler(events, Cache::Cold) => format!("profiler `-e {events}`, cold cache"),
            Tool::Profiler(events, Cache::Warm) => format!("profiler `-e {events}`, warm cache"),
            Tool::Perf => "perf `record -g`".to_owned(),
            Tool::Bpftrace => "bpftrace `profile:hz:99`".to_owned(),
            Tool::ProfileBee => "profile-bee 0.3.13 `--dwarf`".to_owned(),
        }
    }
}

const ALL_EVENTS: &str = "cpu,offcpu,io,alloc";
const TOOLS: [Tool; 7] = [
    Tool::Profiler("cpu", Cache::Warm),
    Tool::Profiler("cpu", Cache::Cold),
    Tool::Profiler(ALL_EVENTS, Cache::Warm),
    Tool::Profiler(ALL_EVENTS, Cache::Cold),
    Tool::Perf,
    Tool::Bpftrace,
    Tool::ProfileBee,
];

/// What is profiled.
#[derive(Clone, Copy)]
enum Workload<'a> {
    /// `busy_threads 1 1`: one spinning thread, a small C program.
    Small(&'a Path),
    /// The toolchain's rustc compiling a small file: libraries of about 3 M unwind rows;
    /// attached to while it compiles `long_source`.
    Rustc {
        rustc: &'a Path,
        source: &'a Path,
        long_source: &'a Path,
    },
}

impl Workload<'_> {
    fn command(self, scratch: &Path) -> Vec<std::ffi::OsString> {
        match self {
            Workload::Small(program) => vec![program.into(), "1".into(), "1".into()],
            Workload::Rustc { rustc, source, .. } => vec![
                rustc.into(),
                "-O".into(),
                "--edition".into(),
                "2021".into(),
                source.into(),
                "-o".into(),
                scratch.join("startup-rustc").into(),
            ],
        }
    }
}

pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The `CLOCK_MONOTONIC` time of the first sample in `data` (recorded with `-k
/// CLOCK_MONOTONIC`), of a process named `comm` if given.
pub(crate) fn perf_first_sample_ns(data: &Path, comm: Option<&str>) -> anyhow::Result<u64> {
    let script = Command::new("perf")
        .args(["script", "-F", "comm,time", "-i"])
        .arg(data)
        .stderr(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&script.stdout);
    let seconds: f64 = text
        .lines()
        .filter(|line| comm.is_none_or(|comm| line.trim_start().starts_with(comm)))
        .find_map(|line| {
            line.split_whitespace()
                .last()?
                .trim_end_matches(':')
                .parse()
                .ok()
        })
        .context("no sample in perf.data")?;
    Ok((seconds * 1e9) as u64)
}

/// The `nsecs` a bpftrace script printed as `first <nsecs>` at its first event.
pub(crate) fn bpftrace_first_ns(stdout: &[u8]) -> anyhow::Result<u64> {
    String::from_utf8_lossy(stdout)
        .lines()
        .find_map(|line| line.strip_prefix("first ")?.trim().parse().ok())
        .context("bpftrace printed no first event")
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
    workload: Workload<'_>,
    attach_to: Option<u32>,
    scratch: &Path,
) -> anyhow::Result<f64> {
    let out = scratch.join("out");
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_file(scratch.join("perf.data"));
    let launched = workload.command(scratch);
    let mut command = match tool {
        Tool::Profiler(events, cache) => {
            let mut command = Command::new(profiler_bin());
            match attach_to {
                Some(_) => command.args(["attach", "-d", "1", "-e", events]),
                None => command.args(["record", "-e", events]),
            };
            command
                .arg("--unwind-cache")
                .arg(cache_folder(scratch, cache));
            command.arg("-o").arg(&out);
            match attach_to {
                Some(pid) => command.arg(pid.to_string()),
                None => command.arg("--").args(&launched),
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
                None => command.arg("--").args(&launched),
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
                let words: Vec<String> = launched
                    .iter()
                    .map(|word| word.to_string_lossy().into_owned())
                    .collect();
                command.arg("-c").arg(words.join(" "));
            }
            command
        }
        Tool::ProfileBee => {
            let mut command = Command::new(crate::bench_unwind::profile_bee()?);
            command
                .args(["--dwarf", "-f", "99", "-t", "1000", "-o"])
                .arg(scratch.join("profile-bee.folded"));
            match attach_to {
                Some(pid) => command.args(["-p", &pid.to_string()]),
                None => command.arg("--").args(&launched),
            };
            command
        }
    };
    command.stdout(Stdio::piped()).stderr(Stdio::null());
    if let Tool::ProfileBee = tool {
        return profile_bee_first_run_ms(command);
    }
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
        Tool::Profiler(..) => {
            let summary: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(out.join("summary.json")).context("summary.json")?,
            )?;
            summary["first_sample_ms"]
                .as_f64()
                .context("no first sample in summary.json")
        }
        Tool::Perf => Ok(since_spawn(perf_first_sample_ns(
            &scratch.join("perf.data"),
            None,
        )?)),
        Tool::Bpftrace => Ok(since_spawn(bpftrace_first_ns(&output.stdout)?)),
        Tool::ProfileBee => unreachable!("timed by profile_bee_first_run_ms"),
    }
}

/// profile-bee writes no timestamps: its first sample is taken as the first run of its
/// sampling program (the kernel's run count, which it attaches to the workload's samples
/// only), polled, so the figure is late by up to a poll (bpftool, about 10 ms).
fn profile_bee_first_run_ms(mut command: Command) -> anyhow::Result<f64> {
    let _stats = crate::bench_unwind::BpfStats::enable()?;
    let spawned_ns = monotonic_ns();
    let mut child = command.spawn().context("starting profile-bee")?;
    let mut first = None;
    while child.try_wait()?.is_none() {
        if first.is_none()
            && crate::bench_unwind::program_stats("profile_cpu").is_some_and(|(_, runs)| runs > 0)
        {
            first = Some(monotonic_ns());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("profile-bee failed: {status}");
    }
    let first = first.context("profile-bee's sampling program never ran")?;
    Ok((first - spawned_ns) as f64 / 1e6)
}

/// The profiler's cache folder for `cache`: the warm one kept from run to run, the cold one
/// emptied before each.
fn cache_folder(scratch: &Path, cache: Cache) -> PathBuf {
    match cache {
        Cache::Warm => scratch.join("cache-warm"),
        Cache::Cold => {
            let folder = scratch.join("cache-cold");
            let _ = std::fs::remove_dir_all(&folder);
            folder
        }
    }
}

/// The results of `runs` rounds on `workload`, per mode and tool: each round runs every tool
/// in turn, in each mode (`attach` on a copy of the workload started for the round's
/// attaches).
fn rounds(
    runs: usize,
    workload: Workload<'_>,
    modes: &[&str],
    scratch: &Path,
) -> anyhow::Result<Vec<Vec<Vec<f64>>>> {
    let name = match workload {
        Workload::Small(_) => "busy_threads",
        Workload::Rustc { .. } => "rustc",
    };
    // The warm cache filled once, before the rounds.
    first_sample_ms(Tool::Profiler("cpu", Cache::Warm), workload, None, scratch)?;
    let mut results = vec![vec![Vec::new(); TOOLS.len()]; modes.len()];
    for round in 0..runs {
        for (mode_index, mode) in modes.iter().enumerate() {
            // A long-running workload for the attaches, each tool in turn; none while
            // commands are launched, which would otherwise share the CPUs with it.
            let mut running = match (workload, *mode == "attach") {
                (Workload::Small(program), true) => Some(
                    Command::new(program)
                        .args(["600", "1"])
                        .spawn()
                        .context("starting the workload")?,
                ),
                (
                    Workload::Rustc {
                        rustc, long_source, ..
                    },
                    true,
                ) => Some(
                    Command::new(rustc)
                        .args(["-O", "--edition", "2021"])
                        .arg(long_source)
                        .arg("-o")
                        .arg(scratch.join("startup-rustc-long"))
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .context("starting rustc")?,
                ),
                _ => None,
            };
            // Time for the workload to be under way: its libraries mapped, rustc compiling.
            std::thread::sleep(Duration::from_millis(500));
            let outcome = (|| -> anyhow::Result<()> {
                for (tool_index, tool) in TOOLS.iter().enumerate() {
                    let attach_to = running.as_ref().map(std::process::Child::id);
                    let ms = first_sample_ms(*tool, workload, attach_to, scratch)?;
                    eprintln!(
                        "bench: round {}/{runs} {name} {mode} {}: first sample after {ms:.0} ms",
                        round + 1,
                        tool.label()
                    );
                    results[mode_index][tool_index].push(ms);
                }
                Ok(())
            })();
            if let Some(running) = running.as_mut() {
                let _ = running.kill();
                let _ = running.wait();
            }
            outcome?;
        }
    }
    Ok(results)
}

/// A results table: per tool, each mode's median and range, and its ratio to perf's in the
/// same round.
fn table(results: &[Vec<Vec<f64>>], headers: &[&str]) -> String {
    let mut table = String::from("| tool |");
    for header in headers {
        let _ = write!(table, " {header} | against perf, same round |");
    }
    table.push_str("\n|---|");
    table.push_str(&"---:|---:|".repeat(headers.len()));
    table.push('\n');
    let perf = TOOLS
        .iter()
        .position(|tool| matches!(tool, Tool::Perf))
        .expect("perf is a peer");
    for (tool_index, tool) in TOOLS.iter().enumerate() {
        let _ = write!(table, "| {} |", tool.label());
        for mode in results {
            let against_perf = match tool {
                Tool::Profiler(..) => report::paired_ratio(&mode[tool_index], &mode[perf]),
                _ => "—".to_owned(),
            };
            let _ = write!(
                table,
                " {} | {against_perf} |",
                report::median_and_range(&mode[tool_index], 0, " ms")
            );
        }
        table.push('\n');
    }
    table
}

pub fn startup(args: &StartupBenchArgs) -> anyhow::Result<()> {
    crate::bench::ensure_tools()?;
    let program = workload()?;
    let scratch = root().join("target/bench-startup");
    let _ = std::fs::remove_dir_all(scratch.join("cache-warm"));
    std::fs::create_dir_all(&scratch)?;
    let small = rounds(
        args.runs,
        Workload::Small(&program),
        &["record", "attach"],
        &scratch,
    )?;
    let rustc = crate::bench_rustc::rustc()?;
    // A small file: start-up is measured, and with every event kind a long compile's millions
    // of allocations, each probed, would take minutes.
    let source = scratch.join("startup_rustc.rs");
    std::fs::write(
        &source,
        "fn main() { println!(\"{}\", (1..100u64).sum::<u64>()); }\n",
    )?;
    // Long enough to be attached to by every tool in turn (about a minute alone).
    let long_source = scratch.join("startup_rustc_long.rs");
    crate::bench_rustc::generate_source(&long_source, 3000)?;
    let big = rounds(
        args.runs,
        Workload::Rustc {
            rustc: &rustc,
            source: &source,
            long_source: &long_source,
        },
        &["record", "attach"],
        &scratch,
    )?;
    let page = format!(
        "# Start-up: latest results\n\n\
         Generated by `cargo xtask bench-startup --runs {}` on {}. \
         Method: see [README.md](README.md#start-up-bench-startup). Time from spawning the tool \
         to its first sample of the workload, at 99 Hz; median and range of {} interleaved \
         rounds. A cold cache is an empty `--unwind-cache` folder (every unwind table \
         compiled), a warm one was filled by an earlier run.\n\n\
         ## A small program\n\n`tests/programs/busy_threads.c`, one spinning thread.\n\n{}\n\
         ## rustc\n\nThe toolchain's `rustc -O` (`librustc_driver` and `libLLVM`: about 3 M \
         unwind rows): launched to compile a one-line program, and attached to while it \
         compiles a generated file of 3000 functions.\n\n{}",
        args.runs,
        report::machine(),
        args.runs,
        table(
            &small,
            &[
                "`record` (launches the program)",
                "`attach` (program running)"
            ]
        ),
        table(&big, &["`record`", "`attach`"]),
    );
    report::publish("startup-results.md", &page, !args.no_write)
}
