//! Processes selected by what they run (`--comm`, `--cgroup`): made targets as they exec a
//! program that matches, and when a look through `/proc` finds one the execs did not tell
//! (renamed, moved into the cgroup, or started while the run was loading).

use super::{collection::Collection, monotonic_ns};
use crate::{
    collect::config::Selection,
    kernel::ProbeError,
    target::{procfs, selection},
};

/// Drains (a second each) between two looks through `/proc`: a look reads a file of every
/// process, which host-wide is most of what an idle run does.
const LOOK_EVERY_DRAINS: u32 = 10;

impl Collection {
    /// A process that is not a target executed a program, now named `comm`: a target from now
    /// on if the selection names it, with what it started meanwhile.
    pub(super) fn adopt_if_selected(&mut self, pid: u32, comm: &str) {
        let Some(selection) = self.selection.as_ref().filter(|s| s.is_partial()) else {
            return;
        };
        let selected = match selection {
            Selection::Comm(pattern) => pattern.is_match(comm),
            _ => selection::selects(selection, pid),
        };
        if !selected {
            return;
        }
        // Between its exec and now it may have started processes: they are its own. One
        // known already was told twice (execs in a row) or found by a look first.
        for pid in std::iter::once(pid).chain(procfs::descendants(&[pid])) {
            if self.processes.live_pids().any(|known| known == pid) {
                continue;
            }
            if let Err(err) = self.adopt(pid) {
                log::debug!("process {pid} selected but not profiled: {err}");
            }
        }
    }

    /// Looks through `/proc` for processes the selection names and the run does not follow.
    pub(super) fn look_for_selected(&mut self) {
        let Some(selection) = self.selection.as_ref().filter(|s| s.is_partial()) else {
            return;
        };
        self.selection_looks = self.selection_looks.wrapping_add(1);
        if !self.selection_looks.is_multiple_of(LOOK_EVERY_DRAINS) {
            return;
        }
        let Ok(targets) = self.probes.targets() else {
            return;
        };
        if let Selection::Cgroup(_) = selection
            && self.selection_only
        {
            // Its processes' children that moved out of it (a container runtime's
            // containers, a login's session) are not its own.
            let left: Vec<u32> = targets
                .iter()
                .copied()
                .filter(|&pid| !selection::selects(selection, pid))
                .collect();
            if let Err(err) = self.probes.remove_targets(&left) {
                log::debug!("processes that left the cgroup stay profiled: {err}");
            }
        }
        let targets: std::collections::HashSet<u32> = targets.into_iter().collect();
        let found: Vec<u32> = selection::running(selection)
            .into_iter()
            .filter(|pid| !targets.contains(pid))
            .collect();
        for pid in found {
            if let Err(err) = self.adopt(pid) {
                log::debug!("process {pid} selected but not profiled: {err}");
            }
        }
    }

    /// Makes a running process a target, with the processes it starts from now on; its
    /// threads are accounted off-CPU from here.
    fn adopt(&mut self, pid: u32) -> Result<(), ProbeError> {
        self.probes.add_target(pid, true)?;
        if self.scheduler {
            let now = monotonic_ns();
            for thread in procfs::threads(pid) {
                let blocked_since = (!thread.runnable).then_some(now);
                self.probes
                    .add_thread(thread.tid, pid, &thread.name, blocked_since)?;
            }
        }
        log::info!(
            "profiling process {pid} ({}): selected",
            procfs::process_name(pid).unwrap_or_default()
        );
        self.watch_process(pid, None);
        // Just started, most likely: the dynamic loader maps its libraries after the exec.
        let now = std::time::Instant::now();
        self.refreshes.extend(
            super::AFTER_EXEC_REFRESH
                .iter()
                .map(|delay| (now + *delay, pid)),
        );
        Ok(())
    }
}
