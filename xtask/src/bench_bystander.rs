//! `cargo xtask bench-bystander`: what tracing costs the processes the profiler does not
//! watch. The system-call and scheduler tracepoints run for every task of the machine; a
//! program can only turn the others away once it runs. This measures that floor: a
//! `getppid` loop and a pipe ping-pong, neither profiled, while the profiler watches a
//! sleeping process, against bpftrace on the same tracepoints, and against the price of
//! turning system-call tracing on at all (bpftrace on one other call's tracepoint: every
//! task then takes the kernel's slow system-call path).

use std::{
    fmt::Write as _,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context;

use crate::{
    bench::{ensure_tools, ensure_tracefs, field, interrupt_and_wait},
    compile_program, profiler_bin,
    report::{machine, median_and_range, publish},
    root,
};

#[derive(clap::Args)]
pub struct BystanderBenchArgs {
    /// Rounds; each runs every configuration once, in turn.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// `getppid` calls a run.
    #[arg(long, default_value_t = 2_000_000)]
    calls: u64,
    /// Ping-pong round trips a run.
    #[arg(long, default_value_t = 100_000)]
    round_trips: u64,
    /// Print the results without writing docs/performance/bystander-results.md.
    #[arg(long)]
    no_write: bool,
}

/// Time a tool gets before the workloads run: the profiler needs about 0.4 s on an idle
/// machine to attach, bpftrace a few seconds to compile, and the profiler's budget has the
/// kernel time its programs in one tick of five for its first 4 s (one of twenty after).
const SETTLE: Duration = Duration::from_secs(6);

/// A configuration: its name, and the tool's command line given the sleeping process's pid.
struct Config {
    name: &'static str,
    tool: Option<fn(u32, &std::path::Path) -> Command>,
}

fn profiler_on_sleeper(pid: u32, scratch: &std::path::Path) -> Command {
    let mut command = Command::new(profiler_bin());
    command
        .args(["attach", "-e", "cpu,offcpu,io", "-o"])
        .arg(scratch.join("profile"))
        .arg(pid.to_string());
    command
}

fn bpftrace_same_tracepoints(pid: u32, _: &std::path::Path) -> Command {
    let mut command = Command::new("bpftrace");
    command.arg("-e").arg(format!(
        "tracepoint:raw_syscalls:sys_enter /pid == {pid}/ {{ @enter = count(); }} \
         tracepoint:raw_syscalls:sys_exit /pid == {pid}/ {{ @exit = count(); }} \
         tracepoint:sched:sched_switch /pid == {pid}/ {{ @switch = count(); }}"
    ));
    command
}

fn bpftrace_syscall_tracing_on(pid: u32, _: &std::path::Path) -> Command {
    let mut command = Command::new("bpftrace");
    command.arg("-e").arg(format!(
        "tracepoint:syscalls:sys_exit_nanosleep /pid == {pid}/ {{ @exit = count(); }}"
    ));
    command
}

const CONFIGS: [Config; 4] = [
    Config {
        name: "no tool",
        tool: None,
    },
    Config {
        name: "profiler `attach -e cpu,offcpu,io` on a sleeping process",
        tool: Some(profiler_on_sleeper),
    },
    Config {
        name: "bpftrace, the same tracepoints, filtered to that process",
        tool: Some(bpftrace_same_tracepoints),
    },
    Config {
        name: "bpftrace on `sys_exit_nanosleep` only (system-call tracing switched on)",
        tool: Some(bpftrace_syscall_tracing_on),
    },
];

/// Runs a workload to its end: its wall time, s.
fn workload_wall(command: &mut Command) -> anyhow::Result<f64> {
    let output = command.stderr(Stdio::inherit()).output()?;
    anyhow::ensure!(output.status.success(), "{command:?} failed");
    field(&String::from_utf8_lossy(&output.stdout), "wall_s")
}

/// Stops a tool as a user would (Ctrl-C) and waits for it.
fn stop(mut tool: Child, label: &str) -> anyhow::Result<()> {
    match interrupt_and_wait(&mut tool, label) {
        Some(status) if !status.success() && status.code() != Some(130) => {
            anyhow::bail!("{label} exited with {status}")
        }
        _ => Ok(()),
    }
}

/// One round of a configuration: ns a `getppid` call, µs a round trip.
fn measure(
    args: &BystanderBenchArgs,
    syscalls: &std::path::Path,
    pingpong: &std::path::Path,
) -> anyhow::Result<(f64, f64)> {
    let call_s = workload_wall(Command::new(syscalls).arg(args.calls.to_string()))?;
    let trip_s = workload_wall(
        Command::new("taskset")
            .args(["-c", "0"])
            .arg(pingpong)
            .arg(args.round_trips.to_string()),
    )?;
    Ok((
        call_s / args.calls as f64 * 1e9,
        trip_s / args.round_trips as f64 * 1e6,
    ))
}

pub fn bystander(args: &BystanderBenchArgs) -> anyhow::Result<()> {
    ensure_tools()?;
    ensure_tracefs()?;
    let syscalls = compile_program("getppid_loop")?;
    let pingpong = compile_program("pingpong")?;
    let scratch = root().join("target/bench-bystander");
    std::fs::create_dir_all(&scratch)?;
    let mut sleeper = Command::new("sleep").arg("86400").spawn()?;
    // Per configuration, per round: ns a getppid call, µs a round trip.
    let mut results: Vec<Vec<(f64, f64)>> = CONFIGS.iter().map(|_| Vec::new()).collect();
    let rounds = (0..args.runs).try_for_each(|round| {
        CONFIGS
            .iter()
            .zip(&mut results)
            .try_for_each(|(config, runs)| {
                let tool = match config.tool {
                    Some(tool) => Some(
                        tool(sleeper.id(), &scratch)
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .spawn()
                            .with_context(|| format!("starting {}", config.name))?,
                    ),
                    None => None,
                };
                if tool.is_some() {
                    std::thread::sleep(SETTLE);
                }
                let figures = measure(args, &syscalls, &pingpong);
                if let Some(tool) = tool {
                    stop(tool, config.name)?;
                }
                let figures = figures?;
                eprintln!(
                    "bench: round {}/{} {:<72} {:.1} ns a call, {:.2} µs a round trip",
                    round + 1,
                    args.runs,
                    config.name,
                    figures.0,
                    figures.1
                );
                runs.push(figures);
                anyhow::Ok(())
            })
    });
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    rounds?;

    let mut table = String::from(
        "| configuration | `getppid`, a call | added a call, same round | ping-pong, a round trip | added a round trip, same round |\n\
         |---|---:|---:|---:|---:|\n",
    );
    let base = &results[0];
    for (config, runs) in CONFIGS.iter().zip(&results) {
        let calls: Vec<f64> = runs.iter().map(|r| r.0).collect();
        let trips: Vec<f64> = runs.iter().map(|r| r.1).collect();
        let added = |pick: fn(&(f64, f64)) -> f64, scale: f64| -> Vec<f64> {
            runs.iter()
                .zip(base)
                .map(|(run, bare)| (pick(run) - pick(bare)) * scale)
                .collect()
        };
        let (added_call, added_trip) = if std::ptr::eq(runs, base) {
            ("—".to_owned(), "—".to_owned())
        } else {
            (
                median_and_range(&added(|r| r.0, 1.0), 0, " ns"),
                median_and_range(&added(|r| r.1, 1000.0), 0, " ns"),
            )
        };
        let _ = writeln!(
            table,
            "| {} | {} | {added_call} | {} | {added_trip} |",
            config.name,
            median_and_range(&calls, 1, " ns"),
            median_and_range(&trips, 2, " µs"),
        );
    }
    let page = format!(
        "# Processes not profiled: latest results\n\n\
         Generated by `cargo xtask bench-bystander --runs {} --calls {} --round-trips {}` on \
         {}. Method: see [README.md](README.md#processes-not-profiled-bench-bystander). \
         `tests/programs/getppid_loop.c` ({} calls) and `tests/programs/pingpong.c` pinned to \
         CPU 0 ({} round trips: 2 context switches and 4 pipe reads and writes each), neither \
         of them profiled; each configuration once per round, in turn; median and range of \
         {} rounds.\n\n{table}",
        args.runs,
        args.calls,
        args.round_trips,
        machine(),
        args.calls,
        args.round_trips,
        args.runs,
    );
    publish("bystander-results.md", &page, !args.no_write)
}
