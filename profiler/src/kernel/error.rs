//! Errors of loading and attaching the programs, with what to do about them.

use aya::{EbpfError, maps::MapError, programs::ProgramError};

use crate::kernel::{btf, tracefs::TracefsError};

/// Errors loading, attaching or reading the eBPF side.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The kernel exposes no BTF.
    #[error(
        "this kernel has no BTF at {path} (needs CONFIG_DEBUG_INFO_BTF=y): the profiler needs it \
         to attach to scheduler tracepoints"
    )]
    NoBtf {
        /// Where BTF was looked for.
        path: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The kernel's BTF lacks a field the programs need.
    #[error("cannot use this kernel's BTF")]
    Btf(#[source] btf::BtfError),
    /// The kernel refused the programs.
    #[error("loading the eBPF programs failed{hint}")]
    Load {
        /// What to do about it.
        hint: &'static str,
        /// The cause.
        #[source]
        source: Box<EbpfError>,
    },
    /// A program could not be loaded or attached.
    #[error("{what} failed{hint}")]
    Program {
        /// What was being done.
        what: String,
        /// What to do about it.
        hint: &'static str,
        /// The cause.
        #[source]
        source: Box<ProgramError>,
    },
    /// A map could not be read or written.
    #[error("eBPF map {name}: {source}")]
    Map {
        /// The map.
        name: &'static str,
        /// The cause.
        #[source]
        source: Box<MapError>,
    },
    /// A tracepoint the programs need cannot be used (the source names it).
    #[error("cannot use a tracepoint")]
    Tracefs(#[source] TracefsError),
    /// The online CPUs could not be listed.
    #[error("cannot list online CPUs: {0}")]
    Cpus(String),
    /// Unwind rows could not be written.
    #[error("cannot write unwind tables: {0}")]
    UnwindRows(String),
}

impl ProbeError {
    /// Whether the kernel's verifier refused a program (its hint says so already).
    pub fn refused_by_verifier(&self) -> bool {
        matches!(self, ProbeError::Program { hint, .. } if *hint == VERIFIER_HINT)
    }
}

/// Whether an OS error with one of `codes` is somewhere in the error's source chain.
pub(super) fn has_os_error(error: &(dyn std::error::Error + 'static), codes: &[i32]) -> bool {
    let mut source = Some(error);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && io.raw_os_error().is_some_and(|code| codes.contains(&code))
        {
            return true;
        }
        source = error.source();
    }
    false
}

pub(super) fn is_permission_error(error: &(dyn std::error::Error + 'static)) -> bool {
    has_os_error(error, &[libc::EPERM, libc::EACCES])
}

pub(super) fn is_invalid_argument(error: &(dyn std::error::Error + 'static)) -> bool {
    has_os_error(error, &[libc::EINVAL])
}

pub(super) const FREQUENCY_HINT: &str = ": the kernel refused the sampling frequency; it must not exceed \
     /proc/sys/kernel/perf_event_max_sample_rate";

pub(super) const PERMISSION_HINT: &str =
    ": permission denied; run as root (sudo) or grant CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE";

/// The verifier refuses a program with EACCES too: its log, not the error code, tells.
pub(super) const VERIFIER_HINT: &str = ": this kernel's verifier refused the program; \
     `profiler check` lists what works here, and the README which kernels were tested";

/// Whether the verifier refused the program (its log says why), not the load failing for
/// another cause.
pub(super) fn is_verifier_refusal(err: &ProgramError) -> bool {
    matches!(err, ProgramError::LoadError { verifier_log, .. }
        if !verifier_log.to_string().trim().is_empty())
}

pub(super) fn program_error(what: impl Into<String>, source: ProgramError) -> ProbeError {
    let hint = if is_verifier_refusal(&source) {
        VERIFIER_HINT
    } else if is_permission_error(&source) {
        PERMISSION_HINT
    } else {
        ""
    };
    ProbeError::Program {
        what: what.into(),
        hint,
        source: Box::new(source),
    }
}

pub(super) fn map_error(name: &'static str) -> impl FnOnce(MapError) -> ProbeError {
    move |source| ProbeError::Map {
        name,
        source: Box::new(source),
    }
}
