//! Whether the current thread is a target, cached per CPU. Most system calls, switches and
//! allocator calls of a busy machine are not a target's; the programs that run at each of
//! them learn so from one per-CPU word instead of a hash lookup.
//!
//! The word holds a tid, what is known of it, and the target set's stamp
//! (`CONTROL_TARGETS_STAMP`) when that was learnt. Whoever changes `TARGETS` writes a new
//! random stamp afterwards, so a word learnt before the change no longer matches; so does every
//! fork, since a new thread may take the tid of one a word still names. One word, written
//! whole: what a program writes is true of the tid it names. Only `sched_switch`, which no
//! task switch can interrupt, writes what it knows of a pending walk; the other programs may
//! be preempted between their read and their write, and only write what the stamp guards.
use aya_ebpf::{helpers::bpf_get_prandom_u32, macros::map, maps::PerCpuArray};
use profiler_common::CONTROL_TARGETS_STAMP;

use crate::maps::{CONTROL, TARGETS};

/// What is known of the current thread: `tid << 32 | state << 30 | stamp & STAMP_MASK`.
#[map]
static ON_CPU: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

const STAMP_MASK: u64 = (1 << 30) - 1;

/// What the word says of its thread.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub(crate) enum Known {
    NotTarget = 0,
    /// A target; whether it has an off-CPU period waiting for its user stack is not known.
    Target = 1,
    /// A target thread with no off-CPU period waiting for its user stack.
    NothingPending = 2,
    /// A target thread with an off-CPU period waiting for its user stack.
    Pending = 3,
}

#[inline(always)]
fn stamp() -> u64 {
    CONTROL.get(CONTROL_TARGETS_STAMP).copied().unwrap_or(0) & STAMP_MASK
}

/// What the cache knows of thread `tid`, the current one, if it holds it.
#[inline(always)]
pub(crate) fn known(tid: u32) -> Option<Known> {
    let word = *ON_CPU.get(0)?;
    if word >> 32 != u64::from(tid) || word & STAMP_MASK != stamp() {
        return None;
    }
    Some(match (word >> 30) & 3 {
        0 => Known::NotTarget,
        1 => Known::Target,
        2 => Known::NothingPending,
        _ => Known::Pending,
    })
}

/// Whether the cache knows thread `tid`, the current one, not to be a target.
#[inline(always)]
pub(crate) fn known_not_target(tid: u32) -> bool {
    known(tid) == Some(Known::NotTarget)
}

/// Whether `sched_switch` switched thread `tid`, the current one, in on this CPU, and saw it
/// was a target thread: then it also sees the thread leave, which only it writes these two
/// for. (A target that `is_target` learnt of may have no `THREADS` entry yet, or a dead one's.)
#[inline(always)]
pub(crate) fn switched_in(tid: u32) -> bool {
    matches!(known(tid), Some(Known::NothingPending | Known::Pending))
}

/// Notes what is known of thread `tid` (a `Known` value), learnt after the stamp was `stamp`.
#[inline(always)]
fn remember_at(tid: u32, known: u64, stamp: u64) {
    if let Some(word) = ON_CPU.get_ptr_mut(0) {
        // SAFETY: this CPU's word, written whole.
        unsafe { *word = u64::from(tid) << 32 | known << 30 | stamp };
    }
}

/// Notes what `sched_switch` knows of target thread `tid`, about to run here, from its
/// `THREADS` entry (not from `TARGETS`, which the stamp guards): whether it has a walk pending.
/// Without a branch: each one here doubles what the verifier explores of the scheduler program.
#[inline(always)]
pub(crate) fn remember_target_thread(tid: u32, pending: bool) {
    const _: () = assert!(Known::Pending as u64 == Known::NothingPending as u64 + 1);
    remember_at(
        tid,
        Known::NothingPending as u64 + u64::from(pending),
        stamp(),
    );
}

/// Whether the current process is a target: from the cache, else from `TARGETS` (and then
/// cached).
#[inline(always)]
pub(crate) fn is_target(tgid: u32, tid: u32) -> bool {
    if let Some(known) = known(tid) {
        return known != Known::NotTarget;
    }
    // Read before the lookup: a change after it writes a new stamp.
    let stamp = stamp();
    let target = unsafe { TARGETS.get(tgid) }.is_some();
    let known = if target {
        Known::Target
    } else {
        Known::NotTarget
    };
    remember_at(tid, known as u64, stamp);
    target
}

/// After a change of `TARGETS` in the kernel, or a fork: words learnt before it are stale. A
/// random stamp, not a count: the collector writes its stamp whole, and a count it wrote could
/// be one a word already holds.
#[inline(always)]
pub(crate) fn targets_changed() {
    if let Some(stamp) = CONTROL.get_ptr_mut(CONTROL_TARGETS_STAMP) {
        // SAFETY: a plain write of a map value.
        unsafe { *stamp = u64::from(bpf_get_prandom_u32()) };
    }
}
