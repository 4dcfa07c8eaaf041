//! What a run collected once the programs stopped, and how it becomes a [`Profile`]: stacks
//! symbolized and assembled, run queues, I/O and memory tables, losses.

use std::collections::{HashMap, HashSet};

use profiler_common::{
    AllocSite, AllocStats, IoKey, IoTotal, LiveAlloc, LiveKey, OffCpuKey, OffCpuTime,
    ProcessMemory, STACK_ID_NONE, STACK_ID_RAN_ON, STACK_ID_UNSAMPLED, SampleKey, ThreadState,
    counter,
};

use super::{
    budget::{IO, OFFCPU},
    collection::{Collection, MemoryCollection, ProcessTable, comm_string},
    io,
    io::{FileNames, IoTotals},
    memory, monotonic_ns,
};
use crate::{
    kernel::{Counters, IoExtras, ProbeError, unwind::UnwindTables},
    model::{
        EventKind, FrameKind, Interner, JitStats, Losses, MappingStats, Process, Profile, RunInfo,
        RunQueue, SampledEvents, StackSamplingRun, UnwindStats,
    },
    stacks::{
        address_space::AddressSpaces,
        assemble::{self, RawSample, RawWeight, StackTable},
        symbolize::{Blazesym, SymbolCache},
    },
    target::allocators,
};

impl Collection {
    /// Stops recording, then takes everything the kernel holds, including threads still
    /// off-CPU at the end.
    pub(super) fn finish(mut self, min_block_ns: u64) -> Result<Collected, ProbeError> {
        let end_ns = monotonic_ns();
        self.probes.stop_recording()?;
        // The programs stay attached until the end: not timed meanwhile.
        self.probes.stop_measuring_run_time();
        self.handle_process_events();
        self.drain()?;
        // Everything back from the spool, for the naming below and the profile.
        self.take_back_spooled();
        self.final_symbol_sources();
        let jit = self.jit_stats();
        let mut threads = if self.scheduler {
            self.probes.threads(false)?
        } else {
            Vec::new()
        };
        // Threads off-CPU at the end: their period so far.
        for (tid, state) in &threads {
            let start = &state.off_cpu;
            let pending = &state.pending;
            if pending.total_ns != 0 {
                // Sampled, but the run ended before the thread's stack could be walked.
                let key = OffCpuKey {
                    tgid: start.tgid,
                    tid: *tid,
                    user_stack_id: STACK_ID_RAN_ON,
                    kernel_stack_id: pending.kernel_stack_id,
                    state: pending.state,
                    _pad: 0,
                    comm: start.comm,
                };
                *self.offcpu.entry(key).or_default() += OffCpuTime {
                    total_ns: pending.total_ns,
                    count: 1,
                    stack_ns: pending.stack_ns,
                };
            }
            if state.exited != 0 || start.start_ns == 0 {
                continue;
            }
            let blocked = end_ns.saturating_sub(start.start_ns);
            if blocked < min_block_ns {
                continue;
            }
            // Under stack sampling its stacks were to be read at its end: the time counts,
            // in the flamegraph too (the longest periods), marked as not walked.
            let user_stack_id = match start.user_stack_id {
                STACK_ID_UNSAMPLED => STACK_ID_RAN_ON,
                id => id,
            };
            let key = OffCpuKey {
                tgid: start.tgid,
                tid: *tid,
                user_stack_id,
                kernel_stack_id: start.kernel_stack_id,
                state: start.state,
                _pad: 0,
                comm: start.comm,
            };
            *self.offcpu.entry(key).or_default() += OffCpuTime {
                total_ns: blocked,
                count: 1,
                stack_ns: blocked,
            };
        }
        let max_below_us = self.sampler.max_thresholds().map(|ns| ns / 1000);
        let stack_sampling = self.sampler.run().map(|mut run| {
            run.offcpu = self.scheduler.then(|| SampledEvents {
                max_below_us: max_below_us[OFFCPU],
                ..sampled_events(
                    self.offcpu
                        .iter()
                        .map(|(key, time)| (key.user_stack_id, time.count, time.total_ns)),
                )
            });
            for (key, time) in &self.offcpu {
                *run.offcpu_us_by_thread.entry(key.tid).or_default() += time.total_ns;
            }
            for ns in run.offcpu_us_by_thread.values_mut() {
                *ns /= 1000;
            }
            run.io = self.io_enabled.then(|| SampledEvents {
                max_below_us: max_below_us[IO],
                ..sampled_events(
                    self.io
                        .iter()
                        .map(|(key, total)| (key.user_stack_id, total.count, total.total_ns)),
                )
            });
            run
        });
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
                let sites = self.probes.alloc_sites()?;
                self.name_python_code(
                    sites
                        .iter()
                        .map(|(site, _)| (site.tgid, site.user_stack_id)),
                    super::collection::PYTHON_NAMING_AT_END,
                );
                let mut tracked = AllocationsCollected {
                    sites,
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
        // Every stack was drained (`drain` above, after recording stopped).
        let alloc_ids = allocations
            .iter()
            .flat_map(|a| a.sites.iter().map(|(site, _)| site.user_stack_id));
        let stacks = self.referenced_stacks(alloc_ids, true);
        // Detaching takes the kernel about 0.1 s per uprobe: let it happen while the profile
        // is symbolized and written. Recording stopped already, and `main` waits for it.
        let mut probes = self.probes;
        let detaching = std::thread::spawn(move || {
            probes.detach_uprobes();
            drop(probes);
        });
        Ok(Collected {
            stack_sampling,
            jit,
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

impl Collection {
    /// The stacks the counts (and `more_user_ids`) name, taken out of the drained ones, or
    /// copied when `take` is false (later counts may name them again).
    pub(super) fn referenced_stacks(
        &mut self,
        more_user_ids: impl Iterator<Item = i32>,
        take: bool,
    ) -> StackTable {
        let user_ids = self
            .counts
            .keys()
            .map(|key| key.user_stack_id)
            .chain(self.offcpu.keys().map(|key| key.user_stack_id))
            .chain(self.io.keys().map(|key| key.user_stack_id))
            .chain(more_user_ids)
            .filter_map(|id| u32::try_from(id).ok())
            .collect::<HashSet<u32>>();
        let kernel_ids = self
            .counts
            .keys()
            .map(|key| key.kernel_stack_id)
            .chain(self.offcpu.keys().map(|key| key.kernel_stack_id))
            .filter_map(|id| u32::try_from(id).ok())
            .collect::<HashSet<u32>>();
        let mut stacks = StackTable::default();
        for id in kernel_ids {
            let frames = match take {
                true => self.stacks.kernel.remove(&id),
                false => self.stacks.kernel.get(&id).cloned(),
            };
            if let Some(frames) = frames {
                stacks.kernel.insert(id, frames);
            }
        }
        for id in user_ids {
            let stack = match take {
                true => self.stacks.user.remove(&id),
                false => self.stacks.user.get(&id).cloned(),
            };
            if let Some((frames, end)) = stack {
                stacks.user.insert(id, frames);
                stacks.user_ends.insert(id, end);
            }
        }
        stacks
    }
}

/// What allocation tracking collected.
pub(super) struct AllocationsCollected {
    pub(super) sites: Vec<(AllocSite, AllocStats)>,
    pub(super) live: Vec<(LiveKey, LiveAlloc)>,
    pub(super) mappings: MappingStats,
    pub(super) end_ns: u64,
    pub(super) memory: MemoryCollection,
}

/// Events, walked ones and time, from `(user stack id, count, ns)` entries.
fn sampled_events(entries: impl Iterator<Item = (i32, u64, u64)>) -> SampledEvents {
    let mut events = SampledEvents::default();
    let mut total_ns = 0;
    for (user_stack_id, count, ns) in entries {
        events.events += count;
        total_ns += ns;
        if user_stack_id != STACK_ID_UNSAMPLED && user_stack_id != STACK_ID_RAN_ON {
            events.walked += count;
        }
    }
    events.total_us = total_ns / 1000;
    events
}

/// Everything collected, detached from the kernel.
pub(super) struct Collected {
    /// How stacks were sampled, when some were not walked.
    pub(super) stack_sampling: Option<StackSamplingRun>,
    pub(super) spaces: AddressSpaces,
    pub(super) processes: ProcessTable,
    pub(super) counts: HashMap<SampleKey, u64>,
    pub(super) offcpu: HashMap<OffCpuKey, OffCpuTime>,
    pub(super) threads: Vec<(u32, ThreadState)>,
    pub(super) io: HashMap<IoKey, IoTotal>,
    pub(super) files: FileNames,
    pub(super) io_extras: IoExtras,
    pub(super) allocations: Option<AllocationsCollected>,
    pub(super) stacks: StackTable,
    pub(super) counters: Counters,
    pub(super) first_sample_ns: Option<u64>,
    /// What the unwind tables cost, when user stacks were walked with them.
    pub(super) unwind: Option<UnwindStats>,
    /// Where JIT code got its names, when a target had any.
    pub(super) jit: Option<JitStats>,
    /// Events dropped at `--max-memory`.
    pub(super) memory_cap_dropped: u64,
    /// The thread detaching and unloading the programs.
    pub(super) detaching: Option<std::thread::JoinHandle<()>>,
}

impl Collected {
    /// Thread names by tid from every record that carries one, for records that do not.
    pub(super) fn thread_names(&self) -> HashMap<u32, String> {
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
    pub(super) fn profile(&self, run: RunInfo) -> Profile {
        self.profile_with(run, SymbolCache::new()).0
    }

    /// The same, symbolizing from what `cache` learnt, and returning what it learnt.
    pub(super) fn profile_with(&self, run: RunInfo, cache: SymbolCache) -> (Profile, SymbolCache) {
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
        let mut symbols = Blazesym::with_cache(&self.spaces, cache);
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
            // Periods whose stacks were not walked (stack sampling) are in the totals only;
            // the walked ones stand for them, weighted up.
            let walked = self
                .offcpu
                .iter()
                .filter(|(key, _)| key.user_stack_id != STACK_ID_UNSAMPLED);
            for (key, time) in walked {
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
                entry.weight += time.stack_ns;
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
            // Calls whose stack was not walked (stack sampling) are in the totals only; the
            // walked ones stand for them, weighted up.
            let walked = self
                .io
                .iter()
                .filter(|(key, _)| key.user_stack_id != STACK_ID_UNSAMPLED);
            for (key, total) in walked {
                let stacks = (key.user_stack_id, STACK_ID_NONE);
                let mut sample = raw_sample(key.tgid, key.tid, &key.comm, stacks, None);
                sample.leaf = crate::kernel::syscalls::call_by_index(key.call)
                    .map(|call| (call.name, FrameKind::Kernel));
                let entry = raw.entry(sample).or_default();
                // Nanoseconds here, microseconds below.
                entry.weight += total.stack_ns;
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
            stats.probed = allocators::probed_names(&allocations.memory.objects);
            profile.memory = Some(stats);
        }
        let mut processes: Vec<Process> = self.processes.processes.values().cloned().collect();
        processes.sort_by_key(|process| process.pid);
        profile.processes = processes;
        profile.objects = symbols.objects();
        (profile, symbols.into_cache())
    }
}

pub(super) fn losses(counters: &Counters) -> Losses {
    let get = |index: u32| counters[index as usize];
    Losses {
        user_stack_collisions: get(counter::USER_STACK_COLLISIONS) + get(counter::USER_STACKS_LOST),
        user_stack_map_full: get(counter::USER_STACK_MAP_FULL),
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
