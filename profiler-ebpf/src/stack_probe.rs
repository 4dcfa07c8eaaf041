//! A probe of the kernel, not of the system: whether it gives tracing programs private stacks,
//! which the stack walker as a global function needs (see `unwind::walk_user_stack`). 6.13
//! brought them, but not every later kernel has them: the collector loads this program,
//! never attaches it, and loads the object with the walker inlined where it is refused.
use aya_ebpf::{
    helpers::generated::bpf_probe_read_kernel, macros::raw_tracepoint,
    programs::RawTracePointContext,
};

/// Frames like the scheduler program's and the walker's: together past the 512 bytes that a
/// call chain on one stack may take.
const CALLER_FRAME: usize = 256;
const CALLEE_FRAME: usize = 320;

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn private_stack_probe(_ctx: RawTracePointContext) -> i32 {
    let mut frame = [0u8; CALLER_FRAME];
    fill(&mut frame);
    private_stack_probe_callee(frame[CALLER_FRAME - 1]) as i32
}

/// A global function, verified on its own, with a frame of its own as the walker has.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn private_stack_probe_callee(seed: u8) -> u64 {
    let mut frame = [seed; CALLEE_FRAME];
    fill(&mut frame);
    u64::from(frame[CALLEE_FRAME - 1])
}

/// Has the kernel write all of `frame` (zeros: the read of address 0 fails), so that the
/// compiler keeps it whole.
#[inline(always)]
fn fill(frame: &mut [u8]) {
    // SAFETY: the helper writes `frame.len()` bytes to `frame`, whatever it reads.
    unsafe {
        bpf_probe_read_kernel(
            frame.as_mut_ptr().cast(),
            frame.len() as u32,
            core::ptr::null(),
        )
    };
}
