//! Continuous collection (`profiler agent`): the programs stay attached, and every interval
//! what was collected since the last window becomes a profile of its own. Counts are taken
//! with each window; address spaces stay for the windows after, and stacks as long as
//! windows name them (`stack_ages`).

use std::time::{Duration, Instant};

use indicatif::ProgressBar;

use super::{
    Clock, CollectError, Started, collect_until_stop,
    collected::Collected,
    collection::{Collection, ProcessTable},
    describe_target,
    stack_ages::StackAges,
    start,
    stop::Stop,
    stop_signals, unix_ms,
};
use crate::{
    collect::config::{RunConfig, TargetSpec},
    kernel::{IoExtras, ProbeError},
    model::{Profile, RunInfo},
    stacks::symbolize::SymbolCache,
    target::{privileges, procfs},
};

/// How long symbolization's parsed objects are kept between windows: parsing them again each
/// window was most of the agent's work; keeping them for ever would keep every binary the
/// host ever ran.
const SYMBOL_CACHE_AGE: Duration = Duration::from_secs(600);

/// What the collector keeps between windows, for its health to be watched: flat over hours.
#[derive(Clone, Copy, Debug)]
pub struct Kept {
    /// Stacks, user and kernel.
    pub stacks: usize,
    /// Processes known.
    pub processes: usize,
}

/// Collects for `spec` until SIGINT, SIGTERM or every target's exit, handing `each` a
/// profile every `interval` and one for the rest at the end, with what is kept after each
/// (nothing after the last).
pub async fn run_windows(
    spec: TargetSpec,
    config: RunConfig,
    interval: Duration,
    mut each: impl FnMut(Profile, Option<Kept>),
) -> Result<(), CollectError> {
    let clock = Clock::now();
    let (mut sigint, mut sigterm) = stop_signals()?;
    privileges::check()?;
    let target = describe_target(&spec)?;
    let Started {
        mut collection,
        root_pids,
        attach_ms,
        ..
    } = start(&spec, &config, &target, &clock)?;
    log::info!(
        "every program attached after {attach_ms:.0} ms; a window every {:.0} s",
        interval.as_secs_f64()
    );
    // No status line: the agent logs a line a window.
    let bar = ProgressBar::hidden();
    let window_run = |start_unix_ms: u64, started: Instant| RunInfo {
        target: target.name.clone(),
        command: target.command.clone(),
        root_pids: root_pids.clone(),
        follow_children: spec.follows_children(),
        start_unix_ms,
        duration_secs: started.elapsed().as_secs_f64(),
        frequency_hz: config.frequency,
        min_block_us: config.min_block.as_micros() as u64,
        stack_sampling: None,
        events: config.events.clone(),
        alloc_sample_bytes: config.alloc_sample_bytes,
        stop_reason: "window".to_owned(),
        exit_code: None,
        attach_ms: Some(attach_ms),
        first_sample_ms: None,
        unwind: None,
        jit: None,
        python: None,
        kernel: crate::kernel::release(),
        profiler_version: env!("CARGO_PKG_VERSION").to_owned(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get() as u32),
    };
    let mut window_start = (unix_ms(), Instant::now());
    let mut symbols = (SymbolCache::new(), Instant::now());
    let mut stack_ages = StackAges::default();
    // On a fixed grid from the start: the time a window takes to cut is the next one's.
    let mut deadline = tokio::time::Instant::now();
    loop {
        deadline += interval;
        let stop = collect_until_stop(
            &mut collection,
            Some(deadline),
            (&mut sigint, &mut sigterm),
            None,
            &root_pids,
            &bar,
        )
        .await?;
        let run = window_run(window_start.0, window_start.1);
        window_start = (unix_ms(), Instant::now());
        if let Stop::Duration = stop {
            if symbols.1.elapsed() > SYMBOL_CACHE_AGE {
                symbols = (SymbolCache::new(), Instant::now());
                release_freed_memory();
            }
            let (profile, cache) = collection.take_window(run, symbols.0, &mut stack_ages)?;
            symbols.0 = cache;
            collection.forget_exited_processes();
            collection.retire_idle_stacks(&mut stack_ages)?;
            each(profile, Some(collection.kept()));
            continue;
        }
        let mut collected = collection.finish(config.min_block.as_nanos() as u64)?;
        let detaching = collected.detaching.take();
        let mut run = run;
        run.stop_reason = stop.describe();
        each(collected.profile(run), None);
        if let Some(detaching) = detaching {
            let _ = detaching.join();
        }
        return Ok(());
    }
}

impl Collection {
    /// What was collected since the last window, as a profile: the counts are taken, the
    /// stacks and address spaces stay (later counts name them again).
    fn take_window(
        &mut self,
        run: RunInfo,
        symbols: SymbolCache,
        stack_ages: &mut StackAges,
    ) -> Result<(Profile, SymbolCache), ProbeError> {
        self.handle_process_events();
        self.drain()?;
        self.take_back_spooled();
        let stacks = self.referenced_stacks(std::iter::empty(), false);
        // A thread asleep holds the ids of the stack it blocked in until it wakes and is
        // counted: those stay named however long it sleeps.
        let held = match self.scheduler {
            true => self.probes.threads(false)?,
            false => Vec::new(),
        };
        let held_user = held.iter().map(|(_, state)| state.off_cpu.user_stack_id);
        let held_kernel = held
            .iter()
            .flat_map(|(_, state)| [state.off_cpu.kernel_stack_id, state.pending.kernel_stack_id]);
        stack_ages.named(
            stacks
                .user
                .keys()
                .copied()
                .chain(held_user.filter_map(|id| u32::try_from(id).ok())),
            stacks
                .kernel
                .keys()
                .copied()
                .chain(held_kernel.filter_map(|id| u32::try_from(id).ok())),
        );
        let collected = Collected {
            stack_sampling: None,
            jit: None,
            spaces: std::mem::take(&mut self.spaces),
            processes: ProcessTable {
                processes: self.processes.processes.clone(),
                exited: Default::default(),
            },
            counts: std::mem::take(&mut self.counts),
            offcpu: std::mem::take(&mut self.offcpu),
            threads: Vec::new(),
            io: std::mem::take(&mut self.io),
            files: std::mem::take(&mut self.files),
            io_extras: IoExtras::default(),
            allocations: None,
            stacks,
            counters: self.probes.counters()?,
            first_sample_ns: None,
            unwind: None,
            memory_cap_dropped: std::mem::take(&mut self.memory_cap_dropped),
            detaching: None,
        };
        let (profile, symbols) = collected.profile_with(run, symbols);
        self.spaces = collected.spaces;
        self.files = collected.files;
        Ok((profile, symbols))
    }

    fn kept(&self) -> Kept {
        Kept {
            stacks: self.stacks.user.len() + self.stacks.kernel.len(),
            processes: self.processes.processes.len(),
        }
    }

    /// Lets go of the stacks no window named for a while, in the kernel's record of stacks
    /// stored, then, a window later, here.
    fn retire_idle_stacks(&mut self, stack_ages: &mut StackAges) -> Result<(), ProbeError> {
        let (retiring, dropped) = stack_ages.retire(
            self.stacks.user.keys().copied(),
            self.stacks.kernel.keys().copied(),
        );
        self.probes
            .forget_stored_stacks(&retiring.user, &retiring.kernel)?;
        for id in &dropped.user {
            self.stacks.user.remove(id);
        }
        for id in &dropped.kernel {
            self.stacks.kernel.remove(id);
        }
        Ok(())
    }

    /// Processes that exited are named in no later window: what was kept of them goes (the
    /// objects they mapped stay for the others).
    fn forget_exited_processes(&mut self) {
        let exited: Vec<u32> = self
            .processes
            .processes
            .keys()
            .copied()
            .filter(|&pid| !procfs::is_alive(pid))
            .collect();
        for pid in exited {
            self.processes.processes.remove(&pid);
            self.processes.exited.remove(&pid);
            self.spaces.forget(pid);
            self.files.forget(pid);
        }
        self.exited_threads.clear();
        self.representatives.clear();
    }
}

/// Gives the memory the old symbol cache held back to the system: the allocator keeps freed
/// memory for reuse, and at the first renewal bench-agent saw RSS step from 48.7 to 76.6 MiB
/// without this, and fall from 47.1 to 40.0 MiB with it.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: glibc's malloc_trim only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
