//! Start-up: the target described, the programs loaded and attached in an order that lets no
//! process or thread fall between two steps, and for `record` the command released.

use std::{path::PathBuf, process::Child, time::Instant};

use super::{
    AFTER_EXEC_REFRESH, Clock, collection::Collection, elapsed_ms, error::CollectError,
    monotonic_ns, stop::stopped_while_loading,
};
use crate::{
    collect::config::{RunConfig, Selection, StackSampling, TargetSpec},
    kernel::{AllocatorProbes, KernelProbes, LoadOptions},
    model::EventKind,
    target::{
        allocators::{self, AllocatorObject},
        launch::{self, GatedChild},
        libraries, procfs, selection,
    },
};

/// What [`start`] leaves: the programs attached, the targets known and watched.
pub(super) struct Started {
    pub(super) collection: Collection,
    /// Processes given (`attach`) or launched (`record`).
    pub(super) root_pids: Vec<u32>,
    /// The launched command, running.
    pub(super) child: Option<Child>,
    /// From the start to every program attached, ms.
    pub(super) attach_ms: f64,
}

/// Loads and attaches the programs for `spec`, makes its processes known, and for `record`
/// starts the command.
pub(super) fn start(
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
        allocators,
        collection_pids,
    } = attach_targets(spec, config, target.program.as_deref(), sampling)?;
    let mut collection = Collection::new(probes, config);
    if let Some(gated) = &gated {
        for object in allocators {
            collection.note_allocator_probed(gated.pid(), object);
        }
    }
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
pub(super) struct Target {
    /// Short name: the first process's, or the command's program.
    pub(super) name: String,
    /// Command line: the first process's, or the command's.
    pub(super) command: Vec<String>,
    /// For `record`, the program to run.
    pub(super) program: Option<PathBuf>,
}

/// The target's short name and command line, and for `record` the program to run; checks
/// that pids exist and can be traced, or that the command can be found.
pub(super) fn describe_target(spec: &TargetSpec) -> Result<Target, CollectError> {
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
    /// The allocator objects probed in the launched command.
    allocators: Vec<AllocatorObject>,
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
    // A launched command is held before its exec from here, so that its allocator is probed
    // while the programs are verified: it maps what the profiler maps, the system's libc,
    // which the command will map too. The probes, bound to the process, stay through the
    // exec; an allocator the command brings is probed when its maps are read after the exec.
    let gated = match spec {
        TargetSpec::Launch { argv, .. } => {
            Some(GatedChild::spawn(program.expect("resolved"), argv)?)
        }
        _ => None,
    };
    let allocators = match &gated {
        Some(gated) if config.events.contains(&EventKind::Alloc) => {
            allocators::allocator_objects(&procfs::proc_root(), gated.pid(), program)
        }
        _ => Vec::new(),
    };
    let allocator_probes: Vec<AllocatorProbes> = allocators
        .iter()
        .map(|object| AllocatorProbes {
            pid: gated.as_ref().map_or(0, GatedChild::pid),
            path: object.attach_path.clone(),
            functions: object.probe_list(),
        })
        .collect();
    let mut probes = KernelProbes::load(
        LoadOptions {
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
            run_delays_from_wakeups: config.run_delays_from_wakeups,
        },
        &allocator_probes,
    )?;
    stopped_while_loading()?;
    let mut root_pids = Vec::new();
    let mut collection_pids = Vec::new();
    match spec {
        TargetSpec::Attach { pids, children } => {
            for &pid in pids {
                probes.add_target(pid, *children)?;
            }
            root_pids.clone_from(pids);
            collection_pids.clone_from(pids);
        }
        TargetSpec::Launch { children, .. } => {
            let pid = gated.as_ref().expect("spawned above").pid();
            probes.add_target(pid, *children)?;
            root_pids.push(pid);
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
        allocators,
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

/// Readies the held command (its program's unwind tables compiled) and lets it exec.
fn start_command(
    collection: &mut Collection,
    gated: GatedChild,
    program: Option<&std::path::Path>,
    command: &[String],
    scheduler: bool,
) -> Result<Child, CollectError> {
    let pid = gated.pid();
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
