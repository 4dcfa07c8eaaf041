//! How a run ends: the stop conditions, a stop asked for while loading, and ending the
//! launched command when the run stopped first.

use std::{process::ExitStatus, time::Duration};

use super::CollectError;

/// Where the launched command's exit status arrives, from the thread waiting for it.
pub(super) type CommandExit = tokio::sync::oneshot::Receiver<std::io::Result<ExitStatus>>;

/// What ended collection.
pub(super) enum Stop {
    Duration,
    Interrupted,
    Terminated,
    TargetExited,
    CommandExited(ExitStatus),
}

impl Stop {
    pub(super) fn describe(&self) -> String {
        match self {
            Stop::Duration => "duration elapsed".into(),
            Stop::Interrupted => "interrupted (SIGINT)".into(),
            Stop::Terminated => "terminated (SIGTERM)".into(),
            Stop::TargetExited => "target exited".into(),
            Stop::CommandExited(_) => "command exited".into(),
        }
    }
}

/// Fails when SIGINT or SIGTERM came before collection started: the programs detach as the
/// error unwinds, a held command never runs, and no output folder was made.
pub(super) fn stopped_while_loading() -> Result<(), CollectError> {
    match super::stop_signals::received() {
        Some(signal) => Err(CollectError::StoppedWhileLoading(
            if signal == libc::SIGINT {
                "interrupted (SIGINT)"
            } else {
                "terminated (SIGTERM)"
            },
        )),
        None => Ok(()),
    }
}

/// Exit code of a command the way shells report it (128 + signal when killed).
pub(super) fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(1)
}

/// Ends the launched command after the run stopped first, politely then firmly, and returns
/// its exit status. Ctrl-C on a terminal already reached the command (same process group), so
/// it first gets a moment to exit on its own.
pub(super) async fn stop_command(
    pid: u32,
    stop: &Stop,
    exit_rx: &mut CommandExit,
) -> Option<ExitStatus> {
    let signal = |signal| {
        // SAFETY: kill(2) of our own child, which the waiter thread has not reaped yet.
        unsafe { libc::kill(pid as libc::pid_t, signal) };
    };
    let mut wait = async |limit: Duration| match tokio::time::timeout(limit, &mut *exit_rx).await {
        Ok(Ok(Ok(status))) => Some(Some(status)),
        Ok(_) => Some(None),
        Err(_) => None,
    };
    if matches!(stop, Stop::Interrupted)
        && let Some(status) = wait(Duration::from_secs(2)).await
    {
        return status;
    }
    signal(libc::SIGTERM);
    if let Some(status) = wait(Duration::from_secs(5)).await {
        return status;
    }
    signal(libc::SIGKILL);
    wait(Duration::from_secs(5)).await.flatten()
}
