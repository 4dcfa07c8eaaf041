//! Resolving a folder path by descriptor, one component at a time, so that no component can be
//! swapped between a check and its use: each step opens the next folder relative to the
//! descriptor of the one before with `O_NOFOLLOW`, and a symbolic link is followed only when
//! its owner is trusted (root, or the user the profiler acts for), by reading it and walking
//! its target the same way.

use std::{
    collections::VecDeque,
    ffi::{CStr, CString, OsStr},
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Component, Path, PathBuf},
};

/// Symbolic links followed in one walk at most, as the kernel's own limit.
const MAX_LINKS: usize = 40;

/// Where a walk ended: the deepest folder that exists, and the names below it still to create.
#[derive(Debug)]
pub struct Walked {
    /// The deepest existing folder on the path (an `O_PATH` descriptor).
    pub existing: OwnedFd,
    /// Names still missing under `existing`, outermost first.
    pub missing: Vec<CString>,
}

/// One step of a walk.
enum Step {
    Root,
    Parent,
    Name(CString),
}

fn steps(path: &Path) -> io::Result<Vec<Step>> {
    path.components()
        .filter_map(|component| match component {
            Component::RootDir => Some(Ok(Step::Root)),
            Component::ParentDir => Some(Ok(Step::Parent)),
            Component::CurDir => None,
            Component::Normal(name) => Some(cstring(name).map(Step::Name)),
            Component::Prefix(_) => Some(Err(io::Error::other("not a Unix path"))),
        })
        .collect()
}

pub(super) fn cstring(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::other("a path with a NUL byte"))
}

/// Opens a folder relative to `dir` (`None`: the working directory) without following a
/// symbolic link in its place.
pub(super) fn open_folder_at(dir: Option<BorrowedFd<'_>>, name: &CStr) -> io::Result<OwnedFd> {
    let dir = dir.map_or(libc::AT_FDCWD, |dir| dir.as_raw_fd());
    // SAFETY: a valid descriptor (or AT_FDCWD) and a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `lstat` of `name` in `dir`.
pub(super) fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: `stat` is written by the call; a valid descriptor and name.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    let flags = libc::AT_SYMLINK_NOFOLLOW;
    if unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut stat, flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat)
}

fn read_link_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<PathBuf> {
    let mut buffer = vec![0_u8; libc::PATH_MAX as usize];
    // SAFETY: `buffer` has room for `len` bytes; a valid descriptor and name.
    let len = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
        )
    };
    let len = usize::try_from(len).map_err(|_| io::Error::last_os_error())?;
    buffer.truncate(len);
    Ok(PathBuf::from(OsStr::from_bytes(&buffer)))
}

/// Where a descriptor's folder really is, whatever links led there.
pub fn real_path(dir: BorrowedFd<'_>) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))
}

/// Walks `path` from `/` or from the working directory. A symbolic link is followed only when
/// `trusted_owner` accepts its owner, and never as the last component (the folder itself).
pub fn walk(path: &Path, trusted_owner: impl Fn(u32) -> bool) -> io::Result<Walked> {
    let mut pending: VecDeque<Step> = steps(path)?.into();
    let mut dir = open_folder_at(None, c".")?;
    let mut links = 0;
    while let Some(step) = pending.pop_front() {
        let name = match step {
            Step::Root => {
                dir = open_folder_at(None, c"/")?;
                continue;
            }
            Step::Parent => {
                dir = open_folder_at(Some(dir.as_fd()), c"..")?;
                continue;
            }
            Step::Name(name) => name,
        };
        let error = match open_folder_at(Some(dir.as_fd()), &name) {
            Ok(next) => {
                dir = next;
                continue;
            }
            Err(error) => error,
        };
        let shown = Path::new(OsStr::from_bytes(name.as_bytes())).display();
        match error.raw_os_error() {
            Some(libc::ENOENT) => {
                let mut missing = vec![name];
                for step in pending {
                    match step {
                        Step::Name(name) => missing.push(name),
                        Step::Root | Step::Parent => {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidInput,
                                "a folder to create may not contain `..`",
                            ));
                        }
                    }
                }
                return Ok(Walked {
                    existing: dir,
                    missing,
                });
            }
            Some(libc::ENOTDIR | libc::ELOOP) => {}
            _ => return Err(io::Error::new(error.kind(), format!("{shown}: {error}"))),
        }
        let stat = stat_at(dir.as_fd(), &name)?;
        if stat.st_mode & libc::S_IFMT != libc::S_IFLNK {
            return Err(io::Error::other(format!(
                "{shown} exists and is not a folder"
            )));
        }
        if pending.is_empty() {
            return Err(io::Error::other(format!(
                "{shown} is a symbolic link; refusing to follow it (give the real folder)"
            )));
        }
        if !trusted_owner(stat.st_uid) {
            return Err(io::Error::other(format!(
                "{shown} is a symbolic link owned by uid {}, who could point it anywhere; \
                 refusing to follow it (give the real folder)",
                stat.st_uid
            )));
        }
        links += 1;
        if links > MAX_LINKS {
            return Err(io::Error::other(format!(
                "{shown}: more than {MAX_LINKS} symbolic links"
            )));
        }
        let target = read_link_at(dir.as_fd(), &name)?;
        for step in steps(&target)?.into_iter().rev() {
            pending.push_front(step);
        }
    }
    Ok(Walked {
        existing: dir,
        missing: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(walked: &Walked) -> Vec<&str> {
        walked
            .missing
            .iter()
            .map(|name| name.to_str().unwrap())
            .collect()
    }

    #[test]
    fn walks_existing_folders_and_lists_the_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        let walked = walk(&dir.path().join("a/./b/c/d"), |_| true).unwrap();
        assert_eq!(names(&walked), ["c", "d"]);
        assert_eq!(
            real_path(walked.existing.as_fd()).unwrap(),
            dir.path().join("a/b")
        );
        // `..` resolves through existing folders, never below a missing one.
        let walked = walk(&dir.path().join("a/b/../x"), |_| true).unwrap();
        assert_eq!(names(&walked), ["x"]);
        assert!(walk(&dir.path().join("a/m/../x"), |_| true).is_err());
        // A file on the way is not a folder.
        std::fs::write(dir.path().join("f"), "").unwrap();
        let err = walk(&dir.path().join("f/x"), |_| true).unwrap_err();
        assert!(err.to_string().contains("not a folder"), "{err}");
    }

    #[test]
    fn follows_only_trusted_links_and_never_the_last_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink("real", dir.path().join("link")).unwrap();
        let walked = walk(&dir.path().join("link/new"), |_| true).unwrap();
        assert_eq!(
            real_path(walked.existing.as_fd()).unwrap(),
            dir.path().join("real")
        );
        let err = walk(&dir.path().join("link/new"), |_| false).unwrap_err();
        assert!(err.to_string().contains("owned by uid"), "{err}");
        let err = walk(&dir.path().join("link"), |_| true).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        // A loop ends.
        std::os::unix::fs::symlink("loop", dir.path().join("loop")).unwrap();
        let err = walk(&dir.path().join("loop/x"), |_| true).unwrap_err();
        assert!(err.to_string().contains("symbolic links"), "{err}");
    }
}
