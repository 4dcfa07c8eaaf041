//! A target process's `/tmp`, reached by descriptor: where runtimes write their JIT symbol maps
//! (`perf-PID.map`) and the JVM listens for attach requests.
//!
//! The folder is the process's own (`/proc/PID/root`, so containers work), resolved once while
//! the process lives and kept open, so its maps can still be read after it exits. Its user
//! owns what is in it: names are opened without following links (a link to `/etc/shadow`
//! named `perf-PID.map` must not become symbol names in the user's output), only files of the
//! process's user are used, and nothing is created where a file already is.

use std::{
    fs::File,
    io,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
};

use crate::target::open::{cstring, open_at, open_in_root, read_small, reopen_for_reading};

/// A target's `/tmp`, open, and the process it belongs to.
#[derive(Debug)]
pub struct TargetTmp {
    dir: OwnedFd,
    /// The process (a pidfd): signalled through it, so never another process that got its
    /// pid after it exited.
    process: OwnedFd,
    /// Its `/proc/PID` folder: reads through it fail once the process is gone.
    proc_dir: OwnedFd,
    /// The process's pid in its own pid namespace: the number runtimes put in file names.
    pub nspid: u32,
    /// The process's effective uid: the owner of the files it writes.
    pub owner: u32,
}

impl TargetTmp {
    /// Opens `/tmp` as process `pid` sees it.
    pub fn open(pid: u32) -> io::Result<TargetTmp> {
        // SAFETY: pidfd_open takes a pid and flags, no memory.
        let process = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if process < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor, owned by nobody else.
        let process = unsafe { OwnedFd::from_raw_fd(process as i32) };
        // Status and root through one `/proc/PID` descriptor, checked to be the pidfd's
        // process afterwards: all of one process, not of one that reused the pid meanwhile.
        let proc_dir = open_at(
            None,
            &format!("/proc/{pid}"),
            libc::O_PATH | libc::O_DIRECTORY,
        )?;
        let status = read_small(proc_dir.as_fd(), "status")?;
        let (nspid, owner) = status_ids(&status)
            .ok_or_else(|| io::Error::other(format!("/proc/{pid}/status names no pid or uid")))?;
        let root = open_at(
            Some(proc_dir.as_fd()),
            "root",
            libc::O_PATH | libc::O_DIRECTORY,
        )?;
        // `/tmp` inside the process's root: links in its path stay inside that root.
        let dir = open_in_root(root.as_fd(), "tmp", libc::O_PATH | libc::O_DIRECTORY)?;
        let tmp = TargetTmp {
            dir,
            process,
            proc_dir,
            nspid,
            owner,
        };
        if !tmp.is_alive() {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(tmp)
    }

    /// Whether the process still runs (its pid names it, not a successor).
    pub fn is_alive(&self) -> bool {
        self.signal(0).is_ok()
    }

    /// Sends the process `signal` (0 checks that it exists).
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        // SAFETY: a pidfd, no siginfo, no flags.
        let result = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.process.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if result < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The process's `/proc/PID/status`, while it runs.
    pub fn status(&self) -> io::Result<String> {
        read_small(self.proc_dir.as_fd(), "status")
    }

    /// Another descriptor of the same folder (for a request made on another thread).
    pub fn try_clone(&self) -> io::Result<TargetTmp> {
        Ok(TargetTmp {
            dir: self.dir.try_clone()?,
            process: self.process.try_clone()?,
            proc_dir: self.proc_dir.try_clone()?,
            ..*self
        })
    }

    /// Opens `name` for reading: a regular file of the process's user, with no other name,
    /// readable by that user, not a link.
    pub fn open_file(&self, name: &str) -> io::Result<File> {
        use std::os::unix::fs::MetadataExt as _;
        // Looked at before it is opened: opening a device node (a container's root can make
        // one) could act on the device.
        let (path, metadata) = self.look(name)?;
        if !metadata.is_file() {
            return Err(io::Error::other(format!("{name} is not a regular file")));
        }
        // A second name (a hard link to another file of the user's) or a file its owner may
        // not read must not be read by root on the user's behalf.
        if metadata.nlink() != 1 || metadata.mode() & 0o400 == 0 {
            return Err(io::Error::other(format!(
                "{name} has other names or is not readable by its owner: not read"
            )));
        }
        reopen_for_reading(&path)
    }

    /// A descriptor (`O_PATH`) of the socket `name`, of the process's user, not a link.
    pub fn socket(&self, name: &str) -> io::Result<OwnedFd> {
        use std::os::unix::fs::FileTypeExt as _;
        let (fd, metadata) = self.look(name)?;
        if !metadata.file_type().is_socket() {
            return Err(io::Error::other(format!("{name} is not a socket")));
        }
        Ok(fd)
    }

    /// An `O_PATH` descriptor of `name` (never a link) and what it is, when it belongs to the
    /// process's user.
    fn look(&self, name: &str) -> io::Result<(OwnedFd, std::fs::Metadata)> {
        use std::os::unix::fs::MetadataExt as _;
        let fd = open_at(
            Some(self.dir.as_fd()),
            name,
            libc::O_PATH | libc::O_NOFOLLOW,
        )?;
        let metadata = File::from(fd.try_clone()?).metadata()?;
        if metadata.uid() != self.owner {
            return Err(io::Error::other(format!(
                "{name} belongs to uid {}, not to the process's user ({}): not used",
                metadata.uid(),
                self.owner
            )));
        }
        Ok((fd, metadata))
    }

    /// Creates `name`, empty, readable by its owner only; fails if anything is there already.
    pub fn create_file(&self, name: &str) -> io::Result<File> {
        let name = cstring(name)?;
        // SAFETY: `dir` is an open descriptor and `name` a NUL-terminated string.
        let fd = unsafe {
            libc::openat(
                self.dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor, owned by nobody else.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// Removes the file `name` (the entry, never what a link points to).
    pub fn remove(&self, name: &str) -> io::Result<()> {
        let name = cstring(name)?;
        // SAFETY: as in `create_file`.
        if unsafe { libc::unlinkat(self.dir.as_raw_fd(), name.as_ptr(), 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The innermost pid (`NSpid`, else `Pid`) and the effective uid from `/proc/PID/status`.
fn status_ids(status: &str) -> Option<(u32, u32)> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::split_whitespace)
    };
    let nspid = field("NSpid")
        .and_then(Iterator::last)
        .or_else(|| field("Pid").and_then(|mut f| f.next()))?
        .parse()
        .ok()?;
    let euid = field("Uid")?.nth(1)?.parse().ok()?;
    Some((nspid, euid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_innermost_pid_and_the_effective_uid() {
        let status = "Name:\tjava\nPid:\t4242\nUid:\t1000\t1001\t1000\t1000\nNSpid:\t4242\t7\n";
        assert_eq!(status_ids(status), Some((7, 1001)));
        let no_namespaces = "Pid:\t12\nUid:\t0\t0\t0\t0\n";
        assert_eq!(status_ids(no_namespaces), Some((12, 0)));
        assert_eq!(status_ids("Name:\tx\n"), None);
    }

    #[test]
    fn refuses_links_foreign_files_and_existing_names() {
        let tmp = tempfile::tempdir().unwrap();
        let mut target = TargetTmp::open(std::process::id()).unwrap();
        target.dir = open_at(None, tmp.path().to_str().unwrap(), libc::O_PATH).unwrap();
        std::fs::write(tmp.path().join("perf-1.map"), "0x10 0x10 f\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", tmp.path().join("perf-2.map")).unwrap();
        std::fs::hard_link(tmp.path().join("perf-1.map"), tmp.path().join("perf-3.map")).unwrap();
        std::fs::write(tmp.path().join("perf-4.map"), "0x10 0x10 f\n").unwrap();
        let fifo = std::ffi::CString::new(tmp.path().join("perf-5.map").to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(target.open_file("perf-4.map").is_ok());
        assert!(
            target.open_file("perf-1.map").is_err(),
            "read a file with two names"
        );
        assert!(target.open_file("perf-2.map").is_err(), "followed a link");
        assert!(target.open_file("perf-5.map").is_err(), "opened a FIFO");
        assert!(target.create_file("perf-4.map").is_err(), "replaced a file");
        assert!(
            target.create_file("perf-2.map").is_err(),
            "wrote through a link"
        );
        assert!(target.create_file(".attach_pid1").is_ok());
        target.remove(".attach_pid1").unwrap();
        assert!(!tmp.path().join(".attach_pid1").exists());
        target.owner = target.owner.wrapping_add(1);
        assert!(
            target.open_file("perf-4.map").is_err(),
            "read another user's file"
        );
    }

    #[test]
    fn opens_own_tmp_and_knows_when_its_process_is_gone() {
        let tmp = TargetTmp::open(std::process::id()).unwrap();
        assert_eq!(tmp.nspid, std::process::id());
        assert!(tmp.is_alive());
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let other = TargetTmp::open(child.id()).unwrap();
        assert!(other.is_alive() && other.status().is_ok());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!other.is_alive());
        assert!(
            other.status().is_err(),
            "read the status of an exited process"
        );
    }
}
