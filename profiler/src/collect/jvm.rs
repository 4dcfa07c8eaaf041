//! Keeping HotSpot JVMs' perf maps current: each JVM profiled is asked to write its map
//! ([`hotspot`]) when first seen, then after 1, 2, 4 and every 8 s while it runs (methods compiled during
//! the run get named even if it exits by itself) and once more at the end. Requests run on a
//! thread of their own: the collector never waits on a JVM during the run.

use std::{
    collections::HashMap,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    stacks::address_space::AddressSpaces,
    target::{
        hotspot::{self, JvmError},
        tmp_dir::TargetTmp,
    },
};

/// How soon a JVM is asked again after its first map, doubling up to [`ASK_EVERY`]: a JVM
/// compiles most of its methods in its first seconds.
const ASK_FIRST_AGAIN: Duration = Duration::from_secs(1);

/// How often a running JVM is asked to rewrite its map in the end. Each request costs the JVM
/// a walk of its code cache and a write of its map (milliseconds for 20 000 methods).
const ASK_EVERY: Duration = Duration::from_secs(8);

/// How soon a JVM that could not be signalled yet (still starting) is tried again, and for
/// how long after it was first seen.
const RETRY_STARTING: Duration = Duration::from_millis(500);
const STARTING_GRACE: Duration = Duration::from_secs(10);

/// Longest the end of a run waits on JVMs, over all of them.
const FINISH_BUDGET: Duration = Duration::from_secs(10);

/// What one request came to, and how long it took.
type Answer = (Result<(), JvmError>, Duration);

/// Asks, timing the answer.
fn ask(pid: u32, tmp: &TargetTmp) -> Answer {
    let started = Instant::now();
    (hotspot::request_perf_map(pid, tmp), started.elapsed())
}

/// The JVMs among the targets.
pub(super) struct JvmMaps {
    enabled: bool,
    jvms: HashMap<u32, Jvm>,
}

struct Jvm {
    noted: Instant,
    /// The JVM's `/tmp` and process, taken at its first request: later requests go to that
    /// process only, never to one that reused its pid.
    tmp: Option<TargetTmp>,
    next_ask: Option<Instant>,
    /// Time between requests, doubling.
    interval: Duration,
    pending: Option<JoinHandle<Answer>>,
    /// Asked for the last time: it refused, cannot be asked, or exited.
    given_up: bool,
    /// Maps written at its request.
    written: u32,
    /// The longest a written map took.
    longest: Duration,
}

impl JvmMaps {
    pub(super) fn new(enabled: bool) -> Self {
        JvmMaps {
            enabled,
            jvms: HashMap::new(),
        }
    }

    /// After `pid`'s memory map (`text`) was read: notes it if it is a JVM.
    pub(super) fn note(&mut self, pid: u32, text: &str) {
        if self.enabled
            && !self.jvms.contains_key(&pid)
            && text.contains("/libjvm.so")
            && hotspot::is_hotspot(&crate::target::procfs::parse_maps(text))
        {
            log::info!("process {pid} is a HotSpot JVM: asking it for its perf map");
            self.jvms.insert(
                pid,
                Jvm {
                    noted: Instant::now(),
                    tmp: None,
                    next_ask: None,
                    interval: Duration::ZERO,
                    pending: None,
                    given_up: false,
                    written: 0,
                    longest: Duration::ZERO,
                },
            );
        }
    }

    /// Collects finished requests (rereading the maps they wrote) and starts those due.
    pub(super) fn poll(&mut self, spaces: &mut AddressSpaces) {
        let now = Instant::now();
        for (&pid, jvm) in &mut self.jvms {
            if jvm.pending.as_ref().is_some_and(JoinHandle::is_finished) {
                let result = jvm.pending.take().map(JoinHandle::join);
                jvm.settle(pid, result, spaces);
            }
            if jvm.given_up || jvm.pending.is_some() || jvm.next_ask.is_some_and(|at| at > now) {
                continue;
            }
            let Some(tmp) = jvm.tmp_for(pid, spaces) else {
                continue;
            };
            jvm.next_ask = None;
            jvm.pending = Some(std::thread::spawn(move || ask(pid, &tmp)));
        }
    }

    /// At the end of the run: waits for requests in flight and asks each JVM still running
    /// once more, so methods compiled late are named too; within [`FINISH_BUDGET`].
    pub(super) fn finish(&mut self, spaces: &mut AddressSpaces) {
        let deadline = Instant::now() + FINISH_BUDGET;
        for (&pid, jvm) in &mut self.jvms {
            if Instant::now() > deadline {
                log::warn!("JVMs took over {FINISH_BUDGET:?} to answer: not asked again");
                break;
            }
            // Each request is bounded in time (see `hotspot`): the join is too.
            if let Some(pending) = jvm.pending.take() {
                jvm.settle(pid, Some(pending.join()), spaces);
            }
            if jvm.given_up {
                continue;
            }
            let Some(tmp) = jvm.tmp_for(pid, spaces) else {
                continue;
            };
            jvm.settle(pid, Some(Ok(ask(pid, &tmp))), spaces);
        }
    }

    /// JVMs noted.
    pub(super) fn count(&self) -> u32 {
        self.jvms.len() as u32
    }

    /// The longest a JVM took to write its map and answer.
    pub(super) fn longest_request(&self) -> Duration {
        self.jvms
            .values()
            .map(|jvm| jvm.longest)
            .max()
            .unwrap_or_default()
    }

    /// Maps written at the profiler's request, over every JVM.
    pub(super) fn maps_written(&self) -> u32 {
        self.jvms.values().map(|jvm| jvm.written).sum()
    }
}

impl Jvm {
    /// A descriptor of the JVM's `/tmp` for one request; `None` (and given up) once the
    /// process it was first seen as is gone.
    fn tmp_for(&mut self, pid: u32, spaces: &AddressSpaces) -> Option<TargetTmp> {
        if self.tmp.is_none() {
            self.tmp = spaces.jit().tmp(pid).and_then(|tmp| tmp.try_clone().ok());
        }
        let tmp = self.tmp.as_ref()?;
        if !tmp.is_alive() {
            self.given_up = true;
            return None;
        }
        tmp.try_clone().ok()
    }

    fn settle(
        &mut self,
        pid: u32,
        result: Option<std::thread::Result<Answer>>,
        spaces: &mut AddressSpaces,
    ) {
        match result {
            Some(Ok((Ok(()), took))) => {
                self.written += 1;
                self.longest = self.longest.max(took);
                spaces.jit_mut().reread(pid);
                self.interval = (self.interval * 2).clamp(ASK_FIRST_AGAIN, ASK_EVERY);
                self.next_ask = Some(Instant::now() + self.interval);
            }
            // Still starting: its SIGQUIT handler comes with the VM.
            Some(Ok((Err(JvmError::NoSigquitHandler), _)))
                if self.written == 0 && self.noted.elapsed() < STARTING_GRACE =>
            {
                self.next_ask = Some(Instant::now() + RETRY_STARTING);
            }
            Some(Ok((Err(err), _))) => {
                self.given_up = true;
                if self.tmp.as_ref().is_some_and(TargetTmp::is_alive) {
                    log::warn!(
                        "process {pid}: the JVM was not asked for its perf map: {err}; its \
                         compiled methods stay [jit] (see docs/runtimes.md)"
                    );
                }
            }
            Some(Err(_)) | None => self.given_up = true,
        }
    }
}
