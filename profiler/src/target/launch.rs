//! Launching a command that waits, between fork and exec, until the profiler is attached, so
//! the profile starts at the program's first instruction.

use std::{
    ffi::{OsStr, OsString},
    fs::File,
    io::{self, Read as _, Write as _},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt as _, fs::PermissionsExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Child, Command},
    thread::JoinHandle,
};

/// Errors launching the command.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// No such program.
    #[error("command not found: {0}")]
    NotFound(String),
    /// Found but not executable.
    #[error("permission denied: {0} is not executable")]
    NotExecutable(String),
    /// Anything else.
    #[error("cannot start {program}: {source}")]
    Io {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Finds `program` like a shell would: paths with a `/` as they are, others along `PATH`.
pub fn resolve_program(program: &OsStr) -> Result<PathBuf, LaunchError> {
    let display = program.to_string_lossy().into_owned();
    let is_executable = |path: &Path| {
        std::fs::metadata(path)
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    };
    if program.as_bytes().contains(&b'/') {
        let path = PathBuf::from(program);
        return match std::fs::metadata(&path) {
            Err(_) => Err(LaunchError::NotFound(display)),
            Ok(_) if is_executable(&path) => Ok(path),
            Ok(_) => Err(LaunchError::NotExecutable(display)),
        };
    }
    let search = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&search)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .ok_or(LaunchError::NotFound(display))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned these descriptors to us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The name exec gives a task running `program`: its file name, cut to 15 bytes.
fn thread_name_for(program: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    let name = program.file_name().map_or(&[][..], |name| name.as_bytes());
    let name: Vec<u8> = name.iter().copied().filter(|&b| b != 0).take(15).collect();
    std::ffi::CString::new(name).expect("NULs removed")
}

/// A forked command held before `exec` until [`GatedChild::release`].
pub struct GatedChild {
    pid: u32,
    go: Option<File>,
    spawner: Option<JoinHandle<io::Result<Child>>>,
}

impl GatedChild {
    /// Forks `argv`; the child reports its pid and waits for the go signal before exec.
    pub fn spawn(program: &Path, argv: &[OsString]) -> Result<Self, LaunchError> {
        let io_error = |source| LaunchError::Io {
            program: argv[0].to_string_lossy().into_owned(),
            source,
        };
        let (pid_read, pid_write) = pipe().map_err(io_error)?;
        let (go_read, go_write) = pipe().map_err(io_error)?;
        let fds = [
            pid_read.as_raw_fd(),
            pid_write.as_raw_fd(),
            go_read.as_raw_fd(),
            go_write.as_raw_fd(),
        ];
        let mut command = Command::new(program);
        command.arg0(&argv[0]).args(&argv[1..]);
        let comm = thread_name_for(program);
        // SAFETY: only async-signal-safe calls (getpid, write, read, close, prctl) between fork
        // and exec.
        unsafe {
            command.pre_exec(move || {
                let [pid_read, pid_write, go_read, go_write] = fds;
                // Samples taken inside execve, before the kernel renames the task, then carry
                // the command's name rather than the profiler's.
                libc::prctl(libc::PR_SET_NAME, comm.as_ptr());
                libc::close(pid_read);
                libc::close(go_write);
                let pid = libc::getpid().to_ne_bytes();
                libc::write(pid_write, pid.as_ptr().cast(), pid.len());
                libc::close(pid_write);
                let mut go = 0u8;
                let n = libc::read(go_read, (&raw mut go).cast(), 1);
                // `go_read` is left to O_CLOEXEC: once released, the command is profiled, and
                // its first recorded calls should be its own.
                if n == 1 {
                    Ok(())
                } else {
                    // The profiler gave up (setup failed or it died): never run unprofiled.
                    Err(io::Error::other("profiler did not start"))
                }
            });
        }
        // `spawn` returns only once the child has exec'd, which it will not do before the go
        // signal; so spawn on a helper thread and learn the pid from the child itself.
        // The child's ends stay open here until the fork has happened.
        let spawner = std::thread::spawn(move || {
            let child = command.spawn();
            drop((pid_write, go_read));
            child
        });
        let mut pid_bytes = [0u8; 4];
        let mut pid_read = File::from(pid_read);
        if let Err(err) = pid_read.read_exact(&mut pid_bytes) {
            // The fork itself failed: `spawn` has the real error.
            return Err(match spawner.join() {
                Ok(Err(source)) => io_error(source),
                _ => io_error(err),
            });
        }
        Ok(GatedChild {
            pid: i32::from_ne_bytes(pid_bytes) as u32,
            go: Some(File::from(go_write)),
            spawner: Some(spawner),
        })
    }

    /// The child's pid, valid before and after exec.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Lets the child exec the command.
    pub fn release(mut self) -> io::Result<Child> {
        let mut go = self.go.take().expect("released once");
        go.write_all(&[1])?;
        drop(go);
        self.spawner
            .take()
            .expect("released once")
            .join()
            .map_err(|_| io::Error::other("spawner thread panicked"))?
    }
}

impl Drop for GatedChild {
    /// Not released: closing the pipe makes the child exit without running the command.
    fn drop(&mut self) {
        self.go.take();
        if let Some(spawner) = self.spawner.take() {
            let _ = spawner.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn resolves_programs_like_a_shell() {
        assert!(resolve_program(OsStr::new("sh")).unwrap().ends_with("sh"));
        assert!(matches!(
            resolve_program(OsStr::new("no-such-command-xyz")),
            Err(LaunchError::NotFound(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::write(&data, "").unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            resolve_program(data.as_os_str()),
            Err(LaunchError::NotExecutable(_))
        ));
        assert!(matches!(
            resolve_program(OsStr::new("./missing")),
            Err(LaunchError::NotFound(_))
        ));
    }

    #[test]
    fn child_waits_for_release_and_keeps_its_pid() {
        let argv: Vec<OsString> = ["sh", "-c", "exit 7"].iter().map(OsString::from).collect();
        let gated = GatedChild::spawn(&resolve_program(&argv[0]).unwrap(), &argv).unwrap();
        let pid = gated.pid();
        std::thread::sleep(std::time::Duration::from_millis(50));
        // Still our fork, not yet `sh`.
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert_eq!(exe, std::env::current_exe().unwrap());
        // ... but already named like it, as exec will name it.
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        assert_eq!(comm.trim_end(), "sh");
        let mut child = gated.release().unwrap();
        assert_eq!(child.id(), pid);
        assert_eq!(child.wait().unwrap().code(), Some(7));
    }

    #[test]
    fn thread_names_are_cut_like_the_kernel_cuts_them() {
        let name = thread_name_for(Path::new("/opt/app/a-very-long-program-name"));
        assert_eq!(name.to_bytes(), b"a-very-long-pro");
        assert_eq!(thread_name_for(Path::new("/")).to_bytes(), b"");
    }

    #[test]
    fn dropping_unreleased_child_never_runs_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let script = format!("touch {}", marker.display());
        let argv: Vec<OsString> = ["sh".into(), "-c".into(), script.into()].into();
        let gated = GatedChild::spawn(&resolve_program(&argv[0]).unwrap(), &argv).unwrap();
        drop(gated);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!marker.exists());
    }
}
