//! CPU profiling end to end: real eBPF programs, real processes of known behaviour.

use std::{path::Path, process::Output, time::Duration};

use profiler_tests::{
    Spawned, assert_nothing_loaded, have_root, loaded_profiler_programs, output, percent, profiler,
    program, read_folded, read_summary, record, serial, wait_for, weight_with_frame,
    weight_with_leaf,
};

/// Position of `name` in `frames`, panicking with the stack if absent.
fn position(frames: &[String], name: &str) -> usize {
    frames
        .iter()
        .position(|frame| frame == name)
        .unwrap_or_else(|| panic!("{name} not in stack {frames:?}"))
}

/// The share of its CPU time `cpu_split` measured in `hot_path`, from the line it prints on
/// exit (`cpu_split: hot_path 70.12%`): about 70%, moved by a busy host or an emulated VM.
fn measured_split(out: &Output) -> f64 {
    let share: f64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("cpu_split: hot_path "))
        .and_then(|share| share.strip_suffix('%')?.parse().ok())
        .unwrap_or_else(|| panic!("no measured split in the output of cpu_split: {out:?}"));
    assert!(
        (60.0..=80.0).contains(&share),
        "cpu_split measured {share:.1}% in hot_path, far from its 70%"
    );
    share
}

/// The split of `cpu_split` between `hot_path` and `cold_path` is `expected` (about 70%)
/// within 5 points, and the stacks through them run thread -> ... -> main -> run_work -> leaf.
fn assert_cpu_split(dir: &Path, expected: f64) {
    let stacks = read_folded(&dir.join("cpu.folded"));
    let hot = weight_with_leaf(&stacks, "hot_path");
    let cold = weight_with_leaf(&stacks, "cold_path");
    let share = percent(hot, hot + cold);
    assert!(
        (share - expected).abs() <= 5.0,
        "hot_path share {share:.1}% (hot {hot}, cold {cold}), {expected:.1}% measured by the program"
    );
    let mut complete = 0;
    for (frames, weight) in stacks.iter().filter(|(f, _)| {
        f.last()
            .is_some_and(|leaf| leaf == "hot_path" || leaf == "cold_path")
    }) {
        assert_eq!(frames[0], "cpu_split", "thread name first: {frames:?}");
        let main = position(frames, "main");
        if frames[main + 1..] == ["run_work", frames.last().unwrap()] {
            complete += weight;
        }
    }
    // Frame-pointer unwinding misses the caller of a function sampled on its first instruction,
    // before it pushed its frame: a fraction of a percent of samples.
    let complete_share = percent(complete, hot + cold);
    assert!(
        complete_share >= 98.0,
        "only {complete_share:.1}% of stacks are main -> run_work -> leaf: {stacks:?}"
    );
}

#[test]
fn record_splits_cpu_70_30_under_a_common_caller() {
    let _serial = serial();
    if !have_root("record_splits_cpu_70_30_under_a_common_caller") {
        return;
    }
    let (dir, out) = record(&["-F", "499"], "cpu_split", &["3", "5"]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "exit code of the command passes through"
    );
    assert_cpu_split(dir.path(), measured_split(&out));

    let stacks = read_folded(&dir.path().join("cpu.folded"));
    let total: u64 = stacks.iter().map(|(_, w)| w).sum();
    // 3 s at 499 Hz on one busy thread (1497); half of it at least where the thread gets
    // less of its CPU (1182 seen in an emulated VM on a busy host).
    assert!(
        (750..=1650).contains(&total),
        "{total} samples for 3 s at 499 Hz"
    );
    let summary = read_summary(dir.path());
    assert_eq!(summary["cpu"]["samples"], total);
    assert_eq!(summary["cpu"]["top_self"][0]["function"], "hot_path");
    let location = summary["cpu"]["top_self"][0]["location"].as_str().unwrap();
    assert!(
        location.contains("cpu_split.c:"),
        "source line of hot_path: {location}"
    );
    assert_eq!(summary["exit_code"], 5);
    assert_eq!(summary["cpu"]["lost_samples"], 0);
    // When, not how soon: start-up is measured by `cargo xtask bench-startup`, and the tests
    // also run in emulated VMs (`cargo xtask vm-test`), several times slower.
    assert!(summary["first_sample_ms"].as_f64().unwrap() > 0.0);
    for file in ["cpu.svg", "summary.md", "profile.json.gz"] {
        assert!(
            dir.path().join(file).metadata().unwrap().len() > 0,
            "{file} written"
        );
    }
    let svg = std::fs::read_to_string(dir.path().join("cpu.svg")).unwrap();
    assert!(svg.contains("hot_path") && svg.contains("run_work"));
    assert_nothing_loaded();
}

#[test]
fn frame_pointer_unwinding_splits_cpu_70_30_under_a_common_caller() {
    let _serial = serial();
    if !have_root("frame_pointer_unwinding_splits_cpu_70_30_under_a_common_caller") {
        return;
    }
    // The kernel's frame-pointer walker instead of the unwind tables. Six seconds: over three,
    // the split moved from run to run past the bound on a busy host (64.3-69.9% in four runs
    // of one build; 67.0-68.6% in five runs of six).
    let (dir, out) = record(&["-F", "499", "--unwind", "fp"], "cpu_split", &["6"]);
    assert!(out.status.success(), "{out:?}");
    assert_cpu_split(dir.path(), measured_split(&out));
    let summary = read_summary(dir.path());
    assert_eq!(summary["cpu"]["lost_samples"], 0);
    assert_nothing_loaded();
}

#[test]
fn attach_profiles_a_running_process_for_a_duration_and_leaves_it_running() {
    let _serial = serial();
    if !have_root("attach_profiles_a_running_process_for_a_duration_and_leaves_it_running") {
        return;
    }
    let mut target = Spawned::new(std::process::Command::new(program("cpu_split")).arg("30"));
    std::thread::sleep(Duration::from_millis(200));
    let dir = tempfile::tempdir().unwrap();
    let out = output(
        profiler()
            .args(["attach", "-d", "2", "-F", "499", "-o"])
            .arg(dir.path())
            .arg(target.pid().to_string()),
    );
    assert!(out.status.success());
    assert!(target.is_running(), "the target survives profiling");
    // The target is still running: the nominal split.
    assert_cpu_split(dir.path(), 70.0);
    let summary = read_summary(dir.path());
    let samples = summary["cpu"]["samples"].as_u64().unwrap();
    // 998 when the target has its CPU to itself; half of it at least where it does not (564
    // seen in an emulated VM on a busy host): not 99 Hz, and nothing counted twice.
    assert!(
        (500..=1100).contains(&samples),
        "{samples} samples for 2 s at 499 Hz"
    );
    assert_eq!(summary["stop_reason"], "duration elapsed");
    assert_nothing_loaded();
}

#[test]
fn attach_with_every_kind_samples_cpu_while_the_other_programs_are_verified() {
    let _serial = serial();
    if !have_root("attach_with_every_kind_samples_cpu_while_the_other_programs_are_verified") {
        return;
    }
    let log = tempfile::tempdir().unwrap();
    let mut target = Spawned::new(
        std::process::Command::new(program("demo"))
            .arg("30")
            .arg(log.path().join("demo.log")),
    );
    std::thread::sleep(Duration::from_millis(200));
    let dir = tempfile::tempdir().unwrap();
    let out = output(
        profiler()
            .args(["attach", "-d", "3", "-e", "cpu,offcpu,io,alloc", "-o"])
            .arg(dir.path())
            .arg(target.pid().to_string()),
    );
    assert!(out.status.success(), "{out:?}");
    assert!(target.is_running(), "the target survives profiling");
    let summary = read_summary(dir.path());
    // Sampled from before every program was verified and attached: the scheduler, system-call
    // and allocator programs take most of a start-up to verify.
    let first_sample = summary["first_sample_ms"].as_f64().expect("a first sample");
    let attached = summary["attach_ms"].as_f64().expect("an attach time");
    assert!(
        first_sample < attached,
        "first sample at {first_sample:.0} ms, every program attached at {attached:.0} ms"
    );
    // And every kind still sees the program.
    assert_eq!(summary["cpu"]["top_self"][0]["function"], "parse_row");
    for (file, frame) in [
        ("offcpu.folded", "flush_log"),
        ("io.folded", "flush_log"),
        ("alloc.folded", "cache_insert"),
    ] {
        let stacks = read_folded(&dir.path().join(file));
        assert!(
            weight_with_frame(&stacks, frame) > 0,
            "no {frame} in {file}: {stacks:?}"
        );
    }
    assert_nothing_loaded();
}

#[test]
fn threads_are_named_and_shared() {
    let _serial = serial();
    if !have_root("threads_are_named_and_shared") {
        return;
    }
    let (dir, out) = record(&["-F", "199"], "named_threads", &["2"]);
    assert!(out.status.success());
    let stacks = read_folded(&dir.path().join("cpu.folded"));
    for (thread, function) in [("spinner-a", "spin_a"), ("spinner-b", "spin_b")] {
        let in_function: u64 = stacks
            .iter()
            .filter(|(frames, _)| frames[0] == thread && frames.iter().any(|f| f == function))
            .map(|(_, w)| w)
            .sum();
        assert!(
            in_function > 200,
            "{thread} spent {in_function} samples in {function}"
        );
        let elsewhere: u64 = stacks
            .iter()
            .filter(|(frames, _)| frames[0] != thread && frames.iter().any(|f| f == function))
            .map(|(_, w)| w)
            .sum();
        assert_eq!(elsewhere, 0, "{function} only on {thread}");
    }
    let summary = read_summary(dir.path());
    let threads = summary["cpu"]["threads"].as_array().unwrap();
    for name in ["spinner-a", "spinner-b"] {
        let thread = threads
            .iter()
            .find(|t| t["name"] == name)
            .expect("thread listed");
        let share = thread["percent"].as_f64().unwrap();
        assert!(
            (40.0..=60.0).contains(&share),
            "{name} has {share}% of samples"
        );
        assert_ne!(
            thread["tid"], thread["pid"],
            "{name} is not the main thread"
        );
    }
    assert_nothing_loaded();
}

#[test]
fn record_follows_child_processes_unless_told_not_to() {
    let _serial = serial();
    if !have_root("record_follows_child_processes_unless_told_not_to") {
        return;
    }
    let (dir, out) = record(&["--verbose", "-F", "199"], "forker", &["1.5"]);
    assert!(out.status.success());
    // --verbose shows the eBPF programs' own log lines.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("following new process"), "{stderr}");
    let stacks = read_folded(&dir.path().join("cpu.folded"));
    let root_of = |function: &str| -> Vec<String> {
        let mut roots: Vec<String> = stacks
            .iter()
            .filter(|(frames, _)| frames.iter().any(|f| f == function))
            .map(|(frames, _)| frames[0].clone())
            .collect();
        roots.dedup();
        roots
    };
    let parent = root_of("parent_spin");
    let child = root_of("child_spin");
    assert_eq!(parent.len(), 1, "one parent process: {parent:?}");
    assert_eq!(child.len(), 1, "one child process: {child:?}");
    assert_ne!(parent, child);
    for root in parent.iter().chain(&child) {
        assert!(root.starts_with("forker ("), "process frame first: {root}");
    }
    // A share, not a count: the child shares the CPUs with the parent and with the collector,
    // which reads the new program as the child starts (it got half a CPU in one clean run).
    let total: u64 = stacks.iter().map(|(_, weight)| weight).sum();
    let child_weight = weight_with_frame(&stacks, "child_spin");
    assert!(
        child_weight >= 60 && child_weight * 4 >= total,
        "child_spin {child_weight} of {total} samples"
    );
    let summary = read_summary(dir.path());
    assert_eq!(summary["processes"].as_array().unwrap().len(), 2);

    let (dir, out) = record(&["--no-children", "-F", "199"], "forker", &["1"]);
    assert!(out.status.success());
    let stacks = read_folded(&dir.path().join("cpu.folded"));
    assert_eq!(weight_with_frame(&stacks, "child_spin"), 0);
    // A share, not a count: the two spinners and the collector share 2 CPUs of a shared VM,
    // and the parent got half a CPU in one CI run.
    let total: u64 = stacks.iter().map(|(_, weight)| weight).sum();
    let parent = weight_with_frame(&stacks, "parent_spin");
    assert!(
        parent >= 40 && parent * 10 >= total * 9,
        "parent_spin {parent} of {total} samples"
    );
    let other_roots: Vec<_> = stacks
        .iter()
        .filter(|(frames, _)| frames[0] != "forker")
        .collect();
    assert!(other_roots.is_empty(), "no process frames: {other_roots:?}");
    assert_nothing_loaded();
}

#[test]
fn attach_with_children_includes_existing_descendants() {
    let _serial = serial();
    if !have_root("attach_with_children_includes_existing_descendants") {
        return;
    }
    let target = Spawned::new(std::process::Command::new(program("forker")).arg("20"));
    std::thread::sleep(Duration::from_millis(300));
    let dir = tempfile::tempdir().unwrap();
    let out = output(
        profiler()
            .args(["attach", "--children", "-d", "1", "-F", "199", "-o"])
            .arg(dir.path())
            .arg(target.pid().to_string()),
    );
    assert!(out.status.success());
    let stacks = read_folded(&dir.path().join("cpu.folded"));
    assert!(weight_with_frame(&stacks, "child_spin") > 100);
    assert!(weight_with_frame(&stacks, "parent_spin") > 100);
    drop(target);
    assert_nothing_loaded();
}

#[test]
fn sigint_and_sigterm_stop_the_run_and_results_are_written() {
    let _serial = serial();
    if !have_root("sigint_and_sigterm_stop_the_run_and_results_are_written") {
        return;
    }
    let mut target = Spawned::new(std::process::Command::new(program("cpu_split")).arg("30"));
    for (signal, reason) in [
        (libc::SIGTERM, "terminated (SIGTERM)"),
        (libc::SIGINT, "interrupted (SIGINT)"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut run = Spawned::new(
            profiler()
                .args(["attach", "-F", "199", "-o"])
                .arg(dir.path())
                .arg(target.pid().to_string()),
        );
        // Attached: the sampling and process programs are in (the loader hook may be too).
        assert!(
            wait_for(Duration::from_secs(10), || {
                let loaded = loaded_profiler_programs();
                ["cpu_sample", "sched_process_f", "sched_process_e"]
                    .iter()
                    .all(|name| loaded.contains_key(*name))
            }),
            "programs loaded while profiling: {:?}",
            loaded_profiler_programs()
        );
        std::thread::sleep(Duration::from_millis(1000));
        run.signal(signal);
        let status = run.0.wait().unwrap();
        assert!(status.success(), "{reason}: {status}");
        let summary = read_summary(dir.path());
        assert_eq!(summary["stop_reason"], reason);
        assert!(summary["cpu"]["samples"].as_u64().unwrap() > 100);
        assert_nothing_loaded();
    }
    assert!(target.is_running());
}

#[test]
fn sigkill_of_the_profiler_leaves_nothing_loaded() {
    let _serial = serial();
    if !have_root("sigkill_of_the_profiler_leaves_nothing_loaded") {
        return;
    }
    let target = Spawned::new(std::process::Command::new(program("cpu_split")).arg("30"));
    let dir = tempfile::tempdir().unwrap();
    let run = Spawned::new(
        profiler()
            .args(["attach", "-o"])
            .arg(dir.path())
            .arg(target.pid().to_string()),
    );
    assert!(wait_for(Duration::from_secs(5), || {
        loaded_profiler_programs().contains_key("cpu_sample")
    }));
    run.signal(libc::SIGKILL);
    drop(run);
    assert_nothing_loaded();
}

#[test]
fn report_regenerates_every_rendered_file() {
    let _serial = serial();
    if !have_root("report_regenerates_every_rendered_file") {
        return;
    }
    let (dir, out) = record(&["-F", "199"], "cpu_split", &["1"]);
    assert!(out.status.success());
    let rendered = ["cpu.folded", "cpu.svg", "summary.md", "summary.json"];
    let before: Vec<String> = rendered
        .iter()
        .map(|f| std::fs::read_to_string(dir.path().join(f)).unwrap())
        .collect();
    for file in rendered {
        std::fs::remove_file(dir.path().join(file)).unwrap();
    }
    let out = output(profiler().arg("report").arg(dir.path()));
    assert!(out.status.success());
    for (file, before) in rendered.iter().zip(before) {
        let after = std::fs::read_to_string(dir.path().join(file)).unwrap();
        assert_eq!(after, before, "{file} regenerated identically");
    }
}

#[test]
fn cpp_names_are_demangled_and_inlined_calls_shown() {
    let _serial = serial();
    if !have_root("cpp_names_are_demangled_and_inlined_calls_shown") {
        return;
    }
    let (dir, out) = record(&["-F", "199"], "cpp_inline", &["1.5"]);
    assert!(out.status.success());
    let stacks = read_folded(&dir.path().join("cpu.folded"));
    let total: u64 = stacks.iter().map(|(_, w)| w).sum();
    let through = |pattern: &dyn Fn(&[String]) -> bool| -> u64 {
        stacks
            .iter()
            .filter(|(f, _)| pattern(f))
            .map(|(_, w)| w)
            .sum()
    };
    let crunch_then_mix = through(&|frames| {
        frames.windows(2).any(|pair| {
            pair[0].starts_with("demo::Worker::crunch(")
                // DWARF names the inlined function without its namespace or parameters.
                && (pair[1] == "mix_[i]" || pair[1].starts_with("demo::mix("))
                && pair[1].ends_with("_[i]")
        })
    });
    assert!(
        percent(crunch_then_mix, total) > 90.0,
        "{crunch_then_mix} of {total} samples in crunch -> inlined mix: {stacks:?}"
    );
    assert!(
        stacks
            .iter()
            .flat_map(|(f, _)| f)
            .all(|frame| !frame.starts_with("_Z")),
        "no mangled names"
    );
}

#[test]
fn a_stripped_program_keeps_a_frame_per_function_and_its_build_id() {
    if !have_root("stripped") || !profiler_tests::have_js_tools("stripped") {
        return;
    }
    let _serial = serial();
    let folder = tempfile::tempdir().unwrap();
    let stripped = folder.path().join("cpu_split");
    let out = output(
        std::process::Command::new("strip")
            .arg("-o")
            .arg(&stripped)
            .arg(program("cpu_split")),
    );
    assert!(out.status.success(), "strip failed");
    let dir = tempfile::tempdir().unwrap();
    let out = output(
        profiler()
            .args(["record", "-F", "999", "-o"])
            .arg(dir.path())
            .arg("--")
            .arg(&stripped)
            .arg("3"),
    );
    assert!(out.status.success());
    // The two hot functions: two frames `cpu_split+0x…`, 70/30, each at its function's entry.
    let stacks = read_folded(&dir.path().join("cpu.folded"));
    let mut leaves: std::collections::BTreeMap<&str, u64> = Default::default();
    for (frames, weight) in &stacks {
        if let Some(leaf) = frames
            .last()
            .filter(|leaf| leaf.starts_with("cpu_split+0x"))
        {
            *leaves.entry(leaf).or_default() += weight;
        }
    }
    let mut heaviest: Vec<(&str, u64)> = leaves.into_iter().collect();
    heaviest.sort_by_key(|&(_, weight)| std::cmp::Reverse(weight));
    let total: u64 = stacks.iter().map(|(_, weight)| weight).sum();
    let [(_, hot), (_, cold), ..] = heaviest[..] else {
        panic!("fewer than two stripped functions: {heaviest:?}");
    };
    assert!(percent(hot + cold, total) > 95.0, "{heaviest:?} of {total}");
    // The tolerance of the symbolized split (`assert_cpu_split`), around the split the program
    // measured.
    let share = percent(hot, hot + cold);
    let expected = measured_split(&out);
    assert!(
        (share - expected).abs() <= 5.0,
        "{heaviest:?}: {share:.1}%, {expected:.1}% measured by the program"
    );
    // Whole stacks (the root is the program's entry point), counted as unsymbolized, not cut;
    // the same share of unsymbolized frames wherever it is stated.
    let summary = read_summary(dir.path());
    let quality = &summary["quality"];
    assert!(
        quality["complete_stacks_percent"].as_f64() >= Some(95.0),
        "{quality}"
    );
    assert_eq!(
        quality["unsymbolized_frames_percent"],
        summary["cpu"]["unsymbolized_frames_percent"]
    );
    assert!(quality["unsymbolized_frames_percent"].as_f64() > Some(30.0));
    // The pprof export names the program (its full path) and its build-id, with its code as
    // addresses to symbolize.
    let build_id = profiler_tests::build_id(&stripped);
    let pprof = profiler_tests::node_json("read-pprof.mjs", &[&dir.path().join("profile.pb.gz")]);
    let mapping = pprof["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|mapping| {
            mapping["has_functions"] == false && mapping["file"].as_str() == stripped.to_str()
        })
        .unwrap_or_else(|| panic!("no unsymbolized mapping of cpu_split: {pprof}"));
    assert_eq!(mapping["build_id"], build_id);
    assert!(
        mapping["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .all(|address| address.as_u64() > Some(0)),
        "{mapping}"
    );
    assert_nothing_loaded();
}
