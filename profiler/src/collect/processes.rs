//! What the processes a run follows bring: their notifications handled, their memory maps
//! read, the kernel told where their Python frames are, and those that exited forgotten.

use std::time::Instant;

use profiler_common::{PythonProcess, process_event};

use super::{
    AFTER_EXEC_REFRESH,
    collection::{Collection, comm_string},
};
use crate::{
    kernel::ProbeError,
    target::{
        procfs,
        python::{self, Interpreter},
    },
    text::error_chain,
};

impl Collection {
    pub(super) fn watch_process(&mut self, pid: u32, comm: Option<String>) {
        if let Err(err) = self.read_memory_map(pid)
            && err.kind() == std::io::ErrorKind::PermissionDenied
        {
            // A descendant that changed user (a setuid program): its samples are kept, its
            // frames stay addresses. Selected host-wide, such processes are the system's own
            // and not news.
            let level = match self.selection {
                Some(_) => log::Level::Debug,
                None => log::Level::Warn,
            };
            log::log!(
                level,
                "process {pid}: its memory map is closed to the profiler (it changed user); its \
                 stacks will not be symbolized (CAP_SYS_PTRACE would allow it)"
            );
        }
        self.processes.note(pid, comm);
        if self.io_enabled {
            // Descriptors it inherited or opened before the programs saw it.
            self.files.scan(&procfs::proc_root(), pid);
        }
        if let Err(err) = self.probe_allocators(pid, None) {
            log::warn!(
                "allocations of process {pid} are not tracked: {}",
                error_chain(&err)
            );
        }
    }

    /// Reads `pid`'s memory map once, for symbols and, when it changed, for the unwinder (a
    /// library unmapped and another mapped in its place would leave the kernel the old rows).
    pub(super) fn read_memory_map(&mut self, pid: u32) -> std::io::Result<()> {
        let text = procfs::read_maps(pid)?;
        if let Some(unwind) = self.unwind.as_mut()
            && let Err(err) = unwind.load_process_maps(pid, &text, &mut self.probes)
        {
            log::debug!("unwind tables of process {pid}: {}", error_chain(&err));
        }
        self.jvms.note(pid, &text);
        if let Some(interpreter) = self.spaces.update(pid, text) {
            self.tell_python(pid, &interpreter);
        }
        Ok(())
    }

    /// Tells the kernel where the frames of `pid`'s interpreter are, or warns (once per
    /// version) that its version is unknown.
    fn tell_python(&mut self, pid: u32, interpreter: &Interpreter) {
        let (major, minor) = interpreter.version;
        let Some(layout) = interpreter.layout else {
            if self.python_versions_warned.insert(interpreter.version) {
                log::warn!(
                    "process {pid} runs CPython {major}.{minor} ({}), whose frames the profiler \
                     cannot read (it knows {}): its Python code shows as the interpreter's \
                     native frames",
                    interpreter.object,
                    python::layout::known_versions()
                );
            }
            return;
        };
        let process = PythonProcess {
            runtime: interpreter.runtime,
            offsets: layout.kernel,
        };
        match self.probes.set_python_process(pid, &process) {
            Ok(()) => log::info!(
                "process {pid}: CPython {major}.{minor} in {}, Python frames walked",
                interpreter.object
            ),
            Err(err) => log::warn!(
                "process {pid}: its Python frames are not walked: {}",
                error_chain(&err)
            ),
        }
    }

    /// Forgets which files `pid`'s fds opened before `time_ns` were: calls on those fds name
    /// their files by inode from now.
    fn forget_open_files(&mut self, pid: u32, time_ns: u64) {
        if self.io_enabled
            && let Err(err) = self.probes.forget_files_opened_before(&[pid], time_ns)
        {
            log::debug!("open files of process {pid}: {}", error_chain(&err));
        }
    }

    /// Whether a process that starts is read once it has events rather than at once:
    /// host-wide, unless allocations are tracked (a process has allocation events only once
    /// its allocator is probed).
    fn reads_lazily(&self) -> bool {
        self.host_wide && self.memory.is_none()
    }

    pub(super) fn handle_process_events(&mut self) {
        let now = Instant::now();
        for event in self.probes.process_events() {
            let comm = comm_string(&event.comm);
            match event.kind {
                process_event::FORK if self.reads_lazily() => {
                    self.processes.note_started(event.pid, comm);
                    self.unread.insert(event.pid);
                }
                process_event::FORK => self.watch_process(event.pid, None),
                process_event::EXEC => {
                    if let Some(unwind) = self.unwind.as_mut() {
                        unwind.forget(event.pid);
                    }
                    if self.spaces.python().interpreter(event.pid).is_some() {
                        self.spaces.forget_python(event.pid);
                        let _ = self.probes.remove_python_processes(&[event.pid]);
                    }
                    // Close-on-exec fds are gone: their numbers may name other files now.
                    self.forget_open_files(event.pid, event.time_ns);
                    if self.reads_lazily() {
                        // Read once it has events, if ever: the kernel learns the program's
                        // mappings itself, enough to walk and name a process gone before.
                        self.processes.note_started(event.pid, comm);
                        self.unread.insert(event.pid);
                        continue;
                    }
                    self.watch_process(event.pid, Some(comm));
                    self.refreshes.extend(
                        AFTER_EXEC_REFRESH
                            .iter()
                            .map(|delay| (now + *delay, event.pid)),
                    );
                }
                process_event::UNWIND_TABLES_MISSING => {
                    let _ = self.read_memory_map(event.pid);
                }
                process_event::FILES_CLOSED => self.forget_open_files(event.pid, event.time_ns),
                process_event::UNTARGETED_EXEC => self.adopt_if_selected(event.pid, &comm),
                _ => {}
            }
        }
        for event in self.probes.open_events() {
            self.files.opened(
                &procfs::proc_root(),
                event.tgid,
                event.open_ns,
                event.dir_fd,
                &comm_string(&event.path),
            );
        }
        let (due, later): (Vec<_>, Vec<_>) =
            self.refreshes.drain(..).partition(|(at, _)| *at <= now);
        self.refreshes = later;
        for (_, pid) in due {
            self.watch_process(pid, None);
        }
    }

    /// Reads the processes' memory maps again (libraries and code mapped since): every
    /// process's, or past `FEW_PROCESSES` only those with events since the last time, and
    /// every one each `ALL_MAPS_EVERY` times; host-wide, only those with events. Reading them
    /// was most of the work of a host-wide run; a library loaded by the dynamic loader is
    /// read as it is loaded.
    pub(super) fn refresh_maps(&mut self) {
        const FEW_PROCESSES: usize = 64;
        const ALL_MAPS_EVERY: u32 = 10;
        self.map_refreshes = self.map_refreshes.wrapping_add(1);
        let all = !self.host_wide
            && (self.processes.processes.len() <= FEW_PROCESSES
                || self.map_refreshes.is_multiple_of(ALL_MAPS_EVERY));
        let pids: Vec<u32> = match all {
            true => self.processes.live_pids().collect(),
            false => self
                .active
                .iter()
                .copied()
                .filter(|pid| self.processes.processes.contains_key(pid))
                .collect(),
        };
        self.active.clear();
        for pid in pids {
            let _ = self.read_memory_map(pid);
        }
        self.jvms.poll(&mut self.spaces);
        self.spaces.jit_mut().read();
    }

    /// Removes processes that exited from the kernel's target map.
    pub(super) fn forget_exited_targets(&mut self) -> Result<(), ProbeError> {
        let exited: Vec<u32> = self
            .probes
            .targets()?
            .into_iter()
            .filter(|&pid| !procfs::is_alive(pid))
            .collect();
        self.probes.remove_targets(&exited)?;
        self.probes.forget_files_of(&exited)?;
        self.processes.exited.extend(&exited);
        for pid in &exited {
            self.unread.remove(pid);
        }
        if let Some(unwind) = self.unwind.as_mut() {
            // Gone before its memory map was read (a 3 ms child): its addresses are symbolized
            // with the mappings the kernel learned by itself.
            for &pid in &exited {
                if let Some(process) = self.probes.process_unwind(pid) {
                    let learned = unwind.learned_mappings(&process);
                    let files: Vec<_> = learned
                        .iter()
                        .map(|(entry, object)| (entry.clone(), &object.file))
                        .collect();
                    self.spaces.add_open_files(pid, &files);
                }
            }
            self.probes.remove_process_unwind(&exited)?;
            self.probes.remove_python_processes(&exited)?;
            for &pid in &exited {
                self.spaces.python_mut().exited(pid);
                unwind.forget(pid);
            }
        }
        Ok(())
    }
}
