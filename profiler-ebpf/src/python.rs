//! CPython frames: for a process the collector found running CPython, the current thread's
//! Python frames (code object addresses, newest first) appended to its walked user stack. The
//! collector names the code objects and puts each run of frames under the native evaluation
//! frame that ran it.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_loop,
        bpf_probe_read_user_buf,
    },
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use profiler_common::{
    MAX_PYTHON_FRAMES, MAX_PYTHON_THREADS, MAX_USER_FRAMES, PYTHON_ENTRY_FRAME,
    PYTHON_EVERY_FRAME_ENTRY, PYTHON_FRAME, PYTHON_FRAME_DIRECT, PYTHON_FRAME_OWNED_BY_CSTACK,
    PYTHON_PROCESS_ENTRIES, PythonOffsets, PythonProcess, UserStack, stack_end,
};

use crate::{
    helpers::{FNV_PRIME, read_at},
    unwind::read_user,
};

/// The Python processes among the targets, by tgid.
#[map]
static PYTHON_PROCESSES: HashMap<u32, PythonProcess> =
    HashMap::with_max_entries(PYTHON_PROCESS_ENTRIES, BPF_F_NO_PREALLOC);

/// Offset of `task_struct.thread.fsbase` (the thread's TLS base, which glibc's
/// `pthread_self()` returns), from the kernel's BTF; 0 when unknown.
#[unsafe(no_mangle)]
static TASK_FSBASE_OFFSET: u32 = 0;

/// Each thread's `PyThreadState` once found (checked on use: a thread state is freed and its
/// memory reused when its thread ends), or when it was last looked for in vain. Preallocated:
/// updated from the sampling interrupt, where an LRU map's locks are not safe. When full,
/// threads are searched for at every event.
#[map]
static PYTHON_THREADS: HashMap<u32, ThreadCache> = HashMap::with_max_entries(16 * 1024, 0);

/// A thread's state, or 0 and when it was not found.
#[repr(C)]
#[derive(Clone, Copy)]
struct ThreadCache {
    thread: u64,
    searched_ns: u64,
}

/// How long a thread found without a Python thread state (a native worker thread) is not
/// searched for again.
const RESEARCH_AFTER_NS: u64 = 100_000_000;

/// What a code object's address keeps: user addresses are below 2^47.
const ADDRESS_MASK: u64 = (1 << 47) - 1;

/// A search of the interpreter's thread list for the current thread's state.
#[repr(C)]
struct ThreadSearch {
    thread: u64,
    /// The list's first thread state: met again, the list is a loop.
    head: u64,
    /// The id the thread state keeps of the current thread.
    id: u64,
    next: u32,
    id_offset: u32,
    found: u64,
}

/// Where each Python frame is read, one slot per unwind scratch slot: on the frame callback's
/// stack it made the callback 128 bytes deep, and kernels before 6.13 allow 512 for a program
/// and the callbacks it calls together.
#[map]
static FRAME_SCRATCH: PerCpuArray<[u8; FRAME_BYTES]> = PerCpuArray::with_max_entries(2, 0);

/// A walk of a thread's Python frames onto a user stack.
#[repr(C)]
struct FrameWalk {
    stack: *mut UserStack,
    /// This CPU's `FRAME_SCRATCH` slot.
    frame_bytes: *mut [u8; FRAME_BYTES],
    frame: u64,
    hash: u64,
    offsets: PythonOffsets,
}

/// How process `tgid` runs CPython, if it does.
#[inline(always)]
pub fn process(tgid: u32) -> Option<PythonProcess> {
    // SAFETY: a map value, copied.
    unsafe { PYTHON_PROCESSES.get(&tgid) }.copied()
}

/// Forgets a process's interpreter (it executed a new program: until the collector has read
/// the new one, its memory is not walked as the old one's).
#[inline(always)]
pub fn forget_process(tgid: u32) {
    let _ = PYTHON_PROCESSES.remove(&tgid);
}

/// Gives a forked child its parent's interpreter: the same memory layout.
#[inline(always)]
pub fn inherit_process(parent: u32, child: u32) {
    if let Some(process) = process(parent) {
        let _ = PYTHON_PROCESSES.insert(&child, &process, u64::from(BPF_NOEXIST));
    }
}

/// Appends the current thread's Python frames to `stack` (after its native frames), folding
/// them into `hash`. A native stack too deep to leave them room loses its outermost frames
/// (cut, `stack_end::DEPTH`).
#[inline(always)]
pub fn append_python_frames(
    process: &PythonProcess,
    stack: *mut UserStack,
    scratch_slot: u32,
    hash: &mut u64,
) {
    const NATIVE_ROOM: u32 = MAX_USER_FRAMES as u32 - MAX_PYTHON_FRAMES;
    // SAFETY: `stack` is this CPU's scratch slot (see `unwind::user_stack_id`).
    unsafe {
        if (*stack).len > NATIVE_ROOM {
            (*stack).len = NATIVE_ROOM;
            (*stack).end = stack_end::DEPTH;
        }
    }
    let offsets = process.offsets;
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(thread) = thread_state(tid, process) else {
        return;
    };
    let Some(frame) = read_user(thread + u64::from(offsets.thread_frame)).and_then(|pointer| {
        if offsets.cframe_current_frame == PYTHON_FRAME_DIRECT {
            Some(pointer)
        } else if pointer == 0 {
            None
        } else {
            read_user(pointer + u64::from(offsets.cframe_current_frame))
        }
    }) else {
        return;
    };
    let Some(frame_bytes) = FRAME_SCRATCH.get_ptr_mut(scratch_slot) else {
        return;
    };
    let mut walk = FrameWalk {
        stack,
        frame_bytes,
        frame,
        hash: *hash,
        offsets,
    };
    // SAFETY: the callback only touches `walk` and map memory.
    unsafe {
        bpf_loop(
            MAX_PYTHON_FRAMES,
            frame_step as *mut c_void,
            &mut walk as *mut FrameWalk as *mut c_void,
            0,
        )
    };
    *hash = walk.hash;
}

/// The current thread's `PyThreadState`: remembered, or searched for in the main
/// interpreter's list by the id it keeps of its thread.
#[inline(always)]
fn thread_state(tid: u32, process: &PythonProcess) -> Option<u64> {
    let offsets = &process.offsets;
    let id = if offsets.thread_id_is_pthread != 0 {
        // SAFETY: read_volatile keeps the loader-set constant from being folded.
        let fsbase = unsafe { core::ptr::read_volatile(&TASK_FSBASE_OFFSET) };
        if fsbase == 0 {
            return None;
        }
        // SAFETY: a helper valid in every tracing program.
        let task = unsafe { bpf_get_current_task() } as *const u8;
        read_at::<u64>(task, fsbase)?
    } else {
        u64::from(tid)
    };
    // SAFETY: a helper valid in every program.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a map value, copied.
    if let Some(cached) = unsafe { PYTHON_THREADS.get(&tid) }.copied() {
        if cached.thread == 0 {
            if now.wrapping_sub(cached.searched_ns) < RESEARCH_AFTER_NS {
                return None;
            }
        } else if read_user(cached.thread + u64::from(offsets.thread_id)) == Some(id) {
            return Some(cached.thread);
        }
    }
    let interpreter = read_user(process.runtime + u64::from(offsets.runtime_main_interpreter))?;
    if interpreter == 0 {
        return None;
    }
    let head = read_user(interpreter + u64::from(offsets.interpreter_threads))?;
    let mut search = ThreadSearch {
        thread: head,
        head,
        id,
        next: offsets.thread_next,
        id_offset: offsets.thread_id,
        found: 0,
    };
    // SAFETY: the callback only touches `search`.
    unsafe {
        bpf_loop(
            MAX_PYTHON_THREADS,
            thread_step as *mut c_void,
            &mut search as *mut ThreadSearch as *mut c_void,
            0,
        )
    };
    let cache = ThreadCache {
        thread: search.found,
        searched_ns: now,
    };
    let _ = PYTHON_THREADS.insert(&tid, &cache, 0);
    (search.found != 0).then_some(search.found)
}

/// Looks at one thread state of the list. Returns 1 to stop the loop.
unsafe extern "C" fn thread_step(_index: u64, search: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer given by `thread_state`.
    let search = unsafe { &mut *(search as *mut ThreadSearch) };
    if search.thread == 0 {
        return 1;
    }
    if read_user(search.thread + u64::from(search.id_offset)) == Some(search.id) {
        search.found = search.thread;
        return 1;
    }
    match read_user(search.thread + u64::from(search.next)) {
        Some(next) if next != search.head => {
            search.thread = next;
            0
        }
        _ => 1,
    }
}

/// Bytes of a frame read at once: every field the walk needs lies in them (the layouts'
/// offsets are at most 70).
const FRAME_BYTES: usize = 80;

/// The `u64` at `offset` in a frame's bytes.
#[inline(always)]
fn u64_in(frame: &[u8; FRAME_BYTES], offset: u32) -> Option<u64> {
    let offset = offset as usize;
    if offset > FRAME_BYTES - 8 {
        return None;
    }
    // SAFETY: in bounds, checked above.
    Some(unsafe { core::ptr::read_unaligned(frame.as_ptr().add(offset) as *const u64) })
}

/// The byte at `offset` in a frame's bytes.
#[inline(always)]
fn u8_in(frame: &[u8; FRAME_BYTES], offset: u32) -> Option<u8> {
    frame.get(offset as usize).copied()
}

/// Records one Python frame and steps to the one that called it, reading the frame once.
/// Returns 1 to stop the loop.
unsafe extern "C" fn frame_step(_index: u64, walk: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer given by `append_python_frames`.
    let walk = unsafe { &mut *(walk as *mut FrameWalk) };
    // SAFETY: `stack` is this CPU's scratch slot (see `unwind::user_stack_id`).
    let stack = unsafe { &mut *walk.stack };
    let index = stack.len as usize;
    if walk.frame == 0 || index >= MAX_USER_FRAMES {
        return 1;
    }
    // SAFETY: this CPU's scratch slot, used by this walk only.
    let frame = unsafe { &mut *walk.frame_bytes };
    // SAFETY: bpf_probe_read_user_buf checks the address.
    if unsafe { bpf_probe_read_user_buf(walk.frame as *const u8, frame) }.is_err() {
        return 1;
    }
    let offsets = &walk.offsets;
    let Some(previous) = u64_in(frame, offsets.frame_previous) else {
        return 1;
    };
    let on_c_stack = offsets.frame_owner != 0
        && u8_in(frame, offsets.frame_owner) == Some(PYTHON_FRAME_OWNED_BY_CSTACK);
    let value = if on_c_stack {
        // The evaluation loop's own frame: marks the frame before it as the loop's first.
        PYTHON_FRAME | PYTHON_ENTRY_FRAME
    } else {
        let Some(code) = u64_in(frame, offsets.frame_code) else {
            return 1;
        };
        // Not a code object (yet): nothing to name, and code 0 is the C-stack marker.
        if code & ADDRESS_MASK == 0 {
            walk.frame = previous;
            return 0;
        }
        let entry = if offsets.frame_is_entry == 0 {
            0
        } else if offsets.frame_is_entry == PYTHON_EVERY_FRAME_ENTRY {
            PYTHON_ENTRY_FRAME
        } else {
            match u8_in(frame, offsets.frame_is_entry) {
                Some(0) => 0,
                Some(_) => PYTHON_ENTRY_FRAME,
                None => return 1,
            }
        };
        PYTHON_FRAME | entry | (code & ADDRESS_MASK)
    };
    stack.frames[index] = value;
    stack.len = index as u32 + 1;
    walk.hash = (walk.hash ^ value).wrapping_mul(FNV_PRIME);
    walk.frame = previous;
    0
}
