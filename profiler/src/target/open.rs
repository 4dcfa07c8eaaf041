//! Opening files on a target's behalf by descriptor: one step at a time, inside the target's
//! root, without following a link its user could swap in, and looking at what a name is
//! (`O_PATH`) before opening it (a FIFO would hang the profiler, a device act).

use std::{
    ffi::CString,
    fs::File,
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

/// `name` as a C string.
pub fn cstring(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::other("a name with a NUL byte"))
}

/// `openat(dir or the current folder, path, flags | O_CLOEXEC)`.
pub fn open_at(dir: Option<BorrowedFd<'_>>, path: &str, flags: i32) -> io::Result<OwnedFd> {
    let path = cstring(path)?;
    let dir = dir.map_or(libc::AT_FDCWD, |dir| dir.as_raw_fd());
    // SAFETY: `dir` is open (or AT_FDCWD) and `path` NUL-terminated.
    let fd = unsafe { libc::openat(dir, path.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads a small file under `dir` (a `/proc/PID` entry).
pub fn read_small(dir: BorrowedFd<'_>, name: &str) -> io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    File::from(open_at(Some(dir), name, libc::O_RDONLY)?)
        .take(64 << 10)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// `openat2` with `root` as the root of every path and link: `..` and absolute links in the
/// process's own folders stay in its file system (what they mean to it).
pub fn open_in_root(root: BorrowedFd<'_>, path: &str, flags: i32) -> io::Result<OwnedFd> {
    let path = cstring(path)?;
    // SAFETY: plain data; zero is "no flags".
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `root` is open, `path` NUL-terminated, `how` a valid open_how of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Opens for reading the file an `O_PATH` descriptor names, without blocking (a FIFO) and
/// without becoming a terminal's controller.
pub fn reopen_for_reading(path: &OwnedFd) -> io::Result<File> {
    let fd = open_at(
        None,
        &format!("/proc/self/fd/{}", path.as_raw_fd()),
        libc::O_RDONLY | libc::O_NOCTTY | libc::O_NONBLOCK,
    )?;
    Ok(File::from(fd))
}
