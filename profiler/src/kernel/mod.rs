//! The kernel side, seen from user space, and the only code that uses aya: loading and
//! attaching the eBPF programs (`load`), reading their maps (`maps`), the handle on both
//! ([`probes`]) and what can fail ([`ProbeError`]); the kernel facts they need (struct
//! offsets from [`btf`], tracepoint formats from [`tracefs`]), and the unwind tables they walk
//! user stacks with ([`unwind_table`] compiles an object's CFI, [`table_cache`] keeps it by
//! build-id, [`unwind`] loads it through the maps of `unwind_maps`).

pub mod btf;
mod error;
mod load;
mod maps;
mod object_layout;
pub mod probes;
mod programs;
pub mod syscalls;
pub mod table_cache;
pub mod tracefs;
pub mod unwind;
mod unwind_maps;
pub mod unwind_table;

pub use error::ProbeError;
pub use load::LoadOptions;
pub use maps::{Drained, IoExtras};
pub use probes::{Counters, KernelProbes};
pub use unwind_maps::WalkedStack;
