//! The processes to profile: launching a command held until the programs are attached
//! ([`launch`]), the libraries it will load ([`libraries`]), reading `/proc` ([`procfs`]),
//! whether this process may trace them ([`privileges`]), their `/tmp` ([`tmp_dir`]), where
//! runtimes name their JIT code and the JVM is asked to ([`hotspot`]), the CPython
//! interpreters they run ([`python`]), the processes a selection names ([`selection`]).

pub mod allocators;
pub mod hotspot;
pub mod launch;
pub mod libraries;
pub mod object_trust;
pub mod open;
pub mod privileges;
pub mod procfs;
pub mod python;
pub mod selection;
pub mod tmp_dir;

/// Why a pid cannot be attached to.
#[derive(Debug, thiserror::Error)]
pub enum PidError {
    /// No such process.
    #[error("no process with pid {0}")]
    NoProcess(u32),
    /// The process is a zombie.
    #[error("process {0} has already exited")]
    Exited(u32),
    /// A kernel thread: no user space to profile.
    #[error("pid {0} is a kernel thread: the profiler profiles user-space processes")]
    KernelThread(u32),
    /// A thread id, not a process id.
    #[error("{pid} is a thread of process {tgid}: pass the process id {tgid}")]
    Thread {
        /// The thread given.
        pid: u32,
        /// Its process.
        tgid: u32,
    },
    /// Its memory map cannot be read with the profiler's privileges.
    #[error(
        "process {pid} {whose}: reading its memory map needs CAP_SYS_PTRACE{}: run with sudo, \
         or `setcap cap_bpf,cap_perfmon,cap_sys_ptrace+ep` on the binary",
        if *missing { " (missing)" } else { "" }
    )]
    NotTraceable {
        /// The process.
        pid: u32,
        /// Why: whose it is, or that it is not dumpable.
        whose: String,
        /// Whether the profiler lacks CAP_SYS_PTRACE.
        missing: bool,
    },
}

/// Checks attach targets: they exist, are processes (not threads) and are not kernel threads.
pub fn validate_pids(pids: &[u32]) -> Result<(), PidError> {
    for &pid in pids {
        let stat = procfs::stat(pid).map_err(|_| PidError::NoProcess(pid))?;
        if !procfs::is_alive(pid) {
            return Err(PidError::Exited(pid));
        }
        if stat.kernel_thread {
            return Err(PidError::KernelThread(pid));
        }
        let status =
            std::fs::read_to_string(procfs::proc_dir(pid).join("status")).unwrap_or_default();
        if let Some(tgid) = status
            .lines()
            .find_map(|line| line.strip_prefix("Tgid:"))
            .and_then(|tgid| tgid.trim().parse::<u32>().ok())
            && tgid != pid
        {
            return Err(PidError::Thread { pid, tgid });
        }
        // Its memory map (for unwinding and symbols) is readable by whoever may ptrace it:
        // its own user (unless it is not dumpable, or Yama says no) or CAP_SYS_PTRACE. Try
        // it, and refuse now rather than produce unsymbolized stacks.
        if let Err(err) = std::fs::File::open(procfs::proc_dir(pid).join("maps"))
            && err.kind() == std::io::ErrorKind::PermissionDenied
        {
            let owner = status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().nth(1)?.parse::<u32>().ok());
            let whose = match owner {
                // SAFETY: geteuid has no preconditions.
                Some(owner) if owner != unsafe { libc::geteuid() } => {
                    format!("belongs to user {owner}")
                }
                _ => "is not dumpable or ptrace is restricted (Yama)".to_owned(),
            };
            return Err(PidError::NotTraceable {
                pid,
                whose,
                missing: !privileges::can_trace_others(),
            });
        }
    }
    Ok(())
}
