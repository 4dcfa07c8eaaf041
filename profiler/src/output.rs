//! The output folder: chosen, checked before profiling starts, and written atomically.

use std::{
    fs,
    io::{self, Write as _},
    os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _},
    path::{Path, PathBuf},
};

/// Root of default output folders, relative to the working directory.
pub const DEFAULT_ROOT: &str = "benchmarks";

/// An output folder known to be writable.
///
/// A folder this created is removed again if dropped before anything was written to it, so a
/// run that fails leaves no empty result folders behind.
#[derive(Debug)]
pub struct OutputDir {
    path: PathBuf,
    /// The folder as opened when checked: files are written through `/proc/self/fd/N`, so a
    /// folder swapped for a symlink after the check is never written through.
    dir: fs::File,
    /// `/proc/self/fd/N` of `dir`.
    write_path: PathBuf,
    /// Owner to give files to when running under sudo.
    owner: Option<(u32, u32)>,
    /// Whether `prepare` created the folder.
    created: bool,
    /// Whether a file was written.
    used: std::cell::Cell<bool>,
}

/// `benchmarks/<target>-<YYYYmmdd-HHMMSS>` for a target name and a local time stamp.
pub fn default_dir(target: &str, stamp: &str) -> PathBuf {
    let name: String = target
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let name = name.trim_start_matches('.');
    let name = if name.is_empty() { "target" } else { name };
    Path::new(DEFAULT_ROOT).join(format!("{name}-{stamp}"))
}

/// Local time as `YYYYmmdd-HHMMSS`.
pub fn local_stamp(unix_secs: i64) -> String {
    // SAFETY: `localtime_r` writes only into `tm`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let time: libc::time_t = unix_secs;
    if unsafe { libc::localtime_r(&time, &mut tm) }.is_null() {
        return unix_secs.to_string();
    }
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// Folders the profiler never writes into, even when asked: a root process writing there on a
/// user's say-so could replace system files.
const SYSTEM_DIRS: [&str; 17] = [
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/lib",
    "/var/log",
    "/var/spool",
    "/var/cache",
];

/// The system folder `real` (a resolved path) is in, if any; `/` itself counts.
fn system_dir(real: &Path) -> Option<&'static str> {
    if real == Path::new("/") {
        return Some("/");
    }
    SYSTEM_DIRS
        .into_iter()
        .find(|system| real.starts_with(system))
}

/// Opens a folder without following a symlink in its place.
fn open_folder(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
}

/// Creates the folders from `existing` down to `path` one at a time, each relative to the
/// descriptor of its parent and given to `owner` through its own descriptor: a folder swapped
/// for a symlink meanwhile is refused, never followed. Returns the last one, open.
fn create_folders(existing: &Path, path: &Path, owner: Option<(u32, u32)>) -> io::Result<fs::File> {
    use std::os::unix::ffi::OsStrExt as _;
    let missing = if existing == Path::new(".") && !path.starts_with(".") {
        path
    } else {
        path.strip_prefix(existing).map_err(io::Error::other)?
    };
    let names = missing
        .components()
        .map(|component| match component {
            std::path::Component::Normal(name) => {
                std::ffi::CString::new(name.as_bytes()).map_err(io::Error::other)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a folder to create may not contain `..`",
            )),
        })
        .collect::<io::Result<Vec<_>>>()?;
    let mut parent = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(existing)?;
    for name in names {
        // SAFETY: a valid descriptor and a NUL-terminated name.
        if unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o777) } != 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::AlreadyExists {
                return Err(err);
            }
        }
        // SAFETY: as above.
        let fd = unsafe {
            libc::openat(
                parent.as_raw_fd(),
                name.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor.
        parent = unsafe { <fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        give_to(owner, &parent);
    }
    Ok(parent)
}

/// Gives an open file or folder to `owner`, by descriptor (no path to swap).
fn give_to(owner: Option<(u32, u32)>, file: &fs::File) {
    if let Some((uid, gid)) = owner {
        // SAFETY: a valid descriptor. Best effort: results stay readable by root.
        let _ = unsafe { libc::fchown(file.as_raw_fd(), uid, gid) };
    }
}

/// The invoking user when run through sudo, to hand results back to.
fn sudo_owner() -> Option<(u32, u32)> {
    let uid = std::env::var("SUDO_UID").ok()?.parse().ok()?;
    let gid = std::env::var("SUDO_GID").ok()?.parse().ok()?;
    Some((uid, gid))
}

impl OutputDir {
    /// Creates `path` (and parents) if needed and checks files can be written there.
    pub fn prepare(path: &Path) -> io::Result<Self> {
        if path.as_os_str().is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an empty path; give a folder",
            ));
        }
        // Checked before anything is created: the deepest existing ancestor, resolved.
        let existing = path
            .ancestors()
            .find(|ancestor| !ancestor.as_os_str().is_empty() && ancestor.exists())
            .unwrap_or(Path::new("."));
        if let Ok(real) = fs::canonicalize(existing)
            && let Some(system) = system_dir(&real)
        {
            return Err(io::Error::other(format!(
                "{} is inside the system folder {system}; choose a folder of your own",
                real.display()
            )));
        }
        let owner = sudo_owner();
        let created = !path.exists() && !path.is_symlink();
        let dir = if created {
            create_folders(existing, path, owner)?
        } else {
            let metadata = fs::symlink_metadata(path)?;
            if metadata.file_type().is_symlink() {
                return Err(io::Error::other(
                    "is a symbolic link; refusing to follow it (give the real folder)",
                ));
            }
            if !metadata.is_dir() {
                return Err(io::Error::other("exists and is not a folder"));
            }
            open_folder(path)?
        };
        let write_path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        // Where it really is, whatever symlinks led there.
        let real = fs::read_link(&write_path)?;
        if let Some(system) = system_dir(&real) {
            return Err(io::Error::other(format!(
                "{} is inside the system folder {system}; choose a folder of your own",
                real.display()
            )));
        }
        // Probe with a real file: permissions, read-only mounts and full disks all show here.
        tempfile::NamedTempFile::new_in(&write_path)?;
        Ok(OutputDir {
            path: path.to_path_buf(),
            dir,
            write_path,
            owner,
            created,
            used: std::cell::Cell::new(false),
        })
    }

    /// Gives the folder itself to the sudo user (one the profiler made for them elsewhere).
    pub fn give_folder_to_owner(&self) {
        self.give_to_owner(&self.dir);
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `name` in full or not at all: a temporary file renamed into place, which also
    /// replaces (never follows) a symlink planted under that name.
    pub fn write(&self, name: &str, contents: &[u8]) -> io::Result<()> {
        self.used.set(true);
        if name.contains('/') || name == ".." {
            return Err(io::Error::other(format!("{name}: not a file name")));
        }
        // Created exclusively (O_EXCL) under a random name, renamed into place.
        let mut file = tempfile::NamedTempFile::new_in(&self.write_path)?;
        file.write_all(contents)?;
        file.as_file().sync_data()?;
        self.give_to_owner(file.as_file());
        let target = self.write_path.join(name);
        file.persist(&target).map_err(|err| err.error)?;
        Ok(())
    }

    /// `/proc/self/fd/N` of the folder, for writers that need a path.
    pub fn write_path(&self) -> &Path {
        &self.write_path
    }

    /// Gives a file to the sudo user.
    fn give_to_owner(&self, file: &fs::File) {
        give_to(self.owner, file);
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        if self.created && !self.used.get() {
            // Only succeeds while empty; parents created on the way are left alone.
            let _ = fs::remove_dir(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_dir_is_safe_and_stamped() {
        assert_eq!(
            default_dir("my app/../x", "20260101-120000"),
            PathBuf::from("benchmarks/my_app_.._x-20260101-120000")
        );
        assert_eq!(default_dir("..", "s"), PathBuf::from("benchmarks/target-s"));
        assert_eq!(local_stamp(0).len(), 15);
    }

    #[test]
    fn writes_atomically_and_replaces_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutputDir::prepare(&dir.path().join("a/b")).unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, out.path().join("cpu.folded")).unwrap();
        out.write("cpu.folded", b"main 1\n").unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(
            fs::read_to_string(out.path().join("cpu.folded")).unwrap(),
            "main 1\n"
        );
        assert_eq!(
            fs::read_dir(out.path()).unwrap().count(),
            1,
            "no temporary files left"
        );
    }

    #[test]
    fn unused_folder_it_created_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run");
        drop(OutputDir::prepare(&path).unwrap());
        assert!(!path.exists());
        let out = OutputDir::prepare(&path).unwrap();
        out.write("x", b"").unwrap();
        drop(out);
        assert!(path.join("x").exists());
        // A folder that existed before is never removed.
        drop(OutputDir::prepare(dir.path()).unwrap());
        assert!(dir.path().exists());
    }

    #[test]
    fn creates_nested_folders_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/c");
        let out = OutputDir::prepare(&path).unwrap();
        out.write("x", b"1").unwrap();
        assert_eq!(fs::read(path.join("x")).unwrap(), b"1");
        // `..` below a folder that does not exist yet is refused, not resolved.
        let err = OutputDir::prepare(&dir.path().join("d/../e")).unwrap_err();
        assert!(err.to_string().contains(".."), "{err}");
        assert!(!dir.path().join("d").exists());
        assert!(OutputDir::prepare(Path::new("")).is_err());
    }

    #[test]
    fn refuses_system_folders_and_symlinked_folders() {
        for path in ["/etc/profiler-test", "/usr/share/x", "/"] {
            let err = OutputDir::prepare(Path::new(path)).unwrap_err();
            assert!(err.to_string().contains("system folder"), "{path}: {err}");
        }
        assert!(!Path::new("/etc/profiler-test").exists());
        let dir = tempfile::tempdir().unwrap();
        // A planted link to a system folder, as the final component or on the way.
        let link = dir.path().join("planted");
        std::os::unix::fs::symlink("/etc", &link).unwrap();
        for path in [link.clone(), link.join("sub")] {
            let err = OutputDir::prepare(&path).unwrap_err();
            assert!(err.to_string().contains("system folder /etc"), "{err}");
        }
        // A link elsewhere is not followed either.
        let elsewhere = tempfile::tempdir().unwrap();
        let link = dir.path().join("elsewhere");
        std::os::unix::fs::symlink(elsewhere.path(), &link).unwrap();
        let err = OutputDir::prepare(&link).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(system_dir(Path::new("/etcetera")), None);
        assert_eq!(system_dir(Path::new("/var/lib/x")), Some("/var/lib"));
    }

    #[test]
    fn refuses_a_file_as_folder() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, "").unwrap();
        assert!(OutputDir::prepare(&file).is_err());
    }
}
