//! The overhead budget (`--max-overhead`): the stack-sampling thresholds of off-CPU periods and
//! I/O calls, adapted as the run goes so the programs' kernel time stays under a share of the
//! CPUs' busy time, each capped so its kind keeps enough walks for its flamegraph.
//!
//! Walking stacks is most of what an event costs; the count and time of every event are kept
//! whatever the threshold. A walked event shorter than the threshold stands for (threshold /
//! its time) of them, so the threshold trades flamegraph precision for cost, never totals.

use std::time::Duration;

use super::{
    busy_cpu::{busy_cpu_ns, online_cpus},
    config::StackSampling,
};
use crate::model::StackSamplingRun;

/// Threshold set first when the budget is exceeded, before it is scaled: short enough that a
/// quiet program is barely sampled.
const FIRST_THRESHOLD_NS: f64 = 100_000.0;
/// Below this the threshold goes back to 0: every stack walked.
const MIN_THRESHOLD_NS: u64 = 10_000;
/// At most this: the kernel draws a 32-bit random number of nanoseconds.
const MAX_THRESHOLD_NS: u64 = 1_000_000_000;
/// Measured over the budget this many times, the threshold goes at once to the kinds' caps.
const FAR_OVER: f64 = 2.0;
/// A window shorter than this (the collector's loop was late) is left open: the CPUs' busy
/// time moves in 10 ms steps.
const MIN_WINDOW_NS: u64 = 80_000_000;
/// Under a budget, a kind's threshold is at most (its events' time a second / this). A
/// share s of a kind's time is then estimated within about sqrt(s / (this × seconds)): a
/// fifth of a 10 s profile within a point. Where this cap holds the threshold down, about
/// this many short events a second are walked, a fraction of a percent of a CPU. Without
/// it, a budget that counting alone exceeds took the threshold to tens of milliseconds: on a
/// database with half a second of I/O a second, a few dozen I/O walks a second, and I/O
/// shares off by several points.
const MIN_WALKS_PER_SECOND: u64 = 200;
/// A kind's events' time a second is a moving average in which what was seen a second ago
/// weighs this much of what was seen last.
const RATE_DECAY_PER_SECOND: f64 = 0.5;
/// A kind whose events' time a second grew this many times since the budget's last decision
/// has a new load: the budget decides again soon, not at its settled pace.
const LOAD_GROWTH: f64 = 2.0;
/// A decision that moves the threshold by less than this factor leaves the budget settled.
const SETTLED_MOVE: f64 = 1.25;
/// Events' time a second under which a kind's growth is not a new load (a hundredth of a
/// thread).
const MIN_LOAD_NS_PER_SECOND: f64 = 10_000_000.0;
/// What a stack walk is taken to cost, ns, to tell from the rate of walks that a load arrived
/// which walking every stack would take past the budget: under what one took on the
/// database of docs/performance (3.6 µs an I/O call's, 6.5 µs an off-CPU period's), so such
/// a load is caught early rather than late.
const WALK_NS: f64 = 2_000.0;
/// Readings less than this apart belong to one tick (the collector ticks every 100 ms, and
/// ticks that fell behind fire together): walks counted over less tell no rate, and a drain
/// within it is this tick's.
const SAME_TICK: Duration = Duration::from_millis(50);
/// A measuring window at most this old when a load arrives measures that load.
const MAX_ARRIVAL_WINDOW_NS: u64 = 250_000_000;

/// Programs' run time, the CPUs' busy time and the wall time so far, ns.
type Reading = (u64, u64, u64);

/// The kinds of events whose stacks are sampled, in the order of [`Thresholds`].
pub(super) const OFFCPU: usize = 0;
pub(super) const IO: usize = 1;
/// A threshold per kind, ns (0: every stack walked).
pub(super) type Thresholds = [u64; 2];

/// The threshold and what it was adapted from.
#[derive(Debug)]
pub(super) struct StackSampler {
    policy: StackSampling,
    /// The budget's threshold, ns (0: every stack walked), before each kind's cap.
    below_ns: u64,
    /// The reading that opened the measuring window: programs' run time, the CPUs' busy time
    /// and the wall time, ns.
    window_start: Option<Reading>,
    started: std::time::Instant,
    /// Totals over the readings.
    program_ns: u64,
    busy_ns: u64,
    adjustments: u32,
    /// Each kind's events' time a second (ended events drained from the kernel), ns, a
    /// moving average over the last drains; `None` before the first drain.
    event_rates: Option<[f64; 2]>,
    /// When events were last drained (or began).
    last_drain: std::time::Instant,
    /// The rates at the budget's last decision, and whether that decision moved its
    /// threshold: until one keeps it, and while the load stays, the budget has settled.
    rates_at_decision: Option<[f64; 2]>,
    moved: bool,
    /// The thresholds in the kernel, and the highest of the run.
    applied: Thresholds,
    max_applied: Thresholds,
    /// The kernel's count of off-CPU and I/O stack walks at the last tick, and when.
    walks_seen: Option<(u64, std::time::Instant)>,
    /// Walks a second over the last tick, and over the tick before the budget's last
    /// decision.
    walk_rate: f64,
    walk_rate_at_decision: f64,
    /// Online CPUs: what the budget's share could at most be of.
    cpus: u64,
}

impl StackSampler {
    pub(super) fn new(policy: StackSampling) -> Self {
        let below_ns = match policy {
            // The command line caps it (the kernel draws 32 random bits).
            StackSampling::Below(below) => below.as_nanos() as u64,
            StackSampling::Exact | StackSampling::Budget(_) => 0,
        };
        StackSampler {
            policy,
            below_ns,
            window_start: None,
            started: std::time::Instant::now(),
            program_ns: 0,
            busy_ns: 0,
            adjustments: 0,
            event_rates: None,
            last_drain: std::time::Instant::now(),
            rates_at_decision: None,
            moved: true,
            applied: [below_ns; 2],
            max_applied: [below_ns; 2],
            walks_seen: None,
            walk_rate: 0.0,
            walk_rate_at_decision: 0.0,
            cpus: online_cpus(),
        }
    }

    /// Takes the kernel's count of off-CPU and I/O stack walks so far, read at a tick at
    /// `at`. While every stack is walked, the budget otherwise sees a load that arrives only
    /// at its next decision, up to two seconds on (a second on a drain that shows the new
    /// load, half a second to the decision after), and meanwhile the load pays for every
    /// walk: on a database, 40% of its throughput. Walks at a rate that would take the budget
    /// of every CPU, at [`WALK_NS`] each, and more than twice the rate at the last decision,
    /// bring the decision forward (see [`Self::load_arrived`]).
    pub(super) fn note_walks(&mut self, walks: u64, at: std::time::Instant) {
        let Some((last, last_at)) = self.walks_seen else {
            self.walks_seen = Some((walks, at));
            return;
        };
        // Ticks that fire together after a late one are too close to tell a rate by.
        let elapsed = at.saturating_duration_since(last_at);
        if elapsed < SAME_TICK {
            return;
        }
        self.walks_seen = Some((walks, at));
        self.walk_rate = walks.saturating_sub(last) as f64 / elapsed.as_secs_f64();
    }

    /// Whether a load arrived while every stack is walked (see [`Self::note_walks`]): the
    /// budget should decide now, on fresh rates, or measure from now and decide at the next
    /// tick. A decision takes the rate as its own, which ends it.
    pub(super) fn load_arrived(&self) -> bool {
        let StackSampling::Budget(percent) = self.policy else {
            return false;
        };
        let affordable = percent / 100.0 * self.cpus as f64 * 1e9 / WALK_NS;
        self.below_ns == 0
            && self.walk_rate > affordable.max(LOAD_GROWTH * self.walk_rate_at_decision)
    }

    /// Whether a window is open that measures the load that arrived: one opened at most
    /// [`MAX_ARRIVAL_WINDOW_NS`] ago. An older one (the first, opened before the programs
    /// were attached) would dilute it with the time before.
    pub(super) fn measuring_arrival(&self) -> bool {
        self.window_age_ns()
            .is_some_and(|age| age <= MAX_ARRIVAL_WINDOW_NS)
    }

    /// How long the open window has been open, ns.
    fn window_age_ns(&self) -> Option<u64> {
        let (_, _, opened_ns) = self.window_start?;
        Some((self.started.elapsed().as_nanos() as u64).saturating_sub(opened_ns))
    }

    /// Whether the programs' run time should be measured.
    pub(super) fn measures(&self) -> bool {
        matches!(self.policy, StackSampling::Budget(_))
    }

    /// The kernel cannot measure the programs' run time: every stack is walked from now on.
    pub(super) fn unmeasured(&mut self) {
        self.policy = StackSampling::Exact;
        self.window_start = None;
    }

    /// The events begin now: the first drain's rates are taken over the time since.
    pub(super) fn events_begin(&mut self) {
        self.last_drain = std::time::Instant::now();
    }

    /// Whether the budget has settled: its last decision kept the threshold and no kind's
    /// load grew much since. Until then it decides often.
    pub(super) fn settled(&self) -> bool {
        let grown = match (self.rates_at_decision, self.event_rates) {
            (Some(then), Some(now)) => now
                .into_iter()
                .zip(then)
                .any(|(now, then)| now > MIN_LOAD_NS_PER_SECOND && now > LOAD_GROWTH * then),
            _ => false,
        };
        !self.moved && !grown
    }

    /// Each kind's cap, ns; `None` before the first drain.
    fn caps(&self) -> Option<Thresholds> {
        self.event_rates.map(|rates| rates.map(precision_cap))
    }

    /// The highest of the kinds' caps, ns (0 before any drain): at it, each kind keeps just
    /// enough walks.
    fn highest_cap(&self) -> u64 {
        self.caps()
            .map_or(0, |caps| caps.into_iter().max().unwrap_or(0))
    }

    /// Whether events were drained yet: until then, the kinds' caps are not known.
    pub(super) fn knows_event_rates(&self) -> bool {
        self.event_rates.is_some()
    }

    /// Whether the kinds' rates are too old for a decision on a load that arrived: not
    /// drained since the last tick (a drain on this one already shows the load).
    pub(super) fn rates_stale(&self) -> bool {
        self.last_drain.elapsed() >= SAME_TICK
    }

    /// Adds the time of ended events drained from the kernel at `drained_at`, ns per kind.
    pub(super) fn note_event_time(&mut self, event_ns: [u64; 2], drained_at: std::time::Instant) {
        let since = drained_at.saturating_duration_since(self.last_drain);
        self.last_drain = drained_at;
        self.noted(event_ns, since);
    }

    /// Takes `event_ns` of events' time per kind, ended over `over`, into the rates.
    fn noted(&mut self, event_ns: [u64; 2], over: Duration) {
        let seconds = over.as_secs_f64().clamp(0.05, 10.0);
        let rates = event_ns.map(|ns| ns as f64 / seconds);
        // The last seconds, not the run so far: a profile attached before the load starts
        // would otherwise hold the threshold low, and walk more, long after. Weighted by the
        // time each drain covers: drains are not evenly spaced.
        let weight = 1.0 - RATE_DECAY_PER_SECOND.powf(seconds);
        self.event_rates = Some(match self.event_rates {
            Some(old) => [0, 1].map(|kind| (1.0 - weight) * old[kind] + weight * rates[kind]),
            None => rates,
        });
    }

    /// The thresholds the kernel should have now, and whether they changed since last
    /// asked: the budget's, each capped so its kind keeps enough walks to be estimated well.
    pub(super) fn thresholds(&mut self) -> (Thresholds, bool) {
        let next = match (self.policy, self.caps()) {
            (StackSampling::Budget(_), Some(caps)) => caps.map(|cap| self.below_ns.min(cap)),
            _ => [self.below_ns; 2],
        };
        let changed = next != self.applied;
        self.applied = next;
        for (max, below) in self.max_applied.iter_mut().zip(next) {
            *max = (*max).max(below);
        }
        (next, changed)
    }

    fn reading(&self, program_time: Duration) -> Option<Reading> {
        Some((
            program_time.as_nanos() as u64,
            busy_cpu_ns()?,
            self.started.elapsed().as_nanos() as u64,
        ))
    }

    /// Opens a measuring window: the programs' run time so far (measured from now on). One
    /// still open (a load arrived after it was opened) is taken into the run's totals first,
    /// undecided on: the summary's measured overhead would otherwise leave out the time a
    /// load arrived into, when every stack was walked.
    pub(super) fn open_window(&mut self, program_time: Duration) {
        let reading = self.reading(program_time);
        if let (Some(start), Some(end)) = (self.window_start, reading) {
            self.total(start, end);
        }
        self.window_start = reading;
    }

    /// Whether the open window is too short to tell anything yet.
    pub(super) fn window_too_short(&self) -> bool {
        self.window_age_ns().is_some_and(|age| age < MIN_WINDOW_NS)
    }

    /// Closes the measuring window with the programs' run time so far (measured since it was
    /// opened), and moves the budget's threshold.
    pub(super) fn close_window(&mut self, program_time: Duration) {
        if let Some(start) = self.window_start.take()
            && let Some(end) = self.reading(program_time)
        {
            self.measured(start, end);
        }
    }

    /// Adds what the programs took between two readings to the run's totals: the programs'
    /// time, the CPUs' busy time and the wall time, ns.
    fn total(&mut self, start: Reading, end: Reading) -> (u64, u64, u64) {
        let program = end.0.saturating_sub(start.0);
        let busy = end.1.saturating_sub(start.1);
        self.program_ns += program;
        self.busy_ns += busy;
        (program, busy, end.2.saturating_sub(start.2))
    }

    /// Decides from what the programs took between two readings (totals so far, ns).
    fn measured(&mut self, start: Reading, end: Reading) {
        let (program, busy, wall) = self.total(start, end);
        let StackSampling::Budget(percent) = self.policy else {
            return;
        };
        self.rates_at_decision = self.event_rates;
        self.walk_rate_at_decision = self.walk_rate;
        self.moved = false;
        // Against a quarter of a CPU at least: on an idle machine a quiet program's few
        // events would otherwise weigh a lot against next to no busy time.
        let busy = busy.max(wall / 4);
        if busy == 0 {
            return;
        }
        let overhead = 100.0 * program as f64 / busy as f64;
        let ratio = overhead / percent;
        let mut next = next_threshold(self.below_ns, ratio);
        let cap = self.highest_cap().min(MAX_THRESHOLD_NS);
        if ratio > 1.0 && cap > 0 {
            // Far over (a load arrived, or the attach), at once to each kind's cap, where
            // walks cost little: stepping there from a threshold an idle spell took low took
            // three decisions and two and a half seconds of pgbench at 8 to 20% of the CPUs.
            if ratio > FAR_OVER {
                next = next.max(cap);
            }
            // And not past it: there every kind walks the fewest stacks its flamegraph
            // needs, and what the programs still cost is counting and timing every event,
            // which the issue keeps exact and no threshold lowers.
            next = next.min(cap);
        }
        if next == self.below_ns {
            return;
        }
        log::debug!(
            "programs took {overhead:.2}% of busy CPU time (budget {percent}%): stack-sampling \
             threshold {} -> {} µs",
            self.below_ns / 1000,
            next / 1000
        );
        // Following the caps as the rates drift is not a move: the budget has settled there.
        let ratio_moved = next as f64 / self.below_ns.max(1) as f64;
        self.moved = !(1.0 / SETTLED_MOVE..=SETTLED_MOVE).contains(&ratio_moved);
        self.below_ns = next;
        self.adjustments += 1;
    }

    /// The highest threshold each kind had in the run, ns.
    pub(super) fn max_thresholds(&self) -> Thresholds {
        self.max_applied
    }

    /// What the run did, for the profile; `None` when every stack was walked throughout.
    pub(super) fn run(&self) -> Option<StackSamplingRun> {
        let max_below_ns = self.max_applied.into_iter().max().unwrap_or(0);
        if max_below_ns == 0 {
            return None;
        }
        Some(StackSamplingRun {
            max_overhead_percent: match self.policy {
                StackSampling::Budget(percent) => Some(percent),
                _ => None,
            },
            measured_overhead_percent: (self.busy_ns > 0)
                .then(|| 100.0 * self.program_ns as f64 / self.busy_ns as f64),
            max_below_us: max_below_ns / 1000,
            last_below_us: self.applied.into_iter().max().unwrap_or(0) / 1000,
            adjustments: self.adjustments,
            offcpu: None,
            io: None,
            offcpu_us_by_thread: Default::default(),
        })
    }
}

/// The highest threshold at which a kind with `ns_per_second` of events' time keeps
/// [`MIN_WALKS_PER_SECOND`] of short events walked; 0 (every stack walked) under the smallest
/// threshold.
fn precision_cap(ns_per_second: f64) -> u64 {
    let cap = (ns_per_second / MIN_WALKS_PER_SECOND as f64) as u64;
    if cap < MIN_THRESHOLD_NS { 0 } else { cap }
}

/// The next threshold, from the present one and (measured overhead / target). Over, it grows
/// with the excess (a walked share falls about as 1 / threshold); well under, it halves, back
/// to walking every stack.
pub(super) fn next_threshold(below_ns: u64, ratio: f64) -> u64 {
    if !ratio.is_finite() {
        return below_ns;
    }
    if ratio > 1.0 {
        let next = if below_ns == 0 {
            FIRST_THRESHOLD_NS * ratio * ratio
        } else {
            below_ns as f64 * ratio.powf(1.5).min(16.0)
        };
        (next as u64).clamp(MIN_THRESHOLD_NS, MAX_THRESHOLD_NS)
    } else if ratio < 0.85 && below_ns > 0 {
        let next = below_ns / 2;
        if next < MIN_THRESHOLD_NS { 0 } else { next }
    } else {
        below_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_grows_over_budget_and_comes_back_under_it() {
        // Every stack walked, six times the budget: straight to milliseconds.
        let first = next_threshold(0, 6.0);
        assert_eq!(first, 3_600_000);
        // Still twice over: grows, at most 16-fold.
        assert_eq!(
            next_threshold(first, 2.0),
            (3_600_000.0 * 2f64.powf(1.5)) as u64
        );
        assert_eq!(next_threshold(1_000_000, 1000.0), 16_000_000);
        assert_eq!(next_threshold(600_000_000, 1000.0), MAX_THRESHOLD_NS);
        // Within budget: kept.
        assert_eq!(next_threshold(first, 0.9), first);
        assert_eq!(next_threshold(0, 0.9), 0);
        // Well under: halves, then every stack walked again.
        assert_eq!(next_threshold(first, 0.8), first / 2);
        assert_eq!(next_threshold(first, 0.2), first / 2);
        assert_eq!(next_threshold(15_000, 0.2), 0);
        // A reading that says nothing changes nothing.
        assert_eq!(next_threshold(first, f64::NAN), first);
    }

    /// Feeds `sampler` readings of a program cost of `percent(threshold)` of 1 s busy each,
    /// returning the thresholds it chose.
    fn run_budget(
        sampler: &mut StackSampler,
        mut percent: impl FnMut(u64) -> f64,
        readings: u32,
    ) -> Vec<u64> {
        let (mut program, mut busy) = (0u64, 0u64);
        (0..readings)
            .map(|_| {
                let start = (program, busy, busy);
                busy += 1_000_000_000;
                program += (percent(sampler.below_ns) * 1e7) as u64;
                sampler.measured(start, (program, busy, busy));
                sampler.thresholds();
                sampler.below_ns
            })
            .collect()
    }

    #[test]
    fn a_load_arriving_while_every_stack_is_walked_is_seen_at_the_next_tick() {
        let start = std::time::Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut sampler = StackSampler::new(StackSampling::Budget(3.0));
        sampler.cpus = 2;
        // 3% of two CPUs is 60 ms a second: 30 000 walks a second at 2 µs each.
        sampler.note_walks(1_000, at(0));
        assert!(!sampler.load_arrived(), "the first count is only a start");
        sampler.note_walks(3_900, at(100));
        assert!(
            !sampler.load_arrived(),
            "29 000 walks a second are within the budget"
        );
        // Ticks that fire together after a late one tell nothing.
        sampler.note_walks(4_000, at(101));
        assert!(!sampler.load_arrived());
        sampler.note_walks(7_000, at(200));
        assert!(sampler.load_arrived());
        // The decision, at the budget: every stack still walked.
        let reading = (0, 0, 0);
        sampler.measured(reading, (20_000_000, 1_000_000_000, 1_000_000_000));
        assert!(!sampler.load_arrived());
        assert_eq!(sampler.below_ns, 0);
        // The decision's 31 000 walks a second, and twice as many, are the same load; more
        // than twice is a new one.
        sampler.note_walks(10_100, at(300));
        assert!(!sampler.load_arrived());
        sampler.note_walks(16_300, at(400));
        assert!(!sampler.load_arrived());
        // A late tick: 0.2 s of walks at the same rate.
        sampler.note_walks(28_700, at(600));
        assert!(!sampler.load_arrived());
        sampler.note_walks(35_000, at(700));
        assert!(sampler.load_arrived());
        // Once stacks are sampled, the budget's own decisions follow the load.
        sampler.measured(reading, (90_000_000, 1_000_000_000, 1_000_000_000));
        assert!(sampler.below_ns > 0);
        sampler.note_walks(100_000, at(800));
        assert!(!sampler.load_arrived());
        // A window opened a tick ago measures the load; the first, opened before the
        // programs were attached a second ago, would dilute it.
        sampler.open_window(Duration::ZERO);
        assert!(sampler.measuring_arrival());
        sampler.started -= Duration::from_secs(1);
        assert!(!sampler.measuring_arrival());
        // What the window measured before it was opened again stays in the run's totals.
        let before = sampler.program_ns;
        sampler.open_window(Duration::from_millis(5));
        assert_eq!(sampler.program_ns, before + 5_000_000);
        assert!(sampler.measuring_arrival());
        // A drain on this tick shows the load; one a tick ago does not.
        sampler.last_drain = std::time::Instant::now();
        assert!(!sampler.rates_stale());
        sampler.last_drain -= Duration::from_millis(100);
        assert!(sampler.rates_stale());
        // Without a budget, nothing is decided.
        let mut exact = StackSampler::new(StackSampling::Exact);
        exact.note_walks(0, at(0));
        exact.note_walks(1_000_000, at(100));
        assert!(!exact.load_arrived());
    }

    #[test]
    fn a_kind_with_little_time_keeps_enough_walks() {
        let mut sampler = StackSampler::new(StackSampling::Budget(3.0));
        // Counting alone over budget: the budget's threshold climbs to tens of milliseconds.
        let cost = |below: u64| 6.0 + 19.0 * (100_000.0 / below.max(100_000) as f64);
        run_budget(&mut sampler, cost, 30);
        assert!(sampler.below_ns >= 10_000_000, "{sampler:?}");
        // Before anything is drained the budget's threshold holds for both kinds.
        assert_eq!(sampler.thresholds().0, [sampler.below_ns; 2]);
        // 8 s of off-CPU time a second (eight threads), 0.5 s of I/O.
        sampler.noted([8_000_000_000, 500_000_000], Duration::from_secs(1));
        let (below, changed) = sampler.thresholds();
        assert!(changed);
        // Off-CPU time is plenty: the budget's threshold, or 40 ms.
        assert_eq!(below[OFFCPU], sampler.below_ns.min(40_000_000), "{below:?}");
        // I/O keeps about 200 walks a second: 2.5 ms.
        assert_eq!(below[IO], 2_500_000);
        assert_eq!(sampler.thresholds(), (below, false));
        let run = sampler.run().expect("sampled");
        assert_eq!(run.last_below_us, below[OFFCPU] / 1000);
        // The rate follows the load within a few seconds: I/O four times as busy.
        for _ in 0..4 {
            sampler.noted([8_000_000_000, 2_000_000_000], Duration::from_secs(1));
        }
        let (below, _) = sampler.thresholds();
        assert!((9_000_000..=10_000_000).contains(&below[IO]), "{below:?}");
        // A drain a tenth of a second after the last weighs a tenth as much as a second's.
        sampler.noted([800_000_000, 0], Duration::from_millis(100));
        let (below, _) = sampler.thresholds();
        assert!((8_500_000..=9_500_000).contains(&below[IO]), "{below:?}");
        // A kind with next to no time walks every stack.
        assert_eq!(precision_cap(1_000_000.0), 0);
        assert_eq!(precision_cap(1e9), 5_000_000);
    }

    #[test]
    fn a_load_that_arrives_gets_each_kind_at_its_cap_at_the_next_decision() {
        let mut sampler = StackSampler::new(StackSampling::Budget(3.0));
        // Idle: well under budget, every stack walked, and settled once a decision keeps it.
        sampler.noted([50_000_000, 1_000_000], Duration::from_secs(1));
        run_budget(&mut sampler, |_| 0.5, 3);
        assert_eq!(sampler.below_ns, 0);
        assert!(sampler.settled(), "{sampler:?}");
        // The load arrives: 8 s of off-CPU time a second, half a second of I/O.
        for _ in 0..4 {
            sampler.noted([8_000_000_000, 500_000_000], Duration::from_secs(1));
        }
        assert!(!sampler.settled(), "a new load: {sampler:?}");
        // One decision, far over budget: not the few hundred microseconds a step from every
        // stack walked gives, but each kind's cap.
        run_budget(&mut sampler, |_| 20.0, 1);
        let rates = sampler.event_rates.expect("drained");
        assert_eq!(sampler.thresholds().0, rates.map(precision_cap));
        assert!(sampler.thresholds().0[OFFCPU] > 30_000_000, "{sampler:?}");
        assert!(!sampler.settled(), "it moved: {sampler:?}");
        // Within budget there: kept, and settled.
        run_budget(&mut sampler, |_| 2.8, 1);
        assert_eq!(sampler.thresholds().0, rates.map(precision_cap));
        assert!(sampler.settled(), "{sampler:?}");
    }

    #[test]
    fn budget_is_met_where_walks_are_the_cost() {
        // 1% counting every event, plus walks worth 19% at threshold 0, falling as 1/threshold
        // past the events' length (100 µs).
        let cost = |below: u64| 1.0 + 19.0 * (100_000.0 / below.max(100_000) as f64);
        let mut sampler = StackSampler::new(StackSampling::Budget(3.0));
        let thresholds = run_budget(&mut sampler, cost, 20);
        let last = *thresholds.last().unwrap();
        assert!(cost(last) <= 3.0 && cost(last) > 1.5, "{thresholds:?}");
        let run = sampler.run().expect("sampled");
        assert!(run.measured_overhead_percent.unwrap() < 5.0, "{run:?}");
    }

    #[test]
    fn counting_alone_over_budget_holds_the_threshold_at_the_caps() {
        // 6% counting every event, over a 3% budget whatever the threshold: the threshold
        // goes to the highest cap (8 s of off-CPU time a second: 40 ms) and stays there, not
        // higher, where walking fewer stacks would save nothing.
        let cost = |below: u64| 6.0 + 19.0 * (100_000.0 / below.max(100_000) as f64);
        let mut sampler = StackSampler::new(StackSampling::Budget(3.0));
        sampler.noted([8_000_000_000, 500_000_000], Duration::from_secs(1));
        let thresholds = run_budget(&mut sampler, cost, 30);
        assert_eq!(thresholds[0], 40_000_000, "far over: at once");
        assert!(
            thresholds.iter().all(|&below| below == 40_000_000),
            "{thresholds:?}"
        );
        assert!(sampler.settled());
        // The rates drift: the threshold follows the cap, and the budget stays settled.
        sampler.noted([900_000_000, 50_000_000], Duration::from_millis(100));
        run_budget(&mut sampler, cost, 1);
        assert!(sampler.below_ns > 40_000_000, "{sampler:?}");
        assert!(sampler.settled(), "{sampler:?}");
    }

    #[test]
    fn a_noisy_measure_of_counting_over_budget_holds_the_threshold_at_the_caps() {
        // As above, each reading off by up to a tenth either way (the CPUs' busy time read
        // over 100 ms).
        let noise = [1.1, 0.9, 1.05, 0.92, 1.0, 0.9, 1.08, 0.95, 0.9, 1.1];
        let mut reading = 0;
        let cost = |below: u64| {
            reading += 1;
            (6.0 + 19.0 * (100_000.0 / below.max(100_000) as f64)) * noise[reading % noise.len()]
        };
        let mut sampler = StackSampler::new(StackSampling::Budget(3.0));
        sampler.noted([8_000_000_000, 500_000_000], Duration::from_secs(1));
        let thresholds = run_budget(&mut sampler, cost, 60);
        assert!(
            thresholds.iter().all(|&below| below == 40_000_000),
            "{thresholds:?}"
        );
    }

    #[test]
    fn a_quiet_program_on_an_idle_machine_keeps_every_stack() {
        // 2 ms of programs a second, on a machine busy 5 ms a second: 40% of busy time, but
        // under 1% of a quarter of a CPU.
        let mut sampler = StackSampler::new(StackSampling::Budget(3.0));
        let at = |second: u64| {
            (
                second * 2_000_000,
                second * 5_000_000,
                second * 1_000_000_000,
            )
        };
        for second in 1..10u64 {
            sampler.measured(at(second - 1), at(second));
        }
        assert_eq!(sampler.below_ns, 0);
    }

    #[test]
    fn a_fixed_threshold_is_reported_and_exact_runs_are_not() {
        let fixed = StackSampler::new(StackSampling::Below(Duration::from_micros(200)));
        assert_eq!(fixed.below_ns, 200_000);
        let run = fixed.run().expect("sampled");
        assert_eq!((run.max_below_us, run.max_overhead_percent), (200, None));
        assert!(StackSampler::new(StackSampling::Exact).run().is_none());
        assert!(
            StackSampler::new(StackSampling::Budget(3.0))
                .run()
                .is_none()
        );
    }
}
