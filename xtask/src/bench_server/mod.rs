//! `bench-server`: what profiling costs a busy database. PostgreSQL from Debian's packages,
//! a cluster in a temporary folder run as the `postgres` account, `pgbench -c 8 -j 2` for a
//! fixed time; interleaved rounds of pgbench alone and under each tool, throughput (tps)
//! compared with the round's own baseline.

use std::{
    collections::HashMap,
    fmt::Write as _,
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{profiler_bin, report, root};

mod startup;

#[derive(clap::Args)]
pub struct ServerBenchArgs {
    /// Rounds (every configuration once per round, in turn).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds of pgbench per configuration.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Print the results without writing docs/performance/server-results.md.
    #[arg(long)]
    no_write: bool,
}

/// What watches PostgreSQL while pgbench runs.
#[derive(Clone, Copy)]
enum Watcher {
    Nothing,
    /// `profiler attach --children -e EVENTS` with these extra options.
    Profiler(&'static str, &'static [&'static str]),
    /// `profiler attach -e EVENTS` on a process that sleeps throughout: every hook in place,
    /// no event of a target. What the hooks' presence costs the machine's other processes.
    ProfilerElsewhere(&'static str),
    /// `perf record -g -a -F 99` (system-wide: `-p` does not follow backends forked later).
    Perf,
    /// A bpftrace script, given the postmaster's pid as `$1`: its label and text.
    Bpftrace(&'static str, &'static str),
}

impl Watcher {
    fn label(self) -> String {
        match self {
            Watcher::Nothing => "pgbench alone".to_owned(),
            Watcher::Profiler(events, []) => format!("profiler `-e {events}`"),
            Watcher::Profiler(events, extra) => {
                format!("profiler `-e {events} {}`", extra.join(" "))
            }
            Watcher::ProfilerElsewhere(events) => {
                format!("profiler `-e {events}` on a sleeping process")
            }
            Watcher::Perf => "perf `record -g -a`".to_owned(),
            Watcher::Bpftrace(label, _) => format!("bpftrace {label}"),
        }
    }
}

const WATCHERS: [Watcher; 11] = [
    Watcher::Nothing,
    // The default: stacks sampled within the overhead budget (`--max-overhead`).
    Watcher::Profiler(EVERY_KIND, &[]),
    // Every stack walked, whatever the cost.
    Watcher::Profiler(EVERY_KIND, &["--max-overhead", "100"]),
    Watcher::Perf,
    Watcher::Bpftrace("off-CPU stacks", BPFTRACE_OFFCPU),
    // Where the default's cost is: each kind alone.
    Watcher::Profiler("cpu", &[]),
    Watcher::Profiler("offcpu", &[]),
    Watcher::Profiler("io", &[]),
    // The floor under all of it: the hooks with nothing of PostgreSQL's to account.
    Watcher::ProfilerElsewhere(EVERY_KIND),
    // The floor of any tracer on the same hooks, and the least an exact one does there.
    Watcher::Bpftrace("empty programs on the same hooks", BPFTRACE_HOOKS),
    Watcher::Bpftrace("exact totals alone", BPFTRACE_EXACT),
];

const EVERY_KIND: &str = "cpu,offcpu,io";
/// bpftrace counting kernel and user stacks at every switch-out of a `postgres` process.
const BPFTRACE_OFFCPU: &str =
    "tracepoint:sched:sched_switch /comm == \"postgres\"/ { @[kstack, ustack] = count(); }";
/// Programs that do nothing, on the tracepoints exact I/O and off-CPU accounting needs
/// (bpftrace 0.17 has no raw or BTF tracepoints: these also build each event's record).
const BPFTRACE_HOOKS: &str = "tracepoint:raw_syscalls:sys_enter /pid == $1/ {} \
     tracepoint:raw_syscalls:sys_exit /pid == $1/ {} \
     tracepoint:sched:sched_switch /pid == $1/ {}";
/// The least of what the default keeps exact: every I/O call of the postmaster's children
/// counted and timed per thread and call, every off-CPU period timed per thread (no file, no
/// histogram, no stack, no run-queue delay). The calls are the busy ones of pgbench's load,
/// by their x86-64 numbers: read, write, pread64, pwrite64, sendto, recvfrom, sendmsg, recvmsg,
/// fsync, fdatasync, sync_file_range.
const BPFTRACE_EXACT: &str = "
tracepoint:raw_syscalls:sys_enter
/(pid == $1 || curtask->real_parent->tgid == $1) &&
 (args->id == 0 || args->id == 1 || args->id == 17 || args->id == 18 || args->id == 44 ||
  args->id == 45 || args->id == 46 || args->id == 47 || args->id == 74 || args->id == 75 ||
  args->id == 277)/
{ @start[tid] = nsecs; }
tracepoint:raw_syscalls:sys_exit /pid == $1 || curtask->real_parent->tgid == $1/ {
  $start = @start[tid];
  if ($start) {
    @calls[tid, args->id] = count(); @time[tid, args->id] = sum(nsecs - $start);
    delete(@start[tid]);
  }
}
tracepoint:sched:sched_switch {
  if (pid == $1 || curtask->real_parent->tgid == $1) { @off[args->prev_pid] = nsecs; }
  $off = @off[args->next_pid];
  if ($off) {
    @periods[args->next_pid] = count(); @waited[args->next_pid] = sum(nsecs - $off);
    delete(@off[args->next_pid]);
  }
}";
/// `WATCHERS` indices of the default and of the exact profiler run.
const DEFAULT: usize = 1;
const EXACT: usize = 2;

/// A cluster in a temporary folder, stopped when dropped (then the folder is removed).
struct Cluster {
    bin: PathBuf,
    root: PathBuf,
    user: (u32, u32),
    port: u16,
    _folder: tempfile::TempDir,
}

fn postgres_bin() -> anyhow::Result<PathBuf> {
    let newest = || {
        std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let version: u32 = entry.file_name().to_str()?.parse().ok()?;
                let bin = entry.path().join("bin");
                bin.join("pgbench").exists().then_some((version, bin))
            })
            .max()
            .map(|(_, bin)| bin)
    };
    if let Some(bin) = newest() {
        return Ok(bin);
    }
    eprintln!("bench: installing postgresql");
    crate::run(Command::new("apt-get").args(["install", "-y", "-qq", "postgresql"]))?;
    newest().context("no PostgreSQL under /usr/lib/postgresql after installing it")
}

fn postgres_user() -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    let fields: Vec<&str> = passwd
        .lines()
        .find(|line| line.starts_with("postgres:"))
        .context("no postgres account (the postgresql package creates it)")?
        .split(':')
        .collect();
    Ok((fields[2].parse()?, fields[3].parse()?))
}

impl Cluster {
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command
            .uid(self.user.0)
            .gid(self.user.1)
            .current_dir(&self.root)
            .env_remove("PGDATA");
        command
    }

    fn start(bin: PathBuf) -> anyhow::Result<Self> {
        // A new folder of root's in /var/tmp (root's, sticky, and on disk, not tmpfs: the WAL's
        // fdatasync must reach a device), not in the checkout: chowned by path, it must be a
        // folder nobody else can swap for a link between its creation and the chown.
        let folder = tempfile::Builder::new()
            .prefix("profiler-bench-server-")
            .tempdir_in("/var/tmp")?;
        let root = folder.path().to_path_buf();
        std::fs::create_dir(root.join("socket"))?;
        let user = postgres_user()?;
        // The inner folder first, while the outer one is still root's alone.
        for path in [root.join("socket"), root.clone()] {
            std::os::unix::fs::chown(&path, Some(user.0), Some(user.1))?;
        }
        let cluster = Cluster {
            bin,
            root,
            user,
            port: 55000 + (std::process::id() % 1000) as u16,
            _folder: folder,
        };
        crate::run(
            cluster
                .command("initdb")
                .args(["-A", "trust", "-U", "postgres", "-D"])
                .arg(cluster.root.join("data"))
                .stdout(Stdio::null()),
        )?;
        let options = format!(
            "-k {} -p {} -c listen_addresses=''",
            cluster.root.join("socket").display(),
            cluster.port
        );
        crate::run(
            cluster
                .command("pg_ctl")
                .arg("-D")
                .arg(cluster.root.join("data"))
                .args(["-o", &options, "-l"])
                .arg(cluster.root.join("log"))
                .args(["-w", "start"])
                .stdout(Stdio::null()),
        )?;
        crate::run(
            cluster
                .pgbench()
                .args(["-i", "-q", "-s", "10", "postgres"])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        Ok(cluster)
    }

    fn pgbench(&self) -> Command {
        let mut command = self.command("pgbench");
        command
            .arg("-h")
            .arg(self.root.join("socket"))
            .args(["-p", &self.port.to_string()]);
        command
    }

    fn postmaster_pid(&self) -> anyhow::Result<u32> {
        Ok(
            std::fs::read_to_string(self.root.join("data/postmaster.pid"))?
                .lines()
                .next()
                .context("empty postmaster.pid")?
                .parse()?,
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.root.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// A watcher running, and the process it watches when that is not PostgreSQL.
struct Running {
    watcher: Child,
    sleeper: Option<Child>,
    label: String,
}

/// Starts `watcher` on the cluster, writing into `out` (a profiler) or `scratch`, and gives
/// it time to attach; `None` for pgbench alone.
fn start_watcher(
    watcher: Watcher,
    cluster: &Cluster,
    scratch: &Path,
    out: &Path,
) -> anyhow::Result<Option<Running>> {
    let running = spawn_watcher(watcher, cluster, scratch, out)?;
    // Attached (the profiler's programs verified, perf's and bpftrace's probes in place)
    // before the measured load starts.
    if running.is_some() {
        std::thread::sleep(ATTACHING);
    }
    Ok(running)
}

/// What a watcher is given to attach before the load starts.
const ATTACHING: Duration = Duration::from_secs(3);

/// Starts `watcher` on the cluster, as [`start_watcher`], without waiting.
fn spawn_watcher(
    watcher: Watcher,
    cluster: &Cluster,
    scratch: &Path,
    out: &Path,
) -> anyhow::Result<Option<Running>> {
    let mut sleeper = None;
    let mut command = match watcher {
        Watcher::Nothing => return Ok(None),
        Watcher::Profiler(events, extra) => {
            let _ = std::fs::remove_dir_all(out);
            let mut command = Command::new(profiler_bin());
            command
                .args(["attach", "--children", "-e", events])
                .args(extra)
                .arg("-o")
                .arg(out)
                .arg(cluster.postmaster_pid()?.to_string());
            command
        }
        Watcher::ProfilerElsewhere(events) => {
            let _ = std::fs::remove_dir_all(out);
            let sleep = Command::new("sleep")
                .arg("100000")
                .spawn()
                .context("starting sleep")?;
            let mut command = Command::new(profiler_bin());
            command
                .args(["attach", "-e", events, "-o"])
                .arg(out)
                .arg(sleep.id().to_string());
            sleeper = Some(sleep);
            command
        }
        Watcher::Perf => {
            let mut command = Command::new("perf");
            command
                .args(["record", "-q", "-g", "-a", "-F", "99", "-o"])
                .arg(scratch.join("perf.data"));
            command
        }
        Watcher::Bpftrace(_, script) => {
            let mut command = Command::new("bpftrace");
            command
                .arg("-e")
                .arg(script)
                .arg(cluster.postmaster_pid()?.to_string());
            command
        }
    };
    let child = match command.stdout(Stdio::null()).stderr(Stdio::null()).spawn() {
        Ok(child) => child,
        Err(err) => {
            if let Some(mut sleeper) = sleeper {
                let _ = sleeper.kill();
                let _ = sleeper.wait();
            }
            return Err(err).with_context(|| format!("starting {}", watcher.label()));
        }
    };
    Ok(Some(Running {
        watcher: child,
        sleeper,
        label: watcher.label(),
    }))
}

/// Stops a watcher the way a user would (Ctrl-C) and waits for it.
fn stop_watcher(mut running: Running) -> anyhow::Result<()> {
    let status = crate::bench::interrupt_and_wait(&mut running.watcher, &running.label);
    if let Some(mut sleeper) = running.sleeper {
        let _ = sleeper.kill();
        let _ = sleeper.wait();
    }
    let Some(status) = status else {
        return Ok(());
    };
    // perf ends by the signal itself, the others exit 0 or 130.
    let interrupted = status.signal() == Some(libc::SIGINT) || status.code() == Some(130);
    if !status.success() && !interrupted {
        bail!("the watcher failed: {status}");
    }
    Ok(())
}

/// What a profiler run wrote: its summary, and what the same-story check reads of its
/// flamegraph.
struct StoryRun {
    summary: serde_json::Value,
    /// Each I/O call's share of the I/O flamegraph (io.folded), percent: with stack sampling,
    /// an estimate, against the call's exact share in `summary`.
    io_stack_shares: HashMap<String, f64>,
}

/// What one pgbench run under a watcher gave.
struct Measured {
    tps: f64,
    /// The machine's busy CPU time (all CPUs, every process) while pgbench ran, per
    /// transaction, µs: what the work cost, the watcher's share included.
    cpu_per_transaction_us: f64,
    /// What the profiler wrote, if the watcher was the profiler and it wrote its summary.
    story: Option<StoryRun>,
}

/// The machine's busy CPU time so far (all CPUs: user, nice, system, interrupts; not the time
/// the hypervisor gave other guests), seconds, from /proc/stat.
fn busy_cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .context("empty /proc/stat")?
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    // user nice system idle iowait irq softirq steal
    let busy: u64 = [0, 1, 2, 5, 6]
        .iter()
        .filter_map(|&field| ticks.get(field))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(busy as f64 / hz)
}

/// Runs pgbench for `seconds` under `watcher`, at `rate` transactions a second if given.
fn measure(
    watcher: Watcher,
    cluster: &Cluster,
    scratch: &Path,
    seconds: u64,
    rate: Option<u64>,
) -> anyhow::Result<Measured> {
    let out = scratch.join("profile");
    let running = start_watcher(watcher, cluster, scratch, &out)?;
    let pgbench = run_pgbench(cluster, seconds, rate);
    // Stopped whether pgbench ran or not: a failed run leaves no watcher behind.
    if let Some(running) = running {
        stop_watcher(running)?;
    }
    let (report, busy) = pgbench?;
    let tps = tps(&report)?;
    let transactions = transactions(&report)?;
    let story = match watcher {
        Watcher::Profiler(..) | Watcher::ProfilerElsewhere(_) => read_story(&out),
        _ => None,
    };
    Ok(Measured {
        tps,
        cpu_per_transaction_us: busy * 1e6 / transactions.max(1) as f64,
        story,
    })
}

/// Runs pgbench for `seconds`, at `rate` transactions a second if given: its report, and the
/// machine's busy CPU seconds meanwhile.
fn run_pgbench(
    cluster: &Cluster,
    seconds: u64,
    rate: Option<u64>,
) -> anyhow::Result<(String, f64)> {
    let mut pgbench = cluster.pgbench();
    pgbench.args(["-c", "8", "-j", "2", "-T", &seconds.to_string()]);
    if let Some(rate) = rate {
        pgbench.args(["-R", &rate.to_string()]);
    }
    let busy_before = busy_cpu_seconds()?;
    let report = pgbench
        .arg("postgres")
        .stderr(Stdio::null())
        .output()
        .context("running pgbench")?;
    let busy = busy_cpu_seconds()? - busy_before;
    Ok((String::from_utf8_lossy(&report.stdout).into_owned(), busy))
}

/// A profiler's results in `out`, if it wrote its summary.
fn read_story(out: &Path) -> Option<StoryRun> {
    let summary = std::fs::read_to_string(out.join("summary.json"))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())?;
    let io_stack_shares = std::fs::read_to_string(out.join("io.folded"))
        .map(|folded| stack_shares_by_leaf(&folded))
        .unwrap_or_default();
    Some(StoryRun {
        summary,
        io_stack_shares,
    })
}

/// The default and the exact profiler attached together to the same server through one
/// pgbench run at `rate`: they see the same waits and calls, so what differs between their
/// profiles is the sampling alone, not what the server did (which consecutive runs also
/// differ by: how long its background processes slept, say). `(exact, sampled)`.
fn measure_side_by_side(
    cluster: &Cluster,
    scratch: &Path,
    seconds: u64,
    rate: u64,
) -> anyhow::Result<(StoryRun, StoryRun)> {
    let outs = [scratch.join("sampled"), scratch.join("exact")];
    let mut running = Vec::new();
    // The sampled one first: programs on one tracepoint run in the order they were attached,
    // so each profiler's call times include what the other's programs run between its entry
    // and its exit: the exact one's exit, which walks every stack, made the sampled one's
    // `recvfrom`s three times as long; the sampled one's exit adds a fraction of a µs to the
    // exact one's calls. Given a second to attach, so that the order holds.
    let mut measured = Ok(());
    for (index, out) in [DEFAULT, EXACT].into_iter().zip(&outs) {
        match spawn_watcher(WATCHERS[index], cluster, scratch, out) {
            Ok(watcher) => running.extend(watcher),
            Err(err) => {
                measured = Err(err);
                break;
            }
        }
        std::thread::sleep(SECOND_ATTACH_AFTER);
    }
    if measured.is_ok() {
        std::thread::sleep(ATTACHING);
        measured = run_pgbench(cluster, seconds, Some(rate)).map(drop);
    }
    // Both told to stop at once, so that their runs end together; stopped on a failure too.
    for watcher in &running {
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(watcher.watcher.id() as i32, libc::SIGINT) };
    }
    for watcher in running {
        stop_watcher(watcher)?;
    }
    measured?;
    let [sampled, exact] = outs.map(|out| {
        read_story(&out).with_context(|| format!("no summary.json in {}", out.display()))
    });
    Ok((exact?, sampled?))
}

/// How long after the sampled profiler the exact one is started, side by side (the default
/// attaches within a second on this server).
const SECOND_ATTACH_AFTER: Duration = Duration::from_secs(1);

/// Each leaf function's share of a folded flamegraph's weight, percent; a kernel frame's
/// `_[k]` left out (the leaf of an I/O stack is its system call).
fn stack_shares_by_leaf(folded: &str) -> HashMap<String, f64> {
    let mut weights: HashMap<String, f64> = HashMap::new();
    for line in folded.lines() {
        let Some((stack, weight)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(weight) = weight.parse::<f64>() else {
            continue;
        };
        let leaf = stack.rsplit(';').next().unwrap_or(stack);
        *weights
            .entry(leaf.trim_end_matches("_[k]").to_owned())
            .or_default() += weight;
    }
    let total: f64 = weights.values().sum();
    weights
        .values_mut()
        .for_each(|weight| *weight *= 100.0 / total.max(1.0));
    weights
}

/// Each I/O call's share of I/O time in the exact run and in the sampled one, both from the
/// calls' exact totals, and in the sampled run's flamegraph: tells the sampling's error (the
/// last two columns) from a difference in what the server did (the first two).
fn calls_table(exact: &StoryRun, sampled: &StoryRun) -> String {
    let shares = |summary: &serde_json::Value| -> Vec<(String, f64)> {
        let calls = summary["io"]["syscalls"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let total: f64 = calls
            .iter()
            .filter_map(|call| call["total_us"].as_f64())
            .sum();
        calls
            .iter()
            .filter_map(|call| {
                Some((
                    call["name"].as_str()?.to_owned(),
                    100.0 * call["total_us"].as_f64()? / total.max(1.0),
                ))
            })
            .collect()
    };
    let sampled_exact = shares(&sampled.summary);
    let mut table = "| I/O call (exact run's top 5) | exact run | sampled run | sampled run's \
                     stacks | sampling error |\n|---|---:|---:|---:|---:|\n"
        .to_owned();
    let mut largest: f64 = 0.0;
    for (name, exact_share) in shares(&exact.summary).into_iter().take(5) {
        let sampled_share = sampled_exact
            .iter()
            .find(|(other, _)| *other == name)
            .map_or(0.0, |(_, share)| *share);
        let estimate = sampled.io_stack_shares.get(&name).copied().unwrap_or(0.0);
        let error = (estimate - sampled_share).abs();
        largest = largest.max(error);
        let _ = writeln!(
            table,
            "| {name} | {exact_share:.1}% | {sampled_share:.1}% | {estimate:.1}% | {error:.1} |"
        );
    }
    let _ = writeln!(table, "\nLargest sampling error: {largest:.1} points.\n");
    table
}

/// What a profiler run said of its stack sampling (summary.json), in a few words.
fn own_account(watcher: Watcher, summary: Option<&serde_json::Value>) -> String {
    let Some(summary) = summary else {
        return "no summary.json".to_owned();
    };
    let sampling = &summary["quality"]["stack_sampling"];
    if sampling.is_null() {
        return match watcher {
            Watcher::Profiler(events, _) if events.contains("offcpu") || events.contains("io") => {
                "every stack walked".to_owned()
            }
            _ => String::new(),
        };
    }
    let kinds: Vec<String> = ["offcpu", "io"]
        .into_iter()
        .filter_map(|name| {
            let events = &sampling[name];
            Some(format!(
                "{name} {} of {} walked",
                events["walked"].as_u64()?,
                events["events"].as_u64()?
            ))
        })
        .collect();
    format!(
        "{}; threshold up to {} µs; programs' measured cost {:.1}% of busy CPU time",
        kinds.join(", "),
        sampling["max_below_us"],
        sampling["measured_overhead_percent"]
            .as_f64()
            .unwrap_or(f64::NAN)
    )
}

/// The exact run's top 5 stacks of `kind` (`offcpu`, `io`) beside their share in the sampled
/// run, as a Markdown table, with the largest difference.
fn story_table(exact: &serde_json::Value, sampled: &serde_json::Value, kind: &str) -> String {
    let shares = |summary: &serde_json::Value| -> Vec<(String, String, f64)> {
        summary[kind]["top_stacks"]
            .as_array()
            .map(|stacks| {
                stacks
                    .iter()
                    .map(|stack| {
                        // What a reader takes from a line: who waited, called by whom, why.
                        // Not the whole stack: a sampled period's kernel stack is read from
                        // the sleeping task, without the scheduler's own (`__sched`) frames.
                        let key = format!(
                            "{}|{}|{}|{}|{}",
                            stack["thread"],
                            stack["function"],
                            stack["caller"],
                            stack["reason"],
                            stack["syscall"]
                        );
                        let label = match stack["function"].as_str() {
                            Some(function) => format!(
                                "{function} ← {} ({})",
                                stack["caller"].as_str().unwrap_or("?"),
                                stack["reason"]
                                    .as_str()
                                    .or(stack["syscall"].as_str())
                                    .unwrap_or("")
                            ),
                            None => stack["reason"].as_str().unwrap_or("?").to_owned(),
                        };
                        (key, label, stack["percent"].as_f64().unwrap_or(0.0))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    // Lines of one story merged (a stack string may differ where the story does not).
    let merge = |lines: Vec<(String, String, f64)>| {
        let mut merged: Vec<(String, String, f64)> = Vec::new();
        for (key, label, share) in lines {
            match merged.iter_mut().find(|(other, _, _)| *other == key) {
                Some(line) => line.2 += share,
                None => merged.push((key, label, share)),
            }
        }
        merged.sort_by(|a, b| b.2.total_cmp(&a.2));
        merged
    };
    let sampled = merge(shares(sampled));
    let mut table = format!(
        "| {kind} stack (exact run's top 5) | exact | sampled | difference |\n|---|---:|---:|---:|\n"
    );
    let mut largest: f64 = 0.0;
    for (key, label, exact_share) in merge(shares(exact)).into_iter().take(5) {
        let sampled_share = sampled
            .iter()
            .find(|(other, _, _)| *other == key)
            .map_or(0.0, |(_, _, share)| *share);
        let difference = (sampled_share - exact_share).abs();
        largest = largest.max(difference);
        let _ = writeln!(
            table,
            "| {label} | {exact_share:.1}% | {sampled_share:.1}% | {difference:.1} |"
        );
    }
    let _ = writeln!(table, "\nLargest difference: {largest:.1} points.\n");
    table
}

/// How many transactions pgbench made, from its report.
fn transactions(report: &str) -> anyhow::Result<u64> {
    const LINE: &str = "number of transactions actually processed: ";
    report
        .lines()
        .find_map(|line| line.strip_prefix(LINE))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|number| number.parse().ok())
        .with_context(|| format!("no transaction count in pgbench's report: {report}"))
}

/// pgbench's throughput, from its report.
fn tps(report: &str) -> anyhow::Result<f64> {
    report
        .lines()
        .find(|line| line.starts_with("tps = "))
        .and_then(|line| line["tps = ".len()..].split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .with_context(|| format!("no tps in pgbench's report: {report}"))
}

pub fn server(args: &ServerBenchArgs) -> anyhow::Result<()> {
    crate::bench::ensure_tools()?;
    let cluster = Cluster::start(postgres_bin()?)?;
    let scratch = root().join("target/bench-server-out");
    std::fs::create_dir_all(&scratch)?;
    let mut tps_by_watcher: Vec<Vec<f64>> = vec![Vec::new(); WATCHERS.len()];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); WATCHERS.len()];
    let mut accounts: Vec<String> = vec![String::new(); WATCHERS.len()];
    for round in 0..args.runs {
        let mut baseline = None;
        for (index, watcher) in WATCHERS.iter().enumerate() {
            let measured = measure(*watcher, &cluster, &scratch, args.seconds, None)?;
            let tps = measured.tps;
            if let Watcher::Profiler(..) | Watcher::ProfilerElsewhere(_) = watcher {
                accounts[index] = own_account(
                    *watcher,
                    measured.story.as_ref().map(|story| &story.summary),
                );
            }
            let base = *baseline.get_or_insert(tps);
            eprintln!(
                "bench: round {}/{} {}: {tps:.0} tps ({:.1}% of pgbench alone)",
                round + 1,
                args.runs,
                watcher.label(),
                100.0 * tps / base
            );
            tps_by_watcher[index].push(tps);
            ratios[index].push(100.0 * tps / base);
        }
    }
    // Throughput on this shared VM moves by tens of percent from one run to the next. The
    // machine's CPU time per transaction at a rate every configuration sustains (two fifths
    // of the slowest round alone) says what the work costs without the clients' pace in it;
    // it moves from round to round too (see docs/performance), if less.
    let rate = ((tps_by_watcher[0]
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        * 0.4) as u64)
        .max(1);
    let mut cpu_by_watcher: Vec<Vec<f64>> = vec![Vec::new(); WATCHERS.len()];
    let mut added_cpu: Vec<Vec<f64>> = vec![Vec::new(); WATCHERS.len()];
    // The exact and default runs of the last two rounds, for the same-story check.
    let mut story_runs: Vec<(usize, StoryRun)> = Vec::new();
    for round in 0..args.runs {
        let mut baseline = None;
        for (index, watcher) in WATCHERS.iter().enumerate() {
            let measured = measure(*watcher, &cluster, &scratch, args.seconds, Some(rate))?;
            let cpu = measured.cpu_per_transaction_us;
            let base = *baseline.get_or_insert(cpu);
            eprintln!(
                "bench: at {rate} tps, round {}/{} {}: {:.0} tps, {cpu:.0} µs of CPU a \
                 transaction ({:+.1}%)",
                round + 1,
                args.runs,
                watcher.label(),
                measured.tps,
                100.0 * (cpu / base - 1.0)
            );
            cpu_by_watcher[index].push(cpu);
            added_cpu[index].push(100.0 * (cpu / base - 1.0));
            if (index == EXACT || index == DEFAULT)
                && round + 2 >= args.runs
                && let Some(story) = measured.story
            {
                story_runs.push((index, story));
            }
        }
    }
    let side_by_side = measure_side_by_side(&cluster, &scratch, args.seconds, rate)?;
    let startup = startup::startup_under_load(&cluster, &scratch, args.runs)?;
    drop(cluster);
    let mut table = format!(
        "| configuration | tps | % of pgbench alone in the same round | CPU a transaction at \
         {rate} tps | added CPU a transaction, same round | the profiler's own account (last \
         full-speed round) |\n|---|---:|---:|---:|---:|---|\n",
    );
    for (index, watcher) in WATCHERS.iter().enumerate() {
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} | {} | {} |",
            watcher.label(),
            report::median_and_range(&tps_by_watcher[index], 0, ""),
            if index == 0 {
                "—".to_owned()
            } else {
                report::median_and_range(&ratios[index], 1, "%")
            },
            report::median_and_range(&cpu_by_watcher[index], 0, " µs"),
            if index == 0 {
                "—".to_owned()
            } else {
                report::median_and_range(&added_cpu[index], 1, "%")
            },
            accounts[index],
        );
    }
    // The kept runs of `index`, the last two rounds' (one with a single round).
    let runs = |index: usize| -> Vec<&StoryRun> {
        story_runs
            .iter()
            .filter(|(of, _)| *of == index)
            .map(|(_, run)| run)
            .collect()
    };
    let (exact_beside, sampled_beside) = &side_by_side;
    let mut story = format!(
        "\n\nThe same story, sampled and exact, at {rate} tps (at full speed the exact run \
         serves fewer transactions, and its backends wait differently for real): the exact \
         run's top blocking and I/O stacks, with their share of off-CPU or I/O time in each \
         run.\n\n\
         Side by side: the default and the exact profiler attached together, through one more \
         pgbench run (the sampled one attached a second before the other). They watch the \
         same waits and calls, so the differences are the sampling's, but for that second and \
         for each one's programs timed into the other's calls: the sampled one's, attached \
         first, add a fraction of a µs to each call the exact one times. Each I/O call's exact \
         share of the time in both, beside the sampled run's flamegraph, gives the sampling's \
         error directly.\n\n{}\n{}\n{}",
        story_table(&exact_beside.summary, &sampled_beside.summary, "offcpu"),
        story_table(&exact_beside.summary, &sampled_beside.summary, "io"),
        calls_table(exact_beside, sampled_beside),
    );
    let (exact_runs, sampled_runs) = (runs(EXACT), runs(DEFAULT));
    if let (Some(exact), Some(sampled)) = (exact_runs.last(), sampled_runs.last()) {
        let _ = write!(
            story,
            "\nOne after the other, in the last round: these also differ by what the server \
             did in each run (how long its background processes slept, how its backends \
             waited: walking every stack costs the exact run CPU time).\n\n{}\n{}\n{}",
            story_table(&exact.summary, &sampled.summary, "offcpu"),
            story_table(&exact.summary, &sampled.summary, "io"),
            calls_table(exact, sampled),
        );
    }
    if let [exact, exact_again] = exact_runs[..] {
        let _ = write!(
            story,
            "\nExact against exact, the last two rounds (the last round's in the second \
             column): what two runs of the same configuration differ by.\n\n{}\n{}",
            story_table(&exact.summary, &exact_again.summary, "offcpu"),
            story_table(&exact.summary, &exact_again.summary, "io"),
        );
    }
    let page = format!(
        "# A busy database: latest results\n\n\
         Generated by `cargo xtask bench-server --runs {} --seconds {}` on {}. \
         Method: see [README.md](README.md#a-busy-database-bench-server). PostgreSQL \
         (Debian's), `pgbench -s 10` data, `pgbench -c 8 -j 2 -T {}`; each configuration once \
         per round, in turn; median and range of {} rounds at full speed, then as many at \
         `-R {rate}` for the machine's busy CPU time per transaction (all processes, the \
         tool's own included).\n\n{table}{startup}{story}\n",
        args.runs,
        args.seconds,
        report::machine(),
        args.seconds,
        args.runs,
    );
    report::publish("server-results.md", &page, !args.no_write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_stack_shares_are_by_system_call() {
        let folded = "postgres;main;XLogFlush;fdatasync_[k] 300\n\
                      postgres;main;secure_write;sendto_[k] 100\n\
                      postgres;other;XLogWrite;fdatasync_[k] 500\n\
                      not a line\n\
                      postgres;pread64_[k] 100\n";
        let shares = stack_shares_by_leaf(folded);
        assert_eq!(shares.len(), 3, "{shares:?}");
        assert_eq!(shares["fdatasync"], 80.0);
        assert_eq!(shares["sendto"], 10.0);
        assert_eq!(shares["pread64"], 10.0);
    }
}
