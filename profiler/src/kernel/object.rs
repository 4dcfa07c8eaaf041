//! What to load: the event families a run collects, the load-time constants the programs read
//! (struct offsets from the kernel's BTF, the run's choices), and the object loaded with them
//! on a thread of its own.

use std::sync::mpsc;

use aya::{Ebpf, EbpfLoader, programs::Program};

use super::{
    error::{PERMISSION_HINT, ProbeError, is_permission_error, is_verifier_refusal},
    programs::{
        EBPF_OBJECT, EBPF_OBJECT_INLINE_WALK, PRIVATE_STACK_PROBE, block_field_offsets,
        may_take_global_walker,
    },
};
use crate::kernel::btf::{self, KernelTypes};

/// What to load.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Forward the programs' aya-log records to the `log` crate (needs a tokio runtime).
    pub verbose: bool,
    /// Shortest off-CPU period to record, ns.
    pub min_block_ns: u64,
    /// Off-CPU periods may have their stacks sampled: their user stacks are then walked at
    /// system-call exits, which the `sys_exit` program watches.
    pub offcpu_stack_sampling: bool,
    /// Load the CPU sampling program.
    pub cpu: bool,
    /// Load the scheduler (off-CPU) programs.
    pub scheduler: bool,
    /// Load the I/O programs (system calls, block requests).
    pub io: bool,
    /// Load the allocation programs (allocator uprobes, memory-mapping calls).
    pub alloc: bool,
    /// Bytes between sampled allocations; 0 records every one.
    pub alloc_sample_bytes: u64,
    /// The most rows the unwind tables may hold when user stacks are walked with them;
    /// `None` leaves user stacks to the kernel's frame-pointer walker.
    pub unwind_rows: Option<u32>,
    /// Time run-queue delays at wakeups even where the kernel's `sched_info` has them.
    pub run_delays_from_wakeups: bool,
    /// Verify only what CPU sampling needs before returning; the other programs wait for
    /// [`KernelProbes::load_deferred`]. A running process is then sampled while they are
    /// verified, most of a start-up.
    pub sample_first: bool,
    /// Stream every process's exec, not only the targets': processes are selected by what
    /// they run.
    pub report_untargeted_execs: bool,
}

/// The values of the programs' load-time globals.
pub(super) struct Globals {
    tgid_offset: u32,
    pid_offset: u32,
    track_threads: u32,
    io_slots: u32,
    report_untargeted_execs: u32,
    fd_inode_offsets: [u32; 7],
    alloc_sample_bytes: u64,
    min_block_ns: u64,
    settle_at_exit: u32,
    unwind_with_tables: u32,
    uretprobe_offsets: [u32; 5],
    vma_file_offsets: [u32; 11],
    task_context_offsets: [u32; 2],
    task_fsbase_offset: u32,
    run_delay_offsets: [u32; 2],
    block_field_offsets: [u32; profiler_common::block_field::COUNT],
    log_level: u8,
}

impl Globals {
    /// Reads the struct offsets from the kernel's BTF and the tracepoint formats, and takes
    /// the rest from `options`.
    pub(super) fn new(options: &LoadOptions) -> Result<Self, ProbeError> {
        let btf_blob = std::fs::read(btf::VMLINUX_BTF).map_err(|source| ProbeError::NoBtf {
            path: btf::VMLINUX_BTF,
            source,
        })?;
        let types = KernelTypes::parse(&btf_blob).map_err(ProbeError::Btf)?;
        let tgid_offset = types
            .member_offset("task_struct", "tgid")
            .map_err(ProbeError::Btf)?;
        let pid_offset = types
            .member_offset("task_struct", "pid")
            .map_err(ProbeError::Btf)?;
        let track_threads = u32::from(options.scheduler);
        // Calls in progress kept per CPU need every switch between a system call's entry and
        // exit seen: a PREEMPT_RT kernel may switch in the middle of a system-call program.
        let io_slots = u32::from(options.scheduler && !realtime_kernel());
        // Sampled off-CPU periods get their user stacks at system-call exits.
        let settle_offcpu_at_exit = options.scheduler && options.offcpu_stack_sampling;
        let mut fd_inode_offsets = [0u32; 7];
        if options.io {
            let path = [
                ("task_struct", "files"),
                ("files_struct", "fdt"),
                ("fdtable", "max_fds"),
                ("fdtable", "fd"),
                ("file", "f_inode"),
                ("inode", "i_mode"),
                ("inode", "i_ino"),
            ];
            for (slot, (name, member)) in fd_inode_offsets.iter_mut().zip(path) {
                *slot = types.member_offset(name, member).map_err(ProbeError::Btf)?;
            }
        }
        // From the current task to the return addresses its pending return probes saved:
        // `task_struct.utask`, `uprobe_task.return_instances`, `return_instance.stack`,
        // `.orig_ret_vaddr`, `.next`. Missing (another kernel's layout): left at 0, and stacks
        // through a probed function stop at the trampoline as before.
        let uretprobe_offsets = types.all_or_none([
            ("task_struct", "utask"),
            ("uprobe_task", "return_instances"),
            ("return_instance", "stack"),
            ("return_instance", "orig_ret_vaddr"),
            ("return_instance", "next"),
        ]);
        // Whether the current task has its own user context to walk: `task_struct.mm` (none
        // once it is exiting) and the bit offset of `task_struct.in_execve` (while set, the
        // saved registers may point into the address space exec just replaced). Missing: 0,
        // and such samples keep their cut user stacks as before.
        let task_context_offsets = match (
            types.member_offset("task_struct", "mm"),
            types.member_bit_offset("task_struct", "in_execve"),
        ) {
            (Ok(mm), Ok(in_execve)) => [mm, in_execve],
            (Ok(mm), Err(_)) => [mm, 0],
            _ => [0, 0],
        };
        // `task_struct.thread.fsbase`: what CPython before 3.11 knows its threads by.
        let task_fsbase_offset = match (
            types.member_offset("task_struct", "thread"),
            types.member_offset("thread_struct", "fsbase"),
        ) {
            (Ok(thread), Ok(fsbase)) => thread + fsbase,
            _ => 0,
        };
        // The scheduler's own run-queue accounting of a task, `task_struct.sched_info.pcount`
        // and `.run_delay`. Missing (no `CONFIG_SCHED_INFO`): 0, and `sched_wakeup` times the
        // delays.
        let run_delay_offsets = match (
            types.member_offset("task_struct", "sched_info"),
            types.member_offset("sched_info", "pcount"),
            types.member_offset("sched_info", "run_delay"),
        ) {
            (Ok(info), Ok(pcount), Ok(run_delay)) if !options.run_delays_from_wakeups => {
                [info + pcount, info + run_delay]
            }
            _ => [0, 0],
        };
        // From a memory area to the identity of its file, and from a task to its program's
        // text (`unwind_mappings`). Missing: all 0, and new processes wait for the collector.
        let vma_file_offsets = types.all_or_none([
            ("vm_area_struct", "vm_start"),
            ("vm_area_struct", "vm_end"),
            ("vm_area_struct", "vm_pgoff"),
            ("vm_area_struct", "vm_flags"),
            ("vm_area_struct", "vm_file"),
            ("file", "f_inode"),
            ("inode", "i_ino"),
            ("inode", "i_sb"),
            ("super_block", "s_dev"),
            ("task_struct", "mm"),
            ("mm_struct", "start_code"),
        ]);
        let block_field_offsets = if options.io {
            block_field_offsets()?
        } else {
            [0; profiler_common::block_field::COUNT]
        };
        Ok(Globals {
            tgid_offset,
            pid_offset,
            track_threads,
            io_slots,
            report_untargeted_execs: u32::from(options.report_untargeted_execs),
            fd_inode_offsets,
            alloc_sample_bytes: options.alloc_sample_bytes,
            min_block_ns: options.min_block_ns,
            settle_at_exit: u32::from(settle_offcpu_at_exit),
            unwind_with_tables: u32::from(options.unwind_rows.is_some()),
            uretprobe_offsets,
            vma_file_offsets,
            task_context_offsets,
            task_fsbase_offset,
            run_delay_offsets,
            block_field_offsets,
            log_level: if options.verbose { 0xff } else { 0 },
        })
    }

    /// Whether `sched_switch` takes the run-queue delays from the kernel's own accounting
    /// (else `sched_wakeup` times them).
    pub(super) fn run_delays_at_switch(&self) -> bool {
        self.run_delay_offsets[0] != 0
    }
}

/// The object being loaded on a thread of its own: aya parses the kernel's BTF in
/// `EbpfLoader::new` (20 ms here) while the caller reads the struct offsets, and frees that
/// parse (some 100 000 allocations, 5 ms or more) after handing the object over.
pub(super) struct ObjectLoad {
    globals: mpsc::Sender<Globals>,
    loaded: mpsc::Receiver<Result<Ebpf, ProbeError>>,
}

impl ObjectLoad {
    /// Starts parsing the kernel's BTF for the object.
    pub(super) fn start(options: LoadOptions) -> Self {
        let (globals, globals_to_use) = mpsc::channel::<Globals>();
        let (object, loaded) = mpsc::channel();
        std::thread::spawn(move || {
            let mut loader = EbpfLoader::new();
            // The caller failed before its offsets were read: nothing to load.
            let Ok(globals) = globals_to_use.recv() else {
                return;
            };
            let _ = object.send(load_object(&mut loader, &options, &globals));
        });
        ObjectLoad { globals, loaded }
    }

    /// Loads the object with `globals`: its maps are made; no program is loaded yet.
    pub(super) fn finish(self, globals: Globals) -> Result<Ebpf, ProbeError> {
        let _ = self.globals.send(globals);
        self.loaded
            .recv()
            .expect("the loading thread sends its result")
    }
}

fn load_object<'a>(
    loader: &mut EbpfLoader<'a>,
    options: &LoadOptions,
    globals: &'a Globals,
) -> Result<Ebpf, ProbeError> {
    // Maps of event kinds not collected get one entry: creating them in full took 20 ms
    // (the live-allocation map alone 10).
    if !options.alloc {
        loader
            .map_max_entries("LIVE", 1)
            .map_max_entries("PROCESS_MEMORY", 1);
    }
    if !options.io {
        loader
            .map_max_entries("IO_LATENCY", 1)
            .map_max_entries("FD_INODES", 1);
    }
    // The tid maps the scheduler programs filter with, a bit and a byte per tid: for every tid
    // this system hands out (a later, higher `pid_max` only costs the tids past it a lookup).
    if options.scheduler {
        let pid_max = crate::target::procfs::pid_max();
        loader
            .map_max_entries("TIDS_FOUND", pid_max.div_ceil(64))
            .map_max_entries("TIDS_FORKED", pid_max.div_ceil(8));
    }
    loader
        .override_global("TASK_STRUCT_TGID_OFFSET", &globals.tgid_offset, true)
        .override_global("TASK_STRUCT_PID_OFFSET", &globals.pid_offset, true)
        .override_global("TRACK_THREADS", &globals.track_threads, true)
        .override_global("IO_SLOTS", &globals.io_slots, true)
        .override_global(
            "REPORT_UNTARGETED_EXECS",
            &globals.report_untargeted_execs,
            true,
        )
        .override_global("FD_INODE_OFFSETS", &globals.fd_inode_offsets, true)
        .override_global("ALLOC_SAMPLE_BYTES", &globals.alloc_sample_bytes, true)
        .override_global("MIN_BLOCK_NS", &globals.min_block_ns, true)
        .override_global("SETTLE_AT_EXIT", &globals.settle_at_exit, true)
        .override_global("UNWIND_WITH_TABLES", &globals.unwind_with_tables, true)
        .override_global("URETPROBE_OFFSETS", &globals.uretprobe_offsets, true)
        .override_global("VMA_FILE_OFFSETS", &globals.vma_file_offsets, true)
        .override_global("TASK_CONTEXT_OFFSETS", &globals.task_context_offsets, true)
        .override_global("TASK_FSBASE_OFFSET", &globals.task_fsbase_offset, true)
        .override_global("RUN_DELAY_OFFSETS", &globals.run_delay_offsets, true)
        .override_global("BLOCK_FIELD_OFFSETS", &globals.block_field_offsets, true)
        .override_global(aya_log::LEVEL, &globals.log_level, false);
    let load = |loader: &mut EbpfLoader<'a>, object| {
        loader.load(object).map_err(|source| ProbeError::Load {
            hint: if is_permission_error(&source) {
                PERMISSION_HINT
            } else {
                ""
            },
            source: Box::new(source),
        })
    };
    if may_take_global_walker() {
        let mut ebpf = load(loader, EBPF_OBJECT)?;
        if has_private_stacks(&mut ebpf) {
            return Ok(ebpf);
        }
    }
    load(loader, EBPF_OBJECT_INLINE_WALK)
}

/// Whether the kernel verifies [`PRIVATE_STACK_PROBE`] (then unloaded): a program and a
/// global function whose frames together pass the 512 bytes of one stack. A refusal for
/// another cause (no privileges) is left to the programs themselves to report.
fn has_private_stacks(ebpf: &mut Ebpf) -> bool {
    let Some(Program::RawTracePoint(probe)) = ebpf.program_mut(PRIVATE_STACK_PROBE) else {
        // Built with every object: without it, the inlined walker is the one that loads.
        return false;
    };
    match probe.load() {
        Ok(()) => {
            let _ = probe.unload();
            true
        }
        Err(err) => {
            let refused = is_verifier_refusal(&err);
            if refused {
                log::debug!(
                    "no private stacks for BPF programs here: the stack walker is inlined \
                     into each program ({err})"
                );
            }
            !refused
        }
    }
}

/// Whether the kernel is a PREEMPT_RT one (`/sys/kernel/realtime` reads 1).
fn realtime_kernel() -> bool {
    std::fs::read_to_string("/sys/kernel/realtime").is_ok_and(|text| text.trim() == "1")
}
