//! Which programs each event kind needs, whether the kernel's tracepoints lay out their records
//! where those programs read, and loading (verifying) them.

use std::sync::Mutex;

use aya::{
    Btf, Ebpf,
    programs::{Program, ProgramError},
};

use profiler_common::block_field;

use super::{
    error::{ProbeError, program_error},
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
pub(super) const SYSCALL_PROGRAMS: [&str; 2] = ["sys_enter", "sys_exit"];

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

/// The program that walks the user stacks of sampled off-CPU periods at system-call exits.
pub(super) const OFFCPU_STACKS_PROGRAM: &str = "sys_exit_offcpu";

/// The scheduler programs (off-CPU time and run-queue delay), BTF tracepoints.
pub(super) const SCHEDULER_PROGRAMS: [&str; 2] = ["sched_switch", "sched_wakeup"];

/// Loads `names` into the kernel, several at a time. Verification is most of a start-up and
/// the kernel verifies privileged loads concurrently, so the programs are spread over the
/// CPUs, the slowest ones first.
pub(super) fn load_programs(
    ebpf: &mut Ebpf,
    names: &[&'static str],
    btf: &Btf,
) -> Result<(), ProbeError> {
    let mut programs: Vec<(&str, &mut Program)> = ebpf
        .programs_mut()
        .filter(|(name, _)| names.contains(name))
        .collect();
    programs.sort_by_key(|(name, _)| {
        SLOWEST_TO_VERIFY
            .iter()
            .position(|slow| slow == name)
            .unwrap_or(SLOWEST_TO_VERIFY.len())
    });
    let workers = std::thread::available_parallelism()
        .map_or(1, usize::from)
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
                    let loaded = load_program(name, program, btf);
                    log::debug!("{name}: verified and loaded in {:?}", started.elapsed());
                    if let Err(err) = loaded {
                        failures
                            .lock()
                            .expect("no panics while held")
                            .push((name, err));
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

/// The programs that take longest to verify, slowest first (the ones that walk user stacks; on
/// 6.18 the verifier explores 96 000, 71 000, 65 000 and 40 000 instructions): started first,
/// they do not end up last on a CPU.
const SLOWEST_TO_VERIFY: [&str; 5] = [
    "sys_exit",
    "sched_switch",
    "sys_exit_offcpu",
    "alloc_enter",
    "cpu_sample",
];

fn load_program(name: &str, program: &mut Program, btf: &Btf) -> Result<(), ProgramError> {
    match program {
        Program::PerfEvent(program) => program.load(),
        Program::TracePoint(program) => program.load(),
        Program::UProbe(program) => program.load(),
        // The BTF tracepoints are named as the kernel's tracepoints they attach to, but one.
        Program::BtfTracePoint(program) => {
            let tracepoint = if name == OFFCPU_STACKS_PROGRAM {
                "sys_exit"
            } else {
                name
            };
            program.load(tracepoint, btf)
        }
        other => unreachable!("{name}: a {:?} program", other.prog_type()),
    }
}
