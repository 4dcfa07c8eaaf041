//! User-stack unwinding with compiled `.eh_frame` tables (x86-64).
//!
//! The collector compiles each mapped object's CFI into [`UnwindRow`]s, shared by all processes
//! that map the object, and describes each process's executable mappings in
//! `UNWIND_PROCESSES`. Here a `bpf_loop` callback walks one frame per iteration: find the
//! mapping, binary-search its rows, apply the rule; where there is no row, follow the frame
//! pointer. The verifier checks the callback until its state converges, so depth costs nothing
//! at load time. The search of the mappings is a loop of its own for the same reason: unrolled
//! inside the frame step (it indexes an array, so the verifier tracks every step's bounds), it
//! made the verifier explore 160 000 instructions for the sampling program, most of a start-up;
//! now 40 000. So is the search of the rows (see [`row_search_step`]).
use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_NOEXIST, pt_regs},
    btf_maps::{Array as BtfArray, ArrayOfMaps},
    helpers::{
        bpf_get_current_task, bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_loop,
        bpf_probe_read_kernel, bpf_probe_read_user, bpf_task_pt_regs,
        generated::bpf_probe_read_kernel as probe_read_kernel_into,
    },
    macros::{btf_map, map},
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use profiler_common::{
    MAX_PROCESS_MAPPINGS, MAX_UNWIND_CHUNKS, MAX_USER_FRAMES, ProcessUnwind, STACK_ID_ERROR,
    STACK_ID_NONE, UNWIND_CHUNK_ROWS, UNWIND_CHUNK_SHIFT, UNWIND_PROCESS_ENTRIES, UnwindRow,
    UserStack, counter, process_event, stack_end, unwind_kind,
};

use crate::{
    helpers::{FNV_OFFSET, FNV_PRIME, add_to_counter, bump, read_at},
    process::send_process_event,
    python, stack_store,
};

/// Offsets from the current task to the return addresses saved by pending return probes, from
/// the kernel's BTF: `task_struct.utask`, `uprobe_task.return_instances`,
/// `return_instance.stack`, `.orig_ret_vaddr`, `.next`. All 0 when this kernel lacks them.
#[unsafe(no_mangle)]
static URETPROBE_OFFSETS: [u32; 5] = [0; 5];
/// From the current task to `task_struct.mm` (bytes) and to its `in_execve` bit (bits), from
/// the kernel's BTF; 0 when this kernel lacks them.
#[unsafe(no_mangle)]
static TASK_CONTEXT_OFFSETS: [u32; 2] = [0; 2];
/// Pending return probes looked at per trampoline frame: nested probed calls, newest first.
const RETURN_INSTANCE_STEPS: u32 = 8;

/// Rows of every loaded object in chunks the collector makes as objects need them, each
/// object's (or piece's) rows contiguous in one chunk and sorted by address. Chunks are all
/// one size, so the verifier inlines their lookups as it does a plain array's; mappable, so
/// the collector writes a table with one copy instead of a system call per row. A row is held
/// as a `u64` (see [`row_at`]): kernels before 6.2 accept a chunk made without BTF only for a
/// template whose value is not a struct (they compare the struct's special-field offsets).
#[btf_map]
static UNWIND_CHUNKS: ArrayOfMaps<Chunk, { MAX_UNWIND_CHUNKS as usize }> = ArrayOfMaps::new();

/// One chunk of rows.
type Chunk = BtfArray<u64, { UNWIND_CHUNK_ROWS as usize }, { BPF_F_MMAPABLE as usize }>;

/// Executable mappings of each profiled process (tgid).
#[map]
pub(crate) static UNWIND_PROCESSES: HashMap<u32, ProcessUnwind> =
    HashMap::with_max_entries(UNWIND_PROCESS_ENTRIES, BPF_F_NO_PREALLOC);

/// Where a stack is walked before it is stored: too large for the BPF stack. One slot per
/// context that can interrupt another on a CPU (perf events run in NMI, inside the others);
/// preemptible programs sharing the task slot detect a takeover (`Walk::owner`).
#[map]
pub(crate) static UNWIND_SCRATCH: PerCpuArray<UserStack> = PerCpuArray::with_max_entries(2, 0);

/// The registers a walk starts from, one slot per `UNWIND_SCRATCH` slot: on the BPF stack they
/// took 168 of the 512 bytes that kernels before 6.13 allow a program and its callbacks
/// together; read word by word, they made every walking program 3 to 10 times slower to verify.
#[map]
static REGS_SCRATCH: PerCpuArray<pt_regs> = PerCpuArray::with_max_entries(2, 0);

/// When the collector was last asked to load a process's tables, ns (asks at most every 20 ms).
#[map]
static UNWIND_REQUESTS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(1024, 0);

/// Scratch slot of programs that run in NMI context (perf events).
pub const SCRATCH_NMI: u32 = 0;
/// Scratch slot of the other programs (tracepoints, uprobes).
pub const SCRATCH_TASK: u32 = 1;

const REQUEST_INTERVAL_NS: u64 = 20_000_000;
/// Enough to binary-search a mapping's rows (a chunk at most) and a process's mappings.
const ROW_SEARCH_STEPS: u32 = UNWIND_CHUNK_SHIFT;
const MAPPING_SEARCH_STEPS: u32 = MAX_PROCESS_MAPPINGS.trailing_zeros() + 1;
/// Halvings of the mapping search per callback call: fewer calls, a little more to verify.
const SEARCH_STEPS_PER_CALL: u32 = 2;
/// Halvings of the row search per callback call.
const ROW_STEPS_PER_CALL: u32 = 4;
/// One past the highest user-space address on x86-64 (47-bit addresses).
const USER_SPACE_END: u64 = 1 << 47;

/// State of one walk, shared with the per-frame callback.
#[repr(C)]
struct Walk {
    stack: *mut UserStack,
    process: *const ProcessUnwind,
    pc: u64,
    sp: u64,
    bp: u64,
    hash: u64,
    /// Marks the scratch slot as this walk's: a program that runs preemptible (uprobes,
    /// system-call tracepoints) can be interrupted by another using the same slot. Checked
    /// once, after the walk (checking at every frame added a third to verification): the
    /// interrupted walk drops its stack; one interrupted in turn by the first resuming (rarer
    /// still) is not caught.
    owner: u64,
    missing_table: u32,
    table_frames: u32,
    /// The process's uretprobe trampoline (0: none).
    trampoline: u64,
}

/// The current thread's user stack, walked with the unwind tables, stored in `USER_STACKS`:
/// its id, or a `STACK_ID_*` value.
#[inline(always)]
pub fn user_stack_id(tgid: u32, scratch_slot: u32) -> i32 {
    walk_user_stack(tgid, scratch_slot)
}

/// [`user_stack_id`]'s body: a global function, which the verifier checks once per program
/// on its own, whatever state its callers reach it in (the scheduler program explored 279 000
/// instructions with it inlined, 34 000 with it global). Kernels before 6.13 count its frame
/// with its callers' against one 512-byte stack: for them it is inlined (`inline-walk`).
#[cfg_attr(not(feature = "inline-walk"), unsafe(no_mangle), inline(never))]
#[cfg_attr(feature = "inline-walk", inline(always))]
pub extern "C" fn walk_user_stack(tgid: u32, scratch_slot: u32) -> i32 {
    let Some(stack) = UNWIND_SCRATCH.get_ptr_mut(scratch_slot) else {
        return STACK_ID_ERROR;
    };
    let Some(regs) = REGS_SCRATCH.get_ptr_mut(scratch_slot) else {
        return STACK_ID_ERROR;
    };
    // SAFETY: helpers valid in every tracing program; the registers are copied with
    // bpf_probe_read_kernel into this CPU's scratch slot, not dereferenced.
    let copied = unsafe {
        let task_regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const c_void;
        probe_read_kernel_into(regs.cast(), size_of::<pt_regs>() as u32, task_regs)
    };
    if copied != 0 {
        bump(counter::USER_STACK_ERRORS);
        return STACK_ID_ERROR;
    }
    // SAFETY: filled above.
    let regs = unsafe { &*regs };
    if regs.rip == 0 || !has_user_context(regs.rip) {
        return STACK_ID_NONE;
    }
    let (process, trampoline) = match unsafe { UNWIND_PROCESSES.get(&tgid) } {
        Some(process) => (
            process as *const ProcessUnwind,
            process.uretprobe_trampoline,
        ),
        None => (core::ptr::null(), 0),
    };
    // A pc right after an `int3` is either a uprobe's trap (one past the breakpoint standing in
    // for the probed instruction, which has not run: unwind from the probe's address) or the
    // first instruction of a function after clang's or rustc's `int3` padding, which is 16-byte
    // aligned and left alone (a probe followed by an aligned instruction is misread, as before
    // this check). Except when the kernel has just emulated a one-byte `push` at the probe
    // (glibc's `free`): the pc is then past it for real, the pushed register on top of the
    // stack. Looking up the row at pc - 1 instead cost a third more verification.
    let mut pc = regs.rip;
    if pc % 16 != 0 && read_user_byte(pc.wrapping_sub(1)) == Some(0xcc) {
        let pushed = read_user(regs.rsp).is_some_and(|top| {
            [
                regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi, regs.rbp,
            ]
            .contains(&top)
        });
        if !pushed {
            pc -= 1;
        }
    }
    let (sp, bp) = (regs.rsp, regs.rbp);
    let mut walk = Walk {
        stack,
        process,
        pc,
        sp,
        bp,
        hash: FNV_OFFSET,
        // SAFETY: a helper valid in every program.
        owner: unsafe { bpf_ktime_get_ns() },
        missing_table: u32::from(process.is_null()),
        table_frames: 0,
        trampoline,
    };
    // SAFETY: the scratch slot is this CPU's; a walk that finds it taken over stops (see
    // `Walk::owner`). Until the walk ends, `hash` holds the owner.
    unsafe {
        (*stack).hash = walk.owner;
        (*stack).len = 0;
        (*stack).end = stack_end::DEPTH;
    }
    let step = unwind_step as *mut c_void;
    // SAFETY: the callback only touches `walk` and map memory.
    unsafe {
        bpf_loop(
            MAX_USER_FRAMES as u32,
            step,
            &mut walk as *mut Walk as *mut c_void,
            0,
        )
    };
    add_to_counter(counter::UNWIND_TABLE_FRAMES, u64::from(walk.table_frames));
    // SAFETY: as above.
    let len = unsafe { (*stack).len };
    // Looked up after the native walk: a value held across it doubled what the verifier
    // explores in every program that walks stacks (start-up 0.6 -> 1.1 s with every kind).
    if let Some(python) = python::process(tgid) {
        python::append_python_frames(&python, stack, scratch_slot, &mut walk.hash);
    }
    // SAFETY: as above (the Python frames may have cut the native ones).
    let end = unsafe { (*stack).end };
    add_to_counter(
        counter::UNWIND_FP_FRAMES,
        u64::from(len.saturating_sub(walk.table_frames)),
    );
    bump(counter::UNWIND_STACKS);
    if walk.missing_table != 0 {
        request_tables(tgid);
    }
    // SAFETY: as above.
    if unsafe { (*stack).hash } != walk.owner {
        // Another walk on this CPU took the slot over: these frames are not all ours.
        bump(counter::USER_STACK_ERRORS);
        return STACK_ID_ERROR;
    }
    stack_store::store_user_stack(stack, (walk.hash ^ u64::from(end)).wrapping_mul(FNV_PRIME))
}

/// Asks the collector for a process's tables, at most every `REQUEST_INTERVAL_NS`.
#[inline(always)]
fn request_tables(tgid: u32) {
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(last) = UNWIND_REQUESTS.get_ptr_mut(&tgid) {
        // SAFETY: a racing update from another CPU writes a time just as recent.
        unsafe {
            if now.wrapping_sub(*last) < REQUEST_INTERVAL_NS {
                return;
            }
            *last = now;
        }
    } else if UNWIND_REQUESTS.insert(&tgid, &now, 0).is_err() {
        return;
    }
    send_process_event(process_event::UNWIND_TABLES_MISSING, tgid, tgid);
}

/// Forgets a process's mappings (it executed a new program).
#[inline(always)]
pub fn forget_process(tgid: u32) {
    let _ = UNWIND_PROCESSES.remove(&tgid);
    python::forget_process(tgid);
}

/// Gives a forked child its parent's mappings: it maps the same objects at the same places,
/// so its first samples are walked whole instead of waiting for the collector to read its
/// maps (which it still does, and replaces these with).
#[inline(always)]
pub fn inherit_process(parent: u32, child: u32) {
    // SAFETY: the value is copied by the update; it is only read here.
    if let Some(mappings) = unsafe { UNWIND_PROCESSES.get(&parent) } {
        let _ = UNWIND_PROCESSES.insert(&child, mappings, u64::from(BPF_NOEXIST));
    }
    python::inherit_process(parent, child);
}

/// Records the frame at `walk.pc` and steps to its caller. Returns 1 to stop the loop.
unsafe extern "C" fn unwind_step(index: u64, walk: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer given by `user_stack_id`.
    let walk = unsafe { &mut *(walk as *mut Walk) };
    // SAFETY: `stack` is this CPU's scratch slot (see `user_stack_id`).
    let stack = unsafe { &mut *walk.stack };
    let index = index as usize;
    if index >= MAX_USER_FRAMES {
        return 1;
    }
    // Above user space: a garbage return address, never code (and never to be taken for a
    // Python entry, whose top bit is set).
    if walk.pc >= USER_SPACE_END {
        stack.end = stack_end::NOT_ADVANCING;
        return 1;
    }
    stack.frames[index] = walk.pc;
    stack.len = index as u32 + 1;
    walk.hash = (walk.hash ^ walk.pc).wrapping_mul(FNV_PRIME);
    if index + 1 == MAX_USER_FRAMES {
        stack.end = stack_end::DEPTH;
        return 1;
    }
    // A return address may point just past the call, into the next function: look up the
    // call instruction instead.
    let lookup = if index == 0 { walk.pc } else { walk.pc - 1 };
    let row = if walk.process.is_null() {
        None
    } else {
        // SAFETY: a map value, valid for the duration of the program.
        find_row(unsafe { &*walk.process }, lookup, &mut walk.missing_table)
    };
    let (cfa, bp) = match row {
        Some(row) if row.kind == unwind_kind::END => {
            stack.end = stack_end::ENTRY;
            return 1;
        }
        Some(row) if row.kind != unwind_kind::NONE => {
            let base = if row.kind == unwind_kind::CFA_RBP {
                walk.bp
            } else {
                walk.sp
            };
            // Offsets are in 8-byte words.
            let mut cfa = base.wrapping_add((row.cfa_offset as i64 * 8) as u64);
            if row.kind == unwind_kind::PLT && (walk.pc & 15) >= row.rbp_offset as u64 {
                cfa += 8;
            }
            let bp = if row.kind != unwind_kind::PLT && row.rbp_offset != 0 {
                match read_user(cfa.wrapping_add((row.rbp_offset as i64 * 8) as u64)) {
                    Some(bp) => bp,
                    None => {
                        stack.end = stack_end::READ_FAILED;
                        return 1;
                    }
                }
            } else {
                walk.bp
            };
            walk.table_frames += 1;
            (cfa, bp)
        }
        // No row: the frame pointer chain, if this code keeps one.
        _ => {
            if walk.bp == 0 {
                stack.end = stack_end::FRAME_POINTER_END;
                return 1;
            }
            match read_user(walk.bp) {
                Some(bp) => (walk.bp + 16, bp),
                None => {
                    stack.end = stack_end::READ_FAILED;
                    return 1;
                }
            }
        }
    };
    if cfa <= walk.sp {
        stack.end = stack_end::NOT_ADVANCING;
        return 1;
    }
    let Some(mut return_address) = read_user(cfa - 8) else {
        stack.end = stack_end::READ_FAILED;
        return 1;
    };
    if walk.trampoline != 0
        && return_address == walk.trampoline
        && let Some(saved) = saved_return_address(cfa - 8)
    {
        return_address = saved;
    }
    if return_address == 0 {
        stack.end = stack_end::FRAME_POINTER_END;
        return 1;
    }
    walk.pc = return_address;
    walk.sp = cfa;
    walk.bp = bp;
    0
}

/// The return address a return probe replaced with the trampoline in the slot at `slot`: the
/// kernel keeps it with the task, newest probe first, each with the stack slot it hijacked.
/// Searched from the newest each time: state carried from frame to frame doubled the
/// verifier's work.
#[inline(always)]
fn saved_return_address(slot: u64) -> Option<u64> {
    // SAFETY: read_volatile keeps the loader-set constant from being folded at compile time.
    let offsets = unsafe { core::ptr::read_volatile(&URETPROBE_OFFSETS) };
    if offsets[0] == 0 {
        return None;
    }
    let read = |address: u64| {
        // SAFETY: bpf_probe_read_kernel checks the address.
        unsafe { bpf_probe_read_kernel(address as *const u64) }.ok()
    };
    // SAFETY: a helper valid in every tracing program.
    let task = unsafe { bpf_get_current_task() };
    let utask = read(task + u64::from(offsets[0]))?;
    if utask == 0 {
        return None;
    }
    let mut instance = read(utask + u64::from(offsets[1]))?;
    for _ in 0..RETURN_INSTANCE_STEPS {
        if instance == 0 {
            return None;
        }
        if read(instance + u64::from(offsets[2]))? == slot {
            return read(instance + u64::from(offsets[3]));
        }
        instance = read(instance + u64::from(offsets[4]))?;
    }
    None
}

/// Whether the current task's saved user registers belong to the address space it runs in. Not
/// so while it exits (its memory already released: no `mm`) or between exec replacing its
/// memory and starting the new program (the old `pc` unmapped): the sample is the kernel's
/// alone, as perf records it, not a user stack cut at its first frame.
#[inline(always)]
fn has_user_context(pc: u64) -> bool {
    // SAFETY: read_volatile keeps the loader-set constant from being folded at compile time.
    let [mm, in_execve] = unsafe { core::ptr::read_volatile(&TASK_CONTEXT_OFFSETS) };
    if mm == 0 {
        return true;
    }
    // SAFETY: a helper valid in every tracing program.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    if read_at::<u64>(task, mm) == Some(0) {
        return false;
    }
    let execing = in_execve != 0
        && read_at::<u8>(task, in_execve / 8)
            .is_some_and(|byte| byte & (1 << (in_execve % 8)) != 0);
    !execing || read_user_byte(pc).is_some()
}

#[inline(always)]
fn read_user_byte(address: u64) -> Option<u8> {
    // SAFETY: bpf_probe_read_user checks the address.
    unsafe { bpf_probe_read_user(address as *const u8) }.ok()
}

#[inline(always)]
pub(crate) fn read_user(address: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user checks the address.
    unsafe { bpf_probe_read_user(address as *const u64) }.ok()
}

/// The row covering `pc` in `process`, if its mapping has a table. Notes addresses outside
/// every known mapping in `missing_table` (a library mapped since the tables were loaded).
#[inline(always)]
fn find_row(process: &ProcessUnwind, pc: u64, missing_table: &mut u32) -> Option<UnwindRow> {
    // The verifier checks the callback until its state converges: nothing precise (like a
    // cached mapping index) is carried from one frame to the next.
    let Some(index) = find_mapping(process, pc) else {
        *missing_table = 1;
        return None;
    };
    let mapping = &process.mappings[index];
    if mapping.row_count == 0 {
        return None;
    }
    let address = pc.wrapping_sub(mapping.bias);
    if address > u64::from(u32::MAX) {
        return None;
    }
    let address = address as u32;
    let rows = UNWIND_CHUNKS.get(mapping.first_row >> UNWIND_CHUNK_SHIFT)?;
    // Largest index in [first, end) whose row starts at or below the address.
    let low = mapping.first_row & (UNWIND_CHUNK_ROWS - 1);
    if row_at(rows, low)?.address > address {
        return None;
    }
    let mut search = RowSearch {
        rows,
        address,
        low,
        high: low.saturating_add(mapping.row_count),
    };
    // SAFETY: the callback only touches `search` and the chunk it points to.
    unsafe {
        bpf_loop(
            ROW_SEARCH_STEPS.div_ceil(ROW_STEPS_PER_CALL),
            row_search_step as *mut c_void,
            &mut search as *mut RowSearch as *mut c_void,
            0,
        )
    };
    row_at(rows, search.low)
}

/// A binary search for the last row at or below `address`, in rows `[low, high)` of a chunk.
#[repr(C)]
struct RowSearch {
    rows: *const Chunk,
    address: u32,
    low: u32,
    high: u32,
}

/// Halves the search's range a few times. Returns 1 to stop the loop.
///
/// A loop of its own, not unrolled into the frame step: unrolled, the verifier of a 6.18 build
/// (6.18.44-fc-v1272) explored each of its 2^20 paths and refused every program that walks
/// stacks. Four halvings a call: each more adds a seventh to what the verifier explores
/// where the walker is inlined, each fewer a call per frame.
unsafe extern "C" fn row_search_step(_index: u64, search: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer given by `find_row`.
    let search = unsafe { &mut *(search as *mut RowSearch) };
    for _ in 0..ROW_STEPS_PER_CALL {
        let (low, high) = (search.low, search.high);
        if high.saturating_sub(low) <= 1 {
            return 1;
        }
        let middle = low + (high - low) / 2;
        // SAFETY: a map, valid for the duration of the program.
        let Some(row) = row_at(unsafe { &*search.rows }, middle) else {
            // Past the chunk (a table that does not fit it): no row, as for a row not found.
            search.low = u32::MAX;
            return 1;
        };
        if row.address <= search.address {
            search.low = middle;
        } else {
            search.high = middle;
        }
    }
    0
}

/// Row `index` of a chunk.
#[inline(always)]
fn row_at(rows: &Chunk, index: u32) -> Option<UnwindRow> {
    // SAFETY: `UnwindRow` is 8 bytes of plain integers; every bit pattern is one.
    rows.get(index)
        .map(|&bits| unsafe { core::mem::transmute::<u64, UnwindRow>(bits) })
}

/// Index of the mapping holding `pc`.
#[inline(always)]
fn find_mapping(process: &ProcessUnwind, pc: u64) -> Option<usize> {
    let mut search = MappingSearch {
        process,
        pc,
        low: 0,
        high: (process.mapping_count as usize).min(MAX_PROCESS_MAPPINGS) as u32,
        found: u32::MAX,
    };
    // SAFETY: the callback only touches `search` and the map value it points to.
    unsafe {
        bpf_loop(
            MAPPING_SEARCH_STEPS.div_ceil(SEARCH_STEPS_PER_CALL),
            mapping_search_step as *mut c_void,
            &mut search as *mut MappingSearch as *mut c_void,
            0,
        )
    };
    (search.found != u32::MAX).then_some(search.found as usize & (MAX_PROCESS_MAPPINGS - 1))
}

/// A binary search for the mapping holding `pc`, in mappings `[low, high)`.
#[repr(C)]
struct MappingSearch {
    process: *const ProcessUnwind,
    pc: u64,
    low: u32,
    high: u32,
    found: u32,
}

/// Halves the search's range. Returns 1 to stop the loop.
unsafe extern "C" fn mapping_search_step(_index: u64, search: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer given by `find_mapping`.
    let search = unsafe { &mut *(search as *mut MappingSearch) };
    for _ in 0..SEARCH_STEPS_PER_CALL {
        let (low, high) = (search.low as usize, search.high as usize);
        if low >= high {
            return 1;
        }
        let middle = (low + (high - low) / 2) & (MAX_PROCESS_MAPPINGS - 1);
        // SAFETY: a map value, valid for the duration of the program.
        let mapping = unsafe { &(*search.process).mappings[middle] };
        if search.pc < mapping.start {
            search.high = middle as u32;
        } else if search.pc >= mapping.end {
            search.low = middle as u32 + 1;
        } else {
            search.found = middle as u32;
            return 1;
        }
    }
    0
}
