//! Block I/O: the `block_rq_issue`/`block_rq_complete` programs that time the block requests
//! target threads issue, per device and operation.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::bpf_ktime_get_ns,
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuHashMap},
    programs::TracePointContext,
};
use profiler_common::{
    BlockKey, BlockPending, BlockRequest, BlockStats, IO_MAP_ENTRIES, RECORDING_STOPPED,
    block_field, counter,
};

use crate::{
    helpers::{active_map, bump, current_tgid_tid},
    maps::TARGETS,
};

/// Offsets of the record fields read (`block_field` indices), set by the collector from
/// tracefs: they differ between kernels.
#[unsafe(no_mangle)]
static BLOCK_FIELD_OFFSETS: [u32; block_field::COUNT] = [0; block_field::COUNT];

/// A field of the tracepoint record, at the offset the collector found. A run-time offset
/// cannot index the context directly: the verifier only allows constant ones.
#[inline(always)]
fn field<T: Copy + Default>(ctx: &TracePointContext, index: usize) -> T {
    // SAFETY: read_volatile keeps the loader-set constant from being folded at compile time.
    let offset = unsafe { core::ptr::read_volatile(&BLOCK_FIELD_OFFSETS[index]) } as usize;
    // SAFETY: checked read of the record, which the kernel holds while the program runs.
    unsafe { ctx.read_at::<T>(offset) }.unwrap_or_default()
}

/// Block requests issued by target threads, in flight.
#[map]
static BLOCK_PENDING: HashMap<BlockRequest, BlockPending> =
    HashMap::with_max_entries(IO_MAP_ENTRIES, 0);

/// Block request statistics per device and operation, per CPU (completions of one device
/// run on several CPUs at once); allocated as devices appear (few do).
#[map]
static BLOCK_STATS: PerCpuHashMap<BlockKey, BlockStats> =
    PerCpuHashMap::with_max_entries(1024, BPF_F_NO_PREALLOC);

/// A block request is issued: time it if a target thread issued it.
#[tracepoint(category = "block", name = "block_rq_issue")]
pub fn block_rq_issue(ctx: TracePointContext) -> u32 {
    match try_block_rq_issue(ctx) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

#[inline(always)]
fn try_block_rq_issue(ctx: TracePointContext) -> Result<u32, u32> {
    let (tgid, _) = current_tgid_tid();
    if unsafe { TARGETS.get(tgid) }.is_none() || active_map() == RECORDING_STOPPED {
        return Err(0);
    }
    let dev: u32 = field(&ctx, block_field::DEV);
    let request = BlockRequest {
        dev,
        _pad: 0,
        sector: field(&ctx, block_field::SECTOR),
    };
    let pending = BlockPending {
        start_ns: unsafe { bpf_ktime_get_ns() },
        bytes: u64::from(field::<u32>(&ctx, block_field::BYTES)),
        key: BlockKey {
            dev,
            rwbs: field(&ctx, block_field::RWBS),
        },
    };
    if BLOCK_PENDING.insert(&request, &pending, 0).is_err() {
        bump(counter::BLOCK_PENDING_FULL);
    }
    Ok(0)
}

/// A block request completes: if a target issued it, add it to its device's statistics.
#[tracepoint(category = "block", name = "block_rq_complete")]
pub fn block_rq_complete(ctx: TracePointContext) -> u32 {
    match try_block_rq_complete(ctx) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

#[inline(always)]
fn try_block_rq_complete(ctx: TracePointContext) -> Result<u32, u32> {
    let request = BlockRequest {
        dev: field(&ctx, block_field::DEV),
        _pad: 0,
        sector: field(&ctx, block_field::SECTOR),
    };
    let &pending = unsafe { BLOCK_PENDING.get(&request) }.ok_or(0u32)?;
    let _ = BLOCK_PENDING.remove(&request);
    let ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(pending.start_ns);
    match BLOCK_STATS.get_ptr_mut(&pending.key) {
        // SAFETY: this CPU's copy, and programs do not preempt each other on one CPU.
        Some(stats) => unsafe {
            (*stats).count += 1;
            (*stats).bytes += pending.bytes;
            (*stats).total_ns += ns;
            if ns > (*stats).max_ns {
                (*stats).max_ns = ns;
            }
        },
        None => {
            let stats = BlockStats {
                count: 1,
                bytes: pending.bytes,
                total_ns: ns,
                max_ns: ns,
            };
            let _ = BLOCK_STATS.insert(&pending.key, &stats, 0);
        }
    }
    Ok(0)
}
