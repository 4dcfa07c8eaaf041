//! `profiler agent`: continuous profiling in windows, each sent to an OpenTelemetry collector
//! as OTLP profiles. Collection runs on the main thread ([`collect::run_windows`]); delivery
//! on its own, so a slow or absent backend never holds collection up: windows queue (in the
//! spool folder, or in memory) and go in order, with backoff, when it answers again.

mod queue;
mod send;

use std::{
    process::ExitCode,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use self::{
    queue::Queue,
    send::{Failure, Otlp},
};
use crate::{
    cli::AgentArgs,
    collect::{self, Window, config::TargetSpec},
    model::{EventKind, Profile},
    output::OutputDir,
    render::otlp::{Sender, export_request},
};

/// Waits between attempts while the backend does not answer: doubling from the first, up
/// to the last.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A window on its way to the delivery thread.
struct Outgoing {
    body: Vec<u8>,
    /// For the window's log line.
    samples: u64,
    processes: usize,
    /// Events the kernel side lost so far.
    lost: u64,
    last: bool,
}

/// What delivery has done, for the log lines.
#[derive(Default)]
struct Delivered {
    windows: u64,
    sent: u64,
    refused: u64,
}

pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let spec = match args.all {
        true => TargetSpec::System,
        false => TargetSpec::Attach {
            pids: args.pids.clone(),
            children: true,
        },
    };
    let config = args.collect.run_config(args.frequency, None, None);
    if config.events.contains(&EventKind::Alloc) {
        bail!(
            "the agent collects cpu, offcpu and io; for allocations, profile a run with \
             `profiler attach PID --events alloc`"
        );
    }
    let otlp = Otlp::new(&args.otlp, args.compression).map_err(anyhow::Error::msg)?;
    // The spool is checked before the kernel is touched, as an output folder is.
    let spool = args
        .spool
        .as_deref()
        .map(|path| {
            OutputDir::prepare(path)
                .with_context(|| format!("cannot use spool folder {}", path.display()))
        })
        .transpose()?;
    let queue = Queue::open(spool, args.spool_max).context("cannot read the spool folder")?;
    if !queue.is_empty() {
        log::warn!(
            "{} windows ({} bytes) waiting from an earlier run go first",
            queue.len(),
            queue.bytes()
        );
    }
    let host = host_name();
    let labels = args.labels;
    let (outgoing, incoming) = mpsc::channel::<Outgoing>();
    let delivery = std::thread::Builder::new()
        .name("delivery".into())
        .spawn(move || deliver(&incoming, queue, &otlp))
        .context("cannot start the delivery thread")?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let compression = args.compression;
    let each = move |profile: Profile, window: Window| {
        let request = export_request(
            &profile,
            &Sender {
                host: &host,
                labels: &labels,
            },
        );
        let message = prost::Message::encode_to_vec(&request);
        let samples = profile
            .samples
            .values()
            .flatten()
            .map(|sample| sample.count.unwrap_or(sample.weight))
            .sum();
        let lost = profile.losses.sample_map_full
            + profile.losses.offcpu_map_full
            + profile.losses.io_map_full
            + profile.losses.memory_cap_dropped;
        let _ = outgoing.send(Outgoing {
            body: send::body(&message, compression),
            samples,
            processes: request.resource_profiles.len(),
            lost,
            last: matches!(window, Window::Last(_)),
        });
    };
    // The window callback owns the channel's sending end: when collection ends, delivery
    // learns it.
    let collected = runtime.block_on(collect::run_windows(spec, config, args.interval, each));
    let delivered = delivery.join();
    collected?;
    match delivered {
        Ok(true) => Ok(ExitCode::SUCCESS),
        Ok(false) => Ok(ExitCode::FAILURE),
        Err(_) => bail!("the delivery thread failed"),
    }
}

/// The host's name, as `host.name` is.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_default()
}

/// Sends the windows that arrive, in order, each as soon as those before it went; while the
/// backend does not answer, they wait in `queue` and are tried again with backoff. When the
/// last window came, the rest get one more try and what stays waits in the spool. Returns
/// whether nothing was lost that a spool would keep.
fn deliver(incoming: &mpsc::Receiver<Outgoing>, mut queue: Queue, otlp: &Otlp) -> bool {
    let mut delivered = Delivered::default();
    let mut backoff = FIRST_BACKOFF;
    let mut retry_at: Option<Instant> = None;
    let mut last = false;
    loop {
        let wait = retry_at.map(|at| at.saturating_duration_since(Instant::now()));
        let arrived = match wait {
            _ if last => None,
            Some(wait) => match incoming.recv_timeout(wait) {
                Ok(window) => Some(window),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    last = true;
                    None
                }
            },
            None => match incoming.recv() {
                Ok(window) => Some(window),
                Err(_) => {
                    last = true;
                    None
                }
            },
        };
        let mut line = None;
        if let Some(window) = arrived {
            delivered.windows += 1;
            last |= window.last;
            line = Some((window.samples, window.processes, window.lost));
            queue.push(window.body);
        }
        let due = last || retry_at.is_none_or(|at| Instant::now() >= at);
        if due {
            retry_at = None;
            while let Some(body) = queue.front() {
                match otlp.send(&body) {
                    Ok(()) => {
                        delivered.sent += 1;
                        backoff = FIRST_BACKOFF;
                        queue.pop_front();
                    }
                    Err(Failure::Refused(reason)) => {
                        log::warn!("{} refused a window ({reason}): dropped", otlp.endpoint());
                        delivered.refused += 1;
                        queue.pop_front();
                    }
                    Err(Failure::Retry { reason, after }) => {
                        let wait = after.unwrap_or(backoff).min(MAX_BACKOFF);
                        log::warn!(
                            "cannot send to {} ({reason}); {} windows wait, next try in {:.0} s",
                            otlp.endpoint(),
                            queue.len(),
                            wait.as_secs_f64()
                        );
                        retry_at = Some(Instant::now() + wait);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        break;
                    }
                }
            }
        }
        if let Some((samples, processes, lost)) = line {
            eprintln!(
                "profiler agent: window {}: {samples} samples from {processes} processes; \
                 sent {}, waiting {} ({} bytes), dropped {}, refused {}; events lost {lost}",
                delivered.windows,
                delivered.sent,
                queue.len(),
                queue.bytes(),
                queue.dropped,
                delivered.refused
            );
        }
        if last {
            if !queue.is_empty() {
                eprintln!(
                    "profiler agent: stopping with {} windows unsent ({} bytes){}",
                    queue.len(),
                    queue.bytes(),
                    if queue.is_spooled() {
                        ": they stay in the spool for the next run"
                    } else {
                        ": lost (give --spool DIR to keep them)"
                    }
                );
            }
            return queue.is_empty() || queue.is_spooled();
        }
    }
}
