//! SIGINT and SIGTERM, caught from the first instant of a run.
//!
//! Installed before anything slow (loading programs, compiling unwind tables), so a stop asked
//! for meanwhile is kept and acted on as soon as the run can act, instead of killing the
//! profiler by the default action with programs half-attached. Installed whatever disposition
//! was inherited: a background job of a script starts with SIGINT ignored, and `kill -INT`
//! must still stop it.

use std::sync::atomic::{AtomicI32, Ordering};

/// The first stop signal received, 0 while none.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// Catches SIGINT and SIGTERM for the rest of the process's life.
pub fn install() -> std::io::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the action only stores to an atomic, which is async-signal-safe.
        unsafe {
            signal_hook_registry::register(signal, move || {
                let _ = RECEIVED.compare_exchange(0, signal, Ordering::Relaxed, Ordering::Relaxed);
            })
        }?;
    }
    Ok(())
}

/// The stop signal received so far, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::Relaxed) {
        0 => None,
        signal => Some(signal),
    }
}
