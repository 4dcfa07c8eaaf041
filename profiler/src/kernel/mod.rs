//! The kernel side, seen from user space, and the only code that uses aya: loading and
//! attaching the eBPF programs (`load`), reading their maps (`maps`), the handle on both
//! ([`probes`]) and what can fail ([`ProbeError`]); the kernel facts they need (struct
//! offsets from [`btf`], tracepoint formats from [`tracefs`]), and the unwind tables they walk
//! user stacks with ([`unwind_table`] compiles an object's CFI, [`table_cache`] keeps it by
//! build-id if `object_trust` finds the object root's, [`unwind`] loads it through the maps of
//! `unwind_maps`).

pub mod btf;
mod error;
mod load;
mod maps;
mod object;
mod object_layout;
pub mod probes;
mod programs;
pub mod syscalls;
pub mod table_cache;
pub mod tracefs;
pub mod unwind;
mod unwind_maps;
pub mod unwind_table;
mod uprobes;

pub use error::ProbeError;
pub use maps::{Drained, IoExtras};
pub use object::LoadOptions;
pub use probes::{Counters, KernelProbes};
pub use unwind_maps::WalkedStack;
pub use uprobes::AllocatorProbes;

/// The running kernel's release (`6.18.44-amd64`), empty if unknown.
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|release| release.trim().to_owned())
        .unwrap_or_default()
}

/// The series (major, minor) of kernel `release` ("6.13.2-amd64": (6, 13)), if it names one.
pub fn series(release: &str) -> Option<(u32, u32)> {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|part| part.parse::<u32>().ok());
    Some((numbers.next().flatten()?, numbers.next().flatten()?))
}
