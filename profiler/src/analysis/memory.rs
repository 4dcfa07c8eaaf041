//! The memory section: allocation totals, peaks, leak candidates, top allocating and churning
//! stacks.

use serde::Serialize;

use super::{TOP_STACKS, percent};
use crate::model::{Profile, TimelineRow};

/// The memory section.
#[derive(Clone, Debug, Serialize)]
pub struct MemorySummary {
    /// `--alloc-sample` bytes: figures are estimates weighted from sampled allocations.
    pub sampled_every_bytes: Option<u64>,
    /// Bytes allocated during the run.
    pub allocated_bytes: u64,
    /// Allocations.
    pub allocations: u64,
    /// Bytes of those freed during the run.
    pub freed_bytes: u64,
    /// Frees of them.
    pub frees: u64,
    /// Bytes allocated during the run and live at the end.
    pub live_bytes: u64,
    /// Allocations live at the end.
    pub live_allocations: u64,
    /// Highest heap in use (allocated during the run, not freed), bytes, and when (s).
    pub peak_heap_bytes: i64,
    /// When the heap peaked, seconds since the start.
    pub peak_heap_at_secs: f64,
    /// Highest RSS, bytes.
    pub peak_rss_bytes: u64,
    /// When RSS peaked, seconds since the start.
    pub peak_rss_at_secs: f64,
    /// Live allocations at least this old at the end count as leak candidates, seconds.
    pub leak_age_secs: f64,
    /// Allocations not tracked because the live-allocation map was full: live and leaked
    /// figures are then lower bounds.
    pub untracked_allocations: u64,
    /// Heap growth over the run from the allocator's own byte counts (allocated less freed),
    /// exact even when allocations went untracked.
    pub heap_growth_bytes: i64,
    /// Sites by bytes allocated.
    pub top_allocating: Vec<MemorySite>,
    /// Sites with allocations live at the end and older than `leak_age_secs`, by bytes.
    pub leak_candidates: Vec<MemorySite>,
    /// Sites by short-lived allocations (allocated and freed during the run).
    pub churn: Vec<MemorySite>,
    /// `mmap`/`munmap`/`brk` totals.
    pub mappings: crate::model::MappingStats,
    /// Allocator functions probed.
    pub probed: Vec<String>,
}

/// Allocations from one stack.
#[derive(Clone, Debug, Serialize)]
pub struct MemorySite {
    /// Process id.
    pub pid: u32,
    /// The function that called the allocator.
    pub function: Option<String>,
    /// Its caller.
    pub caller: Option<String>,
    /// The allocator function (`malloc`, `calloc`...).
    pub allocator: String,
    /// Bytes this list ranks by (allocated, leaked, or freed).
    pub bytes: u64,
    /// Allocations this list ranks by.
    pub count: u64,
    /// Share of all bytes allocated, percent.
    pub percent: f64,
    /// Bytes live at the end.
    pub live_bytes: u64,
    /// Mean lifetime of those freed, µs.
    pub mean_lifetime_us: f64,
    /// Age of the oldest live one, seconds.
    pub oldest_live_secs: f64,
    /// The whole stack, root first, `;`-separated.
    pub stack: String,
}

pub(super) fn memory_summary(profile: &Profile) -> MemorySummary {
    let memory = profile.memory.clone().unwrap_or_default();
    let total: u64 = memory.sites.iter().map(|site| site.alloc_bytes).sum();
    let site = |stats: &crate::model::AllocSiteStats, bytes: u64, count: u64| {
        let frames: Vec<&crate::model::Frame> = profile.stacks[stats.stack]
            .iter()
            .map(|&f| &profile.frames[f])
            .collect();
        let callers: Vec<&str> = frames
            .iter()
            .rev()
            .skip(1)
            .filter(|f| f.kind.is_program_code())
            .map(|f| f.function.as_str())
            .collect();
        MemorySite {
            pid: stats.pid,
            function: callers.first().map(|f| (*f).to_owned()),
            caller: callers.get(1).map(|f| (*f).to_owned()),
            allocator: frames
                .last()
                .map(|f| f.function.clone())
                .unwrap_or_default(),
            bytes,
            count,
            percent: percent(bytes, total),
            live_bytes: stats.live_bytes,
            mean_lifetime_us: stats.mean_lifetime_us,
            oldest_live_secs: stats.oldest_live_secs,
            stack: frames
                .iter()
                .map(|frame| frame.label())
                .collect::<Vec<_>>()
                .join(";"),
        }
    };
    let top_allocating: Vec<MemorySite> = memory
        .sites
        .iter()
        .take(TOP_STACKS)
        .map(|s| site(s, s.alloc_bytes, s.alloc_count))
        .collect();
    let mut leaks: Vec<&crate::model::AllocSiteStats> = memory
        .sites
        .iter()
        .filter(|s| s.old_live_bytes > 0)
        .collect();
    leaks.sort_by_key(|site| std::cmp::Reverse(site.old_live_bytes));
    let mut churn: Vec<&crate::model::AllocSiteStats> =
        memory.sites.iter().filter(|s| s.free_count > 0).collect();
    churn.sort_by_key(|site| std::cmp::Reverse(site.free_count));
    let peak_heap = TimelineRow::peak(&memory.timeline, |r| r.heap_live_bytes as f64);
    let peak_rss = TimelineRow::peak(&memory.timeline, |r| r.rss_bytes as f64);
    MemorySummary {
        untracked_allocations: profile.losses.live_map_full,
        heap_growth_bytes: memory.timeline.last().map_or(0, |row| row.heap_live_bytes),
        sampled_every_bytes: (memory.sample_bytes > 0).then_some(memory.sample_bytes),
        allocated_bytes: total,
        allocations: memory.sites.iter().map(|s| s.alloc_count).sum(),
        freed_bytes: memory.sites.iter().map(|s| s.free_bytes).sum(),
        frees: memory.sites.iter().map(|s| s.free_count).sum(),
        live_bytes: memory.sites.iter().map(|s| s.live_bytes).sum(),
        live_allocations: memory.sites.iter().map(|s| s.live_count).sum(),
        peak_heap_bytes: peak_heap.map_or(0, |r| r.heap_live_bytes),
        peak_heap_at_secs: peak_heap.map_or(0.0, |r| r.time_secs),
        peak_rss_bytes: peak_rss.map_or(0, |r| r.rss_bytes),
        peak_rss_at_secs: peak_rss.map_or(0.0, |r| r.time_secs),
        leak_age_secs: memory.leak_age_secs,
        top_allocating,
        leak_candidates: leaks
            .into_iter()
            .take(TOP_STACKS)
            .map(|s| site(s, s.old_live_bytes, s.old_live_count))
            .collect(),
        churn: churn
            .into_iter()
            .take(TOP_STACKS)
            .map(|s| site(s, s.free_bytes, s.free_count))
            .collect(),
        mappings: memory.mappings,
        probed: memory.probed,
    }
}
