//! Building a [`Profile`] from what the kernel side collected: sample counts keyed by thread and
//! stack ids, the stacks themselves, and a symbolizer.

use std::collections::HashMap;

use profiler_common::{
    STACK_ID_COLLISION, STACK_ID_MAP_FULL, STACK_ID_NONE, STACK_ID_RAN_ON, stack_end,
};

use crate::{
    model::{
        BlockReason, EventKind, Frame, FrameKind, Interner, Profile, Sample, StackLoss,
        is_entry_function,
    },
    stacks::{block_reason, python, symbolize::Symbols},
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
    /// Off-CPU samples: the task state at switch-out (`TASK_*` bits or `OFFCPU_STATE_*`).
    pub state: Option<u32>,
    /// A named leaf frame below the stack: the system call of an I/O sample (kernel), the
    /// allocator function of an allocation (user).
    pub leaf: Option<(&'static str, FrameKind)>,
}

/// Weight and number of events of one [`RawSample`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawWeight {
    /// Weight in the event kind's unit.
    pub weight: u64,
    /// Number of events (samples, off-CPU periods).
    pub count: u64,
}

/// Stacks by id: addresses, innermost first (the sampled instruction, then return addresses).
#[derive(Clone, Debug, Default)]
pub struct StackTable {
    /// User stacks.
    pub user: HashMap<u32, Vec<u64>>,
    /// Kernel stacks.
    pub kernel: HashMap<u32, Vec<u64>>,
    /// Why the in-kernel unwinder stopped, per user stack it walked (a `stack_end` value);
    /// empty when the kernel's frame-pointer walker took the stacks.
    pub user_ends: HashMap<u32, u32>,
}

impl<const N: usize> From<[(u32, Vec<u64>); N]> for StackTable {
    /// The same stacks under the same ids for both kinds (the kernel's shared stack map).
    fn from(stacks: [(u32, Vec<u64>); N]) -> Self {
        let stacks = HashMap::from(stacks);
        StackTable {
            user: stacks.clone(),
            kernel: stacks,
            user_ends: HashMap::new(),
        }
    }
}

/// Name of the frame standing in for a stack that could not be collected.
fn missing_stack_frame(id: i32, kernel: bool) -> Option<Frame> {
    let loss = match id {
        STACK_ID_NONE => return None,
        STACK_ID_COLLISION => StackLoss::Collision,
        STACK_ID_MAP_FULL => StackLoss::MapFull,
        STACK_ID_RAN_ON => StackLoss::NotWalked,
        _ => StackLoss::Unavailable,
    };
    Some(Frame::lost_stack(kernel, loss))
}

/// Whether a symbolized address lies in no mapping at all.
fn is_unmapped(frames: &[Frame]) -> bool {
    matches!(frames, [frame] if frame.kind.is_unnamed() && frame.module.is_none())
}

/// Whether a kernel function is the tracing machinery that ran the profiler's program.
fn is_bpf_trampoline(function: &str) -> bool {
    function.starts_with("bpf_trace_run") || function.starts_with("__bpf_trace_")
}

/// Root frame of a user stack whose outer frames could not be walked, with why when the
/// in-kernel unwinder said (a `stack_end` value).
fn truncated_stack_frame(end: Option<u32>) -> Frame {
    let why = match end {
        Some(stack_end::DEPTH) => ": deeper than the unwinder walks",
        Some(stack_end::READ_FAILED) => ": unreadable frame",
        Some(stack_end::NOT_ADVANCING) => ": corrupt frame",
        Some(stack_end::FRAME_POINTER_END) => ": no unwind information",
        _ => "",
    };
    Frame::truncated(why)
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

/// Adds `counts` of `kind` to `profile`, symbolizing every stack once. Returns the stack (an
/// index into `profile.stacks`) each raw sample got.
pub fn add_samples<'a>(
    profile: &mut Profile,
    interner: &mut Interner,
    kind: EventKind,
    counts: &'a HashMap<RawSample, RawWeight>,
    stacks: &StackTable,
    symbols: &mut dyn Symbols,
) -> HashMap<&'a RawSample, usize> {
    let mut stack_of_raw = HashMap::with_capacity(counts.len());
    // Symbolize each distinct (pid, address) and kernel address once, in batches.
    let mut user_addresses: HashMap<u32, Vec<u64>> = HashMap::new();
    let mut kernel_addresses: Vec<u64> = Vec::new();
    for raw in counts.keys() {
        if let Some(stack) = stack_of(&stacks.user, raw.user_stack) {
            user_addresses
                .entry(raw.pid)
                .or_default()
                .extend(lookup_addresses(python::native_part(stack)));
        }
        if let Some(stack) = stack_of(&stacks.kernel, raw.kernel_stack) {
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

    // Each symbolized address interned once: a stack is then a list of ids, not of frames
    // cloned sample by sample (4 million string copies for 117 000 stacks of 35 frames).
    let mut intern_all = |frames: &[Frame], profile: &mut Profile| -> Vec<usize> {
        frames
            .iter()
            .map(|frame| interner.frame(profile, frame.clone()))
            .collect()
    };
    let user_ids: HashMap<(u32, u64), Vec<usize>> = user_frames
        .iter()
        .map(|(key, frames)| (*key, intern_all(frames, profile)))
        .collect();
    let kernel_ids: HashMap<u64, Vec<usize>> = kernel_frames
        .iter()
        .map(|(address, frames)| (*address, intern_all(frames, profile)))
        .collect();

    let mut samples: HashMap<(u32, u32, String, usize, Option<BlockReason>), RawWeight> =
        HashMap::new();
    let mut python_ids: HashMap<(u32, u64), usize> = HashMap::new();
    for (raw, &weight) in counts {
        // Root first: user frames from the outermost caller, then the kernel frames below
        // the system call or interrupt.
        let mut frame_ids: Vec<usize> = Vec::new();
        match stack_of(&stacks.user, raw.user_stack) {
            Some(stack) => {
                let addresses: Vec<u64> = lookup_addresses(python::native_part(stack)).collect();
                // A return address outside every executable mapping means the frame-pointer
                // walk went astray (code without frame pointers): what follows is garbage.
                let valid = addresses.len().min(
                    1 + addresses
                        .iter()
                        .skip(1)
                        .take_while(|&&address| !is_unmapped(&user_frames[&(raw.pid, address)]))
                        .count(),
                );
                let end = stacks.user_ends.get(&(raw.user_stack as u32)).copied();
                if valid < addresses.len() {
                    frame_ids.push(interner.frame(profile, truncated_stack_frame(None)));
                } else if let Some(end) = end
                    && end != stack_end::ENTRY
                    && end != stack_end::KERNEL_WALKER
                    && let Some(outermost) = valid.checked_sub(1)
                    && !user_frames[&(raw.pid, addresses[outermost])]
                        .iter()
                        .any(|frame| is_entry_function(&frame.function))
                {
                    frame_ids.push(interner.frame(profile, truncated_stack_frame(Some(end))));
                }
                for address in addresses[..valid].iter().rev() {
                    frame_ids.extend_from_slice(&user_ids[&(raw.pid, *address)]);
                }
                let entries = python::python_part(stack);
                if !entries.is_empty() {
                    frame_ids = python::with_python_frames(
                        profile,
                        interner,
                        symbols,
                        &mut python_ids,
                        raw.pid,
                        entries,
                        &frame_ids,
                    );
                }
            }
            None => {
                if let Some(frame) = missing_stack_frame(raw.user_stack, false) {
                    frame_ids.push(interner.frame(profile, frame));
                }
            }
        }
        match stack_of(&stacks.kernel, raw.kernel_stack) {
            Some(stack) => {
                for address in lookup_addresses(stack)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                {
                    // Stacks taken in a tracepoint end in the BPF trampoline: not the target's.
                    if kernel_frames[&address]
                        .iter()
                        .any(|frame| is_bpf_trampoline(&frame.function))
                    {
                        break;
                    }
                    frame_ids.extend_from_slice(&kernel_ids[&address]);
                }
            }
            None => {
                if let Some(frame) = missing_stack_frame(raw.kernel_stack, true) {
                    frame_ids.push(interner.frame(profile, frame));
                }
            }
        }
        if let Some((function, kind)) = raw.leaf {
            let leaf = Frame {
                function: function.to_owned(),
                module: None,
                file: None,
                line: None,
                kind,
            };
            frame_ids.push(interner.frame(profile, leaf));
        }
        let reason = raw.state.map(|state| {
            let kernel: Vec<&Frame> = frame_ids
                .iter()
                .map(|&id| &profile.frames[id])
                .filter(|frame| frame.kind.is_kernel())
                .collect();
            block_reason::block_reason(state, &kernel)
        });
        // Kept by the interner for every distinct stack: no spare capacity.
        frame_ids.shrink_to_fit();
        let stack = interner.stack(profile, frame_ids);
        stack_of_raw.insert(raw, stack);
        let merged = samples
            .entry((raw.pid, raw.tid, raw.thread.clone(), stack, reason))
            .or_default();
        merged.weight += weight.weight;
        merged.count += weight.count;
    }
    let mut samples: Vec<Sample> = samples
        .into_iter()
        .map(|((pid, tid, thread, stack, reason), weight)| Sample {
            pid,
            tid,
            thread,
            stack,
            weight: weight.weight,
            reason,
            count: (kind != EventKind::Cpu).then_some(weight.count),
        })
        .collect();
    samples.sort_by_key(|s| (s.pid, s.tid, s.stack));
    profile.samples.entry(kind).or_default().extend(samples);
    stack_of_raw
}

/// The addresses of stack `id`, if it is a real id present in the table.
fn stack_of(stacks: &HashMap<u32, Vec<u64>>, id: i32) -> Option<&Vec<u64>> {
    u32::try_from(id).ok().and_then(|id| stacks.get(&id))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::fixtures::{run_info, user_frame};

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
                        inlined.kind = FrameKind::Inlined;
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
            state: None,
            leaf: None,
        }
    }

    fn samples(weight: u64) -> RawWeight {
        RawWeight {
            weight,
            count: weight,
        }
    }

    /// A profile of `counts` alone.
    fn assembled(
        kind: EventKind,
        counts: &HashMap<RawSample, RawWeight>,
        stacks: &StackTable,
        symbols: &mut dyn Symbols,
    ) -> Profile {
        let mut profile = Profile::new(run_info());
        add_samples(
            &mut profile,
            &mut Interner::default(),
            kind,
            counts,
            stacks,
            symbols,
        );
        profile
    }

    fn names(profile: &Profile, stack: usize) -> Vec<&str> {
        profile.stacks[stack]
            .iter()
            .map(|&f| profile.frames[f].function.as_str())
            .collect()
    }

    #[test]
    fn io_stacks_end_in_their_system_call() {
        let stacks = StackTable::from([(0, vec![11, 21])]);
        let mut fsync = raw(1, 0, STACK_ID_NONE);
        fsync.leaf = Some(("fsync", FrameKind::Kernel));
        let counts = HashMap::from([(fsync, samples(3))]);
        let profile = assembled(
            EventKind::Io,
            &counts,
            &stacks,
            &mut FakeSymbols { lookups: vec![] },
        );
        let sample = &profile.samples[&EventKind::Io][0];
        assert_eq!(names(&profile, sample.stack), ["f20", "f11", "fsync"]);
        let leaf = profile.stacks[sample.stack].last().unwrap();
        assert_eq!(profile.frames[*leaf].kind, FrameKind::Kernel);
        assert_eq!(sample.count, Some(3), "calls are kept");
    }

    #[test]
    fn builds_root_first_stacks_with_kernel_below_user() {
        // Leaf 11 (sampled ip), called from return address 21 (looked up as 20), from 31.
        let stacks = StackTable::from([(0, vec![11, 21, 31]), (1, vec![501, 601])]);
        let counts = HashMap::from([
            (raw(1, 0, 1), samples(5)),
            (raw(1, 0, STACK_ID_NONE), samples(2)),
        ]);
        let mut symbols = FakeSymbols { lookups: vec![] };
        let profile = assembled(EventKind::Cpu, &counts, &stacks, &mut symbols);
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
            (raw(1, 0, STACK_ID_NONE), samples(1)),
            (raw(2, STACK_ID_COLLISION, STACK_ID_NONE), samples(1)),
        ]);
        let profile = assembled(
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
    fn an_empty_user_stack_is_no_panic() {
        let stacks = StackTable::from([(0, vec![]), (1, vec![501])]);
        let counts = HashMap::from([(raw(1, 0, 1), samples(2))]);
        let profile = assembled(
            EventKind::Cpu,
            &counts,
            &stacks,
            &mut FakeSymbols { lookups: vec![] },
        );
        let sample = &profile.samples[&EventKind::Cpu][0];
        assert_eq!(names(&profile, sample.stack), ["k501"]);
    }

    #[test]
    fn merges_counts_of_identical_symbolized_stacks() {
        // Two stack ids whose addresses symbolize alike still merge per thread.
        let stacks = StackTable::from([(0, vec![5]), (1, vec![5])]);
        let counts = HashMap::from([
            (raw(1, 0, STACK_ID_NONE), samples(3)),
            (raw(1, 1, STACK_ID_NONE), samples(4)),
        ]);
        let profile = assembled(
            EventKind::Cpu,
            &counts,
            &stacks,
            &mut FakeSymbols { lookups: vec![] },
        );
        assert_eq!(profile.samples[&EventKind::Cpu].len(), 1);
        assert_eq!(profile.total(EventKind::Cpu), 7);
    }

    fn kernel(name: &str) -> Frame {
        let mut frame = user_frame(name);
        frame.kind = FrameKind::Kernel;
        frame
    }

    /// Symbolizes user addresses >= 9000 as unmapped, kernel 700 as the BPF trampoline.
    struct GarbageSymbols;

    impl Symbols for GarbageSymbols {
        fn user(&mut self, _pid: u32, addresses: &[u64]) -> Vec<Vec<Frame>> {
            addresses
                .iter()
                .map(|&a| {
                    let mut frame = user_frame(&format!("f{a}"));
                    if a >= 9000 {
                        frame.function = "[unknown]".into();
                        frame.module = None;
                        frame.kind = FrameKind::Unsymbolized {
                            kernel: false,
                            file_offset: None,
                        };
                    }
                    vec![frame]
                })
                .collect()
        }

        fn kernel(&mut self, addresses: &[u64]) -> Vec<Vec<Frame>> {
            addresses
                .iter()
                .map(|&a| {
                    vec![kernel(if a == 700 {
                        "bpf_trace_run4"
                    } else {
                        "schedule"
                    })]
                })
                .collect()
        }
    }

    #[test]
    fn garbage_user_frames_and_bpf_frames_are_cut() {
        // Leaf 10, then a good return address, then garbage; kernel: trampoline, then schedule.
        let stacks = StackTable::from([(0, vec![10, 21, 9001, 22]), (1, vec![700, 801])]);
        let counts = HashMap::from([(raw(1, 0, 1), samples(1))]);
        let profile = assembled(EventKind::Cpu, &counts, &stacks, &mut GarbageSymbols);
        let sample = &profile.samples[&EventKind::Cpu][0];
        assert_eq!(
            names(&profile, sample.stack),
            ["[stack truncated]", "f20", "f10", "schedule"]
        );
    }

    #[test]
    fn off_cpu_samples_carry_reason_and_count() {
        let stacks = StackTable::from([(0, vec![10]), (1, vec![600])]);
        let mut off = raw(1, 0, 1);
        off.state = Some(1);
        let counts = HashMap::from([(
            off,
            RawWeight {
                weight: 1500,
                count: 3,
            },
        )]);
        let profile = assembled(
            EventKind::OffCpu,
            &counts,
            &stacks,
            &mut FakeSymbols { lookups: vec![] },
        );
        let sample = &profile.samples[&EventKind::OffCpu][0];
        assert_eq!((sample.weight, sample.count), (1500, Some(3)));
        assert_eq!(sample.reason, Some(BlockReason::OtherWait));
    }
}
