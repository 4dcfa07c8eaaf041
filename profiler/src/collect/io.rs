//! I/O: what the watched calls' file descriptors name, and the per-file, per-call and
//! per-device tables of the profile, from the kernel's totals. Plain data, no kernel.

use std::{collections::HashMap, path::Path};

use profiler_common::{
    BlockKey, BlockStats, FILE_ID_INODE, IoKey, IoTotal, LATENCY_SLOTS, latency_slot_floor,
};

use crate::{
    kernel::syscalls::{Direction, call_by_index},
    model::{IoDevice, IoFile, IoStats, IoSyscall},
};

/// The inode number bits of an inode `file_id`.
const INODE_MASK: u64 = (1 << 48) - 1;

/// Inode types in an inode `file_id` (`S_IFMT >> 12`).
const S_IFIFO: u64 = 0o01;
const S_IFSOCK: u64 = 0o14;

/// `AT_FDCWD`: an `openat` path relative to the working directory.
const AT_FDCWD: i32 = -100;

/// What the file descriptors of the targets name: files opened during the run by their open
/// time (exact even when fds are reused), and fds found in `/proc` by number.
#[derive(Debug, Default)]
pub struct FileNames {
    opened: HashMap<(u32, u64), String>,
    by_fd: HashMap<(u32, i32), String>,
    /// Paths by inode number (the low 48 bits), from `/proc` scans: names an fd whatever its
    /// number became (dup2 onto stdout, say).
    by_inode: HashMap<u64, String>,
    /// The inode every anonymous-inode file shares (eventfd, epoll, timerfd, signalfd,
    /// inotify): such files are told apart by fd, not by inode.
    anon_inodes: std::collections::HashSet<u64>,
}

impl FileNames {
    /// Forgets the files of an exited process (a continuous run, after its last window).
    pub fn forget(&mut self, pid: u32) {
        self.opened.retain(|&(of, _), _| of != pid);
        self.by_fd.retain(|&(of, _), _| of != pid);
    }

    /// Records a file a target opened; a relative path is resolved against the directory it
    /// was opened from, read from `proc_root` (`/proc` outside tests) while the process lives.
    pub fn opened(&mut self, proc_root: &Path, pid: u32, file_id: u64, dir_fd: i32, path: &str) {
        let path = if path.starts_with('/') || path.is_empty() {
            path.to_owned()
        } else {
            let dir = if dir_fd == AT_FDCWD {
                proc_root.join(pid.to_string()).join("cwd")
            } else {
                proc_root.join(format!("{pid}/fd/{dir_fd}"))
            };
            match std::fs::read_link(dir) {
                Ok(dir) => dir.join(path).to_string_lossy().into_owned(),
                Err(_) => path.to_owned(),
            }
        };
        self.opened.insert((pid, file_id), path);
    }

    /// Reads what every open fd of `pid` names, keeping names already known.
    pub fn scan(&mut self, proc_root: &Path, pid: u32) {
        let dir = proc_root.join(format!("{pid}/fd"));
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Ok(target) = std::fs::read_link(entry.path()) {
                let name = target.to_string_lossy().into_owned();
                if let Ok(metadata) = std::fs::metadata(entry.path()) {
                    use std::os::unix::fs::MetadataExt as _;
                    let inode = metadata.ino() & INODE_MASK;
                    if name.starts_with(ANON_INODE) {
                        self.anon_inodes.insert(inode);
                    } else {
                        self.by_inode.entry(inode).or_insert_with(|| name.clone());
                    }
                }
                self.by_fd.entry((pid, fd)).or_insert(name);
            }
        }
    }

    /// Whether naming the file of `key` needs the process's fds read from `/proc`.
    pub fn needs_scan(&self, key: &IoKey) -> bool {
        self.known_name(key).is_none()
            && key.fd >= 0
            && (key.file_id & FILE_ID_INODE != 0 || !self.by_fd.contains_key(&(key.tgid, key.fd)))
    }

    /// Name of the file a call was made on.
    pub fn name(&self, key: &IoKey) -> String {
        self.known_name(key).unwrap_or_else(|| {
            if key.fd < 0 {
                return "[failed open]".to_owned();
            }
            self.by_fd
                .get(&(key.tgid, key.fd))
                .cloned()
                .unwrap_or_else(|| format!("[fd {} of {}]", key.fd, key.tgid))
        })
    }

    /// The name of `key`'s file from the open that made it or its inode, if either tells.
    fn known_name(&self, key: &IoKey) -> Option<String> {
        if key.file_id & FILE_ID_INODE != 0 {
            let inode = key.file_id & INODE_MASK;
            match (key.file_id >> 48) & 0xf {
                S_IFIFO => Some(format!("pipe:[{inode}]")),
                S_IFSOCK => Some(format!("socket:[{inode}]")),
                _ if self.anon_inodes.contains(&inode) => self
                    .by_fd
                    .get(&(key.tgid, key.fd))
                    .map(|name| format!("{name} (fd {} of {})", key.fd, key.tgid)),
                _ => self.by_inode.get(&inode).cloned(),
            }
        } else {
            self.opened.get(&(key.tgid, key.file_id)).cloned()
        }
    }
}

/// How `/proc` names anonymous-inode files: `anon_inode:[eventfd]`, `anon_inode:[eventpoll]`.
const ANON_INODE: &str = "anon_inode:";

/// Kinds of anonymous-inode files named apart.
const ANON_KINDS: [&str; 6] = [
    "eventfd",
    "eventpoll",
    "timerfd",
    "signalfd",
    "inotify",
    "pidfd",
];

/// Kind of thing a file name names: `pipe`, `socket`, `file`, the kind of an anonymous inode
/// (`eventfd`, `eventpoll`, `timerfd`, `signalfd`, `inotify`, `pidfd`), or `other`.
pub fn file_kind(path: &str) -> &'static str {
    if path.starts_with("pipe:") {
        "pipe"
    } else if path.starts_with("socket:") {
        "socket"
    } else if path.starts_with('/') {
        "file"
    } else if let Some(anon) = path.strip_prefix(ANON_INODE) {
        let kind = anon.trim_start_matches('[');
        ANON_KINDS
            .into_iter()
            .find(|known| kind.starts_with(known))
            .unwrap_or("other")
    } else {
        "other"
    }
}

/// Latency in µs below which `fraction` of the calls of a histogram fall (the upper end of
/// the slot the quantile lands in, so never an underestimate by more than a slot).
fn quantile_us(slots: &[u64], fraction: f64) -> f64 {
    let total: u64 = slots.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = (fraction * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (slot, &count) in slots.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return latency_slot_floor(slot as u32 + 1) as f64 / 1000.0;
        }
    }
    latency_slot_floor(LATENCY_SLOTS) as f64 / 1000.0
}

fn us(ns: u64) -> f64 {
    (ns as f64 / 1000.0 * 1000.0).round() / 1000.0
}

/// Turns `dev_t` (kernel encoding: major << 20 | minor) into `major:minor`.
fn device_number(dev: u32) -> (u32, u32) {
    (dev >> 20, dev & 0xf_ffff)
}

/// What an `rwbs` string says the request did.
fn block_operation(rwbs: &[u8; 4]) -> &'static str {
    let letters: Vec<u8> = rwbs.iter().copied().take_while(|&b| b != 0).collect();
    if letters.contains(&b'D') {
        "discard"
    } else if letters.contains(&b'W') {
        "write"
    } else if letters.contains(&b'R') {
        "read"
    } else if letters.contains(&b'F') {
        "flush"
    } else {
        "other"
    }
}

/// Everything the I/O programs gathered, for [`build_stats`].
#[derive(Debug)]
pub struct IoTotals<'a> {
    /// Totals per thread, stack, call and file.
    pub calls: Vec<(&'a IoKey, &'a IoTotal)>,
    /// Latency histogram per call index (`LATENCY_SLOTS` each).
    pub latency: &'a [Vec<u64>],
    /// Longest call per call index, ns.
    pub max_ns: &'a [u64],
    /// Block requests per device and operation.
    pub block: &'a [(BlockKey, BlockStats)],
    /// Device names by `major:minor`.
    pub device_names: &'a HashMap<(u32, u32), String>,
}

/// The per-file, per-call and per-device tables, slowest first.
pub fn build_stats(totals: &IoTotals, names: &FileNames) -> IoStats {
    let mut files: HashMap<String, IoFile> = HashMap::new();
    let mut syscalls: HashMap<u32, IoSyscall> = HashMap::new();
    for (key, total) in &totals.calls {
        let Some(call) = call_by_index(key.call) else {
            continue;
        };
        let path = names.name(key);
        let file = files.entry(path.clone()).or_insert_with(|| IoFile {
            kind: file_kind(&path).to_owned(),
            path,
            ..IoFile::default()
        });
        match call.direction {
            Direction::Read => {
                file.reads += total.count;
                file.read_bytes += total.bytes;
            }
            Direction::Write => {
                file.writes += total.count;
                file.write_bytes += total.bytes;
            }
            Direction::Sync => file.fsyncs += total.count,
            Direction::SyncRange => file.sync_file_ranges += total.count,
            Direction::Open => file.opens += total.count,
            Direction::Close => file.closes += total.count,
        }
        file.errors += total.errors;
        file.total_us += us(total.total_ns);
        let syscall = syscalls.entry(key.call).or_insert_with(|| IoSyscall {
            name: call.name.to_owned(),
            ..IoSyscall::default()
        });
        syscall.count += total.count;
        syscall.bytes += total.bytes;
        syscall.errors += total.errors;
        syscall.total_us += us(total.total_ns);
    }
    for (index, syscall) in &mut syscalls {
        if let Some(slots) = totals.latency.get(*index as usize) {
            syscall.p50_us = quantile_us(slots, 0.5);
            syscall.p99_us = quantile_us(slots, 0.99);
        }
        if let Some(&max) = totals.max_ns.get(*index as usize) {
            syscall.max_us = us(max);
            // A quantile's slot end may lie above the exact maximum.
            syscall.p50_us = syscall.p50_us.min(syscall.max_us);
            syscall.p99_us = syscall.p99_us.min(syscall.max_us);
        }
        syscall.total_us = round3(syscall.total_us);
    }
    let mut devices: HashMap<(u32, u32, &str), IoDevice> = HashMap::new();
    for (key, stats) in totals.block {
        let number = device_number(key.dev);
        let operation = block_operation(&key.rwbs);
        let device = devices
            .entry((number.0, number.1, operation))
            .or_insert_with(|| IoDevice {
                device: format!("{}:{}", number.0, number.1),
                name: totals.device_names.get(&number).cloned(),
                operation: operation.to_owned(),
                ..IoDevice::default()
            });
        device.requests += stats.count;
        device.bytes += stats.bytes;
        device.total_us += us(stats.total_ns);
        device.max_us = device.max_us.max(us(stats.max_ns));
    }
    let mut files: Vec<IoFile> = files
        .into_values()
        .map(|mut file| {
            file.total_us = round3(file.total_us);
            file
        })
        .collect();
    files.sort_by(|a, b| b.total_us.total_cmp(&a.total_us).then(a.path.cmp(&b.path)));
    let mut syscalls: Vec<IoSyscall> = syscalls.into_values().collect();
    syscalls.sort_by(|a, b| b.total_us.total_cmp(&a.total_us).then(a.name.cmp(&b.name)));
    let mut devices: Vec<IoDevice> = devices
        .into_values()
        .map(|mut device| {
            device.total_us = round3(device.total_us);
            device.avg_us = round3(device.total_us / device.requests.max(1) as f64);
            device
        })
        .collect();
    devices.sort_by(|a, b| {
        b.total_us
            .total_cmp(&a.total_us)
            .then(a.device.cmp(&b.device))
    });
    IoStats {
        files,
        syscalls,
        devices,
    }
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// Block device names by `major:minor`, from `/sys/class/block`.
pub fn block_device_names() -> HashMap<(u32, u32), String> {
    let mut names = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/sys/class/block") else {
        return names;
    };
    for entry in entries.flatten() {
        let Ok(dev) = std::fs::read_to_string(entry.path().join("dev")) else {
            continue;
        };
        if let Some((major, minor)) = dev.trim().split_once(':')
            && let (Ok(major), Ok(minor)) = (major.parse(), minor.parse())
        {
            names.insert(
                (major, minor),
                entry.file_name().to_string_lossy().into_owned(),
            );
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::syscalls::CALLS;
    use profiler_common::{COMM_LEN, MAX_IO_CALLS, latency_slot};

    fn key(call: &str, fd: i32, file_id: u64) -> IoKey {
        let index = CALLS.iter().position(|c| c.name == call).unwrap() as u32 + 1;
        IoKey {
            tgid: 7,
            tid: 7,
            user_stack_id: 1,
            call: index,
            fd,
            _pad: 0,
            file_id,
            comm: [0; COMM_LEN],
        }
    }

    #[test]
    fn names_prefer_the_open_time_over_the_fd_number() {
        let proc = tempfile::tempdir().unwrap();
        let mut names = FileNames::default();
        names.opened(proc.path(), 7, 100, AT_FDCWD, "/data/a.log");
        names.by_fd.insert((7, 3), "pipe:[42]".into());
        // fd 3 was reused by an open during the run: the open wins for its calls.
        assert_eq!(names.name(&key("write", 3, 100)), "/data/a.log");
        assert_eq!(names.name(&key("read", 3, 0)), "pipe:[42]");
        assert_eq!(names.name(&key("read", 9, 0)), "[fd 9 of 7]");
        // Pipes and sockets are named by the inode the programs read.
        let pipe = profiler_common::inode_file_id(0o010644, 77);
        assert_eq!(names.name(&key("read", 5, pipe)), "pipe:[77]");
        let socket = profiler_common::inode_file_id(0o140777, 78);
        assert_eq!(names.name(&key("read", 6, socket)), "socket:[78]");
        // A regular file's inode is named by a scan that saw it, under whatever fd.
        let file = profiler_common::inode_file_id(0o100644, 79);
        assert_eq!(
            names.name(&key("read", 3, file)),
            "pipe:[42]",
            "by fd, unseen"
        );
        assert!(
            names.needs_scan(&key("read", 3, file)),
            "an inode no scan has seen"
        );
        names.by_inode.insert(79, "/data/b.log".into());
        assert_eq!(
            names.name(&key("write", 1, file)),
            "/data/b.log",
            "dup'd onto fd 1"
        );
        // A relative path whose directory cannot be read stays as given.
        names.opened(proc.path(), 7, 101, AT_FDCWD, "rel.txt");
        assert_eq!(names.name(&key("read", 4, 101)), "rel.txt");
    }

    #[test]
    fn anonymous_inode_files_are_told_apart_by_fd_and_kind() {
        // eventfd and epoll files share one inode: the fd says which is which.
        let mut names = FileNames::default();
        let anon = profiler_common::inode_file_id(0o600, 9);
        names.anon_inodes.insert(9);
        names.by_fd.insert((7, 4), "anon_inode:[eventfd]".into());
        names.by_fd.insert((7, 5), "anon_inode:[eventpoll]".into());
        let eventfd = names.name(&key("read", 4, anon));
        assert_eq!(eventfd, "anon_inode:[eventfd] (fd 4 of 7)");
        assert_eq!(
            names.name(&key("read", 5, anon)),
            "anon_inode:[eventpoll] (fd 5 of 7)"
        );
        assert!(!names.needs_scan(&key("read", 4, anon)));
        assert!(
            names.needs_scan(&key("read", 6, anon)),
            "an fd no scan has seen"
        );
        assert_eq!(file_kind(&eventfd), "eventfd");
        assert_eq!(file_kind("anon_inode:[timerfd]"), "timerfd");
        assert_eq!(file_kind("anon_inode:bpf-map"), "other");
    }

    #[test]
    fn relative_paths_resolve_against_the_working_directory() {
        let proc = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(proc.path().join("7")).unwrap();
        std::os::unix::fs::symlink("/srv/app", proc.path().join("7/cwd")).unwrap();
        let mut names = FileNames::default();
        names.opened(proc.path(), 7, 5, AT_FDCWD, "out/x.bin");
        assert_eq!(names.name(&key("write", 4, 5)), "/srv/app/out/x.bin");
    }

    #[test]
    fn stats_per_file_call_and_device() {
        let mut names = FileNames::default();
        let proc = tempfile::tempdir().unwrap();
        names.opened(proc.path(), 7, 100, AT_FDCWD, "/data/a.log");
        names.by_fd.insert((7, 0), "pipe:[9]".into());
        let write = key("write", 3, 100);
        let fsync = key("fsync", 3, 100);
        let read = key("read", 0, 0);
        let t = |count, total_ns, bytes| IoTotal {
            count,
            total_ns,
            bytes,
            errors: 0,
            stack_ns: total_ns,
        };
        let (w, f, r) = (t(4, 40_000, 4096), t(2, 3_000_000, 0), t(10, 10_000, 100));
        let mut latency = vec![vec![0u64; LATENCY_SLOTS as usize]; MAX_IO_CALLS as usize];
        let mut max_ns = vec![0u64; MAX_IO_CALLS as usize];
        // fsync: one call of 1 ms, one of 2 ms.
        latency[fsync.call as usize][latency_slot(1_000_000) as usize] += 1;
        latency[fsync.call as usize][latency_slot(2_000_000) as usize] += 1;
        max_ns[fsync.call as usize] = 2_000_000;
        let block = [(
            BlockKey {
                dev: 254 << 20,
                rwbs: *b"WS\0\0",
            },
            BlockStats {
                count: 2,
                bytes: 8192,
                total_ns: 600_000,
                max_ns: 400_000,
            },
        )];
        let device_names = HashMap::from([((254, 0), "vda".to_owned())]);
        let totals = IoTotals {
            calls: vec![(&write, &w), (&fsync, &f), (&read, &r)],
            latency: &latency,
            max_ns: &max_ns,
            block: &block,
            device_names: &device_names,
        };
        let stats = build_stats(&totals, &names);
        let file = &stats.files[0];
        assert_eq!(file.path, "/data/a.log");
        assert_eq!(file.kind, "file");
        assert_eq!((file.writes, file.write_bytes, file.fsyncs), (4, 4096, 2));
        assert_eq!(file.total_us, 3040.0);
        assert_eq!(stats.files[1].kind, "pipe");
        assert_eq!(stats.files[1].read_bytes, 100);
        let sync = &stats.syscalls[0];
        assert_eq!(sync.name, "fsync");
        assert_eq!(sync.max_us, 2000.0);
        assert!((1000.0..=1250.0).contains(&sync.p50_us), "{sync:?}");
        assert_eq!(sync.p99_us, 2000.0, "capped at the exact maximum");
        let device = &stats.devices[0];
        assert_eq!(device.device, "254:0");
        assert_eq!(device.name.as_deref(), Some("vda"));
        assert_eq!(device.operation, "write");
        assert_eq!((device.requests, device.bytes), (2, 8192));
        assert_eq!(device.avg_us, 300.0);
    }
}
