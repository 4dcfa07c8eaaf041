//! Allocations: per-site statistics joined with the allocations still live at the end, leak
//! candidates, and the targets' resident memory. Plain data; the probes are attached by
//! `kernel::KernelProbes::attach_allocator`, the objects probed found by `target::allocators`.

use std::collections::HashMap;

use profiler_common::{AllocSite, AllocStats, LiveAlloc, LiveKey};

use crate::{
    model::{AllocSiteStats, EventKind, FrameKind, Interner, MemoryStats, Profile},
    stacks::{
        assemble::{self, RawSample, RawWeight, StackTable},
        symbolize::Symbols,
    },
    target::allocators::function_of,
};

/// Live allocations older than this at the end are leak candidates: a quarter of the run,
/// at most 5 s, so a short run still tells a leak from work in progress.
pub fn leak_age_secs(duration_secs: f64) -> f64 {
    (duration_secs / 4.0).min(5.0)
}

/// Per-site statistics: the kernel's totals joined with the live allocations at the end.
/// `site_stack` maps a site to its stack in the profile (sites without one are left out).
pub fn site_stats(
    sites: &[(AllocSite, AllocStats)],
    live: &[(LiveKey, LiveAlloc)],
    end_ns: u64,
    leak_age_secs: f64,
    mut site_stack: impl FnMut(&AllocSite) -> Option<usize>,
) -> Vec<AllocSiteStats> {
    let mut stats: HashMap<(u32, usize), AllocSiteStats> = HashMap::new();
    let mut lifetime_ns: HashMap<(u32, usize), u64> = HashMap::new();
    for (site, totals) in sites {
        let Some(stack) = site_stack(site) else {
            continue;
        };
        let entry = stats
            .entry((site.tgid, stack))
            .or_insert_with(|| AllocSiteStats {
                pid: site.tgid,
                stack,
                ..AllocSiteStats::default()
            });
        entry.alloc_count += totals.alloc_count;
        entry.alloc_bytes += totals.alloc_bytes;
        entry.free_count += totals.free_count;
        entry.free_bytes += totals.free_bytes;
        *lifetime_ns.entry((site.tgid, stack)).or_default() += totals.lifetime_ns;
    }
    let leak_age_ns = (leak_age_secs * 1e9) as u64;
    for (_, alloc) in live {
        let Some(stack) = site_stack(&alloc.site) else {
            continue;
        };
        let Some(entry) = stats.get_mut(&(alloc.site.tgid, stack)) else {
            continue;
        };
        let age = end_ns.saturating_sub(alloc.time_ns);
        entry.live_count += 1;
        entry.live_bytes += alloc.bytes;
        if age >= leak_age_ns {
            entry.old_live_count += 1;
            entry.old_live_bytes += alloc.bytes;
        }
        entry.oldest_live_secs = entry.oldest_live_secs.max(age as f64 / 1e9);
    }
    let mut stats: Vec<AllocSiteStats> = stats
        .into_iter()
        .map(|(key, mut site)| {
            if site.free_count > 0 {
                site.mean_lifetime_us =
                    (lifetime_ns[&key] as f64 / site.free_count as f64 / 1000.0 * 10.0).round()
                        / 10.0;
            }
            site.oldest_live_secs = (site.oldest_live_secs * 1000.0).round() / 1000.0;
            site
        })
        .collect();
    stats.sort_by(|a, b| {
        b.alloc_bytes
            .cmp(&a.alloc_bytes)
            .then(a.pid.cmp(&b.pid))
            .then(a.stack.cmp(&b.stack))
    });
    stats
}

/// What the allocation programs left at the end of a run.
pub struct Tracked<'a> {
    /// Totals per site.
    pub sites: &'a [(AllocSite, AllocStats)],
    /// Live allocations.
    pub live: &'a [(LiveKey, LiveAlloc)],
    /// `CLOCK_MONOTONIC` end of the run, ns.
    pub end_ns: u64,
    /// Age from which live allocations are leak candidates.
    pub leak_age_secs: f64,
}

/// The stack of an allocation: the caller's return address (one byte back, inside the call)
/// instead of the allocator's entry address, then the frames the unwinder found above it.
/// At the entry of a function the frame-pointer walk skips the caller, so the return address
/// read from the stack is put back unless the walk already has it.
fn allocation_stack(stack: Option<&Vec<u64>>, ret_addr: u64) -> Vec<u64> {
    let mut addresses = Vec::new();
    if ret_addr != 0 {
        addresses.push(ret_addr - 1);
    }
    if let Some(stack) = stack {
        let rest = stack.get(1..).unwrap_or_default();
        let rest = match rest.first() {
            Some(&first) if first == ret_addr => &rest[1..],
            _ => rest,
        };
        addresses.extend(rest);
    }
    addresses
}

/// Adds the `Alloc` (bytes allocated) and `InUse` (bytes live at the end) samples of the
/// tracked allocations to `profile`, and returns the per-site statistics.
pub fn add_allocations(
    profile: &mut Profile,
    interner: &mut Interner,
    symbols: &mut dyn Symbols,
    tracked: &Tracked,
    stacks: &StackTable,
    thread_name: impl Fn(u32, u32) -> String,
) -> MemoryStats {
    // Each (stack, caller) pair becomes a stack of its own, numbered in a table of its own.
    let mut table = StackTable::default();
    let mut synthetic: HashMap<(i32, u64), i32> = HashMap::new();
    let mut raw_of_site: HashMap<AllocSite, RawSample> = HashMap::new();
    for site in tracked
        .sites
        .iter()
        .map(|(site, _)| site)
        .chain(tracked.live.iter().map(|(_, live)| &live.site))
    {
        if raw_of_site.contains_key(site) {
            continue;
        }
        let next = synthetic.len() as i32;
        let id = *synthetic
            .entry((site.user_stack_id, site.ret_addr))
            .or_insert_with(|| {
                let walked = u32::try_from(site.user_stack_id).ok();
                if let Some(end) = walked.and_then(|id| stacks.user_ends.get(&id)) {
                    table.user_ends.insert(next as u32, *end);
                }
                let stack = walked.and_then(|id| stacks.user.get(&id));
                table
                    .user
                    .insert(next as u32, allocation_stack(stack, site.ret_addr));
                next
            });
        raw_of_site.insert(
            *site,
            RawSample {
                pid: site.tgid,
                tid: site.tid,
                thread: thread_name(site.tgid, site.tid),
                user_stack: id,
                kernel_stack: profiler_common::STACK_ID_NONE,
                state: None,
                leaf: function_of(site.cookie).map(|f| (f.name, FrameKind::User)),
            },
        );
    }
    let mut allocated: HashMap<RawSample, RawWeight> = HashMap::new();
    for (site, stats) in tracked.sites {
        let weight = allocated.entry(raw_of_site[site].clone()).or_default();
        weight.weight += stats.alloc_bytes;
        weight.count += stats.alloc_count;
    }
    let mut in_use: HashMap<RawSample, RawWeight> = HashMap::new();
    for (_, live) in tracked.live {
        let weight = in_use.entry(raw_of_site[&live.site].clone()).or_default();
        weight.weight += live.bytes;
        weight.count += 1;
    }
    let stack_of = assemble::add_samples(
        profile,
        interner,
        EventKind::Alloc,
        &allocated,
        &table,
        symbols,
    );
    let stack_of: HashMap<RawSample, usize> = stack_of
        .into_iter()
        .map(|(raw, stack)| (raw.clone(), stack))
        .collect();
    let live_stacks = assemble::add_samples(
        profile,
        interner,
        EventKind::InUse,
        &in_use,
        &table,
        symbols,
    );
    let site_stack = |site: &AllocSite| {
        let raw = raw_of_site.get(site)?;
        stack_of.get(raw).or_else(|| live_stacks.get(raw)).copied()
    };
    MemoryStats {
        leak_age_secs: tracked.leak_age_secs,
        sites: site_stats(
            tracked.sites,
            tracked.live,
            tracked.end_ns,
            tracked.leak_age_secs,
            site_stack,
        ),
        ..MemoryStats::default()
    }
}

/// Resident set size of a process in bytes, from `/proc/PID/statm`.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let resident: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(resident * page.max(4096) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::allocators::cookie;
    use profiler_common::STACK_ID_NONE;

    fn site(stack: i32) -> AllocSite {
        AllocSite {
            tgid: 7,
            user_stack_id: stack,
            ret_addr: 0x1000,
            cookie: cookie(0) as u32,
            tid: 7,
        }
    }

    #[test]
    fn sites_join_totals_with_live_allocations() {
        let leak = site(1);
        let churn = site(2);
        let sites = [
            (
                leak,
                AllocStats {
                    alloc_count: 3,
                    alloc_bytes: 300,
                    ..AllocStats::default()
                },
            ),
            (
                churn,
                AllocStats {
                    alloc_count: 10,
                    alloc_bytes: 1000,
                    free_count: 10,
                    free_bytes: 1000,
                    lifetime_ns: 50_000,
                },
            ),
        ];
        let live_at = |ptr, time_ns| {
            (
                LiveKey {
                    tgid: 7,
                    _pad: 0,
                    ptr,
                },
                LiveAlloc {
                    bytes: 100,
                    time_ns,
                    site: leak,
                },
            )
        };
        // Two allocations 10 s old, one 0.5 s old, at an end of 20 s.
        let live = [
            live_at(1, 10_000_000_000),
            live_at(2, 10_000_000_000),
            live_at(3, 19_500_000_000),
        ];
        let stats = site_stats(&sites, &live, 20_000_000_000, 5.0, |s| {
            (s.user_stack_id != STACK_ID_NONE).then_some(s.user_stack_id as usize)
        });
        let churned = &stats[0];
        assert_eq!((churned.alloc_bytes, churned.live_bytes), (1000, 0));
        assert_eq!(churned.mean_lifetime_us, 5.0);
        let leaked = &stats[1];
        assert_eq!((leaked.live_count, leaked.live_bytes), (3, 300));
        assert_eq!((leaked.old_live_count, leaked.old_live_bytes), (2, 200));
        assert_eq!(leaked.oldest_live_secs, 10.0);
    }
}
