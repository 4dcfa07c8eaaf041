//! Loading the programs and attaching them: one event family at a time, after checking
//! what the kernel offers (tracepoint formats, BTF offsets).

use std::sync::Mutex;

use aya::{
    Btf, Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapError},
    programs::{
        BtfTracePoint, PerfEvent, Program, TracePoint,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
};
use profiler_common::{
    CONTROL_ACTIVE_SAMPLE_MAP, CONTROL_ATTACH_NS, CONTROL_IO_SAMPLE_BELOW_NS,
    CONTROL_OFFCPU_SAMPLE_BELOW_NS, CONTROL_OFFCPU_SAMPLED, CONTROL_TARGETS_STAMP, FdKey,
    RECORDING_STOPPED, TargetFlags, ThreadState,
};

use super::{
    error::{FREQUENCY_HINT, ProbeError, is_invalid_argument, map_error, program_error},
    object::{Globals, LoadOptions, ObjectLoad},
    probes::{IN_FLIGHT, KernelProbes, insert_entry, remove_keys, take_ring_buffer},
    programs::{
        ALLOC_PROGRAMS, BLOCK_PROGRAMS, LOADER_PROGRAM, PROCESS_PROGRAMS, RENAME_PROGRAM,
        SCHED_SWITCH_WALK_PROGRAM, SCHEDULER_PROGRAMS, SYS_EXIT_PROGRAM, SYS_EXIT_WALK_PROGRAM,
        SYSCALL_PROGRAMS, install_walk_calls, load_programs, rename_tracepoint_fits,
        walker_inlined,
    },
    uprobes::AllocatorProbes,
};
use crate::kernel::btf;

/// The programs CPU sampling needs: the sampler, process tracking, and the loader hook that
/// describes new libraries.
const SAMPLING_PROGRAMS: [&str; 4] = [
    PROCESS_PROGRAMS[0],
    PROCESS_PROGRAMS[1],
    "cpu_sample",
    LOADER_PROGRAM,
];

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

impl KernelProbes {
    /// Loads the programs into the kernel; nothing is attached yet but the loader hook and
    /// `allocators`, each as soon as its programs are verified (the command they probe is held
    /// before its exec). With `verbose`, the programs' own log lines are forwarded to the
    /// `log` crate; needs a tokio runtime.
    pub fn load(options: LoadOptions, allocators: &[AllocatorProbes]) -> Result<Self, ProbeError> {
        let started = std::time::Instant::now();
        let object = ObjectLoad::start(options);
        let globals = Globals::new(&options)?;
        let wakeups_timed = !globals.run_delays_at_switch();
        // Sampled off-CPU periods get their user stacks at system-call exits.
        let settle_offcpu_at_exit = options.scheduler && options.offcpu_stack_sampling;
        // The BTF tracepoints need a parse of the kernel's BTF of their own (aya keeps its
        // own to itself), made on another CPU while the object is loaded.
        let sys_btf = std::thread::spawn(Btf::from_sys_fs);
        let mut ebpf = object.finish(globals)?;
        let logger = if options.verbose {
            spawn_logger(&mut ebpf)
        } else {
            None
        };
        let process_events = take_ring_buffer(&mut ebpf, "PROCESS_EVENTS")?;
        // Only what the run needs: each program costs verification time and kernel memory.
        let mut names = Vec::from(PROCESS_PROGRAMS);
        if options.cpu {
            names.push("cpu_sample");
        }
        if options.scheduler {
            names.push(SCHEDULER_PROGRAMS[0]);
            // The run-queue delays come from the scheduler's own accounting where it keeps one.
            if wakeups_timed {
                names.push(SCHEDULER_PROGRAMS[1]);
            }
            // The sampled periods' user stacks are walked at system-call exits.
            if settle_offcpu_at_exit {
                names.push(SYS_EXIT_PROGRAM);
            }
            if rename_tracepoint_fits() {
                names.push(RENAME_PROGRAM.1);
            }
        }
        let mut open_events = None;
        if options.io || options.alloc {
            for name in SYSCALL_PROGRAMS {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            let mut syscalls: Array<_, u32> =
                Array::try_from(ebpf.map_mut("SYSCALLS").expect("SYSCALLS is in the object"))
                    .map_err(map_error("SYSCALLS"))?;
            for (number, call) in super::syscalls::syscall_table(options.io, options.alloc) {
                syscalls
                    .set(number, call, 0)
                    .map_err(map_error("SYSCALLS"))?;
            }
        }
        if options.io {
            names.extend(BLOCK_PROGRAMS.map(|(_, name)| name));
            open_events = Some(take_ring_buffer(&mut ebpf, "OPEN_EVENTS")?);
        }
        if options.alloc {
            names.extend(ALLOC_PROGRAMS);
        }
        // With the walker inlined, the walks of `sched_switch` and `sys_exit` are programs of
        // their own (`sys_exit`, for allocations alone, walks nothing).
        if walker_inlined(&ebpf) {
            if options.scheduler {
                names.push(SCHED_SWITCH_WALK_PROGRAM);
            }
            if options.io || settle_offcpu_at_exit {
                names.push(SYS_EXIT_WALK_PROGRAM);
            }
        }
        if options.unwind_rows.is_some() {
            names.push(LOADER_PROGRAM);
        }
        let btf = sys_btf
            .join()
            .expect("parsing BTF does not panic")
            .map_err(|err| ProbeError::NoBtf {
                path: btf::VMLINUX_BTF,
                source: std::io::Error::other(err),
            })?;
        let later: Vec<&'static str> = if options.sample_first {
            let (now, later) = names
                .into_iter()
                .partition(|name| SAMPLING_PROGRAMS.contains(name));
            names = now;
            later
        } else {
            Vec::new()
        };
        log::debug!(
            "object loaded in {:.0} ms: BTF read, maps made",
            started.elapsed().as_secs_f64() * 1e3
        );
        // The first chunk of unwind rows is made meanwhile: giving it to the unwinder waits
        // for an RCU grace period (10 ms here), as a probe's attach does.
        let first_chunk = match options.unwind_rows {
            Some(_) => Some(super::unwind_maps::spawn_first_chunk(&ebpf)?),
            None => None,
        };
        // The loader hook and the allocator probes are attached as soon as their programs
        // are verified, while the others are: each attach waits on the kernel.
        let links = Mutex::new(Vec::new());
        let attach_error = Mutex::new(None);
        let loaded = load_programs(&mut ebpf, &names, &btf, &|name, program| {
            let Program::UProbe(program) = program else {
                return;
            };
            let attached = if name == LOADER_PROGRAM {
                Ok(super::programs::attach_loader_hook(program)
                    .into_iter()
                    .collect())
            } else {
                allocators
                    .iter()
                    .map(|probes| super::uprobes::attach(name, program, probes))
                    .collect::<Result<Vec<_>, _>>()
                    .map(|links| links.into_iter().flatten().collect::<Vec<_>>())
            };
            match attached {
                Ok(attached) => links.lock().expect("no panics while held").extend(attached),
                Err(err) => {
                    attach_error
                        .lock()
                        .expect("no panics while held")
                        .get_or_insert(err);
                }
            }
        });
        let links = links.into_inner().expect("no panics while held");
        let attached = match attach_error.into_inner().expect("no panics while held") {
            Some(err) => Err(err),
            None => Ok(()),
        };
        if let Err(err) = loaded.and(attached) {
            super::uprobes::detach_all(links);
            return Err(err);
        }
        // Without it, the first table loaded makes it, or says why it could not.
        let unwind_chunks = match first_chunk.map(|thread| thread.join()) {
            Some(Ok(Ok(chunk))) => vec![chunk],
            Some(Ok(Err(err))) => {
                log::debug!("the first chunk of unwind rows: {err}");
                Vec::new()
            }
            Some(Err(_)) | None => Vec::new(),
        };
        log::debug!(
            "programs loaded in {:.0} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
        let deferred = if later.is_empty() {
            drop_elsewhere(btf);
            None
        } else {
            Some((later, btf))
        };
        Ok(KernelProbes {
            uprobe_links: links,
            ebpf,
            process_events,
            open_events,
            active_sample_map: 0,
            unwind_chunks,
            _logger: logger,
            run_time_stats: None,
            deferred,
            attached: Vec::new(),
        })
    }

    /// Verifies the programs [`LoadOptions::sample_first`] left for later. Nothing is
    /// attached as they load: the loader hook is a sampling program, and allocators are
    /// probed at load only for a launched command, which never samples first.
    pub fn load_deferred(&mut self) -> Result<(), ProbeError> {
        match self.deferred.take() {
            Some((names, btf)) => load_programs(&mut self.ebpf, &names, &btf, &|_, _| {}),
            None => Ok(()),
        }
    }

    /// Profiles process `pid` from now on (and its future children if `follow_children`).
    pub fn add_target(&mut self, pid: u32, follow_children: bool) -> Result<(), ProbeError> {
        let flags: TargetFlags = if follow_children {
            profiler_common::TARGET_FOLLOW_CHILDREN
        } else {
            0
        };
        insert_entry(&mut self.ebpf, "TARGETS", pid, &flags)?;
        self.targets_changed()
    }

    /// Stops profiling processes that no longer exist, so their pids can neither fill the
    /// map nor make a new process that reuses one a target.
    pub fn remove_targets(&mut self, pids: &[u32]) -> Result<(), ProbeError> {
        if pids.is_empty() {
            return Ok(());
        }
        remove_keys::<TargetFlags>(&mut self.ebpf, "TARGETS", pids)?;
        self.targets_changed()
    }

    /// After a change of `TARGETS`: what the programs' per-CPU caches learnt of it before is
    /// stale. A random stamp, as the fork program writes, so neither side can write the value
    /// a cache already holds.
    fn targets_changed(&mut self) -> Result<(), ProbeError> {
        self.set_control(CONTROL_TARGETS_STAMP, fastrand::u64(..))
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
        self.attach_tracepoints(&SCHEDULER_PROGRAMS[..1])?;
        // Loaded only when they apply (no run-queue accounting of the kernel's own; the
        // tracepoint's layout fits; stacks may be sampled).
        if self.is_loaded(SCHEDULER_PROGRAMS[1]) {
            self.attach_tracepoints(&SCHEDULER_PROGRAMS[1..])?;
        }
        if self.is_loaded(RENAME_PROGRAM.1) {
            attach_classic_tracepoints(&mut self.ebpf, [RENAME_PROGRAM])?;
        }
        // Attached when loaded, whether for the sampled periods or for I/O: until `sys_enter`
        // is, it finds no call to time.
        if self.is_loaded(SYS_EXIT_PROGRAM) {
            self.attach_tracepoints(&[SYS_EXIT_PROGRAM])?;
        }
        Ok(())
    }

    /// Whether the stack walker is inlined into each program that walks stacks (the kernel
    /// gives BPF programs no private stacks), not one function verified once per program.
    pub fn stack_walker_inlined(&self) -> bool {
        super::programs::walker_inlined(&self.ebpf)
    }

    /// Whether program `name` was loaded (verified) for this run.
    fn is_loaded(&self, name: &str) -> bool {
        self.ebpf
            .program(name)
            .is_some_and(|program| program.fd().is_ok())
    }

    /// Sets the stack-sampling thresholds, ns (0: every stack walked): off-CPU periods and
    /// I/O calls shorter than theirs get their stacks with probability (time / threshold).
    /// Takes effect at once, run-time adjustable.
    pub fn set_stack_sampling(&mut self, offcpu_ns: u64, io_ns: u64) -> Result<(), ProbeError> {
        if offcpu_ns > 0 {
            self.set_control(CONTROL_OFFCPU_SAMPLED, 1)?;
        }
        self.set_control(CONTROL_OFFCPU_SAMPLE_BELOW_NS, offcpu_ns)?;
        self.set_control(CONTROL_IO_SAMPLE_BELOW_NS, io_ns)
    }

    /// Starts watching the targets' system calls (I/O or memory-mapping ones, as loaded).
    pub fn attach_syscalls(&mut self) -> Result<(), ProbeError> {
        self.attach_tracepoints(&SYSCALL_PROGRAMS)
    }

    /// Starts timing the block requests the targets issue.
    pub fn attach_block(&mut self) -> Result<(), ProbeError> {
        attach_classic_tracepoints(&mut self.ebpf, BLOCK_PROGRAMS)
    }

    /// Forgets the open files of processes that exited.
    pub fn forget_files_of(&mut self, pids: &[u32]) -> Result<(), ProbeError> {
        self.forget_files_opened_before(pids, u64::MAX)
    }

    /// Forgets the files processes opened before `time_ns` (`CLOCK_MONOTONIC`): their fds
    /// were closed on exec or by a `close_range`; files opened since stay known.
    pub fn forget_files_opened_before(
        &mut self,
        pids: &[u32],
        time_ns: u64,
    ) -> Result<(), ProbeError> {
        if pids.is_empty() || self.open_events.is_none() {
            return Ok(());
        }
        let mut files: BpfHashMap<_, FdKey, u64> =
            BpfHashMap::try_from(self.ebpf.map_mut("FILES").expect("FILES is in the object"))
                .map_err(map_error("FILES"))?;
        let stale: Vec<FdKey> = files
            .iter()
            .filter_map(Result::ok)
            .filter(|(key, open_ns)| pids.contains(&key.tgid) && *open_ns < time_ns)
            .map(|(key, _)| key)
            .collect();
        for key in stale {
            let _ = files.remove(&key);
        }
        // The fds known by inode (sockets, pipes), learnt at their first call: all of them.
        let mut inodes: BpfHashMap<_, FdKey, u64> = BpfHashMap::try_from(
            self.ebpf
                .map_mut("FD_INODES")
                .expect("FD_INODES is in the object"),
        )
        .map_err(map_error("FD_INODES"))?;
        let stale: Vec<FdKey> = inodes
            .keys()
            .filter_map(Result::ok)
            .filter(|key| pids.contains(&key.tgid))
            .collect();
        for key in stale {
            let _ = inodes.remove(&key);
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
            pending: profiler_common::PendingWalk {
                kernel_stack_id: profiler_common::STACK_ID_NONE,
                ..Default::default()
            },
            exited: 0,
            _pad: 0,
            run_queue_count: 0,
            run_queue_total_ns: 0,
            run_queue_max_ns: 0,
            run_queue_slots: [0; profiler_common::RUNQ_SLOTS],
            sched_pcount: profiler_common::RUN_DELAY_UNKNOWN,
            sched_run_delay_ns: 0,
            io: profiler_common::IoPending::default(),
        };
        // Marked first: the programs look up only threads marked (or past the map, made for
        // the `pid_max` of the start).
        let (word, bit) = profiler_common::tid_bit(tid);
        let mut found: Array<_, u64> = Array::try_from(
            self.ebpf
                .map_mut("TIDS_FOUND")
                .expect("TIDS_FOUND is in the object"),
        )
        .map_err(map_error("TIDS_FOUND"))?;
        if word < found.len() {
            let marks = found.get(&word, 0).map_err(map_error("TIDS_FOUND"))?;
            found
                .set(word, marks | bit, 0)
                .map_err(map_error("TIDS_FOUND"))?;
        }
        let mut threads: BpfHashMap<_, u32, ThreadState> = BpfHashMap::try_from(
            self.ebpf
                .map_mut("THREADS")
                .expect("THREADS is in the object"),
        )
        .map_err(map_error("THREADS"))?;
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

    /// Attaches BTF tracepoint programs, each once (`sys_exit` serves two event kinds).
    fn attach_tracepoints(&mut self, names: &[&'static str]) -> Result<(), ProbeError> {
        for &name in names {
            if self.attached.contains(&name) {
                continue;
            }
            // Those it hands its walks to first, or it would go without them.
            install_walk_calls(&mut self.ebpf, name)?;
            let program: &mut BtfTracePoint = self
                .ebpf
                .program_mut(name)
                .expect("tracepoint program is in the object")
                .try_into()
                .expect("tp_btf program");
            program
                .attach()
                .map_err(|err| program_error(format!("attaching to the {name} tracepoint"), err))?;
            self.attached.push(name);
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

    /// Ends recording: from now on the programs count nothing and leave each thread's state
    /// as it is, for [`Self::drain`] and [`Self::threads`] to read. Unlike detaching, which
    /// takes the kernel a good tenth of a second, this takes effect at once.
    pub fn stop_recording(&mut self) -> Result<(), ProbeError> {
        self.active_sample_map = RECORDING_STOPPED;
        self.set_control(CONTROL_ACTIVE_SAMPLE_MAP, RECORDING_STOPPED)?;
        std::thread::sleep(IN_FLIGHT);
        Ok(())
    }
}

/// Frees `value` on another thread: a parsed BTF is some 100 000 allocations, 5 ms or more of
/// freeing each, which the start-up need not wait for.
fn drop_elsewhere<T: Send + 'static>(value: T) {
    std::thread::spawn(move || drop(value));
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
