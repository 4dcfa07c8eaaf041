//! Complete user stacks with and without frame pointers: the in-kernel `.eh_frame` unwinder
//! against programs whose stacks frame-pointer walking gets wrong.

use std::process::Stdio;

use profiler_tests::{
    Spawned, have_root, output, percent, profiler, program, read_folded, read_summary, record,
    serial, weight_with_frame,
};

/// The frames a complete stack starts with, after the thread name: the program's entry or a
/// thread's start, as glibc names them.
const ENTRY_FUNCTIONS: [&str; 4] = ["_start", "clone3", "__clone3", "clone"];

/// Share of the weight of stacks ending in `leaf` that start at an entry function and end with
/// exactly `path` (outermost first, `path` ending in `leaf`).
fn complete_share(stacks: &[(Vec<String>, u64)], path: &[&str]) -> (f64, Vec<String>) {
    let leaf = *path.last().expect("a path");
    let mut total = 0;
    let mut complete = 0;
    let mut example = Vec::new();
    for (frames, weight) in stacks {
        // Inlined callees (`_[i]`) and an interrupt's kernel frames (`_[k]`) below the leaf.
        let own = frames
            .iter()
            .rposition(|frame| !frame.ends_with("_[i]") && !frame.ends_with("_[k]"))
            .map_or(&frames[..0], |last| &frames[..=last]);
        if own.last().map(String::as_str) != Some(leaf) {
            continue;
        }
        total += weight;
        // frames[0] is the thread name.
        let starts_at_entry = frames
            .get(1)
            .is_some_and(|root| ENTRY_FUNCTIONS.contains(&root.as_str()));
        if starts_at_entry
            && own
                .iter()
                .map(String::as_str)
                .rev()
                .zip(path.iter().rev())
                .all(|(a, b)| a == *b)
            && own.len() > path.len()
        {
            complete += weight;
        } else if example.is_empty() {
            example.clone_from(frames);
        }
    }
    (percent(complete, total), example)
}

/// Records `program` (built with and without frame pointers) and checks that at least
/// `min_share` percent of the stacks through `leaf` are complete and equal to `path`.
fn assert_complete_stacks(program: &str, args: &[&str], path: &[&str]) {
    for variant in ["fp", "nofp"] {
        let name = format!("{program}_{variant}");
        let (dir, out) = record(&["-F", "499"], &name, args);
        assert!(out.status.success(), "{name}: {out:?}");
        let stacks = read_folded(&dir.path().join("cpu.folded"));
        let (share, example) = complete_share(&stacks, path);
        assert!(
            share >= 95.0,
            "{name}: only {share:.1}% of stacks are entry .. {path:?}; e.g. {example:?}"
        );
        let summary = read_summary(dir.path());
        let quality = summary["quality"]["complete_stacks_percent"]
            .as_f64()
            .expect("quality.complete_stacks_percent");
        assert!(quality >= 95.0, "{name}: summary says {quality}% complete");
    }
}

#[test]
fn leaf_function_keeps_its_caller() {
    let _serial = serial();
    if !have_root("leaf_function_keeps_its_caller") {
        return;
    }
    assert_complete_stacks(
        "unwind_stacks",
        &["leaf", "2"],
        &["main", "run_mode", "outer_call", "middle_call", "leaf_spin"],
    );
}

#[test]
fn thread_stacks_start_at_the_thread_start() {
    let _serial = serial();
    if !have_root("thread_stacks_start_at_the_thread_start") {
        return;
    }
    assert_complete_stacks(
        "unwind_stacks",
        &["thread", "2"],
        &["start_thread", "thread_body", "middle_call", "leaf_spin"],
    );
}

#[test]
fn deep_recursion_is_walked_to_the_entry() {
    let _serial = serial();
    if !have_root("deep_recursion_is_walked_to_the_entry") {
        return;
    }
    let mut path = vec!["main", "run_mode"];
    path.extend(std::iter::repeat_n("recurse", 300));
    path.extend(["middle_call", "leaf_spin"]);
    assert_complete_stacks("unwind_stacks", &["deep", "2"], &path);

    // The kernel's frame-pointer walker stops at 127 frames: none complete.
    let (dir, out) = record(
        &["-F", "499", "--unwind", "fp"],
        "unwind_stacks_fp",
        &["deep", "1"],
    );
    assert!(out.status.success(), "{out:?}");
    let stacks = read_folded(&dir.path().join("cpu.folded"));
    let (share, _) = complete_share(&stacks, &path);
    assert!(
        share < 1.0,
        "frame pointers walked {share:.1}% of 300-deep stacks"
    );
    let summary = read_summary(dir.path());
    assert!(
        summary["quality"]["complete_stacks_percent"]
            .as_f64()
            .unwrap()
            < 5.0
    );
}

#[test]
fn callback_through_libc_qsort_keeps_both_sides() {
    let _serial = serial();
    if !have_root("callback_through_libc_qsort_keeps_both_sides") {
        return;
    }
    for variant in ["fp", "nofp"] {
        let name = format!("unwind_stacks_{variant}");
        let (dir, out) = record(&["-F", "499"], &name, &["qsort", "2"]);
        assert!(out.status.success(), "{name}: {out:?}");
        let stacks = read_folded(&dir.path().join("cpu.folded"));
        let mut total = 0;
        let mut complete = 0;
        for (frames, weight) in &stacks {
            if frames.last().map(String::as_str) != Some("compare_slowly") {
                continue;
            }
            total += weight;
            // entry .. main -> run_mode -> sort_rounds -> qsort (libc, no frame pointers) ..
            // compare_slowly
            let main = frames.iter().position(|f| f == "main");
            let sort = frames.iter().position(|f| f == "sort_rounds");
            let libc = frames
                .iter()
                .position(|f| f.starts_with("qsort") || f.starts_with("msort"));
            if ENTRY_FUNCTIONS.contains(&frames[1].as_str())
                && matches!((main, sort, libc), (Some(m), Some(s), Some(l)) if m + 2 == s && s < l)
            {
                complete += weight;
            }
        }
        let share = percent(complete, total);
        assert!(share >= 95.0, "{name}: {share:.1}% complete: {stacks:?}");
    }
}

#[test]
fn rust_release_binary_stacks_are_complete() {
    let _serial = serial();
    if !have_root("rust_release_binary_stacks_are_complete") {
        return;
    }
    assert_complete_stacks(
        "unwind_rust",
        &["2"],
        &[
            "unwind_rust::outer_call",
            "unwind_rust::middle_call",
            "unwind_rust::leaf_spin",
        ],
    );
}

#[test]
fn a_library_opened_during_the_run_gets_its_tables() {
    let _serial = serial();
    if !have_root("a_library_opened_during_the_run_gets_its_tables") {
        return;
    }
    let (dir, out) = record(&["-F", "499"], "unwind_stacks_nofp", &["dlopen", "2"]);
    assert!(out.status.success(), "{out:?}");
    let stacks = read_folded(&dir.path().join("cpu.folded"));
    // Samples inside libm (opened by dlopen after the attach): its leaf function has no frame
    // pointer, so only its table gives `call_library` as the caller.
    let mut in_libm = 0;
    let mut complete = 0;
    for (frames, weight) in &stacks {
        let Some(call) = frames.iter().position(|f| f == "call_library") else {
            continue;
        };
        if call + 1 == frames.len() {
            continue;
        }
        in_libm += weight;
        if ENTRY_FUNCTIONS.contains(&frames[1].as_str())
            && frames[call - 2..call] == ["main", "run_mode"]
        {
            complete += weight;
        }
    }
    assert!(in_libm > 100, "{in_libm} samples in libm: {stacks:?}");
    let share = percent(complete, in_libm);
    assert!(
        share >= 90.0,
        "{share:.1}% of libm samples complete: {stacks:?}"
    );
}

#[test]
fn samples_inside_probed_allocator_functions_keep_their_callers() {
    let _serial = serial();
    if !have_root("samples_inside_probed_allocator_functions_keep_their_callers") {
        return;
    }
    // Tracking allocations puts a return probe on `malloc` (while it runs, the kernel has
    // swapped its return address for a trampoline) and a probe on `free`'s first `push` (a
    // breakpoint the kernel emulates): CPU samples taken inside either must still reach
    // `main` and the entry, not stop at the trampoline or a half-emulated frame.
    let (dir, out) = record(
        &["-e", "cpu,alloc", "-F", "499"],
        "malloc_free",
        &["3000000"],
    );
    assert!(out.status.success(), "{out:?}");
    let stacks = read_folded(&dir.path().join("cpu.folded"));
    for function in ["__GI___libc_malloc", "__GI___libc_free"] {
        let through: Vec<&(Vec<String>, u64)> = stacks
            .iter()
            .filter(|(frames, _)| frames[1..].iter().any(|frame| frame == function))
            .collect();
        let total: u64 = through.iter().map(|(_, weight)| weight).sum();
        let complete: u64 = through
            .iter()
            .filter(|(frames, _)| {
                ENTRY_FUNCTIONS.contains(&frames[1].as_str())
                    && frames.iter().any(|frame| frame == "main")
            })
            .map(|(_, weight)| weight)
            .sum();
        assert!(total > 200, "{function}: only {total} samples");
        let share = percent(complete, total);
        let example = through
            .iter()
            .find(|(frames, _)| !ENTRY_FUNCTIONS.contains(&frames[1].as_str()));
        assert!(
            share >= 93.0,
            "{function}: {share:.1}% of its samples reach main; e.g. {example:?}"
        );
    }
    let summary = read_summary(dir.path());
    let by_kind = &summary["quality"]["complete_stacks_percent_by_kind"];
    assert!(by_kind["cpu"].as_f64().unwrap() >= 90.0, "{by_kind}");
}

#[test]
fn forked_children_are_walked_whole_from_their_first_sample() {
    let _serial = serial();
    if !have_root("forked_children_are_walked_whole_from_their_first_sample") {
        return;
    }
    // A hundred children of 4 ms each, no frame pointers: a child's first samples come before
    // the profiler reads its memory map, and are walked with the mappings it had at fork.
    let (dir, out) = record(&["-F", "999"], "unwind_forks_nofp", &["100"]);
    assert!(out.status.success(), "{out:?}");
    let stacks = read_folded(&dir.path().join("cpu.folded"));
    let in_children: Vec<&(Vec<String>, u64)> = stacks
        .iter()
        .filter(|(frames, _)| frames.iter().any(|f| f == "child_work"))
        .collect();
    let total: u64 = in_children.iter().map(|(_, weight)| weight).sum();
    let whole: u64 = in_children
        .iter()
        .filter(|(frames, _)| frames.iter().any(|f| f == "main"))
        .map(|(_, weight)| weight)
        .sum();
    assert!(total >= 100, "only {total} samples in the children");
    let share = percent(whole, total);
    assert!(
        share >= 90.0,
        "{share:.1}% of the children's samples reach main"
    );
}

#[test]
fn a_wait_begun_right_after_exec_keeps_main() {
    let _serial = serial();
    if !have_root("a_wait_begun_right_after_exec_keeps_main") {
        return;
    }
    // main blocks in pthread_join within a millisecond of the exec, for 2 s: the stack taken
    // as it blocks comes before the profiler has read the new program's memory map, and is
    // kept for the whole wait. No frame pointers: libc's and the program's tables are needed.
    let (dir, out) = record(&["-e", "offcpu"], "unwind_join_at_start_nofp", &["2"]);
    assert!(out.status.success(), "{out:?}");
    let stacks = read_folded(&dir.path().join("offcpu.folded"));
    let joining: Vec<&(Vec<String>, u64)> = stacks
        .iter()
        .filter(|(frames, _)| frames.iter().any(|f| f.contains("pthread_clockjoin")))
        .collect();
    let total: u64 = joining.iter().map(|(_, weight)| weight).sum();
    let whole: u64 = joining
        .iter()
        .filter(|(frames, _)| {
            frames.get(1).is_some_and(|f| f == "_start")
                && frames.iter().any(|f| f == "wait_for_sleeper")
        })
        .map(|(_, weight)| weight)
        .sum();
    // Weights are µs.
    assert!(total >= 1_500_000, "only {total} µs in pthread_join");
    let share = percent(whole, total);
    assert!(
        share >= 99.0,
        "{share:.1}% of the join wait reaches _start .. main .. wait_for_sleeper: {joining:?}"
    );
}

#[test]
fn short_processes_are_walked_whole_from_their_first_sample() {
    let _serial = serial();
    if !have_root("short_processes_are_walked_whole_from_their_first_sample") {
        return;
    }
    // 200 processes of 3 ms each, one after another, each a new exec of a program without
    // frame pointers (what `record -- make` looks like): most are gone before the profiler
    // could read their memory maps.
    let script = format!(
        "for i in $(seq 200); do {} 3; done",
        program("unwind_short_nofp").display()
    );
    let dir = tempfile::tempdir().expect("temporary folder");
    let out = output(
        profiler()
            .args(["record", "-F", "999", "-e", "cpu", "-o"])
            .arg(dir.path())
            .args(["--", "sh", "-c", &script]),
    );
    assert!(out.status.success(), "{out:?}");
    let stacks = read_folded(&dir.path().join("cpu.folded"));
    // Folded lines of the children: "unwind_short_no (PID);unwind_short_no;...".
    type Stacks<'a> = Vec<&'a (Vec<String>, u64)>;
    let (kernel_only, children): (Stacks, Stacks) = stacks
        .iter()
        .filter(|(frames, _)| {
            frames[0].starts_with("unwind_short_no ")
                && frames.get(1).is_some_and(|f| f == "unwind_short_no")
        })
        .partition(|(frames, _)| frames.get(2).is_some_and(|f| f.ends_with("_[k]")));
    // Samples with no user frames are those taken while a child exits (its memory released)
    // or execs (its registers still the shell's): no user stack exists to walk then, and none
    // is made up from the stale registers. A sample that lands in the profiler's own exec
    // program is in exec too; the kernel's unwinder stops at a JIT-compiled frame.
    let in_exec_or_exit = |frames: &[String]| {
        frames.iter().any(|f| {
            f == "do_exit_[k]"
                || f == "__x64_sys_execve_[k]"
                || (f.starts_with("bpf_prog_") && f.ends_with("_sched_process_exec_[k]"))
        })
    };
    let stray: Vec<&(Vec<String>, u64)> = kernel_only
        .iter()
        .copied()
        .filter(|(frames, _)| !in_exec_or_exit(frames))
        .collect();
    assert!(
        stray.len() * 20 <= kernel_only.len().max(1),
        "{} of {} kernel-only stacks are outside exec and exit, e.g. {:?}",
        stray.len(),
        kernel_only.len(),
        stray.first()
    );
    let weight = |keep: &dyn Fn(&[String]) -> bool| -> u64 {
        children
            .iter()
            .filter(|(frames, _)| keep(frames))
            .map(|(_, weight)| weight)
            .sum()
    };
    let all = weight(&|_| true);
    let from_entry = weight(&|frames| frames.get(2).is_some_and(|f| f == "_start"));
    let working = weight(&|frames| frames.iter().any(|f| f == "short_work"));
    let working_whole = weight(&|frames| {
        frames.get(2).is_some_and(|f| f == "_start")
            && frames.windows(2).any(|pair| pair == ["main", "short_work"])
    });
    assert!(working >= 200, "only {working} samples in short_work");
    let kernel_weight: u64 = kernel_only.iter().map(|(_, weight)| weight).sum();
    assert!(
        percent(kernel_weight, all + kernel_weight) <= 15.0,
        "{kernel_weight} of {} of the children's samples have no user frames",
        all + kernel_weight
    );
    // Samples in the dynamic loader, before main, are whole too: from its `_start`.
    let mut cut: Vec<&&(Vec<String>, u64)> = children
        .iter()
        .filter(|(frames, _)| frames.get(2).is_none_or(|f| f != "_start"))
        .collect();
    cut.sort_by_key(|(_, weight)| std::cmp::Reverse(*weight));
    assert!(
        percent(from_entry, all) >= 90.0,
        "{from_entry} of {all} of the children's samples start at _start; others: {:?}",
        &cut[..cut.len().min(5)]
    );
    assert!(
        percent(working_whole, working) >= 90.0,
        "{working_whole} of {working} samples in short_work reach _start .. main"
    );
}

/// Two threads on pseudo-random call paths at 4999 Hz for 8 s: about 70 000 samples, nearly all
/// of distinct stacks, four times what the kernel keeps undrained at once. Checks that at most
/// 1% of the samples lost their stacks, that at least `min_reaching` percent reach the thread
/// function, and that the quality line counts exactly the samples the folded file shows as
/// lost.
fn assert_many_distinct_stacks_kept(unwind: &str, program: &str, min_reaching: f64) {
    let (dir, out) = record(
        &["-F", "4999", "-e", "cpu", "--unwind", unwind],
        program,
        &["8"],
    );
    assert!(out.status.success(), "{out:?}");
    assert_many_distinct_stacks_in(dir.path(), min_reaching);
}

/// The profile in `dir` of 8 s of `unwind_random_paths` at 4999 Hz: tens of thousands of
/// distinct stacks, `min_reaching` percent of the samples reaching the thread function, and
/// every lost stack counted.
fn assert_many_distinct_stacks_in(dir: &std::path::Path, min_reaching: f64) {
    let stacks = read_folded(&dir.join("cpu.folded"));
    let total: u64 = stacks.iter().map(|(_, weight)| weight).sum();
    let distinct = stacks.len();
    let reaching = weight_with_frame(&stacks, "walker");
    let lost: u64 = stacks
        .iter()
        .filter(|(frames, _)| frames.iter().any(|f| f.contains("stack lost")))
        .map(|(_, weight)| weight)
        .sum();
    assert!(distinct >= 40_000, "only {distinct} distinct stacks");
    let share = percent(reaching, total);
    assert!(
        share >= min_reaching && percent(lost, total) <= 1.0,
        "{share:.2}% of {total} samples reach the thread function ({lost} lost)"
    );
    let quality = &read_summary(dir)["quality"];
    assert_eq!(quality["stacks_lost"].as_u64(), Some(lost), "{quality}");
    if lost > 0 {
        let text = quality["text"].as_str().unwrap();
        assert!(text.contains(&format!("{lost} stacks lost")), "{text}");
    }
}

#[test]
fn many_distinct_stacks_are_all_kept() {
    let _serial = serial();
    if !have_root("many_distinct_stacks_are_all_kept") {
        return;
    }
    // The unwinder's stacks are drained every second; before, 75% of these were lost.
    assert_many_distinct_stacks_kept("dwarf", "unwind_random_paths_nofp", 99.0);
}

#[test]
fn many_distinct_frame_pointer_stacks_are_all_kept() {
    let _serial = serial();
    if !have_root("many_distinct_frame_pointer_stacks_are_all_kept") {
        return;
    }
    // The kernel's frame-pointer walker, stored and drained like the unwinder's stacks; in the
    // kernel's stack-trace map (16 Ki buckets) most of them were lost. Frame pointers miss the
    // caller of a function sampled before it pushed its frame: the thread function itself,
    // under its many one-call paths (98.9% reach it).
    assert_many_distinct_stacks_kept("fp", "unwind_random_paths_fp", 97.0);
}

#[test]
fn stacks_and_counts_past_memory_wait_on_disk_and_all_come_back() {
    let _serial = serial();
    if !have_root("stacks_and_counts_past_memory_wait_on_disk_and_all_come_back") {
        return;
    }
    // A sixteenth of 16 MiB stays in memory: the run's 70 000 stacks and their counts go to
    // the spool many times over, and must all be in the profile.
    let dir = tempfile::tempdir().unwrap();
    let mut run = Spawned::new(
        profiler()
            .args([
                "record",
                "-F",
                "4999",
                "-e",
                "cpu",
                "--max-memory",
                "16MiB",
                "-o",
            ])
            .arg(dir.path())
            .arg("--")
            .arg(program("unwind_random_paths_nofp"))
            .arg("8")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    // The spool is an unnamed file the profiler holds open: its descriptor says where.
    let fds = format!("/proc/{}/fd", run.pid());
    let mut spooled = false;
    while run.is_running() {
        spooled |= std::fs::read_dir(&fds)
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|target| target.starts_with("/var/tmp"))
            });
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(run.0.wait().unwrap().success());
    assert!(spooled, "no spool file in /var/tmp was seen open");
    assert_many_distinct_stacks_in(dir.path(), 99.0);
    let summary = read_summary(dir.path());
    assert_eq!(
        summary["losses"]["memory_cap_dropped"], 0,
        "{}",
        summary["losses"]
    );
}

#[test]
fn objects_left_without_tables_are_named_with_the_reason() {
    let _serial = serial();
    if !have_root("objects_left_without_tables_are_named_with_the_reason") {
        return;
    }
    // Room for the program's own few rows, not for libc's thousands.
    let (dir, out) = record(
        &["--unwind-rows", "256"],
        "unwind_stacks_nofp",
        &["leaf", "1"],
    );
    assert!(out.status.success(), "{out:?}");
    let summary = read_summary(dir.path());
    let unwind = &summary["unwind"];
    let named = unwind["without_tables"].as_array().expect("objects named");
    let libc = named
        .iter()
        .find(|object| object["path"].as_str().unwrap().ends_with("/libc.so.6"))
        .unwrap_or_else(|| panic!("libc named: {unwind}"));
    assert_eq!(libc["reason"], "tables_full", "{libc}");
    assert!(libc["rows"].as_u64().unwrap() > 256, "{libc}");
    assert!(
        unwind["objects_without_tables"].as_u64().unwrap() >= named.len() as u64,
        "{unwind}"
    );
    let quality = summary["quality"]["text"].as_str().unwrap();
    assert!(
        quality.contains("for lack of unwind-table room (") && quality.contains("libc.so.6"),
        "{quality}"
    );
    let markdown = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
    assert!(
        markdown.contains("libc.so.6`: unwind tables full ("),
        "{markdown}"
    );
}

#[test]
fn a_library_of_three_million_rows_is_walked_whole_at_default_settings() {
    let _serial = serial();
    if !have_root("a_library_of_three_million_rows_is_walked_whole_at_default_settings") {
        return;
    }
    let (dir, out) = record(&[], "big_unwind", &["3"]);
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("WARN") && !stderr.contains("warning"),
        "no warning at default settings: {stderr}"
    );
    let summary = read_summary(dir.path());
    let unwind = &summary["unwind"];
    assert!(
        unwind["rows"].as_u64().unwrap() >= 3_000_000,
        "the library's rows loaded: {unwind}"
    );
    assert_eq!(
        unwind["without_tables"],
        serde_json::Value::Null,
        "{unwind}"
    );
    let stacks = read_folded(&dir.path().join("cpu.folded"));
    // The first function's rows are in the library's first piece, the last one's in its
    // last piece, another chunk.
    for leaf in ["big_spin_first", "big_spin_last"] {
        let (share, example) = complete_share(&stacks, &["main", leaf]);
        assert!(
            share >= 95.0,
            "only {share:.1}% of stacks are entry .. main, {leaf}; e.g. {example:?}"
        );
    }
    let quality = summary["quality"]["complete_stacks_percent"]
        .as_f64()
        .unwrap();
    assert!(quality >= 95.0, "summary says {quality}% complete");
}

#[test]
fn compiled_tables_come_from_the_cache_and_a_damaged_one_is_compiled_again() {
    let _serial = serial();
    if !have_root("compiled_tables_come_from_the_cache_and_a_damaged_one_is_compiled_again") {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let folder = cache.path().join("unwind");
    let folder_arg = folder.to_str().unwrap();
    // Three runs: the first compiles and keeps its tables, the second loads them, the third
    // finds the library's file damaged and compiles it again. A run keeps a table only when
    // its writer is not behind, so each run is checked against the files there before it.
    let tables_kept = || {
        std::fs::read_dir(&folder)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "rows"))
            .collect::<Vec<_>>()
    };
    let mut from_cache = Vec::new();
    let mut kept_before = Vec::new();
    for run in 0..3 {
        let kept = if run == 0 { Vec::new() } else { tables_kept() };
        if run == 2 {
            let largest = kept
                .iter()
                .max_by_key(|path| std::fs::metadata(path).unwrap().len())
                .expect("tables kept");
            let mut bytes = std::fs::read(largest).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x40;
            std::fs::write(largest, &bytes).unwrap();
        }
        kept_before.push(kept.len() as u64);
        let (dir, out) = record(&["--unwind-cache", folder_arg], "big_unwind", &["1"]);
        assert!(out.status.success(), "{out:?}");
        let summary = read_summary(dir.path());
        let unwind = &summary["unwind"];
        from_cache.push(unwind["from_cache"].as_u64().unwrap());
        assert!(
            unwind["rows"].as_u64().unwrap() >= 3_000_000,
            "run {run}: the library's rows loaded: {unwind}"
        );
        let stacks = read_folded(&dir.path().join("cpu.folded"));
        let (share, example) = complete_share(&stacks, &["main", "big_spin_first"]);
        assert!(
            share >= 95.0,
            "run {run}: only {share:.1}% of stacks are entry .. main, big_spin_first; \
             e.g. {example:?}"
        );
    }
    let runs = format!("loaded {from_cache:?}, files before {kept_before:?}");
    assert_eq!(from_cache[0], 0, "nothing cached yet: {runs}");
    // The library, the C library and its neighbours (tables of 1024 rows or more): four or
    // more objects, kept by the first two runs.
    assert!(kept_before[2] >= 4, "tables kept: {runs}");
    assert_eq!(
        from_cache[1], kept_before[1],
        "every kept table used: {runs}"
    );
    assert_eq!(
        from_cache[2],
        kept_before[2] - 1,
        "all but the damaged one: {runs}"
    );
    // The folder is private, and the damaged file was written again, whole.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&folder).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    let kept = tables_kept().len() as u64;
    assert!(
        kept >= kept_before[2],
        "the damaged table kept again: {runs}"
    );
    let (dir, _) = record(&["--unwind-cache", folder_arg], "big_unwind", &["1"]);
    let again = read_summary(dir.path())["unwind"]["from_cache"].as_u64();
    assert_eq!(
        again,
        Some(kept),
        "every table from the cache again: {runs}"
    );
}
