//! A profiling run: validate the target, load and attach the probes, collect until a stop
//! condition, detach, and turn what was collected into a [`Profile`].

mod budget;
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
mod stop;
mod stop_signals;
mod tables;
mod threads;
mod windows;

pub use error::CollectError;
pub use windows::{Kept, run_windows};

use std::{
    path::PathBuf,
    process::Child,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use indicatif::ProgressBar;
use tokio::signal::unix::{Signal, SignalKind, signal};

use self::{
    collection::Collection,
    progress::{status_line, status_message},
    stop::{CommandExit, Stop, exit_code, stop_command, stopped_while_loading},
};
use crate::{
    collect::config::{RunConfig, Selection, StackSampling, TargetSpec},
    kernel::{KernelProbes, LoadOptions},
    model::{EventKind, Profile, RunInfo},
    output::{self, OutputDir},
    target::{
        launch::{self, GatedChild},
        libraries, privileges, procfs, selection,
    },
};

/// How often process notifications and memory maps are looked at.
const TICK: Duration = Duration::from_millis(100);

/// How often sample counts are drained from the kernel.
const DRAIN_EVERY_TICKS: u32 = 10;

/// Ticks between two decisions of the overhead budget (`--max-overhead`) for the first
/// `BUDGET_SETTLING_TICKS`: short enough that a busy server is within budget a second after
/// the attach.
const BUDGET_EVERY_TICKS: u32 = 5;
/// Ticks between two decisions after that. What the programs cost is measured over the last
/// tick before each decision only: the kernel's timing of every program run costs two clock
/// reads a run, as much as the cheapest programs take (on a busy database, 3% of the CPUs
/// while it is on). Once settled, one tick in twenty.
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
fn budget_step(ticks: u32) -> (bool, bool) {
    let every = |ticks: u32| {
        if ticks <= BUDGET_SETTLING_TICKS {
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

/// What [`start`] leaves: the programs attached, the targets known and watched.
struct Started {
    collection: Collection,
    /// Processes given (`attach`) or launched (`record`).
    root_pids: Vec<u32>,
    /// The launched command, running.
    child: Option<Child>,
    /// From the start to every program attached, ms.
    attach_ms: f64,
}

/// Loads and attaches the programs for `spec`, makes its processes known, and for `record`
/// starts the command.
fn start(
    spec: &TargetSpec,
    config: &RunConfig,
    target: &Target,
    clock: &Clock,
) -> Result<Started, CollectError> {
    let scheduler = config.events.contains(&EventKind::OffCpu);
    let sampling = samples_first(spec, config);
    let Attached {
        probes,
        root_pids,
        gated,
        collection_pids,
    } = attach_targets(spec, config, target.program.as_deref(), sampling)?;
    let mut collection = Collection::new(probes, config);
    collection.host_wide = spec.selection() == Some(&Selection::All);
    collection.selection = spec.selection().cloned();
    collection.selection_only = matches!(spec, TargetSpec::System(_));
    collection.start_stack_sampling()?;
    // Running processes' unwind tables are loaded before any event program is attached: a
    // stack walked before its process is described is cut short, and a backend blocked on a
    // lock can be waiting there for the whole run.
    for &pid in &collection_pids {
        let _ = collection.read_memory_map(pid);
    }
    if sampling {
        collection.probes.attach_cpu_sampling(config.frequency)?;
        stopped_while_loading()?;
        let started = Instant::now();
        collection.probes.load_deferred()?;
        log::debug!(
            "sampling while the other programs were verified ({:.0} ms)",
            elapsed_ms(started)
        );
    }
    attach_events(
        &mut collection.probes,
        config,
        &target.name,
        gated.as_ref().map(GatedChild::pid),
        &collection_pids,
        sampling,
    )?;
    let attach_ms = elapsed_ms(clock.started);
    stopped_while_loading()?;
    if let TargetSpec::Attach { .. } = spec
        && !collection_pids.iter().any(|&pid| procfs::is_alive(pid))
    {
        return Err(CollectError::TargetExitedWhileLoading);
    }
    for pid in collection_pids {
        collection.watch_process(pid, None);
    }

    let child = match gated {
        Some(gated) => Some(start_command(
            &mut collection,
            gated,
            target.program.as_deref(),
            &target.command,
            scheduler,
        )?),
        None => None,
    };
    Ok(Started {
        collection,
        root_pids,
        child,
        attach_ms,
    })
}

/// What is profiled, as the profile names it.
struct Target {
    /// Short name: the first process's, or the command's program.
    name: String,
    /// Command line: the first process's, or the command's.
    command: Vec<String>,
    /// For `record`, the program to run.
    program: Option<PathBuf>,
}

/// The target's short name and command line, and for `record` the program to run; checks
/// that pids exist and can be traced, or that the command can be found.
fn describe_target(spec: &TargetSpec) -> Result<Target, CollectError> {
    Ok(match spec {
        TargetSpec::Attach { pids, .. } => {
            crate::target::validate_pids(pids)?;
            Target {
                name: procfs::process_name(pids[0]).unwrap_or_else(|_| pids[0].to_string()),
                command: procfs::command_line(pids[0]).unwrap_or_default(),
                program: None,
            }
        }
        TargetSpec::System(selection) => Target {
            name: match selection {
                Selection::All => "system".to_owned(),
                // Part of the output folder's name: a long pattern is cut.
                Selection::Comm(pattern) => {
                    format!(
                        "comm-{}",
                        pattern.as_str().chars().take(48).collect::<String>()
                    )
                }
                Selection::Cgroup(path) => path
                    .rsplit('/')
                    .find(|part| !part.is_empty())
                    .unwrap_or("cgroup")
                    .to_owned(),
            },
            command: Vec::new(),
            program: None,
        },
        TargetSpec::Launch { argv, .. } => {
            let program = launch::resolve_program(&argv[0])?;
            Target {
                name: PathBuf::from(&argv[0])
                    .file_name()
                    .map_or_else(|| "command".into(), |n| n.to_string_lossy().into_owned()),
                command: argv
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect(),
                program: Some(program),
            }
        }
    })
}

/// What `attach` leaves: the loaded, attached programs and the processes they target.
struct Attached {
    probes: KernelProbes,
    /// Processes given (`attach`) or launched (`record`).
    root_pids: Vec<u32>,
    /// The launched command, held before exec until the programs are attached.
    gated: Option<GatedChild>,
    /// Processes to watch from the start: the attached ones and their descendants.
    collection_pids: Vec<u32>,
}

/// Loads the programs, makes the targets known to them and follows their new processes, in an
/// order that lets no child fall between two steps. The event programs are attached next
/// ([`attach_events`]).
fn attach_targets(
    spec: &TargetSpec,
    config: &RunConfig,
    program: Option<&std::path::Path>,
    sample_first: bool,
) -> Result<Attached, CollectError> {
    let mut probes = KernelProbes::load(LoadOptions {
        verbose: config.verbose,
        min_block_ns: config.min_block.as_nanos() as u64,
        offcpu_stack_sampling: config.stack_sampling != StackSampling::Exact,
        cpu: config.events.contains(&EventKind::Cpu),
        scheduler: config.events.contains(&EventKind::OffCpu),
        io: config.events.contains(&EventKind::Io),
        alloc: config.events.contains(&EventKind::Alloc),
        alloc_sample_bytes: config.alloc_sample_bytes,
        unwind_rows: config.unwind_rows,
        sample_first,
        report_untargeted_execs: spec.selection().is_some_and(Selection::is_partial),
    })?;
    stopped_while_loading()?;
    let mut root_pids = Vec::new();
    let mut gated = None;
    let mut collection_pids = Vec::new();
    match spec {
        TargetSpec::Attach { pids, children } => {
            for &pid in pids {
                probes.add_target(pid, *children)?;
            }
            root_pids.clone_from(pids);
            collection_pids.clone_from(pids);
        }
        TargetSpec::Launch { argv, children, .. } => {
            let child = GatedChild::spawn(program.expect("resolved"), argv)?;
            probes.add_target(child.pid(), *children)?;
            root_pids.push(child.pid());
            gated = Some(child);
        }
        TargetSpec::System(_) => {}
    }
    // Fork tracking first, then the descendants that exist: none falls between the two.
    probes.attach_process_tracking()?;
    if let TargetSpec::Attach {
        pids,
        children: true,
    } = spec
    {
        for pid in procfs::descendants(pids) {
            probes.add_target(pid, true)?;
            collection_pids.push(pid);
        }
    }
    if let Some(selection) = spec.selection() {
        // After fork tracking, as descendants are: a process started meanwhile is in the list
        // or the child of one that is (or, selected by what it runs, told by its exec).
        if let Some(warning) = selection::missing_cgroup(selection) {
            log::warn!("{warning}");
        }
        let launched = gated.as_ref().map(GatedChild::pid);
        for pid in selection::running(selection) {
            if Some(pid) != launched {
                probes.add_target(pid, true)?;
                collection_pids.push(pid);
            }
        }
        if collection_pids.is_empty() && selection.is_partial() {
            log::warn!("no process is selected yet: profiling those that start");
        } else {
            log::info!("{} processes selected", collection_pids.len());
        }
    }
    Ok(Attached {
        probes,
        root_pids,
        gated,
        collection_pids,
    })
}

/// Whether CPU sampling starts before the other event families' programs are verified: for a
/// running process, sampled at once. A launched command waits for every family instead, so
/// that each sees it from its first instruction.
fn samples_first(spec: &TargetSpec, config: &RunConfig) -> bool {
    matches!(spec, TargetSpec::Attach { .. } | TargetSpec::System(_))
        && config.events.contains(&EventKind::Cpu)
        && config.events.len() > 1
}

/// Attaches every event family asked for (CPU sampling unless `sampling` already runs);
/// `gated` is the launched command, held before its exec. Threads that exist are made known
/// after the scheduler programs are attached, so none falls between the two.
fn attach_events(
    probes: &mut KernelProbes,
    config: &RunConfig,
    target_name: &str,
    gated: Option<u32>,
    collection_pids: &[u32],
    sampling: bool,
) -> Result<(), CollectError> {
    if config.events.contains(&EventKind::OffCpu) {
        // Off-CPU time is accounted from here; threads found asleep are off-CPU since then.
        let attach_ns = monotonic_ns();
        probes.attach_scheduler(attach_ns)?;
        // The programs know target threads by their `THREADS` entries. Threads created from
        // now on get one at fork; the ones that exist are added here, after the attach, so
        // none falls between the two.
        for pid in gated.into_iter().chain(collection_pids.iter().copied()) {
            let launched = Some(pid) == gated;
            for thread in procfs::threads(pid) {
                // A sleeping thread is off-CPU from the attach on; a runnable one is
                // accounted from its first switch. The launched command waits at its gate
                // until released, and is accounted from then.
                let blocked_since = (!thread.runnable && !launched).then_some(attach_ns);
                let name = if launched { target_name } else { &thread.name };
                probes.add_thread(thread.tid, pid, name, blocked_since)?;
            }
        }
    }
    stopped_while_loading()?;
    if config.events.contains(&EventKind::Io) || config.events.contains(&EventKind::Alloc) {
        probes.attach_syscalls()?;
    }
    if config.events.contains(&EventKind::Io) {
        probes.attach_block()?;
    }
    if config.events.contains(&EventKind::Cpu) && !sampling {
        probes.attach_cpu_sampling(config.frequency)?;
    }
    Ok(())
}

/// Readies the held command (its allocator probed, its program's unwind tables compiled)
/// and lets it exec.
fn start_command(
    collection: &mut Collection,
    gated: GatedChild,
    program: Option<&std::path::Path>,
    command: &[String],
    scheduler: bool,
) -> Result<Child, CollectError> {
    let pid = gated.pid();
    // Held before exec, it maps what the profiler maps: the system's libc, which the
    // command will map too. The probes, bound to the process, stay through the exec; an
    // allocator the command brings is probed when its maps are read after the exec. The
    // rarely used functions probed are those the command's program imports, not only the
    // profiler's own.
    collection
        .probe_allocators(pid, program)
        .map_err(CollectError::Allocator)?;
    let _ = collection.read_memory_map(pid);
    if let Some(unwind) = collection.unwind.as_mut() {
        // The program, its interpreter and its libraries, compiled before it runs: the kernel
        // finds them by file from its first instruction (the profiler's own libraries were
        // loaded by `watch_process` already, and are not compiled twice).
        let program = program.expect("resolved");
        let library_path = std::env::var("LD_LIBRARY_PATH").ok();
        unwind.prepare_file(program, &mut collection.probes);
        for object in libraries::startup_objects(program, library_path.as_deref()) {
            unwind.prepare_file(&object, &mut collection.probes);
        }
    }
    if scheduler {
        collection.probes.set_accounting_start(monotonic_ns())?;
    }
    // Not started at all rather than started and stopped at once.
    stopped_while_loading()?;
    let child = gated.release().map_err(|source| CollectError::Start {
        command: command.join(" "),
        source,
    })?;
    collection.refreshes.extend(
        AFTER_EXEC_REFRESH
            .iter()
            .map(|d| (Instant::now() + *d, pid)),
    );
    Ok(child)
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
                match budget_step(ticks) {
                    (true, _) => collection.adjust_stack_sampling()?,
                    (false, true) => collection.measure_stack_sampling_cost(),
                    (false, false) => {}
                }
                if ticks.is_multiple_of(DRAIN_EVERY_TICKS) {
                    collection.drain_tick()?;
                    collection.refresh_maps();
                    collection.look_for_selected();
                    collection.note_thread_names();
                    if let Ok(counters) = collection.probes.counters() {
                        bar.set_message(status_message(&counters));
                    }
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
    fn the_budget_decides_every_half_second_then_every_two() {
        let decisions: Vec<u32> = (1..=100).filter(|&tick| budget_step(tick).0).collect();
        assert_eq!(decisions, [5, 10, 15, 20, 25, 30, 35, 40, 60, 80, 100]);
        let opened: Vec<u32> = (1..=100).filter(|&tick| budget_step(tick).1).collect();
        assert_eq!(opened, [4, 9, 14, 19, 24, 29, 34, 39, 59, 79, 99]);
    }
}
