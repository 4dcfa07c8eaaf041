//! A profiling run: validate the target, load and attach the probes, collect until a stop
//! condition, detach, and turn what was collected into a [`Profile`].

use std::{
    collections::HashMap,
    io::IsTerminal as _,
    path::PathBuf,
    process::{Child, ExitStatus},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, anyhow, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use profiler_common::{
    AllocSite, AllocStats, COMM_LEN, IoKey, IoTotal, LiveAlloc, LiveKey, OffCpuKey, OffCpuTime,
    ProcessMemory, STACK_ID_NONE, SampleKey, ThreadState, counter, process_event,
};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    address_space::AddressSpaces,
    assemble::{self, RawSample, RawWeight, StackTable},
    bpf::{Counters, IoExtras, KernelProbes, LoadOptions},
    cli::{RunConfig, TargetSpec},
    io::{self, FileNames, IoTotals},
    launch::{self, GatedChild},
    memory::{self, AllocatorObject},
    output::{self, OutputDir},
    privileges, procfs,
    profile::{
        EventKind, FrameKind, Interner, Losses, MappingStats, Process, Profile, RunInfo, RunQueue,
        TimelineRow,
    },
    symbolize::Blazesym,
    unwind::{UnwindStats, UnwindTables},
};

/// How often process notifications and memory maps are looked at.
const TICK: Duration = Duration::from_millis(100);
/// How often process notifications (forks, execs, unwind-table requests) are handled.
const EVENT_TICK: Duration = Duration::from_millis(10);
/// How often sample counts are drained from the kernel.
const DRAIN_EVERY_TICKS: u32 = 10;
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

/// Exit code of a command the way shells report it (128 + signal when killed).
fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(1)
}

/// Checks attach targets: they exist, are processes (not threads) and are not kernel threads.
fn validate_pids(pids: &[u32]) -> anyhow::Result<()> {
    for &pid in pids {
        let stat = procfs::stat(pid).map_err(|_| anyhow!("no process with pid {pid}"))?;
        if !procfs::is_alive(pid) {
            bail!("process {pid} has already exited");
        }
        if stat.kernel_thread {
            bail!("pid {pid} is a kernel thread: the profiler profiles user-space processes");
        }
        let status =
            std::fs::read_to_string(procfs::proc_dir(pid).join("status")).unwrap_or_default();
        if let Some(tgid) = status
            .lines()
            .find_map(|line| line.strip_prefix("Tgid:"))
            .and_then(|tgid| tgid.trim().parse::<u32>().ok())
            && tgid != pid
        {
            bail!("{pid} is a thread of process {tgid}: pass the process id {tgid}");
        }
        // Its memory map (for unwinding and symbols) is readable by whoever may ptrace it:
        // its own user (unless it is not dumpable, or Yama says no) or CAP_SYS_PTRACE. Try
        // it, and refuse now rather than produce unsymbolized stacks.
        if let Err(err) = std::fs::File::open(procfs::proc_dir(pid).join("maps"))
            && err.kind() == std::io::ErrorKind::PermissionDenied
        {
            let owner = status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().nth(1)?.parse::<u32>().ok());
            let whose = match owner {
                // SAFETY: geteuid has no preconditions.
                Some(owner) if owner != unsafe { libc::geteuid() } => {
                    format!("belongs to user {owner}")
                }
                _ => "is not dumpable or ptrace is restricted (Yama)".to_owned(),
            };
            bail!(
                "process {pid} {whose}: reading its memory map needs CAP_SYS_PTRACE{}: run \
                 with sudo, or `setcap cap_bpf,cap_perfmon,cap_sys_ptrace+ep` on the binary",
                if privileges::can_trace_others() {
                    ""
                } else {
                    " (missing)"
                }
            );
        }
    }
    Ok(())
}

/// Processes seen during the run, with names and command lines read while they lived.
#[derive(Default)]
struct ProcessTable {
    processes: HashMap<u32, Process>,
}

impl ProcessTable {
    fn note(&mut self, pid: u32, comm: Option<String>) {
        let name = comm
            .filter(|name| !name.is_empty())
            .or_else(|| procfs::process_name(pid).ok());
        let command = procfs::command_line(pid).ok().filter(|c| !c.is_empty());
        let entry = self.processes.entry(pid).or_insert_with(|| Process {
            pid,
            name: pid.to_string(),
            command: Vec::new(),
        });
        if let Some(name) = name {
            entry.name = name;
        }
        if let Some(command) = command {
            entry.command = command;
        }
    }
}

fn comm_string(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// State of a run between attach and detach.
struct Collection {
    probes: KernelProbes,
    spaces: AddressSpaces,
    processes: ProcessTable,
    counts: HashMap<SampleKey, u64>,
    offcpu: HashMap<OffCpuKey, OffCpuTime>,
    /// Whether the scheduler programs run.
    scheduler: bool,
    /// Scheduler state of threads that exited, taken out of the kernel map, merged per
    /// (process, name) under the first such thread's id.
    exited_threads: HashMap<(u32, [u8; COMM_LEN]), (u32, ThreadState)>,
    /// The thread id that exited threads of a (process, name) are folded into.
    representatives: HashMap<(u32, [u8; COMM_LEN]), u32>,
    /// I/O totals per thread, stack, call and file.
    io: HashMap<IoKey, IoTotal>,
    /// Whether the I/O programs run.
    io_enabled: bool,
    /// What the targets' file descriptors name.
    files: FileNames,
    /// Allocation tracking, when `alloc` runs.
    memory: Option<MemoryCollection>,
    /// (when, pid): pending re-reads of memory maps.
    refreshes: Vec<(Instant, u32)>,
    /// Unwind tables, when user stacks are walked with them.
    unwind: Option<UnwindTables>,
    /// Budget for the counts kept between drains (`--max-memory`), bytes.
    max_state_bytes: u64,
    /// Events dropped because the counts reached the budget.
    memory_cap_dropped: u64,
}

/// Allocation tracking state of a run.
struct MemoryCollection {
    /// `(pid, device, inode)` of the allocator objects probed in each process.
    probed: std::collections::HashSet<(u32, (u64, u64))>,
    /// The objects probed, for the summary.
    objects: Vec<AllocatorObject>,
    /// Heap and RSS every tick.
    timeline: Vec<TimelineRow>,
    /// When the timeline starts.
    start: Instant,
    /// Bytes allocated at the previous row, for the rate.
    last_alloc_bytes: u64,
    /// Thread names seen, for allocation sites of threads that exited.
    thread_names: HashMap<u32, String>,
}

impl MemoryCollection {
    fn new() -> Self {
        MemoryCollection {
            probed: std::collections::HashSet::new(),
            objects: Vec::new(),
            timeline: Vec::new(),
            start: Instant::now(),
            last_alloc_bytes: 0,
            thread_names: HashMap::new(),
        }
    }
}

impl Collection {
    fn watch_process(&mut self, pid: u32, comm: Option<String>) {
        if let Err(err) = self.read_memory_map(pid)
            && err.kind() == std::io::ErrorKind::PermissionDenied
        {
            // A descendant that changed user (a setuid program): its samples are kept, its
            // frames stay addresses.
            log::warn!(
                "process {pid}: its memory map is closed to the profiler (it changed user); its \
                 stacks will not be symbolized (CAP_SYS_PTRACE would allow it)"
            );
        }
        self.processes.note(pid, comm);
        if self.io_enabled {
            // Descriptors it inherited or opened before the programs saw it.
            self.files.scan(&io::proc_root(), pid);
        }
        if let Err(err) = self.probe_allocators(pid) {
            log::warn!("allocations of process {pid} are not tracked: {err:#}");
        }
    }

    /// Reads `pid`'s memory map once, for symbols and, when it changed, for the unwinder (a
    /// library unmapped and another mapped in its place would leave the kernel the old rows).
    fn read_memory_map(&mut self, pid: u32) -> std::io::Result<()> {
        let text = procfs::read_maps(pid)?;
        if let Some(unwind) = self.unwind.as_mut()
            && let Err(err) = unwind.load_process_maps(pid, &text, &mut self.probes)
        {
            log::debug!("unwind tables of process {pid}: {err:#}");
        }
        self.spaces.update(pid, text);
        Ok(())
    }

    /// Probes the allocator functions of every allocator object `pid` maps, once each.
    fn probe_allocators(&mut self, pid: u32) -> anyhow::Result<()> {
        let Some(memory) = self.memory.as_mut() else {
            return Ok(());
        };
        for object in memory::allocator_objects(&io::proc_root(), pid) {
            if !memory.probed.insert((pid, object.identity)) {
                continue;
            }
            let functions: Vec<(&str, u64, u64, bool)> = object
                .functions
                .iter()
                .map(|&(index, offset)| {
                    let function = &memory::FUNCTIONS[index];
                    (
                        function.name,
                        offset,
                        memory::cookie(index),
                        function.layout == profiler_common::alloc_layout::FREE,
                    )
                })
                .collect();
            let attached = self
                .probes
                .attach_allocator(pid, &object.attach_path, &functions)?;
            log::info!(
                "process {pid}: {attached} allocator probes in {}",
                object.path
            );
            if !memory.objects.iter().any(|o| o.identity == object.identity) {
                memory.objects.push(object);
            }
        }
        Ok(())
    }

    /// Adds a row to the memory timeline.
    fn sample_memory(&mut self) {
        let Some(memory) = self.memory.as_mut() else {
            return;
        };
        let Ok(per_process) = self.probes.process_memory() else {
            return;
        };
        let (allocated, freed) = per_process.iter().fold((0u64, 0u64), |(a, f), (_, m)| {
            (a + m.alloc_bytes, f + m.free_bytes)
        });
        let rss: u64 = self
            .processes
            .processes
            .keys()
            .filter_map(|&pid| memory::rss_bytes(pid))
            .sum();
        let time_secs = memory.start.elapsed().as_secs_f64();
        let since = memory
            .timeline
            .last()
            .map_or(time_secs, |row| time_secs - row.time_secs)
            .max(1e-3);
        memory.timeline.push(TimelineRow {
            time_secs: (time_secs * 1000.0).round() / 1000.0,
            heap_live_bytes: allocated as i64 - freed as i64,
            rss_bytes: rss,
            alloc_bytes_per_sec: (allocated.saturating_sub(memory.last_alloc_bytes) as f64 / since)
                .round(),
        });
        memory.last_alloc_bytes = allocated;
    }

    /// Remembers the names of the targets' threads while they live.
    fn note_thread_names(&mut self) {
        let Some(memory) = self.memory.as_mut() else {
            return;
        };
        for &pid in self.processes.processes.keys() {
            for thread in procfs::threads(pid) {
                memory.thread_names.insert(thread.tid, thread.name);
            }
        }
    }

    fn handle_process_events(&mut self) {
        let now = Instant::now();
        for event in self.probes.process_events() {
            let comm = Some(comm_string(&event.comm));
            match event.kind {
                process_event::FORK => self.watch_process(event.pid, None),
                process_event::EXEC => {
                    if let Some(unwind) = self.unwind.as_mut() {
                        unwind.forget(event.pid);
                    }
                    self.watch_process(event.pid, comm);
                    self.refreshes.extend(
                        AFTER_EXEC_REFRESH
                            .iter()
                            .map(|delay| (now + *delay, event.pid)),
                    );
                }
                process_event::UNWIND_TABLES_MISSING => {
                    let _ = self.read_memory_map(event.pid);
                }
                _ => {}
            }
        }
        for event in self.probes.open_events() {
            self.files.opened(
                &io::proc_root(),
                event.tgid,
                event.open_ns,
                event.dir_fd,
                &comm_string(&event.path),
            );
        }
        let (due, later): (Vec<_>, Vec<_>) =
            self.refreshes.drain(..).partition(|(at, _)| *at <= now);
        self.refreshes = later;
        for (_, pid) in due {
            self.watch_process(pid, None);
        }
    }

    fn refresh_all(&mut self) {
        let pids: Vec<u32> = self.processes.processes.keys().copied().collect();
        for pid in pids {
            let _ = self.read_memory_map(pid);
        }
    }

    /// Removes processes that exited from the kernel's target map.
    fn forget_exited_targets(&mut self) -> anyhow::Result<()> {
        let exited: Vec<u32> = self
            .probes
            .targets()?
            .into_iter()
            .filter(|&pid| !procfs::is_alive(pid))
            .collect();
        self.probes.remove_targets(&exited)?;
        self.probes.forget_files_of(&exited)?;
        if let Some(unwind) = self.unwind.as_mut() {
            self.probes.remove_process_unwind(&exited)?;
            for &pid in &exited {
                unwind.forget(pid);
            }
        }
        Ok(())
    }

    /// What the counts kept between drains take, roughly: entries times key, value and the
    /// hash table's own overhead.
    fn state_bytes(&self) -> u64 {
        const TABLE_OVERHEAD: usize = 16;
        let size = |entries: usize, key: usize, value: usize| {
            (entries * (key + value + TABLE_OVERHEAD)) as u64
        };
        size(self.counts.len(), size_of::<SampleKey>(), 8)
            + size(
                self.offcpu.len(),
                size_of::<OffCpuKey>(),
                size_of::<OffCpuTime>(),
            )
            + size(self.io.len(), size_of::<IoKey>(), size_of::<IoTotal>())
    }

    fn drain(&mut self) -> anyhow::Result<()> {
        let drained = self.probes.drain()?;
        let pids: Vec<u32> = drained
            .samples
            .iter()
            .map(|(key, _)| key.tgid)
            .chain(drained.offcpu.iter().map(|(key, _)| key.tgid))
            .chain(drained.io.iter().map(|(key, _)| key.tgid))
            .collect();
        for pid in pids {
            if !self.spaces.knows(pid) {
                // A process we were not told about (a notification was lost): read it now.
                self.watch_process(pid, None);
            }
        }
        // Over budget, counts of keys already kept still add up; new keys are dropped, counted.
        let full = self.state_bytes() >= self.max_state_bytes;
        for (key, count) in drained.samples {
            match self.counts.get_mut(&key) {
                Some(total) => *total += count,
                None if full => self.memory_cap_dropped += count,
                None => {
                    self.counts.insert(key, count);
                }
            }
        }
        for (key, time) in drained.offcpu {
            match self.offcpu.get_mut(&key) {
                Some(total) => *total += time,
                None if full => self.memory_cap_dropped += time.count,
                None => {
                    self.offcpu.insert(key, time);
                }
            }
        }
        for (key, io) in drained.io {
            if full && !self.io.contains_key(&key) {
                self.memory_cap_dropped += io.count;
                continue;
            }
            // An fd the run has not seen opened: name it while it is (likely) still open.
            if self.files.needs_scan(&key) {
                self.files.scan(&io::proc_root(), key.tgid);
            }
            *self.io.entry(key).or_default() += io;
        }
        self.forget_exited_targets()?;
        if self.scheduler {
            let exited = self.probes.threads(true)?;
            for (tid, state) in exited.into_iter().filter(|(_, state)| state.exited != 0) {
                let key = (state.off_cpu.tgid, state.off_cpu.comm);
                let tid = *self.representatives.entry(key).or_insert(tid);
                match self.exited_threads.get_mut(&key) {
                    Some((_, merged)) => {
                        merged.run_queue_count += state.run_queue_count;
                        merged.run_queue_total_ns += state.run_queue_total_ns;
                        merged.run_queue_max_ns =
                            merged.run_queue_max_ns.max(state.run_queue_max_ns);
                        for (slot, count) in
                            merged.run_queue_slots.iter_mut().zip(state.run_queue_slots)
                        {
                            *slot += count;
                        }
                    }
                    None => {
                        self.exited_threads.insert(key, (tid, state));
                    }
                }
            }
        }
        self.fold_exited_threads();
        Ok(())
    }

    /// Folds the counts of threads that exited into one thread per (process, name), the first
    /// seen: a service that starts a thread per request would otherwise grow the collector's
    /// state by a key per thread, forever. Exited threads' samples stay, under that thread.
    fn fold_exited_threads(&mut self) {
        let live: std::collections::HashSet<u32> = self
            .processes
            .processes
            .keys()
            .flat_map(|&pid| procfs::threads(pid).into_iter().map(|thread| thread.tid))
            .collect();
        let exited = |tgid: u32, tid: u32| tid != tgid && !live.contains(&tid);
        let representatives = &mut self.representatives;
        let mut target = |tgid: u32, tid: u32, comm: [u8; COMM_LEN]| {
            *representatives.entry((tgid, comm)).or_insert(tid)
        };
        let moved: Vec<SampleKey> = self
            .counts
            .keys()
            .filter(|key| exited(key.tgid, key.tid))
            .copied()
            .collect();
        for key in moved {
            let tid = target(key.tgid, key.tid, key.comm);
            if tid != key.tid
                && let Some(count) = self.counts.remove(&key)
            {
                *self.counts.entry(SampleKey { tid, ..key }).or_default() += count;
            }
        }
        let moved: Vec<OffCpuKey> = self
            .offcpu
            .keys()
            .filter(|key| exited(key.tgid, key.tid))
            .copied()
            .collect();
        for key in moved {
            let tid = target(key.tgid, key.tid, key.comm);
            if tid != key.tid
                && let Some(time) = self.offcpu.remove(&key)
            {
                *self.offcpu.entry(OffCpuKey { tid, ..key }).or_default() += time;
            }
        }
        let moved: Vec<IoKey> = self
            .io
            .keys()
            .filter(|key| exited(key.tgid, key.tid))
            .copied()
            .collect();
        for key in moved {
            let tid = target(key.tgid, key.tid, key.comm);
            if tid != key.tid
                && let Some(total) = self.io.remove(&key)
            {
                *self.io.entry(IoKey { tid, ..key }).or_default() += total;
            }
        }
    }

    /// Stops recording, then takes everything the kernel holds, including threads still
    /// off-CPU at the end.
    fn finish(mut self, min_block_ns: u64) -> anyhow::Result<Collected> {
        let end_ns = monotonic_ns();
        self.probes.stop_recording()?;
        self.handle_process_events();
        self.drain()?;
        let mut threads = if self.scheduler {
            self.probes.threads(false)?
        } else {
            Vec::new()
        };
        // Threads off-CPU at the end: their period so far.
        for (tid, state) in &threads {
            let start = &state.off_cpu;
            if state.exited != 0 || start.start_ns == 0 {
                continue;
            }
            let blocked = end_ns.saturating_sub(start.start_ns);
            if blocked < min_block_ns {
                continue;
            }
            let key = OffCpuKey {
                tgid: start.tgid,
                tid: *tid,
                user_stack_id: start.user_stack_id,
                kernel_stack_id: start.kernel_stack_id,
                state: start.state,
                _pad: 0,
                comm: start.comm,
            };
            let total = self.offcpu.entry(key).or_default();
            total.total_ns += blocked;
            total.count += 1;
        }
        threads.extend(self.exited_threads.drain().map(|(_, thread)| thread));
        let counters = self.probes.counters()?;
        let first_sample_ns = self.probes.first_sample_ns()?;
        let unwind_stats = self.unwind.as_ref().map(UnwindTables::stats);
        let io_extras = self.probes.io_extras()?;
        let allocations = match self.memory.take() {
            Some(mut memory) => {
                self.memory = None;
                memory.timeline.shrink_to_fit();
                for (tid, comm) in self.probes.alloc_thread_names()? {
                    let name = comm_string(&comm);
                    if !name.is_empty() {
                        memory.thread_names.insert(tid, name);
                    }
                }
                let mut tracked = AllocationsCollected {
                    sites: self.probes.alloc_sites()?,
                    live: self.probes.live_allocations()?,
                    mappings: MappingStats::default(),
                    end_ns,
                    memory,
                };
                let mut all = ProcessMemory::default();
                for (_, memory) in self.probes.process_memory()? {
                    all += memory;
                }
                tracked.mappings = MappingStats {
                    mmap_count: all.mmap_count,
                    mmap_bytes: all.mmap_bytes,
                    munmap_count: all.munmap_count,
                    munmap_bytes: all.munmap_bytes,
                    brk_count: all.brk_count,
                    brk_bytes: all.brk_bytes,
                };
                Some(tracked)
            }
            None => None,
        };
        let user_ids = self
            .counts
            .keys()
            .map(|key| key.user_stack_id)
            .chain(self.offcpu.keys().map(|key| key.user_stack_id))
            .chain(self.io.keys().map(|key| key.user_stack_id))
            .chain(
                allocations
                    .iter()
                    .flat_map(|a| a.sites.iter().map(|(site, _)| site.user_stack_id)),
            )
            .filter_map(|id| u32::try_from(id).ok());
        let kernel_ids = self
            .counts
            .keys()
            .map(|key| key.kernel_stack_id)
            .chain(self.offcpu.keys().map(|key| key.kernel_stack_id))
            .filter_map(|id| u32::try_from(id).ok());
        let stacks = self.probes.stacks(user_ids, kernel_ids)?;
        // Detaching takes the kernel about 0.1 s per uprobe: let it happen while the profile
        // is symbolized and written. Recording stopped already, and `main` waits for it.
        let mut probes = self.probes;
        let detaching = std::thread::spawn(move || {
            probes.detach_uprobes();
            drop(probes);
        });
        Ok(Collected {
            spaces: self.spaces,
            processes: self.processes,
            counts: self.counts,
            offcpu: self.offcpu,
            threads,
            io: self.io,
            files: self.files,
            io_extras,
            allocations,
            stacks,
            counters,
            first_sample_ns,
            unwind: unwind_stats,
            memory_cap_dropped: self.memory_cap_dropped,
            detaching: Some(detaching),
        })
    }
}

/// What allocation tracking collected.
struct AllocationsCollected {
    sites: Vec<(AllocSite, AllocStats)>,
    live: Vec<(LiveKey, LiveAlloc)>,
    mappings: MappingStats,
    end_ns: u64,
    memory: MemoryCollection,
}

/// Everything collected, detached from the kernel.
struct Collected {
    spaces: AddressSpaces,
    processes: ProcessTable,
    counts: HashMap<SampleKey, u64>,
    offcpu: HashMap<OffCpuKey, OffCpuTime>,
    threads: Vec<(u32, ThreadState)>,
    io: HashMap<IoKey, IoTotal>,
    files: FileNames,
    io_extras: IoExtras,
    allocations: Option<AllocationsCollected>,
    stacks: StackTable,
    counters: Counters,
    first_sample_ns: Option<u64>,
    /// What the unwind tables cost, when user stacks were walked with them.
    unwind: Option<UnwindStats>,
    /// Events dropped at `--max-memory`.
    memory_cap_dropped: u64,
    /// The thread detaching and unloading the programs.
    detaching: Option<std::thread::JoinHandle<()>>,
}

impl Collected {
    /// Thread names by tid from every record that carries one, for records that do not.
    fn thread_names(&self) -> HashMap<u32, String> {
        let mut names = HashMap::new();
        let comms = self
            .counts
            .keys()
            .map(|key| (key.tid, key.comm))
            .chain(self.offcpu.keys().map(|key| (key.tid, key.comm)))
            .chain(self.io.keys().map(|key| (key.tid, key.comm)))
            .chain(
                self.threads
                    .iter()
                    .map(|(tid, state)| (*tid, state.off_cpu.comm)),
            );
        for (tid, comm) in comms {
            let name = comm_string(&comm);
            if !name.is_empty() {
                names.insert(tid, name);
            }
        }
        names
    }

    /// Symbolizes and assembles the profile.
    fn into_profile(self, run: RunInfo) -> Profile {
        let names = self.thread_names();
        let thread_name = |pid: u32, tid: u32, comm: &[u8]| -> String {
            let name = comm_string(comm);
            if !name.is_empty() {
                return name;
            }
            names.get(&tid).cloned().unwrap_or_else(|| {
                std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                    .map(|name| name.trim_end().to_owned())
                    .unwrap_or_else(|_| format!("tid {tid}"))
            })
        };
        let events = run.events.clone();
        let mut profile = Profile::new(run);
        profile.losses = losses(&self.counters);
        profile.losses.memory_cap_dropped = self.memory_cap_dropped;
        let mut interner = Interner::default();
        let mut symbols = Blazesym::new(&self.spaces);
        let raw_sample = |tgid: u32, tid: u32, comm: &[u8], stacks: (i32, i32), state| RawSample {
            pid: tgid,
            tid,
            thread: thread_name(tgid, tid, comm),
            user_stack: stacks.0,
            kernel_stack: stacks.1,
            state,
            leaf: None,
        };
        if events.contains(&EventKind::Cpu) {
            let mut raw: HashMap<RawSample, RawWeight> = HashMap::new();
            for (key, &count) in &self.counts {
                let stacks = (key.user_stack_id, key.kernel_stack_id);
                let entry = raw
                    .entry(raw_sample(key.tgid, key.tid, &key.comm, stacks, None))
                    .or_default();
                entry.weight += count;
                entry.count += count;
            }
            assemble::add_samples(
                &mut profile,
                &mut interner,
                EventKind::Cpu,
                &raw,
                &self.stacks,
                &mut symbols,
            );
        }
        if events.contains(&EventKind::OffCpu) {
            let mut raw: HashMap<RawSample, RawWeight> = HashMap::new();
            for (key, time) in &self.offcpu {
                let stacks = (key.user_stack_id, key.kernel_stack_id);
                let entry = raw
                    .entry(raw_sample(
                        key.tgid,
                        key.tid,
                        &key.comm,
                        stacks,
                        Some(key.state),
                    ))
                    .or_default();
                // Nanoseconds here, microseconds below.
                entry.weight += time.total_ns;
                entry.count += time.count;
            }
            for weight in raw.values_mut() {
                weight.weight = (weight.weight + 500) / 1000;
            }
            assemble::add_samples(
                &mut profile,
                &mut interner,
                EventKind::OffCpu,
                &raw,
                &self.stacks,
                &mut symbols,
            );
            profile.run_queue = self
                .threads
                .iter()
                .filter(|(_, state)| state.run_queue_count > 0)
                .map(|(tid, state)| RunQueue {
                    pid: state.off_cpu.tgid,
                    tid: *tid,
                    thread: thread_name(state.off_cpu.tgid, *tid, &state.off_cpu.comm),
                    count: state.run_queue_count,
                    total_us: state.run_queue_total_ns / 1000,
                    max_us: state.run_queue_max_ns / 1000,
                    histogram: state.run_queue_slots.to_vec(),
                })
                .collect();
            profile.run_queue.sort_by_key(|rq| (rq.pid, rq.tid));
        }
        if events.contains(&EventKind::Io) {
            let mut raw: HashMap<RawSample, RawWeight> = HashMap::new();
            for (key, total) in &self.io {
                let stacks = (key.user_stack_id, STACK_ID_NONE);
                let mut sample = raw_sample(key.tgid, key.tid, &key.comm, stacks, None);
                sample.leaf =
                    io::call_by_index(key.call).map(|call| (call.name, FrameKind::Kernel));
                let entry = raw.entry(sample).or_default();
                // Nanoseconds here, microseconds below.
                entry.weight += total.total_ns;
                entry.count += total.count;
            }
            for weight in raw.values_mut() {
                weight.weight = (weight.weight + 500) / 1000;
            }
            assemble::add_samples(
                &mut profile,
                &mut interner,
                EventKind::Io,
                &raw,
                &self.stacks,
                &mut symbols,
            );
            let device_names = io::block_device_names();
            let totals = IoTotals {
                calls: self.io.iter().collect(),
                latency: &self.io_extras.latency,
                max_ns: &self.io_extras.max_ns,
                block: &self.io_extras.block,
                device_names: &device_names,
            };
            profile.io = Some(io::build_stats(&totals, &self.files));
        }
        if let Some(allocations) = &self.allocations {
            let tracked = memory::Tracked {
                sites: &allocations.sites,
                live: &allocations.live,
                end_ns: allocations.end_ns,
                leak_age_secs: memory::leak_age_secs(profile.run.duration_secs),
            };
            let thread = |pid, tid| {
                allocations
                    .memory
                    .thread_names
                    .get(&tid)
                    .cloned()
                    .unwrap_or_else(|| thread_name(pid, tid, &[]))
            };
            let mut stats = memory::add_allocations(
                &mut profile,
                &mut interner,
                &mut symbols,
                &tracked,
                &self.stacks,
                thread,
            );
            stats.sample_bytes = profile.run.alloc_sample_bytes;
            stats.timeline.clone_from(&allocations.memory.timeline);
            stats.mappings = allocations.mappings.clone();
            stats.probed = memory::probed_names(&allocations.memory.objects);
            profile.memory = Some(stats);
        }
        let mut processes: Vec<Process> = self.processes.processes.into_values().collect();
        processes.sort_by_key(|process| process.pid);
        profile.processes = processes;
        profile
    }
}

/// What ended collection.
enum Stop {
    Duration,
    Interrupted,
    Terminated,
    TargetExited,
    CommandExited(ExitStatus),
}

impl Stop {
    fn describe(&self) -> String {
        match self {
            Stop::Duration => "duration elapsed".into(),
            Stop::Interrupted => "interrupted (SIGINT)".into(),
            Stop::Terminated => "terminated (SIGTERM)".into(),
            Stop::TargetExited => "target exited".into(),
            Stop::CommandExited(_) => "command exited".into(),
        }
    }
}

fn status_line(verbose: bool) -> ProgressBar {
    // Quiet when stderr is not a terminal (CI logs, pipes).
    let bar = if std::io::stderr().is_terminal() || verbose {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} profiling {prefix}: {elapsed} {msg}")
            .expect("valid template"),
    );
    bar
}

/// Fails when SIGINT or SIGTERM came before collection started: the programs detach as the
/// error unwinds, a held command never runs, and no output folder was made.
fn stopped_while_loading() -> anyhow::Result<()> {
    match crate::stop_signals::received() {
        Some(signal) => bail!(
            "{} while the programs were loading; nothing was profiled",
            if signal == libc::SIGINT {
                "interrupted (SIGINT)"
            } else {
                "terminated (SIGTERM)"
            }
        ),
        None => Ok(()),
    }
}

/// Runs a whole profiling session.
pub async fn run(spec: TargetSpec, config: RunConfig) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let started_ns = monotonic_ns();
    let start_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    // Caught first: a stop asked for while loading is acted on, not fatal.
    crate::stop_signals::install().context("cannot catch SIGINT and SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    privileges::check().map_err(|message| anyhow!(message))?;

    // Validate the target and the output folder before touching the kernel.
    let (target_name, command, program) = match &spec {
        TargetSpec::Attach { pids, .. } => {
            validate_pids(pids)?;
            let name = procfs::process_name(pids[0]).unwrap_or_else(|_| pids[0].to_string());
            let command = procfs::command_line(pids[0]).unwrap_or_default();
            (name, command, None)
        }
        TargetSpec::Launch { argv, .. } => {
            let program = launch::resolve_program(&argv[0])?;
            let name = PathBuf::from(&argv[0])
                .file_name()
                .map_or_else(|| "command".into(), |n| n.to_string_lossy().into_owned());
            let command = argv
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            (name, command, Some(program))
        }
    };
    let output_path = config.output.clone().unwrap_or_else(|| {
        output::default_dir(
            &target_name,
            &output::local_stamp((start_unix_ms / 1000) as i64),
        )
    });
    let output = OutputDir::prepare(&output_path)
        .with_context(|| format!("cannot use output folder {}", output_path.display()))?;

    let follow = spec.follows_children();
    let scheduler = config.events.contains(&EventKind::OffCpu);
    let mut probes = KernelProbes::load(LoadOptions {
        verbose: config.verbose,
        min_block_ns: config.min_block.as_nanos() as u64,
        cpu: config.events.contains(&EventKind::Cpu),
        scheduler,
        io: config.events.contains(&EventKind::Io),
        alloc: config.events.contains(&EventKind::Alloc),
        alloc_sample_bytes: config.alloc_sample_bytes,
        unwind_rows: config.unwind_rows,
    })?;
    stopped_while_loading()?;
    let mut root_pids = Vec::new();
    let mut gated = None;
    let mut collection_pids = Vec::new();
    match &spec {
        TargetSpec::Attach { pids, children } => {
            for &pid in pids {
                probes.add_target(pid, *children)?;
            }
            root_pids.clone_from(pids);
            collection_pids.clone_from(pids);
        }
        TargetSpec::Launch { argv, children } => {
            let child = GatedChild::spawn(program.as_deref().expect("resolved"), argv)?;
            probes.add_target(child.pid(), *children)?;
            root_pids.push(child.pid());
            gated = Some(child);
        }
    }
    // Fork tracking first, then the descendants that exist: none falls between the two.
    probes.attach_process_tracking()?;
    if let TargetSpec::Attach {
        pids,
        children: true,
    } = &spec
    {
        for pid in procfs::descendants(pids) {
            probes.add_target(pid, true)?;
            collection_pids.push(pid);
        }
    }
    if scheduler {
        // Off-CPU time is accounted from here; threads found asleep are off-CPU since then.
        let attach_ns = monotonic_ns();
        probes.attach_scheduler(attach_ns)?;
        // The programs know target threads by their `THREADS` entries. Threads created from
        // now on get one at fork; the ones that exist are added here, after the attach, so
        // none falls between the two.
        let pids = match &gated {
            Some(child) => vec![child.pid()],
            None => collection_pids.clone(),
        };
        for pid in pids {
            for thread in procfs::threads(pid) {
                // A sleeping thread is off-CPU from the attach on; a runnable one is
                // accounted from its first switch. The launched command waits at its gate
                // until released, and is accounted from then.
                let blocked_since = (!thread.runnable && gated.is_none()).then_some(attach_ns);
                let name = if gated.is_some() {
                    &target_name
                } else {
                    &thread.name
                };
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
    if config.events.contains(&EventKind::Cpu) {
        probes.attach_cpu_sampling(config.frequency)?;
    }
    let attach_ms = elapsed_ms(started);
    stopped_while_loading()?;
    if gated.is_none() && !collection_pids.iter().any(|&pid| procfs::is_alive(pid)) {
        bail!("the target exited while the programs were loading; nothing was profiled");
    }
    let mut collection = Collection {
        probes,
        spaces: AddressSpaces::default(),
        processes: ProcessTable::default(),
        counts: HashMap::new(),
        offcpu: HashMap::new(),
        scheduler: config.events.contains(&EventKind::OffCpu),
        exited_threads: HashMap::new(),
        representatives: HashMap::new(),
        io: HashMap::new(),
        io_enabled: config.events.contains(&EventKind::Io),
        files: FileNames::default(),
        memory: config
            .events
            .contains(&EventKind::Alloc)
            .then(MemoryCollection::new),
        refreshes: Vec::new(),
        unwind: config.unwind_rows.map(UnwindTables::new),
        max_state_bytes: config.max_memory,
        memory_cap_dropped: 0,
    };
    for pid in collection_pids {
        collection.watch_process(pid, None);
    }

    let mut child: Option<Child> = None;
    if let Some(gated) = gated {
        let pid = gated.pid();
        // Held before exec, it maps what the profiler maps: the system's libc, which the
        // command will map too. The probes, bound to the process, stay through the exec; an
        // allocator the command brings is probed when its maps are read after the exec.
        collection
            .probe_allocators(pid)
            .context("cannot probe the allocator")?;
        let _ = collection.read_memory_map(pid);
        if let Some(unwind) = collection.unwind.as_mut() {
            // Its libraries are the profiler's (tables loaded by `watch_process`); the program
            // itself is compiled now, before it runs.
            unwind.prepare_file(
                program.as_deref().expect("resolved"),
                &mut collection.probes,
            );
        }
        if scheduler {
            collection.probes.set_accounting_start(monotonic_ns())?;
        }
        // Not started at all rather than started and stopped at once.
        stopped_while_loading()?;
        child = Some(
            gated
                .release()
                .with_context(|| format!("cannot start {}", command.join(" ")))?,
        );
        collection.refreshes.extend(
            AFTER_EXEC_REFRESH
                .iter()
                .map(|d| (Instant::now() + *d, pid)),
        );
    }
    let profiling_started = Instant::now();

    let bar = status_line(config.verbose);
    bar.set_prefix(format!(
        "{target_name} ({})",
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
    let mut ticker = tokio::time::interval(TICK);
    // Process notifications are answered sooner than the rest: unwind tables are asked for
    // by the first samples of a new program.
    let mut event_ticker = tokio::time::interval(EVENT_TICK);
    let mut ticks: u32 = 0;
    let stop = loop {
        let sleep_until_deadline = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        let command_exit = async {
            if waiter.is_some() {
                (&mut exit_rx).await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            _ = sleep_until_deadline => break Stop::Duration,
            _ = sigint.recv() => break Stop::Interrupted,
            _ = sigterm.recv() => break Stop::Terminated,
            status = command_exit => {
                let status = status.context("lost the command's exit status")?.context("waiting for the command")?;
                break Stop::CommandExited(status);
            }
            _ = event_ticker.tick() => collection.handle_process_events(),
            _ = ticker.tick() => {
                ticks += 1;
                collection.handle_process_events();
                collection.sample_memory();
                if ticks.is_multiple_of(DRAIN_EVERY_TICKS) {
                    collection.drain()?;
                    collection.refresh_all();
                    collection.note_thread_names();
                    if let Ok(counters) = collection.probes.counters() {
                        bar.set_message(status_message(&counters));
                    }
                }
                if waiter.is_none()
                    && ticks.is_multiple_of(5)
                    && !root_pids.iter().chain(collection.processes.processes.keys()).any(|&pid| procfs::is_alive(pid))
                {
                    break Stop::TargetExited;
                }
            }
        }
    };
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
        target: target_name,
        command,
        root_pids,
        follow_children: follow,
        start_unix_ms,
        duration_secs,
        frequency_hz: config.frequency,
        min_block_us: config.min_block.as_micros() as u64,
        events: config.events.clone(),
        alloc_sample_bytes: config.alloc_sample_bytes,
        stop_reason: stop.describe(),
        exit_code: exit,
        attach_ms: Some(attach_ms),
        first_sample_ms: collected
            .first_sample_ns
            .map(|ns| (ns as f64 - started_ns as f64) / 1e6),
        unwind: collected.unwind,
        kernel: kernel_release(),
        profiler_version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let detaching = collected.detaching.take().expect("set by finish");
    let profile = collected.into_profile(run);
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

/// Ends the launched command after the run stopped first, politely then firmly, and returns
/// its exit status. Ctrl-C on a terminal already reached the command (same process group), so
/// it first gets a moment to exit on its own.
async fn stop_command(
    pid: u32,
    stop: &Stop,
    exit_rx: &mut tokio::sync::oneshot::Receiver<std::io::Result<ExitStatus>>,
) -> Option<ExitStatus> {
    let signal = |signal| {
        // SAFETY: kill(2) of our own child, which the waiter thread has not reaped yet.
        unsafe { libc::kill(pid as libc::pid_t, signal) };
    };
    let mut wait = async |limit: Duration| match tokio::time::timeout(limit, &mut *exit_rx).await {
        Ok(Ok(Ok(status))) => Some(Some(status)),
        Ok(_) => Some(None),
        Err(_) => None,
    };
    if matches!(stop, Stop::Interrupted)
        && let Some(status) = wait(Duration::from_secs(2)).await
    {
        return status;
    }
    signal(libc::SIGTERM);
    if let Some(status) = wait(Duration::from_secs(5)).await {
        return status;
    }
    signal(libc::SIGKILL);
    wait(Duration::from_secs(5)).await.flatten()
}

fn status_message(counters: &Counters) -> String {
    let lost = counters[counter::SAMPLE_MAP_FULL as usize];
    format!(
        "{} samples, {} lost",
        counters[counter::CPU_SAMPLES as usize],
        lost
    )
}

fn losses(counters: &Counters) -> Losses {
    let get = |index: u32| counters[index as usize];
    Losses {
        user_stack_collisions: get(counter::USER_STACK_COLLISIONS) + get(counter::USER_STACKS_LOST),
        kernel_stack_collisions: get(counter::KERNEL_STACK_COLLISIONS),
        user_stack_errors: get(counter::USER_STACK_ERRORS),
        kernel_stack_errors: get(counter::KERNEL_STACK_ERRORS),
        sample_map_full: get(counter::SAMPLE_MAP_FULL),
        process_events_lost: get(counter::PROCESS_EVENTS_LOST),
        target_map_full: get(counter::TARGET_MAP_FULL),
        offcpu_filtered: get(counter::OFFCPU_FILTERED),
        offcpu_filtered_us: get(counter::OFFCPU_FILTERED_NS) / 1000,
        offcpu_map_full: get(counter::OFFCPU_MAP_FULL),
        offcpu_stack_collisions: get(counter::OFFCPU_STACK_COLLISIONS),
        io_calls: get(counter::IO_CALLS),
        io_map_full: get(counter::IO_MAP_FULL) + get(counter::IO_PENDING_FULL),
        open_events_lost: get(counter::OPEN_EVENTS_LOST),
        block_pending_full: get(counter::BLOCK_PENDING_FULL),
        alloc_calls: get(counter::ALLOC_CALLS),
        live_map_full: get(counter::LIVE_MAP_FULL),
        alloc_sites_full: get(counter::ALLOC_SITES_FULL),
        memory_cap_dropped: 0,
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|release| release.trim().to_owned())
        .unwrap_or_default()
}
