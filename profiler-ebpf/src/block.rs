//! Block I/O: the `block_rq_issue`/`block_rq_complete` programs that time the block requests
//! target threads issue, per device and operation.
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuHashMap},
    programs::TracePointContext,
};
use profiler_common::{
    BlockKey, BlockPending, BlockRequest, BlockStats, IO_MAP_ENTRIES, RECORDING_STOPPED, counter,
    io_fields,
};

use crate::{
    helpers::{active_map, bump, current_tgid_tid, field},
    maps::TARGETS,
};

/// Block requests issued by target threads, in flight.
#[map]
static BLOCK_PENDING: HashMap<BlockRequest, BlockPending> =
    HashMap::with_max_entries(IO_MAP_ENTRIES, 0);

/// Block request statistics per device and operation, per CPU (completions of one device
/// run on several CPUs at once).
#[map]
static BLOCK_STATS: PerCpuHashMap<BlockKey, BlockStats> = PerCpuHashMap::with_max_entries(1024, 0);

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
    let dev: u32 = field(&ctx, io_fields::BLOCK_DEV);
    let request = BlockRequest {
        dev,
        _pad: 0,
        sector: field(&ctx, io_fields::BLOCK_SECTOR),
    };
    let pending = BlockPending {
        start_ns: unsafe { bpf_ktime_get_ns() },
        bytes: u64::from(field::<u32>(&ctx, io_fields::BLOCK_BYTES)),
        key: BlockKey {
            dev,
            rwbs: field(&ctx, io_fields::BLOCK_RWBS),
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
        dev: field(&ctx, io_fields::BLOCK_DEV),
        _pad: 0,
        sector: field(&ctx, io_fields::BLOCK_SECTOR),
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
