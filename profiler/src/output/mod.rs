//! The output folder: chosen and checked before profiling starts, created when the first
//! result is written, each file written in full or not at all.
//!
//! The path is resolved by descriptor ([`walk`]); system folders are refused on the descriptor
//! before anything is created; under sudo every folder and file is created with the invoking
//! user's own rights ([`Invoker`]), so it lands only where they could have put it themselves,
//! and is theirs.

mod invoker;
mod owned;
mod walk;

use std::{
    cell::OnceCell,
    ffi::{CStr, CString, OsStr},
    fs,
    io::{self, Write as _},
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use walk::{cstring, open_folder_at};

pub use invoker::Invoker;
pub use owned::OwnedFile;

/// Root of default output folders, relative to the working directory.
pub const DEFAULT_ROOT: &str = "benchmarks";

/// An output folder known to be writable, pinned by descriptor.
///
/// Missing folders are created on the first write, so a run that fails or is stopped before
/// it has results leaves nothing behind.
#[derive(Debug)]
pub struct OutputDir {
    /// The path as given, for messages.
    path: PathBuf,
    /// The deepest folder of `path` that existed when it was checked (`O_PATH`).
    existing: OwnedFd,
    /// Folders still to create below `existing`, outermost first.
    missing: Vec<CString>,
    /// A shared folder may already exist and be reused; a private one is new and 0700.
    private: bool,
    /// The folder itself, once it exists.
    folder: OnceCell<OwnedFd>,
    /// The sudo user, whose rights every creation uses.
    invoker: Option<Invoker>,
}

/// Prefix of files being written; what a killed run left under it goes at the next run.
const PARTIAL_PREFIX: &str = ".profiler-partial-";

/// A file a run was writing when it was killed.
fn is_partial_file(name: &[u8]) -> bool {
    name.starts_with(PARTIAL_PREFIX.as_bytes())
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

/// System folders where a service keeps state: a private folder of the profiler's own may be
/// made in them ([`OutputDir::prepare_private`]).
const STATE_DIRS: [&str; 3] = ["/var/lib", "/var/spool", "/var/cache"];

/// The system folder `real` (a resolved path) is in, if any; `/` itself counts.
fn system_dir(real: &Path) -> Option<&'static str> {
    if real == Path::new("/") {
        return Some("/");
    }
    SYSTEM_DIRS
        .into_iter()
        .find(|system| real.starts_with(system))
}

fn last_error<T>(result: libc::c_int, value: T) -> io::Result<T> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

/// Creates `names` one below the other under `existing`, each opened by descriptor right after
/// (`O_NOFOLLOW`: a symbolic link swapped in meanwhile is refused, never followed).
fn create_folders(
    existing: BorrowedFd<'_>,
    names: &[CString],
    private: bool,
) -> io::Result<OwnedFd> {
    let mode = if private { 0o700 } else { 0o777 };
    let mut current: Option<OwnedFd> = None;
    for name in names {
        let parent = current.as_ref().map_or(existing, |folder| folder.as_fd());
        // SAFETY: a valid descriptor and a NUL-terminated name.
        let made = unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), mode) };
        if made != 0 {
            let err = io::Error::last_os_error();
            // Another run may create a shared parent (`benchmarks`) at the same moment.
            if private || err.kind() != io::ErrorKind::AlreadyExists {
                return Err(err);
            }
        }
        current = Some(open_folder_at(Some(parent), name).map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("{} changed while being created: {err}", display(name)),
            )
        })?);
    }
    current.ok_or_else(|| io::Error::other("no folder to create"))
}

fn display(name: &CStr) -> std::path::Display<'_> {
    Path::new(OsStr::from_bytes(name.to_bytes())).display()
}

/// Creates a new file exclusively under a name of ours in `folder`.
fn create_partial(folder: BorrowedFd<'_>) -> io::Result<(CString, fs::File)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = CString::new(format!("{PARTIAL_PREFIX}{}-{n}", std::process::id()))
            .expect("no NUL in a number");
        // SAFETY: a valid descriptor and a NUL-terminated name.
        let fd = unsafe {
            libc::openat(
                folder.as_raw_fd(),
                name.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd >= 0 {
            // SAFETY: the kernel just returned this descriptor.
            return Ok((name, unsafe { fs::File::from_raw_fd(fd) }));
        }
        let err = io::Error::last_os_error();
        // A name taken by someone else is skipped; a few thousand tries mean something is wrong.
        if err.kind() != io::ErrorKind::AlreadyExists || n > 1 << 16 {
            return Err(err);
        }
    }
}

fn remove_at(folder: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: a valid descriptor and a NUL-terminated name; removes the entry, never follows it.
    last_error(
        unsafe { libc::unlinkat(folder.as_raw_fd(), name.as_ptr(), 0) },
        (),
    )
}

/// Writes `contents` under `name` in `folder`: a new file of ours, synced, renamed into place
/// (which replaces, never follows, whatever had that name).
fn write_at(
    folder: BorrowedFd<'_>,
    name: &CStr,
    fill: impl FnOnce(&mut fs::File) -> io::Result<()>,
) -> io::Result<()> {
    let (partial, mut file) = create_partial(folder)?;
    let written = fill(&mut file)
        .and_then(|()| file.sync_data())
        .and_then(|()| {
            // SAFETY: valid descriptors and NUL-terminated names.
            last_error(
                unsafe {
                    libc::renameat(
                        folder.as_raw_fd(),
                        partial.as_ptr(),
                        folder.as_raw_fd(),
                        name.as_ptr(),
                    )
                },
                (),
            )
        });
    if written.is_err() {
        let _ = remove_at(folder, &partial);
    }
    written
}

/// The regular files in `folder` that `owner` owns and `wanted` picks: a shared folder's
/// other files, and links planted under our names, are never removed.
fn owned_files(
    folder: BorrowedFd<'_>,
    owner: u32,
    wanted: impl Fn(&CStr) -> bool,
) -> io::Result<Vec<CString>> {
    // Read through the descriptor's own path in /proc: the same folder, whatever its name is now.
    let mut names = Vec::new();
    for entry in fs::read_dir(format!("/proc/self/fd/{}", folder.as_raw_fd()))? {
        let name = cstring(&entry?.file_name())?;
        if !wanted(&name) {
            continue;
        }
        let Ok(stat) = walk::stat_at(folder, &name) else {
            continue;
        };
        if stat.st_mode & libc::S_IFMT == libc::S_IFREG && stat.st_uid == owner {
            names.push(name);
        }
    }
    Ok(names)
}

impl OutputDir {
    /// Checks that results can be written at `path`: resolved by descriptor, outside system
    /// folders, writable (by the sudo user, under sudo). Nothing is created yet.
    pub fn prepare(path: &Path) -> io::Result<Self> {
        Self::prepare_as(path, false, Invoker::from_env())
    }

    /// Checks a folder for files no one else may read or change (the agent's spool): one that
    /// exists must be its owner's and writable by them alone; missing ones are made 0700.
    pub fn prepare_private(path: &Path) -> io::Result<Self> {
        Self::prepare_private_as(path, Invoker::from_env())
    }

    /// [`Self::prepare_private`] for the files of `invoker`, or of the profiler's own user.
    fn prepare_private_as(path: &Path, invoker: Option<Invoker>) -> io::Result<Self> {
        let out = Self::prepare_as(path, true, invoker)?;
        if out.missing.is_empty() {
            // SAFETY: an all-zero stat is valid to write to; a valid descriptor.
            let mut stat: libc::stat = unsafe { std::mem::zeroed() };
            last_error(
                unsafe { libc::fstat(out.existing.as_raw_fd(), &mut stat) },
                (),
            )?;
            if stat.st_uid != out.owner_uid() || stat.st_mode & 0o022 != 0 {
                return Err(io::Error::other(format!(
                    "{} must belong to uid {} and be writable by it alone (chmod go-w)",
                    path.display(),
                    out.owner_uid()
                )));
            }
        }
        Ok(out)
    }

    /// A new private (0700) folder in the temporary folder, for results the output folder
    /// could not take.
    pub fn private_temporary() -> io::Result<Self> {
        let base = std::env::temp_dir();
        let invoker = Invoker::from_env();
        let mut nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        for _ in 0..100 {
            let path = base.join(format!(
                "profiler-results-{}-{nanos:09}",
                std::process::id()
            ));
            let out = Self::prepare_as(&path, true, invoker.clone())?;
            match out.folder() {
                Ok(_) => return Ok(out),
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                    nanos = nanos.wrapping_mul(2_654_435_761).wrapping_add(1);
                }
                Err(err) => return Err(err),
            }
        }
        Err(io::Error::other(format!(
            "cannot create a new folder in {}",
            base.display()
        )))
    }

    fn prepare_as(path: &Path, private: bool, invoker: Option<Invoker>) -> io::Result<Self> {
        if path.as_os_str().is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an empty path; give a folder",
            ));
        }
        // SAFETY: no preconditions.
        let euid = unsafe { libc::geteuid() };
        let invoker_uid = invoker.as_ref().map(|invoker| invoker.uid);
        // Links root or the user made are followed (`/var/run`, `~/work`); anyone else's not.
        let trusted = move |uid: u32| uid == 0 || uid == euid || Some(uid) == invoker_uid;
        let as_user = || match &invoker {
            Some(invoker) => format!(" as uid {} (the user who ran sudo)", invoker.uid),
            None => String::new(),
        };
        let walked = as_owner(invoker.as_ref(), || walk::walk(path, trusted))
            .map_err(|err| io::Error::new(err.kind(), format!("{err}{}", as_user())))?;
        let real = walk::real_path(walked.existing.as_fd())?;
        // A private folder of its own may be made below the system's folders for state (a
        // service's spool, the unwind-table cache): no one else's files are in it. Under sudo
        // a spool is made with the user's rights, which cannot make it there, and the cache
        // is only ever the profiler's fixed folder.
        let state_folder = |system: &str| {
            private
                && STATE_DIRS.contains(&system)
                && (real != Path::new(system) || !walked.missing.is_empty())
        };
        if let Some(system) = system_dir(&real).filter(|system| !state_folder(system)) {
            return Err(io::Error::other(format!(
                "{} is inside the system folder {system}; choose a folder of your own",
                real.display()
            )));
        }
        // Where the first file or folder will be made must take one, by this user.
        as_owner(invoker.as_ref(), || {
            let (partial, _file) = create_partial(walked.existing.as_fd())?;
            remove_at(walked.existing.as_fd(), &partial)
        })
        .map_err(|err| {
            io::Error::new(
                err.kind(),
                format!(
                    "cannot create files in {}{}: {err}",
                    real.display(),
                    as_user()
                ),
            )
        })?;
        let out = OutputDir {
            path: path.to_path_buf(),
            folder: OnceCell::new(),
            existing: walked.existing,
            missing: walked.missing,
            private,
            invoker,
        };
        if out.missing.is_empty() {
            out.remove_partial_files()?;
        }
        Ok(out)
    }

    /// The folder, created (as the sudo user) on first use.
    fn folder(&self) -> io::Result<BorrowedFd<'_>> {
        if self.missing.is_empty() {
            return Ok(self.existing.as_fd());
        }
        if let Some(folder) = self.folder.get() {
            return Ok(folder.as_fd());
        }
        let (existing, missing, private) = (self.existing.as_fd(), &self.missing, self.private);
        let created = self.as_owner(|| create_folders(existing, missing, private))?;
        Ok(self.folder.get_or_init(|| created).as_fd())
    }

    /// The folder as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `name` in full or not at all.
    pub fn write(&self, name: &str, contents: &[u8]) -> io::Result<()> {
        self.write_with(name, |file| file.write_all(contents))
    }

    /// Writes the file `name` with what `fill` writes, as [`Self::write`] does: a large file
    /// is written as it is made, never held whole in memory.
    pub fn write_with(
        &self,
        name: &str,
        fill: impl FnOnce(&mut dyn io::Write) -> io::Result<()> + Send,
    ) -> io::Result<()> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(io::Error::other(format!("{name}: not a file name")));
        }
        let name = cstring(OsStr::new(name))?;
        let folder = self.folder()?;
        self.as_owner(|| {
            write_at(folder, &name, |file| {
                let mut writer = io::BufWriter::with_capacity(1 << 16, file);
                fill(&mut writer)?;
                writer.flush()
            })
        })
    }

    /// Removes the files `is_output` recognises that are not in `written` (regular files of
    /// this run's owner only): a reused folder holds one run's results, never a mix of two.
    pub fn remove_other_outputs(
        &self,
        written: &[String],
        is_output: impl Fn(&str) -> bool,
    ) -> io::Result<()> {
        let folder = self.folder()?;
        let stale = owned_files(folder, self.owner_uid(), |name| {
            name.to_str()
                .is_ok_and(|name| is_output(name) && !written.iter().any(|kept| kept == name))
        })?;
        self.as_owner(|| stale.iter().try_for_each(|name| remove_at(folder, name)))
    }

    /// Removes what a killed run left half-written.
    fn remove_partial_files(&self) -> io::Result<()> {
        let folder = self.existing.as_fd();
        let partial = owned_files(folder, self.owner_uid(), |name| {
            is_partial_file(name.to_bytes())
        })?;
        self.as_owner(|| partial.iter().try_for_each(|name| remove_at(folder, name)))
    }

    /// Who the files this writes belong to.
    fn owner_uid(&self) -> u32 {
        // SAFETY: no preconditions.
        self.invoker
            .as_ref()
            .map_or_else(|| unsafe { libc::geteuid() }, |invoker| invoker.uid)
    }

    fn as_owner<T: Send>(&self, work: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        as_owner(self.invoker.as_ref(), work)
    }
}

/// Opens a regular file the user named for reading, or `in_folder` inside it when they named a
/// folder, with their rights under sudo (so even whether a path is a folder is found out as
/// them). A FIFO or device is refused without blocking on it. Returns the file and its path.
pub fn open_for_reading(path: &Path, in_folder: &str) -> io::Result<(fs::File, PathBuf)> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let (file, path) = as_owner(Invoker::from_env().as_ref(), || {
        let open = |path: &Path| {
            fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
        };
        let file = open(path)?;
        if !file.metadata()?.is_dir() {
            return Ok((file, path.to_path_buf()));
        }
        // Relative to the folder just opened, not by its path again.
        let inside = format!("/proc/self/fd/{}/{in_folder}", file.as_raw_fd());
        Ok((open(Path::new(&inside))?, path.join(in_folder)))
    })?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other(format!(
            "{}: not a regular file",
            path.display()
        )));
    }
    Ok((file, path))
}

/// Runs `work` with the sudo user's rights when there is one.
fn as_owner<T: Send>(
    invoker: Option<&Invoker>,
    work: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    match invoker {
        Some(invoker) => invoker.run(work),
        None => work(),
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
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
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
            "no partial files left"
        );
        for name in ["", ".", "..", "a/b"] {
            assert!(out.write(name, b"").is_err(), "{name}");
        }
    }

    #[test]
    fn folders_are_created_on_the_first_write_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/run");
        let out = OutputDir::prepare(&path).unwrap();
        drop(out);
        assert!(
            !dir.path().join("a").exists(),
            "nothing made without results"
        );
        let out = OutputDir::prepare(&path).unwrap();
        out.write("x", b"1").unwrap();
        out.write("y", b"2").unwrap();
        assert_eq!(fs::read(path.join("x")).unwrap(), b"1");
        // `..` below a folder that does not exist yet is refused, not resolved.
        let err = OutputDir::prepare(&dir.path().join("d/../e")).unwrap_err();
        assert!(err.to_string().contains(".."), "{err}");
        assert!(!dir.path().join("d").exists());
        assert!(OutputDir::prepare(Path::new("")).is_err());
    }

    #[test]
    fn a_reused_folder_keeps_one_runs_outputs_and_no_partial_files() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "offcpu.svg",
            "notes.txt",
            ".profiler-partial-1-0",
            ".tmpAb12Cd",
        ] {
            fs::write(dir.path().join(name), "old").unwrap();
        }
        // Not ours to remove: a link under an output's name, another's partial file.
        std::os::unix::fs::symlink("notes.txt", dir.path().join("io.svg")).unwrap();
        let out = OutputDir::prepare(dir.path()).unwrap();
        assert!(!dir.path().join(".profiler-partial-1-0").exists());
        assert!(
            dir.path().join(".tmpAb12Cd").exists(),
            "someone else's temporary file"
        );
        out.write("cpu.svg", b"new").unwrap();
        out.remove_other_outputs(&["cpu.svg".to_owned()], |name| name.ends_with(".svg"))
            .unwrap();
        assert!(!dir.path().join("offcpu.svg").exists());
        assert!(dir.path().join("cpu.svg").exists());
        assert!(dir.path().join("notes.txt").exists(), "not ours: kept");
        assert!(dir.path().join("io.svg").is_symlink(), "a link: kept");
    }

    #[test]
    fn only_a_private_folder_of_its_own_goes_below_var_lib() {
        let path = Path::new("/var/lib/profiler-unit-test-spool/otlp");
        assert!(OutputDir::prepare(path).is_err(), "a shared folder there");
        assert!(OutputDir::prepare_private(Path::new("/var/lib")).is_err());
        assert!(OutputDir::prepare_private(Path::new("/etc/profiler")).is_err());
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let out = OutputDir::prepare_private(path).unwrap();
            assert!(!path.exists(), "made on the first write only");
            drop(out);
        }
    }

    #[test]
    fn a_private_temporary_folder_is_new_and_0700() {
        let out = OutputDir::private_temporary().unwrap();
        out.write("x", b"").unwrap();
        let mode = fs::metadata(out.path()).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o700
        );
        fs::remove_dir_all(out.path()).unwrap();
    }

    #[test]
    fn refuses_system_folders_and_symlinked_folders() {
        for path in ["/etc/profiler-test", "/usr/share/x", "/", "/etc/../usr/x"] {
            let err = OutputDir::prepare(Path::new(path)).unwrap_err();
            assert!(err.to_string().contains("system folder"), "{path}: {err}");
        }
        assert!(!Path::new("/etc/profiler-test").exists());
        let dir = tempfile::tempdir().unwrap();
        // A planted link to a system folder, as the final component or on the way.
        let link = dir.path().join("planted");
        std::os::unix::fs::symlink("/etc", &link).unwrap();
        let err = OutputDir::prepare(&link.join("sub")).unwrap_err();
        assert!(err.to_string().contains("system folder /etc"), "{err}");
        // The folder itself is never a link, wherever it points.
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
        assert!(OutputDir::prepare(&file.join("x")).is_err());
    }
}
