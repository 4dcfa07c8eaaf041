//! A profiling run: validate the target, load and attach the probes, collect until a stop
//! condition, detach, and turn what was collected into a [`Profile`].

mod budget;
mod busy_cpu;
mod collected;
mod collection;
pub mod config;
mod error;
pub mod io;
mod jvm;
pub mod memory;
mod processes;
mod progress;
mod selected;
mod spool;
mod stack_ages;
mod startup;
mod stop;
mod stop_signals;
mod tables;
mod threads;
mod windows;

pub use error::CollectError;
pub use windows::{Kept, run_windows};

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::ProgressBar;
use tokio::signal::unix::{Signal, SignalKind, signal};

use self::{
    collection::Collection,
    progress::{status_line, status_message},
    startup::{Started, describe_target, start},
    stop::{CommandExit, Stop, exit_code, stop_command},
};
use crate::{
    collect::config::{RunConfig, TargetSpec},
    model::{Profile, RunInfo},
    output::{self, OutputDir},
    target::{privileges, procfs},
};

/// How often process notifications and memory maps are looked at.
const TICK: Duration = Duration::from_millis(100);

/// How often sample counts are drained from the kernel.
const DRAIN_EVERY_TICKS: u32 = 10;

/// Ticks between two decisions of the overhead budget (`--max-overhead`) for the first
/// `BUDGET_SETTLING_TICKS`, and while it has not settled (its last decision moved the
/// threshold, or a kind's load grew since): short enough that a busy server is within budget
/// a second after the attach, or after its load arrives.
const BUDGET_EVERY_TICKS: u32 = 5;
/// Ticks between two decisions once settled. What the programs cost is measured over the
/// last tick before each decision only: the kernel's timing of every program run costs two
/// clock reads a run, as much as the cheapest programs take (on a busy database, 3% of the
/// CPUs while it is on).
const BUDGET_SETTLED_EVERY_TICKS: u32 = 20;
const BUDGET_SETTLING_TICKS: u32 = 40;
/// A tick is long enough for the CPUs' busy time (counted in 10 ms units) to be read within
/// about a tenth.
const BUDGET_MEASURED_TICKS: u32 = 1;
const _: () = assert!(
    BUDGET_MEASURED_TICKS >= 1
        && BUDGET_MEASURED_TICKS < BUDGET_EVERY_TICKS
        && BUDGET_SETTLING_TICKS.is_multiple_of(BUDGET_EVERY_TICKS)
        && BUDGET_SETTLING_TICKS.is_multiple_of(BUDGET_SETTLED_EVERY_TICKS)
);

/// What the overhead budget does at tick `ticks`: whether it decides (closing the measuring
/// window) and whether it opens the next window, measured until the next decision.
fn budget_step(ticks: u32, settled: bool) -> (bool, bool) {
    let every = |ticks: u32| {
        if ticks <= BUDGET_SETTLING_TICKS || !settled {
            BUDGET_EVERY_TICKS
        } else {
            BUDGET_SETTLED_EVERY_TICKS
        }
    };
    let decides = |ticks: u32| ticks.is_multiple_of(every(ticks));
    let decision = decides(ticks);
    (
        decision,
        !decision && decides(ticks + BUDGET_MEASURED_TICKS),
    )
}

/// Re-reads of a process's maps after it execs: the dynamic loader maps libraries only after
/// the exec notification.
const AFTER_EXEC_REFRESH: [Duration; 3] = [
    Duration::from_millis(5),
    Duration::from_millis(30),
    Duration::from_millis(200),
];

/// What a finished run produced.
pub struct Outcome {
    /// The profile.
    pub profile: Profile,
    /// Where its files go.
    pub output: OutputDir,
    /// The exit code the profiler should exit with.
    pub exit_code: i32,
    /// The thread detaching the programs: join it before exiting.
    pub detaching: std::thread::JoinHandle<()>,
}

fn elapsed_ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// When a run started, by the clocks its figures are read with.
struct Clock {
    started: Instant,
    /// `CLOCK_MONOTONIC`, the kernel's clock.
    started_ns: u64,
    start_unix_ms: u64,
}

impl Clock {
    fn now() -> Clock {
        Clock {
            started: Instant::now(),
            started_ns: monotonic_ns(),
            start_unix_ms: unix_ms(),
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// SIGINT and SIGTERM, caught first: a stop asked for while loading is acted on, not fatal.
fn stop_signals() -> Result<(Signal, Signal), CollectError> {
    stop_signals::install()
        .map_err(|err| CollectError::Signals("catch SIGINT and SIGTERM", err))?;
    let sigint = signal(SignalKind::interrupt())
        .map_err(|err| CollectError::Signals("handle SIGINT", err))?;
    let sigterm = signal(SignalKind::terminate())
        .map_err(|err| CollectError::Signals("handle SIGTERM", err))?;
    Ok((sigint, sigterm))
}

/// Runs a whole profiling session.
pub async fn run(spec: TargetSpec, config: RunConfig) -> Result<Outcome, CollectError> {
    let clock = Clock::now();
    let (mut sigint, mut sigterm) = stop_signals()?;
    privileges::check()?;

    // Validate the target and the output folder before touching the kernel.
    let target = describe_target(&spec)?;
    let output_path = config.output.clone().unwrap_or_else(|| {
        output::default_dir(
            &target.name,
            &output::local_stamp((clock.start_unix_ms / 1000) as i64),
        )
    });
    let output = OutputDir::prepare(&output_path).map_err(|source| CollectError::Output {
        path: output_path.clone(),
        source,
    })?;

    let Started {
        mut collection,
        root_pids,
        mut child,
        attach_ms,
    } = start(&spec, &config, &target, &clock)?;
    let profiling_started = Instant::now();

    let bar = status_line(config.verbose);
    bar.set_prefix(format!(
        "{} ({})",
        target.name,
        root_pids
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    ));
    bar.enable_steady_tick(Duration::from_millis(250));

    let deadline = config
        .duration
        .and_then(|d| tokio::time::Instant::now().checked_add(d));
    let (exit_tx, mut exit_rx) = tokio::sync::oneshot::channel();
    let waiter = child.take().map(|mut child| {
        std::thread::spawn(move || {
            let status = child.wait();
            let _ = exit_tx.send(status);
        })
    });
    let exited = waiter.is_some().then_some(&mut exit_rx);
    let stop = collect_until_stop(
        &mut collection,
        deadline,
        (&mut sigint, &mut sigterm),
        exited,
        &root_pids,
        &bar,
    )
    .await?;
    let duration_secs = profiling_started.elapsed().as_secs_f64();
    bar.finish_and_clear();

    let mut collected = collection.finish(config.min_block.as_nanos() as u64)?;

    // In `record`, the command decides the exit code: stop it if the run ended first.
    let mut exit = None;
    if let Stop::CommandExited(status) = &stop {
        exit = Some(exit_code(*status));
    } else if let Some(waiter) = waiter {
        exit = stop_command(root_pids[0], &stop, &mut exit_rx)
            .await
            .map(exit_code);
        let _ = waiter.join();
    }

    let run = RunInfo {
        target: target.name,
        command: target.command,
        root_pids,
        follow_children: spec.follows_children(),
        start_unix_ms: clock.start_unix_ms,
        duration_secs,
        frequency_hz: config.frequency,
        min_block_us: config.min_block.as_micros() as u64,
        stack_sampling: collected.stack_sampling.take(),
        events: config.events.clone(),
        alloc_sample_bytes: config.alloc_sample_bytes,
        stop_reason: stop.describe(),
        exit_code: exit,
        attach_ms: Some(attach_ms),
        first_sample_ms: collected
            .first_sample_ns
            .map(|ns| (ns as f64 - clock.started_ns as f64) / 1e6),
        unwind: collected.unwind.take(),
        jit: collected.jit.take(),
        python: collected.spaces.python().stats(),
        kernel: crate::kernel::release(),
        profiler_version: env!("CARGO_PKG_VERSION").to_owned(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get() as u32),
    };
    let detaching = collected.detaching.take().expect("set by finish");
    let profile = collected.profile(run);
    let exit_code = match (&spec, exit) {
        (TargetSpec::Launch { .. }, Some(code)) => code,
        _ => 0,
    };
    Ok(Outcome {
        profile,
        output,
        exit_code,
        detaching,
    })
}

/// Collects until a stop condition: the duration, SIGINT or SIGTERM, the launched command's
/// exit (`command_exit`), or every target gone; handles process events, memory samples and
/// drains on the way.
async fn collect_until_stop(
    collection: &mut Collection,
    deadline: Option<tokio::time::Instant>,
    signals: (&mut Signal, &mut Signal),
    mut command_exit: Option<&mut CommandExit>,
    root_pids: &[u32],
    bar: &ProgressBar,
) -> Result<Stop, CollectError> {
    collection.sampler.events_begin();
    let mut ticker = tokio::time::interval(TICK);
    // Process notifications are answered sooner than the rest: unwind tables are asked for
    // by the first samples of a new program.
    let mut event_ticker = tokio::time::interval(collection.event_tick);
    let mut ticks: u32 = 0;
    Ok(loop {
        let sleep_until_deadline = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        let exited = async {
            match command_exit.as_mut() {
                Some(exit) => (&mut **exit).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep_until_deadline => break Stop::Duration,
            _ = signals.0.recv() => break Stop::Interrupted,
            _ = signals.1.recv() => break Stop::Terminated,
            status = exited => {
                let status = status.map_err(CollectError::ExitStatusLost)?.map_err(CollectError::Wait)?;
                break Stop::CommandExited(status);
            }
            _ = event_ticker.tick() => collection.handle_process_events(),
            _ = ticker.tick() => {
                ticks += 1;
                collection.handle_process_events();
                collection.sample_memory();
                // Drained before the budget decides: its caps follow the latest rates.
                if ticks.is_multiple_of(DRAIN_EVERY_TICKS) {
                    collection.drain_tick()?;
                    collection.refresh_maps();
                    collection.look_for_selected();
                    collection.note_thread_names();
                    if let Ok(counters) = collection.probes.counters() {
                        bar.set_message(status_message(&counters));
                    }
                }
                collection.note_walks();
                let step = if collection.sampler.load_arrived() {
                    // Decided at once where a window measures it, else at the next tick.
                    let measuring = collection.sampler.measuring_arrival();
                    (measuring, !measuring)
                } else {
                    budget_step(ticks, collection.sampler.settled())
                };
                match step {
                    (true, _) => collection.adjust_stack_sampling()?,
                    (false, true) => collection.measure_stack_sampling_cost(),
                    (false, false) => {}
                }
                if command_exit.is_none()
                    && collection.selection.is_none()
                    && ticks.is_multiple_of(5)
                    && !root_pids.iter().copied().chain(collection.processes.live_pids()).any(procfs::is_alive)
                {
                    break Stop::TargetExited;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_decides_every_half_second_then_every_two_once_settled() {
        let steps = |settled: bool| {
            let decisions: Vec<u32> = (1..=100)
                .filter(|&tick| budget_step(tick, settled).0)
                .collect();
            let opened: Vec<u32> = (1..=100)
                .filter(|&tick| budget_step(tick, settled).1)
                .collect();
            (decisions, opened)
        };
        let (decisions, opened) = steps(true);
        assert_eq!(decisions, [5, 10, 15, 20, 25, 30, 35, 40, 60, 80, 100]);
        assert_eq!(opened, [4, 9, 14, 19, 24, 29, 34, 39, 59, 79, 99]);
        let (decisions, opened) = steps(false);
        assert_eq!(decisions, (1..=20).map(|n| 5 * n).collect::<Vec<_>>());
        assert_eq!(opened, (1..=20).map(|n| 5 * n - 1).collect::<Vec<_>>());
    }
}
