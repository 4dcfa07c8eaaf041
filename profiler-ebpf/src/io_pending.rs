//! Where an I/O call of a target thread is kept from its entry to its exit.
//!
//! With the scheduler programs running, in a per-CPU slot: a thread stays on its CPU from
//! a call's entry to its exit unless it leaves it, and `sched_switch`, which sees it leave,
//! moves the call into the thread's `THREADS` entry, which it looks up then anyway; the exit
//! finds it in one place or the other. Most calls of a server (a read from the page cache, a
//! send) do not block: they take no map lookup at all, where a hash map by tid took one at
//! the entry and one at the exit. Only for a thread `sched_switch` switched in here, which it
//! will see leave; the others' calls (a process being adopted, whose threads have no entry
//! yet; a thread whose tid has a dead one's entry), and every call without the scheduler
//! programs or on a PREEMPT_RT kernel, go to that hash map.
use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use profiler_common::{IO_MAP_ENTRIES, IoPending, ThreadState, counter};

use crate::{current, helpers::bump, maps::THREADS};

/// Non-zero when calls may be kept in the per-CPU slot: the scheduler programs run, and no
/// switch interrupts a system-call program (not a PREEMPT_RT kernel). Set by the loader.
#[unsafe(no_mangle)]
static IO_SLOTS: u32 = 0;

#[inline(always)]
fn slots() -> bool {
    // SAFETY: read_volatile keeps the loader-set constant from being folded at compile time.
    unsafe { core::ptr::read_volatile(&IO_SLOTS) != 0 }
}

/// The I/O call in progress on this CPU, and its thread.
#[repr(C)]
#[derive(Clone, Copy)]
struct OnCpuCall {
    tid: u32,
    _pad: u32,
    call: IoPending,
}

#[map]
static IO_ON_CPU: PerCpuArray<OnCpuCall> = PerCpuArray::with_max_entries(1, 0);

/// I/O calls in progress, by tid: of the target threads not kept in the slot (see the
/// module's comment), and of one that left its CPU in a call without a live `THREADS` entry
/// (that map full, or its entry marked exited). One entry per thread, reused call after call (an update in place costs a fraction of an
/// insertion and a deletion); least recently used entries, of threads long gone, make room
/// for new ones.
#[map]
static IO_PENDING: LruHashMap<u32, IoPending> = LruHashMap::with_max_entries(IO_MAP_ENTRIES, 0);

/// Keeps `thread`'s in `pending` in the hash map.
#[inline(always)]
fn keep_in_map(tid: u32, pending: &IoPending) {
    match IO_PENDING.get_ptr_mut(tid) {
        // SAFETY: the entry of thread `tid`, which is in a system call and nowhere else.
        Some(entry) => unsafe { *entry = *pending },
        None => {
            if IO_PENDING.insert(tid, pending, 0).is_err() {
                bump(counter::IO_PENDING_FULL);
            }
        }
    }
}

/// The current thread, `tid`, enters I/O call `pending`.
#[inline(always)]
pub(crate) fn start(tid: u32, pending: &IoPending) {
    if !slots() || !current::switched_in(tid) {
        keep_in_map(tid, pending);
        return;
    }
    if let Some(slot) = IO_ON_CPU.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; no switch can interrupt a system-call program, and only
        // this CPU's programs use it.
        unsafe {
            (*slot).tid = tid;
            (*slot).call = *pending;
        }
    }
}

/// The I/O call the current thread, `tid`, is in, if one was seen to start: to be cleared
/// (its `start_ns` set to 0) once accounted. The same entry until then, for a program the
/// exit hands over to (see `walk_calls`).
#[inline(always)]
pub(crate) fn find(tid: u32) -> Option<*mut IoPending> {
    if slots() {
        if let Some(slot) = IO_ON_CPU.get_ptr_mut(0)
            // SAFETY: as in `start`.
            && unsafe { (*slot).tid == tid && (*slot).call.start_ns != 0 }
        {
            return Some(unsafe { &raw mut (*slot).call });
        }
        // It left the CPU during the call.
        if let Some(thread) = THREADS.get_ptr_mut(tid) {
            // SAFETY: a field of a map value.
            let call = unsafe { &raw mut (*thread).io };
            if unsafe { (*call).start_ns } != 0 {
                return Some(call);
            }
        }
    }
    IO_PENDING.get_ptr_mut(tid)
}

/// Target thread `tid` leaves the CPU, `thread` its live `THREADS` entry if it has one: the I/O
/// call it is in, if any, goes with it. Run twice for one switch-out where it is handed over
/// for a walk: the second finds the slot empty and leaves the entry as it is.
#[inline(always)]
pub(crate) fn leave_cpu(tid: u32, thread: Option<*mut ThreadState>) {
    let Some(slot) = IO_ON_CPU.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: as in `start`; the scheduler program is not interrupted by another on this CPU.
    unsafe {
        if (*slot).tid != tid || (*slot).call.start_ns == 0 {
            return;
        }
        match thread {
            Some(thread) => (*thread).io = (*slot).call,
            None => keep_in_map(tid, &(*slot).call),
        }
        (*slot).call.start_ns = 0;
    }
}
