//! The profiler as a library: collection (`bpf`, the only module that touches aya; `collect`),
//! and everything after it as plain data (`profile`, `assemble`, `render`), so unit tests and
//! the fuzzer reach it without a kernel. The `profiler` binary is a thin command line on top.

pub mod address_space;
pub mod assemble;
pub mod bounded_de;
pub mod bpf;
pub mod check;
pub mod cli;
pub mod collect;
pub mod io;
pub mod kernel_btf;
pub mod launch;
pub mod memory;
pub mod output;
pub mod privileges;
pub mod procfs;
pub mod profile;
pub mod render;
pub mod stop_signals;
pub mod symbolize;
pub mod synthetic;
pub mod tracefs;
pub mod unwind;
pub mod unwind_table;
