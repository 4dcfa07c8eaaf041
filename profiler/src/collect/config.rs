//! What a run collects and from whom, as plain data: the command line (`cli.rs`) and any other
//! front end build these; collection never sees clap.

use std::{ffi::OsString, path::PathBuf, time::Duration};

use crate::model::EventKind;

/// What to profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetSpec {
    /// Running processes.
    Attach {
        /// Their ids.
        pids: Vec<u32>,
        /// Include descendants.
        children: bool,
    },
    /// The processes of a selection, those running and those started later, and what
    /// they start.
    System(Selection),
    /// A command to launch.
    Launch {
        /// Program and arguments.
        argv: Vec<OsString>,
        /// Include processes it starts.
        children: bool,
        /// Also profile these, for as long as the command runs.
        others: Option<Selection>,
    },
}

/// Processes chosen by what they are rather than by pid, on the whole host: those running
/// and those that start later (`--all`, `--comm`, `--cgroup`).
#[derive(Clone, Debug)]
pub enum Selection {
    /// Every process but the profiler's own.
    All,
    /// Processes whose name (`comm`, as `ps -o comm` shows it) matches.
    Comm(regex::Regex),
    /// Processes in a cgroup (v2) or below it: its path from the hierarchy's root, as
    /// `/proc/PID/cgroup` shows it, e.g. `/system.slice/postgresql.service`.
    Cgroup(String),
}

impl PartialEq for Selection {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Selection::All, Selection::All) => true,
            (Selection::Comm(a), Selection::Comm(b)) => a.as_str() == b.as_str(),
            (Selection::Cgroup(a), Selection::Cgroup(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Selection {}

impl Selection {
    /// Whether only some processes are selected: new processes must be looked at as they
    /// start.
    pub fn is_partial(&self) -> bool {
        !matches!(self, Selection::All)
    }
}

impl TargetSpec {
    /// Whether descendants are profiled.
    pub fn follows_children(&self) -> bool {
        match self {
            TargetSpec::Attach { children, .. } | TargetSpec::Launch { children, .. } => *children,
            TargetSpec::System(_) => true,
        }
    }

    /// The processes selected on the whole host besides any named or launched.
    pub fn selection(&self) -> Option<&Selection> {
        match self {
            TargetSpec::System(selection) => Some(selection),
            TargetSpec::Launch { others, .. } => others.as_ref(),
            TargetSpec::Attach { .. } => None,
        }
    }
}

/// How to profile, independent of the command line.
#[derive(Clone, Debug, PartialEq)]
pub struct RunConfig {
    /// Event kinds, deduplicated.
    pub events: Vec<EventKind>,
    /// Sampling frequency in Hz.
    pub frequency: u64,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Output folder, or the default.
    pub output: Option<PathBuf>,
    /// Forward eBPF logs.
    pub verbose: bool,
    /// Shortest off-CPU period recorded.
    pub min_block: Duration,
    /// Which off-CPU periods and I/O calls get their stacks walked.
    pub stack_sampling: StackSampling,
    /// Bytes between sampled allocations; 0 records every allocation.
    pub alloc_sample_bytes: u64,
    /// Unwind-table capacity in rows when user stacks are walked with tables; `None` for
    /// frame pointers only.
    pub unwind_rows: Option<u32>,
    /// The folder of compiled unwind tables (`None`: every table compiled).
    pub unwind_cache: Option<std::path::PathBuf>,
    /// Budget for the collector's counts, bytes.
    pub max_memory: u64,
    /// Ask HotSpot JVMs for their perf map (JIT method names).
    pub jvm_attach: bool,
    /// Keep the Python interpreter's frames among Python functions.
    pub python_interpreter_frames: bool,
    /// Read the Python frames of CPython processes.
    pub python_frames: bool,
    /// Time run-queue delays at wakeups even where the scheduler accounts them itself.
    pub run_delays_from_wakeups: bool,
}

/// Which off-CPU periods and I/O calls get their stacks walked. Every one is counted and timed
/// exactly; a walked one shorter than the threshold stands for `threshold / its time` of them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StackSampling {
    /// Every stack walked.
    Exact,
    /// A fixed threshold: events shorter are walked with probability (time / threshold).
    Below(Duration),
    /// A threshold the collector adapts during the run so the programs' kernel time stays
    /// under this share of the CPUs' busy time, percent.
    Budget(f64),
}
