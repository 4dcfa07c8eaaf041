//! CPU sampling: the `perf_event` program that counts each CPU-clock sample of a target thread
//! against its user and kernel stacks, and the double-buffered sample-count maps.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_ns,
    macros::{map, perf_event},
    maps::HashMap,
    programs::PerfEventContext,
};
use profiler_common::{
    CONTROL_FIRST_SAMPLE_NS, RECORDING_STOPPED, SAMPLE_MAP_ENTRIES, SampleKey, counter,
};

use crate::{
    helpers::{active_map, bump, current_comm, current_tgid_tid, user_stack},
    maps::{CONTROL, TARGETS},
    stack_store, unwind,
};

/// Sample counts, double-buffered: programs write the map `CONTROL[0]` names while the
/// collector drains the other, so no increment is lost to a concurrent read-and-clear.
#[map]
static SAMPLES_0: HashMap<SampleKey, u64> = HashMap::with_max_entries(SAMPLE_MAP_ENTRIES, 0);
#[map]
static SAMPLES_1: HashMap<SampleKey, u64> = HashMap::with_max_entries(SAMPLE_MAP_ENTRIES, 0);

#[inline(always)]
fn add_sample(samples: &HashMap<SampleKey, u64>, key: &SampleKey) {
    match samples.get_ptr_mut(key) {
        // SAFETY: the key holds the tid, and a thread runs on one CPU at a time, so nothing
        // else writes this value concurrently.
        Some(count) => unsafe { *count += 1 },
        None => {
            if samples.insert(key, 1, u64::from(BPF_NOEXIST)).is_err() {
                bump(counter::SAMPLE_MAP_FULL);
            }
        }
    }
}

/// CPU-clock sample on one CPU: count it against the running thread's stacks if it is a target.
#[perf_event]
pub fn cpu_sample(ctx: PerfEventContext) -> u32 {
    match try_cpu_sample(ctx) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

#[inline(always)]
fn try_cpu_sample(ctx: PerfEventContext) -> Result<u32, u32> {
    let (tgid, tid) = current_tgid_tid();
    // tid 0 is the idle task.
    if tid == 0 || unsafe { TARGETS.get(tgid) }.is_none() {
        return Err(0);
    }
    let active = active_map();
    if active == RECORDING_STOPPED {
        return Err(0);
    }
    bump(counter::CPU_SAMPLES);
    if let Some(first) = CONTROL.get_ptr_mut(CONTROL_FIRST_SAMPLE_NS) {
        // SAFETY: a racing write from another CPU stores a time just as early; either is fine.
        unsafe {
            if *first == 0 {
                *first = bpf_ktime_get_ns();
            }
        }
    }
    let user_stack_id = user_stack(&ctx, tgid, unwind::SCRATCH_NMI);
    let kernel_stack_id = stack_store::current_kernel_stack(
        &ctx,
        unwind::SCRATCH_NMI,
        counter::KERNEL_STACK_COLLISIONS,
    );
    let key = SampleKey {
        tgid,
        tid,
        user_stack_id,
        kernel_stack_id,
        comm: current_comm(),
    };
    // Two call sites, one per map, keep each map lookup bound to a single map for the verifier.
    if active == 0 {
        add_sample(&SAMPLES_0, &key);
    } else {
        add_sample(&SAMPLES_1, &key);
    }
    Ok(0)
}
