//! Asking a running HotSpot JVM (JDK 17+) for its perf map, without restarting it: the
//! dynamic attach protocol `jcmd PID Compiler.perfmap` speaks.
//!
//! 1. A JVM that does not listen yet (no `/tmp/.java_pidNSPID` socket) is told to: create
//!    `/tmp/.attach_pidNSPID` and send SIGQUIT; its signal thread sees the file and opens the
//!    socket (without the file, SIGQUIT would print a thread dump). The file is removed after.
//! 2. Connect, send `1\0jcmd\0Compiler.perfmap\0\0\0` (protocol 1, a command, three
//!    arguments) and read the reply: `0` on its first line when the command ran. The JVM has
//!    then written `/tmp/perf-NSPID.map`, as its own user.
//!
//! The JVM accepts the connection from root or its own user. The socket is reached by
//! descriptor and its listener checked to be the JVM, so a socket or link its user put in that
//! place is never spoken to as root.

use std::{
    io::{self, Read as _, Write as _},
    os::{fd::AsRawFd as _, unix::net::UnixStream},
    time::{Duration, Instant},
};

use crate::target::{procfs::MapEntry, tmp_dir::TargetTmp};

/// How long a JVM is given to open its attach socket after SIGQUIT.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(3);

/// How long connecting, and then the reply, may take (the JVM writes its map before it
/// replies: milliseconds).
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest reply read.
const MAX_REPLY_BYTES: u64 = 64 << 10;

/// Why a JVM could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum JvmError {
    /// It does not handle SIGQUIT (`-Xrs`, or not started yet): the signal would kill it.
    #[error("it does not handle SIGQUIT (started with -Xrs, or still starting): not signalled")]
    NoSigquitHandler,
    /// It did not open its attach socket (`-XX:+DisableAttachMechanism`, or too busy).
    #[error("it opened no attach socket within {0:?} (-XX:+DisableAttachMechanism?)")]
    NotListening(Duration),
    /// The socket found is not the JVM's.
    #[error("the attach socket is not the JVM's (listener pid {0})")]
    ForeignSocket(i32),
    /// It refused the command or failed.
    #[error("it answered: {0}")]
    Refused(String),
    /// Reading, writing or connecting failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Whether the mappings are a HotSpot JVM's (`libjvm.so`).
pub fn is_hotspot(maps: &[MapEntry]) -> bool {
    maps.iter()
        .any(|entry| entry.executable && entry.path.rsplit('/').next() == Some("libjvm.so"))
}

/// Asks the JVM `pid` (whose `/tmp` is `tmp`) to write its perf map. Takes at most
/// [`LISTEN_TIMEOUT`] and [`REPLY_TIMEOUT`], whatever the process at the other end does.
pub fn request_perf_map(pid: u32, tmp: &TargetTmp) -> Result<(), JvmError> {
    let mut stream = connect(pid, tmp)?;
    let deadline = Instant::now() + REPLY_TIMEOUT;
    stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
    stream.write_all(b"1\0jcmd\0Compiler.perfmap\0\0\0")?;
    // One deadline for the whole reply, not one per read: a byte every few seconds must not
    // hold the profiler.
    let mut reply = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || reply.len() as u64 >= MAX_REPLY_BYTES {
            break;
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => reply.extend_from_slice(&buffer[..read]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err.into()),
        }
    }
    let reply = String::from_utf8_lossy(&reply);
    let (code, text) = reply.split_once('\n').unwrap_or((&reply, ""));
    match code.trim() {
        "0" if !text.contains("Unknown diagnostic command") => Ok(()),
        _ => {
            let said: String = reply.trim().chars().take(200).collect();
            Err(JvmError::Refused(said.escape_debug().to_string()))
        }
    }
}

/// Connects to the JVM's attach socket, telling it to listen first if it does not.
fn connect(pid: u32, tmp: &TargetTmp) -> Result<UnixStream, JvmError> {
    let socket_name = format!(".java_pid{}", tmp.nspid);
    if tmp.socket(&socket_name).is_err() {
        start_listener(tmp, &socket_name)?;
    }
    let socket = tmp.socket(&socket_name)?;
    // Connecting through the descriptor reaches the socket that was checked, whatever its
    // name points at by now.
    let stream = connect_with_timeout(
        &format!("/proc/self/fd/{}", socket.as_raw_fd()),
        REPLY_TIMEOUT,
    )?;
    let listener = peer_pid(&stream)?;
    if u32::try_from(listener).ok() != Some(pid) || !tmp.is_alive() {
        return Err(JvmError::ForeignSocket(listener));
    }
    Ok(stream)
}

/// `connect` bounded in time: a listener whose queue is full would otherwise hold it forever.
fn connect_with_timeout(path: &str, timeout: Duration) -> io::Result<UnixStream> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor, owned by nobody else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let stream = UnixStream::from(socket);
    // A UNIX socket's connect waits at most its send timeout.
    stream.set_write_timeout(Some(timeout))?;
    // SAFETY: zeroed sockaddr_un is valid; the path is copied within its bounds below.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_bytes();
    if bytes.len() >= address.sun_path.len() {
        return Err(io::Error::other("socket path too long"));
    }
    for (slot, &byte) in address.sun_path.iter_mut().zip(bytes) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: a socket and an address of the size given.
    let result = unsafe {
        libc::connect(
            stream.as_raw_fd(),
            (&address as *const libc::sockaddr_un).cast(),
            size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

/// Makes the JVM open its attach socket: the trigger file, then SIGQUIT.
fn start_listener(tmp: &TargetTmp, socket_name: &str) -> Result<(), JvmError> {
    if !catches_sigquit(tmp)? {
        return Err(JvmError::NoSigquitHandler);
    }
    let trigger = format!(".attach_pid{}", tmp.nspid);
    let created = match tmp.create_file(&trigger) {
        Ok(_) => true,
        // Left by another tool mid-attach: it serves as well.
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => false,
        Err(err) => return Err(err.into()),
    };
    let listening = signal_and_wait(tmp, socket_name);
    if created {
        let _ = tmp.remove(&trigger);
    }
    listening
}

fn signal_and_wait(tmp: &TargetTmp, socket_name: &str) -> Result<(), JvmError> {
    // Through the pidfd: the JVM checked above, never a process that took its pid since.
    tmp.signal(libc::SIGQUIT)?;
    let started = Instant::now();
    while started.elapsed() < LISTEN_TIMEOUT {
        std::thread::sleep(Duration::from_millis(20));
        if tmp.socket(socket_name).is_ok() {
            return Ok(());
        }
    }
    Err(JvmError::NotListening(LISTEN_TIMEOUT))
}

/// Whether the process has a handler for SIGQUIT (`SigCgt` in its status).
fn catches_sigquit(tmp: &TargetTmp) -> io::Result<bool> {
    let status = tmp.status()?;
    Ok(caught_signals(&status).is_some_and(|mask| mask & (1 << (libc::SIGQUIT - 1)) != 0))
}

fn caught_signals(status: &str) -> Option<u64> {
    let mask = status
        .lines()
        .find_map(|line| line.strip_prefix("SigCgt:"))?;
    u64::from_str_radix(mask.trim(), 16).ok()
}

/// The pid of the process that opened the socket's listener, as this process sees it.
fn peer_pid(stream: &UnixStream) -> io::Result<i32> {
    // SAFETY: plain data, filled by the kernel.
    let mut credentials: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a connected socket and a buffer of the length given.
    let result = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut credentials as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(credentials.pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_caught_signal_mask() {
        // A JVM: SIGQUIT (3) among others.
        let jvm = "SigIgn:\t0000000000000000\nSigCgt:\t0000000181005ccf\n";
        assert!(caught_signals(jvm).is_some_and(|mask| mask & 0b100 != 0));
        let plain = "SigCgt:\t0000000000000000\n";
        assert_eq!(caught_signals(plain), Some(0));
        assert_eq!(caught_signals(""), None);
    }

    #[test]
    fn a_process_without_a_sigquit_handler_is_never_signalled() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let tmp = TargetTmp::open(child.id()).unwrap();
        let error = request_perf_map(child.id(), &tmp).unwrap_err();
        assert!(matches!(error, JvmError::NoSigquitHandler), "{error}");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the process was signalled"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
