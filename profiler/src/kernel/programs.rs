//! Which programs each event kind needs, whether the kernel's tracepoints lay out their records
//! where those programs read, and loading (verifying) them.

use std::sync::Mutex;

use aya::{
    Btf, Ebpf,
    maps::ProgramArray,
    programs::{Program, ProgramError, UProbe},
};

use profiler_common::{block_field, tail_call};

use super::{
    error::{ProbeError, map_error, program_error},
    tracefs,
};

/// The process-tracking programs.
pub(super) const PROCESS_PROGRAMS: [&str; 2] = ["sched_process_fork", "sched_process_exec"];
/// The program that learns the libraries the dynamic loader mapped (unwinding with tables).
pub(super) const LOADER_PROGRAM: &str = "loader_debug_state";

/// The program that keeps target threads' names current for the scheduler programs.
pub(super) const RENAME_PROGRAM: (&str, &str) = ("task", "task_rename");

/// Whether `task_rename` lays out its record where [`RENAME_PROGRAM`] reads. Without it, a
/// thread keeps the name it had at its first switch: worth a note, not a failed run.
pub(super) fn rename_tracepoint_fits() -> bool {
    use profiler_common::tracepoint_fields::{RENAME_NEWCOMM, RENAME_PID};

    let fits = tracefs::ensure_mounted().and_then(|root| {
        tracefs::check_layout(
            &root,
            "task/task_rename",
            &[("pid", RENAME_PID, 4), ("newcomm", RENAME_NEWCOMM, 16)],
        )
    });
    if let Err(err) = &fits {
        log::info!("thread renames are not followed: {err}");
    }
    fits.is_ok()
}

/// The system-call programs (I/O and memory-mapping calls), BTF tracepoints of
/// `raw_syscalls`.
pub(super) const SYSCALL_PROGRAMS: [&str; 2] = ["sys_enter", SYS_EXIT_PROGRAM];

/// The system-call exit program: it also walks the user stacks of sampled off-CPU periods,
/// and is then loaded for the scheduler programs too.
pub(super) const SYS_EXIT_PROGRAM: &str = "sys_exit";

/// The block-request programs.
pub(super) const BLOCK_PROGRAMS: [(&str, &str); 2] =
    [("block", "block_rq_issue"), ("block", "block_rq_complete")];

/// The allocator probes: entry, return, and `free`.
pub(super) const ALLOC_PROGRAMS: [&str; 3] = ["alloc_enter", "alloc_return", "free_enter"];

/// Where the `block` tracepoints hold the fields the block programs read, in
/// `profiler_common::block_field` order. Both events must agree on the fields they share (the
/// programs read them at one offset); `rwbs` must hold the 4 letters read.
pub(super) fn block_field_offsets() -> Result<[u32; block_field::COUNT], ProbeError> {
    let root = tracefs::ensure_mounted().map_err(ProbeError::Tracefs)?;
    let issue = tracefs::read_format(&root, "block/block_rq_issue").map_err(ProbeError::Tracefs)?;
    let complete =
        tracefs::read_format(&root, "block/block_rq_complete").map_err(ProbeError::Tracefs)?;
    let mut offsets = [0; block_field::COUNT];
    for (index, field, size) in [
        (block_field::DEV, "dev", 4..=4),
        (block_field::SECTOR, "sector", 8..=8),
        (block_field::RWBS, "rwbs", 4..=usize::MAX),
    ] {
        let offset = issue
            .field(field, size.clone())
            .map_err(ProbeError::Tracefs)?;
        complete
            .expect_field(field, offset, size)
            .map_err(ProbeError::Tracefs)?;
        offsets[index] = offset as u32;
    }
    offsets[block_field::BYTES] = issue.field("bytes", 4..=4).map_err(ProbeError::Tracefs)? as u32;
    Ok(offsets)
}

/// The eBPF object built by `build.rs` from `profiler-ebpf`, its stack walker a global
/// function. A global stack walker is verified once per program instead of once per state
/// that reaches it (start-up with every event kind 0.73-0.84 s -> about 0.35 s), but without
/// private stacks for tracing programs (before 6.13, and some later builds) the kernel
/// refuses its frame and its callers' together (544 bytes of 512).
pub(super) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profiler"));

/// The same, its stack walker inlined (profiler-ebpf's `inline-walk`).
pub(super) static EBPF_OBJECT_INLINE_WALK: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/inline-walk/profiler"));

/// The program of [`EBPF_OBJECT`] that the kernel verifies only if it has private stacks
/// (profiler-ebpf's `stack_probe`).
pub(super) const PRIVATE_STACK_PROBE: &str = "private_stack_probe";

/// Whether this kernel may take the object with the global stack walker: its release says
/// it may have private stacks (whether it does, [`PRIVATE_STACK_PROBE`] tells).
pub(super) fn may_take_global_walker() -> bool {
    cfg!(target_arch = "x86_64") && series_has_private_stacks(&super::release())
}

/// Whether `ebpf` is the object with the stack walker inlined: only it has
/// [`SYS_EXIT_WALK_PROGRAM`].
pub(super) fn walker_inlined(ebpf: &aya::Ebpf) -> bool {
    ebpf.program(SYS_EXIT_WALK_PROGRAM).is_some()
}

/// The program that walks the user stacks of system-call exits (sampled I/O calls, sampled
/// off-CPU periods) in the object with the walker inlined, tail-called by `sys_exit` (see
/// profiler-ebpf's `walk_calls`). In the other object `sys_exit` walks them itself.
pub(super) const SYS_EXIT_WALK_PROGRAM: &str = "sys_exit_walk";

/// The program that walks the user stacks of threads leaving the CPU in the object with the
/// walker inlined, tail-called by `sched_switch`.
pub(super) const SCHED_SWITCH_WALK_PROGRAM: &str = "sched_switch_walk";

/// Who tail-calls whom in the object with the walker inlined: the program named first, through
/// the array named second, at the index given, the program named last.
const WALK_CALLS: [(&str, &str, u32, &str); 2] = [
    (
        SYS_EXIT_PROGRAM,
        "SYS_EXIT_TAIL_CALLS",
        tail_call::WALK_EXIT,
        SYS_EXIT_WALK_PROGRAM,
    ),
    (
        SCHEDULER_PROGRAMS[0],
        "SCHED_SWITCH_TAIL_CALLS",
        tail_call::WALK_SWITCH_OUT,
        SCHED_SWITCH_WALK_PROGRAM,
    ),
];

/// Puts the loaded programs that make `caller`'s walks where it tail-calls them; before
/// `caller` is attached, or it would go without them. Nothing in the other object.
pub(super) fn install_walk_calls(ebpf: &mut Ebpf, caller: &str) -> Result<(), ProbeError> {
    for (of, array, index, program) in WALK_CALLS {
        if of != caller {
            continue;
        }
        // Not in this object, or not loaded for this run.
        let Some(Ok(fd)) = ebpf.program(program).map(|program| program.fd()) else {
            continue;
        };
        let fd = fd
            .try_clone()
            .map_err(|err| program_error(format!("taking {program}"), err.into()))?;
        let mut calls: ProgramArray<_> = ProgramArray::try_from(
            ebpf.map_mut(array)
                .expect("the object with it has its array"),
        )
        .map_err(map_error(array))?;
        calls.set(index, &fd, 0).map_err(map_error(array))?;
    }
    Ok(())
}

/// Whether kernel `release` ("6.13.2-amd64") is of a series that gives tracing programs
/// private stacks (6.13 on).
fn series_has_private_stacks(release: &str) -> bool {
    super::series(release).is_some_and(|series| series >= (6, 13))
}

/// The scheduler programs (off-CPU time and run-queue delay), BTF tracepoints.
pub(super) const SCHEDULER_PROGRAMS: [&str; 2] = ["sched_switch", "sched_wakeup"];

/// Loads `names` into the kernel, several at a time, and hands each one loaded to `loaded`
/// on the thread that loaded it. Verification is most of a start-up and the kernel verifies
/// privileged loads concurrently, so the programs are spread over the CPUs, the slowest ones
/// first.
pub(super) fn load_programs(
    ebpf: &mut Ebpf,
    names: &[&'static str],
    btf: &Btf,
    loaded: &(dyn Fn(&str, &mut Program) + Sync),
) -> Result<(), ProbeError> {
    let mut programs: Vec<(&str, &mut Program)> = ebpf
        .programs_mut()
        .filter(|(name, _)| names.contains(name))
        .collect();
    programs.sort_by_key(|(name, _)| {
        LOAD_ORDER
            .iter()
            .position(|first| first == name)
            .unwrap_or(LOAD_ORDER.len())
    });
    // One more than the CPUs: a program attached as it is loaded waits for the kernel (an
    // RCU grace period), and its CPU would idle meanwhile.
    let workers = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .saturating_add(1)
        .min(programs.len());
    let queue = Mutex::new(programs.into_iter());
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    // The lock is released before the load: the queue only hands out work.
                    let next = queue.lock().expect("no panics while held").next();
                    let Some((name, program)) = next else {
                        break;
                    };
                    let started = std::time::Instant::now();
                    let result = load_program(name, program, btf);
                    // The count of instructions the verifier explored is what a change to a
                    // program moves; the time also moves with the machine's load.
                    let explored = program
                        .info()
                        .ok()
                        .and_then(|info| info.verified_instruction_count());
                    log::debug!(
                        "{name}: verified and loaded in {:?} ({} instructions explored)",
                        started.elapsed(),
                        explored.map_or_else(|| "?".to_owned(), |n| n.to_string())
                    );
                    match result {
                        Ok(()) => loaded(name, program),
                        Err(err) => failures
                            .lock()
                            .expect("no panics while held")
                            .push((name, err)),
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().expect("no panics while held");
    // The first in `names` order: the same error for the same cause, run after run.
    failures.sort_by_key(|(name, _)| names.iter().position(|wanted| wanted == name));
    match failures.into_iter().next() {
        Some((name, err)) => Err(program_error(format!("loading the {name} program"), err)),
        None => Ok(()),
    }
}

/// The order programs are loaded in: first those attached as soon as they are verified, the
/// loader hook (it plants a breakpoint in every process that maps the loader) and the quick
/// allocator probes, whose attaches then overlap the others' verification; then the slowest
/// to verify (the ones that walk user stacks, then the exec hook: on 6.18 the verifier
/// explores 47 000, 35 000, 26 000, 25 000 and 14 000 instructions), so that they do not end
/// up last on a CPU.
const LOAD_ORDER: [&str; 10] = [
    LOADER_PROGRAM,
    ALLOC_PROGRAMS[1],
    ALLOC_PROGRAMS[2],
    SCHED_SWITCH_WALK_PROGRAM,
    SYS_EXIT_WALK_PROGRAM,
    SYS_EXIT_PROGRAM,
    "sched_switch",
    ALLOC_PROGRAMS[0],
    "cpu_sample",
    "sched_process_exec",
];

fn load_program(name: &str, program: &mut Program, btf: &Btf) -> Result<(), ProgramError> {
    match program {
        Program::PerfEvent(program) => program.load(),
        Program::TracePoint(program) => program.load(),
        Program::UProbe(program) => program.load(),
        // The BTF tracepoints are named as the kernel's tracepoints they attach to, but those
        // that make the walks of one of them.
        Program::BtfTracePoint(program) => {
            let tracepoint = WALK_CALLS
                .into_iter()
                .find(|(.., walker)| *walker == name)
                .map_or(name, |(caller, ..)| caller);
            program.load(tracepoint, btf)
        }
        other => unreachable!("{name}: a {:?} program", other.prog_type()),
    }
}

/// Hooks the system's dynamic loader where it tells debuggers its objects changed, in every
/// process (the program filters targets): new processes' libraries are learned as they are
/// mapped. Without it (another loader, symbols missing), they wait for the collector to
/// describe the process, as their first samples did before.
pub(super) fn attach_loader_hook(
    program: &mut UProbe,
) -> Option<aya::programs::uprobe::UProbeLink> {
    use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope};

    let loader = crate::target::libraries::own_loader()?;
    let Some(cookie) = crate::target::libraries::loader_debug_cookie(&loader) else {
        log::info!(
            "{}: no debugger interface; libraries are learned later",
            loader.display()
        );
        return None;
    };
    let point = UProbeAttachPoint {
        location: UProbeAttachLocation::SymbolOffset("_dl_debug_state", 0),
        cookie: Some(cookie),
    };
    let started = std::time::Instant::now();
    match program
        .attach(point, &loader, UProbeScope::AllProcesses)
        .and_then(|id| program.take_link(id))
    {
        Ok(link) => {
            log::debug!("loader hooked in {:?}", started.elapsed());
            Some(link)
        }
        Err(err) => {
            log::info!(
                "{}: not hooked ({err}); libraries are learned later",
                loader.display()
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_stacks_from_6_13() {
        assert!(series_has_private_stacks("6.13.0"));
        assert!(series_has_private_stacks("6.18.44-fc-v857"));
        assert!(series_has_private_stacks("7.0.1-amd64"));
        assert!(!series_has_private_stacks("6.12.117+deb12-amd64"));
        assert!(!series_has_private_stacks("6.1.0-57-amd64"));
        assert!(!series_has_private_stacks("5.15.0-generic"));
        assert!(!series_has_private_stacks(""));
    }
}
