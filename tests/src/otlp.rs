//! An OTLP/HTTP receiver for the agent's tests: `tests/otlp/receiver.py`, which decodes each
//! request with the official opentelemetry-proto classes (PyPI, in `tests/otlp/venv`, made by
//! the test set-up) and prints it as a JSON line, read here. It takes Pyroscope pushes too,
//! each body saved in a folder of its own.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::{Spawned, wait_for};

/// Where OTLP profiles are posted.
const OTLP_PATH: &str = "/v1development/profiles";

fn otlp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("otlp")
}

fn python() -> PathBuf {
    otlp_dir().join("venv/bin/python")
}

/// Whether the receiver's Python environment is there. Prints why not and returns false to
/// skip, or panics under `CI=true`.
pub fn have_otlp_tools(test: &str) -> bool {
    let importable = Command::new(python())
        .args([
            "-c",
            "import opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2",
        ])
        .output()
        .is_ok_and(|output| output.status.success());
    if importable {
        return true;
    }
    let missing = "tests/otlp/venv with opentelemetry-proto (`sudo -E cargo xtask test` makes it)";
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("{test}: needs {missing}, and CI=true forbids skipping");
    }
    eprintln!("skipping {test}: needs {missing}");
    false
}

/// A running receiver and the requests it decoded, in arrival order.
pub struct Receiver {
    process: Spawned,
    port: u16,
    requests: Arc<Mutex<Vec<serde_json::Value>>>,
    /// Where Pyroscope pushes are saved.
    pushes: Arc<tempfile::TempDir>,
}

impl Receiver {
    /// Starts a receiver on `port` (0: any free one).
    pub fn start(port: u16) -> Receiver {
        let pushes = Arc::new(tempfile::tempdir().expect("a temporary folder"));
        Self::start_into(port, Arc::default(), pushes)
    }

    /// Starts a receiver on the port of one stopped before, adding to its requests.
    pub fn restart(stopped: &Receiver) -> Receiver {
        Self::start_into(
            stopped.port,
            stopped.requests.clone(),
            stopped.pushes.clone(),
        )
    }

    fn start_into(
        port: u16,
        requests: Arc<Mutex<Vec<serde_json::Value>>>,
        pushes: Arc<tempfile::TempDir>,
    ) -> Receiver {
        let mut process = Spawned::new(
            Command::new(python())
                .arg(otlp_dir().join("receiver.py"))
                .arg(port.to_string())
                .arg(pushes.path())
                .stdout(Stdio::piped()),
        );
        let mut lines = BufReader::new(process.0.stdout.take().expect("piped")).lines();
        let first = lines
            .next()
            .and_then(Result::ok)
            .expect("the receiver prints its port");
        let port = serde_json::from_str::<serde_json::Value>(&first).expect("JSON")["port"]
            .as_u64()
            .expect("a port") as u16;
        let into = requests.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let request = serde_json::from_str(&line).expect("a JSON line");
                into.lock().unwrap().push(request);
            }
        });
        Receiver {
            process,
            port,
            requests,
            pushes,
        }
    }

    /// The address to give `--otlp`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The OTLP requests decoded so far.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        self.of_path(OTLP_PATH)
    }

    /// The Pyroscope pushes so far: their query parameters and the file their body is in.
    pub fn pushes(&self) -> Vec<serde_json::Value> {
        self.of_path("/ingest")
    }

    fn of_path(&self, path: &str) -> Vec<serde_json::Value> {
        let requests = self.requests.lock().unwrap();
        requests
            .iter()
            .filter(|request| request["path"] == path)
            .cloned()
            .collect()
    }

    /// Waits up to `timeout` for `count` OTLP requests.
    pub fn wait_for_requests(&self, count: usize, timeout: Duration) -> bool {
        wait_for(timeout, || self.requests().len() >= count)
    }

    /// Stops it: its port refuses connections until a restart.
    pub fn stop(&mut self) {
        self.process.signal(libc::SIGKILL);
        let _ = self.process.0.wait();
    }
}

/// A port nothing listens on (one the kernel just gave out and took back).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Samples of every profile of every resource of `requests`: (resource attributes, sample
/// type, frames root first, value).
pub fn samples(
    requests: &[serde_json::Value],
) -> Vec<(serde_json::Value, String, Vec<String>, u64)> {
    let mut found = Vec::new();
    for request in requests {
        for resource in request["resources"].as_array().into_iter().flatten() {
            for profile in resource["profiles"].as_array().into_iter().flatten() {
                for sample in profile["samples"].as_array().into_iter().flatten() {
                    let frames = sample["frames"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|frame| frame.as_str().map(str::to_owned))
                        .collect();
                    found.push((
                        resource["attributes"].clone(),
                        profile["sample_type"].as_str().unwrap_or("").to_owned(),
                        frames,
                        sample["value"].as_u64().unwrap_or(0),
                    ));
                }
            }
        }
    }
    found
}

/// The (start, duration) of each request's first profile, ns, in arrival order.
pub fn window_times(requests: &[serde_json::Value]) -> Vec<(u64, u64)> {
    requests
        .iter()
        .filter_map(|request| {
            let profile = &request["resources"][0]["profiles"][0];
            Some((
                profile["time_unix_nano"].as_u64()?,
                profile["duration_nano"].as_u64()?,
            ))
        })
        .collect()
}
