//! What a sample measures ([`EventKind`]) and why a thread was off-CPU ([`BlockReason`]).

use serde::{Deserialize, Serialize};

/// A kind of event the profiler collects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// On-CPU samples (perf_event CPU clock); weight = samples.
    Cpu,
    /// Off-CPU periods (scheduler switch-out to switch-in); weight = microseconds.
    OffCpu,
    /// I/O system calls; weight = microseconds in the calls.
    Io,
    /// Heap allocations; weight = bytes allocated during the run.
    Alloc,
    /// Heap allocations still live at the end (collected with `Alloc`); weight = bytes.
    InUse,
}

impl EventKind {
    /// Every kind `--events` selects, in presentation order (`InUse` comes with `Alloc`).
    pub const ALL: [EventKind; 4] = [
        EventKind::Cpu,
        EventKind::OffCpu,
        EventKind::Io,
        EventKind::Alloc,
    ];

    /// Name used on the command line and in file names.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Cpu => "cpu",
            EventKind::OffCpu => "offcpu",
            EventKind::Io => "io",
            EventKind::Alloc => "alloc",
            EventKind::InUse => "inuse",
        }
    }

    /// Unit of a sample's weight.
    pub fn unit(self) -> &'static str {
        match self {
            EventKind::Cpu => "samples",
            EventKind::OffCpu | EventKind::Io => "microseconds",
            EventKind::Alloc | EventKind::InUse => "bytes",
        }
    }
}

/// Why a thread was off-CPU, from its state at switch-out and where in the kernel it blocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockReason {
    /// Timed sleep (`nanosleep`, `clock_nanosleep`, timeouts).
    Sleep,
    /// Waiting for I/O: uninterruptible sleep, page cache, block devices, fsync.
    Io,
    /// Waiting for a lock (futex, mutex, condition variable).
    Lock,
    /// Waiting on a pipe.
    Pipe,
    /// Waiting on a socket.
    Socket,
    /// Waiting in poll/select/epoll.
    Poll,
    /// Waiting for a child process.
    ChildWait,
    /// Preempted while runnable: waiting for a CPU.
    Preempted,
    /// A new thread waiting for its first run.
    NewThread,
    /// Off-CPU since before the profiler attached (stack unknown).
    BeforeAttach,
    /// Another interruptible wait.
    OtherWait,
}

impl BlockReason {
    /// Human label.
    pub fn label(self) -> &'static str {
        match self {
            BlockReason::Sleep => "sleep",
            BlockReason::Io => "I/O",
            BlockReason::Lock => "lock/futex",
            BlockReason::Pipe => "pipe wait",
            BlockReason::Socket => "socket wait",
            BlockReason::Poll => "poll/epoll",
            BlockReason::ChildWait => "waiting for a child",
            BlockReason::Preempted => "preempted",
            BlockReason::NewThread => "new thread",
            BlockReason::BeforeAttach => "off-CPU since before attach",
            BlockReason::OtherWait => "other wait",
        }
    }
}

impl std::str::FromStr for EventKind {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .ok_or_else(|| {
                let known: Vec<_> = EventKind::ALL.iter().map(|kind| kind.name()).collect();
                format!("unknown event kind `{name}` (known: {})", known.join(", "))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kind_parses_and_rejects_unknown() {
        assert_eq!("cpu".parse::<EventKind>(), Ok(EventKind::Cpu));
        assert_eq!("offcpu".parse::<EventKind>(), Ok(EventKind::OffCpu));
        let err = "gpu".parse::<EventKind>().unwrap_err();
        assert!(err.contains("unknown event kind `gpu`"), "{err}");
    }
}
