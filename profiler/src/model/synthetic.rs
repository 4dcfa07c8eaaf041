//! A synthetic profile of a chosen size, for the rendering benchmark (`cargo xtask
//! bench-render`, through the hidden `profiler synthesize` command): rendering cost depends on
//! samples, distinct stacks and frames, not on where they came from.

use crate::model::{EventKind, Frame, FrameKind, Interner, Process, Profile, RunInfo, Sample};

/// A deterministic pseudo-random sequence (xorshift64*), so every run renders the same profile.
struct Sequence(u64);

impl Sequence {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound.max(1)
    }
}

/// A CPU profile of `samples` samples drawn over `stacks` distinct stacks of 10 to 60 frames
/// (from 20 000 functions) and 16 threads, aggregated per thread and stack as the kernel side
/// does.
pub fn cpu_profile(samples: usize, stacks: usize) -> Profile {
    let run = RunInfo {
        target: "synthetic".into(),
        command: vec!["synthetic".into()],
        root_pids: vec![1],
        follow_children: false,
        start_unix_ms: 0,
        duration_secs: samples as f64 / 999.0,
        frequency_hz: 999,
        min_block_us: 1,
        stack_sampling: None,
        events: vec![EventKind::Cpu],
        alloc_sample_bytes: 0,
        stop_reason: "synthetic".into(),
        exit_code: None,
        attach_ms: None,
        first_sample_ms: None,
        unwind: None,
        jit: None,
        python: None,
        kernel: String::new(),
        profiler_version: env!("CARGO_PKG_VERSION").into(),
        cpus: 0,
    };
    let mut profile = Profile::new(run);
    profile.processes.push(Process {
        pid: 1,
        name: "synthetic".into(),
        command: vec!["synthetic".into()],
        container: None,
    });
    let mut interner = Interner::default();
    let mut sequence = Sequence(0x9e37_79b9_7f4a_7c15);
    let functions: Vec<usize> = (0..20_000)
        .map(|i| {
            let frame = Frame {
                function: format!("crate::module_{}::function_{i}", i % 97),
                module: Some("synthetic".into()),
                file: Some(format!("src/module_{}.rs", i % 97)),
                line: Some(1 + (i % 500) as u32),
                kind: if i % 10 == 0 {
                    FrameKind::Kernel
                } else if i % 7 == 0 {
                    FrameKind::Inlined
                } else {
                    FrameKind::User
                },
            };
            interner.frame(&mut profile, frame)
        })
        .collect();
    // Stacks share prefixes, as real ones do: each extends a random earlier one.
    let mut stack_ids = Vec::with_capacity(stacks);
    let mut bodies: Vec<Vec<usize>> = Vec::with_capacity(stacks);
    for _ in 0..stacks {
        let mut body = if bodies.is_empty() {
            Vec::new()
        } else {
            let parent = &bodies[sequence.next(bodies.len() as u64) as usize];
            parent[..parent.len().min(8 + sequence.next(30) as usize)].to_vec()
        };
        let depth = 10 + sequence.next(50) as usize;
        while body.len() < depth {
            body.push(functions[sequence.next(functions.len() as u64) as usize]);
        }
        stack_ids.push(interner.stack(&mut profile, body.clone()));
        bodies.push(body);
    }
    let mut counts: std::collections::BTreeMap<(u32, usize), u64> = Default::default();
    for _ in 0..samples {
        let thread = sequence.next(16) as u32;
        let stack = stack_ids[sequence.next(stack_ids.len() as u64) as usize];
        *counts.entry((thread, stack)).or_default() += 1;
    }
    let entries = counts
        .into_iter()
        .map(|((thread, stack), weight)| Sample {
            pid: 1,
            tid: 100 + thread,
            thread: format!("worker-{thread}"),
            stack,
            weight,
            reason: None,
            count: None,
        })
        .collect();
    profile.samples.insert(EventKind::Cpu, entries);
    profile
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_profiles_are_valid_and_deterministic() {
        let profile = cpu_profile(1000, 100);
        assert!(profile.validate().is_ok());
        assert_eq!(profile.total(EventKind::Cpu), 1000);
        assert_eq!(profile, cpu_profile(1000, 100));
    }
}
