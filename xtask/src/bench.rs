//! Overhead benchmarks, each comparing in one run the same workload without a profiler, under
//! `profiler`, and under peer tools, interleaved, several times:
//!
//! - `bench-cpu`: a fixed-work CPU-bound program; `profiler record` at 99 and 999 Hz against
//!   `perf record -g` and bpftrace `profile:hz`. Writes `docs/performance/cpu-results.md`.
//! - `bench-offcpu`: two threads ping-ponging through pipes on one CPU; `profiler record
//!   --events offcpu` against bpftrace on `sched_switch` with stacks. Writes
//!   `docs/performance/offcpu-results.md`.
//! - `bench-alloc`: malloc/free pairs; `profiler record --events alloc` against bpftrace
//!   tracking live allocations with uprobes. Writes `docs/performance/alloc-results.md`.
//! - `bench-render`: rendering every output file of synthetic profiles of a million samples.
//!   Writes `docs/performance/render-results.md`.
//! - `bench-io`: small reads from `/dev/zero`; `profiler record --events io` against bpftrace
//!   timing `read` per user stack. Writes `docs/performance/io-results.md`.
//! - `bench-unwind` (in `bench_unwind`): `.eh_frame` unwinding against frame pointers.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{compile_program, profiler_bin, root};

#[derive(clap::Args)]
pub struct CpuBenchArgs {
    /// Runs of each configuration (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Work rounds per thread of the fixed-work program (20000 is about 4 s on 2 cores).
    #[arg(long, default_value_t = 20_000)]
    rounds: u64,
    /// Print the results without writing docs/performance/cpu-results.md.
    #[arg(long)]
    no_write: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tool {
    None,
    Profiler,
    Perf,
    Bpftrace,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::None => "no profiler",
            Tool::Profiler => "profiler",
            Tool::Perf => "perf record -g",
            Tool::Bpftrace => "bpftrace profile:hz",
        }
    }
}

struct Measurement {
    /// Wall time of the workload, measured inside it (excludes the tool's start and finish).
    wall_s: f64,
    /// Whole command's wall time, tool start-up and post-processing included.
    total_s: f64,
    /// CPU time of the tool itself: everything it and its children used minus the workload's.
    tool_cpu_s: f64,
    /// Peak RSS of the tool process, KiB.
    tool_rss_kib: i64,
    /// Start of the tool to its first sample, ms (profiler only).
    first_sample_ms: Option<f64>,
}

#[derive(clap::Args)]
pub struct OffCpuBenchArgs {
    /// Runs of each configuration (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Round trips through the pipes (each is two context switches).
    #[arg(long, default_value_t = 200_000)]
    rounds: u64,
    /// Print the results without writing docs/performance/offcpu-results.md.
    #[arg(long)]
    no_write: bool,
}

/// Installs the peer tools and bpftool if missing.
pub(crate) fn ensure_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = [
        ("perf", "linux-perf"),
        ("bpftrace", "bpftrace"),
        ("bpftool", "bpftool"),
        ("heaptrack", "heaptrack"),
    ]
    .into_iter()
    .filter(|(tool, _)| {
        Command::new(tool)
            .arg("--version")
            .output()
            .map_or(true, |o| !o.status.success())
    })
    .map(|(_, package)| package)
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("bench: installing {}", missing.join(", "));
    crate::run(Command::new("apt-get").args(["update", "-qq"]))?;
    crate::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&missing),
    )
}

/// Interrupts a tool the way a user would (Ctrl-C) and waits for it: its exit status, or
/// `None` if it had to be killed. Once in a run, bpftrace let the first SIGINT pass and waited
/// on: the signal is sent again every ten seconds (a second one changes nothing for the
/// others), and after a minute the tool is killed.
pub(crate) fn interrupt_and_wait(tool: &mut Child, label: &str) -> Option<ExitStatus> {
    let started = Instant::now();
    let mut signalled: Option<Instant> = None;
    loop {
        match tool.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if started.elapsed() < Duration::from_secs(60) => {}
            Ok(None) | Err(_) => {
                eprintln!("bench: {label} did not stop within a minute of SIGINT: killed");
                let _ = tool.kill();
                let _ = tool.wait();
                return None;
            }
        }
        if signalled.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
            // SAFETY: signalling our own child, not yet reaped.
            unsafe { libc::kill(tool.id() as libc::pid_t, libc::SIGINT) };
            signalled = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `command`, returning its stdout and its rusage (CPU s, peak RSS KiB).
fn run_measured(command: &mut Command) -> anyhow::Result<(String, f64, f64, i64)> {
    let start = std::time::Instant::now();
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {command:?}"))?;
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.context("stdout is piped")?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        text
    });
    let (status, cpu, max_rss) = wait_rusage(pid)?;
    let total = start.elapsed().as_secs_f64();
    let text = reader.join().unwrap_or_default();
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{command:?} failed (status {status}): {text}");
    }
    Ok((text, total, cpu, max_rss))
}

/// Waits for child `pid`: its wait status, CPU seconds, and peak RSS in KiB (`wait4`).
pub(crate) fn wait_rusage(pid: libc::pid_t) -> anyhow::Result<(i32, f64, i64)> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid, and wait4 only writes into the two out-pointers.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } != pid {
        bail!("wait4({pid}) failed: {}", std::io::Error::last_os_error());
    }
    let seconds = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    let cpu = seconds(usage.ru_utime) + seconds(usage.ru_stime);
    Ok((status, cpu, usage.ru_maxrss))
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), while the process lives.
pub(crate) fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
}

/// A field `name=<number>` of a workload's output.
pub(crate) fn field(text: &str, name: &str) -> anyhow::Result<f64> {
    text.split_whitespace()
        .find_map(|word| word.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        .with_context(|| format!("workload output lacks {name}: {text:.200}"))
}

fn measure(
    tool: Tool,
    hz: u64,
    program: &Path,
    rounds: u64,
    scratch: &Path,
) -> anyhow::Result<Measurement> {
    let rounds = rounds.to_string();
    let hz_text = hz.to_string();
    let out_dir = scratch.join(format!("{}-{hz}", tool.name().replace(' ', "_")));
    let _ = std::fs::remove_dir_all(&out_dir);
    let mut command = match tool {
        Tool::None => {
            let mut c = Command::new(program);
            c.arg(&rounds);
            c
        }
        Tool::Profiler => {
            let mut c = Command::new(profiler_bin());
            c.args(["record", "-F", &hz_text, "-o"])
                .arg(&out_dir)
                .arg("--")
                .arg(program)
                .arg(&rounds);
            c
        }
        Tool::Perf => {
            let mut c = Command::new("perf");
            c.args(["record", "-q", "-g", "-F", &hz_text, "-o"])
                .arg(scratch.join("perf.data"))
                .arg("--")
                .arg(program)
                .arg(&rounds);
            c
        }
        Tool::Bpftrace => {
            let mut c = Command::new("bpftrace");
            c.arg("-e")
                .arg(format!(
                    "profile:hz:{hz} /pid == cpid/ {{ @[ustack, kstack] = count(); }}"
                ))
                .arg("-c")
                .arg(format!("{} {rounds}", program.display()));
            c
        }
    };
    let (text, total_s, cpu, rss) = run_measured(&mut command)?;
    let wall_s = field(&text, "wall_s")?;
    let workload_cpu = field(&text, "cpu_s")?;
    let first_sample_ms = if tool == Tool::Profiler {
        let summary = std::fs::read_to_string(out_dir.join("summary.json"))?;
        summary
            .split("\"first_sample_ms\":")
            .nth(1)
            .and_then(|rest| rest.split([',', '\n']).next())
            .and_then(|value| value.trim().parse().ok())
    } else {
        None
    };
    Ok(Measurement {
        wall_s,
        total_s,
        tool_cpu_s: if tool == Tool::None {
            0.0
        } else {
            (cpu - workload_cpu).max(0.0)
        },
        tool_rss_kib: if tool == Tool::None { 0 } else { rss },
        first_sample_ms,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

pub fn cpu(args: &CpuBenchArgs) -> anyhow::Result<()> {
    ensure_tools()?;
    let program = compile_program("fixed_work")?;
    let scratch: PathBuf = root().join("target/bench-cpu");
    std::fs::create_dir_all(&scratch)?;
    let configs: Vec<(Tool, u64)> = vec![
        (Tool::None, 0),
        (Tool::Profiler, 99),
        (Tool::Perf, 99),
        (Tool::Bpftrace, 99),
        (Tool::Profiler, 999),
        (Tool::Perf, 999),
        (Tool::Bpftrace, 999),
    ];
    let mut results: Vec<Vec<Measurement>> = configs.iter().map(|_| Vec::new()).collect();
    for run in 0..args.runs {
        // Interleaved, so drift in machine speed spreads over every configuration.
        for (index, &(tool, hz)) in configs.iter().enumerate() {
            let m = measure(tool, hz, &program, args.rounds, &scratch)?;
            eprintln!(
                "bench: run {}/{} {:<20} {:>4} Hz: workload {:.3} s, tool CPU {:.3} s, RSS {} KiB",
                run + 1,
                args.runs,
                tool.name(),
                hz,
                m.wall_s,
                m.tool_cpu_s,
                m.tool_rss_kib
            );
            results[index].push(m);
        }
    }
    let baseline = median(results[0].iter().map(|m| m.wall_s).collect());
    let mut table = String::new();
    table.push_str(
        "| configuration | workload wall (median) | slowdown | whole command wall | tool CPU | tool peak RSS | first sample |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for ((tool, hz), measurements) in configs.iter().zip(&results) {
        let wall = median(measurements.iter().map(|m| m.wall_s).collect());
        let total = median(measurements.iter().map(|m| m.total_s).collect());
        let cpu = median(measurements.iter().map(|m| m.tool_cpu_s).collect());
        let rss = median(measurements.iter().map(|m| m.tool_rss_kib as f64).collect());
        let first: Vec<f64> = measurements
            .iter()
            .filter_map(|m| m.first_sample_ms)
            .collect();
        let label = if *tool == Tool::None {
            tool.name().to_owned()
        } else {
            format!("{} at {hz} Hz", tool.name())
        };
        let _ = writeln!(
            table,
            "| {label} | {wall:.3} s | {} | {total:.3} s | {} | {} | {} |",
            if *tool == Tool::None {
                "—".to_owned()
            } else {
                format!("{:+.2}%", (wall / baseline - 1.0) * 100.0)
            },
            if *tool == Tool::None {
                "—".to_owned()
            } else {
                format!("{:.3} s", cpu)
            },
            if *tool == Tool::None {
                "—".to_owned()
            } else {
                format!("{:.1} MiB", rss / 1024.0)
            },
            if first.is_empty() {
                "—".to_owned()
            } else {
                format!("{:.0} ms", median(first))
            },
        );
    }
    let spread: Vec<String> = results[0]
        .iter()
        .map(|m| format!("{:.3}", m.wall_s))
        .collect();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let report = format!(
        "# CPU profiling overhead: latest results\n\n\
         Generated by `cargo xtask bench-cpu --runs {} --rounds {}` on {date}, kernel {}, {} CPUs.\n\
         Method: see [README.md](README.md). Workload: `tests/programs/fixed_work.c`, 2 threads on 2 cores,\n\
         {} rounds each; baseline runs: {} s.\n\n{table}",
        args.runs,
        args.rounds,
        kernel.trim(),
        std::thread::available_parallelism().map_or(0, usize::from),
        args.rounds,
        spread.join(", "),
    );
    println!("{report}");
    if !args.no_write {
        let path = root().join("docs/performance/cpu-results.md");
        std::fs::write(&path, report)?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}

/// bpftrace's `tracepoint:` probes need tracefs.
pub(crate) fn ensure_tracefs() -> anyhow::Result<()> {
    if Path::new("/sys/kernel/tracing/events").exists() {
        return Ok(());
    }
    crate::run(Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]))
}

/// A benchmark of the added cost per traced event: a workload that prints `wall_s=`, `cpu_s=`
/// and its event count, run bare, under `profiler record`, and under a bpftrace script.
struct EventBench<'a> {
    /// Title of the results page.
    title: &'a str,
    /// xtask command line that produced it.
    invocation: String,
    /// Workload description for the results page.
    workload: String,
    /// Test program and its arguments.
    program: &'a str,
    program_args: Vec<String>,
    /// Pin the workload to CPU 0.
    pinned: bool,
    /// Field of the workload's output counting events, and what they are (plural, singular).
    count_field: &'a str,
    count_label: &'a str,
    count_singular: &'a str,
    /// `profiler record` options, one configuration each (exact first, then sampled ones).
    profiler_modes: &'a [&'a [&'a str]],
    /// The bpftrace configuration's name and script.
    bpftrace: (&'a str, String),
    /// Other peers: name, and the command line the workload's is appended to.
    peers: Vec<(&'a str, Vec<String>)>,
    runs: usize,
    results_file: &'a str,
    write: bool,
}

fn event_bench(bench: &EventBench) -> anyhow::Result<()> {
    ensure_tools()?;
    ensure_tracefs()?;
    let program = compile_program(bench.program)?;
    let scratch: PathBuf = root().join("target/bench-events");
    std::fs::create_dir_all(&scratch)?;
    let mut workload: Vec<String> = Vec::new();
    if bench.pinned {
        workload.extend(["/usr/bin/taskset", "-c", "0"].map(str::to_owned));
    }
    workload.push(program.display().to_string());
    workload.extend(bench.program_args.iter().cloned());
    let mut configs = vec!["no profiler".to_owned()];
    configs.extend(
        bench
            .profiler_modes
            .iter()
            .map(|args| format!("profiler {}", args.join(" "))),
    );
    configs.push(bench.bpftrace.0.to_owned());
    let bpftrace_index = configs.len() - 1;
    configs.extend(bench.peers.iter().map(|(name, _)| (*name).to_owned()));
    let mut results: Vec<Vec<(f64, f64, f64, f64)>> = configs.iter().map(|_| Vec::new()).collect();
    for run in 0..bench.runs {
        for (index, name) in configs.iter().enumerate() {
            let mut command = match index {
                0 => {
                    let mut c = Command::new(&workload[0]);
                    c.args(&workload[1..]);
                    c
                }
                _ if index < bpftrace_index => {
                    let mut c = Command::new(profiler_bin());
                    c.arg("record")
                        .args(bench.profiler_modes[index - 1])
                        .arg("-o")
                        .arg(scratch.join("profile"))
                        .arg("--")
                        .args(&workload);
                    c
                }
                _ if index == bpftrace_index => {
                    let mut c = Command::new("bpftrace");
                    // bpftrace wants an unambiguous path to the binary it starts.
                    c.arg("-e")
                        .arg(&bench.bpftrace.1)
                        .arg("-c")
                        .arg(workload.join(" "));
                    c
                }
                _ => {
                    let line = &bench.peers[index - bpftrace_index - 1].1;
                    let mut c = Command::new(&line[0]);
                    c.args(&line[1..]).args(&workload);
                    c
                }
            };
            let (text, total_s, cpu, _rss) = run_measured(&mut command)?;
            let wall = field(&text, "wall_s")?;
            let events = field(&text, bench.count_field)?;
            let workload_cpu = field(&text, "cpu_s")?;
            let tool_cpu = if index == 0 {
                0.0
            } else {
                (cpu - workload_cpu).max(0.0)
            };
            eprintln!(
                "bench: run {}/{} {name:<36} workload {wall:.3} s, {events} {}, tool CPU {tool_cpu:.3} s",
                run + 1,
                bench.runs,
                bench.count_label,
            );
            results[index].push((wall, events, total_s, tool_cpu));
        }
    }
    let baseline = median(results[0].iter().map(|r| r.0).collect());
    let singular = bench.count_singular;
    let mut table = format!(
        "| configuration | workload wall (median) | {} | added cost per {singular} | whole command wall | tool CPU |\n\
         |---|---:|---:|---:|---:|---:|\n",
        bench.count_label
    );
    for (index, (name, runs)) in configs.iter().zip(&results).enumerate() {
        let wall = median(runs.iter().map(|r| r.0).collect());
        let events = median(runs.iter().map(|r| r.1).collect());
        let total = median(runs.iter().map(|r| r.2).collect());
        let tool_cpu = median(runs.iter().map(|r| r.3).collect());
        let (per_event, cpu) = if index == 0 {
            ("—".to_owned(), "—".to_owned())
        } else {
            (
                format!("{:.2} µs", (wall - baseline) / events * 1e6),
                format!("{tool_cpu:.3} s"),
            )
        };
        let _ = writeln!(
            table,
            "| {name} | {wall:.3} s | {events:.0} | {per_event} | {total:.3} s | {cpu} |"
        );
    }
    // Paired by round: each tool against the baseline run just before it, and the profiler
    // against bpftrace in the same round, so a slow spell of the machine moves both.
    let per_round = |index: usize| -> Vec<f64> {
        results[index]
            .iter()
            .zip(&results[0])
            .map(|(run, bare)| (run.0 - bare.0) / run.1 * 1e6)
            .collect()
    };
    let bpftrace_costs = per_round(bpftrace_index);
    let spread = |values: &[f64], unit: &str, digits: usize| {
        let low = values.iter().copied().fold(f64::INFINITY, f64::min);
        let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!(
            "median {:.digits$}{unit}, range {low:.digits$}–{high:.digits$}{unit}",
            median(values.to_vec())
        )
    };
    let _ = write!(
        table,
        "\nPer round ({} rounds, each configuration once per round, in turn), added cost per \
         {singular} against that round's baseline: bpftrace {}.",
        bench.runs,
        spread(&bpftrace_costs, " µs", 2),
    );
    for (index, name) in configs.iter().enumerate().take(bpftrace_index).skip(1) {
        let costs = per_round(index);
        let ratios: Vec<f64> = costs
            .iter()
            .zip(&bpftrace_costs)
            .map(|(ours, theirs)| ours / theirs)
            .collect();
        let _ = write!(
            table,
            " {name}: {}; against bpftrace in the same round {}.",
            spread(&costs, " µs", 2),
            spread(&ratios, "×", 2),
        );
    }
    for (index, name) in configs.iter().enumerate().skip(bpftrace_index + 1) {
        let costs = per_round(index);
        let ratios: Vec<f64> = per_round(1)
            .iter()
            .zip(&costs)
            .map(|(ours, theirs)| ours / theirs)
            .collect();
        let _ = write!(
            table,
            " {name}: {}; {} against it in the same round {}.",
            spread(&costs, " µs", 2),
            configs[1],
            spread(&ratios, "×", 2),
        );
    }
    table.push('\n');
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let report = format!(
        "# {}: latest results\n\n\
         Generated by `{}`, kernel {}.\n\
         Method: see [README.md](README.md). Workload: {}; added cost per {singular} =\n\
         (workload wall - baseline) / {}.\n\n{table}",
        bench.title,
        bench.invocation,
        kernel.trim(),
        bench.workload,
        bench.count_label,
    );
    println!("{report}");
    if bench.write {
        let path = root().join("docs/performance").join(bench.results_file);
        std::fs::write(&path, report)?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}

pub fn offcpu(args: &OffCpuBenchArgs) -> anyhow::Result<()> {
    event_bench(&EventBench {
        title: "Off-CPU profiling overhead",
        invocation: format!(
            "cargo xtask bench-offcpu --runs {} --rounds {}",
            args.runs, args.rounds
        ),
        workload: format!(
            "`tests/programs/pingpong.c` pinned to CPU 0 (`taskset -c 0`), {} round trips",
            args.rounds
        ),
        program: "pingpong",
        program_args: vec![args.rounds.to_string()],
        // Both threads on one CPU: every switch is between the two target threads, so each
        // one runs the switch-out and the switch-in accounting.
        pinned: true,
        count_field: "switches",
        count_label: "switches",
        count_singular: "switch",
        // The default (stacks sampled within the overhead budget), every stack walked, and
        // the default with a program at every wakeup timing the run-queue delays (what
        // kernels without the scheduler's `sched_info` get).
        profiler_modes: &[
            &["--events", "offcpu"],
            &["--events", "offcpu", "--max-overhead", "100"],
            &["--events", "offcpu", "--run-delays-from-wakeups"],
        ],
        bpftrace: (
            "bpftrace sched_switch + stacks",
            "tracepoint:sched:sched_switch /pid == cpid/ { @[kstack, ustack] = count(); }"
                .to_owned(),
        ),
        peers: Vec::new(),
        runs: args.runs,
        results_file: "offcpu-results.md",
        write: !args.no_write,
    })
}

#[derive(clap::Args)]
pub struct IoBenchArgs {
    /// Runs of each configuration (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Reads from /dev/zero.
    #[arg(long, default_value_t = 1_000_000)]
    calls: u64,
    /// Print the results without writing docs/performance/io-results.md.
    #[arg(long)]
    no_write: bool,
}

pub fn io(args: &IoBenchArgs) -> anyhow::Result<()> {
    event_bench(&EventBench {
        title: "I/O tracing overhead",
        invocation: format!(
            "cargo xtask bench-io --runs {} --calls {}",
            args.runs, args.calls
        ),
        workload: format!(
            "`tests/programs/read_zero.c`, {} reads of 64 bytes from `/dev/zero`",
            args.calls
        ),
        program: "read_zero",
        program_args: vec![args.calls.to_string()],
        pinned: false,
        count_field: "calls",
        count_label: "calls",
        count_singular: "call",
        profiler_modes: &[
            &["--events", "io"],
            &["--events", "io", "--max-overhead", "100"],
        ],
        bpftrace: (
            "bpftrace read latency per ustack",
            "tracepoint:syscalls:sys_enter_read /pid == cpid/ { @start[tid] = nsecs; } \
             tracepoint:syscalls:sys_exit_read /@start[tid]/ { \
             @us[ustack] = hist((nsecs - @start[tid]) / 1000); delete(@start[tid]); }"
                .to_owned(),
        ),
        peers: Vec::new(),
        runs: args.runs,
        results_file: "io-results.md",
        write: !args.no_write,
    })
}

#[derive(clap::Args)]
pub struct AllocBenchArgs {
    /// Runs of each configuration (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// malloc/free pairs.
    #[arg(long, default_value_t = 300_000)]
    pairs: u64,
    /// Print the results without writing docs/performance/alloc-results.md.
    #[arg(long)]
    no_write: bool,
}

/// The C library the workload uses: the one this process maps.
fn libc_path() -> anyhow::Result<String> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.contains("/libc.so"))
        .map(str::to_owned)
        .context("no libc.so in /proc/self/maps")
}

pub fn alloc(args: &AllocBenchArgs) -> anyhow::Result<()> {
    let libc = libc_path()?;
    event_bench(&EventBench {
        title: "Allocation tracking overhead",
        invocation: format!(
            "cargo xtask bench-alloc --runs {} --pairs {}",
            args.runs, args.pairs
        ),
        workload: format!(
            "`tests/programs/malloc_free.c`, {} pairs of `malloc(64)` and `free` through glibc",
            args.pairs
        ),
        program: "malloc_free",
        program_args: vec![args.pairs.to_string()],
        pinned: false,
        count_field: "pairs",
        count_label: "pairs",
        count_singular: "pair",
        // The default (every allocation tracked, its stack walked) and one allocation
        // recorded per 512 KiB allocated: the traps stay, the walks and map updates go.
        profiler_modes: &[
            &["--events", "alloc"],
            &["--events", "alloc", "--alloc-sample", "512KiB"],
        ],
        bpftrace: (
            "bpftrace malloc/free tracking + ustack",
            format!(
                "uprobe:{libc}:malloc /pid == cpid/ {{ @size[tid] = arg0; }} \
                 uretprobe:{libc}:malloc /@size[tid]/ {{ @live[retval] = @size[tid]; \
                 @bytes[ustack] = sum(@size[tid]); delete(@size[tid]); }} \
                 uprobe:{libc}:free /pid == cpid/ {{ delete(@live[arg0]); }}"
            ),
        ),
        // heaptrack records every allocation and free with its backtrace, in the process
        // (LD_PRELOAD), to a file interpreted after the run.
        peers: vec![(
            "heaptrack",
            vec![
                "heaptrack".to_owned(),
                "-o".to_owned(),
                root()
                    .join("target/bench-events/heaptrack")
                    .display()
                    .to_string(),
            ],
        )],
        runs: args.runs,
        results_file: "alloc-results.md",
        write: !args.no_write,
    })
}

#[derive(clap::Args)]
pub struct RenderBenchArgs {
    /// Runs of each shape (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Print the results without writing docs/performance/render-results.md.
    #[arg(long)]
    no_write: bool,
}

/// Times `profiler report` (every rendered file from a saved profile) on synthetic profiles of
/// a million samples: a realistic spread over stacks, and an extreme one.
pub fn render(args: &RenderBenchArgs) -> anyhow::Result<()> {
    let scratch = root().join("target/bench-render");
    let mut table = String::from(
        "| samples | distinct stacks | entries (thread × stack) | report wall (median) | \
         folded | pprof | speedscope | report.html |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (samples, stacks) in [(1_000_000u64, 20_000u64), (1_000_000, 100_000)] {
        let dir = scratch.join(format!("{samples}-{stacks}"));
        let _ = std::fs::remove_dir_all(&dir);
        crate::run(
            Command::new(profiler_bin())
                .args(["synthesize", "--samples", &samples.to_string()])
                .args(["--stacks", &stacks.to_string(), "-o"])
                .arg(&dir),
        )?;
        let mut walls = Vec::new();
        for run in 0..args.runs {
            let start = std::time::Instant::now();
            crate::run(Command::new(profiler_bin()).arg("report").arg(&dir))?;
            let wall = start.elapsed().as_secs_f64();
            eprintln!(
                "bench: {samples} samples, {stacks} stacks, run {}: {wall:.2} s",
                run + 1
            );
            walls.push(wall);
        }
        let size = |name: &str| {
            std::fs::metadata(dir.join(name)).map_or(0.0, |m| m.len() as f64 / (1 << 20) as f64)
        };
        let folded = std::fs::read_to_string(dir.join("cpu.folded"))?;
        let _ = writeln!(
            table,
            "| {samples} | {stacks} | {} | {:.2} s | {:.0} MiB | {:.0} MiB | {:.0} MiB | {:.1} MiB |",
            folded.lines().count(),
            median(walls),
            size("cpu.folded"),
            size("profile.pb.gz"),
            size("speedscope.json"),
            size("report.html"),
        );
    }
    let report = format!(
        "# Rendering: latest results\n\nGenerated by `cargo xtask bench-render --runs {}`: \
         `profiler report` writing every file (folded, SVG, summary, pprof, speedscope, HTML) \
         from a synthetic CPU profile (`profiler synthesize`: stacks of 10 to 60 frames over \
         20 000 functions, 16 threads). Method: see [README.md](README.md).\n\n{table}",
        args.runs
    );
    println!("{report}");
    if !args.no_write {
        let path = root().join("docs/performance/render-results.md");
        std::fs::write(&path, report)?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}

/// Rounds per second a workload that prints `rounds N` (bench-jit's, bench-python's) ran,
/// counted over `seconds`.
pub(crate) fn rounds_per_second(child: std::process::Child, seconds: f64) -> anyhow::Result<f64> {
    use anyhow::Context as _;
    let output = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let rounds: f64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|rounds| rounds.parse().ok())
        .with_context(|| format!("the workload printed no count: {text}"))?;
    Ok(rounds / seconds)
}
