//! Start-up on the busy server: `profiler attach` while pgbench runs at full speed, as in an
//! incident. How long until its first sample and until every program is attached
//! (`first_sample_ms`, `attach_ms` in summary.json, from the profiler's start), and the wall
//! time of a short attach, start to results.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{Cluster, EVERY_KIND};
use crate::{profiler_bin, report};

/// How long each attach profiles.
const ATTACHED_FOR: Duration = Duration::from_secs(2);

/// Attaches `attaches` times, one after the other, while pgbench runs at full speed; a
/// Markdown table of the medians and ranges.
pub(super) fn startup_under_load(
    cluster: &Cluster,
    scratch: &Path,
    attaches: usize,
) -> anyhow::Result<String> {
    // Long enough for every attach and its results, with a margin: pgbench ends by itself.
    let seconds = 3 + attaches as u64 * (ATTACHED_FOR.as_secs() + 5);
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
            eprintln!(
                "bench: attach {}/{attaches} under load: first sample {:.0} ms, attached {:.0} \
                 ms, {:.1} s in all",
                attach + 1,
                figures[0],
                figures[1],
                figures[2]
            );
            Ok(figures)
        })
        .collect::<anyhow::Result<Vec<[f64; 3]>>>();
    if measured.is_err() {
        let _ = pgbench.kill();
    }
    let _ = pgbench.wait();
    let measured = measured?;
    let column = |index: usize| -> Vec<f64> { measured.iter().map(|m| m[index]).collect() };
    Ok(format!(
        "\n\nStart-up under load: `profiler attach --children -e {EVERY_KIND} -d {}s` on the \
         postmaster while pgbench runs at full speed, {attaches} times, one after the other \
         (median and range).\n\n\
         | first sample | every program attached | start to results, wall |\n\
         |---:|---:|---:|\n\
         | {} | {} | {} |\n",
        ATTACHED_FOR.as_secs(),
        report::median_and_range(&column(0), 0, " ms"),
        report::median_and_range(&column(1), 0, " ms"),
        report::median_and_range(&column(2), 1, " s"),
    ))
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
