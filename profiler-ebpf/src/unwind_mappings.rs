//! Mappings the unwinder learns by itself, before the collector describes a process: at an
//! exec (the program and its interpreter, which the kernel maps) and each time the dynamic
//! loader tells debuggers its objects changed (`_dl_debug_state`, after it mapped the
//! libraries at start-up or at a `dlopen`), the file behind the memory is looked up in the
//! objects whose tables are already compiled, shared by every process that maps them. A new
//! process is then walked whole from its first sample when it runs known binaries.
//!
//! Not at each `mmap`: a `syscalls` tracepoint makes every system call of every process on
//! the machine take the slow path (about 50 ns a call here), for the whole run.
//!
//! `bpf_find_vma` is only called here, in process context: in NMI or with interrupts off
//! (perf events, `sched_switch`) it succeeds once per interrupt at most.
use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST, pt_regs},
    helpers::{
        bpf_find_vma, bpf_get_attach_cookie, bpf_get_current_task, bpf_get_current_task_btf,
        bpf_loop, bpf_probe_read_kernel, bpf_task_pt_regs,
    },
    macros::{map, uprobe},
    maps::{HashMap, PerCpuArray},
    programs::ProbeContext,
};
use profiler_common::{
    FileKey, MAX_PROCESS_MAPPINGS, ObjectUnwind, ProcessUnwind, UNWIND_OBJECT_ENTRIES,
    UnwindMapping,
};

use crate::{
    helpers::{current_tgid_tid, read_at},
    maps::{TARGETS, UNWIND_WITH_TABLES},
    unwind::{UNWIND_PROCESSES, read_user},
};

/// Offsets from the kernel's BTF, by the `offset` indices. The `VM_FILE` one is 0 when this
/// kernel lacks one of them: nothing is learned.
#[unsafe(no_mangle)]
static VMA_FILE_OFFSETS: [u32; offset::COUNT] = [0; offset::COUNT];

/// Indices of `VMA_FILE_OFFSETS`.
mod offset {
    pub const VM_START: usize = 0;
    pub const VM_END: usize = 1;
    pub const VM_PGOFF: usize = 2;
    pub const VM_FLAGS: usize = 3;
    pub const VM_FILE: usize = 4;
    pub const FILE_INODE: usize = 5;
    pub const INODE_NUMBER: usize = 6;
    pub const INODE_SUPERBLOCK: usize = 7;
    pub const SUPERBLOCK_DEVICE: usize = 8;
    pub const TASK_MM: usize = 9;
    pub const MM_START_CODE: usize = 10;
    pub const COUNT: usize = 11;
}

/// `VM_EXEC` in `vm_area_struct.vm_flags`.
const VM_EXEC: u64 = 0x4;

/// Every loaded object's rows by the file they were compiled from (`FileKey`).
#[map]
static UNWIND_OBJECTS: HashMap<FileKey, ObjectUnwind> =
    HashMap::with_max_entries(UNWIND_OBJECT_ENTRIES, BPF_F_NO_PREALLOC);

/// An empty process description to start one from (too large for the BPF stack).
#[map]
static EMPTY_PROCESS: PerCpuArray<ProcessUnwind> = PerCpuArray::with_max_entries(1, 0);

/// Objects of the loader's list looked at per notification.
const MAX_LOADED_OBJECTS: u32 = 128;
/// `r_debug.r_map`, `link_map.l_addr`, `link_map.l_next`: the debugger interface's layout
/// (`<link.h>`), fixed since 1995 on x86-64.
const R_MAP: u64 = 8;
const L_ADDR: u64 = 0;
const L_NEXT: u64 = 24;

/// The dynamic loader's `_dl_debug_state`: its list of loaded objects changed. Learns the
/// text of every object on the list that is known. The attach cookie holds the addresses of
/// `_dl_debug_state` (high half) and `_r_debug` (low half) in the loader's own address space.
#[uprobe]
pub fn loader_debug_state(ctx: ProbeContext) -> u32 {
    let (tgid, _) = current_tgid_tid();
    // SAFETY: a map value, only tested.
    if unsafe { TARGETS.get(&tgid) }.is_none() {
        return 0;
    }
    // SAFETY: a helper valid in uprobes; `regs` is the probe's register set.
    let (cookie, pc) = unsafe { (bpf_get_attach_cookie(ctx.as_ptr()), (*ctx.regs).rip) };
    // The pc is the probe's address or one past it; the loader is mapped at a page boundary.
    let loader = pc.wrapping_sub(cookie >> 32) & !0xfff;
    let Some(first) = read_user(loader + (cookie & 0xffff_ffff) + R_MAP) else {
        return 0;
    };
    let mut list = LoadedObjects { tgid, next: first };
    // SAFETY: the callback reads user memory through checked helpers and writes `list`.
    unsafe {
        bpf_loop(
            MAX_LOADED_OBJECTS,
            learn_loaded_object as *mut c_void,
            &mut list as *mut LoadedObjects as *mut c_void,
            0,
        )
    };
    0
}

/// Where the walk of the loader's list is.
#[repr(C)]
struct LoadedObjects {
    tgid: u32,
    /// The next `link_map` (0: the end).
    next: u64,
}

/// Learns the text of the object at `list.next` and steps to the next. Returns 1 to stop.
unsafe extern "C" fn learn_loaded_object(_index: u64, list: *mut c_void) -> i64 {
    // SAFETY: `loader_debug_state` passes its `LoadedObjects`.
    let list = unsafe { &mut *(list as *mut LoadedObjects) };
    let entry = list.next;
    if entry == 0 {
        return 1;
    }
    let (Some(load_bias), Some(next)) = (read_user(entry + L_ADDR), read_user(entry + L_NEXT))
    else {
        return 1;
    };
    list.next = next;
    // The object's first page (address 0 of a shared object) names its file; its text is at
    // the load bias plus the text's address. The program itself (learned at exec) and the
    // vDSO (no file) are skipped by `learn`.
    if let Some(start) = vma_at(load_bias)
        // SAFETY: a map value, copied.
        && let Some(object) = unsafe { UNWIND_OBJECTS.get(&start.file) }.copied()
    {
        learn(
            list.tgid,
            load_bias
                .wrapping_add(object.text_start)
                .wrapping_add(object.address_delta),
        );
    }
    0
}

/// A target executed a new program: learn the program's text and its interpreter's (where it
/// starts), both mapped by the kernel already. Process context, after the exec.
#[inline(always)]
pub fn learn_exec(tgid: u32) {
    // SAFETY: read_volatile keeps the loader-set constant from being folded at compile time.
    if unsafe { core::ptr::read_volatile(&UNWIND_WITH_TABLES) } == 0 {
        return;
    }
    // SAFETY: helpers valid in every tracing program; memory read with bpf_probe_read_kernel.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    if let Ok(regs) = unsafe { bpf_probe_read_kernel(regs) } {
        learn(tgid, regs.rip);
    }
    let offsets = offsets();
    // SAFETY: a helper valid in every tracing program.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    if let Some(mm) = read_at::<u64>(task, offsets[offset::TASK_MM])
        && mm != 0
        && let Some(start_code) = read_at(mm as *const u8, offsets[offset::MM_START_CODE])
    {
        learn(tgid, start_code);
    }
}

#[inline(always)]
fn offsets() -> [u32; offset::COUNT] {
    // SAFETY: read_volatile keeps the loader-set constant from being folded at compile time.
    unsafe { core::ptr::read_volatile(&VMA_FILE_OFFSETS) }
}

/// What `vma_of` found about the memory area holding an address.
#[repr(C)]
struct Vma {
    start: u64,
    end: u64,
    page_offset: u64,
    flags: u64,
    file: FileKey,
    found: u64,
}

/// Adds the executable file mapping holding `address` to `tgid`'s mappings when its object's
/// rows are loaded and no described mapping covers it.
#[inline(always)]
fn learn(tgid: u32, address: u64) {
    let Some(vma) = vma_at(address) else {
        return;
    };
    if vma.flags & VM_EXEC == 0 || vma.end <= vma.start {
        return;
    }
    // SAFETY: a map value, copied.
    let Some(object) = (unsafe { UNWIND_OBJECTS.get(&vma.file) }).copied() else {
        return;
    };
    // Object address = pc - start + file offset of start + delta.
    let bias = vma
        .start
        .wrapping_sub(vma.page_offset << 12)
        .wrapping_sub(object.address_delta);
    insert(
        tgid,
        UnwindMapping {
            start: vma.start,
            end: vma.end,
            bias,
            first_row: object.first_row,
            row_count: object.row_count,
        },
    );
}

/// The file-backed memory area of the current process holding `address`.
#[inline(always)]
fn vma_at(address: u64) -> Option<Vma> {
    if offsets()[offset::VM_FILE] == 0 {
        return None;
    }
    let mut vma = Vma {
        start: 0,
        end: 0,
        page_offset: 0,
        flags: 0,
        file: FileKey::default(),
        found: 0,
    };
    // SAFETY: the callback reads kernel memory with bpf_probe_read_kernel and writes `vma`.
    unsafe {
        bpf_find_vma(
            bpf_get_current_task_btf(),
            address,
            vma_of as *mut c_void,
            &mut vma as *mut Vma as *mut c_void,
            0,
        )
    };
    (vma.found != 0).then_some(vma)
}

/// `bpf_find_vma` callback: the memory area's range, flags and file.
unsafe extern "C" fn vma_of(_task: *mut c_void, area: *mut c_void, vma: *mut c_void) -> i64 {
    // SAFETY: `learn` passes its `Vma`.
    let vma = unsafe { &mut *(vma as *mut Vma) };
    let offsets = offsets();
    let area = area as *const u8;
    let (Some(start), Some(end), Some(page_offset), Some(flags), Some(file)) = (
        read_at::<u64>(area, offsets[offset::VM_START]),
        read_at::<u64>(area, offsets[offset::VM_END]),
        read_at::<u64>(area, offsets[offset::VM_PGOFF]),
        read_at::<u64>(area, offsets[offset::VM_FLAGS]),
        read_at::<u64>(area, offsets[offset::VM_FILE]),
    ) else {
        return 1;
    };
    if file == 0 {
        return 1;
    }
    let Some(inode) = read_at::<u64>(file as *const u8, offsets[offset::FILE_INODE]) else {
        return 1;
    };
    let inode = inode as *const u8;
    let (Some(number), Some(superblock)) = (
        read_at::<u64>(inode, offsets[offset::INODE_NUMBER]),
        read_at::<u64>(inode, offsets[offset::INODE_SUPERBLOCK]),
    ) else {
        return 1;
    };
    let Some(device) = read_at::<u32>(superblock as *const u8, offsets[offset::SUPERBLOCK_DEVICE])
    else {
        return 1;
    };
    *vma = Vma {
        start,
        end,
        page_offset,
        flags,
        file: FileKey {
            device: u64::from(device),
            inode: number,
        },
        found: 1,
    };
    0
}

/// State of the search for where a mapping goes.
#[repr(C)]
struct Place {
    process: *const ProcessUnwind,
    count: u32,
    start: u64,
    end: u64,
    /// Index of the first mapping starting above `start` (`count` if none).
    at: u32,
    /// Non-zero if a mapping overlaps `[start, end)`: described already.
    overlaps: u32,
}

/// Looks at mapping `index`. Returns 1 to stop the loop. A linear scan: learning is rare, and
/// a binary search's midpoint is beyond what the verifier can bound here.
unsafe extern "C" fn find_place(index: u64, place: *mut c_void) -> i64 {
    // SAFETY: `insert` passes its `Place`.
    let place = unsafe { &mut *(place as *mut Place) };
    if index >= u64::from(place.count) || index >= MAX_PROCESS_MAPPINGS as u64 {
        return 1;
    }
    // SAFETY: a map value; the index is below the array's length.
    let mapping = unsafe { &(*place.process).mappings[index as usize] };
    if mapping.start < place.end && place.start < mapping.end {
        place.overlaps = 1;
        return 1;
    }
    if mapping.start > place.start {
        place.at = index as u32;
        return 1;
    }
    0
}

/// State of the shift that makes room for a mapping.
#[repr(C)]
struct Shift {
    process: *mut ProcessUnwind,
    /// Mappings before the insertion.
    count: u32,
    /// Index the new mapping goes to.
    at: u32,
}

/// Inserts `mapping` into `tgid`'s sorted mappings (starting a description if there is none),
/// unless one it overlaps is there already or the array is full.
#[inline(always)]
fn insert(tgid: u32, mapping: UnwindMapping) {
    let process = match UNWIND_PROCESSES.get_ptr_mut(&tgid) {
        Some(process) => process,
        None => {
            let Some(empty) = EMPTY_PROCESS.get_ptr_mut(0) else {
                return;
            };
            // SAFETY: this CPU's slot; only the header matters to an empty description.
            unsafe {
                (*empty).mapping_count = 0;
                (*empty).uretprobe_trampoline = 0;
                let _ = UNWIND_PROCESSES.insert(&tgid, &*empty, u64::from(BPF_NOEXIST));
            }
            match UNWIND_PROCESSES.get_ptr_mut(&tgid) {
                Some(process) => process,
                None => return,
            }
        }
    };
    // SAFETY: a map value. Another thread of the process learning at the same moment can
    // race this update; the collector's next description replaces the whole entry.
    let count = unsafe { (*process).mapping_count };
    if count as usize >= MAX_PROCESS_MAPPINGS {
        return;
    }
    let mut place = Place {
        process,
        count,
        start: mapping.start,
        end: mapping.end,
        at: count,
        overlaps: 0,
    };
    // SAFETY: the callback only reads the map value.
    unsafe {
        bpf_loop(
            count,
            find_place as *mut c_void,
            &mut place as *mut Place as *mut c_void,
            0,
        )
    };
    if place.overlaps != 0 {
        return;
    }
    let low = place.at;
    let mut shift = Shift {
        process,
        count,
        at: low,
    };
    // SAFETY: the callback only moves entries within the map value.
    unsafe {
        bpf_loop(
            count - low,
            shift_up as *mut c_void,
            &mut shift as *mut Shift as *mut c_void,
            0,
        )
    };
    // SAFETY: as above.
    unsafe {
        (*process).mappings[low as usize & (MAX_PROCESS_MAPPINGS - 1)] = mapping;
        (*process).mapping_count = count + 1;
    }
}

/// Moves mapping `count - 1 - index` one place up. Returns 1 to stop the loop.
unsafe extern "C" fn shift_up(index: u64, shift: *mut c_void) -> i64 {
    // SAFETY: `insert` passes its `Shift`.
    let shift = unsafe { &*(shift as *const Shift) };
    let to = u64::from(shift.count).wrapping_sub(index);
    if to <= u64::from(shift.at) || to >= MAX_PROCESS_MAPPINGS as u64 {
        return 1;
    }
    // Masked: the compiler cannot see `to >= 1`, and a bounds check would not verify.
    let last = MAX_PROCESS_MAPPINGS - 1;
    let to = to as usize;
    // SAFETY: a map value; both indices are below the array's length.
    unsafe {
        let mappings = &mut (*shift.process).mappings;
        mappings[to & last] = mappings[(to - 1) & last];
    }
    0
}
