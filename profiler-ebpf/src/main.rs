//! eBPF programs of the profiler.
//!
//! Kept small on purpose: filter to the target processes, aggregate what can be aggregated in
//! the kernel, count every loss. Everything else happens in userspace.
//!
//! One module per event family, each with its programs and the maps only it uses: [`cpu`]
//! (CPU sampling), [`sched`] (off-CPU and run-queue time) with [`offcpu_stacks`] (the
//! stacks of sampled periods), [`process`] (forks, execs, process
//! events), [`syscalls`] (I/O and memory system calls) with [`io_pending`] (where a call in
//! progress is kept), [`block`] (block requests), [`alloc`]
//! (allocator probes), [`unwind`] (user stacks from unwind tables) and [`unwind_mappings`]
//! (mappings the unwinder learns by itself); where the walker is inlined, [`walk_calls`] hands
//! walks over to programs of their own. What several families share is in [`maps`] and
//! [`helpers`]; [`stack_probe`] probes the kernel itself.
#![no_std]
#![no_main]

mod alloc;
mod block;
mod cpu;
mod current;
mod helpers;
mod io_pending;
mod maps;
mod offcpu_stacks;
mod process;
mod python;
mod sched;
mod stack_probe;
mod stack_store;
mod syscalls;
mod unwind;
mod unwind_mappings;
#[cfg(feature = "inline-walk")]
mod walk_calls;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
