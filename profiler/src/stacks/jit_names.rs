//! The names runtimes give the code they compile, per profiled process: its perf map
//! (`/tmp/perf-PID.map`, [`perf_map`]) and its jitdump file (`jit-PID.dump`, [`jitdump`]).
//!
//! A process's `/tmp` is opened when its maps first show code without a file (JIT code), while
//! it lives, so its names can still be read after it exits.

use std::{
    collections::HashMap,
    fs::File,
    os::unix::fs::MetadataExt as _,
    time::{Duration, Instant},
};

use super::{
    jitdump::JitDump,
    perf_map::{self, PerfMap},
};
use crate::target::{
    procfs::{self, MapEntry},
    tmp_dir::TargetTmp,
};

/// Most processes whose JIT names are read in one run: each holds three descriptors (its
/// `/tmp`, a pidfd, its `/proc` folder) until the end, and a fork-heavy target with executable
/// anonymous memory (libffi closures) must not exhaust them.
const MAX_PROCESSES: usize = 512;

/// The JIT names of every profiled process with JIT code.
#[derive(Debug, Default)]
pub struct JitNames {
    /// `None` when the process's `/tmp` could not be opened.
    processes: HashMap<u32, Option<ProcessNames>>,
    /// jitdump files by (device, inode): read once however many processes map one (children
    /// inherit the mapping).
    dumps: HashMap<(String, u64), Dump>,
    read_time: Duration,
}

#[derive(Debug)]
struct ProcessNames {
    tmp: TargetTmp,
    map: PerfMap,
    /// The jitdump file the process mapped, once seen.
    dump: Option<(String, u64)>,
    /// Whether a failure to read was already reported.
    warned: bool,
}

#[derive(Debug)]
struct Dump {
    /// `None` when it could not be opened, or is not (or no longer) read.
    file: Option<File>,
    dump: JitDump,
}

impl JitNames {
    /// After `pid`'s maps (`entries`) were read: starts following the names of a process with
    /// JIT code, and its jitdump file once it maps one.
    pub fn update(&mut self, pid: u32, entries: &[MapEntry]) {
        // A process that reused the pid of one that had JIT code is another process.
        let stale = matches!(self.processes.get(&pid), Some(Some(names)) if !names.tmp.is_alive());
        if (stale || !self.processes.contains_key(&pid)) && entries.iter().any(is_jit_code) {
            let open = match self.processes.values().flatten().count() < MAX_PROCESSES {
                true => TargetTmp::open(pid),
                false => Err(std::io::Error::other(format!(
                    "over {MAX_PROCESSES} processes with JIT code: its names are not read"
                ))),
            };
            let names = open.map(|tmp| ProcessNames {
                tmp,
                map: PerfMap::default(),
                dump: None,
                warned: false,
            });
            if let Err(err) = &names {
                log::info!("process {pid}: JIT names not followed: {err}");
            }
            self.processes.insert(pid, names.ok());
        }
        if let Some(Some(names)) = self.processes.get_mut(&pid)
            && names.dump.is_none()
            && let Some(entry) = entries.iter().find(|entry| is_jitdump(entry))
        {
            let key = (entry.device.clone(), entry.inode);
            let owner = names.tmp.owner;
            names.dump = Some(key.clone());
            self.dumps.entry(key).or_insert_with(|| {
                let file = open_dump(pid, entry, owner)
                    .inspect_err(|err| log::info!("process {pid}: {} not read: {err}", entry.path))
                    .ok();
                Dump {
                    file,
                    dump: JitDump::default(),
                }
            });
        }
    }

    /// Forgets an exited process (the jitdump files it mapped stay read).
    pub fn forget(&mut self, pid: u32) {
        self.processes.remove(&pid);
    }

    /// Reads what the processes' perf maps and jitdump files gained.
    pub fn read(&mut self) {
        let started = Instant::now();
        for (&pid, names) in &mut self.processes {
            if let Some(names) = names {
                names.read(pid);
            }
        }
        for ((_, inode), dump) in &mut self.dumps {
            if let Some(file) = &dump.file
                && let Err(err) = dump.dump.read_from(file)
            {
                // What was read stays; the file is not read further.
                log::info!("jitdump file (inode {inode}): {err}");
                dump.file = None;
            }
        }
        self.read_time += started.elapsed();
    }

    /// Reads `pid`'s perf map again from the start: its runtime rewrote it.
    pub fn reread(&mut self, pid: u32) {
        let started = Instant::now();
        if let Some(Some(names)) = self.processes.get_mut(&pid) {
            names.map.reset();
            names.read(pid);
        }
        self.read_time += started.elapsed();
    }

    /// Time spent reading names so far.
    pub fn read_time(&self) -> Duration {
        self.read_time
    }

    /// `pid`'s `/tmp`, when it has JIT code.
    pub fn tmp(&self, pid: u32) -> Option<&TargetTmp> {
        self.processes.get(&pid)?.as_ref().map(|names| &names.tmp)
    }

    /// The name `pid`'s runtime gave the code at `address`.
    pub fn lookup(&self, pid: u32, address: u64) -> Option<&str> {
        let names = self.processes.get(&pid)?.as_ref()?;
        names.map.lookup(address).or_else(|| {
            let dump = self.dumps.get(names.dump.as_ref()?)?;
            dump.dump.functions.lookup(address)
        })
    }

    /// Processes with JIT code.
    pub fn process_count(&self) -> u32 {
        self.processes.len() as u32
    }

    /// Functions named, over every process.
    pub fn function_count(&self) -> usize {
        let maps: usize = self
            .processes
            .values()
            .flatten()
            .map(|names| names.map.len())
            .sum();
        let dumps: usize = self
            .dumps
            .values()
            .map(|dump| dump.dump.functions.len())
            .sum();
        maps + dumps
    }
}

impl ProcessNames {
    /// Reads what the perf map gained since last time.
    fn read(&mut self, pid: u32) {
        let name = format!("perf-{}.map", self.tmp.nspid);
        let result = self
            .tmp
            .open_file(&name)
            .and_then(|mut file| self.map.read_from(&mut file));
        match result {
            Ok(()) if self.map.capped && !self.warned => {
                self.warned = true;
                log::warn!(
                    "process {pid}: /tmp/{name} is over {} MiB or a million functions; the \
                     rest is not read",
                    perf_map::MAX_PERF_MAP_BYTES >> 20
                );
            }
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) if !self.warned => {
                self.warned = true;
                log::warn!("process {pid}: JIT names in /tmp/{name} not read: {err}");
            }
            Err(_) => {}
        }
    }
}

/// Whether a mapping is code a runtime compiled: executable, anonymous, not a kernel page.
fn is_jit_code(entry: &MapEntry) -> bool {
    entry.executable
        && entry.inode == 0
        && !matches!(entry.path.as_str(), "[vdso]" | "[vsyscall]" | "[uprobes]")
}

/// Whether a mapping is a jitdump file (`…/jit-PID.dump`), which runtimes map executable for
/// profilers to find.
fn is_jitdump(entry: &MapEntry) -> bool {
    let name = entry.path.rsplit('/').next().unwrap_or_default();
    entry.inode != 0
        && name
            .strip_prefix("jit-")
            .and_then(|rest| rest.strip_suffix(".dump"))
            .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Opens the jitdump file the process mapped (the mapped inode itself, through
/// `/proc/PID/map_files`): a regular file of the process's user, with one name.
fn open_dump(pid: u32, entry: &MapEntry, owner: u32) -> std::io::Result<File> {
    let file = procfs::open_mapped_file(pid, entry)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() || metadata.uid() != owner || metadata.nlink() != 1 {
        return Err(std::io::Error::other(
            "not a regular file of the process's user with one name",
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, inode: u64, executable: bool) -> MapEntry {
        MapEntry {
            start: 0x1000,
            end: 0x2000,
            executable,
            file_offset: 0,
            device: "fe:01".into(),
            inode,
            path: path.into(),
            deleted: false,
        }
    }

    #[test]
    fn tells_jit_code_and_jitdump_files_from_other_mappings() {
        assert!(is_jit_code(&entry("", 0, true)));
        assert!(!is_jit_code(&entry("[vdso]", 0, true)));
        assert!(!is_jit_code(&entry("", 0, false)));
        assert!(is_jitdump(&entry("/srv/app/jit-4242.dump", 7, true)));
        assert!(!is_jitdump(&entry("/srv/app/jit-.dump", 7, true)));
        assert!(!is_jitdump(&entry("/srv/app/jit-42x.dump", 7, true)));
        assert!(!is_jitdump(&entry("/lib/libjit-1.so", 7, true)));
    }
}
