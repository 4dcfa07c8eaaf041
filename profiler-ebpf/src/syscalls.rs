//! System calls: the `raw_syscalls` `sys_enter`/`sys_exit` programs that time the I/O calls of
//! target threads (per thread, stack, call and file, with latency histograms), stream the files
//! they open, and add their memory calls (`mmap`, `munmap`, `brk`) to the process totals;
//! `sys_exit` also walks the user stacks of sampled off-CPU periods (`offcpu_stacks`).

use aya_ebpf::{
    bindings::{BPF_NOEXIST, pt_regs},
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user_str_bytes},
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::BtfTracePointContext,
};
use profiler_common::{
    CONTROL_IO_SAMPLE_BELOW_NS, FdKey, IO_MAP_ENTRIES, IoKey, IoPending, IoTotal, LATENCY_SLOTS,
    MAX_IO_CALLS, OpenEvent, RECORDING_STOPPED, STACK_ID_UNSAMPLED, SYSCALL_TABLE_ENTRIES,
    TARGET_MAP_ENTRIES, ThreadState, counter, inode_file_id, io_kind, latency_slot, process_event,
};

use crate::{
    current::{self, Known},
    helpers::{
        active_map, bump, current_comm, current_tgid_tid, event_user_stack, process_memory,
        read_at, register, stack_sampled,
    },
    io_pending,
    maps::CONTROL,
    offcpu_stacks,
    process::send_process_event,
    unwind,
};

/// Offsets that lead from the current task to an fd's inode, from the kernel's BTF:
/// `task_struct.files`, `files_struct.fdt`, `fdtable.max_fds`, `fdtable.fd`, `file.f_inode`,
/// `inode.i_mode`, `inode.i_ino`.
#[unsafe(no_mangle)]
static FD_INODE_OFFSETS: [u32; 7] = [0; 7];

/// System calls the I/O programs watch: number → `kind << 8 | index`, 0 for the rest. Filled by
/// the collector from its per-architecture table.
#[map]
static SYSCALLS: Array<u32> = Array::with_max_entries(SYSCALL_TABLE_ENTRIES, 0);

/// Which file each fd of a target names: its open time, the id the collector knows it by.
#[map]
static FILES: HashMap<FdKey, u64> = HashMap::with_max_entries(IO_MAP_ENTRIES, 0);

/// Which inode fds of targets not opened during the run name (sockets, pipes, older files),
/// learnt at their first call: least recently used ones make room.
#[map]
static FD_INODES: LruHashMap<FdKey, u64> = LruHashMap::with_max_entries(IO_MAP_ENTRIES, 0);

/// `-EBADF`: a close of no fd.
const EBADF: i64 = -9;

/// I/O totals per thread, stack, call and file; double-buffered like the sample maps.
#[map]
static IO_0: HashMap<IoKey, IoTotal> = HashMap::with_max_entries(IO_MAP_ENTRIES, 0);
#[map]
static IO_1: HashMap<IoKey, IoTotal> = HashMap::with_max_entries(IO_MAP_ENTRIES, 0);

/// Latency histogram per call index, per CPU so no update races. One entry per call: each
/// entry of a per-CPU array is an allocation of per-CPU memory, and one per slot made 6144 of
/// them, 5 ms of every start-up.
#[map]
static IO_LATENCY: PerCpuArray<[u64; LATENCY_SLOTS as usize]> =
    PerCpuArray::with_max_entries(MAX_IO_CALLS, 0);

/// Longest call per call index, ns, per CPU.
#[map]
static IO_MAX: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_IO_CALLS, 0);

/// Files opened by targets, with their paths.
#[map]
static OPEN_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Last heap end returned by `brk`, per process.
#[map]
static BRK_END: HashMap<u32, u64> = HashMap::with_max_entries(TARGET_MAP_ENTRIES, 0);

/// The `SYSCALLS` value of system call `id`, if it is one the I/O programs watch.
#[inline(always)]
fn io_call(id: i64) -> Option<u32> {
    if !(0..i64::from(SYSCALL_TABLE_ENTRIES)).contains(&id) {
        return None;
    }
    SYSCALLS.get(id as u32).copied().filter(|&call| call != 0)
}

/// A system call starts: for an I/O call of a target thread, note when and on what. A BTF
/// tracepoint, like the other system-call programs: it runs for every system call of the
/// machine, and the kernel then hands over its arguments without first copying them into a
/// trace record.
#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter(ctx: BtfTracePointContext) -> i32 {
    match try_sys_enter(ctx) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

#[inline(always)]
fn try_sys_enter(ctx: BtfTracePointContext) -> Result<i32, i32> {
    // sys_enter(struct pt_regs *regs, long id)
    let id: i64 = ctx.arg(1);
    let call = io_call(id).ok_or(0)?;
    let (tgid, tid) = current_tgid_tid();
    if !current::is_target(tgid, tid) || active_map() == RECORDING_STOPPED {
        return Err(0);
    }
    if call >> 8 < io_kind::MMAP {
        bump(counter::IO_CALLS);
    }
    let regs: *const pt_regs = ctx.arg(0);
    let fd = register(regs, |regs| &regs.rdi);
    // A close's file is gone by the exit: identify it now (kept in the unused second argument).
    let second = if call >> 8 == io_kind::CLOSE {
        fd_inode(fd as i32).map_or(0, |(mode, inode)| inode_file_id(mode, inode))
    } else {
        register(regs, |regs| &regs.rsi)
    };
    let pending = IoPending {
        start_ns: unsafe { bpf_ktime_get_ns() },
        args: [fd, second],
        call,
        _pad: 0,
    };
    io_pending::start(tid, &pending);
    Ok(0)
}

#[inline(always)]
fn add_io(totals: &HashMap<IoKey, IoTotal>, key: &IoKey, call: &IoTotal) {
    match totals.get_ptr_mut(key) {
        // SAFETY: the key holds the tid, and a thread is in one system call at a time.
        Some(total) => unsafe {
            (*total).count += 1;
            (*total).total_ns += call.total_ns;
            (*total).bytes += call.bytes;
            (*total).errors += call.errors;
            (*total).stack_ns += call.stack_ns;
        },
        None => {
            let total = *call;
            if totals.insert(key, total, u64::from(BPF_NOEXIST)).is_err() {
                bump(counter::IO_MAP_FULL);
            }
        }
    }
}

/// Type and number of the inode behind the current task's `fd`, from its file table.
#[inline(always)]
fn fd_inode(fd: i32) -> Option<(u16, u64)> {
    // SAFETY: read_volatile keeps the loader-set constants from being folded at compile time.
    let [files, fdt, max_fds, fd_array, f_inode, i_mode, i_ino] =
        unsafe { core::ptr::read_volatile(&FD_INODE_OFFSETS) };
    if fd < 0 {
        return None;
    }
    let task = unsafe { aya_ebpf::helpers::bpf_get_current_task() } as *const u8;
    let files: *const u8 = read_at(task, files)?;
    let fdt: *const u8 = read_at(files, fdt)?;
    let max: u32 = read_at(fdt, max_fds)?;
    if fd as u32 >= max {
        return None;
    }
    let fd_array: *const u8 = read_at(fdt, fd_array)?;
    let file: *const u8 = read_at(fd_array, fd as u32 * 8)?;
    let inode: *const u8 = read_at(file, f_inode)?;
    Some((read_at(inode, i_mode)?, read_at(inode, i_ino)?))
}

/// Streams a file a target just opened, with the path it passed.
#[inline(always)]
fn send_open(tgid: u32, fd: i32, open_ns: u64, dir_fd: i32, path: u64) {
    let Some(mut entry) = OPEN_EVENTS.reserve::<OpenEvent>(0) else {
        bump(counter::OPEN_EVENTS_LOST);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: the reservation is ours until submitted; every field is written before that.
    unsafe {
        (*event).tgid = tgid;
        (*event).fd = fd;
        (*event).open_ns = open_ns;
        (*event).dir_fd = dir_fd;
        (*event)._pad = 0;
        if bpf_probe_read_user_str_bytes(path as *const u8, &mut (*event).path).is_err() {
            (*event).path[0] = 0;
        }
    }
    entry.submit(0);
}

/// A target replaced or closed fds without opening anything: the fds no longer name the
/// files opened under their numbers (later calls name them by inode). A `close_range` of one
/// fd is forgotten here; a wider one by the collector, told through the process events.
#[inline(always)]
fn forget_replaced_fds(tgid: u32, kind: u32, args: [u64; 2], ret: i64) {
    if kind == io_kind::DUP && ret >= 0 {
        let key = FdKey {
            tgid,
            fd: ret as i32,
        };
        let _ = FILES.remove(&key);
        let _ = FD_INODES.remove(&key);
    } else if kind == io_kind::CLOSE_RANGE && ret == 0 {
        let key = FdKey {
            tgid,
            fd: args[0] as i32,
        };
        let _ = FILES.remove(&key);
        let _ = FD_INODES.remove(&key);
        if args[1] > args[0] {
            send_process_event(process_event::FILES_CLOSED, tgid, tgid);
        }
    }
}

/// A memory system call of a target returned: add it to its process's totals.
#[inline(always)]
fn record_memory_call(tgid: u32, kind: u32, length: u64, ret: i64) {
    if ret < 0 {
        return;
    }
    let mut growth = 0i64;
    if kind == io_kind::BRK {
        let end = ret as u64;
        if let Some(last) = BRK_END.get_ptr_mut(&tgid) {
            // SAFETY: one u64 per process; a lost race costs one brk's growth.
            unsafe {
                growth = end as i64 - *last as i64;
                *last = end;
            }
        } else {
            let _ = BRK_END.insert(&tgid, &end, 0);
        }
    }
    let Some(memory) = process_memory(tgid) else {
        return;
    };
    // SAFETY: this CPU's copy.
    unsafe {
        match kind {
            io_kind::MMAP => {
                (*memory).mmap_count += 1;
                (*memory).mmap_bytes += length;
            }
            io_kind::MUNMAP => {
                (*memory).munmap_count += 1;
                (*memory).munmap_bytes += length;
            }
            _ => {
                (*memory).brk_count += 1;
                (*memory).brk_bytes += growth;
            }
        }
    }
}

/// An I/O call of a target thread that returned, timed, to be accounted after the stack
/// walk by [`account_io`], which reads the rest from its `io_pending` entry: values held
/// across the walk take stack, which kernels before 6.13 limit to 512 bytes with the walker's.
///
/// [`IoTimed::NONE`] where there is none, not an `Option`: the compiler may spill a `None`'s
/// undefined fields from any register, one a helper call just clobbered, which the verifier
/// refuses to read.
#[derive(Clone, Copy)]
struct IoTimed {
    /// Where the call is kept (see `io_pending`); null: no call to account.
    entry: *mut IoPending,
    ns: u64,
    /// What its walked user stack counts for; 0: not walked.
    stack_ns: u64,
}

impl IoTimed {
    const NONE: IoTimed = IoTimed {
        entry: core::ptr::null_mut(),
        ns: 0,
        stack_ns: 0,
    };

    #[inline(always)]
    fn is_some(&self) -> bool {
        !self.entry.is_null()
    }
}

/// A system call returns. One program for what both the I/O calls and the off-CPU periods
/// need there, so each system call of the machine pays for one program, not two:
/// - an I/O call of a target thread is accounted (time, bytes, file, stack);
/// - a target thread with a sampled off-CPU period pending gets its user stack walked here,
///   where it stands as it blocked (most periods are spent in a system call).
///
/// Both need the same user stack; it is walked once. In the object with the walker inlined,
/// a call that needs the walk is handed over to `sys_exit_walk` (see `walk_calls`).
#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit(ctx: BtfTracePointContext) -> i32 {
    let (tgid, tid) = current_tgid_tid();
    // Most system calls are not a target's: known from the per-CPU cache before anything else.
    let known = current::known(tid);
    if known == Some(Known::NotTarget) {
        return 0;
    }
    // sys_exit(struct pt_regs *regs, long ret); the call's number is in `orig_ax`.
    let regs: *const pt_regs = ctx.arg(0);
    let io = match io_call(register(regs, |regs| &regs.orig_rax) as i64) {
        // A thread the cache does not know may have its call in a map (see `io_pending`):
        // whether it is a target is looked up once, and cached, before three lookups for it.
        Some(_) if known.is_some() || current::is_target(tgid, tid) => {
            io_timed(tgid, tid, ctx.arg(1))
        }
        _ => IoTimed::NONE,
    };
    let offcpu = offcpu_stacks::pending_at_exit(tgid, tid, known);
    let walk = (io.is_some() && io.stack_ns != 0) || offcpu.is_some_and(|(_, at)| at.in_place);
    #[cfg(not(feature = "inline-walk"))]
    let walked = walk.then(|| event_user_stack(&ctx, tgid, unwind::SCRATCH_TASK));
    #[cfg(feature = "inline-walk")]
    let walked = {
        if walk {
            hand_over_walk(&ctx, io);
        }
        // Not handed over, or the walking program is not in place: no walk.
        None
    };
    finish_exit(&ctx, tgid, tid, io, offcpu, walked);
    0
}

/// Accounts the I/O call and settles the pending off-CPU period of a system call's exit, with
/// the user stack walked for them, if it was.
#[inline(always)]
fn finish_exit(
    ctx: &BtfTracePointContext,
    tgid: u32,
    tid: u32,
    mut io: IoTimed,
    offcpu: Option<(*mut ThreadState, offcpu_stacks::AtExit)>,
    walked: Option<i32>,
) {
    if let Some((thread, at)) = offcpu {
        let walked = walked.filter(|_| at.in_place);
        offcpu_stacks::record_pending(
            thread,
            tgid,
            tid,
            at.active,
            offcpu_stacks::walked_or_ran_on(walked),
        );
    }
    if io.is_some() {
        let user_stack_id = match walked {
            Some(user_stack_id) if io.stack_ns != 0 => user_stack_id,
            // Not walked: its stack counts for nothing.
            _ => {
                io.stack_ns = 0;
                STACK_ID_UNSAMPLED
            }
        };
        account_io(tgid, tid, io, user_stack_id, ctx.arg(1));
    }
}

/// The I/O call `sys_exit` timed, for `sys_exit_walk` on this CPU (a tail call carries no
/// values but the context): its time, ns, what its stack counts for, and 1 if there is one.
#[cfg(feature = "inline-walk")]
#[map]
static EXIT_HANDOVER: PerCpuArray<[u64; 3]> = PerCpuArray::with_max_entries(1, 0);

/// Hands a system call's exit whose user stack is to be walked over to `sys_exit_walk`, with
/// the I/O call timed; returns only if that program is not in place.
#[cfg(feature = "inline-walk")]
#[inline(always)]
fn hand_over_walk(ctx: &BtfTracePointContext, io: IoTimed) {
    let Some(handover) = EXIT_HANDOVER.get_ptr_mut(0) else {
        return;
    };
    let timed = if io.is_some() {
        [io.ns, io.stack_ns, 1]
    } else {
        [0; 3]
    };
    // SAFETY: this CPU's slot, read by the program tail-called next on this CPU.
    unsafe { *handover = timed };
    crate::walk_calls::walk_exit(ctx);
}

/// A system call returns that `sys_exit` handed over for its walk (object with the walker
/// inlined only): the walk first, from a single state, then what `sys_exit` would have done.
#[cfg(feature = "inline-walk")]
#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_walk(ctx: BtfTracePointContext) -> i32 {
    let (tgid, tid) = current_tgid_tid();
    let walked = event_user_stack(&ctx, tgid, unwind::SCRATCH_TASK);
    // Read after the walk: values held across it take stack.
    let io = match EXIT_HANDOVER.get(0) {
        Some(&[ns, stack_ns, 1]) => io_pending::find(tid).map_or(IoTimed::NONE, |entry| IoTimed {
            entry,
            ns,
            stack_ns,
        }),
        _ => IoTimed::NONE,
    };
    let offcpu = offcpu_stacks::pending_at_exit(tgid, tid, current::known(tid));
    finish_exit(&ctx, tgid, tid, io, offcpu, Some(walked));
    0
}

/// The time of the I/O call of a target thread that returned with `ret`, if it is one to
/// account after the stack walk; the rest (memory calls, fd replacements) is done here.
#[inline(always)]
fn io_timed(tgid: u32, tid: u32, ret: i64) -> IoTimed {
    let Some(entry) = io_pending::find(tid) else {
        return IoTimed::NONE;
    };
    // SAFETY: the entry of the current thread, which is here and nowhere else.
    let pending = unsafe { *entry };
    if pending.start_ns == 0 {
        return IoTimed::NONE;
    }
    let kind = pending.call >> 8;
    let stopped = active_map() == RECORDING_STOPPED;
    if stopped || kind == io_kind::DUP || kind == io_kind::CLOSE_RANGE || kind >= io_kind::MMAP {
        // SAFETY: as above.
        unsafe { (*entry).start_ns = 0 };
        if stopped {
            return IoTimed::NONE;
        }
        if kind == io_kind::DUP || kind == io_kind::CLOSE_RANGE {
            forget_replaced_fds(tgid, kind, pending.args, ret);
        } else {
            record_memory_call(tgid, kind, pending.args[1], ret);
        }
        return IoTimed::NONE;
    }
    let ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(pending.start_ns);
    // Calls at least this long always get their user stack; a shorter one with probability
    // (its time / this), weighted at this: stacks' times stay right on average while most
    // short calls skip the walk, most of a call's cost. 0: every call is walked.
    let below = CONTROL
        .get(CONTROL_IO_SAMPLE_BELOW_NS)
        .copied()
        .unwrap_or(0);
    IoTimed {
        entry,
        ns,
        stack_ns: if stack_sampled(ns, below) {
            ns.max(below).max(1)
        } else {
            0
        },
    }
}

/// The file an I/O call's fd names, as its [`IoKey`] gives it, and the fd (the new one for an
/// open); keeps the fd maps current (an open names its file, a close forgets it).
#[inline(always)]
fn io_file(tgid: u32, pending: &IoPending, now: u64, ret: i64) -> (i32, u64) {
    let kind = pending.call >> 8;
    let mut fd = pending.args[0] as i32;
    let mut file_id = 0;
    if kind == io_kind::OPEN || kind == io_kind::OPEN_AT {
        if ret >= 0 {
            fd = ret as i32;
            file_id = now;
            let key = FdKey { tgid, fd };
            // The two maps never both hold an fd, so a later call finds it in either order
            // (a call of another thread on the new fd checks `FILES` after its insert below).
            let _ = FILES.insert(key, now, 0);
            let _ = FD_INODES.remove(&key);
            let (dir_fd, path) = if kind == io_kind::OPEN_AT {
                (pending.args[0] as i32, pending.args[1])
            } else {
                (-100, pending.args[0])
            };
            send_open(tgid, fd, now, dir_fd, path);
        } else {
            fd = -1;
        }
    } else {
        let key = FdKey { tgid, fd };
        // The fds a long-running server uses most (sockets, files opened before the attach)
        // are in `FD_INODES`: looked up first, most calls take one lookup.
        if let Some(&id) = unsafe { FD_INODES.get(&key) } {
            file_id = id;
        } else if let Some(&id) = unsafe { FILES.get(&key) } {
            file_id = id;
        } else if kind == io_kind::CLOSE {
            file_id = pending.args[1];
        } else if let Some((mode, inode)) = fd_inode(fd) {
            // Not opened during the run: a pipe, a socket, a dup, or older than the attach.
            // Kept for the fd's next calls (a server's socket is read and written thousands
            // of times); forgotten when the fd is closed or replaced.
            file_id = inode_file_id(mode, inode);
            let _ = FD_INODES.insert(&key, &file_id, 0);
            // Opened by another thread meanwhile: that open's entry stands alone.
            if unsafe { FILES.get(&key) }.is_some() {
                let _ = FD_INODES.remove(&key);
            }
        }
        // A failed close frees the fd all the same, unless there was none.
        if kind == io_kind::CLOSE && ret != EBADF {
            let _ = FILES.remove(&key);
            let _ = FD_INODES.remove(&key);
        }
    }
    (fd, file_id)
}

/// Adds an I/O call timed by [`io_timed`] to its thread's, stack's, call's and file's totals
/// and histograms.
#[inline(always)]
fn account_io(tgid: u32, tid: u32, timed: IoTimed, user_stack_id: i32, ret: i64) {
    let IoTimed {
        entry,
        ns,
        stack_ns,
    } = timed;
    // SAFETY: the entry of the current thread, which is here and nowhere else.
    let pending = unsafe { *entry };
    // SAFETY: as above.
    unsafe { (*entry).start_ns = 0 };
    let active = active_map();
    if active == RECORDING_STOPPED {
        return;
    }
    let (fd, file_id) = io_file(tgid, &pending, pending.start_ns + ns, ret);
    let kind = pending.call >> 8;
    let index = pending.call & 0xff;
    let key = IoKey {
        tgid,
        tid,
        user_stack_id,
        call: index,
        fd,
        _pad: 0,
        file_id,
        comm: current_comm(),
    };
    let bytes = if kind == io_kind::TRANSFER && ret > 0 {
        ret as u64
    } else {
        0
    };
    let call = IoTotal {
        count: 1,
        total_ns: ns,
        bytes,
        errors: u64::from(ret < 0),
        stack_ns,
    };
    if active == 0 {
        add_io(&IO_0, &key, &call);
    } else {
        add_io(&IO_1, &key, &call);
    }
    let slot = latency_slot(ns) as usize;
    if slot < LATENCY_SLOTS as usize
        && let Some(histogram) = IO_LATENCY.get_ptr_mut(index)
    {
        // SAFETY: per-CPU histogram, and programs do not preempt each other on one CPU.
        unsafe { (*histogram)[slot] += 1 };
    }
    if let Some(max) = IO_MAX.get_ptr_mut(index) {
        // SAFETY: as above.
        unsafe {
            if ns > *max {
                *max = ns;
            }
        }
    }
}
