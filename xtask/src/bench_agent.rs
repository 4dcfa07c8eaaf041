//! `bench-agent`: `profiler agent --all` at its defaults (19 Hz, 15 s windows) for minutes on
//! this host with process churn (a service burning CPU, ~15 short processes a second), its
//! windows sent to the tests' OTLP receiver; `perf record -a -g` at the same frequency runs
//! alongside as the peer. Samples both tools' CPU time and the agent's RSS every 10 s and
//! counts the windows cut and received: the point is a cost too small to notice, memory flat,
//! and nothing lost.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{bench_soak::usage, compile_program, profiler_bin, root};

#[derive(clap::Args)]
pub struct AgentBenchArgs {
    /// Minutes to run.
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// Print the results without writing docs/performance/agent-results.md.
    #[arg(long)]
    no_write: bool,
}

/// Kills a child when dropped: nothing of the benchmark outlives it.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on our own, not yet reaped child.
    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
}

/// Percent of one CPU between two (seconds, CPU seconds) points.
fn cpu_percent(from: (f64, f64), to: (f64, f64)) -> f64 {
    100.0 * (to.1 - from.1) / (to.0 - from.0).max(1e-9)
}

pub fn agent(args: &AgentBenchArgs) -> anyhow::Result<()> {
    crate::setup::install_otlp_receiver(&root())?;
    let service = compile_program("cpu_split")?;
    let scratch = root().join("target/bench-agent");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let seconds = args.minutes * 60;

    let mut receiver = Killed(
        Command::new(root().join("tests/otlp/venv/bin/python"))
            .arg(root().join("tests/otlp/receiver.py"))
            .arg("0")
            .arg(&scratch)
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the OTLP receiver (tests/otlp)")?,
    );
    let mut lines = BufReader::new(receiver.0.stdout.take().context("piped")?).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().context("its port")??)?;
    let port = first["port"].as_u64().context("its port")?;
    let received = std::thread::spawn(move || lines.map_while(Result::ok).count());

    let _service = Killed(
        Command::new(&service)
            .arg((seconds + 120).to_string())
            .spawn()?,
    );
    let churn = Killed(
        Command::new("sh")
            .args([
                "-c",
                "n=0; while :; do /bin/true; n=$((n+1)); echo $n > started; sleep 0.05; done",
            ])
            .current_dir(&scratch)
            .spawn()?,
    );
    let started = Instant::now();
    let agent = Killed(
        Command::new(profiler_bin())
            .args([
                "agent",
                "--all",
                "--otlp",
                &format!("http://127.0.0.1:{port}"),
            ])
            .stderr(std::fs::File::create(scratch.join("agent.log"))?)
            .spawn()
            .context("starting the agent")?,
    );
    let perf = Killed(
        Command::new("perf")
            .args(["record", "-a", "-g", "-F", "19", "-q", "-o"])
            .arg(scratch.join("perf.data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting perf (linux-perf)")?,
    );
    // (seconds, agent RSS KiB, agent CPU s, perf CPU s), every 10 s.
    let mut series: Vec<(f64, u64, f64, f64)> = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_secs(10));
        let (Some((rss, cpu)), Some((_, perf_cpu))) = (usage(agent.0.id()), usage(perf.0.id()))
        else {
            bail!(
                "the agent or perf stopped early (see {})",
                scratch.display()
            );
        };
        series.push((started.elapsed().as_secs_f64(), rss, cpu, perf_cpu));
    }
    signal(&agent.0, libc::SIGTERM);
    signal(&perf.0, libc::SIGINT);
    let mut agent = agent;
    let status = agent.0.wait()?;
    let _ = { perf }.0.wait();
    drop(churn);
    std::thread::sleep(Duration::from_secs(1));
    drop(receiver);
    let received = received.join().unwrap_or(0);
    let log = std::fs::read_to_string(scratch.join("agent.log"))?;
    let cut = log
        .lines()
        .filter(|line| line.starts_with("profiler agent: window "))
        .count();
    let last_delivery = log
        .lines()
        .rfind(|line| line.starts_with("profiler agent: otlp: "))
        .unwrap_or("")
        .to_owned();
    // What the agent kept after each window: (stacks, processes).
    let kept: Vec<(u64, u64)> = log
        .lines()
        .filter_map(|line| {
            let kept = line.split("; kept ").nth(1)?;
            let mut numbers = kept
                .split(' ')
                .filter_map(|word| word.trim_end_matches(',').parse().ok());
            Some((numbers.next()?, numbers.next()?))
        })
        .collect();
    let kept_at = |index: usize| kept.get(index.min(kept.len().saturating_sub(1))).copied();
    let kept_row = [kept_at(3), kept_at(kept.len() / 2), kept_at(kept.len())]
        .iter()
        .map(|kept| {
            kept.map_or("-".to_owned(), |(stacks, processes)| {
                format!("{stacks} / {processes}")
            })
        })
        .collect::<Vec<_>>()
        .join(" · ");
    let max_stacks = kept.iter().map(|kept| kept.0).max().unwrap_or(0);
    let processes: u64 = std::fs::read_to_string(scratch.join("started"))
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);

    // After the first minute (start-up: every process's maps and unwind tables).
    let warm = series
        .iter()
        .position(|point| point.0 >= 60.0)
        .context("a run of a minute at least")?;
    let (first, last) = (series[warm], series[series.len() - 1]);
    let agent_cpu = cpu_percent((first.0, first.2), (last.0, last.2));
    let perf_cpu = cpu_percent((first.0, first.3), (last.0, last.3));
    let whole_cpu = cpu_percent((0.0, 0.0), (last.0, last.2));
    let rss_at = |minute: f64| {
        series
            .iter()
            .find(|point| point.0 >= minute * 60.0)
            .map_or(0, |point| point.1)
    };
    let max_rss = series.iter().map(|point| point.1).max().unwrap_or(0);

    let mut report = String::new();
    let _ = writeln!(
        report,
        "# `profiler agent --all`: cost over {} minutes\n\n\
         Generated by `cargo xtask bench-agent --minutes {}` on Linux {}, {} CPUs. The agent at \
         its defaults (19 Hz, 15 s windows, CPU samples of every process on the host) sends \
         its windows to the tests' OTLP receiver; a service burns one CPU (`cpu_split`) and a \
         shell loop starts `/bin/true` and `sleep 0.05` {} times ({:.1} process starts a \
         second). `perf record -a -g -F 19` runs \
         alongside, as the peer. CPU is each tool's own (user + system) time as the kernel \
         counts it, from the end of the first minute (start-up: every process's maps and \
         unwind tables) to the stop.\n",
        args.minutes,
        args.minutes,
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        processes,
        2.0 * processes as f64 / last.0,
    );
    let _ = writeln!(report, "| | agent | perf `-a -g -F 19` |\n|---|---:|---:|");
    let _ = writeln!(
        report,
        "| CPU, % of one CPU (after the first minute) | **{agent_cpu:.2}** | {perf_cpu:.2} |"
    );
    let _ = writeln!(
        report,
        "| CPU, % of one CPU (whole run, start-up included) | {whole_cpu:.2} | |"
    );
    let _ = writeln!(
        report,
        "| RSS at 1 min / 5 min / end, MiB | {:.1} / {:.1} / {:.1} (max {:.1}) | |",
        rss_at(1.0) as f64 / 1024.0,
        rss_at(5.0) as f64 / 1024.0,
        last.1 as f64 / 1024.0,
        max_rss as f64 / 1024.0
    );
    let _ = writeln!(
        report,
        "| stacks / processes kept after window 4 · the middle one · the last (max stacks {max_stacks}) | {kept_row} | |"
    );
    let _ = writeln!(
        report,
        "| windows cut / received | {cut} / {received} | |\n\nThe agent exited with {status}; \
         its last delivery line: `{last_delivery}`.\n"
    );
    let _ = writeln!(
        report,
        "RSS and CPU every minute:\n\n| minute | RSS MiB | agent CPU s | perf CPU s |\n|---:|---:|---:|---:|"
    );
    for point in series.iter().filter(|point| (point.0 as u64) % 60 < 10) {
        let _ = writeln!(
            report,
            "| {:.0} | {:.1} | {:.2} | {:.2} |",
            point.0 / 60.0,
            point.1 as f64 / 1024.0,
            point.2,
            point.3
        );
    }
    print!("{report}");
    if !args.no_write {
        let path = root().join("docs/performance/agent-results.md");
        std::fs::write(&path, report)?;
        println!("wrote {}", path.display());
    }
    if received != cut {
        bail!("{cut} windows cut, {received} received");
    }
    Ok(())
}
