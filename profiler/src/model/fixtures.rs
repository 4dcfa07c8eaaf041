//! Small profiles for the unit tests of every layer.

use super::{EventKind, Frame, FrameKind, Interner, Process, Profile, RunInfo, Sample};

pub fn run_info() -> RunInfo {
    RunInfo {
        target: "demo".into(),
        command: vec!["demo".into(), "--fast".into()],
        root_pids: vec![42],
        follow_children: true,
        start_unix_ms: 1_700_000_000_000,
        duration_secs: 2.0,
        frequency_hz: 99,
        min_block_us: 1,
        stack_sampling: None,
        events: vec![EventKind::Cpu],
        alloc_sample_bytes: 0,
        stop_reason: "target exited".into(),
        exit_code: Some(0),
        attach_ms: Some(12.0),
        unwind: None,
        jit: None,
        python: None,
        first_sample_ms: Some(20.0),
        kernel: "6.18.0".into(),
        profiler_version: "0.1.0".into(),
        cpus: 2,
    }
}

pub fn user_frame(name: &str) -> Frame {
    Frame {
        function: name.into(),
        module: Some("demo".into()),
        file: None,
        line: None,
        kind: FrameKind::User,
    }
}

/// A profile with `main;work;hot` x7 and `main;work;cold` x3 on one thread.
pub fn sample_profile() -> Profile {
    let mut profile = Profile::new(run_info());
    let mut interner = Interner::default();
    let main = interner.frame(&mut profile, user_frame("main"));
    let work = interner.frame(&mut profile, user_frame("work"));
    let hot = interner.frame(&mut profile, user_frame("hot"));
    let cold = interner.frame(&mut profile, user_frame("cold"));
    let hot_stack = interner.stack(&mut profile, vec![main, work, hot]);
    let cold_stack = interner.stack(&mut profile, vec![main, work, cold]);
    let sample = |stack, weight| Sample {
        pid: 42,
        tid: 42,
        thread: "demo".into(),
        stack,
        weight,
        reason: None,
        count: None,
    };
    profile.processes.push(Process {
        pid: 42,
        name: "demo".into(),
        command: vec!["demo".into()],
        container: None,
    });
    profile.samples.insert(
        EventKind::Cpu,
        vec![sample(hot_stack, 7), sample(cold_stack, 3)],
    );
    profile
}
