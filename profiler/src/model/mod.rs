//! The profile model, at the bottom of the crate: what a run collected, symbolized, as plain
//! data (no kernel, no procfs), and its saved form. Everything after collection (analysis,
//! rendering, `report`, `diff`, the fuzzer) reads only this.

pub mod bounded_de;
mod event;
#[cfg(test)]
pub(crate) mod fixtures;
mod frame;
mod profile;
mod sampling;
mod saved;
mod stats;
pub mod synthetic;

pub use event::{BlockReason, EventKind};
pub use frame::{
    Frame, FrameKind, JIT_MODULE, Missing, StackLoss, TRUNCATED_STACK, is_entry_function,
};
pub use profile::{Interner, ObjectInfo, Process, ProcessNames, Profile, RunInfo, Sample, Segment};
pub use sampling::{SampledEvents, StackSamplingRun};
pub use saved::{
    FORMAT_VERSION, LoadError, MAX_PROFILE_JSON_BYTES, MAX_PROFILE_MEMORY, MAX_RENDERED_TEXT,
    MAX_TOTAL, PROFILE_FILE,
};
pub use stats::{
    AllocSiteStats, IoDevice, IoFile, IoStats, IoSyscall, JitStats, Losses,
    MAX_NAMED_OBJECTS_WITHOUT_TABLES, MappingStats, MemoryStats, NoTableReason, ObjectWithoutTable,
    PythonStats, RunQueue, TimelineRow, UnwindStats,
};

/// Whether a number is zero: fields added to the saved form are left out when zero, so
/// profiles without them keep their saved form.
fn is_zero<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}
