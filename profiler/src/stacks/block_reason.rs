//! Why a thread was off-CPU: its task state at switch-out, then the innermost telling kernel
//! function of the stack it blocked in.

use profiler_common::{
    OFFCPU_STATE_BEFORE_ATTACH, OFFCPU_STATE_NEW_THREAD, OFFCPU_STATE_PREEMPTED,
};

use crate::model::{BlockReason, Frame};

/// Kernel functions that tell why a thread blocked, nearest the scheduler first wins. A name
/// matches exactly or with a compiler suffix (`.isra.0`); a leading `*` matches anywhere.
const BLOCKING_FUNCTIONS: &[(&str, BlockReason)] = &[
    ("*pipe_read", BlockReason::Pipe),
    ("*pipe_write", BlockReason::Pipe),
    ("*pipe_wait", BlockReason::Pipe),
    ("futex_wait", BlockReason::Lock),
    ("__futex_wait", BlockReason::Lock),
    ("futex_wait_queue", BlockReason::Lock),
    ("rwsem_down", BlockReason::Lock),
    ("__mutex_lock", BlockReason::Lock),
    ("sk_wait_data", BlockReason::Socket),
    ("sk_stream_wait_memory", BlockReason::Socket),
    ("unix_stream_read_generic", BlockReason::Socket),
    ("unix_stream_data_wait", BlockReason::Socket),
    ("__skb_wait_for_more_packets", BlockReason::Socket),
    ("inet_csk_accept", BlockReason::Socket),
    ("tcp_recvmsg", BlockReason::Socket),
    ("ep_poll", BlockReason::Poll),
    ("do_epoll_wait", BlockReason::Poll),
    ("do_select", BlockReason::Poll),
    ("do_sys_poll", BlockReason::Poll),
    ("do_poll", BlockReason::Poll),
    ("io_schedule", BlockReason::Io),
    ("io_schedule_timeout", BlockReason::Io),
    ("folio_wait_bit_common", BlockReason::Io),
    ("bit_wait_io", BlockReason::Io),
    ("blk_mq_get_tag", BlockReason::Io),
    ("jbd2_log_wait_commit", BlockReason::Io),
    ("file_write_and_wait_range", BlockReason::Io),
    ("do_nanosleep", BlockReason::Sleep),
    ("hrtimer_nanosleep", BlockReason::Sleep),
    ("schedule_hrtimeout_range", BlockReason::Sleep),
    ("schedule_timeout", BlockReason::Sleep),
    ("do_wait", BlockReason::ChildWait),
    ("kernel_wait4", BlockReason::ChildWait),
];

/// Kernel functions that sleep with the task marked as waiting for I/O.
const IO_WAIT_FUNCTIONS: [&str; 2] = ["io_schedule", "io_schedule_timeout"];

/// Why a thread was off-CPU: its state, then the innermost telling kernel function.
pub fn block_reason(state: u32, kernel_frames: &[&Frame]) -> BlockReason {
    const TASK_UNINTERRUPTIBLE: u32 = 0x2;
    match state {
        OFFCPU_STATE_PREEMPTED => return BlockReason::Preempted,
        OFFCPU_STATE_NEW_THREAD => return BlockReason::NewThread,
        OFFCPU_STATE_BEFORE_ATTACH => return BlockReason::BeforeAttach,
        _ => {}
    }
    let matches = |name: &str, pattern: &str| match pattern.strip_prefix('*') {
        Some(part) => name.contains(part),
        None => {
            name == pattern
                || name
                    .strip_prefix(pattern)
                    .is_some_and(|rest| rest.starts_with('.'))
        }
    };
    // `io_schedule*` marks the task as waiting for I/O (`in_iowait`) whatever it calls next:
    // a device flush inside fdatasync sleeps in `schedule_timeout`, and is still I/O.
    if kernel_frames.iter().any(|frame| {
        IO_WAIT_FUNCTIONS
            .iter()
            .any(|pattern| matches(&frame.function, pattern))
    }) {
        return BlockReason::Io;
    }
    // Frames are root first: search from the scheduler outwards.
    for frame in kernel_frames.iter().rev() {
        let name = frame.function.as_str();
        if let Some((_, reason)) = BLOCKING_FUNCTIONS
            .iter()
            .find(|(pattern, _)| matches(name, pattern))
        {
            return *reason;
        }
    }
    if state & TASK_UNINTERRUPTIBLE != 0 {
        BlockReason::Io
    } else {
        BlockReason::OtherWait
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FrameKind;

    fn kernel(name: &str) -> Frame {
        let mut frame = crate::model::fixtures::user_frame(name);
        frame.kind = FrameKind::Kernel;
        frame
    }

    #[test]
    fn block_reasons_come_from_state_and_kernel_frames() {
        let frames = |names: &[&str]| -> Vec<Frame> { names.iter().map(|n| kernel(n)).collect() };
        let reason = |state, names: &[&str]| {
            let frames = frames(names);
            block_reason(state, &frames.iter().collect::<Vec<_>>())
        };
        let interruptible = 1;
        let sleep = [
            "entry_SYSCALL_64",
            "__x64_sys_clock_nanosleep",
            "do_nanosleep",
            "schedule",
        ];
        assert_eq!(reason(interruptible, &sleep), BlockReason::Sleep);
        let pipe = ["ksys_read", "vfs_read", "pipe_read", "schedule"];
        assert_eq!(reason(interruptible, &pipe), BlockReason::Pipe);
        assert_eq!(
            reason(interruptible, &["vfs_read", "anon_pipe_read"]),
            BlockReason::Pipe
        );
        let futex = ["do_futex", "futex_wait", "futex_wait_queue", "schedule"];
        assert_eq!(reason(interruptible, &futex), BlockReason::Lock);
        assert_eq!(reason(2, &["submit_bio_wait", "schedule"]), BlockReason::Io);
        // A device flush: `schedule_timeout` is nearer the scheduler, the wait is still I/O.
        let flush = [
            "__x64_sys_fdatasync",
            "blkdev_issue_flush",
            "submit_bio_wait",
            "wait_for_completion_io_timeout",
            "io_schedule_timeout",
            "schedule_timeout",
            "schedule",
        ];
        assert_eq!(reason(2, &flush), BlockReason::Io);
        assert_eq!(reason(interruptible, &["schedule"]), BlockReason::OtherWait);
        assert_eq!(
            reason(OFFCPU_STATE_PREEMPTED, &pipe),
            BlockReason::Preempted
        );
        // Compiler-cloned kernel functions (`.isra.0`) still match.
        assert_eq!(
            reason(interruptible, &["ep_poll.isra.0"]),
            BlockReason::Poll
        );
    }
}
