//! eBPF programs of the profiler.
//!
//! Kept small on purpose: filter to the target processes, aggregate what can be aggregated in
//! the kernel, count every loss. Everything else happens in userspace.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{btf_tracepoint, map, perf_event},
    maps::{Array, HashMap, PerCpuArray, RingBuf, StackTrace},
    programs::{BtfTracePointContext, PerfEventContext, tracing::StackIdContext},
};
use aya_log_ebpf::debug;
use profiler_common::{
    COMM_LEN, CONTROL_ACTIVE_SAMPLE_MAP, CONTROL_ENTRIES, CONTROL_FIRST_SAMPLE_NS, ProcessEvent,
    SAMPLE_MAP_ENTRIES, STACK_ID_COLLISION, STACK_ID_ERROR, STACK_ID_NONE, STACK_MAP_ENTRIES,
    SampleKey, TARGET_FOLLOW_CHILDREN, TARGET_MAP_ENTRIES, TargetFlags, counter, process_event,
};

/// Offset of `tgid` in `struct task_struct`, read from the kernel's BTF by the collector.
#[unsafe(no_mangle)]
static TASK_STRUCT_TGID_OFFSET: u32 = 0;

const EEXIST: i32 = 17;
const EFAULT: i32 = 14;

/// Processes (tgid) being profiled, with their `TargetFlags`.
#[map]
static TARGETS: HashMap<u32, TargetFlags> = HashMap::with_max_entries(TARGET_MAP_ENTRIES, 0);

/// User and kernel stacks, deduplicated by the kernel.
#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(STACK_MAP_ENTRIES, 0);

/// Sample counts, double-buffered: programs write the map `CONTROL[0]` names while the
/// collector drains the other, so no increment is lost to a concurrent read-and-clear.
#[map]
static SAMPLES_0: HashMap<SampleKey, u64> = HashMap::with_max_entries(SAMPLE_MAP_ENTRIES, 0);
#[map]
static SAMPLES_1: HashMap<SampleKey, u64> = HashMap::with_max_entries(SAMPLE_MAP_ENTRIES, 0);

#[map]
static CONTROL: Array<u64> = Array::with_max_entries(CONTROL_ENTRIES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map]
static PROCESS_EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

#[inline(always)]
fn bump(index: u32) {
    if let Some(count) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and programs do not preempt each other on one CPU.
        unsafe { *count += 1 };
    }
}

#[inline(always)]
fn current_tgid_tid() -> (u32, u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    ((pid_tgid >> 32) as u32, pid_tgid as u32)
}

/// Turns a `bpf_get_stackid` result into a stack id, counting what went wrong.
#[inline(always)]
fn stack_id(result: Result<i64, i32>, collisions: u32, errors: u32) -> i32 {
    match result {
        Ok(id) => id as i32,
        // No stack of this kind at this point (user-mode sample has no kernel stack).
        Err(err) if err == -EFAULT => STACK_ID_NONE,
        Err(err) if err == -EEXIST => {
            bump(collisions);
            STACK_ID_COLLISION
        }
        Err(_) => {
            bump(errors);
            STACK_ID_ERROR
        }
    }
}

#[inline(always)]
fn add_sample(samples: &HashMap<SampleKey, u64>, key: &SampleKey) {
    match samples.get_ptr_mut(key) {
        // SAFETY: the key holds the tid, and a thread runs on one CPU at a time, so nothing
        // else writes this value concurrently.
        Some(count) => unsafe { *count += 1 },
        None => {
            if samples.insert(key, 1, u64::from(BPF_NOEXIST)).is_err() {
                bump(counter::SAMPLE_MAP_FULL);
            }
        }
    }
}

/// CPU-clock sample on one CPU: count it against the running thread's stacks if it is a target.
#[perf_event]
pub fn cpu_sample(ctx: PerfEventContext) -> u32 {
    let (tgid, tid) = current_tgid_tid();
    // tid 0 is the idle task.
    if tid == 0 || unsafe { TARGETS.get(tgid) }.is_none() {
        return 0;
    }
    bump(counter::CPU_SAMPLES);
    if let Some(first) = CONTROL.get_ptr_mut(CONTROL_FIRST_SAMPLE_NS) {
        // SAFETY: a racing write from another CPU stores a time just as early; either is fine.
        unsafe {
            if *first == 0 {
                *first = bpf_ktime_get_ns();
            }
        }
    }
    let user_stack_id = stack_id(
        ctx.get_stackid(&STACKS, u64::from(BPF_F_USER_STACK)),
        counter::USER_STACK_COLLISIONS,
        counter::USER_STACK_ERRORS,
    );
    let kernel_stack_id = stack_id(
        ctx.get_stackid(&STACKS, 0),
        counter::KERNEL_STACK_COLLISIONS,
        counter::KERNEL_STACK_ERRORS,
    );
    let key = SampleKey {
        tgid,
        tid,
        user_stack_id,
        kernel_stack_id,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    };
    let active = CONTROL.get(CONTROL_ACTIVE_SAMPLE_MAP).copied().unwrap_or(0);
    // Two call sites, one per map, keep each map lookup bound to a single map for the verifier.
    if active == 0 {
        add_sample(&SAMPLES_0, &key);
    } else {
        add_sample(&SAMPLES_1, &key);
    }
    0
}

fn send_process_event(kind: u32, pid: u32, parent_pid: u32) {
    let Some(mut entry) = PROCESS_EVENTS.reserve::<ProcessEvent>(0) else {
        bump(counter::PROCESS_EVENTS_LOST);
        return;
    };
    entry.write(ProcessEvent {
        kind,
        pid,
        parent_pid,
        _pad: 0,
        time_ns: unsafe { bpf_ktime_get_ns() },
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    });
    entry.submit(0);
}

/// A task forked: if a followed target created a new process, profile that process too.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    let (parent_tgid, _) = current_tgid_tid();
    let Some(&flags) = (unsafe { TARGETS.get(parent_tgid) }) else {
        return 0;
    };
    if flags & TARGET_FOLLOW_CHILDREN == 0 {
        return 0;
    }
    let child: *const u8 = ctx.arg(1);
    // SAFETY: read_volatile keeps the loader-set constant from being folded at compile time.
    let offset = unsafe { core::ptr::read_volatile(&TASK_STRUCT_TGID_OFFSET) };
    // SAFETY: `bpf_probe_read_kernel` checks the address.
    let Ok(child_tgid) =
        (unsafe { bpf_probe_read_kernel(child.wrapping_add(offset as usize).cast::<i32>()) })
    else {
        return 0;
    };
    let child_tgid = child_tgid as u32;
    // A new thread shares its parent's tgid and is already covered.
    if child_tgid == parent_tgid {
        return 0;
    }
    if TARGETS.insert(child_tgid, flags, 0).is_err() {
        bump(counter::TARGET_MAP_FULL);
        return 0;
    }
    debug!(
        &ctx,
        "following new process {} forked by {}", child_tgid, parent_tgid
    );
    send_process_event(process_event::FORK, child_tgid, parent_tgid);
    0
}

/// A target executed a new program: the collector must read its new memory map.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    let (tgid, _) = current_tgid_tid();
    if unsafe { TARGETS.get(tgid) }.is_none() {
        return 0;
    }
    debug!(&ctx, "target {} executed a new program", tgid);
    send_process_event(process_event::EXEC, tgid, tgid);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
