//! `profiler agent`: continuous profiling in windows, each sent to an OpenTelemetry collector
//! as OTLP profiles and/or pushed to Pyroscope as pprof. Collection runs on the main thread
//! ([`collect::run_windows`]); delivery to each backend on a thread of its own, so a slow or
//! absent backend never holds collection up: its requests queue (in the spool folder, or in
//! memory) and go in order, with backoff, when it answers again.

mod pyroscope;
mod queue;
mod send;

use std::{
    path::Path,
    process::ExitCode,
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use self::{
    pyroscope::Pyroscope,
    queue::Queue,
    send::{Failure, Otlp},
};
use crate::{
    cli::AgentArgs,
    collect::{self, config::TargetSpec},
    model::{EventKind, Profile},
    output::OutputDir,
    render::otlp::{Sender, export_request},
};

/// Waits between attempts while a backend does not answer: doubling from the first, up to
/// the last.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Where windows go.
enum Backend {
    Otlp(Otlp),
    Pyroscope(Pyroscope),
}

impl Backend {
    /// Its name, and its spool subfolder's.
    fn name(&self) -> &'static str {
        match self {
            Backend::Otlp(_) => "otlp",
            Backend::Pyroscope(_) => "pyroscope",
        }
    }

    fn endpoint(&self) -> &str {
        match self {
            Backend::Otlp(otlp) => otlp.endpoint(),
            Backend::Pyroscope(pyroscope) => pyroscope.endpoint(),
        }
    }

    fn send(&self, request: &[u8]) -> Result<(), Failure> {
        match self {
            Backend::Otlp(otlp) => otlp.send(request),
            Backend::Pyroscope(pyroscope) => pyroscope.send(request),
        }
    }
}

/// Which backend, to make its requests.
#[derive(Clone, Copy)]
enum Kind {
    Otlp,
    Pyroscope,
}

impl Backend {
    fn kind(&self) -> Kind {
        match self {
            Backend::Otlp(_) => Kind::Otlp,
            Backend::Pyroscope(_) => Kind::Pyroscope,
        }
    }
}

/// A backend's delivery thread and where its requests go in.
struct Delivery {
    requests: mpsc::Sender<Vec<Vec<u8>>>,
    thread: JoinHandle<bool>,
    kind: Kind,
}

impl Delivery {
    /// Starts delivery to `backend`, its waiting requests in `spool/NAME` (what an earlier run
    /// left there goes first) or in memory.
    fn start(backend: Backend, spool: Option<&Path>, max_bytes: u64) -> anyhow::Result<Self> {
        let (name, kind) = (backend.name(), backend.kind());
        let spool = spool
            .map(|path| {
                let path = path.join(name);
                OutputDir::prepare_private(&path)
                    .with_context(|| format!("cannot use spool folder {}", path.display()))
            })
            .transpose()?;
        let queue = Queue::open(spool, max_bytes).context("cannot read the spool folder")?;
        if !queue.is_empty() {
            eprintln!(
                "profiler agent: {name}: {} requests ({} bytes) from an earlier run go first",
                queue.len(),
                queue.bytes()
            );
        }
        let (requests, incoming) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || deliver(&incoming, queue, &backend))
            .context("cannot start a delivery thread")?;
        Ok(Delivery {
            requests,
            thread,
            kind,
        })
    }
}

pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let spec = match args.select.selection() {
        Some(selection) => TargetSpec::System(selection),
        None => TargetSpec::Attach {
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
    // Backends and spools are checked before the kernel is touched, as output folders are.
    let mut backends = Vec::new();
    if let Some(url) = &args.otlp {
        backends.push(Backend::Otlp(
            Otlp::new(url, args.compression).map_err(anyhow::Error::msg)?,
        ));
    }
    if let Some(url) = &args.pyroscope {
        backends.push(Backend::Pyroscope(
            Pyroscope::new(url).map_err(anyhow::Error::msg)?,
        ));
    }
    let mut deliveries = Vec::new();
    for backend in backends {
        deliveries.push(Delivery::start(
            backend,
            args.spool.as_deref(),
            args.spool_max,
        )?);
    }
    let host = host_name();
    let labels = args.labels;
    let compression = args.compression;
    let senders: Vec<(Kind, mpsc::Sender<Vec<Vec<u8>>>)> = deliveries
        .iter()
        .map(|delivery| (delivery.kind, delivery.requests.clone()))
        .collect();
    let mut windows = 0;
    // The window callback owns the senders: when collection ends, delivery learns it.
    let each = move |profile: Profile, kept: Option<collect::Kept>| {
        windows += 1;
        let samples: u64 = profile
            .samples
            .values()
            .flatten()
            .map(|sample| sample.count.unwrap_or(sample.weight))
            .sum();
        let processes = profile
            .samples
            .values()
            .flatten()
            .map(|sample| sample.pid)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        // The kernel's counts, since the start.
        let losses = &profile.losses;
        let lost = losses.sample_map_full + losses.offcpu_map_full + losses.io_map_full;
        let kept = kept.map_or_else(String::new, |kept| {
            format!(
                "; kept {} stacks, {} processes",
                kept.stacks, kept.processes
            )
        });
        eprintln!(
            "profiler agent: window {windows}: {samples} samples from {processes} processes; \
             events lost so far {lost}{kept}"
        );
        for (kind, sender) in &senders {
            let requests = match kind {
                Kind::Otlp => {
                    let request = export_request(
                        &profile,
                        &Sender {
                            host: &host,
                            labels: &labels,
                        },
                    );
                    vec![send::body(
                        &prost::Message::encode_to_vec(&request),
                        compression,
                    )]
                }
                Kind::Pyroscope => pyroscope::requests(&profile, &host, &labels),
            };
            let _ = sender.send(requests);
        }
    };
    let mut threads = Vec::new();
    for delivery in deliveries {
        drop(delivery.requests);
        threads.push(delivery.thread);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let collected = runtime.block_on(collect::run_windows(spec, config, args.interval, each));
    let mut kept = true;
    for thread in threads {
        kept &= thread.join().unwrap_or(false);
    }
    collected?;
    Ok(match kept {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    })
}

/// The host's name, as `host.name` is.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_default()
}

/// What delivery has done, for its log lines.
#[derive(Default)]
struct Delivered {
    sent: u64,
    refused: u64,
}

/// Sends the requests that arrive, in order, each as soon as those before it went; while the
/// backend does not answer, they wait in `queue` and are tried again with backoff. When
/// collection ended, the rest get one more try and what stays waits in the spool. Returns
/// whether nothing was lost that a spool would keep.
fn deliver(incoming: &mpsc::Receiver<Vec<Vec<u8>>>, mut queue: Queue, backend: &Backend) -> bool {
    let name = backend.name();
    let mut delivered = Delivered::default();
    let mut backoff = FIRST_BACKOFF;
    let mut retry_at: Option<Instant> = None;
    let mut last = false;
    loop {
        let arrived = match retry_at {
            Some(at) => match incoming.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(requests) => Some(requests),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    last = true;
                    None
                }
            },
            None => match incoming.recv() {
                Ok(requests) => Some(requests),
                Err(_) => {
                    last = true;
                    None
                }
            },
        };
        let window = arrived.is_some();
        for request in arrived.into_iter().flatten() {
            queue.push(request);
        }
        if last || retry_at.is_none_or(|at| Instant::now() >= at) {
            retry_at = None;
            while let Some(request) = queue.front() {
                match backend.send(&request) {
                    Ok(()) => {
                        delivered.sent += 1;
                        backoff = FIRST_BACKOFF;
                        queue.pop_front();
                    }
                    Err(Failure::Refused(reason)) => {
                        log::warn!(
                            "{} refused a request ({reason}): dropped",
                            backend.endpoint()
                        );
                        delivered.refused += 1;
                        queue.pop_front();
                    }
                    Err(Failure::Retry { reason, after }) => {
                        let wait = after.unwrap_or(backoff).min(MAX_BACKOFF);
                        log::warn!(
                            "cannot send to {} ({reason}); {} requests wait, next try in {:.0} s",
                            backend.endpoint(),
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
        if window || last {
            eprintln!(
                "profiler agent: {name}: sent {}, waiting {} ({} bytes), dropped {}, refused {}",
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
                    "profiler agent: {name}: stopping with {} requests unsent ({} bytes){}",
                    queue.len(),
                    queue.bytes(),
                    match queue.is_spooled() {
                        true => ": they stay in the spool for the next run",
                        false => ": lost (give --spool DIR to keep them)",
                    }
                );
            }
            return queue.is_empty() || queue.is_spooled();
        }
    }
}
