//! Stack sampling of off-CPU periods and I/O calls: what a run walked and why.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How a run sampled the stacks of off-CPU periods and I/O calls (each one still counted and
/// timed exactly): present when some stacks were not walked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StackSamplingRun {
    /// `--max-overhead`, percent; `None` when the threshold was fixed (`--sample-stacks-below`).
    pub max_overhead_percent: Option<f64>,
    /// The programs' kernel time over the CPUs' busy time during the run, percent, when
    /// measured.
    pub measured_overhead_percent: Option<f64>,
    /// Highest threshold of the run, µs: shorter events were walked with probability (their
    /// time / the threshold) and weighted up.
    pub max_below_us: u64,
    /// Threshold at the end of the run, µs.
    pub last_below_us: u64,
    /// Times the budget changed the threshold.
    pub adjustments: u32,
    /// Off-CPU periods, when collected.
    pub offcpu: Option<SampledEvents>,
    /// I/O calls, when collected.
    pub io: Option<SampledEvents>,
    /// Exact off-CPU time per thread id, µs (the samples' per-thread sums are estimates).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub offcpu_us_by_thread: BTreeMap<u32, u64>,
}

/// Events of one kind and how many had their stacks walked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampledEvents {
    /// Events, counted exactly.
    pub events: u64,
    /// Of which walked.
    pub walked: u64,
    /// Their time, exact, µs.
    pub total_us: u64,
    /// Highest threshold of this kind in the run, µs (a budget keeps a kind with little time
    /// under the others').
    #[serde(default)]
    pub max_below_us: u64,
}

impl SampledEvents {
    /// "1 in N" of the events walked, rounded.
    pub fn one_in(&self) -> u64 {
        if self.walked == 0 {
            return self.events;
        }
        (self.events + self.walked / 2) / self.walked
    }
}
