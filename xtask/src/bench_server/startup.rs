//! Start-up on the busy server: `profiler attach` while pgbench runs at full speed, as in an
//! incident. How long until its first sample and until every program is attached
//! (`first_sample_ms`, `attach_ms` in summary.json, from the profiler's start), and the wall
//! time of a short attach, start to results; beside the same for the peers of the throughput
//! rounds: `perf record -g -a` (its first sample of a `postgres` process, and its wall time)
//! and the bpftrace off-CPU script (its first event).

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{BPFTRACE_OFFCPU, Cluster, EVERY_KIND};
use crate::{
    bench_startup::{bpftrace_first_ns, monotonic_ns, perf_first_sample_ns},
    profiler_bin, report,
};

/// How long each attach profiles.
const ATTACHED_FOR: Duration = Duration::from_secs(2);

/// Attaches `attaches` times, one after the other, while pgbench runs at full speed; a
/// Markdown table of the medians and ranges.
pub(super) fn startup_under_load(
    cluster: &Cluster,
    scratch: &Path,
    attaches: usize,
) -> anyhow::Result<String> {
    // Long enough for every round of attaches and their results, with a margin: pgbench ends
    // by itself.
    let seconds = 3 + attaches as u64 * (3 * ATTACHED_FOR.as_secs() + 15);
    let mut pgbench = cluster
        .pgbench()
        .args(["-c", "8", "-j", "2", "-T", &seconds.to_string(), "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting pgbench")?;
    // Its clients connected and the server busy before the first attach.
    std::thread::sleep(Duration::from_secs(2));
    let measured = (0..attaches)
        .map(|attach| {
            let figures = attach_once(cluster, scratch)?;
            let perf = perf_once(scratch)?;
            let bpftrace = bpftrace_once()?;
            eprintln!(
                "bench: attach {}/{attaches} under load: first sample {:.0} ms, attached {:.0} \
                 ms, {:.1} s in all; perf {:.0} ms, {:.1} s in all; bpftrace {:.0} ms",
                attach + 1,
                figures[0],
                figures[1],
                figures[2],
                perf[0],
                perf[1],
                bpftrace,
            );
            Ok([
                figures[0], figures[1], figures[2], perf[0], perf[1], bpftrace,
            ])
        })
        .collect::<anyhow::Result<Vec<[f64; 6]>>>();
    if measured.is_err() {
        let _ = pgbench.kill();
    }
    let _ = pgbench.wait();
    let measured = measured?;
    let column = |index: usize, digits: usize, unit: &str| {
        let values: Vec<f64> = measured.iter().map(|m| m[index]).collect();
        report::median_and_range(&values, digits, unit)
    };
    Ok(format!(
        "\n\nStart-up under load: `profiler attach --children -e {EVERY_KIND} -d {}s` on the \
         postmaster while pgbench runs at full speed, {attaches} times, one after the other, \
         each followed by `perf record -g -a -F 99 -- sleep {}` (its first sample of a \
         `postgres` process) and by the bpftrace off-CPU script (its first event): median and \
         range, from each tool's start.\n\n\
         | tool | first sample or event | every program attached | start to results, wall |\n\
         |---|---:|---:|---:|\n\
         | profiler | {} | {} | {} |\n\
         | perf `record -g -a` | {} | — | {} |\n\
         | bpftrace off-CPU stacks | {} | — | — |\n",
        ATTACHED_FOR.as_secs(),
        ATTACHED_FOR.as_secs(),
        column(0, 0, " ms"),
        column(1, 0, " ms"),
        column(2, 1, " s"),
        column(3, 0, " ms"),
        column(4, 1, " s"),
        column(5, 0, " ms"),
    ))
}

/// `perf record -g -a` for as long as an attach: its first sample of a `postgres` process,
/// ms from its start, and its wall time, s.
fn perf_once(scratch: &Path) -> anyhow::Result<[f64; 2]> {
    let data = scratch.join("startup-perf.data");
    let spawned_ns = monotonic_ns();
    let started = Instant::now();
    let status = Command::new("perf")
        .args([
            "record",
            "-q",
            "-k",
            "CLOCK_MONOTONIC",
            "-g",
            "-a",
            "-F",
            "99",
            "-o",
        ])
        .arg(&data)
        .args(["--", "sleep", &ATTACHED_FOR.as_secs().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running perf")?;
    let wall = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("perf failed under load: {status}");
    }
    let first = perf_first_sample_ns(&data, Some("postgres"))?;
    Ok([first.saturating_sub(spawned_ns) as f64 / 1e6, wall])
}

/// The bpftrace off-CPU script, with one more probe that prints its first event's time and
/// ends it: that event, ms from its start.
fn bpftrace_once() -> anyhow::Result<f64> {
    let script = format!(
        "{BPFTRACE_OFFCPU} tracepoint:sched:sched_switch /comm == \"postgres\"/ {{ \
         printf(\"first %lld\\n\", nsecs); exit(); }}"
    );
    let spawned_ns = monotonic_ns();
    let output = Command::new("bpftrace")
        .arg("-e")
        .arg(script)
        .stderr(Stdio::null())
        .output()
        .context("running bpftrace")?;
    if !output.status.success() {
        bail!("bpftrace failed under load: {}", output.status);
    }
    let first = bpftrace_first_ns(&output.stdout)?;
    Ok(first.saturating_sub(spawned_ns) as f64 / 1e6)
}

/// One attach: its first sample and full attach, ms from its start, and its wall time, s.
fn attach_once(cluster: &Cluster, scratch: &Path) -> anyhow::Result<[f64; 3]> {
    let out = scratch.join("startup");
    let _ = std::fs::remove_dir_all(&out);
    let started = Instant::now();
    let status = Command::new(profiler_bin())
        .args(["attach", "--children", "-e", EVERY_KIND, "-d"])
        .arg(format!("{}s", ATTACHED_FOR.as_secs()))
        .arg("-o")
        .arg(&out)
        .arg(cluster.postmaster_pid()?.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running the profiler")?;
    let wall = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("the profiler failed attaching under load: {status}");
    }
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("summary.json")).context("no summary.json")?,
    )?;
    let ms = |key: &str| {
        summary[key]
            .as_f64()
            .with_context(|| format!("no {key} in summary.json"))
    };
    Ok([ms("first_sample_ms")?, ms("attach_ms")?, wall])
}
