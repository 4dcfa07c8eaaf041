//! The user who ran the profiler through sudo. Whatever the profiler creates, writes or reads on
//! their behalf is done with their file-system rights (fsuid, fsgid, groups) on a thread of its
//! own, so the kernel itself refuses what they could not do: a root process cannot be talked
//! into writing in `/etc` or `/root` through a path they control.

use std::{ffi::CStr, io};

/// The invoking user of a root process started by sudo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invoker {
    /// `SUDO_UID`.
    pub uid: u32,
    /// `SUDO_GID`.
    pub gid: u32,
    /// Supplementary groups of the user, from the group database.
    groups: Vec<libc::gid_t>,
}

impl Invoker {
    /// The sudo user, when this process runs as root for one (`SUDO_UID`, `SUDO_GID`).
    pub fn from_env() -> Option<Self> {
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let uid: u32 = std::env::var("SUDO_UID").ok()?.parse().ok()?;
        let gid: u32 = std::env::var("SUDO_GID").ok()?.parse().ok()?;
        if uid == 0 {
            return None;
        }
        Some(Invoker {
            uid,
            gid,
            groups: supplementary_groups(uid, gid),
        })
    }

    /// Runs `work` on a thread whose file-system identity is the invoker's.
    pub fn run<T: Send>(&self, work: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    self.become_on_this_thread()?;
                    work()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Takes the invoker's file-system identity on the calling thread only: the raw system
    /// calls change one thread's credentials (glibc's wrappers of setgroups would change all).
    fn become_on_this_thread(&self) -> io::Result<()> {
        // SAFETY: a valid array of `len` group ids.
        let set =
            unsafe { libc::syscall(libc::SYS_setgroups, self.groups.len(), self.groups.as_ptr()) };
        if set != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: these calls take plain ids; each returns the previous one, and an invalid id
        // (u32::MAX) changes nothing, so asking twice reads back what is in force.
        let (fsgid, fsuid) = unsafe {
            libc::syscall(libc::SYS_setfsgid, self.gid);
            libc::syscall(libc::SYS_setfsuid, self.uid);
            (
                libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32,
                libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32,
            )
        };
        if (fsuid, fsgid) != (self.uid, self.gid) {
            return Err(io::Error::other(format!(
                "cannot act as uid {} gid {} (the user who ran sudo)",
                self.uid, self.gid
            )));
        }
        Ok(())
    }
}

/// The groups `uid` belongs to, `gid` included; just `gid` when the user is not in the database.
fn supplementary_groups(uid: u32, gid: u32) -> Vec<libc::gid_t> {
    let mut buffer = vec![0_u8; 16 * 1024];
    // SAFETY: `passwd` and `buffer` outlive the call; `result` points at `passwd` or is null.
    let mut passwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result = std::ptr::null_mut();
    let found = unsafe {
        libc::getpwuid_r(
            uid,
            &mut passwd,
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            &mut result,
        )
    };
    if found != 0 || result.is_null() {
        return vec![gid];
    }
    // SAFETY: getpwuid_r filled `pw_name` with a NUL-terminated name inside `buffer`.
    let name = unsafe { CStr::from_ptr(passwd.pw_name) };
    let mut groups = vec![0 as libc::gid_t; 256];
    let mut count = groups.len() as libc::c_int;
    // SAFETY: `groups` has room for `count` ids; the call lowers `count` to what it wrote.
    let listed = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
    if listed < 0 {
        return vec![gid];
    }
    groups.truncate(usize::try_from(count).unwrap_or(0));
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acts_as_the_invoker_on_its_own_thread_only() {
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return; // Changing identity needs root; the integration tests run as root.
        }
        let invoker = Invoker {
            uid: 65534,
            gid: 65534,
            groups: vec![65534],
        };
        let dir = tempfile::tempdir().unwrap();
        // A root-only folder: the invoker cannot create anything in it.
        let err = invoker
            .run(|| std::fs::create_dir(dir.path().join("x")))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        // What it may write, it owns.
        std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
        invoker
            .run(|| std::fs::create_dir(dir.path().join("y")))
            .unwrap();
        let owner =
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dir.path().join("y")).unwrap());
        assert_eq!(owner, 65534);
        // This thread is still root.
        std::fs::create_dir(dir.path().join("z")).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dir.path().join("z")).unwrap()),
            0
        );
    }
}
