//! `profiler agent`: windows of a program with known behaviour sent to an OTLP receiver that
//! decodes them with the official opentelemetry-proto classes (and pushed as pprof to its
//! Pyroscope ingestion endpoint); the receiver stopped and restarted, the agent restarted with
//! a spool, and `--all` (and `attach --all`).

use std::{process::Stdio, time::Duration};

use profiler_tests::{
    Spawned, assert_nothing_loaded, have_js_tools, have_root, node_json,
    otlp::{Receiver, free_port, have_otlp_tools, samples, window_times},
    output, percent, profiler, program, serial,
};

fn ready(test: &str) -> bool {
    have_root(test) && have_otlp_tools(test)
}

/// CPU samples of `pid` with `function` as the leaf, over every window.
fn cpu_in(requests: &[serde_json::Value], pid: u32, function: &str) -> u64 {
    samples(requests)
        .into_iter()
        .filter(|(resource, kind, frames, _)| {
            resource["process.pid"] == pid
                && kind == "samples"
                && frames.last().is_some_and(|leaf| leaf == function)
        })
        .map(|(.., value)| value)
        .sum()
}

/// Asserts that the windows follow each other, none missing: each starts where the one
/// before ended (within the time a window takes to cut). A window without samples (the last,
/// cut by a stop just after another) has no profile to tell its time; one missing among the
/// others shows as a gap.
fn assert_contiguous(requests: &[serde_json::Value]) {
    let times = window_times(requests);
    assert!(times.len() + 1 >= requests.len(), "windows without samples");
    for pair in times.windows(2) {
        let ((start, duration), (next, _)) = (pair[0], pair[1]);
        let gap_ms = (next as f64 - (start + duration) as f64) / 1e6;
        assert!(
            (-1.0..250.0).contains(&gap_ms),
            "windows out of order or missing: {gap_ms:.0} ms between {times:?}"
        );
    }
}

/// The number of windows the agent's log says it cut.
fn windows_logged(stderr: &[u8]) -> usize {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|line| line.starts_with("profiler agent: window "))
        .count()
}

#[test]
fn windows_keep_the_split_and_name_their_process() {
    let _serial = serial();
    if !ready("windows_keep_the_split_and_name_their_process")
        || !have_js_tools("windows_keep_the_split_and_name_their_process")
    {
        return;
    }
    let receiver = Receiver::start(0);
    let target = Spawned::new(std::process::Command::new(program("cpu_split")).arg("9"));
    let pid = target.pid();
    // Runs until the process named exits.
    let out = output(profiler().args([
        "agent",
        &pid.to_string(),
        "--otlp",
        &receiver.url(),
        "--pyroscope",
        &receiver.url(),
        "--interval",
        "2",
        // 499 Hz: about 4400 samples. At 99 Hz (900) a ±3 point bound was two standard
        // deviations of the sampling error and failed in CI at 66.4%.
        "-F",
        "499",
        "--label",
        "service.name=checkout",
        "--label",
        "deployment.environment=test",
    ]));
    assert!(out.status.success());
    let windows = windows_logged(&out.stderr);
    assert!(
        receiver.wait_for_requests(windows, Duration::from_secs(5)),
        "{windows} windows logged"
    );
    let requests = receiver.requests();
    assert!(requests.len() >= 4, "{} windows in 9 s", requests.len());
    assert_contiguous(&requests);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    for request in &requests {
        assert_eq!(request["path"], "/v1development/profiles");
        assert_eq!(request["content_type"], "application/x-protobuf");
        assert_eq!(request["encoding"], "gzip");
        let resources = request["resources"].as_array().unwrap();
        assert_eq!(resources.len(), 1, "one process: {request}");
        let attributes = &resources[0]["attributes"];
        assert_eq!(attributes["service.name"], "checkout");
        assert_eq!(attributes["deployment.environment"], "test");
        assert_eq!(attributes["host.name"], host.trim());
        assert_eq!(attributes["process.pid"], pid);
        assert_eq!(attributes["process.executable.name"], "cpu_split");
        let profile = &resources[0]["profiles"][0];
        assert_eq!(profile["sample_type"], "samples");
        assert_eq!(profile["unit"], "count");
        assert_eq!(profile["period"], 1_000_000_000 / 499);
    }
    let hot = cpu_in(&requests, pid, "hot_path");
    let cold = cpu_in(&requests, pid, "cold_path");
    let share = percent(hot, hot + cold);
    // perf at 2999 Hz measures 69.5%; three runs here gave 67.6-70.4%. Five points, as the
    // record tests allow.
    assert!(
        (share - 70.0).abs() <= 5.0,
        "hot_path {hot}, cold_path {cold}: {share:.1}% over {} windows",
        requests.len()
    );

    // The same windows pushed to Pyroscope's ingestion API: pprof with the labels in `name`,
    // decoded by the pprof decoder of the report tests.
    let pushes = receiver.pushes();
    assert_eq!(
        pushes.len(),
        requests.len(),
        "a push a window (one process)"
    );
    let mut pushed_samples = 0;
    for (push, request) in pushes.iter().zip(&requests) {
        let query = &push["query"];
        assert_eq!(
            query["name"],
            format!(
                "checkout{{host_name={},pid={pid},deployment_environment=test}}",
                host.trim()
            )
        );
        assert_eq!(query["format"], "pprof");
        assert_eq!(query["sampleRate"], "499");
        let from: u64 = query["from"].as_str().unwrap().parse().unwrap();
        let window_start = request["resources"][0]["profiles"][0]["time_unix_nano"]
            .as_u64()
            .unwrap();
        assert_eq!(from, window_start / 1_000_000_000);
        let pprof = node_json(
            "read-pprof.mjs",
            &[std::path::Path::new(push["file"].as_str().unwrap())],
        );
        let samples = pprof["types"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "samples")
            .unwrap_or_else(|| panic!("{pprof}"));
        assert_eq!(samples["heaviest_leaf"], "hot_path", "{pprof}");
        pushed_samples += samples["total"].as_u64().unwrap();
    }
    let sent_samples: u64 = samples(&requests).iter().map(|(.., value)| value).sum();
    assert_eq!(pushed_samples, sent_samples, "the same samples to both");
    assert_nothing_loaded();
}

#[test]
fn windows_wait_while_the_receiver_is_down_and_arrive_in_order() {
    let _serial = serial();
    if !ready("windows_wait_while_the_receiver_is_down_and_arrive_in_order") {
        return;
    }
    let spool = tempfile::tempdir().unwrap();
    let mut receiver = Receiver::start(0);
    let target = Spawned::new(std::process::Command::new(program("cpu_split")).arg("12"));
    let agent = Spawned::new(
        profiler()
            .args([
                "agent",
                &target.pid().to_string(),
                "--otlp",
                &receiver.url(),
                "--interval",
                "2",
                "--spool",
            ])
            .arg(spool.path().join("spool"))
            .stderr(Stdio::piped()),
    );
    assert!(receiver.wait_for_requests(1, Duration::from_secs(10)));
    // Down for two windows and more.
    receiver.stop();
    std::thread::sleep(Duration::from_secs(5));
    let sent_before = receiver.requests().len();
    let receiver = Receiver::restart(&receiver);
    let out = agent.wait_with_output(Duration::from_secs(30));
    assert!(out.status.success());
    let windows = windows_logged(&out.stderr);
    assert!(
        receiver.wait_for_requests(windows, Duration::from_secs(5)),
        "{windows} windows logged, {} received",
        receiver.requests().len()
    );
    let requests = receiver.requests();
    assert_eq!(requests.len(), windows, "every window arrives, once");
    assert!(
        windows >= sent_before + 2,
        "two windows or more waited: {sent_before} sent before the stop, {windows} in all"
    );
    assert_contiguous(&requests);
    let left: Vec<_> = std::fs::read_dir(spool.path().join("spool/otlp"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert!(
        left.is_empty(),
        "the spool is empty once every window went: {left:?}"
    );
    assert_nothing_loaded();
}

#[test]
fn an_agent_restart_sends_what_the_last_one_spooled_first() {
    let _serial = serial();
    if !ready("an_agent_restart_sends_what_the_last_one_spooled_first") {
        return;
    }
    let spool = tempfile::tempdir().unwrap();
    let spool_dir = spool.path().join("spool");
    let spool = spool_dir.join("otlp");
    let port = free_port();
    let target = Spawned::new(std::process::Command::new(program("cpu_split")).arg("30"));
    let agent = |port: u16| {
        Spawned::new(
            profiler()
                .args([
                    "agent",
                    &target.pid().to_string(),
                    "--otlp",
                    &format!("http://127.0.0.1:{port}"),
                    "--interval",
                    "1",
                    "--spool",
                ])
                .arg(&spool_dir)
                .stderr(Stdio::piped()),
        )
    };
    // Nothing listens: every window stays in the spool, the last one too (SIGTERM).
    let first = agent(port);
    std::thread::sleep(Duration::from_millis(3500));
    first.signal(libc::SIGTERM);
    let out = first.wait_with_output(Duration::from_secs(30));
    assert!(out.status.success(), "unsent windows are kept, not lost");
    let spooled = windows_logged(&out.stderr);
    let files = std::fs::read_dir(&spool).unwrap().count();
    assert!(spooled >= 3, "{spooled} windows");
    assert_eq!(files, spooled, "each window waits in a file of its own");

    let receiver = Receiver::start(port);
    let second = agent(port);
    assert!(receiver.wait_for_requests(spooled + 2, Duration::from_secs(15)));
    second.signal(libc::SIGTERM);
    let out = second.wait_with_output(Duration::from_secs(30));
    assert!(out.status.success());
    let sent = windows_logged(&out.stderr);
    assert!(receiver.wait_for_requests(spooled + sent, Duration::from_secs(5)));
    let requests = receiver.requests();
    assert_eq!(requests.len(), spooled + sent);
    // The first run's windows first, in their order, then the second run's.
    let times = window_times(&requests);
    assert!(
        times.windows(2).all(|pair| pair[0].0 < pair[1].0),
        "in order: {times:?}"
    );
    assert_contiguous(&requests[..spooled]);
    assert_contiguous(&requests[spooled..]);
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0);
    assert_nothing_loaded();
}

#[test]
fn all_names_the_workload_and_none_of_the_profilers_own() {
    let _serial = serial();
    if !ready("all_names_the_workload_and_none_of_the_profilers_own") {
        return;
    }
    let receiver = Receiver::start(0);
    let target = Spawned::new(std::process::Command::new(program("cpu_split")).arg("15"));
    let agent = Spawned::new(
        profiler()
            .args([
                "agent",
                "--all",
                "--otlp",
                &receiver.url(),
                "--interval",
                "5",
            ])
            .stderr(Stdio::piped()),
    );
    let agent_pid = agent.pid();
    std::thread::sleep(Duration::from_secs(10));
    agent.signal(libc::SIGTERM);
    let out = agent.wait_with_output(Duration::from_secs(30));
    assert!(out.status.success());
    let windows = windows_logged(&out.stderr);
    assert!(receiver.wait_for_requests(windows, Duration::from_secs(5)));
    let requests = receiver.requests();
    let pids: std::collections::BTreeSet<u64> = samples(&requests)
        .iter()
        .filter_map(|(resource, ..)| resource["process.pid"].as_u64())
        .collect();
    assert!(
        pids.contains(&u64::from(target.pid())),
        "the workload is named: {pids:?}"
    );
    assert!(
        !pids.contains(&u64::from(agent_pid)),
        "the agent profiles itself: {pids:?}"
    );
    let workload = cpu_in(&requests, target.pid(), "hot_path");
    assert!(workload > 100, "{workload} samples in hot_path");
    assert_nothing_loaded();
}

#[test]
fn attach_all_profiles_every_process_but_itself() {
    let _serial = serial();
    if !have_root("attach_all_profiles_every_process_but_itself") {
        return;
    }
    let target = Spawned::new(std::process::Command::new(program("cpu_split")).arg("6"));
    let dir = tempfile::tempdir().unwrap();
    let out = output(
        profiler()
            .args(["attach", "--all", "-d", "3", "-o"])
            .arg(dir.path()),
    );
    assert!(out.status.success());
    let stacks = profiler_tests::read_folded(&dir.path().join("cpu.folded"));
    // A process of its own when other processes ran too: `cpu_split (PID);...`.
    let of_workload = |frames: &[String]| {
        frames[0] == format!("cpu_split ({})", target.pid())
            || (frames[0] == "cpu_split" && frames.iter().any(|f| f == "run_work"))
    };
    let workload: u64 = stacks
        .iter()
        .filter(|(frames, _)| of_workload(frames))
        .map(|(_, weight)| weight)
        .sum();
    assert!(
        workload > 200,
        "{workload} samples of cpu_split in 3 s at 99 Hz"
    );
    assert!(
        !stacks
            .iter()
            .any(|(frames, _)| frames[0].starts_with("profiler")),
        "the profiler profiles itself"
    );
    assert_nothing_loaded();
}

/// The stacks kept after each window, from the agent's log.
fn stacks_kept(stderr: &[u8]) -> Vec<u64> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter_map(|line| {
            let kept = line.split("; kept ").nth(1)?;
            kept.split(' ').next()?.parse().ok()
        })
        .collect()
}

#[test]
fn stacks_unused_for_a_while_are_let_go_and_whole_when_they_return() {
    let _serial = serial();
    if !ready("stacks_unused_for_a_while_are_let_go_and_whole_when_they_return") {
        return;
    }
    let receiver = Receiver::start(0);
    // phase_a for 3 s, phase_b for 7 s (more than the 4 windows a stack may go unnamed),
    // phase_a again for 3 s.
    let target = Spawned::new(std::process::Command::new(program("phases")).args(["3", "7"]));
    let pid = target.pid();
    let out = output(profiler().args([
        "agent",
        &pid.to_string(),
        "--otlp",
        &receiver.url(),
        "--interval",
        "1",
        "-F",
        "99",
    ]));
    assert!(out.status.success());
    let kept = stacks_kept(&out.stderr);
    let let_go = kept
        .iter()
        .enumerate()
        .any(|(window, &count)| kept[..window].iter().any(|&before| before > count));
    assert!(let_go, "no stack let go: kept {kept:?}");
    assert!(receiver.wait_for_requests(windows_logged(&out.stderr), Duration::from_secs(5)));
    let requests = receiver.requests();
    // Per window, in order: phase_a's samples with their frames, and phase_b's count.
    let with_leaf = |request: &serde_json::Value, function: &str| {
        samples(std::slice::from_ref(request))
            .into_iter()
            .filter(|(_, kind, frames, _)| {
                kind == "samples" && frames.last().is_some_and(|leaf| leaf == function)
            })
            .map(|(_, _, frames, value)| (frames, value))
            .collect::<Vec<_>>()
    };
    let first_b = requests
        .iter()
        .position(|request| !with_leaf(request, "phase_b").is_empty())
        .expect("phase_b sampled");
    // phase_b runs 7 windows: phase_a's return is in the windows after its sixth.
    let returned: Vec<(Vec<String>, u64)> = requests[first_b + 6..]
        .iter()
        .flat_map(|request| with_leaf(request, "phase_a"))
        .collect();
    let returned_samples: u64 = returned.iter().map(|(_, value)| value).sum();
    assert!(
        returned_samples > 100,
        "{returned_samples} samples of phase_a's return"
    );
    for (frames, _) in &returned {
        assert!(
            frames.iter().any(|frame| frame == "main"),
            "a cut stack {frames:?}"
        );
    }
    assert_nothing_loaded();
}
