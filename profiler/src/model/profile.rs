//! The profile model: what a run collected, symbolized, in plain data.
//!
//! Every rendered file (folded stacks, flamegraphs, summaries) is a function of a [`Profile`],
//! and the profile is saved next to them (`profile.json.gz`, see [`super::saved`]) so
//! `profiler report DIR` can render them again, elsewhere and later, without the target or its
//! binaries.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::{
    BlockReason, EventKind, Frame, FrameKind, IoStats, Losses, MemoryStats, RunQueue,
    is_entry_function, saved::FORMAT_VERSION,
};

/// A process seen during the run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    /// Process id.
    pub pid: u32,
    /// Program name (`comm` of the process).
    pub name: String,
    /// Command line, when it could be read.
    pub command: Vec<String>,
    /// The container it ran in (the id its cgroup is named by), when it ran in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

impl Process {
    /// Its executable's name: its command's program, else its own name.
    pub fn executable_name(&self) -> &str {
        self.command
            .first()
            .and_then(|program| program.rsplit('/').next())
            .filter(|name| !name.is_empty())
            .unwrap_or(&self.name)
    }
}

/// One aggregated sample: a weight on a stack of one thread.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Thread name.
    pub thread: String,
    /// Index into [`Profile::stacks`].
    pub stack: usize,
    /// Weight in the event kind's unit.
    pub weight: u64,
    /// Off-CPU samples: why the thread was off-CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<BlockReason>,
    /// Off-CPU and I/O samples: number of periods or calls merged into this sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// Facts about the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Short name of the target (program name), used in the output folder name.
    pub target: String,
    /// The profiled command line (`record`), or the first attached process's.
    pub command: Vec<String>,
    /// Processes given on the command line (`attach`) or launched (`record`).
    pub root_pids: Vec<u32>,
    /// Whether descendants of the root processes were profiled too.
    pub follow_children: bool,
    /// Start of collection, Unix time in milliseconds.
    pub start_unix_ms: u64,
    /// Collection time in seconds.
    pub duration_secs: f64,
    /// Sampling frequency in Hz.
    pub frequency_hz: u64,
    /// Shortest off-CPU period recorded, µs.
    #[serde(default)]
    pub min_block_us: u64,
    /// Stack sampling of off-CPU periods and I/O calls; `None` when every stack was walked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_sampling: Option<super::StackSamplingRun>,
    /// Event kinds collected.
    pub events: Vec<EventKind>,
    /// `--alloc-sample` bytes (0: every allocation recorded).
    #[serde(default)]
    pub alloc_sample_bytes: u64,
    /// Why collection stopped.
    pub stop_reason: String,
    /// Exit code of the launched command (`record`), when it exited.
    pub exit_code: Option<i32>,
    /// Time from the start of the profiler to every program being attached (CPU sampling may
    /// start before, see `first_sample_ms`), in milliseconds.
    pub attach_ms: Option<f64>,
    /// Time from the start of the profiler to the first sample, in milliseconds.
    pub first_sample_ms: Option<f64>,
    /// What the unwind tables cost; `None` when user stacks were walked by frame pointers.
    #[serde(default)]
    pub unwind: Option<crate::model::UnwindStats>,
    /// Where JIT code got its names; `None` when no target had any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jit: Option<crate::model::JitStats>,
    /// The Python processes; `None` when no target ran CPython.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<crate::model::PythonStats>,
    /// Kernel release the profile was taken on.
    pub kernel: String,
    /// Version of the profiler that took it.
    pub profiler_version: String,
    /// CPUs online during the run; 0 when not recorded (profiles of older versions).
    #[serde(default, skip_serializing_if = "super::is_zero")]
    pub cpus: u32,
}

/// A collected, symbolized profile.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Saved-format version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// Facts about the run.
    pub run: RunInfo,
    /// Processes seen.
    pub processes: Vec<Process>,
    /// Interned frames.
    pub frames: Vec<Frame>,
    /// Interned stacks: indices into `frames`, root (outermost caller) first.
    pub stacks: Vec<Vec<usize>>,
    /// Samples per event kind.
    pub samples: BTreeMap<EventKind, Vec<Sample>>,
    /// Run-queue delays per thread (collected with `offcpu`).
    #[serde(default)]
    pub run_queue: Vec<RunQueue>,
    /// I/O tables (collected with `io`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io: Option<IoStats>,
    /// Allocation sites, timeline and mappings (collected with `alloc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    /// What was lost while collecting.
    pub losses: Losses,
    /// The objects frames are in, by module name: what symbolizing the profile later with
    /// debug files needs (stripped code), and where each program starts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub objects: BTreeMap<String, ObjectInfo>,
}

/// An object file frames are in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    /// Its path, as the process named it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// Its build-id, hexadecimal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    /// The file offset of its entry point (`e_entry`), for an executable: a stack whose root
    /// is unsymbolized code there is whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_offset: Option<u64>,
    /// Its loadable segments, for objects with code no symbol covers: where file offsets go
    /// in its address space (what pprof symbolizes by).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<Segment>,
}

/// A loadable segment of an object file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Where its bytes start in the file.
    pub file_offset: u64,
    /// Its address in the object's own address space (`p_vaddr`).
    pub address: u64,
    /// Its bytes in the file.
    pub size: u64,
}

impl ObjectInfo {
    /// The object-relative address of the code at `file_offset`.
    pub fn address_of(&self, file_offset: u64) -> Option<u64> {
        self.segments.iter().find_map(|segment| {
            let within = file_offset.checked_sub(segment.file_offset)?;
            (within < segment.size).then(|| segment.address.wrapping_add(within))
        })
    }
}

impl Profile {
    /// An empty profile for a run.
    pub fn new(run: RunInfo) -> Self {
        Profile {
            format_version: FORMAT_VERSION,
            run,
            processes: Vec::new(),
            frames: Vec::new(),
            stacks: Vec::new(),
            samples: BTreeMap::new(),
            run_queue: Vec::new(),
            io: None,
            memory: None,
            losses: Losses::default(),
            objects: BTreeMap::new(),
        }
    }

    /// Whether `frame` starts a whole user stack: the program's entry or a thread start by
    /// name, or unsymbolized code at its executable's entry point (a stripped program).
    pub fn is_entry_frame(&self, frame: &Frame) -> bool {
        match frame.kind {
            FrameKind::Unsymbolized {
                file_offset: Some(offset),
                kernel: false,
            } => frame
                .module
                .as_ref()
                .and_then(|module| self.objects.get(module))
                .is_some_and(|object| object.entry_offset == Some(offset)),
            _ => is_entry_function(&frame.function),
        }
    }

    /// The samples of one process, as a profile of their own (its frames and stacks only):
    /// what a backend that takes one process a request gets.
    pub fn of_process(&self, pid: u32) -> Profile {
        let mut profile = Profile::new(self.run.clone());
        profile.processes = self
            .processes
            .iter()
            .filter(|process| process.pid == pid)
            .cloned()
            .collect();
        profile.losses = self.losses.clone();
        profile.objects = self.objects.clone();
        let mut interner = Interner::default();
        for (&kind, samples) in &self.samples {
            let mut kept = Vec::new();
            for sample in samples.iter().filter(|sample| sample.pid == pid) {
                let stack = self.stacks[sample.stack]
                    .iter()
                    .map(|&frame| interner.frame(&mut profile, self.frames[frame].clone()))
                    .collect();
                kept.push(Sample {
                    stack: interner.stack(&mut profile, stack),
                    ..sample.clone()
                });
            }
            if !kept.is_empty() {
                profile.samples.insert(kind, kept);
            }
        }
        profile
    }

    /// Total weight of one event kind.
    pub fn total(&self, kind: EventKind) -> u64 {
        self.samples.get(&kind).map_or(0, |samples| {
            samples.iter().map(|sample| sample.weight).sum()
        })
    }

    /// Whether more than one process contributed samples, in which case stacks are prefixed
    /// with a `process (pid)` frame.
    pub fn is_multi_process(&self) -> bool {
        let mut pids = self.samples.values().flatten().map(|sample| sample.pid);
        let Some(first) = pids.next() else {
            return false;
        };
        pids.any(|pid| pid != first)
    }

    /// Process names by pid, built once for lookups per sample (a saved profile may name a
    /// million processes).
    pub fn process_names(&self) -> ProcessNames<'_> {
        ProcessNames(
            self.processes
                .iter()
                .map(|process| (process.pid, process.name.as_str()))
                .collect(),
        )
    }
}

/// Process names by pid.
pub struct ProcessNames<'a>(HashMap<u32, &'a str>);

impl ProcessNames<'_> {
    /// Name of a process, falling back to the pid.
    pub fn name(&self, pid: u32) -> String {
        self.0
            .get(&pid)
            .map_or_else(|| pid.to_string(), |name| (*name).to_owned())
    }

    /// `name (pid)`, the root frame of a process's stacks.
    pub fn label(&self, pid: u32) -> String {
        format!("{} ({pid})", self.name(pid))
    }
}

/// Interns frames and stacks while a profile is built.
#[derive(Default)]
pub struct Interner {
    frames: HashMap<Frame, usize>,
    /// Indices into `profile.stacks`, found by the stack's hash: each stack is kept once, in
    /// the profile (a map keyed by the stack held a second copy of every one).
    stacks: hashbrown::HashTable<usize>,
    hasher: std::hash::RandomState,
}

impl Interner {
    /// Index of `frame` in `profile.frames`, adding it if new.
    pub fn frame(&mut self, profile: &mut Profile, frame: Frame) -> usize {
        *self.frames.entry(frame).or_insert_with_key(|frame| {
            profile.frames.push(frame.clone());
            profile.frames.len() - 1
        })
    }

    /// Index of `stack` in `profile.stacks`, adding it if new.
    pub fn stack(&mut self, profile: &mut Profile, stack: Vec<usize>) -> usize {
        use std::hash::BuildHasher as _;
        let hash = self.hasher.hash_one(&stack);
        let stacks = &profile.stacks;
        if let Some(&index) = self.stacks.find(hash, |&index| stacks[index] == stack) {
            return index;
        }
        profile.stacks.push(stack);
        let (stacks, hasher) = (&profile.stacks, &self.hasher);
        let index = stacks.len() - 1;
        self.stacks
            .insert_unique(hash, index, |&index| hasher.hash_one(&stacks[index]));
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{run_info, sample_profile, user_frame};

    #[test]
    fn a_process_profile_has_its_samples_and_frames_only() {
        let mut profile = sample_profile();
        let mut interner = Interner::default();
        for frame in &profile.frames.clone() {
            interner.frame(&mut profile, frame.clone());
        }
        let other = interner.frame(&mut profile, user_frame("other"));
        let stack = interner.stack(&mut profile, vec![other]);
        let cpu = profile.samples.get_mut(&EventKind::Cpu).unwrap();
        cpu.push(Sample {
            pid: 7,
            tid: 7,
            stack,
            ..cpu[0].clone()
        });
        let demo = profile.of_process(42);
        assert_eq!(demo.total(EventKind::Cpu), 10);
        assert_eq!(demo.frames.len(), 4, "not the other process's frame");
        assert_eq!(demo.processes.len(), 1);
        let other = profile.of_process(7);
        assert_eq!(other.total(EventKind::Cpu), 7);
        assert_eq!(other.frames[other.stacks[0][0]].function, "other");
        assert!(profile.of_process(99).samples.is_empty());
    }

    #[test]
    fn interner_deduplicates() {
        let mut profile = Profile::new(run_info());
        let mut interner = Interner::default();
        let a = interner.frame(&mut profile, user_frame("a"));
        assert_eq!(interner.frame(&mut profile, user_frame("a")), a);
        let s = interner.stack(&mut profile, vec![a]);
        assert_eq!(interner.stack(&mut profile, vec![a]), s);
        assert_eq!((profile.frames.len(), profile.stacks.len()), (1, 1));
        // Past many growths of the table, every stack is still found, at its first index.
        let first: Vec<usize> = (0..5000)
            .map(|n| interner.stack(&mut profile, vec![a, n, n % 7]))
            .collect();
        let again: Vec<usize> = (0..5000)
            .map(|n| interner.stack(&mut profile, vec![a, n, n % 7]))
            .collect();
        assert_eq!(first, again);
        assert_eq!(profile.stacks.len(), 5001);
        assert_eq!(profile.stacks[first[4321]], vec![a, 4321, 4321 % 7]);
    }
}
