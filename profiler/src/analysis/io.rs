//! The I/O section: the code paths that waited in I/O calls, with the per-file, per-call and
//! per-device tables collected.

use std::collections::HashMap;

use serde::Serialize;

use super::{TOP_STACKS, percent, waiter};
use crate::model::{EventKind, IoDevice, IoFile, IoSyscall, Profile};

/// The I/O section.
#[derive(Clone, Debug, Serialize)]
pub struct IoSummary {
    /// I/O system calls recorded.
    pub calls: u64,
    /// Time in them, µs.
    pub total_us: u64,
    /// Per file, pipe or socket, slowest first.
    pub files: Vec<IoFile>,
    /// Per system call, slowest first.
    pub syscalls: Vec<IoSyscall>,
    /// Block requests the targets issued, per device and operation, slowest first.
    pub devices: Vec<IoDevice>,
    /// Code paths by time in I/O calls.
    pub top_stacks: Vec<IoStack>,
}

/// One code path's I/O time.
#[derive(Clone, Debug, Serialize)]
pub struct IoStack {
    /// Thread name.
    pub thread: String,
    /// The system call (the stack's leaf).
    pub syscall: String,
    /// The code that made the call: the innermost user function outside the C library and
    /// runtime (theirs when nothing else is known).
    pub function: Option<String>,
    /// Its caller.
    pub caller: Option<String>,
    /// The C library or runtime function it called through (`__GI_fdatasync`), if any.
    pub via: Option<String>,
    /// Time, µs.
    pub us: u64,
    /// Calls.
    pub calls: u64,
    /// Share of all I/O time, percent.
    pub percent: f64,
    /// The whole stack, root first, `;`-separated.
    pub stack: String,
}

pub(super) fn io_summary(profile: &Profile) -> IoSummary {
    let samples = profile
        .samples
        .get(&EventKind::Io)
        .map_or(&[][..], Vec::as_slice);
    let total = profile.total(EventKind::Io);
    let mut stacks: HashMap<(String, usize), (u64, u64)> = HashMap::new();
    for sample in samples {
        let entry = stacks
            .entry((sample.thread.clone(), sample.stack))
            .or_default();
        entry.0 += sample.weight;
        entry.1 += sample.count.unwrap_or(1);
    }
    let mut top_stacks: Vec<IoStack> = stacks
        .into_iter()
        .map(|((thread, stack), (us, calls))| {
            let frames: Vec<&crate::model::Frame> = profile.stacks[stack]
                .iter()
                .map(|&f| &profile.frames[f])
                .collect();
            let waiter = waiter(&frames);
            let name = |frame: &crate::model::Frame| frame.function.clone();
            IoStack {
                thread,
                syscall: frames
                    .last()
                    .map(|f| f.function.clone())
                    .unwrap_or_default(),
                function: waiter.function.map(name),
                caller: waiter.caller.map(name),
                via: waiter.via.map(name),
                us,
                calls,
                percent: percent(us, total),
                stack: frames
                    .iter()
                    .map(|frame| frame.label())
                    .collect::<Vec<_>>()
                    .join(";"),
            }
        })
        .collect();
    top_stacks.sort_by(|a, b| {
        b.us.cmp(&a.us)
            .then_with(|| (&a.stack, &a.thread).cmp(&(&b.stack, &b.thread)))
    });
    top_stacks.truncate(TOP_STACKS);
    let stats = profile.io.clone().unwrap_or_default();
    IoSummary {
        calls: stats.syscalls.iter().map(|s| s.count).sum(),
        total_us: total,
        files: stats.files,
        syscalls: stats.syscalls,
        devices: stats.devices,
        top_stacks,
    }
}
