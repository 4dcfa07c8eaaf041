//! The only module that talks to aya: loads the eBPF programs, attaches them, and reads their
//! maps into plain data. Dropping [`KernelProbes`] detaches and unloads everything (links and
//! maps are owned by file descriptors; nothing is pinned), also when the process is killed.

use std::time::Duration;

use aya::{
    Btf, Ebpf, EbpfError, EbpfLoader,
    maps::{
        Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf,
        StackTraceMap,
    },
    programs::{
        BtfTracePoint, PerfEvent, ProgramError, TracePoint, UProbe,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
};
use profiler_common::{
    AllocSite, AllocStats, BlockKey, BlockStats, CONTROL_ACTIVE_SAMPLE_MAP, CONTROL_ATTACH_NS,
    CONTROL_FIRST_SAMPLE_NS, FdKey, IoKey, IoTotal, LATENCY_SLOTS, LiveAlloc, LiveKey,
    MAX_IO_CALLS, OffCpuKey, OffCpuTime, OpenEvent, ProcessEvent, ProcessMemory, ProcessUnwind,
    RECORDING_STOPPED, SampleKey, TargetFlags, ThreadState, UnwindRow, UserStack, counter,
};

use crate::{
    assemble::StackTable,
    kernel_btf::{self, KernelTypes},
    tracefs::{self, TracefsError},
};

/// The eBPF object built by `build.rs` from `profiler-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profiler"));

/// Errors loading, attaching or reading the eBPF side.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The kernel exposes no BTF.
    #[error(
        "this kernel has no BTF at {path} (needs CONFIG_DEBUG_INFO_BTF=y): the profiler needs it \
         to attach to scheduler tracepoints"
    )]
    NoBtf {
        /// Where BTF was looked for.
        path: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The kernel's BTF lacks a field the programs need.
    #[error("cannot use this kernel's BTF")]
    Btf(#[source] kernel_btf::BtfError),
    /// The kernel refused the programs.
    #[error("loading the eBPF programs failed{hint}")]
    Load {
        /// What to do about it.
        hint: &'static str,
        /// The cause.
        #[source]
        source: Box<EbpfError>,
    },
    /// A program could not be loaded or attached.
    #[error("{what} failed{hint}")]
    Program {
        /// What was being done.
        what: String,
        /// What to do about it.
        hint: &'static str,
        /// The cause.
        #[source]
        source: Box<ProgramError>,
    },
    /// A map could not be read or written.
    #[error("eBPF map {name}: {source}")]
    Map {
        /// The map.
        name: &'static str,
        /// The cause.
        #[source]
        source: Box<MapError>,
    },
    /// The scheduler tracepoints cannot be used.
    #[error("cannot use the scheduler tracepoints")]
    Tracefs(#[source] TracefsError),
    /// The online CPUs could not be listed.
    #[error("cannot list online CPUs: {0}")]
    Cpus(String),
    /// Unwind rows could not be written.
    #[error("cannot write unwind tables: {0}")]
    UnwindRows(String),
}

/// Whether an OS error with one of `codes` is somewhere in the error's source chain.
fn has_os_error(error: &(dyn std::error::Error + 'static), codes: &[i32]) -> bool {
    let mut source = Some(error);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && io.raw_os_error().is_some_and(|code| codes.contains(&code))
        {
            return true;
        }
        source = error.source();
    }
    false
}

fn is_permission_error(error: &(dyn std::error::Error + 'static)) -> bool {
    has_os_error(error, &[libc::EPERM, libc::EACCES])
}

fn is_invalid_argument(error: &(dyn std::error::Error + 'static)) -> bool {
    has_os_error(error, &[libc::EINVAL])
}

const FREQUENCY_HINT: &str = ": the kernel refused the sampling frequency; it must not exceed \
     /proc/sys/kernel/perf_event_max_sample_rate";

const PERMISSION_HINT: &str =
    ": permission denied; run as root (sudo) or grant CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE";

fn program_error(what: impl Into<String>, source: ProgramError) -> ProbeError {
    let hint = if is_permission_error(&source) {
        PERMISSION_HINT
    } else {
        ""
    };
    ProbeError::Program {
        what: what.into(),
        hint,
        source: Box::new(source),
    }
}

fn map_error(name: &'static str) -> impl FnOnce(MapError) -> ProbeError {
    move |source| ProbeError::Map {
        name,
        source: Box::new(source),
    }
}

/// How long a program that read the old `CONTROL` value may still be writing.
const IN_FLIGHT: Duration = Duration::from_millis(2);

/// Per-cause loss counters summed over CPUs, indexed by `profiler_common::counter`.
pub type Counters = [u64; counter::COUNT as usize];

/// What to load.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Forward the programs' aya-log records to the `log` crate (needs a tokio runtime).
    pub verbose: bool,
    /// Shortest off-CPU period to record, ns.
    pub min_block_ns: u64,
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
    /// Capacity of the unwind-row array when user stacks are walked with unwind tables;
    /// `None` leaves user stacks to the kernel's frame-pointer walker.
    pub unwind_rows: Option<u32>,
}

/// Counts taken from the kernel by one drain.
#[derive(Debug, Default)]
pub struct Drained {
    /// CPU samples per thread and stacks.
    pub samples: Vec<(SampleKey, u64)>,
    /// Off-CPU time per thread, stacks and state.
    pub offcpu: Vec<(OffCpuKey, OffCpuTime)>,
    /// I/O totals per thread, stack, call and file.
    pub io: Vec<(IoKey, IoTotal)>,
}

/// What the I/O programs gathered besides the drained totals.
#[derive(Debug, Default)]
pub struct IoExtras {
    /// Latency histogram per call index, summed over CPUs.
    pub latency: Vec<Vec<u64>>,
    /// Longest call per call index, ns.
    pub max_ns: Vec<u64>,
    /// Block requests per device and operation, summed over CPUs.
    pub block: Vec<(BlockKey, BlockStats)>,
}

/// The process-tracking programs.
const PROCESS_PROGRAMS: [&str; 2] = ["sched_process_fork", "sched_process_exec"];
/// Checks that the classic `sched` tracepoints lay out their records where the programs read.
fn check_scheduler_tracepoints() -> Result<(), ProbeError> {
    use profiler_common::tracepoint_fields::{SWITCH_NEXT_PID, SWITCH_PREV_STATE, WAKEUP_PID};

    let root = tracefs::ensure_mounted().map_err(ProbeError::Tracefs)?;
    let check = |event, fields: &[(&str, usize, usize)]| {
        tracefs::check_layout(&root, event, fields).map_err(ProbeError::Tracefs)
    };
    check(
        "sched/sched_switch",
        &[
            ("prev_state", SWITCH_PREV_STATE, 8),
            ("next_pid", SWITCH_NEXT_PID, 4),
        ],
    )?;
    check("sched/sched_wakeup", &[("pid", WAKEUP_PID, 4)])
}

/// The system-call programs (I/O and memory-mapping calls).
const SYSCALL_PROGRAMS: [(&str, &str); 2] =
    [("raw_syscalls", "sys_enter"), ("raw_syscalls", "sys_exit")];
/// The block-request programs.
const BLOCK_PROGRAMS: [(&str, &str); 2] =
    [("block", "block_rq_issue"), ("block", "block_rq_complete")];
/// The allocator probes: entry, return, and `free`.
const ALLOC_PROGRAMS: [&str; 3] = ["alloc_enter", "alloc_return", "free_enter"];

/// Checks that the `raw_syscalls` and `block` tracepoints lay out their records where the I/O
/// programs read.
fn check_io_tracepoints(block: bool) -> Result<(), ProbeError> {
    use profiler_common::io_fields::{
        BLOCK_BYTES, BLOCK_DEV, BLOCK_RWBS, BLOCK_SECTOR, SYSCALL_ARGS, SYSCALL_ID, SYSCALL_RET,
    };

    let root = tracefs::ensure_mounted().map_err(ProbeError::Tracefs)?;
    let check = |event, fields: &[(&str, usize, usize)]| {
        tracefs::check_layout(&root, event, fields).map_err(ProbeError::Tracefs)
    };
    check(
        "raw_syscalls/sys_enter",
        &[("id", SYSCALL_ID, 8), ("args", SYSCALL_ARGS, 48)],
    )?;
    check(
        "raw_syscalls/sys_exit",
        &[("id", SYSCALL_ID, 8), ("ret", SYSCALL_RET, 8)],
    )?;
    if !block {
        return Ok(());
    }
    let block = [
        ("dev", BLOCK_DEV, 4),
        ("sector", BLOCK_SECTOR, 8),
        ("rwbs", BLOCK_RWBS, 0),
    ];
    check("block/block_rq_complete", &block)?;
    check("block/block_rq_issue", &block)?;
    check("block/block_rq_issue", &[("bytes", BLOCK_BYTES, 4)])
}

/// The scheduler programs (off-CPU time and run-queue delay).
const SCHEDULER_PROGRAMS: [&str; 2] = ["sched_switch", "sched_wakeup"];

/// Reads every entry of hash map `name`, removing them with `clear`.
fn read_hash_map<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    clear: bool,
) -> Result<Vec<(K, V)>, ProbeError> {
    let mut map: BpfHashMap<_, K, V> =
        BpfHashMap::try_from(ebpf.map_mut(name).expect("map is in the object"))
            .map_err(map_error(name))?;
    let keys: Vec<K> = map.keys().filter_map(Result::ok).collect();
    let mut entries = Vec::with_capacity(keys.len());
    for key in keys {
        if let Ok(value) = map.get(&key, 0) {
            entries.push((key, value));
        }
        if clear {
            let _ = map.remove(&key);
        }
    }
    Ok(entries)
}

/// Removes the entries of processes `pids` from hash map `name`, keyed by pid.
fn remove_pids<V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    pids: &[u32],
) -> Result<(), ProbeError> {
    let mut map: BpfHashMap<_, u32, V> =
        BpfHashMap::try_from(ebpf.map_mut(name).expect("map is in the object"))
            .map_err(map_error(name))?;
    for pid in pids {
        let _ = map.remove(pid);
    }
    Ok(())
}

/// Every entry of per-CPU hash map `name`, its CPUs' values added up.
fn sum_per_cpu<K: aya::Pod, V: aya::Pod + Default + std::ops::AddAssign>(
    ebpf: &Ebpf,
    name: &'static str,
) -> Result<Vec<(K, V)>, ProbeError> {
    let map: PerCpuHashMap<_, K, V> =
        PerCpuHashMap::try_from(ebpf.map(name).expect("map is in the object"))
            .map_err(map_error(name))?;
    Ok(map
        .iter()
        .filter_map(Result::ok)
        .map(|(key, per_cpu)| {
            let mut total = V::default();
            for value in per_cpu.iter() {
                total += *value;
            }
            (key, total)
        })
        .collect())
}

/// Takes ring buffer `name` out of the object, to be read alongside other maps.
fn take_ring_buffer(ebpf: &mut Ebpf, name: &'static str) -> Result<RingBuf<MapData>, ProbeError> {
    let map = ebpf.take_map(name).ok_or_else(|| {
        map_error(name)(MapError::InvalidName {
            name: name.to_owned(),
        })
    })?;
    RingBuf::try_from(map).map_err(map_error(name))
}

/// Loads classic tracepoint programs, each named as its tracepoint (`(category, name)`).
fn load_tracepoints(
    ebpf: &mut Ebpf,
    programs: impl IntoIterator<Item = (&'static str, &'static str)>,
) -> Result<(), ProbeError> {
    for (_, name) in programs {
        let program: &mut TracePoint = ebpf
            .program_mut(name)
            .expect("tracepoint program is in the object")
            .try_into()
            .expect("tracepoint program");
        program
            .load()
            .map_err(|err| program_error(format!("loading the {name} program"), err))?;
    }
    Ok(())
}

/// Attaches loaded classic tracepoint programs.
fn attach_classic_tracepoints(
    ebpf: &mut Ebpf,
    programs: impl IntoIterator<Item = (&'static str, &'static str)>,
) -> Result<(), ProbeError> {
    for (category, name) in programs {
        let program: &mut TracePoint = ebpf
            .program_mut(name)
            .expect("tracepoint program is in the object")
            .try_into()
            .expect("tracepoint program");
        program.attach(category, name).map_err(|err| {
            program_error(
                format!("attaching to the {category}:{name} tracepoint"),
                err,
            )
        })?;
    }
    Ok(())
}

/// The loaded eBPF programs and their maps.
pub struct KernelProbes {
    /// Allocator probes, owned here so they can be detached all at once (see
    /// [`Self::detach_uprobes`]); declared first, so also dropped first.
    uprobe_links: Vec<aya::programs::uprobe::UProbeLink>,
    ebpf: Ebpf,
    process_events: RingBuf<MapData>,
    open_events: Option<RingBuf<MapData>>,
    active_sample_map: u64,
    /// Whether user stack ids name `USER_STACKS` entries rather than `STACKS` ones.
    unwind_with_tables: bool,
    /// Capacity of `UNWIND_ROWS`.
    unwind_rows: u32,
    _logger: Option<tokio::task::JoinHandle<()>>,
}

impl KernelProbes {
    /// Loads the programs into the kernel (nothing is attached yet). With `verbose`, the
    /// programs' own log lines are forwarded to the `log` crate; needs a tokio runtime.
    pub fn load(options: LoadOptions) -> Result<Self, ProbeError> {
        let btf_blob =
            std::fs::read(kernel_btf::VMLINUX_BTF).map_err(|source| ProbeError::NoBtf {
                path: kernel_btf::VMLINUX_BTF,
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
        let uretprobe_offsets = [
            ("task_struct", "utask"),
            ("uprobe_task", "return_instances"),
            ("return_instance", "stack"),
            ("return_instance", "orig_ret_vaddr"),
            ("return_instance", "next"),
        ]
        .iter()
        .map(|(name, member)| types.member_offset(name, member))
        .collect::<Result<Vec<u32>, _>>()
        .ok()
        .and_then(|offsets| <[u32; 5]>::try_from(offsets).ok())
        .unwrap_or_default();
        let btf = Btf::from_sys_fs().map_err(|err| ProbeError::NoBtf {
            path: kernel_btf::VMLINUX_BTF,
            source: std::io::Error::other(err),
        })?;
        let log_level: u8 = if options.verbose { 0xff } else { 0 };
        let unwind_with_tables = u32::from(options.unwind_rows.is_some());
        let unwind_rows = options.unwind_rows.unwrap_or(1).max(1);
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global("TASK_STRUCT_TGID_OFFSET", &tgid_offset, true)
            .override_global("TASK_STRUCT_PID_OFFSET", &pid_offset, true)
            .override_global("TRACK_THREADS", &track_threads, true)
            .override_global("FD_INODE_OFFSETS", &fd_inode_offsets, true)
            .override_global("ALLOC_SAMPLE_BYTES", &options.alloc_sample_bytes, true)
            .override_global("MIN_BLOCK_NS", &options.min_block_ns, true)
            .override_global("UNWIND_WITH_TABLES", &unwind_with_tables, true)
            .override_global("URETPROBE_OFFSETS", &uretprobe_offsets, true)
            // Arrays are allocated whole: a single row when tables are off.
            .map_max_entries("UNWIND_ROWS", unwind_rows)
            .override_global(aya_log::LEVEL, &log_level, false)
            .load(EBPF_OBJECT)
            .map_err(|source| ProbeError::Load {
                hint: if is_permission_error(&source) {
                    PERMISSION_HINT
                } else {
                    ""
                },
                source: Box::new(source),
            })?;
        let logger = if options.verbose {
            spawn_logger(&mut ebpf)
        } else {
            None
        };
        let process_events = take_ring_buffer(&mut ebpf, "PROCESS_EVENTS")?;
        // Only what the run needs: each program costs verification time and kernel memory.
        if options.cpu {
            let program: &mut PerfEvent = ebpf
                .program_mut("cpu_sample")
                .expect("cpu_sample is in the object")
                .try_into()
                .expect("cpu_sample is a perf_event program");
            program
                .load()
                .map_err(|err| program_error("loading the CPU sampling program", err))?;
        }
        if options.scheduler {
            check_scheduler_tracepoints()?;
            load_tracepoints(&mut ebpf, SCHEDULER_PROGRAMS.map(|name| ("sched", name)))?;
        }
        let mut open_events = None;
        if options.io || options.alloc {
            check_io_tracepoints(options.io)?;
            load_tracepoints(&mut ebpf, SYSCALL_PROGRAMS)?;
            let mut syscalls: Array<_, u32> =
                Array::try_from(ebpf.map_mut("SYSCALLS").expect("SYSCALLS is in the object"))
                    .map_err(map_error("SYSCALLS"))?;
            for (number, call) in crate::io::syscall_table(options.io, options.alloc) {
                syscalls
                    .set(number, call, 0)
                    .map_err(map_error("SYSCALLS"))?;
            }
        }
        if options.io {
            load_tracepoints(&mut ebpf, BLOCK_PROGRAMS)?;
            open_events = Some(take_ring_buffer(&mut ebpf, "OPEN_EVENTS")?);
        }
        if options.alloc {
            for name in ALLOC_PROGRAMS {
                let program: &mut UProbe = ebpf
                    .program_mut(name)
                    .expect("uprobe program is in the object")
                    .try_into()
                    .expect("uprobe program");
                program
                    .load()
                    .map_err(|err| program_error(format!("loading the {name} program"), err))?;
            }
        }
        for name in PROCESS_PROGRAMS {
            let program: &mut BtfTracePoint = ebpf
                .program_mut(name)
                .expect("tracepoint program is in the object")
                .try_into()
                .expect("tp_btf program");
            program
                .load(name, &btf)
                .map_err(|err| program_error(format!("loading the {name} program"), err))?;
        }
        Ok(KernelProbes {
            uprobe_links: Vec::new(),
            ebpf,
            process_events,
            open_events,
            active_sample_map: 0,
            unwind_with_tables: options.unwind_rows.is_some(),
            unwind_rows,
            _logger: logger,
        })
    }

    /// Profiles process `pid` from now on (and its future children if `follow_children`).
    pub fn add_target(&mut self, pid: u32, follow_children: bool) -> Result<(), ProbeError> {
        let mut targets: BpfHashMap<_, u32, TargetFlags> = BpfHashMap::try_from(
            self.ebpf
                .map_mut("TARGETS")
                .expect("TARGETS is in the object"),
        )
        .map_err(map_error("TARGETS"))?;
        let flags = if follow_children {
            profiler_common::TARGET_FOLLOW_CHILDREN
        } else {
            0
        };
        targets.insert(pid, flags, 0).map_err(map_error("TARGETS"))
    }

    /// Stops profiling processes that no longer exist, so their pids can neither fill the
    /// map nor make a new process that reuses one a target.
    pub fn remove_targets(&mut self, pids: &[u32]) -> Result<(), ProbeError> {
        remove_pids::<TargetFlags>(&mut self.ebpf, "TARGETS", pids)
    }

    /// Processes being profiled.
    pub fn targets(&self) -> Result<Vec<u32>, ProbeError> {
        let targets: BpfHashMap<_, u32, TargetFlags> =
            BpfHashMap::try_from(self.ebpf.map("TARGETS").expect("TARGETS is in the object"))
                .map_err(map_error("TARGETS"))?;
        Ok(targets.keys().filter_map(Result::ok).collect())
    }

    /// Sets the `CLOCK_MONOTONIC` time from which threads off-CPU since before the attach,
    /// without a known start, are accounted (a launched command waiting to be released).
    pub fn set_accounting_start(&mut self, now_ns: u64) -> Result<(), ProbeError> {
        self.set_control(CONTROL_ATTACH_NS, now_ns)
    }

    /// Attaches the fork/exec tracepoints that follow new processes and program changes.
    pub fn attach_process_tracking(&mut self) -> Result<(), ProbeError> {
        self.attach_tracepoints(&PROCESS_PROGRAMS)
    }

    /// Starts off-CPU and run-queue accounting of the targets' threads; `now_ns` is the
    /// `CLOCK_MONOTONIC` time from which threads already off-CPU are accounted.
    pub fn attach_scheduler(&mut self, now_ns: u64) -> Result<(), ProbeError> {
        self.set_control(CONTROL_ATTACH_NS, now_ns)?;
        attach_classic_tracepoints(
            &mut self.ebpf,
            SCHEDULER_PROGRAMS.map(|name| ("sched", name)),
        )
    }

    /// Starts watching the targets' system calls (I/O or memory-mapping ones, as loaded).
    pub fn attach_syscalls(&mut self) -> Result<(), ProbeError> {
        attach_classic_tracepoints(&mut self.ebpf, SYSCALL_PROGRAMS)
    }

    /// Starts timing the block requests the targets issue.
    pub fn attach_block(&mut self) -> Result<(), ProbeError> {
        attach_classic_tracepoints(&mut self.ebpf, BLOCK_PROGRAMS)
    }

    /// Probes the allocator functions of `object` in process `pid`: `(function name, offset
    /// of the probe in it, cookie, is free)` each. Returns how many probes were attached.
    pub fn attach_allocator(
        &mut self,
        pid: u32,
        path: &std::path::Path,
        functions: &[(&str, u64, u64, bool)],
    ) -> Result<usize, ProbeError> {
        use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope};

        let scope =
            UProbeScope::OneProcess(std::num::NonZeroU32::new(pid).expect("pids are not 0"));
        let mut attached = 0;
        for &(name, offset, cookie, is_free) in functions {
            let programs: &[&str] = if is_free {
                &["free_enter"]
            } else {
                &["alloc_enter", "alloc_return"]
            };
            for &program_name in programs {
                let program: &mut UProbe = self
                    .ebpf
                    .program_mut(program_name)
                    .expect("uprobe program is in the object")
                    .try_into()
                    .expect("uprobe program");
                let point = UProbeAttachPoint {
                    location: UProbeAttachLocation::SymbolOffset(name, offset),
                    cookie: Some(cookie),
                };
                let what = || format!("attaching to {name} in {} of process {pid}", path.display());
                let id = program
                    .attach(point, path, scope)
                    .map_err(|err| program_error(what(), err))?;
                let link = program
                    .take_link(id)
                    .map_err(|err| program_error(what(), err))?;
                self.uprobe_links.push(link);
                attached += 1;
            }
        }
        Ok(attached)
    }

    /// Detaches the allocator probes, all at once. Each uprobe detach waits for an RCU grace
    /// period (over 100 ms here); one after the other, twenty of them took 2.6 s.
    pub fn detach_uprobes(&mut self) {
        let links = std::mem::take(&mut self.uprobe_links);
        std::thread::scope(|scope| {
            for link in links {
                scope.spawn(move || drop(link));
            }
        });
    }

    /// Allocation totals per site, summed over CPUs.
    pub fn alloc_sites(&self) -> Result<Vec<(AllocSite, AllocStats)>, ProbeError> {
        sum_per_cpu(&self.ebpf, "ALLOC_SITES")
    }

    /// Names of the threads that allocated, by tid.
    pub fn alloc_thread_names(
        &self,
    ) -> Result<Vec<(u32, [u8; profiler_common::COMM_LEN])>, ProbeError> {
        let names: BpfHashMap<_, u32, [u8; profiler_common::COMM_LEN]> = BpfHashMap::try_from(
            self.ebpf
                .map("ALLOC_THREAD_NAMES")
                .expect("ALLOC_THREAD_NAMES is in the object"),
        )
        .map_err(map_error("ALLOC_THREAD_NAMES"))?;
        Ok(names.iter().filter_map(Result::ok).collect())
    }

    /// Allocations live now.
    pub fn live_allocations(&self) -> Result<Vec<(LiveKey, LiveAlloc)>, ProbeError> {
        let live: BpfHashMap<_, LiveKey, LiveAlloc> =
            BpfHashMap::try_from(self.ebpf.map("LIVE").expect("LIVE is in the object"))
                .map_err(map_error("LIVE"))?;
        Ok(live.iter().filter_map(Result::ok).collect())
    }

    /// Memory activity of each process, summed over CPUs.
    pub fn process_memory(&self) -> Result<Vec<(u32, ProcessMemory)>, ProbeError> {
        sum_per_cpu(&self.ebpf, "PROCESS_MEMORY")
    }

    /// Files the targets opened since the last call: `(pid, fd, open time, dir fd, path)`.
    pub fn open_events(&mut self) -> Vec<OpenEvent> {
        let mut events = Vec::new();
        let Some(ring) = self.open_events.as_mut() else {
            return events;
        };
        while let Some(item) = ring.next() {
            if item.len() >= size_of::<OpenEvent>() {
                // SAFETY: the programs write whole `OpenEvent`s; read unaligned.
                events.push(unsafe { item.as_ptr().cast::<OpenEvent>().read_unaligned() });
            }
        }
        events
    }

    /// Latency histograms, longest calls and block statistics, summed over CPUs.
    pub fn io_extras(&self) -> Result<IoExtras, ProbeError> {
        if self.open_events.is_none() {
            return Ok(IoExtras::default());
        }
        let latency: PerCpuArray<_, u64> = PerCpuArray::try_from(
            self.ebpf
                .map("IO_LATENCY")
                .expect("IO_LATENCY is in the object"),
        )
        .map_err(map_error("IO_LATENCY"))?;
        let slots = LATENCY_SLOTS as usize;
        let mut histograms = vec![vec![0u64; slots]; MAX_IO_CALLS as usize];
        for (index, value) in latency.iter().enumerate() {
            let per_cpu = value.map_err(map_error("IO_LATENCY"))?;
            histograms[index / slots][index % slots] = per_cpu.iter().sum();
        }
        let max: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map("IO_MAX").expect("IO_MAX is in the object"))
                .map_err(map_error("IO_MAX"))?;
        let max_ns = max
            .iter()
            .map(|value| {
                value
                    .map(|per_cpu| per_cpu.iter().copied().max().unwrap_or(0))
                    .map_err(map_error("IO_MAX"))
            })
            .collect::<Result<_, _>>()?;
        let block = sum_per_cpu(&self.ebpf, "BLOCK_STATS")?;
        Ok(IoExtras {
            latency: histograms,
            max_ns,
            block,
        })
    }

    /// Forgets the open files of processes that exited.
    pub fn forget_files_of(&mut self, pids: &[u32]) -> Result<(), ProbeError> {
        if pids.is_empty() || self.open_events.is_none() {
            return Ok(());
        }
        let mut files: BpfHashMap<_, FdKey, u64> =
            BpfHashMap::try_from(self.ebpf.map_mut("FILES").expect("FILES is in the object"))
                .map_err(map_error("FILES"))?;
        let stale: Vec<FdKey> = files
            .keys()
            .filter_map(Result::ok)
            .filter(|key| pids.contains(&key.tgid))
            .collect();
        for key in stale {
            let _ = files.remove(&key);
        }
        Ok(())
    }

    /// Makes an existing thread of a target known to the scheduler programs. A thread asleep
    /// at attach gets `blocked_since` (the attach time): its off-CPU period is accounted from
    /// then, whether it wakes during the run or not.
    pub fn add_thread(
        &mut self,
        tid: u32,
        tgid: u32,
        comm: &str,
        blocked_since: Option<u64>,
    ) -> Result<(), ProbeError> {
        let mut threads: BpfHashMap<_, u32, ThreadState> = BpfHashMap::try_from(
            self.ebpf
                .map_mut("THREADS")
                .expect("THREADS is in the object"),
        )
        .map_err(map_error("THREADS"))?;
        let mut name = [0u8; profiler_common::COMM_LEN];
        let len = comm.len().min(name.len() - 1);
        name[..len].copy_from_slice(&comm.as_bytes()[..len]);
        let state = ThreadState {
            off_cpu: profiler_common::OffCpuStart {
                start_ns: blocked_since.unwrap_or(0),
                runnable_ns: 0,
                tgid,
                user_stack_id: profiler_common::STACK_ID_NONE,
                kernel_stack_id: profiler_common::STACK_ID_NONE,
                state: profiler_common::OFFCPU_STATE_BEFORE_ATTACH,
                comm: name,
            },
            exited: 0,
            _pad: 0,
            run_queue_count: 0,
            run_queue_total_ns: 0,
            run_queue_max_ns: 0,
            run_queue_slots: [0; profiler_common::RUNQ_SLOTS],
        };
        // BPF_NOEXIST: a thread the programs already track keeps its state.
        const BPF_NOEXIST: u64 = 1;
        match threads.insert(tid, state, BPF_NOEXIST) {
            Err(MapError::SyscallError(err))
                if err.io_error.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(())
            }
            result => result.map_err(map_error("THREADS")),
        }
    }

    fn attach_tracepoints(&mut self, names: &[&str]) -> Result<(), ProbeError> {
        for &name in names {
            let program: &mut BtfTracePoint = self
                .ebpf
                .program_mut(name)
                .expect("tracepoint program is in the object")
                .try_into()
                .expect("tp_btf program");
            program
                .attach()
                .map_err(|err| program_error(format!("attaching to the {name} tracepoint"), err))?;
        }
        Ok(())
    }

    /// Starts CPU-clock sampling at `frequency` Hz on every online CPU.
    pub fn attach_cpu_sampling(&mut self, frequency: u64) -> Result<(), ProbeError> {
        let cpus = aya::util::online_cpus()
            .map_err(|(what, err)| ProbeError::Cpus(format!("{what}: {err}")))?;
        let program: &mut PerfEvent = self
            .ebpf
            .program_mut("cpu_sample")
            .expect("cpu_sample is in the object")
            .try_into()
            .expect("perf_event program");
        for cpu in cpus {
            program
                .attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Frequency(frequency),
                    false,
                )
                .map_err(|err| {
                    let what =
                        format!("opening a CPU-clock perf event at {frequency} Hz on CPU {cpu}");
                    match program_error(what, err) {
                        ProbeError::Program {
                            what,
                            hint: "",
                            source,
                        } if is_invalid_argument(&*source) => ProbeError::Program {
                            what,
                            hint: FREQUENCY_HINT,
                            source,
                        },
                        other => other,
                    }
                })?;
        }
        Ok(())
    }

    fn set_control(&mut self, index: u32, value: u64) -> Result<(), ProbeError> {
        let mut control: Array<_, u64> = Array::try_from(
            self.ebpf
                .map_mut("CONTROL")
                .expect("CONTROL is in the object"),
        )
        .map_err(map_error("CONTROL"))?;
        control.set(index, value, 0).map_err(map_error("CONTROL"))
    }

    /// Takes the counts gathered since the last drain.
    ///
    /// Switches the programs to the other pair of count maps, lets programs already running on
    /// other CPUs finish, then reads and clears the maps they were writing.
    pub fn drain(&mut self) -> Result<Drained, ProbeError> {
        if self.active_sample_map == RECORDING_STOPPED {
            let mut drained = self.read_counts(0)?;
            let rest = self.read_counts(1)?;
            drained.samples.extend(rest.samples);
            drained.offcpu.extend(rest.offcpu);
            drained.io.extend(rest.io);
            return Ok(drained);
        }
        let drained = self.active_sample_map;
        self.active_sample_map = 1 - drained;
        self.set_control(CONTROL_ACTIVE_SAMPLE_MAP, self.active_sample_map)?;
        // A program that read the old index is at most a few microseconds from its update.
        std::thread::sleep(IN_FLIGHT);
        self.read_counts(drained as usize)
    }

    fn read_counts(&mut self, buffer: usize) -> Result<Drained, ProbeError> {
        const MAPS: [[&str; 3]; 2] = [
            ["SAMPLES_0", "OFFCPU_0", "IO_0"],
            ["SAMPLES_1", "OFFCPU_1", "IO_1"],
        ];
        let [samples, offcpu, io] = MAPS[buffer];
        Ok(Drained {
            samples: read_hash_map(&mut self.ebpf, samples, true)?,
            offcpu: read_hash_map(&mut self.ebpf, offcpu, true)?,
            io: read_hash_map(&mut self.ebpf, io, true)?,
        })
    }

    /// Ends recording: from now on the programs count nothing and leave each thread's state
    /// as it is, for [`Self::drain`] and [`Self::threads`] to read. Unlike detaching, which
    /// takes the kernel a good tenth of a second, this takes effect at once.
    pub fn stop_recording(&mut self) -> Result<(), ProbeError> {
        self.active_sample_map = RECORDING_STOPPED;
        self.set_control(CONTROL_ACTIVE_SAMPLE_MAP, RECORDING_STOPPED)?;
        std::thread::sleep(IN_FLIGHT);
        Ok(())
    }

    /// Scheduler state of every target thread seen, by tid. With `take_exited`, entries of
    /// threads that exited are removed from the kernel map (and returned), so it does not
    /// fill up with dead threads.
    pub fn threads(&mut self, take_exited: bool) -> Result<Vec<(u32, ThreadState)>, ProbeError> {
        let threads: Vec<(u32, ThreadState)> = read_hash_map(&mut self.ebpf, "THREADS", false)?;
        if take_exited {
            let mut map: BpfHashMap<_, u32, ThreadState> = BpfHashMap::try_from(
                self.ebpf
                    .map_mut("THREADS")
                    .expect("THREADS is in the object"),
            )
            .map_err(map_error("THREADS"))?;
            for (tid, _) in threads.iter().filter(|(_, state)| state.exited != 0) {
                // A new thread may have taken the tid since the read: keep its entry.
                if map.get(tid, 0).is_ok_and(|state| state.exited != 0) {
                    let _ = map.remove(tid);
                }
            }
        }
        Ok(threads)
    }

    /// The given user and kernel stacks; ids not in the maps are left out.
    pub fn stacks(
        &self,
        user_ids: impl IntoIterator<Item = u32>,
        kernel_ids: impl IntoIterator<Item = u32>,
    ) -> Result<StackTable, ProbeError> {
        let kernel_walked: StackTraceMap<_> =
            StackTraceMap::try_from(self.ebpf.map("STACKS").expect("STACKS is in the object"))
                .map_err(map_error("STACKS"))?;
        let from_kernel = |id: u32| {
            let trace = kernel_walked.get(&id, 0).ok()?;
            Some((id, trace.frames().iter().map(|frame| frame.ip).collect()))
        };
        let mut table = StackTable {
            kernel: kernel_ids.into_iter().filter_map(from_kernel).collect(),
            ..StackTable::default()
        };
        if !self.unwind_with_tables {
            table.user = user_ids.into_iter().filter_map(from_kernel).collect();
            return Ok(table);
        }
        let walked: BpfHashMap<_, u32, UserStack> = BpfHashMap::try_from(
            self.ebpf
                .map("USER_STACKS")
                .expect("USER_STACKS is in the object"),
        )
        .map_err(map_error("USER_STACKS"))?;
        for id in user_ids {
            let Ok(stack) = walked.get(&id, 0) else {
                continue;
            };
            let len = (stack.len as usize).min(stack.frames.len());
            table.user.insert(id, stack.frames[..len].to_vec());
            table.user_ends.insert(id, stack.end);
        }
        Ok(table)
    }

    /// Writes rows of the shared unwind table, from index `first`, through a shared mapping
    /// of the array (one copy, however many rows).
    pub fn write_unwind_rows(&mut self, first: u32, rows: &[UnwindRow]) -> Result<(), ProbeError> {
        use std::os::fd::{AsFd as _, AsRawFd as _};

        let end = first as usize + rows.len();
        if end > self.unwind_rows as usize {
            return Err(ProbeError::UnwindRows(format!(
                "rows {first}..{end} past the capacity of {}",
                self.unwind_rows
            )));
        }
        let Some(aya::maps::Map::Array(data)) = self.ebpf.map("UNWIND_ROWS") else {
            unreachable!("UNWIND_ROWS is an array in the object");
        };
        let fd = data.fd().as_fd().as_raw_fd();
        let len = self.unwind_rows as usize * size_of::<UnwindRow>();
        // SAFETY: a fresh shared mapping of the map's memory, unmapped below; the kernel
        // programs read rows concurrently, but only rows the collector has not published yet
        // (no process mapping points at them) are written.
        unsafe {
            let memory = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            if memory == libc::MAP_FAILED {
                return Err(ProbeError::UnwindRows(format!(
                    "mapping the row array: {}",
                    std::io::Error::last_os_error()
                )));
            }
            let target = memory.cast::<UnwindRow>().add(first as usize);
            std::ptr::copy_nonoverlapping(rows.as_ptr(), target, rows.len());
            libc::munmap(memory, len);
        }
        Ok(())
    }

    /// Tells the unwinder the executable mappings of process `pid`.
    pub fn set_process_unwind(
        &mut self,
        pid: u32,
        process: &ProcessUnwind,
    ) -> Result<(), ProbeError> {
        let mut processes: BpfHashMap<_, u32, ProcessUnwind> = BpfHashMap::try_from(
            self.ebpf
                .map_mut("UNWIND_PROCESSES")
                .expect("UNWIND_PROCESSES is in the object"),
        )
        .map_err(map_error("UNWIND_PROCESSES"))?;
        processes
            .insert(pid, process, 0)
            .map_err(map_error("UNWIND_PROCESSES"))
    }

    /// Drops the unwinding descriptions of processes that exited (the map is bounded).
    pub fn remove_process_unwind(&mut self, pids: &[u32]) -> Result<(), ProbeError> {
        remove_pids::<ProcessUnwind>(&mut self.ebpf, "UNWIND_PROCESSES", pids)
    }

    /// Loss counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters, ProbeError> {
        let array: PerCpuArray<_, u64> = PerCpuArray::try_from(
            self.ebpf
                .map("COUNTERS")
                .expect("COUNTERS is in the object"),
        )
        .map_err(map_error("COUNTERS"))?;
        let mut counters = [0; counter::COUNT as usize];
        for (index, slot) in counters.iter_mut().enumerate() {
            *slot = array
                .get(&(index as u32), 0)
                .map_err(map_error("COUNTERS"))?
                .iter()
                .sum();
        }
        Ok(counters)
    }

    /// `CLOCK_MONOTONIC` time of the first sample, if one was taken.
    pub fn first_sample_ns(&self) -> Result<Option<u64>, ProbeError> {
        let control: Array<_, u64> =
            Array::try_from(self.ebpf.map("CONTROL").expect("CONTROL is in the object"))
                .map_err(map_error("CONTROL"))?;
        let first = control
            .get(&CONTROL_FIRST_SAMPLE_NS, 0)
            .map_err(map_error("CONTROL"))?;
        Ok((first != 0).then_some(first))
    }

    /// Fork and exec notifications since the last call.
    pub fn process_events(&mut self) -> Vec<ProcessEvent> {
        let mut events = Vec::new();
        while let Some(item) = self.process_events.next() {
            if item.len() >= size_of::<ProcessEvent>() {
                // SAFETY: the programs write whole `ProcessEvent`s; read unaligned.
                events.push(unsafe { item.as_ptr().cast::<ProcessEvent>().read_unaligned() });
            }
        }
        events
    }
}

/// Forwards the programs' aya-log records to the `log` crate until the probes are dropped.
fn spawn_logger(ebpf: &mut Ebpf) -> Option<tokio::task::JoinHandle<()>> {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(err) => {
            log::warn!("eBPF logging unavailable: {err}");
            return None;
        }
    };
    // SAFETY: the logger owns the ring buffer's descriptor, which lives as long as the AsyncFd.
    let mut logger = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    }
    .ok()?;
    Some(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = logger.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}
