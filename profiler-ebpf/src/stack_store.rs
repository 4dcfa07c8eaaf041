//! Stacks, user and kernel, stored by the hash of their frames in maps the collector drains
//! every second. A stack seen before in the run is known by its hash and not stored again.
//! Unlike the kernel's stack-trace map (a fixed number of buckets, a stack meeting an occupied
//! one lost), storage cannot fill up over a long run: only a second's worth of new stacks
//! waits. User stacks come from the unwinder (`unwind`) or the kernel's frame-pointer walker.
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_NO_PREALLOC, BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_get_stack, bpf_get_task_stack},
    },
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use profiler_common::{
    KERNEL_STACK_ENTRIES, KERNEL_STACK_HASH_ENTRIES, KernelStack, MAX_FP_FRAMES, MAX_KERNEL_FRAMES,
    STACK_ID_COLLISION, STACK_ID_ERROR, STACK_ID_MAP_FULL, STACK_ID_NONE, USER_STACK_ENTRIES,
    USER_STACK_HASH_ENTRIES, UserStack, counter, stack_end,
};

use crate::{
    helpers::{FNV_PRIME, bump, hash_frames},
    unwind,
};

/// What `bpf_get_stack` returns, negated, for a task without a user context to walk.
const EFAULT: i32 = 14;

/// Walked user stacks by id (31 bits of their hash) until the collector drains them (it keeps
/// them); allocated as stacks appear.
#[map]
static USER_STACKS: HashMap<u32, UserStack> =
    HashMap::with_max_entries(USER_STACK_ENTRIES, BPF_F_NO_PREALLOC);

/// The full hash of every user stack stored in the run, by id: a stack seen before is not
/// stored again (drained or not), and another stack with the same id is told apart.
#[map]
static USER_STACK_HASHES: HashMap<u32, u64> =
    HashMap::with_max_entries(USER_STACK_HASH_ENTRIES, BPF_F_NO_PREALLOC);

/// Kernel stacks by id (31 bits of their hash) until the collector drains them (it keeps
/// them); allocated as stacks appear.
#[map]
static KERNEL_STACKS: HashMap<u32, KernelStack> =
    HashMap::with_max_entries(KERNEL_STACK_ENTRIES, BPF_F_NO_PREALLOC);

/// The full hash of every kernel stack stored in the run, by id: a stack seen before is not
/// stored again (drained or not), and another stack with the same id is told apart.
#[map]
static KERNEL_STACK_HASHES: HashMap<u32, u64> =
    HashMap::with_max_entries(KERNEL_STACK_HASH_ENTRIES, BPF_F_NO_PREALLOC);

/// Where a stack is read before it is stored (too large for the BPF stack): one slot per
/// context that can interrupt another on a CPU, as for user stacks (`unwind::SCRATCH_*`).
#[map]
static KERNEL_STACK_SCRATCH: PerCpuArray<KernelStack> = PerCpuArray::with_max_entries(2, 0);

/// The current task's kernel stack: its id, or a `STACK_ID_*` value (`STACK_ID_NONE` for a
/// sample taken in user mode).
#[inline(always)]
pub(crate) fn current_kernel_stack<C: EbpfContext>(
    ctx: &C,
    scratch_slot: u32,
    collisions: u32,
) -> i32 {
    let Some(stack) = KERNEL_STACK_SCRATCH.get_ptr_mut(scratch_slot) else {
        return STACK_ID_ERROR;
    };
    // SAFETY: the buffer is this CPU's scratch value, `MAX_KERNEL_FRAMES` words long.
    let bytes = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            (*stack).frames.as_mut_ptr().cast(),
            (MAX_KERNEL_FRAMES * 8) as u32,
            0,
        )
    };
    store(stack, bytes, collisions)
}

/// The kernel stack `task` sleeps in. `task` must be off its CPU (the stack is read from its
/// saved frame); its `__sched` functions are left out by the kernel.
#[inline(always)]
pub(crate) fn sleeping_task_stack(task: *const u8, scratch_slot: u32) -> i32 {
    let Some(stack) = KERNEL_STACK_SCRATCH.get_ptr_mut(scratch_slot) else {
        return STACK_ID_ERROR;
    };
    // SAFETY: `task` is the tracepoint's trusted task pointer; the buffer is as above.
    let bytes = unsafe {
        bpf_get_task_stack(
            task as *mut _,
            (*stack).frames.as_mut_ptr().cast(),
            (MAX_KERNEL_FRAMES * 8) as u32,
            0,
        )
    };
    store(stack, bytes, counter::OFFCPU_STACK_COLLISIONS)
}

/// Hashes the `bytes` of frames a helper read into `stack` and stores them if new.
///
/// A function of its own, not inlined: kernels before 6.13 allow a program and the callbacks
/// it calls 512 bytes of stack together, and the scheduler program's own frame, where the
/// switch-out's user stack walk starts, takes most of them.
#[inline(never)]
fn store(stack: *mut KernelStack, bytes: i64, collisions: u32) -> i32 {
    if bytes < 0 {
        bump(counter::KERNEL_STACK_ERRORS);
        return STACK_ID_ERROR;
    }
    if bytes == 0 {
        return STACK_ID_NONE;
    }
    let len = bytes as u64 / 8;
    // SAFETY: this CPU's scratch value; the frames array is `MAX_KERNEL_FRAMES` long.
    let hash = hash_frames(unsafe { (&raw const (*stack).frames).cast() }, len);
    // SAFETY: as above.
    unsafe {
        (*stack).hash = hash;
        (*stack).len = len;
    }
    // SAFETY: filled above.
    store_by_hash(
        &KERNEL_STACKS,
        &KERNEL_STACK_HASHES,
        unsafe { &*stack },
        hash,
        |stored| stored.hash,
        collisions,
        counter::KERNEL_STACK_ERRORS,
    )
}

/// The current thread's user stack by the kernel's frame-pointer walker (`--unwind fp`),
/// stored like the unwinder's: drained by the collector, so storage cannot fill up.
#[inline(always)]
pub fn fp_user_stack_id<C: EbpfContext>(ctx: &C, scratch_slot: u32) -> i32 {
    let Some(stack) = unwind::UNWIND_SCRATCH.get_ptr_mut(scratch_slot) else {
        return STACK_ID_ERROR;
    };
    // SAFETY: a helper valid in every program.
    let owner = unsafe { bpf_ktime_get_ns() };
    // SAFETY: this CPU's scratch slot (see `Walk::owner` for programs that share it); the
    // helper writes at most `MAX_FP_FRAMES` words and zeroes the rest of them.
    let bytes = unsafe {
        (*stack).hash = owner;
        bpf_get_stack(
            ctx.as_ptr(),
            (*stack).frames.as_mut_ptr().cast(),
            (MAX_FP_FRAMES * 8) as u32,
            u64::from(BPF_F_USER_STACK),
        )
    };
    if bytes == 0 || bytes == -i64::from(EFAULT) {
        // No user context (a kernel thread, an exiting task): no user stack.
        return STACK_ID_NONE;
    }
    if bytes < 0 {
        bump(counter::USER_STACK_ERRORS);
        return STACK_ID_ERROR;
    }
    let len = (bytes as u64 / 8).min(MAX_FP_FRAMES as u64);
    let end = if len == MAX_FP_FRAMES as u64 {
        stack_end::DEPTH
    } else {
        stack_end::KERNEL_WALKER
    };
    // SAFETY: this CPU's scratch slot, at least `MAX_FP_FRAMES` words of frames.
    let hash = hash_frames(unsafe { (&raw const (*stack).frames).cast() }, len);
    // SAFETY: as above.
    unsafe {
        if (*stack).hash != owner {
            // Another program on this CPU took the slot over.
            bump(counter::USER_STACK_ERRORS);
            return STACK_ID_ERROR;
        }
        (*stack).len = len as u32;
        (*stack).end = end;
    }
    store_user_stack(stack, (hash ^ u64::from(end)).wrapping_mul(FNV_PRIME))
}

/// Stores a walked stack under 31 bits of its `hash`, unless the run stored it before: its
/// id, or a `STACK_ID_*` value.
#[inline(always)]
pub(crate) fn store_user_stack(stack: *mut UserStack, hash: u64) -> i32 {
    // SAFETY: `stack` is this CPU's scratch slot, walked into by the caller.
    unsafe { (*stack).hash = hash };
    // SAFETY: as above.
    store_by_hash(
        &USER_STACKS,
        &USER_STACK_HASHES,
        unsafe { &*stack },
        hash,
        |stored| stored.hash,
        counter::USER_STACKS_LOST,
        counter::USER_STACK_MAP_FULL,
    )
}

/// Stores `stack`, whose frames hash to `hash` (`hash_of` reads a stored stack's), in `stacks`
/// under 31 bits of the hash, unless the run stored it before (`hashes`): its id, or a
/// `STACK_ID_*` value, counting a collision in `collisions` and a full map in `full`.
#[inline(always)]
fn store_by_hash<V>(
    stacks: &HashMap<u32, V>,
    hashes: &HashMap<u32, u64>,
    stack: &V,
    hash: u64,
    hash_of: fn(&V) -> u64,
    collisions: u32,
    full: u32,
) -> i32 {
    let id = hash as u32 & 0x7fff_ffff;
    // SAFETY: a map value, copied.
    match unsafe { hashes.get(&id) }.copied() {
        Some(stored) if stored == hash => return id as i32,
        Some(_) => {
            bump(collisions);
            return STACK_ID_COLLISION;
        }
        None => {}
    }
    if stacks.insert(&id, stack, u64::from(BPF_NOEXIST)).is_err() {
        // SAFETY: a map value, only compared.
        match unsafe { stacks.get(&id) } {
            // Another CPU stored it first.
            Some(stored) if hash_of(stored) == hash => {}
            Some(_) => {
                bump(collisions);
                return STACK_ID_COLLISION;
            }
            None => {
                bump(full);
                return STACK_ID_MAP_FULL;
            }
        }
    }
    // If the map of hashes is full, the stack is kept all the same: stored again (and drained
    // again) each time it recurs, and a collision with it goes unnoticed.
    let _ = hashes.insert(&id, &hash, u64::from(BPF_NOEXIST));
    id as i32
}
