//! [`KernelProbes`], the handle on the loaded programs and their maps, with the map helpers
//! [`super::load`] and [`super::maps`] share. Dropping it detaches and unloads everything
//! (links and maps are owned by file descriptors; nothing is pinned), also when the process
//! is killed.

use std::time::Duration;

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuHashMap, RingBuf},
};
use profiler_common::counter;

use super::{
    error::{ProbeError, map_error},
    programs::{SCHEDULER_PROGRAMS, SYSCALL_PROGRAMS},
};

/// The programs whose stack walks the stack-sampling threshold decides (where the walker is
/// inlined, `sys_exit`'s and `sched_switch`'s times include those of the walking programs they
/// tail-call).
const STACK_SAMPLED_PROGRAMS: [&str; 4] = [
    SCHEDULER_PROGRAMS[0],
    SCHEDULER_PROGRAMS[1],
    SYSCALL_PROGRAMS[0],
    SYSCALL_PROGRAMS[1],
];

/// How long a program that read the old `CONTROL` value may still be writing.
pub(super) const IN_FLIGHT: Duration = Duration::from_millis(2);

/// Per-cause loss counters summed over CPUs, indexed by `profiler_common::counter`.
pub type Counters = [u64; counter::COUNT as usize];

/// The loaded eBPF programs and their maps.
pub struct KernelProbes {
    /// Allocator probes, owned here so they can be detached all at once (see
    /// [`Self::detach_uprobes`], also called when dropped).
    pub(super) uprobe_links: Vec<aya::programs::uprobe::UProbeLink>,
    pub(super) ebpf: Ebpf,
    pub(super) process_events: RingBuf<MapData>,
    pub(super) open_events: Option<RingBuf<MapData>>,
    pub(super) active_sample_map: u64,
    /// The chunks of unwind rows made so far, in `UNWIND_CHUNKS` order.
    pub(super) unwind_chunks: Vec<aya::maps::MapData>,
    pub(super) _logger: Option<tokio::task::JoinHandle<()>>,
    /// Keeps the kernel's per-program run-time statistics on while held (see
    /// [`Self::measure_run_time`]).
    pub(super) run_time_stats: Option<std::os::fd::OwnedFd>,
    /// Programs not verified yet, and the kernel's BTF they are verified against (see
    /// [`super::LoadOptions::sample_first`]).
    pub(super) deferred: Option<(Vec<&'static str>, aya::Btf)>,
    /// The BTF tracepoint programs attached so far.
    pub(super) attached: Vec<&'static str>,
}

impl KernelProbes {
    /// Has the kernel time every program run (`BPF_STATS_RUN_TIME`, two clock reads per
    /// run), for [`Self::stack_sampled_programs_run_time`], until
    /// [`Self::stop_measuring_run_time`]. Returns whether it could.
    pub fn measure_run_time(&mut self) -> bool {
        if self.run_time_stats.is_none() {
            match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
                Ok(fd) => self.run_time_stats = Some(fd),
                Err(err) => log::info!("the programs' run time is not measured: {err}"),
            }
        }
        self.run_time_stats.is_some()
    }

    /// Stops the kernel timing every program run (unless something else has it on): the
    /// clock reads cost as much as the cheapest programs.
    pub fn stop_measuring_run_time(&mut self) {
        self.run_time_stats = None;
    }

    /// Kernel time the off-CPU and I/O programs have taken so far, all CPUs, while measured:
    /// the cost the stack-sampling threshold governs (CPU sampling and the allocator probes
    /// cost what they cost whatever it is).
    pub fn stack_sampled_programs_run_time(&self) -> Duration {
        self.ebpf
            .programs()
            .filter(|(name, _)| STACK_SAMPLED_PROGRAMS.contains(name))
            .filter_map(|(_, program)| program.info().ok())
            .map(|info| info.run_time())
            .sum()
    }

    pub(super) fn set_control(&mut self, index: u32, value: u64) -> Result<(), ProbeError> {
        let mut control: Array<_, u64> = Array::try_from(
            self.ebpf
                .map_mut("CONTROL")
                .expect("CONTROL is in the object"),
        )
        .map_err(map_error("CONTROL"))?;
        control.set(index, value, 0).map_err(map_error("CONTROL"))
    }
}

/// Reads every entry of hash map `name`, removing them with `clear`.
pub(super) fn read_hash_map<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    clear: bool,
) -> Result<Vec<(K, V)>, ProbeError> {
    read_hash_map_as(ebpf, name, clear, |value| value)
}

/// [`read_hash_map`], each value turned into what the caller keeps as it is read (a stack's
/// frames in use, not the whole fixed-size value).
pub(super) fn read_hash_map_as<K: aya::Pod, V: aya::Pod, T>(
    ebpf: &mut Ebpf,
    name: &'static str,
    clear: bool,
    mut keep: impl FnMut(V) -> T,
) -> Result<Vec<(K, T)>, ProbeError> {
    let mut map: BpfHashMap<_, K, V> =
        BpfHashMap::try_from(ebpf.map_mut(name).expect("map is in the object"))
            .map_err(map_error(name))?;
    let keys: Vec<K> = map.keys().filter_map(Result::ok).collect();
    let mut entries = Vec::with_capacity(keys.len());
    for key in keys {
        if let Ok(value) = map.get(&key, 0) {
            entries.push((key, keep(value)));
        }
        if clear {
            let _ = map.remove(&key);
        }
    }
    Ok(entries)
}

/// Sets `key` to `value` in hash map `name`.
pub(super) fn insert_entry<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    key: K,
    value: &V,
) -> Result<(), ProbeError> {
    let mut map: BpfHashMap<_, K, V> =
        BpfHashMap::try_from(ebpf.map_mut(name).expect("map is in the object"))
            .map_err(map_error(name))?;
    map.insert(key, value, 0).map_err(map_error(name))
}

/// Removes the entries with keys `keys` (pids, ids) from hash map `name`.
pub(super) fn remove_keys<V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    keys: &[u32],
) -> Result<(), ProbeError> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut map: BpfHashMap<_, u32, V> =
        BpfHashMap::try_from(ebpf.map_mut(name).expect("map is in the object"))
            .map_err(map_error(name))?;
    for key in keys {
        let _ = map.remove(key);
    }
    Ok(())
}

/// Every entry of per-CPU hash map `name`, its CPUs' values added up.
pub(super) fn sum_per_cpu<K: aya::Pod, V: aya::Pod + Default + std::ops::AddAssign>(
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
pub(super) fn take_ring_buffer(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<RingBuf<MapData>, ProbeError> {
    let map = ebpf.take_map(name).ok_or_else(|| {
        map_error(name)(MapError::InvalidName {
            name: name.to_owned(),
        })
    })?;
    RingBuf::try_from(map).map_err(map_error(name))
}
