//! Memory: which allocator functions to probe in which objects, allocation sites and leak
//! candidates, and the memory timeline (CSV and chart). Plain data; the probes are in `bpf.rs`.

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    path::{Path, PathBuf},
};

use object::{Object as _, ObjectSymbol as _};
use profiler_common::{AllocSite, AllocStats, LiveAlloc, LiveKey, STACK_MAP_ENTRIES, alloc_layout};

use crate::{
    assemble::{self, RawSample, RawWeight, StackTable},
    profile::{AllocSiteStats, EventKind, FrameKind, Interner, MemoryStats, Profile, TimelineRow},
    symbolize::Symbols,
};

/// An allocator function and how it takes its arguments (`alloc_layout`).
#[derive(Clone, Copy, Debug)]
pub struct AllocatorFunction {
    /// Symbol name, also the leaf frame of its allocations.
    pub name: &'static str,
    /// Argument layout.
    pub layout: u64,
}

const fn function(name: &'static str, layout: u64) -> AllocatorFunction {
    AllocatorFunction { name, layout }
}

use alloc_layout::{CALLOC, FREE, POSIX_MEMALIGN, REALLOC, REALLOCARRAY, SIZE0, SIZE1};

/// The functions probed, in every object that defines them: the C allocator API as libc,
/// jemalloc, mimalloc and tcmalloc export it, and jemalloc's and mimalloc's prefixed names.
/// A function's position + 1 is its index in the probe cookie.
pub const FUNCTIONS: &[AllocatorFunction] = &[
    function("malloc", SIZE0),
    function("calloc", CALLOC),
    function("realloc", REALLOC),
    function("reallocarray", REALLOCARRAY),
    function("posix_memalign", POSIX_MEMALIGN),
    function("aligned_alloc", SIZE1),
    function("memalign", SIZE1),
    function("valloc", SIZE0),
    function("pvalloc", SIZE0),
    function("free", FREE),
    function("je_malloc", SIZE0),
    function("je_calloc", CALLOC),
    function("je_realloc", REALLOC),
    function("je_free", FREE),
    function("mi_malloc", SIZE0),
    function("mi_zalloc", SIZE0),
    function("mi_calloc", CALLOC),
    function("mi_realloc", REALLOC),
    function("mi_malloc_aligned", SIZE0),
    function("mi_free", FREE),
    function("tc_malloc", SIZE0),
    function("tc_calloc", CALLOC),
    function("tc_realloc", REALLOC),
    function("tc_free", FREE),
];

/// The probe cookie of function `index` (position in [`FUNCTIONS`]).
pub fn cookie(index: usize) -> u64 {
    ((index as u64 + 1) << 8) | FUNCTIONS[index].layout
}

/// The function a cookie names.
pub fn function_of(cookie: u32) -> Option<&'static AllocatorFunction> {
    FUNCTIONS.get(((cookie >> 8) as usize).checked_sub(1)?)
}

/// Functions probed in every allocator: the C library calls them itself (`strdup`, `fopen`,
/// `getline` ... allocate through them), whether the program imports them or not.
const ALWAYS_PROBED: [&str; 4] = ["malloc", "calloc", "realloc", "free"];

/// Prefixes under which jemalloc, mimalloc and tcmalloc export the C allocator API.
const PREFIXES: [&str; 3] = ["je_", "mi_", "tc_"];

/// A function name's allocator prefix (`""` for the plain C API) and the rest.
fn split_prefix(name: &str) -> (&str, &str) {
    PREFIXES
        .iter()
        .find_map(|prefix| Some((*prefix, name.strip_prefix(prefix)?)))
        .unwrap_or(("", name))
}

/// Allocator functions an ELF object defines (its own code, not imports), as indices into
/// [`FUNCTIONS`]. An object is an allocator when it defines `malloc` and `free` under one of
/// the prefixes.
pub fn defined_functions(elf: &[u8]) -> Vec<usize> {
    let Ok(file) = object::File::parse(elf) else {
        return Vec::new();
    };
    let defined: HashSet<&str> = file
        .dynamic_symbols()
        .chain(file.symbols())
        .filter(|symbol| symbol.is_definition() && symbol.address() != 0)
        .filter_map(|symbol| symbol.name().ok())
        .collect();
    let allocator_families: Vec<&str> = std::iter::once("")
        .chain(PREFIXES)
        .filter(|prefix| {
            defined.contains(format!("{prefix}malloc").as_str())
                && defined.contains(format!("{prefix}free").as_str())
        })
        .collect();
    FUNCTIONS
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            defined.contains(f.name) && allocator_families.contains(&split_prefix(f.name).0)
        })
        .map(|(index, _)| index)
        .collect()
}

/// Names an ELF object imports (undefined dynamic symbols).
pub fn imported_names(elf: &[u8]) -> HashSet<String> {
    let Ok(file) = object::File::parse(elf) else {
        return HashSet::new();
    };
    file.dynamic_symbols()
        .filter(|symbol| symbol.is_undefined())
        .filter_map(|symbol| symbol.name().ok())
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect()
}

/// Whether function `index` needs a probe, given the names the process's objects import:
/// each probe costs a tenth of a second to detach (an RCU grace period, one after another),
/// so the rarely used functions are probed only when something imports them.
pub fn worth_probing(index: usize, imported: &HashSet<String>) -> bool {
    let name = FUNCTIONS[index].name;
    ALWAYS_PROBED.contains(&split_prefix(name).1) || imported.contains(name)
}

/// Where in a `free`-like function to put its probe, bytes from its start.
///
/// A uprobe on an instruction the kernel cannot emulate is single-stepped out of line: an
/// extra trap per call, 9 µs of the 10 µs a probe on glibc's `free` costs on a VM. glibc's
/// `free` opens with `test %rdi,%rdi; je <return>` (the `free(NULL)` no-op) and then a
/// `push`, which the kernel emulates. Probing that `push` skips only `free(NULL)`, and the
/// pointer is still in `%rdi` there. Any other opening keeps the probe at the entry.
pub fn free_probe_offset(code: &[u8]) -> u64 {
    if !cfg!(target_arch = "x86_64") {
        return 0;
    }
    let is_push = |code: &[u8]| matches!(code, [0x50..=0x57, ..] | [0x41, 0x50..=0x57, ..]);
    let mut at = 0;
    if code.starts_with(&[0xf3, 0x0f, 0x1e, 0xfa]) {
        at += 4; // endbr64
    }
    if !code[at..].starts_with(&[0x48, 0x85, 0xff]) {
        return 0; // not `test %rdi,%rdi`
    }
    at += 3;
    match code.get(at..) {
        Some([0x74, _, ..]) => at += 2,                // je rel8
        Some([0x0f, 0x84, _, _, _, _, ..]) => at += 6, // je rel32
        _ => return 0,
    }
    if is_push(&code[at..]) { at as u64 } else { 0 }
}

/// The first bytes of function `name` in an ELF object.
pub fn function_code<'a>(elf: &'a [u8], name: &str) -> Option<&'a [u8]> {
    use object::ObjectSection as _;

    let file = object::File::parse(elf).ok()?;
    let symbol = file
        .dynamic_symbols()
        .chain(file.symbols())
        .find(|symbol| symbol.is_definition() && symbol.name() == Ok(name))?;
    let section = file.section_by_index(symbol.section_index()?).ok()?;
    let data = section.data().ok()?;
    let start = usize::try_from(symbol.address().checked_sub(section.address())?).ok()?;
    let end = data.len().min(start + 32);
    data.get(start..end)
}

/// An object mapped into a process that defines allocator functions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocatorObject {
    /// Path through which to attach: `/proc/PID/root/PATH` (the file as the process sees it,
    /// in its own mount namespace), or `/proc/PID/map_files/...` for a file deleted since.
    pub attach_path: PathBuf,
    /// Its path as the process sees it, for messages.
    pub path: String,
    /// Device and inode, so each object is probed once per process.
    pub identity: (u64, u64),
    /// Indices into [`FUNCTIONS`], with the offset of each one's probe from its start.
    pub functions: Vec<(usize, u64)>,
}

/// The allocator objects mapped into process `pid`, from its memory map (`proc_root` is
/// `/proc` outside tests).
pub fn allocator_objects(proc_root: &Path, pid: u32) -> Vec<AllocatorObject> {
    use std::os::unix::fs::MetadataExt as _;

    let Ok(maps) = std::fs::read_to_string(proc_root.join(format!("{pid}/maps"))) else {
        return Vec::new();
    };
    let mut seen = HashSet::new();
    let mut imported = HashSet::new();
    let mut candidates = Vec::new();
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [range, perms, _, _, _, path, ..] = fields.as_slice() else {
            continue;
        };
        if !perms.contains('x') || !path.starts_with('/') {
            continue;
        }
        // The mapped file itself, even deleted or in another mount namespace.
        let mapped = proc_root.join(format!("{pid}/map_files/{range}"));
        let Ok(metadata) = std::fs::metadata(&mapped) else {
            continue;
        };
        let identity = (metadata.dev(), metadata.ino());
        if !seen.insert(identity) {
            continue;
        }
        // Probes attached through a `map_files` link reach mappings made later but not the
        // ones already there (seen on 6.18): attach through the process's root when that
        // path still names the mapped file.
        let rooted = proc_root.join(format!("{pid}/root{path}"));
        let attach_path = match std::fs::metadata(&rooted) {
            Ok(m) if (m.dev(), m.ino()) == identity => rooted,
            _ => mapped,
        };
        let Ok(elf) = std::fs::read(&attach_path) else {
            continue;
        };
        imported.extend(imported_names(&elf));
        let defined = defined_functions(&elf);
        if !defined.is_empty() {
            candidates.push((attach_path, (*path).to_owned(), identity, elf, defined));
        }
    }
    candidates
        .into_iter()
        .map(|(attach_path, path, identity, elf, defined)| {
            let functions = defined
                .into_iter()
                .filter(|&index| worth_probing(index, &imported))
                .map(|index| {
                    let function = &FUNCTIONS[index];
                    let offset = if function.layout == FREE {
                        function_code(&elf, function.name).map_or(0, free_probe_offset)
                    } else {
                        0
                    };
                    (index, offset)
                })
                .collect();
            AllocatorObject {
                attach_path,
                path,
                identity,
                functions,
            }
        })
        .collect()
}

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
    // Each (stack, caller) pair becomes a stack of its own, numbered past the kernel's ids.
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
        let next = (STACK_MAP_ENTRIES + synthetic.len() as u32) as i32;
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

/// The memory timeline as CSV.
pub fn timeline_csv(rows: &[TimelineRow]) -> String {
    let mut csv = String::from("time_s,heap_live_bytes,rss_bytes,alloc_bytes_per_s\n");
    for row in rows {
        let _ = writeln!(
            csv,
            "{:.3},{},{},{:.0}",
            row.time_secs, row.heap_live_bytes, row.rss_bytes, row.alloc_bytes_per_sec
        );
    }
    csv
}

/// The row with the largest value of `value`, if any.
pub fn peak(rows: &[TimelineRow], value: impl Fn(&TimelineRow) -> f64) -> Option<&TimelineRow> {
    rows.iter().max_by(|a, b| value(a).total_cmp(&value(b)))
}

/// Columns of the chart's series: a day of rows (864 000) draws as fast as a minute's.
const CHART_BUCKETS: usize = 1000;

/// The points of one series, at most two per bucket of consecutive rows (its lowest and highest,
/// in time order): the line keeps every peak and dip a pixel column can show.
fn chart_points(
    rows: &[TimelineRow],
    value: impl Fn(&TimelineRow) -> f64,
    buckets: usize,
) -> Vec<(f64, f64)> {
    let per_bucket = rows.len().div_ceil(buckets.max(1)).max(1);
    if per_bucket <= 2 {
        return rows.iter().map(|row| (row.time_secs, value(row))).collect();
    }
    let mut points = Vec::with_capacity(2 * buckets);
    for bucket in rows.chunks(per_bucket) {
        let by_value = |a: &&TimelineRow, b: &&TimelineRow| value(a).total_cmp(&value(b));
        let (Some(low), Some(high)) = (
            bucket.iter().min_by(by_value),
            bucket.iter().max_by(by_value),
        ) else {
            continue;
        };
        let (first, second) = if low.time_secs <= high.time_secs {
            (low, high)
        } else {
            (high, low)
        };
        points.push((first.time_secs, value(first)));
        points.push((second.time_secs, value(second)));
    }
    points
}

/// The memory timeline as an SVG chart: heap in use and RSS in MiB over seconds, peaks marked.
pub fn timeline_svg(rows: &[TimelineRow], title: &str) -> Result<String, String> {
    use plotters::prelude::*;

    const MIB: f64 = 1024.0 * 1024.0;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let end = rows.last().map_or(1.0, |row| row.time_secs).max(0.1);
        let heap = |row: &TimelineRow| row.heap_live_bytes.max(0) as f64 / MIB;
        let rss = |row: &TimelineRow| row.rss_bytes as f64 / MIB;
        let top = rows
            .iter()
            .map(|row| heap(row).max(rss(row)))
            .fold(1.0, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..end, 0.0..top)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("time since start (s)")
            .y_desc("memory (MiB)")
            .draw()
            .map_err(|e| e.to_string())?;
        for (label, color, value) in [
            (
                "heap in use (allocated during the run)",
                RED,
                &heap as &dyn Fn(&TimelineRow) -> f64,
            ),
            ("RSS", BLUE, &rss),
        ] {
            chart
                .draw_series(LineSeries::new(
                    chart_points(rows, value, CHART_BUCKETS),
                    color.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            if let Some(row) = peak(rows, value) {
                let at = (row.time_secs, value(row));
                chart
                    .draw_series([
                        Circle::new(at, 5, color.filled()).into_dyn(),
                        Text::new(
                            format!("peak {:.1} MiB at {:.1} s", at.1, at.0),
                            (at.0, at.1),
                            ("sans-serif", 14),
                        )
                        .into_dyn(),
                    ])
                    .map_err(|e| e.to_string())?;
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// The programs' allocator probes, described for the summary.
pub fn probed_names(objects: &[AllocatorObject]) -> Vec<String> {
    let mut names: Vec<String> = objects
        .iter()
        .flat_map(|object| {
            object
                .functions
                .iter()
                .map(move |&(f, offset)| match offset {
                    0 => format!("{}@{}", FUNCTIONS[f].name, object.path),
                    _ => format!("{}+{offset}@{}", FUNCTIONS[f].name, object.path),
                })
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use profiler_common::STACK_ID_NONE;

    #[test]
    fn free_probes_skip_the_null_check_only_before_a_push() {
        // glibc 2.36: test %rdi,%rdi; je rel32; push %rbp
        let glibc = [0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0, 0, 0, 0x55, 0x48];
        assert_eq!(free_probe_offset(&glibc), 9);
        let short_je = [
            0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x85, 0xff, 0x74, 0x10, 0x41, 0x54,
        ];
        assert_eq!(free_probe_offset(&short_je), 9);
        // Already a push, or an opening not understood: the entry.
        assert_eq!(free_probe_offset(&[0x55, 0x48, 0x89, 0xe5]), 0);
        assert_eq!(
            free_probe_offset(&[0x48, 0x85, 0xff, 0x74, 0x10, 0x48, 0x8b]),
            0
        );
        assert_eq!(free_probe_offset(&[0x48, 0x85]), 0);
    }

    #[test]
    fn rare_functions_are_probed_only_when_imported() {
        let index = |name| FUNCTIONS.iter().position(|f| f.name == name).unwrap();
        let imported: HashSet<String> = ["posix_memalign".to_owned()].into();
        assert!(worth_probing(index("malloc"), &HashSet::new()));
        assert!(worth_probing(index("mi_free"), &HashSet::new()));
        assert!(worth_probing(index("posix_memalign"), &imported));
        assert!(!worth_probing(index("valloc"), &imported));
    }

    #[test]
    fn cookies_round_trip() {
        for (index, function) in FUNCTIONS.iter().enumerate() {
            let cookie = cookie(index);
            assert_eq!(cookie & 0xff, function.layout);
            assert_eq!(function_of(cookie as u32).unwrap().name, function.name);
        }
        assert!(function_of(0).is_none());
    }

    #[test]
    fn libc_defines_the_allocator_and_the_profiler_does_not() {
        let objects = allocator_objects(Path::new("/proc"), std::process::id());
        let libc = objects
            .iter()
            .find(|object| object.path.contains("libc.so"))
            .unwrap_or_else(|| panic!("libc among {objects:?}"));
        let names: Vec<&str> = libc
            .functions
            .iter()
            .map(|&(f, _)| FUNCTIONS[f].name)
            .collect();
        for name in ["malloc", "calloc", "realloc", "free"] {
            assert!(names.contains(&name), "{name} in {names:?}");
        }
        assert!(
            !names.contains(&"pvalloc"),
            "nothing imports pvalloc: {names:?}"
        );
        assert!(
            !objects
                .iter()
                .any(|o| o.path.ends_with("/profiler") || o.path.contains("/deps/")),
            "this test binary imports malloc, it does not define it: {objects:?}"
        );
    }

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

    #[test]
    fn long_timelines_are_drawn_from_each_columns_extremes() {
        let rows: Vec<TimelineRow> = (0..100_000)
            .map(|i| TimelineRow {
                time_secs: f64::from(i) / 10.0,
                heap_live_bytes: if i == 54_321 {
                    1 << 30
                } else {
                    i64::from(i % 7)
                },
                rss_bytes: 0,
                alloc_bytes_per_sec: 0.0,
            })
            .collect();
        let points = chart_points(&rows, |row| row.heap_live_bytes as f64, 1000);
        assert!(points.len() <= 2000, "{}", points.len());
        assert!(
            points.contains(&(5432.1, f64::from(1 << 30))),
            "the spike is kept"
        );
        assert!(
            points.windows(2).all(|pair| pair[0].0 <= pair[1].0),
            "in time order"
        );
        let short = chart_points(&rows[..10], |row| row.heap_live_bytes as f64, 1000);
        assert_eq!(short.len(), 10);
    }

    #[test]
    fn timeline_renders_as_csv_and_chart() {
        let rows: Vec<TimelineRow> = (0..20)
            .map(|i| TimelineRow {
                time_secs: f64::from(i) / 10.0,
                heap_live_bytes: i64::from(i) << 20,
                rss_bytes: (30 + u64::from(i as u32)) << 20,
                alloc_bytes_per_sec: 1e6,
            })
            .collect();
        let csv = timeline_csv(&rows);
        assert_eq!(csv.lines().count(), 21);
        assert!(csv.starts_with("time_s,heap_live_bytes,rss_bytes,alloc_bytes_per_s\n0.000,0,"));
        assert_eq!(
            peak(&rows, |r| r.heap_live_bytes as f64).unwrap().time_secs,
            1.9
        );
        let svg = timeline_svg(&rows, "Memory of demo").unwrap();
        assert!(svg.contains("<svg") && svg.contains("memory (MiB)"));
        assert!(svg.contains("peak 19.0 MiB at 1.9 s"), "heap peak marked");
        assert!(timeline_svg(&[], "empty").unwrap().contains("<svg"));
    }
}
