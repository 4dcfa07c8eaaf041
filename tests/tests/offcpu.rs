//! Off-CPU time and run-queue delay end to end, on programs with known waiting behaviour.

use profiler_tests::{
    assert_nothing_loaded, assert_pingpong_pipes_counted, have_root, output, percent, profiler,
    program, read_folded, read_summary, record, serial,
};

/// Off-CPU weight of stacks whose innermost user frame is `function`.
fn blocked_in(stacks: &[(Vec<String>, u64)], thread: &str, function: &str) -> u64 {
    stacks
        .iter()
        .filter(|(frames, _)| {
            frames[0] == thread
                && frames
                    .iter()
                    .rev()
                    .find(|f| !f.ends_with("_[k]"))
                    .is_some_and(|f| f == function)
        })
        .map(|(_, weight)| weight)
        .sum()
}

/// What `sleep_pipe` measured itself (printed at exit, microseconds): the waiter's off-CPU
/// time in `nap` and in `wait_pipe` (wall time less its CPU time), and its lifetime.
struct SleepPipe {
    nap_us: f64,
    wait_pipe_us: f64,
    waiter_us: f64,
}

impl SleepPipe {
    fn read(out: &std::process::Output) -> SleepPipe {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let words: Vec<&str> = stdout.split_whitespace().collect();
        let value = |name: &str| -> f64 {
            words
                .iter()
                .position(|&word| word == name)
                .and_then(|at| words.get(at + 1)?.parse().ok())
                .unwrap_or_else(|| panic!("sleep_pipe printed no {name}: {stdout:?}"))
        };
        SleepPipe {
            nap_us: value("nap_us"),
            wait_pipe_us: value("wait_pipe_us"),
            waiter_us: value("waiter_us"),
        }
    }

    /// The share of the off-CPU time in `nap`: about 2/3, more in an emulated VM, whose sleeps
    /// overshoot (73% seen, and 80-87% on a busy host): the tests compare the profile with
    /// this, so the bounds only catch a program that did not run as written.
    fn nap_share(&self) -> f64 {
        let share = 100.0 * self.nap_us / (self.nap_us + self.wait_pipe_us);
        assert!(
            (55.0..=92.0).contains(&share),
            "sleep_pipe measured nap {} µs, wait_pipe {} µs",
            self.nap_us,
            self.wait_pipe_us
        );
        share
    }
}

#[test]
fn blocked_time_splits_between_sleep_and_pipe_and_adds_up_to_wall_time() {
    let _serial = serial();
    if !have_root("blocked_time_splits_between_sleep_and_pipe_and_adds_up_to_wall_time") {
        return;
    }
    // Every period's stack walked: under the default overhead budget an emulated VM's slow
    // walks make the profiler sample them, and the split would be an estimate (0.89 and 1.18
    // of the program's own timing seen in CI's VMs); sampling has its own test below.
    let (dir, out) = record(
        &["--events", "cpu,offcpu", "--sample-stacks-below", "0"],
        "sleep_pipe",
        &["3"],
    );
    assert!(out.status.success());
    let stacks = read_folded(&dir.path().join("offcpu.folded"));
    let nap = blocked_in(&stacks, "waiter", "nap");
    let pipe = blocked_in(&stacks, "waiter", "wait_pipe");
    // 20 ms of sleep, then about 10 ms waiting for the writer's next byte: about 2/3 in nap,
    // within a point or two of what the program measured itself here; in an emulated VM its
    // sleeps overshoot (73% seen) and the programs' own cost, emulated too, blurs the two
    // measures by up to 4 points.
    let share = percent(nap, nap + pipe);
    let program = SleepPipe::read(&out);
    let measured = program.nap_share();
    eprintln!(
        "nap {nap} µs, wait_pipe {pipe} µs: {share:.1}%; the program measured {measured:.1}%"
    );
    assert!(
        (share - measured).abs() <= 5.0,
        "nap {nap} µs, wait_pipe {pipe} µs: {share:.1}%; the program measured {measured:.1}%"
    );
    // All of the waiter's blocked time, as the program timed its own calls (an emulated VM
    // on a busy host leaves it blocked less than 2.5 of its 3 s).
    let timed = program.nap_us + program.wait_pipe_us;
    assert!(
        (0.9..=1.1).contains(&((nap + pipe) as f64 / timed)),
        "waiter blocked {} µs; the program timed {timed:.0} µs of its calls",
        nap + pipe
    );

    let summary = read_summary(dir.path());
    let offcpu = &summary["offcpu"];
    let reason_of = |function: &str| {
        offcpu["top_stacks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["thread"] == "waiter" && s["function"] == function)
            .unwrap_or_else(|| panic!("no blocking stack in {function}: {offcpu}"))["reason"]
            .clone()
    };
    assert_eq!(reason_of("nap"), "sleep");
    assert_eq!(reason_of("wait_pipe"), "pipe");
    let waiter = offcpu["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "waiter")
        .expect("waiter in the per-thread split");
    // On-CPU plus off-CPU time is the waiter's lifetime, as it measured it: nearly the whole
    // run, whose start-up and exit take a tenth of it in an emulated VM.
    let duration_us = summary["duration_secs"].as_f64().unwrap() * 1e6;
    let total_us = waiter["total_us"].as_f64().unwrap();
    eprintln!(
        "waiter: {total_us} µs accounted, lived {} µs; run {duration_us} µs",
        program.waiter_us
    );
    assert!(
        (total_us / program.waiter_us - 1.0).abs() < 0.05,
        "waiter's time {total_us} µs vs its lifetime {} µs (run: {duration_us} µs)",
        program.waiter_us
    );
    assert!(
        total_us > 0.8 * duration_us && total_us < 1.05 * duration_us,
        "waiter's time {total_us} µs vs the run's {duration_us} µs"
    );
    let wall = std::fs::read_to_string(dir.path().join("wall.folded")).unwrap();
    assert!(wall.contains(";nap;") && wall.contains("[off-CPU: sleep]"));
    assert!(dir.path().join("offcpu.svg").exists() && dir.path().join("wall.svg").exists());
    assert_nothing_loaded();
}

#[test]
fn run_queue_delay_is_reported_when_threads_outnumber_cpus() {
    let _serial = serial();
    if !have_root("run_queue_delay_is_reported_when_threads_outnumber_cpus") {
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(2, usize::from);
    let threads = (2 * cpus).to_string();
    // The delays from the scheduler's own accounting, read at each switch-out (the default
    // where the kernel keeps it), and timed from each wakeup and preemption (kernels without).
    for extra in [&[][..], &["--run-delays-from-wakeups"][..]] {
        let (dir, out) = record(
            &[&["--events", "cpu,offcpu"][..], extra].concat(),
            "busy_threads",
            &["2", &threads],
        );
        assert!(out.status.success(), "{extra:?}");
        let summary = read_summary(dir.path());
        let offcpu = &summary["offcpu"];
        let run_queue = offcpu["run_queue"].as_array().unwrap();
        let busy: Vec<_> = run_queue
            .iter()
            .filter(|t| t["name"].as_str().unwrap().starts_with("busy-"))
            .collect();
        assert_eq!(
            busy.len(),
            2 * cpus,
            "{extra:?}: every busy thread has run-queue figures: {run_queue:?}"
        );
        for thread in &busy {
            assert!(
                thread["count"].as_u64().unwrap() > 10,
                "{extra:?}: {thread}"
            );
            assert!(
                thread["p99_us"].as_u64().unwrap() >= 1000,
                "{extra:?}: p99 at least 1 ms: {thread}"
            );
            // A spinning thread is off-CPU only while it waits for one: its off-CPU time,
            // timed from the switches, and its run-queue delays, from elsewhere, agree.
            let tid = thread["tid"].as_u64().unwrap();
            let off_cpu = offcpu["threads"]
                .as_array()
                .unwrap()
                .iter()
                .find(|row| row["tid"].as_u64() == Some(tid))
                .and_then(|row| row["off_cpu_us"].as_u64())
                .unwrap_or_else(|| panic!("{extra:?}: no off-CPU row for {thread}"));
            let waited = thread["total_us"].as_u64().unwrap();
            assert!(
                percent(waited, off_cpu) > 80.0 && percent(waited, off_cpu) < 105.0,
                "{extra:?}: run-queue delays {waited} µs against {off_cpu} µs off-CPU: {thread}"
            );
        }
        for thread in offcpu["threads"].as_array().unwrap() {
            if !thread["name"].as_str().unwrap().starts_with("busy-") {
                continue;
            }
            let runnable = thread["runnable_us"].as_u64().unwrap();
            let total = thread["total_us"].as_u64().unwrap();
            assert!(
                percent(runnable, total) > 25.0,
                "{extra:?}: waits for a CPU a good part of the time: {thread}"
            );
        }
        let reasons = offcpu["reasons"].as_array().unwrap();
        assert_eq!(reasons[0]["reason"], "preempted", "{extra:?}: {reasons:?}");
        assert_nothing_loaded();
    }
}

#[test]
fn short_waits_are_filtered_but_counted() {
    let _serial = serial();
    if !have_root("short_waits_are_filtered_but_counted") {
        return;
    }
    let (dir, out) = record(
        &["--events", "offcpu", "--min-block", "25ms"],
        "sleep_pipe",
        &["1"],
    );
    assert!(out.status.success());
    let stacks = read_folded(&dir.path().join("offcpu.folded"));
    // 20 ms naps are under 25 ms: filtered, unless a busy machine makes one overshoot (26 ms
    // seen once, on a loaded host), which is then rightly kept: a few at most.
    let naps_kept = blocked_in(&stacks, "waiter", "nap");
    assert!(naps_kept < 100_000, "{naps_kept} µs of naps over 25 ms");
    let summary = read_summary(dir.path());
    let offcpu = &summary["offcpu"];
    assert!(
        offcpu["filtered_periods"].as_u64().unwrap() >= 50,
        "{offcpu}"
    );
    assert!(
        offcpu["filtered_us"].as_u64().unwrap() > 500_000,
        "{offcpu}"
    );
    assert_eq!(offcpu["min_block_us"], 25_000);
    assert!(summary["cpu"].is_null(), "cpu was not asked for");
    assert!(!dir.path().join("cpu.folded").exists());
}

#[test]
fn attach_accounts_threads_asleep_since_before_attach() {
    let _serial = serial();
    if !have_root("attach_accounts_threads_asleep_since_before_attach") {
        return;
    }
    let target =
        profiler_tests::Spawned::new(std::process::Command::new(program("sleep_pipe")).arg("20"));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let dir = tempfile::tempdir().unwrap();
    let out = output(
        profiler()
            .args(["attach", "--events", "offcpu", "-d", "2", "-o"])
            .arg(dir.path())
            .arg(target.pid().to_string()),
    );
    assert!(out.status.success());
    let summary = read_summary(dir.path());
    let duration_us = summary["duration_secs"].as_f64().unwrap() * 1e6;
    let threads = summary["offcpu"]["threads"].as_array().unwrap();
    // The main thread waits in pthread_join from before the attach to after the run: all of
    // the run is off-CPU, with the reason that it started before the profiler.
    let main = threads
        .iter()
        .find(|t| t["tid"] == target.pid())
        .unwrap_or_else(|| panic!("main thread missing: {threads:?}"));
    let main_off = main["off_cpu_us"].as_f64().unwrap();
    assert!(
        (main_off / duration_us - 1.0).abs() < 0.05,
        "main off-CPU {main_off} µs of {duration_us}"
    );
    let reasons = summary["offcpu"]["reasons"].as_array().unwrap();
    assert!(
        reasons.iter().any(|r| r["reason"] == "before_attach"),
        "{reasons:?}"
    );
    for name in ["waiter", "writer"] {
        let thread = threads
            .iter()
            .find(|t| t["name"] == name)
            .expect("thread listed");
        let off = thread["off_cpu_us"].as_f64().unwrap();
        assert!(
            (off / duration_us - 1.0).abs() < 0.05,
            "{name} off-CPU {off} µs of {duration_us}"
        );
    }
    drop(target);
    assert_nothing_loaded();
}

#[test]
fn offcpu_covers_child_processes_only_when_they_are_followed() {
    let _serial = serial();
    if !have_root("offcpu_covers_child_processes_only_when_they_are_followed") {
        return;
    }
    let thread_pids = |summary: &serde_json::Value| -> Vec<u64> {
        summary["offcpu"]["threads"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["pid"].as_u64().unwrap())
            .collect()
    };
    let (dir, out) = record(&["--no-children", "--events", "offcpu"], "forker", &["1"]);
    assert!(out.status.success());
    let summary = read_summary(dir.path());
    let root = summary["pids"][0].as_u64().unwrap();
    let pids = thread_pids(&summary);
    assert!(
        !pids.is_empty() && pids.iter().all(|&pid| pid == root),
        "only the command's own threads: {pids:?} (command {root})"
    );

    let (dir, out) = record(&["--events", "offcpu"], "forker", &["1"]);
    assert!(out.status.success());
    let summary = read_summary(dir.path());
    let root = summary["pids"][0].as_u64().unwrap();
    let pids = thread_pids(&summary);
    assert!(
        pids.contains(&root) && pids.iter().any(|&pid| pid != root),
        "the command and its child: {pids:?} (command {root})"
    );
    assert_nothing_loaded();
}

#[test]
fn device_flush_waits_are_io() {
    let _serial = serial();
    if !have_root("device_flush_waits_are_io") {
        return;
    }
    // On the build's own file system (a temporary folder may be tmpfs, where fdatasync waits
    // for nothing).
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fsync_loop.data");
    let (dir, out) = record(
        &["--events", "offcpu"],
        "fsync_loop",
        &[path.to_str().unwrap(), "300"],
    );
    assert!(out.status.success(), "{out:?}");
    let summary = read_summary(dir.path());
    let reasons = summary["offcpu"]["reasons"].as_array().unwrap();
    let share = |label: &str| {
        reasons
            .iter()
            .find(|r| r["reason"] == label)
            .map_or(0.0, |r| r["percent"].as_f64().unwrap())
    };
    // The flush sleeps in `schedule_timeout` under `io_schedule_timeout`: I/O, not sleep.
    assert!(
        share("io") >= 80.0,
        "I/O {:.1}%, sleep {:.1}%: {reasons:?}",
        share("io"),
        share("sleep")
    );
    assert_nothing_loaded();
}

#[test]
fn one_busy_thread_among_idle_ones_is_cpu_bound() {
    let _serial = serial();
    if !have_root("one_busy_thread_among_idle_ones_is_cpu_bound") {
        return;
    }
    // Nine threads live 2 s; one spins: 11% of the threads' time on-CPU, one thread 100%.
    let (dir, out) = record(&["--events", "cpu,offcpu"], "one_busy", &["2"]);
    assert!(out.status.success(), "{out:?}");
    let summary = read_summary(dir.path());
    let verdict = summary["verdict"].as_array().unwrap();
    let first = &verdict[0];
    assert_eq!(first["kind"], "cpu", "{verdict:#?}");
    let text = first["text"].as_str().unwrap();
    assert!(
        text.contains("thread `cruncher`") && text.contains("CPU-bound"),
        "{text}"
    );
    assert!(text.contains("in `crunch`"), "{text}");
    assert!(first["score"].as_f64().unwrap() >= 80.0, "{first}");

    assert_nothing_loaded();
}

#[test]
fn sampled_offcpu_stacks_keep_shares_and_totals() {
    let _serial = serial();
    if !have_root("sampled_offcpu_stacks_keep_shares_and_totals") {
        return;
    }
    // Naps (20 ms) are at the threshold: always walked. Pipe waits (about 10 ms) are walked
    // one time in two and weigh 20 ms each: the split stays 2/3 to 1/3 on average. With I/O
    // too: the walks at system-call exits then serve sampled I/O calls and sampled periods
    // alike (the other tests run off-CPU alone).
    let (dir, out) = record(
        &["--events", "offcpu,io", "--sample-stacks-below", "20ms"],
        "sleep_pipe",
        &["5"],
    );
    assert!(out.status.success());
    let summary = read_summary(dir.path());
    let sampling = &summary["quality"]["stack_sampling"]["offcpu"];
    let (walked, periods) = (
        sampling["walked"].as_u64().unwrap(),
        sampling["events"].as_u64().unwrap(),
    );
    assert!(
        walked > 100 && walked < periods,
        "a sample walked: {sampling}"
    );
    assert_eq!(summary["offcpu"]["periods"], periods, "exact count");
    let stacks = read_folded(&dir.path().join("offcpu.folded"));
    let nap = blocked_in(&stacks, "waiter", "nap");
    let pipe = blocked_in(&stacks, "waiter", "wait_pipe");
    let share = percent(nap, nap + pipe);
    let program = SleepPipe::read(&out);
    let measured = program.nap_share();
    eprintln!(
        "nap {nap} µs, wait_pipe {pipe} µs: {share:.1}%; the program measured {measured:.1}%"
    );
    assert!(
        (share - measured).abs() <= 8.0,
        "nap {nap} µs, wait_pipe {pipe} µs: {share:.1}%; the program measured {measured:.1}%"
    );
    // The weighted sample adds up to the exact total, give or take its spread.
    let weighted: u64 = stacks.iter().map(|(_, weight)| weight).sum();
    let exact = summary["offcpu"]["total_us"].as_f64().unwrap();
    assert!(
        (weighted as f64 / exact - 1.0).abs() < 0.15,
        "flamegraph {weighted} µs, measured {exact} µs"
    );
    let quality = summary["quality"]["text"].to_string();
    assert!(
        quality.contains("off-CPU stacks walked for 1 in"),
        "{quality}"
    );
    assert_nothing_loaded();
}

#[test]
fn a_small_overhead_budget_samples_stacks_of_a_busy_program() {
    let _serial = serial();
    if !have_root("a_small_overhead_budget_samples_stacks_of_a_busy_program") {
        return;
    }
    // Two threads passing a byte back and forth switch hundreds of thousands of times a
    // second, for a few seconds: far over a budget of 0.1%, which is decided on twice a
    // second (150 000 rounds took 1.4 s on this VM at its fastest: too few decisions).
    let (dir, out) = record(
        &["--events", "offcpu", "--max-overhead", "0.1"],
        "pingpong",
        &["450000"],
    );
    assert!(out.status.success());
    let summary = read_summary(dir.path());
    let sampling = &summary["quality"]["stack_sampling"];
    assert_eq!(sampling["max_overhead_percent"], 0.1, "{sampling}");
    assert!(sampling["adjustments"].as_u64().unwrap() >= 1, "{sampling}");
    let offcpu = &sampling["offcpu"];
    let (walked, periods) = (
        offcpu["walked"].as_u64().unwrap(),
        offcpu["events"].as_u64().unwrap(),
    );
    // The program counts its own context switches (getrusage): a reader that finds its byte
    // already there does not block, so "two a round" holds only where the threads share a CPU.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let switches: f64 = stdout
        .split_whitespace()
        .find_map(|field| field.strip_prefix("switches="))
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no switch count from the program: {stdout}"));
    assert!(switches > 100_000.0, "too few switches to test: {stdout}");
    assert!(
        (periods as f64 / switches - 1.0).abs() < 0.02,
        "every switch counted: {offcpu}, the program switched {switches} times"
    );
    assert!(walked * 4 < periods, "most stacks not walked: {offcpu}");
    // Not so few walks that the flamegraph is noise: the budget alone takes the threshold to
    // its top (1 s) here, but from the first decision on it is held where about 200 short
    // periods a second are walked: the periods' time a second / 200. Their time a second
    // moves (two threads, sharing CPUs with the rest of the machine): 2.5 times the run's
    // average at most.
    let seconds = summary["duration_secs"].as_f64().unwrap();
    let total_us = offcpu["total_us"].as_f64().unwrap();
    let most = 2.5 * total_us / seconds / 200.0;
    assert!(
        offcpu["max_below_us"].as_f64().unwrap() <= most,
        "threshold above {most:.0} µs for {total_us} µs of periods in {seconds:.1} s: {sampling}"
    );
    assert_nothing_loaded();
}

#[test]
fn a_thread_that_executes_a_program_is_still_accounted_as_the_new_leader() {
    let _serial = serial();
    if !have_root("a_thread_that_executes_a_program_is_still_accounted_as_the_new_leader") {
        return;
    }
    // A thread other than the main one executes `pingpong`: the kernel gives it the leader's
    // tid, and the old leader dies first (its last switch-out marks the entry of that tid
    // exited). The new program's two threads then wait for each other in turn: the main
    // thread's waits count as much as the other's, and every pipe call counts, under its pipe.
    const ROUNDS: u64 = 100_000;
    let pingpong = program("pingpong");
    let (dir, out) = record(
        &["--events", "offcpu,io"],
        "exec_from_thread",
        &[pingpong.to_str().unwrap(), &ROUNDS.to_string()],
    );
    assert!(out.status.success());
    let summary = read_summary(dir.path());
    let pid = summary["root_pids"][0].as_u64().unwrap();
    let threads = summary["offcpu"]["threads"].as_array().unwrap();
    let off_cpu = |leader: bool| -> u64 {
        threads
            .iter()
            .filter(|t| t["pid"] == pid && (t["tid"] == pid) == leader)
            .map(|t| t["off_cpu_us"].as_u64().unwrap_or(0))
            .max()
            .unwrap_or(0)
    };
    let (main, responder) = (off_cpu(true), off_cpu(false));
    assert!(
        responder > 0 && main * 2 > responder,
        "main thread {main} µs off-CPU, responder {responder} µs: {threads:#?}"
    );
    assert_pingpong_pipes_counted(&summary, ROUNDS, "offcpu,io");
    assert_nothing_loaded();
}
