//! CPython frames: for a process the collector found running CPython, the current thread's
//! Python frames (code object addresses, newest first) appended to its walked user stack. The
//! collector names the code objects and puts each run of frames under the native evaluation
//! frame that ran it.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_loop},
    macros::map,
    maps::{HashMap, LruHashMap},
};
use profiler_common::{
    MAX_PYTHON_FRAMES, MAX_PYTHON_THREADS, MAX_USER_FRAMES, PYTHON_ENTRY_FRAME,
    PYTHON_EVERY_FRAME_ENTRY, PYTHON_FRAME, PYTHON_FRAME_DIRECT, PYTHON_FRAME_OWNED_BY_CSTACK,
    PYTHON_PROCESS_ENTRIES, PythonOffsets, PythonProcess, UserStack,
};

use crate::{
    helpers::read_at,
    unwind::{read_user, read_user_byte},
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
/// memory reused when its thread ends).
#[map]
static PYTHON_THREADS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16 * 1024, 0);

const FNV_PRIME: u64 = 0x100_0000_01b3;
/// What a code object's address keeps: user addresses are below 2^47.
const ADDRESS_MASK: u64 = (1 << 47) - 1;

/// A search of the interpreter's thread list for the current thread's state.
#[repr(C)]
struct ThreadSearch {
    thread: u64,
    /// The id the thread state keeps of the current thread.
    id: u64,
    next: u32,
    id_offset: u32,
    found: u64,
}

/// A walk of a thread's Python frames onto a user stack.
#[repr(C)]
struct FrameWalk {
    stack: *mut UserStack,
    frame: u64,
    hash: u64,
    offsets: PythonOffsets,
}

/// Appends the current thread's Python frames to `stack` (after its native frames), folding
/// them into `hash`, when process `tgid` runs CPython.
#[inline(always)]
pub fn append_python_frames(tgid: u32, stack: *mut UserStack, hash: &mut u64) {
    // SAFETY: a map value, copied.
    let Some(process) = (unsafe { PYTHON_PROCESSES.get(&tgid) }).copied() else {
        return;
    };
    let offsets = process.offsets;
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(thread) = thread_state(tid, &process) else {
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
    let mut walk = FrameWalk {
        stack,
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
    // SAFETY: a map value, copied.
    if let Some(thread) = unsafe { PYTHON_THREADS.get(&tid) }.copied()
        && read_user(thread + u64::from(offsets.thread_id)) == Some(id)
    {
        return Some(thread);
    }
    let interpreter = read_user(process.runtime + u64::from(offsets.runtime_main_interpreter))?;
    if interpreter == 0 {
        return None;
    }
    let mut search = ThreadSearch {
        thread: read_user(interpreter + u64::from(offsets.interpreter_threads))?,
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
    if search.found == 0 {
        return None;
    }
    let _ = PYTHON_THREADS.insert(&tid, &search.found, 0);
    Some(search.found)
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
        Some(next) => {
            search.thread = next;
            0
        }
        None => 1,
    }
}

/// Records one Python frame and steps to the one that called it. Returns 1 to stop the loop.
unsafe extern "C" fn frame_step(_index: u64, walk: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer given by `append_python_frames`.
    let walk = unsafe { &mut *(walk as *mut FrameWalk) };
    // SAFETY: `stack` is this CPU's scratch slot (see `unwind::user_stack_id`).
    let stack = unsafe { &mut *walk.stack };
    let index = stack.len as usize;
    if walk.frame == 0 || index >= MAX_USER_FRAMES {
        return 1;
    }
    let offsets = &walk.offsets;
    let on_c_stack = offsets.frame_owner != 0
        && read_user_byte(walk.frame + u64::from(offsets.frame_owner))
            == Some(PYTHON_FRAME_OWNED_BY_CSTACK);
    let value = if on_c_stack {
        // The evaluation loop's own frame: marks the frame before it as the loop's first.
        PYTHON_FRAME | PYTHON_ENTRY_FRAME
    } else {
        let Some(code) = read_user(walk.frame + u64::from(offsets.frame_code)) else {
            return 1;
        };
        let entry = if offsets.frame_is_entry == 0 {
            0
        } else if offsets.frame_is_entry == PYTHON_EVERY_FRAME_ENTRY {
            PYTHON_ENTRY_FRAME
        } else {
            match read_user_byte(walk.frame + u64::from(offsets.frame_is_entry)) {
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
    match read_user(walk.frame + u64::from(walk.offsets.frame_previous)) {
        Some(previous) => {
            walk.frame = previous;
            0
        }
        None => 1,
    }
}
