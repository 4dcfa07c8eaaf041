//! Reading what the profiler needs from `/proc`: memory maps, names, command lines, children.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    /// First address of the mapping.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Whether the mapping is executable.
    pub executable: bool,
    /// Offset in the file of `start`.
    pub file_offset: u64,
    /// Device of the file (`major:minor` as written by the kernel).
    pub device: String,
    /// Inode of the file, 0 for anonymous mappings.
    pub inode: u64,
    /// Path of the file or pseudo-name (`[vdso]`, `[heap]`), empty for anonymous mappings.
    /// A trailing ` (deleted)` is removed; see `deleted`.
    pub path: String,
    /// Whether the file was deleted after being mapped.
    pub deleted: bool,
}

/// Parses the text of `/proc/PID/maps`, skipping lines it does not understand.
pub fn parse_maps(text: &str) -> Vec<MapEntry> {
    text.lines().filter_map(parse_maps_line).collect()
}

fn parse_maps_line(line: &str) -> Option<MapEntry> {
    // address perms offset dev inode [path]; the path may contain spaces.
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let device = fields.next()?;
    let inode = fields.next()?;
    let path = fields.next().unwrap_or("").trim_start();
    let (path, deleted) = match path.strip_suffix(" (deleted)") {
        Some(path) => (path, true),
        None => (path, false),
    };
    Some(MapEntry {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        file_offset: u64::from_str_radix(offset, 16).ok()?,
        device: device.to_owned(),
        inode: inode.parse().ok()?,
        path: path.to_owned(),
        deleted,
    })
}

/// `/proc/PID` of a process.
pub fn proc_dir(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}"))
}

/// Reads `/proc/PID/maps`.
pub fn read_maps(pid: u32) -> io::Result<String> {
    read_maps_under(&proc_root(), pid)
}

/// Reads `PROC/PID/maps`, `proc_root` being `/proc` outside tests: at most
/// [`MAX_MAPS_BYTES`], whole lines.
pub fn read_maps_under(proc_root: &std::path::Path, pid: u32) -> io::Result<String> {
    let mut bytes = read_bounded(&proc_root.join(format!("{pid}/maps")), MAX_MAPS_BYTES)?;
    if bytes.len() as u64 == MAX_MAPS_BYTES {
        // Cut short: the last line, maybe cut too, goes.
        let end = bytes
            .iter()
            .rposition(|&byte| byte == b'\n')
            .map_or(0, |at| at + 1);
        bytes.truncate(end);
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The most of a memory map read: tens of thousands of mappings take a few MiB, but the
/// kernel does not bound a mapped file's path, and a process can make the file as large as
/// it likes.
const MAX_MAPS_BYTES: u64 = 64 << 20;

/// Name (`comm`) of a process.
pub fn process_name(pid: u32) -> io::Result<String> {
    Ok(fs::read_to_string(proc_dir(pid).join("comm"))?
        .trim_end()
        .to_owned())
}

/// Command line of a process, split at NULs.
pub fn command_line(pid: u32) -> io::Result<Vec<String>> {
    let raw = fs::read(proc_dir(pid).join("cmdline"))?;
    Ok(split_nul(&raw))
}

/// The id of the container a process runs in, read from the name of its cgroup (as
/// container runtimes name them: `docker-ID.scope`, `cri-containerd-ID.scope`, `/docker/ID`,
/// `crio-ID.scope`, `libpod-ID.scope`), when it runs in one.
pub fn container_id(pid: u32) -> Option<String> {
    let cgroup = read_bounded(&proc_dir(pid).join("cgroup"), 64 << 10).ok()?;
    container_id_in(&String::from_utf8_lossy(&cgroup))
}

/// The process's cgroup paths, one per hierarchy (v1 and v2), from `/proc/PID/cgroup`.
pub fn cgroup_paths(pid: u32) -> Vec<String> {
    let Ok(cgroup) = read_bounded(&proc_dir(pid).join("cgroup"), 64 << 10) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&cgroup)
        .lines()
        .filter_map(|line| Some(line.splitn(3, ':').nth(2)?.to_owned()))
        .collect()
}

/// Reads a small kernel-made file (under `/proc`), at most 1 MiB of it.
pub fn read_small(path: &std::path::Path) -> io::Result<Vec<u8>> {
    read_bounded(path, 1 << 20)
}

/// The kernel's `pid_max`: every tid it hands out is below it. `PID_MAX_LIMIT` (2^22 on 64-bit
/// machines, at least any `pid_max`) if unreadable.
pub fn pid_max() -> u32 {
    const PID_MAX_LIMIT: u32 = 1 << 22;
    read_small(std::path::Path::new("/proc/sys/kernel/pid_max"))
        .ok()
        .and_then(|text| String::from_utf8_lossy(&text).trim().parse::<u32>().ok())
        .map_or(PID_MAX_LIMIT, |max| max.clamp(1, PID_MAX_LIMIT))
}

/// The first 64-hex-digit name part of a cgroup path in `/proc/PID/cgroup`'s text.
fn container_id_in(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        path.split(['/', '-', '.', ':']).find_map(|part| {
            (part.len() == 64 && part.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| part.to_ascii_lowercase())
        })
    })
}

/// Reads at most `limit` bytes of a file.
fn read_bounded(path: &std::path::Path, limit: u64) -> io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    fs::File::open(path)?.take(limit).read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn split_nul(raw: &[u8]) -> Vec<String> {
    raw.split(|&byte| byte == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect()
}

/// What `/proc/PID/stat` says about a process that the profiler cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Parent process id.
    pub parent_pid: u32,
    /// Whether it is a kernel thread (`PF_KTHREAD`).
    pub kernel_thread: bool,
    /// Whether it is a zombie (exited, not yet reaped).
    pub zombie: bool,
}

/// Reads `/proc/PID/stat`.
pub fn stat(pid: u32) -> io::Result<Stat> {
    let text = fs::read_to_string(proc_dir(pid).join("stat"))?;
    parse_stat(&text).ok_or_else(|| io::Error::other(format!("unexpected /proc/{pid}/stat")))
}

fn parse_stat(text: &str) -> Option<Stat> {
    const PF_KTHREAD: u64 = 0x0020_0000;
    // The name is in parentheses and may hold anything, so fields start after the last `)`.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the name, 0-based: state(0) ppid(1) ... flags(6).
    Some(Stat {
        parent_pid: fields.get(1)?.parse().ok()?,
        kernel_thread: fields.get(6)?.parse::<u64>().ok()? & PF_KTHREAD != 0,
        zombie: matches!(*fields.first()?, "Z" | "X"),
    })
}

/// Whether a process exists and has not exited. A zombie main thread (one that called
/// `pthread_exit`) with other threads still running is alive.
pub fn is_alive(pid: u32) -> bool {
    match stat(pid) {
        Ok(stat) if !stat.zombie => true,
        Ok(_) => fs::read_dir(proc_dir(pid).join("task")).is_ok_and(|tasks| {
            tasks
                .filter_map(|task| task.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .any(|tid| tid != pid)
        }),
        Err(_) => false,
    }
}

/// All live process ids.
pub fn all_pids() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// One thread of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadInfo {
    /// Thread id.
    pub tid: u32,
    /// Thread name.
    pub name: String,
    /// Whether it is running or runnable (state `R`), as opposed to sleeping or stopped.
    pub runnable: bool,
}

/// Ids of a process's threads.
pub fn thread_ids(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(proc_dir(pid).join("task")) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Threads of a process.
pub fn threads(pid: u32) -> Vec<ThreadInfo> {
    let Ok(entries) = fs::read_dir(proc_dir(pid).join("task")) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let tid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let task = proc_dir(pid).join(format!("task/{tid}"));
            let name = fs::read_to_string(task.join("comm"))
                .map(|name| name.trim_end().to_owned())
                .unwrap_or_default();
            let stat = fs::read_to_string(task.join("stat")).unwrap_or_default();
            let state = stat
                .rfind(')')
                .and_then(|end| stat[end + 1..].split_whitespace().next());
            Some(ThreadInfo {
                tid,
                name,
                runnable: state == Some("R"),
            })
        })
        .collect()
}

/// Descendants of `roots` (not including them), from the parent links in `/proc/*/stat`.
/// Every process with a user space (not kernel threads) but this one.
pub fn user_processes_but_self() -> Vec<u32> {
    let me = std::process::id();
    all_pids()
        .into_iter()
        .filter(|&pid| pid != me)
        .filter(|&pid| stat(pid).is_ok_and(|stat| !stat.kernel_thread && !stat.zombie))
        .collect()
}

pub fn descendants(roots: &[u32]) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = all_pids()
        .into_iter()
        .filter_map(|pid| Some((pid, stat(pid).ok()?.parent_pid)))
        .collect();
    descendants_of(roots, &parents)
}

fn descendants_of(roots: &[u32], parents: &[(u32, u32)]) -> Vec<u32> {
    let mut found: Vec<u32> = Vec::new();
    let mut frontier: Vec<u32> = roots.to_vec();
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid) in parents {
            if ppid == parent && !roots.contains(&pid) && !found.contains(&pid) {
                found.push(pid);
                frontier.push(pid);
            }
        }
    }
    found.sort_unstable();
    found
}

/// Path under which a file mapped by `pid` can be opened, as the process sees it.
///
/// Going through `/proc/PID/root` reaches files of processes in other mount namespaces
/// (containers).
pub fn path_in_process(pid: u32, path: &str) -> PathBuf {
    proc_dir(pid)
        .join("root")
        .join(Path::new(path).strip_prefix("/").unwrap_or(Path::new(path)))
}

/// Path of the file behind one mapping, valid even if the file was deleted or lives in
/// another mount namespace (needs CAP_SYS_ADMIN).
pub fn map_file_path(pid: u32, start: u64, end: u64) -> PathBuf {
    proc_dir(pid).join(format!("map_files/{start:x}-{end:x}"))
}

/// Opens the file behind one mapping of `pid`: through `map_files` (deleted files, other mount
/// namespaces), else by its path inside the process's root, else (a profiler without
/// CAP_SYS_ADMIN or CAP_SYS_PTRACE may read the maps but open neither) by the same path in
/// ours; by a path only while it names the mapped file (a library upgraded in place has a
/// new file there, describing other code; another mount namespace, another file). Either way
/// a regular file, looked at before it is opened, and never through a link the process's user
/// swapped in at the last step.
pub fn open_mapped_file(pid: u32, entry: &MapEntry) -> io::Result<fs::File> {
    use std::os::{fd::AsFd as _, unix::fs::MetadataExt as _};

    use crate::target::open::{open_at, open_in_root, reopen_for_reading};
    let mapped = map_file_path(pid, entry.start, entry.end);
    let path = match open_at(None, &mapped.to_string_lossy(), libc::O_PATH) {
        Ok(path) => {
            // The mapping read from the maps may have been replaced since, by another file
            // that would then be known by this one's identity (the objects are shared by it
            // across processes). By inode: on btrfs the maps give the file system's device,
            // `fstat` the subvolume's.
            if fs::File::from(path.try_clone()?).metadata()?.ino() != entry.inode {
                return Err(io::Error::other("replaced since it was mapped"));
            }
            path
        }
        Err(_) => {
            let root = open_at(
                None,
                &format!("/proc/{pid}/root"),
                libc::O_PATH | libc::O_DIRECTORY,
            );
            let inside = entry.path.trim_start_matches('/');
            let path = match root {
                Ok(root) => open_in_root(root.as_fd(), inside, libc::O_PATH | libc::O_NOFOLLOW)?,
                // With the profiler's own rights, and only a handle: what it names is checked
                // below before anything is opened.
                Err(_) => open_at(None, &entry.path, libc::O_PATH)?,
            };
            let metadata = fs::File::from(path.try_clone()?).metadata()?;
            let device = format!(
                "{:02x}:{:02x}",
                libc::major(metadata.dev()),
                libc::minor(metadata.dev())
            );
            if metadata.ino() != entry.inode || device != entry.device {
                return Err(io::Error::other("replaced since it was mapped"));
            }
            path
        }
    };
    if !fs::File::from(path.try_clone()?).metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    reopen_for_reading(&path)
}

/// Largest object file read whole (for unwind tables or allocator symbols): bounds the
/// memory and time one mapped file can cost.
pub const MAX_OBJECT_BYTES: u64 = 2 << 30;

/// The bytes of the object file `file`: a regular file of at most [`MAX_OBJECT_BYTES`], read
/// no further than that (a file that grows meanwhile is cut short, and fails to parse).
pub fn read_object(file: &mut fs::File) -> Option<Vec<u8>> {
    use io::Read as _;

    let metadata = file.metadata().ok()?;
    if !metadata.is_file() || metadata.len() > MAX_OBJECT_BYTES {
        return None;
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(MAX_OBJECT_BYTES).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// `/proc`, where descriptors, maps and allocator objects are read in real runs (tests pass
/// a folder of their own).
pub fn proc_root() -> std::path::PathBuf {
    std::path::PathBuf::from("/proc")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_container_of_a_cgroup() {
        let id = "3f1e9c2b7a4d5e6f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7";
        for cgroup in [
            format!("0::/system.slice/docker-{id}.scope\n"),
            format!("0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-{id}.scope\n"),
            format!("12:cpu,cpuacct:/docker/{id}\n0::/\n"),
            format!("0::/machine.slice/libpod-{id}.scope/container\n"),
        ] {
            assert_eq!(container_id_in(&cgroup).as_deref(), Some(id), "{cgroup}");
        }
        assert_eq!(
            container_id_in("0::/user.slice/user-1000.slice/session-2.scope\n"),
            None
        );
        assert_eq!(container_id_in("0::/\n"), None);
    }

    const MAPS: &str = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 1311 /usr/bin/demo
55d0c0a01000-55d0c0a02000 r-xp 00001000 fe:01 1311 /usr/bin/demo
7f1e2a000000-7f1e2a028000 r-xp 00028000 fe:01 2222 /tmp/my lib.so (deleted)
7f1e2b000000-7f1e2b021000 rw-p 00000000 00:00 0
7ffd1a1f0000-7ffd1a1f2000 r-xp 00000000 00:00 0                          [vdso]
";

    #[test]
    fn parses_maps_lines() {
        let maps = parse_maps(MAPS);
        assert_eq!(maps.len(), 5);
        assert_eq!(
            maps[1],
            MapEntry {
                start: 0x55d0_c0a0_1000,
                end: 0x55d0_c0a0_2000,
                executable: true,
                file_offset: 0x1000,
                device: "fe:01".into(),
                inode: 1311,
                path: "/usr/bin/demo".into(),
                deleted: false,
            }
        );
        assert!(!maps[0].executable);
        assert_eq!(maps[2].path, "/tmp/my lib.so");
        assert!(maps[2].deleted);
        assert_eq!(maps[3].path, "");
        assert_eq!(maps[4].path, "[vdso]");
    }

    #[test]
    fn parses_stat_with_odd_names() {
        let stat = parse_stat("77 (a) b) (c) S 12 77 77 0 -1 4194560 100 0 0 0").unwrap();
        assert_eq!(stat.parent_pid, 12);
        assert!(!stat.kernel_thread && !stat.zombie);
        let kthread = parse_stat("2 (kthreadd) S 0 0 0 0 -1 2129984 0 0").unwrap();
        assert!(kthread.kernel_thread);
        assert!(parse_stat("3 (x) Z 1 3 3 0 -1 4194560").unwrap().zombie);
    }

    #[test]
    fn finds_descendants_transitively() {
        let parents = [(10, 1), (11, 10), (12, 11), (13, 1), (14, 10)];
        assert_eq!(descendants_of(&[10], &parents), vec![11, 12, 14]);
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(is_alive(pid));
        assert!(!stat(pid).unwrap().kernel_thread);
        assert!(!command_line(pid).unwrap().is_empty());
        let maps = parse_maps(&read_maps(pid).unwrap());
        assert!(
            maps.iter()
                .any(|map| map.executable && !map.path.is_empty())
        );
        assert_eq!(split_nul(b"a\0b c\0"), vec!["a", "b c"]);
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        let me = threads(pid).into_iter().find(|t| t.tid == tid).unwrap();
        assert!(
            me.runnable,
            "the test thread reading its own state is running"
        );
    }
}
