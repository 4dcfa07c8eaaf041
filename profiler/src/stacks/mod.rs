//! From the kernel's stack addresses to the profile's frames: the address spaces recorded per
//! process ([`address_space`]) with the names runtimes give their JIT code ([`jit_names`]: [`perf_map`],
//! [`jitdump`]), the functions of Python processes ([`python_names`]) and their frames in
//! stacks ([`python`]), blazesym symbolization ([`symbolize`]) with names for code no symbol covers
//! ([`stripped`]), and stack assembly ([`assemble`]: ids to root-first stacks of interned
//! frames, with placeholders for what was lost).

pub mod address_space;
pub mod assemble;
pub mod block_reason;
mod debug_links;
pub mod jit_names;
pub mod jitdump;
pub mod perf_map;
pub mod python;
pub mod python_names;
pub mod stripped;
pub mod symbolize;
