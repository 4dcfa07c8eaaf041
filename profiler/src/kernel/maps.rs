//! Reading what the programs collected: counts drained from the double-buffered maps,
//! kernel stacks, thread states, I/O and allocation tables, counters, and the event rings.

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray};
use profiler_common::{
    AllocSite, AllocStats, BlockKey, BlockStats, CONTROL_ACTIVE_SAMPLE_MAP,
    CONTROL_FIRST_SAMPLE_NS, IoKey, IoTotal, KernelStack, LATENCY_SLOTS, LiveAlloc, LiveKey,
    OffCpuKey, OffCpuTime, OpenEvent, ProcessEvent, ProcessMemory, RECORDING_STOPPED, SampleKey,
    ThreadState, counter,
};

use super::{
    error::{ProbeError, map_error},
    probes::{
        Counters, IN_FLIGHT, KernelProbes, read_hash_map, read_hash_map_as, remove_keys,
        sum_per_cpu,
    },
};

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

impl KernelProbes {
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
        let latency: PerCpuArray<_, [u64; LATENCY_SLOTS as usize]> = PerCpuArray::try_from(
            self.ebpf
                .map("IO_LATENCY")
                .expect("IO_LATENCY is in the object"),
        )
        .map_err(map_error("IO_LATENCY"))?;
        let histograms = latency
            .iter()
            .map(|value| {
                let per_cpu = value.map_err(map_error("IO_LATENCY"))?;
                let mut sum = vec![0u64; LATENCY_SLOTS as usize];
                for histogram in per_cpu.iter() {
                    for (total, count) in sum.iter_mut().zip(histogram) {
                        *total += count;
                    }
                }
                Ok(sum)
            })
            .collect::<Result<Vec<_>, ProbeError>>()?;
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

    pub(super) fn read_counts(&mut self, buffer: usize) -> Result<Drained, ProbeError> {
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

    /// Takes the kernel stacks stored since the last call out of the kernel's map, which the
    /// kernel refills only with stacks it has not stored before: id and frames.
    pub fn drain_kernel_stacks(&mut self) -> Result<Vec<(u32, Vec<u64>)>, ProbeError> {
        read_hash_map_as(
            &mut self.ebpf,
            "KERNEL_STACKS",
            true,
            |stack: KernelStack| {
                let len = (stack.len as usize).min(stack.frames.len());
                stack.frames[..len].to_vec()
            },
        )
    }

    /// Forgets that the run stored these stacks (user, kernel), by id: the next sample with
    /// one stores it again, to be drained again.
    pub fn forget_stored_stacks(&mut self, user: &[u32], kernel: &[u32]) -> Result<(), ProbeError> {
        remove_keys::<u64>(&mut self.ebpf, "USER_STACK_HASHES", user)?;
        remove_keys::<u64>(&mut self.ebpf, "KERNEL_STACK_HASHES", kernel)
    }

    /// Loss counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters, ProbeError> {
        let array = self.counters_map()?;
        let mut counters = [0; counter::COUNT as usize];
        for (index, slot) in counters.iter_mut().enumerate() {
            *slot = counter_sum(&array, index as u32)?;
        }
        Ok(counters)
    }

    /// Counter `index` (a `counter` constant) summed over CPUs.
    pub fn counter(&self, index: u32) -> Result<u64, ProbeError> {
        counter_sum(&self.counters_map()?, index)
    }

    fn counters_map(&self) -> Result<PerCpuArray<&MapData, u64>, ProbeError> {
        PerCpuArray::try_from(
            self.ebpf
                .map("COUNTERS")
                .expect("COUNTERS is in the object"),
        )
        .map_err(map_error("COUNTERS"))
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

/// Counter `index` of `COUNTERS`, summed over CPUs.
fn counter_sum(array: &PerCpuArray<&MapData, u64>, index: u32) -> Result<u64, ProbeError> {
    Ok(array
        .get(&index, 0)
        .map_err(map_error("COUNTERS"))?
        .iter()
        .sum())
}
