//! Allocations: the `alloc_enter`/`alloc_return`/`free_enter` uprobes on the allocator
//! functions, which track live allocations and totals per allocation site (sampled by bytes
//! when asked), and credit them to the process's memory totals.
use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_attach_cookie, bpf_get_current_comm, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{map, uprobe, uretprobe},
    maps::{HashMap, LruHashMap, PerCpuHashMap},
    programs::{ProbeContext, RetProbeContext},
};
use profiler_common::{
    ALLOC_SITE_ENTRIES, AllocPending, AllocSite, AllocStats, COMM_LEN, IO_MAP_ENTRIES,
    LIVE_MAP_ENTRIES, LiveAlloc, LiveKey, RECORDING_STOPPED, STACK_ID_NONE, THREAD_MAP_ENTRIES,
    alloc_layout, counter,
};

use crate::{
    current,
    helpers::{active_map, bump, current_tgid_tid, process_memory, user_stack},
    unwind,
};

/// Bytes between sampled allocations (`--alloc-sample`); 0 records every allocation.
#[unsafe(no_mangle)]
static ALLOC_SAMPLE_BYTES: u64 = 0;

/// Allocator calls in progress and each thread's sampling countdown, by tid.
#[map]
static ALLOC_PENDING: LruHashMap<u32, AllocPending> =
    LruHashMap::with_max_entries(IO_MAP_ENTRIES, 0);

/// Live allocations of the targets. Allocated on demand: a map of this size allocated up front
/// would take a hundred MiB.
#[map]
static LIVE: HashMap<LiveKey, LiveAlloc> =
    HashMap::with_max_entries(LIVE_MAP_ENTRIES, BPF_F_NO_PREALLOC);

/// Totals per allocation site, per CPU: a block is often freed on another CPU than the one
/// that allocated it, and BPF programs in Rust have no atomic add. Allocated on demand.
#[map]
static ALLOC_SITES: PerCpuHashMap<AllocSite, AllocStats> =
    PerCpuHashMap::with_max_entries(ALLOC_SITE_ENTRIES, BPF_F_NO_PREALLOC);

/// Names of the threads that allocate, noted when a thread starts a new allocation site:
/// short-lived threads are gone by the time the collector could read their names.
#[map]
static ALLOC_THREAD_NAMES: LruHashMap<u32, [u8; COMM_LEN]> =
    LruHashMap::with_max_entries(THREAD_MAP_ENTRIES, 0);

const BPF_F_NO_PREALLOC: u32 = 1;

/// Where an allocator was called from: the return address into its caller, which at the
/// entry of a function is on top of the stack (x86-64) or in the link register (arm64).
#[inline(always)]
fn caller_address(ctx: &ProbeContext) -> u64 {
    #[cfg(bpf_target_arch = "x86_64")]
    {
        // SAFETY: `regs` is the probe's register set; the read of user memory is checked.
        let sp = unsafe { (*ctx.regs).rsp };
        unsafe { bpf_probe_read_user(sp as *const u64) }.unwrap_or(0)
    }
    #[cfg(bpf_target_arch = "aarch64")]
    {
        // SAFETY: as above.
        unsafe { (*ctx.regs).regs[30] }
    }
    #[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
    {
        let _ = ctx;
        0
    }
}

/// An allocator function is entered (which one, and how it takes its arguments, is in the
/// attach cookie): note the size, the stack and the caller, unless sampling skips it.
#[uprobe]
pub fn alloc_enter(ctx: ProbeContext) -> u32 {
    match try_alloc_enter(ctx) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

#[inline(always)]
fn try_alloc_enter(ctx: ProbeContext) -> Result<u32, u32> {
    let (tgid, tid) = current_tgid_tid();
    if !current::is_target(tgid, tid) || active_map() == RECORDING_STOPPED {
        return Err(0);
    }
    bump(counter::ALLOC_CALLS);
    // SAFETY: the helper reads the cookie of the link that ran this program.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let arg = |n| ctx.arg::<u64>(n).unwrap_or(0);
    let (size, aux) = match cookie & 0xff {
        alloc_layout::SIZE0 => (arg(0), 0),
        alloc_layout::SIZE1 => (arg(1), 0),
        // An overflowing product makes the call fail: nothing is recorded then.
        alloc_layout::CALLOC => (arg(0).wrapping_mul(arg(1)), 0),
        alloc_layout::REALLOC => (arg(1), arg(0)),
        alloc_layout::REALLOCARRAY => (arg(1).wrapping_mul(arg(2)), arg(0)),
        alloc_layout::POSIX_MEMALIGN => (arg(2), arg(0)),
        _ => return Err(0),
    };
    let entry = match ALLOC_PENDING.get_ptr_mut(tid) {
        Some(entry) => entry,
        None => {
            let fresh = AllocPending {
                size: 0,
                aux: 0,
                ret_addr: 0,
                weight: 0,
                countdown: 0,
                user_stack_id: STACK_ID_NONE,
                cookie: 0,
            };
            let _ = ALLOC_PENDING.insert(tid, fresh, 0);
            ALLOC_PENDING.get_ptr_mut(tid).ok_or(0u32)?
        }
    };
    // SAFETY: read_volatile keeps the loader-set constant from being folded at compile time.
    let sample_bytes = unsafe { core::ptr::read_volatile(&ALLOC_SAMPLE_BYTES) };
    // SAFETY: the entry of the current thread, which is here and nowhere else.
    unsafe {
        let weight = if sample_bytes == 0 || size >= sample_bytes {
            size
        } else {
            // About one allocation per `sample_bytes` allocated, standing for all of them.
            (*entry).countdown -= size as i64;
            if (*entry).countdown > 0 {
                0
            } else {
                (*entry).countdown = sample_bytes as i64;
                sample_bytes
            }
        };
        (*entry).size = size;
        (*entry).aux = aux;
        (*entry).cookie = cookie as u32;
        // A zero weight still lets a realloc's return free its old block.
        (*entry).weight = weight;
        if weight != 0 {
            (*entry).ret_addr = caller_address(&ctx);
            (*entry).user_stack_id = user_stack(&ctx, tgid, unwind::SCRATCH_TASK);
        }
    }
    Ok(0)
}

/// Forgets a live allocation that was freed, crediting its site.
#[inline(always)]
fn record_free(tgid: u32, ptr: u64, now: u64) {
    let key = LiveKey { tgid, _pad: 0, ptr };
    let Some(&live) = (unsafe { LIVE.get(&key) }) else {
        return;
    };
    let _ = LIVE.remove(&key);
    if let Some(stats) = ALLOC_SITES.get_ptr_mut(&live.site) {
        // SAFETY: this CPU's copy.
        unsafe {
            (*stats).free_count += 1;
            (*stats).free_bytes += live.bytes;
            (*stats).lifetime_ns += now.saturating_sub(live.time_ns);
        }
    }
    if let Some(memory) = process_memory(tgid) {
        // SAFETY: this CPU's copy.
        unsafe {
            (*memory).free_bytes += live.bytes;
            (*memory).free_count += 1;
        }
    }
}

/// Records a new live allocation and credits its site.
#[inline(always)]
fn record_alloc(tgid: u32, tid: u32, ptr: u64, pending: &AllocPending, now: u64) {
    let site = AllocSite {
        tgid,
        user_stack_id: pending.user_stack_id,
        ret_addr: pending.ret_addr,
        cookie: pending.cookie,
        tid,
    };
    let live = LiveAlloc {
        bytes: pending.weight,
        time_ns: now,
        site,
    };
    if LIVE
        .insert(&LiveKey { tgid, _pad: 0, ptr }, &live, 0)
        .is_err()
    {
        bump(counter::LIVE_MAP_FULL);
    }
    let stats = match ALLOC_SITES.get_ptr_mut(&site) {
        Some(stats) => Some(stats),
        None => {
            let _ = ALLOC_SITES.insert(&site, &AllocStats::default(), u64::from(BPF_NOEXIST));
            if let Ok(comm) = bpf_get_current_comm() {
                let _ = ALLOC_THREAD_NAMES.insert(&tid, &comm, 0);
            }
            ALLOC_SITES.get_ptr_mut(&site)
        }
    };
    match stats {
        // SAFETY: this CPU's copy.
        Some(stats) => unsafe {
            (*stats).alloc_count += 1;
            (*stats).alloc_bytes += pending.weight;
        },
        None => bump(counter::ALLOC_SITES_FULL),
    }
    if let Some(memory) = process_memory(tgid) {
        // SAFETY: this CPU's copy.
        unsafe {
            (*memory).alloc_bytes += pending.weight;
            (*memory).alloc_count += 1;
        }
    }
}

/// An allocator function returns: record the new block (and, for realloc, the old one's end).
#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    match try_alloc_return(ctx) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

#[inline(always)]
fn try_alloc_return(ctx: RetProbeContext) -> Result<u32, u32> {
    let (tgid, tid) = current_tgid_tid();
    let entry = ALLOC_PENDING.get_ptr_mut(tid).ok_or(0u32)?;
    // SAFETY: the entry of the current thread, which is here and nowhere else.
    let pending = unsafe { *entry };
    if pending.cookie == 0 {
        return Err(0);
    }
    // SAFETY: as above.
    unsafe { (*entry).cookie = 0 };
    if active_map() == RECORDING_STOPPED {
        return Err(0);
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let ret: u64 = ctx.ret();
    let layout = u64::from(pending.cookie) & 0xff;
    let ptr = if layout == alloc_layout::POSIX_MEMALIGN {
        if ret != 0 {
            return Err(0);
        }
        // SAFETY: the checked read of the pointer the function stored.
        unsafe { bpf_probe_read_user(pending.aux as *const u64) }.unwrap_or(0)
    } else {
        ret
    };
    let resizes = layout == alloc_layout::REALLOC || layout == alloc_layout::REALLOCARRAY;
    // realloc frees the old block when it returns a new one, or when asked for 0 bytes.
    if resizes && pending.aux != 0 && (ptr != 0 || pending.size == 0) {
        record_free(tgid, pending.aux, now);
    }
    if ptr != 0 && pending.weight != 0 {
        record_alloc(tgid, tid, ptr, &pending, now);
    }
    Ok(0)
}

/// `free`: the block is no longer live.
#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    match try_free_enter(ctx) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

#[inline(always)]
fn try_free_enter(ctx: ProbeContext) -> Result<u32, u32> {
    let ptr: u64 = ctx.arg(0).unwrap_or(0);
    if ptr == 0 || active_map() == RECORDING_STOPPED {
        return Err(0);
    }
    let (tgid, _) = current_tgid_tid();
    record_free(tgid, ptr, unsafe { bpf_ktime_get_ns() });
    Ok(0)
}
