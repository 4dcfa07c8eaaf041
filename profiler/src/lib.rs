//! The profiler as a library, in the order a run goes through it:
//!
//! - [`target`]: the processes to profile: pids, launching a command, `/proc`, privileges,
//!   the allocators their objects define.
//! - [`kernel`]: the eBPF programs (the only module that touches aya), kernel BTF, tracefs, and
//!   the unwind tables the programs walk stacks with.
//! - [`collect`]: the run loop: attach, drain the kernel's maps, follow processes, stop, and
//!   assemble what was collected into a profile.
//! - [`stacks`]: from the kernel's stack addresses to frames: recorded address spaces,
//!   blazesym symbolization, stack assembly.
//! - [`model`]: the profile as plain data, and its saved form; at the bottom, importing nothing
//!   above it.
//! - [`analysis`]: the summary computed once from a profile: per-kind findings, the verdict,
//!   the profile's quality.
//! - [`render`]: the files of an output folder: folded stacks, flamegraphs, summary.md/json,
//!   report.html, exports, the memory timeline, diffs.
//! - [`output`]: output folders, created and written safely under sudo.
//! - [`agent`]: `profiler agent`, continuous collection in windows sent as OTLP profiles.
//!
//! Everything from [`stacks`] down takes plain data, so unit tests and the fuzzer reach it
//! without a kernel. The `profiler` binary ([`cli`], [`check`] and `main.rs`) is a thin command
//! line on top.

pub mod agent;
pub mod analysis;
pub mod check;
pub mod cli;
pub mod collect;
pub mod kernel;
pub mod le;
pub mod model;
pub mod output;
pub mod render;
pub mod stacks;
pub mod target;
pub mod text;
