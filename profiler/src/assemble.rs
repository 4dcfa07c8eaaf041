//! Building a [`Profile`] from what the kernel side collected: sample counts keyed by thread and
//! stack ids, the stacks themselves, and a symbolizer.

use std::collections::HashMap;

use profiler_common::{STACK_ID_COLLISION, STACK_ID_NONE};

use crate::{
    profile::{EventKind, Frame, FrameKind, Interner, Profile, Sample},
    symbolize::Symbols,
};

/// A count of samples on one thread and stack pair, as drained from the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RawSample {
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Thread name at sample time.
    pub thread: String,
    /// User stack id, or a `STACK_ID_*` value.
    pub user_stack: i32,
    /// Kernel stack id, or a `STACK_ID_*` value.
    pub kernel_stack: i32,
}

/// Stack id → addresses, innermost first (the sampled instruction, then return addresses).
pub type StackTable = HashMap<u32, Vec<u64>>;

/// Name of the frame standing in for a stack that could not be collected.
fn missing_stack_frame(id: i32, kind: FrameKind) -> Option<Frame> {
    let what = match kind {
        FrameKind::User => "user",
        FrameKind::Kernel => "kernel",
    };
    let function = match id {
        STACK_ID_NONE => return None,
        STACK_ID_COLLISION => format!("[{what} stack lost: stack map collision]"),
        _ => format!("[{what} stack unavailable]"),
    };
    Some(Frame {
        function,
        module: None,
        file: None,
        line: None,
        kind,
        inlined: false,
        unsymbolized: true,
    })
}

/// Addresses to look up for a stack: return addresses point after the call, so one is
/// subtracted to land inside the call instruction (right function, line and inlining).
fn lookup_addresses(stack: &[u64]) -> impl Iterator<Item = u64> + '_ {
    stack.iter().enumerate().map(|(depth, &address)| {
        if depth == 0 {
            address
        } else {
            address.saturating_sub(1)
        }
    })
}

/// Adds `counts` of `kind` to `profile`, symbolizing every stack once.
pub fn add_samples(
    profile: &mut Profile,
    interner: &mut Interner,
    kind: EventKind,
    counts: &HashMap<RawSample, u64>,
    stacks: &StackTable,
    symbols: &mut dyn Symbols,
) {
    // Symbolize each distinct (pid, address) and kernel address once, in batches.
    let mut user_addresses: HashMap<u32, Vec<u64>> = HashMap::new();
    let mut kernel_addresses: Vec<u64> = Vec::new();
    for raw in counts.keys() {
        if let Some(stack) = stack_of(stacks, raw.user_stack) {
            user_addresses
                .entry(raw.pid)
                .or_default()
                .extend(lookup_addresses(stack));
        }
        if let Some(stack) = stack_of(stacks, raw.kernel_stack) {
            kernel_addresses.extend(lookup_addresses(stack));
        }
    }
    let mut user_frames: HashMap<(u32, u64), Vec<Frame>> = HashMap::new();
    for (pid, mut addresses) in user_addresses {
        addresses.sort_unstable();
        addresses.dedup();
        let frames = symbols.user(pid, &addresses);
        user_frames.extend(addresses.into_iter().map(|a| (pid, a)).zip(frames));
    }
    kernel_addresses.sort_unstable();
    kernel_addresses.dedup();
    let kernel_frames: HashMap<u64, Vec<Frame>> = if kernel_addresses.is_empty() {
        HashMap::new()
    } else {
        let frames = symbols.kernel(&kernel_addresses);
        kernel_addresses.into_iter().zip(frames).collect()
    };

    let mut samples: HashMap<(u32, u32, String, usize), u64> = HashMap::new();
    for (raw, &count) in counts {
        // Root first: user frames from the outermost caller, then the kernel frames below
        // the system call or interrupt.
        let mut frames: Vec<Frame> = Vec::new();
        match stack_of(stacks, raw.user_stack) {
            Some(stack) => {
                for address in lookup_addresses(stack)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                {
                    frames.extend(user_frames[&(raw.pid, address)].iter().cloned());
                }
            }
            None => frames.extend(missing_stack_frame(raw.user_stack, FrameKind::User)),
        }
        match stack_of(stacks, raw.kernel_stack) {
            Some(stack) => {
                for address in lookup_addresses(stack)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                {
                    frames.extend(kernel_frames[&address].iter().cloned());
                }
            }
            None => frames.extend(missing_stack_frame(raw.kernel_stack, FrameKind::Kernel)),
        }
        let frame_ids = frames
            .into_iter()
            .map(|frame| interner.frame(profile, frame))
            .collect();
        let stack = interner.stack(profile, frame_ids);
        *samples
            .entry((raw.pid, raw.tid, raw.thread.clone(), stack))
            .or_default() += count;
    }
    let mut samples: Vec<Sample> = samples
        .into_iter()
        .map(|((pid, tid, thread, stack), weight)| Sample {
            pid,
            tid,
            thread,
            stack,
            weight,
        })
        .collect();
    samples.sort_by_key(|s| (s.pid, s.tid, s.stack));
    profile.samples.entry(kind).or_default().extend(samples);
}

/// The addresses of stack `id`, if it is a real id present in the table.
fn stack_of(stacks: &StackTable, id: i32) -> Option<&Vec<u64>> {
    u32::try_from(id).ok().and_then(|id| stacks.get(&id))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::profile::tests::{run_info, user_frame};

    /// Symbolizes user address N as function `fN` (and N >= 1000 as `fN` plus an inlined
    /// `inlN`), kernel address N as `kN`.
    pub(crate) struct FakeSymbols {
        pub(crate) lookups: Vec<(Option<u32>, Vec<u64>)>,
    }

    impl Symbols for FakeSymbols {
        fn user(&mut self, pid: u32, addresses: &[u64]) -> Vec<Vec<Frame>> {
            self.lookups.push((Some(pid), addresses.to_vec()));
            addresses
                .iter()
                .map(|a| {
                    let mut frames = vec![user_frame(&format!("f{a}"))];
                    if *a >= 1000 {
                        let mut inlined = user_frame(&format!("inl{a}"));
                        inlined.inlined = true;
                        frames.push(inlined);
                    }
                    frames
                })
                .collect()
        }

        fn kernel(&mut self, addresses: &[u64]) -> Vec<Vec<Frame>> {
            self.lookups.push((None, addresses.to_vec()));
            addresses
                .iter()
                .map(|a| {
                    let mut frame = user_frame(&format!("k{a}"));
                    frame.kind = FrameKind::Kernel;
                    vec![frame]
                })
                .collect()
        }
    }

    fn raw(tid: u32, user_stack: i32, kernel_stack: i32) -> RawSample {
        RawSample {
            pid: 1,
            tid,
            thread: format!("t{tid}"),
            user_stack,
            kernel_stack,
        }
    }

    fn names(profile: &Profile, stack: usize) -> Vec<&str> {
        profile.stacks[stack]
            .iter()
            .map(|&f| profile.frames[f].function.as_str())
            .collect()
    }

    #[test]
    fn builds_root_first_stacks_with_kernel_below_user() {
        // Leaf 11 (sampled ip), called from return address 21 (looked up as 20), from 31.
        let stacks = StackTable::from([(0, vec![11, 21, 31]), (1, vec![501, 601])]);
        let counts = HashMap::from([(raw(1, 0, 1), 5), (raw(1, 0, STACK_ID_NONE), 2)]);
        let mut profile = Profile::new(run_info());
        let mut symbols = FakeSymbols { lookups: vec![] };
        add_samples(
            &mut profile,
            &mut Interner::default(),
            EventKind::Cpu,
            &counts,
            &stacks,
            &mut symbols,
        );
        let samples = &profile.samples[&EventKind::Cpu];
        assert_eq!(samples.len(), 2);
        let with_kernel = samples.iter().find(|s| s.weight == 5).unwrap();
        assert_eq!(
            names(&profile, with_kernel.stack),
            ["f30", "f20", "f11", "k600", "k501"]
        );
        let user_only = samples.iter().find(|s| s.weight == 2).unwrap();
        assert_eq!(names(&profile, user_only.stack), ["f30", "f20", "f11"]);
        // Each address symbolized once.
        assert_eq!(
            symbols.lookups,
            vec![(Some(1), vec![11, 20, 30]), (None, vec![501, 600])]
        );
    }

    #[test]
    fn inlined_frames_follow_their_function_and_lost_stacks_are_marked() {
        let stacks = StackTable::from([(0, vec![1000, 2001])]);
        let counts = HashMap::from([
            (raw(1, 0, STACK_ID_NONE), 1),
            (raw(2, STACK_ID_COLLISION, STACK_ID_NONE), 1),
        ]);
        let mut profile = Profile::new(run_info());
        add_samples(
            &mut profile,
            &mut Interner::default(),
            EventKind::Cpu,
            &counts,
            &stacks,
            &mut FakeSymbols { lookups: vec![] },
        );
        let samples = &profile.samples[&EventKind::Cpu];
        let t1 = samples.iter().find(|s| s.tid == 1).unwrap();
        assert_eq!(
            names(&profile, t1.stack),
            ["f2000", "inl2000", "f1000", "inl1000"]
        );
        let t2 = samples.iter().find(|s| s.tid == 2).unwrap();
        assert_eq!(
            names(&profile, t2.stack),
            ["[user stack lost: stack map collision]"]
        );
    }

    #[test]
    fn merges_counts_of_identical_symbolized_stacks() {
        // Two stack ids whose addresses symbolize alike still merge per thread.
        let stacks = StackTable::from([(0, vec![5]), (1, vec![5])]);
        let counts = HashMap::from([(raw(1, 0, STACK_ID_NONE), 3), (raw(1, 1, STACK_ID_NONE), 4)]);
        let mut profile = Profile::new(run_info());
        add_samples(
            &mut profile,
            &mut Interner::default(),
            EventKind::Cpu,
            &counts,
            &stacks,
            &mut FakeSymbols { lookups: vec![] },
        );
        assert_eq!(profile.samples[&EventKind::Cpu].len(), 1);
        assert_eq!(profile.total(EventKind::Cpu), 7);
    }
}
