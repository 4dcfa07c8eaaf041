//! The state of a run between attach and detach: what was drained from the kernel so far, and
//! the work done every tick (drains, memory samples, the stack-sampling budget), and the
//! table of the processes followed (their notifications are handled in `processes`).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use profiler_common::{
    COMM_LEN, IoKey, IoTotal, OffCpuKey, OffCpuTime, SampleKey, ThreadState, counter,
};

use super::{
    budget::{IO, OFFCPU, StackSampler},
    io::FileNames,
    jvm::JvmMaps,
    memory,
    spool::{HotKeys, Spool, Stacks},
};
use crate::{
    collect::config::{RunConfig, Selection},
    kernel::{ProbeError, probes::KernelProbes, unwind::UnwindTables},
    model::{EventKind, JitStats, Process, TimelineRow},
    stacks::{self, address_space::AddressSpaces},
    target::{
        allocators::{self, AllocatorObject},
        procfs,
    },
};

/// Processes seen during the run, with names and command lines read while they lived.
#[derive(Default)]
pub(super) struct ProcessTable {
    pub(super) processes: HashMap<u32, Process>,
    /// Those known to have exited: `/proc` is not asked about them again.
    pub(super) exited: std::collections::HashSet<u32>,
}

impl ProcessTable {
    /// The processes not known to have exited.
    pub(super) fn live_pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.processes
            .keys()
            .copied()
            .filter(|pid| !self.exited.contains(pid))
    }

    pub(super) fn note(&mut self, pid: u32, comm: Option<String>) {
        let name = comm
            .filter(|name| !name.is_empty())
            .or_else(|| procfs::process_name(pid).ok());
        let command = procfs::command_line(pid).ok().filter(|c| !c.is_empty());
        let container = procfs::container_id(pid);
        let entry = self.started(pid);
        if let Some(name) = name {
            entry.name = name;
        }
        if let Some(command) = command {
            entry.command = command;
        }
        if container.is_some() {
            entry.container = container;
        }
    }

    /// A process that started, or started a new program: known by its name (from the
    /// kernel's event) until it is read.
    pub(super) fn note_started(&mut self, pid: u32, comm: String) {
        let entry = self.started(pid);
        if !comm.is_empty() {
            entry.name = comm;
        }
    }

    fn started(&mut self, pid: u32) -> &mut Process {
        // A new process may have an exited one's pid.
        self.exited.remove(&pid);
        self.processes.entry(pid).or_insert_with(|| Process {
            pid,
            name: pid.to_string(),
            command: Vec::new(),
            container: None,
        })
    }
}

pub(super) fn comm_string(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// Time the collector spends reading Python code objects' names per drain (every second),
/// and at the end of the run.
const PYTHON_NAMING_PER_DRAIN: std::time::Duration = std::time::Duration::from_millis(100);
/// Stacks, and counts, kept in memory between drains before they go to the spool (at most;
/// a sixteenth of `--max-memory` when that is less).
const IN_MEMORY_BYTES: u64 = 8 << 20;

pub(super) const PYTHON_NAMING_AT_END: std::time::Duration = std::time::Duration::from_secs(2);

/// (process, user stack id) of counts of each kind.
fn user_stack_keys<'a>(
    samples: impl Iterator<Item = &'a SampleKey>,
    offcpu: impl Iterator<Item = &'a OffCpuKey>,
    io: impl Iterator<Item = &'a IoKey>,
) -> Vec<(u32, i32)> {
    samples
        .map(|key| (key.tgid, key.user_stack_id))
        .chain(offcpu.map(|key| (key.tgid, key.user_stack_id)))
        .chain(io.map(|key| (key.tgid, key.user_stack_id)))
        .collect()
}

/// State of a run between attach and detach.
pub(super) struct Collection {
    pub(super) probes: KernelProbes,
    /// The stack-sampling threshold and the budget that sets it.
    pub(super) sampler: StackSampler,
    pub(super) spaces: AddressSpaces,
    pub(super) processes: ProcessTable,
    pub(super) counts: HashMap<SampleKey, u64>,
    pub(super) offcpu: HashMap<OffCpuKey, OffCpuTime>,
    /// Whether the scheduler programs run.
    pub(super) scheduler: bool,
    /// Scheduler state of threads that exited, taken out of the kernel map, merged per
    /// (process, name) under the first such thread's id.
    pub(super) exited_threads: HashMap<(u32, [u8; COMM_LEN]), (u32, ThreadState)>,
    /// The thread id that exited threads of a (process, name) are folded into.
    pub(super) representatives: HashMap<(u32, [u8; COMM_LEN]), u32>,
    /// I/O totals per thread, stack, call and file.
    pub(super) io: HashMap<IoKey, IoTotal>,
    /// Whether the I/O programs run.
    pub(super) io_enabled: bool,
    /// What the targets' file descriptors name.
    pub(super) files: FileNames,
    /// Allocation tracking, when `alloc` runs.
    pub(super) memory: Option<MemoryCollection>,
    /// (when, pid): pending re-reads of memory maps.
    pub(super) refreshes: Vec<(Instant, u32)>,
    /// Unwind tables, when user stacks are walked with them.
    pub(super) unwind: Option<UnwindTables>,
    /// Budget for the counts kept between drains (`--max-memory`), bytes.
    pub(super) max_state_bytes: u64,
    /// Stacks, and counts, kept in memory before they go to the spool, bytes.
    pub(super) in_memory_bytes: u64,
    /// Events dropped because the counts reached the budget.
    pub(super) memory_cap_dropped: u64,
    /// Stacks drained from the kernel's maps, until they go to the spool and after they come
    /// back from it (at the end).
    pub(super) stacks: Stacks,
    /// The stacks and counts of the run that outgrew memory.
    pub(super) spool: Spool,
    /// CPython versions already warned about as unknown.
    pub(super) python_versions_warned: std::collections::HashSet<(u8, u8)>,
    /// The JVMs among the targets, asked for their perf maps.
    pub(super) jvms: JvmMaps,
    /// Processes with events since their maps were last read, and how many times maps were
    /// read (see [`Collection::refresh_maps`]).
    pub(super) active: std::collections::HashSet<u32>,
    pub(super) map_refreshes: u32,
    /// Whether every process of the host is profiled (`--all`): a process is then read once
    /// at its exec, not again a few times after (see `AFTER_EXEC_REFRESH`).
    pub(super) host_wide: bool,
    /// Host-wide, processes that started or executed a program since they were last read:
    /// read once they have events (most never have, and reading each as it started was most
    /// of the work of a host-wide run).
    pub(super) unread: std::collections::HashSet<u32>,
    /// Drains so far: host-wide, exited targets are looked for every few.
    pub(super) drains: u32,
    /// Processes chosen by what they run (`--comm`, `--cgroup`, `--all`), looked for as they
    /// exec and now and then in `/proc` (see [`Collection::look_for_selected`]).
    pub(super) selection: Option<Selection>,
    pub(super) selection_looks: u32,
    /// Whether the selection is all that is profiled (no command launched besides): a
    /// process that leaves a selected cgroup then stops being profiled.
    pub(super) selection_only: bool,
    /// How often process notifications (forks, execs, unwind-table requests) are handled.
    pub(super) event_tick: Duration,
}

/// Within a sample period or so, 10 ms at least: the first samples of a new program ask for
/// its unwind tables, and are walked once they are loaded; at a continuous profiler's 19 Hz,
/// waking 100 times a second was a fifth of its work.
fn event_tick(frequency_hz: u64) -> Duration {
    Duration::from_millis((1000 / frequency_hz.max(1)).clamp(10, 50))
}

/// Allocation tracking state of a run.
pub(super) struct MemoryCollection {
    /// `(pid, device, inode)` of the allocator objects probed in each process.
    pub(super) probed: std::collections::HashSet<(u32, (u64, u64))>,
    /// The objects probed, for the summary.
    pub(super) objects: Vec<AllocatorObject>,
    /// Heap and RSS every tick.
    pub(super) timeline: Vec<TimelineRow>,
    /// When the timeline starts.
    pub(super) start: Instant,
    /// Bytes allocated at the previous row, for the rate.
    pub(super) last_alloc_bytes: u64,
    /// Thread names seen, for allocation sites of threads that exited.
    pub(super) thread_names: HashMap<u32, String>,
}

impl MemoryCollection {
    pub(super) fn new() -> Self {
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
    /// The state of a run that collects what `config` asks for with `probes`.
    pub(super) fn new(probes: KernelProbes, config: &RunConfig) -> Self {
        let mut collection = Collection {
            probes,
            // Only off-CPU periods and I/O calls have stacks to sample: without them, nothing
            // to measure (turning the kernel's program timing on and off patches its code on
            // every CPU).
            sampler: StackSampler::new(
                match config.events.contains(&EventKind::OffCpu)
                    || config.events.contains(&EventKind::Io)
                {
                    true => config.stack_sampling,
                    false => crate::collect::config::StackSampling::Exact,
                },
            ),
            event_tick: event_tick(config.frequency),
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
            unwind: config
                .unwind_rows
                .map(|rows| with_table_cache(UnwindTables::new(rows), config)),
            max_state_bytes: config.max_memory,
            in_memory_bytes: (config.max_memory / 16).min(IN_MEMORY_BYTES),
            memory_cap_dropped: 0,
            stacks: Stacks::default(),
            // On disk at most twice the memory budget: past it, memory and the budget again.
            spool: Spool::new(config.max_memory.saturating_mul(2)),
            python_versions_warned: Default::default(),
            jvms: JvmMaps::new(config.jvm_attach),
            active: Default::default(),
            map_refreshes: 0,
            host_wide: false,
            unread: Default::default(),
            drains: 0,
            selection: None,
            selection_looks: 0,
            selection_only: false,
        };
        let python = collection.spaces.python_mut();
        // Python frames are walked with the unwind tables only.
        python.enabled = config.python_frames && config.unwind_rows.is_some();
        python.keep_interpreter_frames = config.python_interpreter_frames;
        collection
    }

    /// Names the code objects in the Python frames of `keys`' stacks (process, user stack id)
    /// while their processes live, for at most `budget` (what is left is named at the end).
    pub(super) fn name_python_code(
        &mut self,
        keys: impl Iterator<Item = (u32, i32)>,
        budget: std::time::Duration,
    ) {
        if !self.spaces.python().any() {
            return;
        }
        let deadline = Instant::now() + budget;
        for (pid, id) in keys {
            let Ok(id) = u32::try_from(id) else {
                continue;
            };
            if let Some((frames, _)) = self.stacks.user.get(&id) {
                let entries = stacks::python::python_part(frames);
                if !entries.is_empty() && !self.spaces.python_mut().resolve(pid, entries, deadline)
                {
                    log::debug!("Python names: out of time; the rest is named at the end");
                    return;
                }
            }
        }
    }

    /// Probes the allocator functions of every allocator object `pid` maps, once each.
    pub(super) fn probe_allocators(
        &mut self,
        pid: u32,
        program: Option<&std::path::Path>,
    ) -> Result<(), ProbeError> {
        let Some(memory) = self.memory.as_mut() else {
            return Ok(());
        };
        let objects: Vec<AllocatorObject> =
            allocators::allocator_objects(&procfs::proc_root(), pid, program)
                .into_iter()
                .filter(|object| !memory.probed.contains(&(pid, object.identity)))
                .collect();
        for object in objects {
            // Marked before its attach: an object whose probes fail is not tried again (the
            // ones after it are, at the next look at the process).
            if let Some(memory) = self.memory.as_mut() {
                memory.probed.insert((pid, object.identity));
            }
            self.probes
                .attach_allocator(pid, &object.attach_path, &object.probe_list())?;
            self.note_allocator_probed(pid, object);
        }
        Ok(())
    }

    /// Records that the allocator functions of `object` are probed in process `pid`.
    pub(super) fn note_allocator_probed(&mut self, pid: u32, object: AllocatorObject) {
        let Some(memory) = self.memory.as_mut() else {
            return;
        };
        memory.probed.insert((pid, object.identity));
        let probes: usize = object
            .probe_list()
            .iter()
            .map(|&(.., is_free)| if is_free { 1 } else { 2 })
            .sum();
        log::info!(
            "process {pid}: {probes} allocator probes in {}",
            object.path
        );
        if !memory.objects.iter().any(|o| o.identity == object.identity) {
            memory.objects.push(object);
        }
    }

    /// Adds a row to the memory timeline.
    pub(super) fn sample_memory(&mut self) {
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
    pub(super) fn note_thread_names(&mut self) {
        let Some(memory) = self.memory.as_mut() else {
            return;
        };
        for pid in self.processes.live_pids() {
            for thread in procfs::threads(pid) {
                memory.thread_names.insert(thread.tid, thread.name);
            }
        }
    }

    /// Where JIT code got its names, when a target had any.
    pub(super) fn jit_stats(&self) -> Option<JitStats> {
        let processes = self.spaces.jit().process_count();
        (processes > 0).then(|| JitStats {
            processes,
            functions: self.spaces.jit().function_count() as u64,
            jvms: self.jvms.count(),
            jvm_maps_written: self.jvms.maps_written(),
            jvm_request_ms_max: self.jvms.longest_request().as_secs_f64() * 1e3,
            read_ms: self.spaces.jit().read_time().as_secs_f64() * 1e3,
        })
    }

    /// The last look at the targets before symbolizing: mappings made since the last read,
    /// and the JIT names their runtimes wrote (asking JVMs once more).
    pub(super) fn final_symbol_sources(&mut self) {
        let pids: Vec<u32> = self.processes.live_pids().collect();
        for pid in pids {
            if procfs::is_alive(pid) {
                let _ = self.spaces.refresh(pid);
            }
        }
        self.jvms.finish(&mut self.spaces);
        self.spaces.jit_mut().read();
        let keys = user_stack_keys(self.counts.keys(), self.offcpu.keys(), self.io.keys());
        self.name_python_code(keys.into_iter(), PYTHON_NAMING_AT_END);
    }

    /// Sets the first stack-sampling threshold, and when a budget adapts it, opens the first
    /// window in which the programs' run time is measured (from before the programs are
    /// attached to the first decision).
    pub(super) fn start_stack_sampling(&mut self) -> Result<(), ProbeError> {
        let (below, _) = self.sampler.thresholds();
        self.probes.set_stack_sampling(below[OFFCPU], below[IO])?;
        self.measure_stack_sampling_cost();
        Ok(())
    }

    /// Gives the kernel the thresholds the sampler wants now, if they changed.
    fn apply_stack_sampling(&mut self) -> Result<(), ProbeError> {
        match self.sampler.thresholds() {
            (below, true) => self.probes.set_stack_sampling(below[OFFCPU], below[IO]),
            (_, false) => Ok(()),
        }
    }

    /// Opens a window in which the programs' run time is measured, closed by
    /// [`Self::adjust_stack_sampling`]. If the kernel will not measure it, every stack is
    /// walked from then on.
    pub(super) fn measure_stack_sampling_cost(&mut self) {
        if !self.sampler.measures() {
            return;
        }
        if self.probes.measure_run_time() {
            self.sampler
                .open_window(self.probes.stack_sampled_programs_run_time());
        } else {
            self.sampler.unmeasured();
            log::warn!(
                "the kernel does not measure the programs' run time: every stack is walked, \
                 whatever --max-overhead says"
            );
        }
    }

    /// Tells the budget how many off-CPU and I/O stacks the kernel has walked so far.
    pub(super) fn note_walks(&mut self) {
        if !self.sampler.measures() {
            return;
        }
        if let Ok(walks) = self.probes.counter(counter::EVENT_STACKS_WALKED) {
            self.sampler.note_walks(walks, Instant::now());
        }
    }

    /// Takes what the programs cost in the window opened last, stops measuring until the
    /// next, and moves the stack-sampling threshold to stay within the budget.
    pub(super) fn adjust_stack_sampling(&mut self) -> Result<(), ProbeError> {
        if !self.sampler.measures() || self.sampler.window_too_short() {
            return Ok(());
        }
        // The first decision comes before the first drain, and one for a load that just
        // arrived after the drain that would show it: drained now, the kinds' caps follow.
        if !self.sampler.knows_event_rates()
            || (self.sampler.load_arrived() && self.sampler.rates_stale())
        {
            self.drain()?;
        }
        self.sampler
            .close_window(self.probes.stack_sampled_programs_run_time());
        self.probes.stop_measuring_run_time();
        self.apply_stack_sampling()
    }

    pub(super) fn drain(&mut self) -> Result<(), ProbeError> {
        self.drain_with(false)
    }

    /// A drain of the run's ticks: host-wide, exited processes are looked for in one of
    /// several.
    pub(super) fn drain_tick(&mut self) -> Result<(), ProbeError> {
        self.drain_with(true)?;
        // A kind's cap follows its rate at once, not at the budget's next decision (two
        // seconds apart once settled): a kind idle until now would walk every stack until then.
        self.apply_stack_sampling()
    }

    fn drain_with(&mut self, tick: bool) -> Result<(), ProbeError> {
        let drained_at = Instant::now();
        let drained = self.probes.drain()?;
        // Drained after the counts that name them: a stack is stored before any count.
        for (id, stack) in self.probes.drain_user_stacks()? {
            self.stacks.user.entry(id).or_insert(stack);
        }
        for (id, frames) in self.probes.drain_kernel_stacks()? {
            self.stacks.kernel.entry(id).or_insert(frames);
        }
        let pids: Vec<u32> = drained
            .samples
            .iter()
            .map(|(key, _)| key.tgid)
            .chain(drained.offcpu.iter().map(|(key, _)| key.tgid))
            .chain(drained.io.iter().map(|(key, _)| key.tgid))
            .collect();
        for pid in pids {
            // A process started since it was read, or one we were not told about (a
            // notification was lost): read it now.
            if self.unread.remove(&pid) || !self.spaces.knows(pid) {
                self.watch_process(pid, None);
            }
            self.active.insert(pid);
        }
        let keys = user_stack_keys(
            drained.samples.iter().map(|(key, _)| key),
            drained.offcpu.iter().map(|(key, _)| key),
            drained.io.iter().map(|(key, _)| key),
        );
        self.name_python_code(keys.into_iter(), PYTHON_NAMING_PER_DRAIN);
        // The keys of this drain stay in memory if the counts go to the spool (`state_bytes`
        // counts no more than 128 bytes a key).
        let incoming = (drained.samples.len() + drained.offcpu.len() + drained.io.len()) as u64;
        let may_spool =
            self.spool.accepts() && self.state_bytes() + 128 * incoming >= self.in_memory_bytes;
        let hot = may_spool.then(|| HotKeys {
            samples: drained.samples.iter().map(|(key, _)| *key).collect(),
            offcpu: drained.offcpu.iter().map(|(key, _)| *key).collect(),
            io: drained.io.iter().map(|(key, _)| *key).collect(),
        });
        self.sampler.note_event_time(
            [
                drained.offcpu.iter().map(|(_, time)| time.total_ns).sum(),
                drained.io.iter().map(|(_, total)| total.total_ns).sum(),
            ],
            drained_at,
        );
        // Over budget, counts of keys already kept still add up; new keys are dropped, counted.
        let full = self.state_bytes() >= self.max_state_bytes;
        for (key, count) in drained.samples {
            self.add_sample(key, count, full);
        }
        for (key, time) in drained.offcpu {
            self.add_offcpu(key, time, full);
        }
        for (key, io) in drained.io {
            // An fd the run has not seen opened: name it while it is (likely) still open.
            if self.files.needs_scan(&key) {
                self.files.scan(&procfs::proc_root(), key.tgid);
            }
            self.add_io(key, io, full);
        }
        // Host-wide, looking at every target is much of a drain; a pid that stays a target a
        // few seconds after its process exited costs nothing (every process is one).
        const EXITS_EVERY_DRAINS: u32 = 10;
        self.drains = self.drains.wrapping_add(1);
        if !tick || !self.host_wide || self.drains.is_multiple_of(EXITS_EVERY_DRAINS) {
            self.forget_exited_targets()?;
        }
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
        // Nothing reads a stack or a count again before the end, past a few megabytes they go
        // to disk; but stacks with Python frames, which later drains may name (a stack is
        // stored once, and other processes and later keys name it by its id).
        if self.spool.accepts() && self.stacks.bytes() >= self.in_memory_bytes {
            let python = self.spaces.python().any();
            self.spool.keep_stacks(&mut self.stacks, |frames| {
                python && !stacks::python::python_part(frames).is_empty()
            });
        }
        if let Some(hot) = hot
            && self.state_bytes() >= self.in_memory_bytes
        {
            self.spool
                .keep_counts(&mut self.counts, &mut self.offcpu, &mut self.io, &hot);
        }
        Ok(())
    }
}

/// `tables` with the cache of compiled tables the run asks for, if it can be used.
fn with_table_cache(tables: UnwindTables, config: &RunConfig) -> UnwindTables {
    use crate::kernel::table_cache::{DEFAULT_MAX_BYTES, TableCache};
    let Some(folder) = &config.unwind_cache else {
        return tables;
    };
    // Root makes the folder and its files: under sudo, not where the user says.
    let default = crate::kernel::table_cache::default_folder();
    if crate::output::Invoker::from_env().is_some() && default.as_ref() != Some(folder) {
        log::warn!(
            "--unwind-cache {} not used: under sudo the cache is the profiler's own folder \
             ({}); this run compiles its tables",
            folder.display(),
            default.map_or_else(String::new, |path| path.display().to_string())
        );
        return tables;
    }
    match TableCache::open(folder, DEFAULT_MAX_BYTES) {
        Ok(cache) => tables.with_cache(cache),
        Err(err) => {
            log::info!(
                "unwind tables are compiled at every run: the cache in {} cannot be used: {err}",
                folder.display()
            );
            tables
        }
    }
}
