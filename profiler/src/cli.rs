//! Command-line interface: clap definitions turned into plain configuration.

use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    collect::config::{RunConfig, Selection, StackSampling},
    model::EventKind,
};

/// Low-overhead eBPF profiler: CPU flamegraphs of a running process or a command.
#[derive(Debug, Parser)]
#[command(name = "profiler", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Profile running processes.
    Attach {
        /// Process ids to profile (all their threads).
        #[arg(
            value_name = "PID",
            required_unless_present = "selection",
            conflicts_with = "selection"
        )]
        pids: Vec<u32>,
        #[command(flatten)]
        select: SelectArgs,
        /// Also profile descendants: those running now and those started during the run.
        #[arg(long)]
        children: bool,
        #[command(flatten)]
        options: ProfileArgs,
    },
    /// Launch a command and profile it from its first instruction.
    Record {
        /// Do not profile processes the command starts (by default they are profiled too).
        #[arg(long)]
        no_children: bool,
        /// Besides the command, profile these processes while it runs (`--all`: the whole
        /// host, as `perf record -a`).
        #[command(flatten)]
        select: SelectArgs,
        #[command(flatten)]
        options: ProfileArgs,
        /// The command and its arguments.
        #[arg(required = true, last = true, value_name = "COMMAND")]
        command: Vec<OsString>,
    },
    /// Profile continuously, sending a profile every `--interval` to an OpenTelemetry
    /// collector (OTLP/HTTP, the development profiles signal). Windows that cannot be sent
    /// wait (in `--spool`, across restarts) and go, in order, when the backend is back. Runs
    /// until SIGTERM or SIGINT, which send or spool the last window, or until every PID named
    /// has exited.
    Agent(AgentArgs),
    /// Check what this kernel and this user can do: BTF, perf events, tracepoints, uprobes,
    /// ring buffers, tracefs, capabilities; one PASS/FAIL line each, with what to do.
    Check,
    /// Regenerate every rendered file of an output folder from its saved profile.
    Report {
        /// Output folder of an earlier run.
        dir: PathBuf,
    },
    /// Write a synthetic profile (for the rendering benchmark).
    #[command(hide = true)]
    Synthesize {
        /// Samples.
        #[arg(long, default_value_t = 1_000_000)]
        samples: usize,
        /// Distinct stacks.
        #[arg(long, default_value_t = 20_000)]
        stacks: usize,
        /// Folder to write `profile.json.gz` into.
        #[arg(short, long, value_name = "DIR")]
        output: PathBuf,
    },
    /// Compare two runs: differential flamegraphs and what grew or shrank, per event kind.
    Diff {
        /// Output folder (or saved profile) of the earlier run.
        before: PathBuf,
        /// Output folder (or saved profile) of the later run.
        after: PathBuf,
        /// Where to write (default: `benchmarks/diff-<target>-<YYYYmmdd-HHMMSS>`).
        #[arg(short, long, value_name = "DIR")]
        output: Option<PathBuf>,
        /// Exit with code 3 when a function's share of any event kind grew by more than this
        /// many percentage points: a regression gate for CI.
        #[arg(long, value_name = "POINTS")]
        fail_above: Option<f64>,
    },
}

#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// Stop after this long (e.g. `30`, `30s`, `500ms`, `2m`); default: until Ctrl-C,
    /// SIGTERM or the target's exit.
    #[arg(short, long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Sampling frequency in Hz.
    #[arg(short = 'F', long, default_value_t = 99, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub frequency: u64,
    /// Output folder (default: `benchmarks/<target>-<YYYYmmdd-HHMMSS>`).
    #[arg(short, long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub collect: CollectArgs,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Processes to profile, with the processes they start.
    #[arg(
        value_name = "PID",
        required_unless_present = "selection",
        conflicts_with = "selection"
    )]
    pub pids: Vec<u32>,
    #[command(flatten)]
    pub select: SelectArgs,
    /// How often a profile is sent: the length of a window (at least 1 s).
    #[arg(long, default_value = "15s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Sampling frequency in Hz: low by default, for continuous use.
    #[arg(short = 'F', long, default_value_t = 19, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub frequency: u64,
    /// An OpenTelemetry collector's OTLP/HTTP address (e.g. `http://localhost:4318`): each
    /// window is POSTed to `URL/v1development/profiles`.
    #[arg(long, value_name = "URL", required_unless_present = "pyroscope")]
    pub otlp: Option<String>,
    /// A Grafana Pyroscope server's address (e.g. `http://localhost:4040`): each window is
    /// pushed to `URL/ingest` as pprof, a request per process, with its labels.
    #[arg(long, value_name = "URL")]
    pub pyroscope: Option<String>,
    /// How requests are compressed.
    #[arg(long, value_enum, default_value_t = Compression::Gzip)]
    pub compression: Compression,
    /// Folder where windows not yet sent wait, and survive a restart of the agent: a
    /// subfolder per backend, `otlp` and `pyroscope`, made 0700 if missing (an existing one
    /// must be yours and writable by you alone); by default they wait in memory.
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// Most the windows waiting to be sent may take, per backend; past it the oldest are
    /// dropped, and counted.
    #[arg(long, value_parser = parse_bytes, default_value = "256MiB", value_name = "BYTES")]
    pub spool_max: u64,
    /// A resource attribute for every profile, `KEY=VALUE` (repeatable): `service.name=NAME`
    /// names the service (by default each process's executable).
    #[arg(long = "label", value_parser = parse_label, value_name = "KEY=VALUE")]
    pub labels: Vec<(String, String)>,
    #[command(flatten)]
    pub collect: CollectArgs,
}

/// Processes chosen by what they are, on the whole host: those running and those that start
/// later, each with the processes it starts.
#[derive(Debug, Args)]
#[group(id = "selection", multiple = false)]
pub struct SelectArgs {
    /// Every process on the host but the profiler's own.
    #[arg(long)]
    pub all: bool,
    /// Processes whose name (`comm`, as `ps -o comm` shows it, at most 15 characters)
    /// matches this regular expression, e.g. `^postgres$`.
    #[arg(long, value_name = "REGEX", value_parser = parse_comm)]
    pub comm: Option<regex::Regex>,
    /// Processes in this cgroup or below it, e.g. `system.slice/postgresql.service` or
    /// `/sys/fs/cgroup/kubepods.slice` (a container is a cgroup).
    #[arg(long, value_name = "PATH", value_parser = parse_cgroup)]
    pub cgroup: Option<String>,
}

impl SelectArgs {
    /// The selection given, if any.
    pub fn selection(self) -> Option<Selection> {
        if self.all {
            Some(Selection::All)
        } else if let Some(comm) = self.comm {
            Some(Selection::Comm(comm))
        } else {
            self.cgroup.map(Selection::Cgroup)
        }
    }
}

fn parse_comm(text: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(text)
        .size_limit(1 << 20)
        .build()
        .map_err(|err| format!("`{text}` is not a regular expression: {err}"))
}

fn parse_cgroup(text: &str) -> Result<String, String> {
    crate::target::selection::cgroup_path(text)
}

/// How the agent's requests are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    /// `Content-Encoding: gzip`.
    Gzip,
    /// Uncompressed.
    None,
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_duration(text)?;
    if interval < Duration::from_secs(1) {
        return Err(format!("`{text}`: give at least 1s"));
    }
    Ok(interval)
}

/// Parses `KEY=VALUE`.
fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!(
            "`{text}`: give KEY=VALUE, e.g. service.name=checkout"
        )),
    }
}

/// What to collect and how: the options `attach`, `record` and `agent` share.
#[derive(Debug, Args)]
pub struct CollectArgs {
    /// Event kinds to collect, comma-separated: cpu, offcpu, io, alloc.
    #[arg(short, long, value_delimiter = ',', default_value = "cpu")]
    pub events: Vec<EventKind>,
    /// With `offcpu`: shortest off-CPU period to record (shorter ones are only counted).
    #[arg(long, value_parser = parse_duration_or_zero, default_value = "1us", value_name = "DURATION")]
    pub min_block: Duration,
    /// With `offcpu` and `io`: the most the programs may cost, as a share of the CPUs' busy
    /// time (their kernel time as the kernel measures it). Walking stacks is most of an
    /// event's cost: over budget, an off-CPU period or I/O call shorter than a threshold gets
    /// its stacks with probability (its time / the threshold) and counts the threshold in
    /// the flamegraph, so stack times stay right on average. Every period and call is still
    /// counted and timed exactly. `100` walks every stack, whatever the cost.
    #[arg(long, default_value_t = DEFAULT_MAX_OVERHEAD, value_parser = parse_percent, value_name = "PERCENT")]
    pub max_overhead: f64,
    /// With `offcpu` and `io`: a fixed stack-sampling threshold instead of the budget's
    /// (`--max-overhead`): shorter periods and calls get their stacks with probability (time
    /// / this). `0` walks every stack.
    #[arg(long, value_parser = parse_duration_or_zero, value_name = "DURATION")]
    pub sample_stacks_below: Option<Duration>,
    /// With `alloc`: record about one allocation per this many bytes allocated, weighted up
    /// (e.g. `512KiB`), for programs that allocate millions of times a second; default: every
    /// allocation.
    #[arg(long, value_parser = parse_bytes, value_name = "BYTES")]
    pub alloc_sample: Option<u64>,
    /// How user stacks are walked: `dwarf` (the objects' `.eh_frame` unwind tables, in the
    /// kernel; frame pointers where an address has none) or `fp` (the kernel's frame-pointer
    /// walker only: no start-up work, but truncated stacks for code without frame pointers).
    #[arg(long, value_enum, default_value_t = Unwind::Dwarf)]
    pub unwind: Unwind,
    /// Budget for the counts the collector keeps (distinct thread × stack keys); past it,
    /// new keys are dropped and counted as lost. While collecting, the stacks and counts
    /// past a sixteenth of it (8 MiB at most) wait in an unnamed file in /var/tmp, so memory
    /// stays flat; the budget holds when they come back at the end. Kernel maps have fixed
    /// sizes (see docs/design.md).
    #[arg(long, value_parser = parse_bytes, default_value = "512MiB", value_name = "BYTES")]
    pub max_memory: u64,
    /// With `--unwind dwarf`: the most rows the unwind tables may hold, 8 bytes each, in
    /// kernel chunks of 1 Mi rows made as the objects profiled need them (rustc's take about
    /// 3 Mi); objects past it are walked by frame pointers, and the summary names them.
    #[arg(long, default_value_t = profiler_common::DEFAULT_UNWIND_ROWS, value_name = "ROWS")]
    pub unwind_rows: u32,
    /// Where compiled unwind tables are kept by build-id, so that later runs on the same
    /// binaries load them instead of compiling them again (default:
    /// /var/cache/profiler/unwind for root, else ~/.cache/profiler/unwind). A private folder
    /// of the profiler's own user (root under sudo), at most 512 MiB: the oldest tables go
    /// first.
    #[arg(long, value_name = "DIR")]
    pub unwind_cache: Option<PathBuf>,
    /// Compile every object's unwind table, without the cache.
    #[arg(long, conflicts_with = "unwind_cache")]
    pub no_unwind_cache: bool,
    /// Do not ask HotSpot JVMs for their perf map. By default the profiler asks each JVM it
    /// profiles, as `jcmd PID Compiler.perfmap` would, to write `/tmp/perf-PID.map` (its
    /// compiled methods' names), at start, every few seconds and at the end (see
    /// docs/runtimes.md).
    #[arg(long)]
    pub no_jvm_attach: bool,
    /// Keep the Python interpreter's own frames between and above Python functions (its
    /// call machinery and bytecode work). By default a Python process's stacks show its
    /// Python functions where the interpreter ran them, as py-spy does, with C extensions
    /// and the native frames below the first Python function kept.
    #[arg(long)]
    pub python_interpreter_frames: bool,
    /// Do not read Python frames: CPython processes are profiled as native code (the
    /// interpreter's evaluation loop), as before the profiler knew them.
    #[arg(long, conflicts_with = "python_interpreter_frames")]
    pub no_python_frames: bool,
    /// Time run-queue delays with a program at every wakeup, as on kernels without the
    /// scheduler's own accounting (for the tests and benchmarks of that path).
    #[arg(long, hide = true)]
    pub run_delays_from_wakeups: bool,
    /// Show the eBPF programs' own log lines and the collector's progress.
    #[arg(short, long)]
    pub verbose: bool,
}

/// Parses a byte count: `4096`, `64K`, `64KiB`, `1M`, `1MiB`, `1G`, `1GiB` (binary units).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("invalid size `{text}` (examples: 4096, 64KiB, 1MiB)"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "k" | "KiB" | "KB" => 1 << 10,
        "M" | "MiB" | "MB" => 1 << 20,
        "G" | "GiB" | "GB" => 1 << 30,
        other => return Err(format!("unknown size unit `{other}` (use K, M or G)")),
    };
    match value.checked_mul(scale) {
        Some(bytes) if bytes > 0 => Ok(bytes),
        _ => Err(format!(
            "size must be positive and fit in 64 bits, got `{text}`"
        )),
    }
}

/// Parses `30`, `30s`, `500ms`, `250us`, `2m`, `1h`, `1.5s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration `{text}` (examples: 30, 30s, 500ms, 250us, 2m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "us" | "µs" => value / 1e6,
        "ns" => value / 1e9,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` (use ns, us, ms, s, m, h or d)"
            ));
        }
    };
    if !(seconds > 0.0 && seconds.is_finite()) {
        return Err(format!("duration must be positive, got `{text}`"));
    }
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|duration| *duration <= MAX_DURATION)
        .ok_or_else(|| format!("duration `{text}` is longer than a year; give at most 365d"))
}

/// Longest duration accepted: far past any run, far short of overflowing a clock.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Like [`parse_duration`], but `0` is allowed (`--min-block 0`: every off-CPU period;
/// `--sample-stacks-below 0`: every stack walked).
fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
    if text
        .trim()
        .trim_end_matches(|c: char| c.is_ascii_alphabetic() || c == 'µ')
        == "0"
    {
        return Ok(Duration::ZERO);
    }
    parse_duration(text)
}

/// Longest `--sample-stacks-below`: the kernel draws a 32-bit random number of nanoseconds.
const MAX_STACK_SAMPLE_BELOW: Duration = Duration::from_secs(4);

/// Default `--max-overhead`, percent: see docs/performance/server-results.md for how it
/// holds on a busy database.
const DEFAULT_MAX_OVERHEAD: f64 = 3.0;

fn parse_percent(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("`{text}` is not a percentage (e.g. 3, 0.5 or 100)"))?;
    if value.is_finite() && value > 0.0 && value <= 100.0 {
        Ok(value)
    } else {
        Err(format!("`{text}`: a percentage above 0, at most 100"))
    }
}

/// How user stacks are walked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Unwind {
    /// Unwind tables compiled from `.eh_frame`/`.debug_frame`, frame pointers as fallback.
    Dwarf,
    /// Frame pointers only (the kernel's walker).
    Fp,
}

impl From<ProfileArgs> for RunConfig {
    fn from(args: ProfileArgs) -> Self {
        args.collect
            .run_config(args.frequency, args.duration, args.output)
    }
}

impl CollectArgs {
    /// The run's configuration, with the options the commands do not share.
    pub fn run_config(
        self,
        frequency: u64,
        duration: Option<Duration>,
        output: Option<PathBuf>,
    ) -> RunConfig {
        let args = self;
        let mut events = args.events;
        events.sort();
        events.dedup();
        RunConfig {
            events,
            frequency,
            duration,
            output,
            verbose: args.verbose,
            min_block: args.min_block,
            stack_sampling: match args.sample_stacks_below {
                Some(below) if below.is_zero() => StackSampling::Exact,
                Some(below) => StackSampling::Below(below.min(MAX_STACK_SAMPLE_BELOW)),
                None if args.max_overhead >= 100.0 => StackSampling::Exact,
                None => StackSampling::Budget(args.max_overhead),
            },
            alloc_sample_bytes: args.alloc_sample.unwrap_or(0),
            unwind_rows: (args.unwind == Unwind::Dwarf && cfg!(target_arch = "x86_64"))
                .then_some(args.unwind_rows.max(1)),
            unwind_cache: match args.no_unwind_cache {
                true => None,
                false => args
                    .unwind_cache
                    .or_else(crate::kernel::table_cache::default_folder),
            },
            max_memory: args.max_memory,
            jvm_attach: !args.no_jvm_attach,
            python_interpreter_frames: args.python_interpreter_frames,
            run_delays_from_wakeups: args.run_delays_from_wakeups,
            python_frames: !args.no_python_frames,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("abc").is_err());
        assert_eq!(parse_duration("365d"), Ok(MAX_DURATION));
        for past_a_year in [
            "366d",
            "9223372036854775807",
            "100000000000000000000",
            "1e400",
        ] {
            assert!(parse_duration(past_a_year).is_err(), "{past_a_year}");
        }
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64KiB"), Ok(65536));
        assert_eq!(parse_bytes("1M"), Ok(1 << 20));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("1TiB").is_err());
        assert!(parse_bytes("99999999999G").is_err());
    }

    #[test]
    fn record_takes_the_command_after_double_dash() {
        let cli =
            Cli::try_parse_from(["profiler", "record", "-F", "999", "--", "make", "-j2"]).unwrap();
        let Command::Record {
            command,
            options,
            no_children,
            ..
        } = cli.command
        else {
            panic!("not record");
        };
        assert_eq!(command, ["make", "-j2"]);
        assert_eq!(options.frequency, 999);
        assert!(!no_children);
    }

    #[test]
    fn rejects_unknown_events_and_bad_frequency() {
        let err =
            Cli::try_parse_from(["profiler", "attach", "1", "--events", "cpu,gpu"]).unwrap_err();
        assert!(
            err.to_string().contains("unknown event kind `gpu`"),
            "{err}"
        );
        assert!(Cli::try_parse_from(["profiler", "attach", "1", "-F", "0"]).is_err());
        assert!(Cli::try_parse_from(["profiler", "attach"]).is_err());
    }

    #[test]
    fn agent_takes_pids_or_all_and_labels() {
        let cli = Cli::try_parse_from([
            "profiler",
            "agent",
            "--all",
            "--otlp",
            "http://localhost:4318",
            "--label",
            "service.name=checkout",
            "--label",
            "env=a=b",
        ])
        .unwrap();
        let Command::Agent(agent) = cli.command else {
            panic!("not agent");
        };
        assert!(agent.select.all && agent.pids.is_empty());
        assert_eq!(agent.frequency, 19);
        assert_eq!(agent.interval, Duration::from_secs(15));
        assert_eq!(
            agent.labels,
            [
                ("service.name".to_owned(), "checkout".to_owned()),
                ("env".to_owned(), "a=b".to_owned())
            ]
        );
        for wrong in [
            &["profiler", "agent", "--otlp", "http://x"][..],
            &["profiler", "agent", "1", "--all", "--otlp", "http://x"],
            &[
                "profiler", "agent", "--all", "--comm", "x", "--otlp", "http://x",
            ],
            &["profiler", "agent", "--comm", "(", "--otlp", "http://x"],
            &[
                "profiler", "agent", "--cgroup", "/a/../b", "--otlp", "http://x",
            ],
            &["profiler", "agent", "1"],
            &[
                "profiler", "agent", "1", "--otlp", "http://x", "--label", "novalue",
            ],
            &[
                "profiler",
                "agent",
                "1",
                "--otlp",
                "http://x",
                "--interval",
                "100ms",
            ],
        ] {
            assert!(Cli::try_parse_from(wrong).is_err(), "{wrong:?}");
        }
    }

    #[test]
    fn selects_by_name_or_cgroup() {
        let selection = |args: &[&str]| {
            let Command::Attach { select, .. } = Cli::try_parse_from(args).unwrap().command else {
                panic!("not attach");
            };
            select.selection()
        };
        assert_eq!(
            selection(&["profiler", "attach", "--cgroup", "a.slice//b.scope"]),
            Some(Selection::Cgroup("/a.slice/b.scope".into()))
        );
        let Some(Selection::Comm(comm)) = selection(&["profiler", "attach", "--comm", "^pg"])
        else {
            panic!("not a name");
        };
        assert!(comm.is_match("pgbench") && !comm.is_match("xpg"));
        assert_eq!(selection(&["profiler", "attach", "1"]), None);
        let cli = Cli::try_parse_from(["profiler", "record", "--all", "--", "sleep", "1"]).unwrap();
        let Command::Record { select, .. } = cli.command else {
            panic!("not record");
        };
        assert_eq!(select.selection(), Some(Selection::All));
    }
}
