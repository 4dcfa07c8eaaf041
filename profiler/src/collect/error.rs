//! Why a run could not start or finish, each with what to do about it.

use std::{io, path::PathBuf};

use crate::{
    kernel::ProbeError,
    target::{PidError, launch::LaunchError, privileges::MissingCapabilities},
};

/// Errors of a profiling run.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// SIGINT or SIGTERM could not be caught.
    #[error("cannot {0}")]
    Signals(&'static str, #[source] io::Error),
    /// The profiler lacks the privileges to load programs.
    #[error(transparent)]
    Privileges(#[from] MissingCapabilities),
    /// A pid to attach to cannot be profiled.
    #[error(transparent)]
    Pid(#[from] PidError),
    /// The command to launch cannot be.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// The output folder cannot be used.
    #[error("cannot use output folder {}", path.display())]
    Output {
        /// The folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Loading, attaching or reading the programs failed.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// SIGINT or SIGTERM came before collection started.
    #[error("{0} while the programs were loading; nothing was profiled")]
    StoppedWhileLoading(&'static str),
    /// Every target exited before collection started.
    #[error("the target exited while the programs were loading; nothing was profiled")]
    TargetExitedWhileLoading,
    /// The held command could not be released.
    #[error("cannot start {command}")]
    Start {
        /// The command line.
        command: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The thread waiting for the command is gone.
    #[error("lost the command's exit status")]
    ExitStatusLost(#[source] tokio::sync::oneshot::error::RecvError),
    /// Waiting for the command failed.
    #[error("waiting for the command")]
    Wait(#[source] io::Error),
}
