//! A folder's own files after they were written: listed, read back and removed by name (the
//! agent's spool). Only regular files of the folder's owner with one name are the folder's:
//! a link or a hard link planted under a name of ours is never followed or read.

use std::{
    ffi::OsStr,
    fs, io,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _},
};

use super::{OutputDir, display, last_error, owned_files, remove_at, walk};
use walk::cstring;

/// A file of the folder's owner, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedFile {
    pub name: String,
    pub bytes: u64,
    /// Last modified: seconds and nanoseconds since the epoch.
    pub modified: (i64, i64),
}

impl OutputDir {
    /// A private folder of the profiler's own user (root, under sudo), not the sudo user's:
    /// for files only the profiler writes and trusts (the unwind-table cache).
    /// Made at once if missing, so that another `OutputDir` of the same folder finds it.
    pub fn prepare_private_own(path: &std::path::Path) -> io::Result<Self> {
        let out = Self::prepare_private_as(path, None)?;
        out.folder()?;
        Ok(out)
    }

    /// The same folder, for another thread (an `OutputDir` is used by one): its descriptors
    /// duplicated, not its path walked again, which someone could have swapped meanwhile.
    pub fn try_clone(&self) -> io::Result<Self> {
        let folder = std::cell::OnceCell::new();
        if let Some(fd) = self.folder.get() {
            let _ = folder.set(fd.try_clone()?);
        }
        Ok(OutputDir {
            path: self.path.clone(),
            existing: self.existing.try_clone()?,
            missing: self.missing.clone(),
            private: self.private,
            folder,
            invoker: self.invoker.clone(),
        })
    }

    /// The regular files of the folder's owner that `wanted` picks by name; none while the
    /// folder is still to be made.
    pub fn files_of_owner(&self, wanted: impl Fn(&str) -> bool) -> io::Result<Vec<OwnedFile>> {
        let folder = match self.missing.is_empty() {
            true => self.existing.as_fd(),
            false => match self.folder.get() {
                Some(folder) => folder.as_fd(),
                None => return Ok(Vec::new()),
            },
        };
        let names = owned_files(folder, self.owner_uid(), |name| {
            name.to_str().is_ok_and(&wanted)
        })?;
        Ok(names
            .into_iter()
            .filter_map(|name| {
                let stat = walk::stat_at(folder, &name).ok()?;
                // A hard link could name anyone's file under a name of ours.
                (stat.st_nlink == 1).then_some(())?;
                Some(OwnedFile {
                    name: name.into_string().ok()?,
                    bytes: stat.st_size as u64,
                    modified: (stat.st_mtime, stat.st_mtime_nsec),
                })
            })
            .collect())
    }

    /// Reads `name`, a regular file of the folder's owner, if it holds at most `limit` bytes.
    pub fn read(&self, name: &str, limit: u64) -> io::Result<Vec<u8>> {
        use std::{io::Read as _, os::unix::fs::MetadataExt as _};
        let name = cstring(OsStr::new(name))?;
        let folder = self.folder()?;
        let file = self.as_owner(|| {
            // SAFETY: a valid descriptor and a NUL-terminated name; a link is refused, and a
            // FIFO does not block the open.
            let fd = unsafe {
                libc::openat(
                    folder.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_RDONLY
                        | libc::O_NOFOLLOW
                        | libc::O_NONBLOCK
                        | libc::O_NOCTTY
                        | libc::O_CLOEXEC,
                )
            };
            last_error(fd, ()).map(|()| {
                // SAFETY: the kernel just returned this descriptor.
                unsafe { fs::File::from_raw_fd(fd) }
            })
        })?;
        let metadata = file.metadata()?;
        // A hard link could name anyone's file under a name of ours.
        if !metadata.is_file() || metadata.uid() != self.owner_uid() || metadata.nlink() != 1 {
            return Err(io::Error::other(format!(
                "{}: not a regular file of uid {} with one name",
                display(&name),
                self.owner_uid()
            )));
        }
        if metadata.len() > limit {
            return Err(io::Error::other(format!(
                "{}: {} bytes, more than {limit}",
                display(&name),
                metadata.len()
            )));
        }
        let mut contents = Vec::with_capacity(metadata.len().min(1 << 20) as usize);
        file.take(limit.saturating_add(1))
            .read_to_end(&mut contents)?;
        if contents.len() as u64 > limit {
            return Err(io::Error::other(format!(
                "{}: grew past {limit} bytes",
                display(&name)
            )));
        }
        Ok(contents)
    }

    /// Removes the file `name` (the entry; a link is not followed).
    pub fn remove(&self, name: &str) -> io::Result<()> {
        let name = cstring(OsStr::new(name))?;
        let folder = self.folder()?;
        self.as_owner(|| remove_at(folder, &name))
    }
}
