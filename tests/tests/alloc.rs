//! Allocation tracking end to end, on a program with known allocations.

use profiler_tests::{assert_nothing_loaded, have_root, read_folded, read_summary, record, serial};

/// Bytes of stacks through `function` whose leaf (the allocator function) is `allocator`.
fn bytes_in(stacks: &[(Vec<String>, u64)], function: &str, allocator: &str) -> u64 {
    stacks
        .iter()
        .filter(|(frames, _)| {
            frames.last().is_some_and(|leaf| leaf == allocator)
                && frames.iter().rev().nth(1).is_some_and(|f| f == function)
        })
        .map(|(_, weight)| weight)
        .sum()
}

#[test]
fn leaks_are_exact_churn_is_freed_and_every_allocator_counts() {
    let _serial = serial();
    if !have_root("leaks_are_exact_churn_is_freed_and_every_allocator_counts") {
        return;
    }
    let (dir, out) = record(&["--events", "alloc"], "alloc_patterns", &["1"]);
    assert!(out.status.success());
    let in_use = read_folded(&dir.path().join("inuse.folded"));
    let allocated = read_folded(&dir.path().join("alloc.folded"));
    // The allocating function is right although the allocator's entry has no frame yet.
    assert_eq!(bytes_in(&in_use, "leak_blocks", "malloc"), 1_000_000);
    assert_eq!(bytes_in(&allocated, "leak_blocks", "malloc"), 1_000_000);
    assert_eq!(bytes_in(&in_use, "churn", "malloc"), 0, "all freed");
    assert_eq!(bytes_in(&allocated, "churn", "malloc"), 100_000 * 64);
    assert_eq!(bytes_in(&allocated, "big_temporary", "malloc"), 64 << 20);
    assert_eq!(bytes_in(&in_use, "big_temporary", "malloc"), 0);
    assert_eq!(bytes_in(&in_use, "odd_allocators", "calloc"), 10_000);
    assert_eq!(bytes_in(&in_use, "odd_allocators", "realloc"), 5000);
    assert_eq!(bytes_in(&in_use, "odd_allocators", "posix_memalign"), 3000);
    // The block realloc moved was freed by it.
    assert_eq!(bytes_in(&allocated, "odd_allocators", "malloc"), 100);
    assert_eq!(bytes_in(&in_use, "odd_allocators", "malloc"), 0);

    let summary = read_summary(dir.path());
    let memory = &summary["memory"];
    let leak = &memory["leak_candidates"][0];
    assert_eq!(leak["function"], "leak_blocks", "{memory:#}");
    assert_eq!(leak["bytes"], 1_000_000);
    assert_eq!(leak["count"], 100);
    assert_eq!(memory["churn"][0]["function"], "churn");
    assert_eq!(memory["churn"][0]["count"], 100_000);
    assert!(memory["peak_rss_bytes"].as_u64().unwrap() > 0);
    assert!(
        memory["mappings"]["mmap_count"].as_u64().unwrap() > 0,
        "{memory:#}"
    );

    let csv = std::fs::read_to_string(dir.path().join("memory-timeline.csv")).unwrap();
    let rows = csv.lines().count() - 1;
    let duration = summary["duration_secs"].as_f64().unwrap();
    assert!(
        rows as f64 >= 9.0 * duration,
        "{rows} rows in {duration} s: at least ten a second"
    );
    let last: Vec<&str> = csv.lines().last().unwrap().split(',').collect();
    let live: i64 = last[1].parse().unwrap();
    assert!(
        (1_000_000..1_100_000).contains(&live),
        "heap live at the end is the leak and the kept blocks: {live}"
    );
    let svg = std::fs::read_to_string(dir.path().join("memory-timeline.svg")).unwrap();
    assert!(svg.contains("memory (MiB)") && svg.contains("peak"));
    assert!(dir.path().join("alloc.svg").exists() && dir.path().join("inuse.svg").exists());
    assert_nothing_loaded();
}

#[test]
fn threads_allocating_at_once_are_each_accounted() {
    let _serial = serial();
    if !have_root("threads_allocating_at_once_are_each_accounted") {
        return;
    }
    let (dir, out) = record(&["--events", "alloc"], "alloc_patterns", &["0.3", "4"]);
    assert!(out.status.success());
    let in_use = read_folded(&dir.path().join("inuse.folded"));
    let allocated = read_folded(&dir.path().join("alloc.folded"));
    for thread in 0..4 {
        let name = format!("alloc-{thread}");
        let of_thread: Vec<_> = in_use
            .iter()
            .filter(|(frames, _)| frames[0] == name)
            .cloned()
            .collect();
        assert_eq!(
            bytes_in(&of_thread, "thread_leak", "malloc"),
            50_000,
            "{name}: {of_thread:?}"
        );
    }
    assert_eq!(
        bytes_in(&allocated, "churn", "malloc"),
        (100_000 + 4 * 5000) * 64
    );
    assert_eq!(bytes_in(&in_use, "churn", "malloc"), 0);
    assert_nothing_loaded();
}

#[test]
fn sampling_weights_allocations_up() {
    let _serial = serial();
    if !have_root("sampling_weights_allocations_up") {
        return;
    }
    let (dir, out) = record(
        &["--events", "alloc", "--alloc-sample", "64KiB"],
        "alloc_patterns",
        &["0.3"],
    );
    assert!(out.status.success());
    let allocated = read_folded(&dir.path().join("alloc.folded"));
    // Blocks of at least the sampling interval are always recorded, at their size.
    assert_eq!(bytes_in(&allocated, "big_temporary", "malloc"), 64 << 20);
    let churn = bytes_in(&allocated, "churn", "malloc") as f64;
    let exact = (100_000 * 64) as f64;
    assert!(
        (churn / exact - 1.0).abs() < 0.05,
        "sampled churn {churn} bytes against {exact}"
    );
    let summary = read_summary(dir.path());
    assert_eq!(summary["memory"]["sampled_every_bytes"], 65536);
    assert!(summary["memory"]["allocations"].as_u64().unwrap() < 1000);
    assert_nothing_loaded();
}

#[test]
fn attach_tracks_a_running_process() {
    let _serial = serial();
    if !have_root("attach_tracks_a_running_process") {
        return;
    }
    let target = profiler_tests::Spawned::new(
        std::process::Command::new(profiler_tests::program("malloc_free"))
            .arg("100000000000")
            .stdout(std::process::Stdio::null()),
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    let dir = tempfile::tempdir().unwrap();
    let out = profiler_tests::output(
        profiler_tests::profiler()
            .args(["attach", "--events", "alloc", "-d", "1", "-o"])
            .arg(dir.path())
            .arg(target.pid().to_string()),
    );
    assert!(out.status.success());
    let allocated = read_folded(&dir.path().join("alloc.folded"));
    let in_main = bytes_in(&allocated, "main", "malloc");
    assert!(
        in_main > 1000 * 64,
        "malloc(64) from main, many times: {allocated:?}"
    );
    assert_eq!(in_main % 64, 0);
    let in_use = read_folded(&dir.path().join("inuse.folded"));
    assert!(
        bytes_in(&in_use, "main", "malloc") <= 64,
        "each block is freed right away: {in_use:?}"
    );
    assert_nothing_loaded();
}

#[test]
fn record_probes_the_rare_allocators_its_command_imports() {
    let _serial = serial();
    if !have_root("record_probes_the_rare_allocators_its_command_imports") {
        return;
    }
    // memalign and valloc: imported by the command, never by the profiler, whose image the
    // held child maps until its exec.
    let (dir, out) = record(&["--events", "alloc"], "rare_alloc", &[]);
    assert!(out.status.success(), "{out:?}");
    let in_use = read_folded(&dir.path().join("inuse.folded"));
    assert_eq!(bytes_in(&in_use, "rare_allocators", "memalign"), 5000);
    assert_eq!(bytes_in(&in_use, "rare_allocators", "valloc"), 7000);
    assert_nothing_loaded();
}
