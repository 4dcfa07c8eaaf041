//! Pushing a window to Grafana Pyroscope's ingestion API (`POST /ingest`): one request per
//! process, its samples as pprof (gzipped), the service and labels in the `name` parameter
//! (`SERVICE{key=value,...}`), the window's bounds in `from` and `until`.

use std::time::Duration;

use super::send::{Failure, REQUEST_TIMEOUT, status_failure};
use crate::{
    model::{Process, Profile},
    render::{
        export::pprof_profile,
        otlp::{SERVICE_NAME, service_name},
    },
};

/// A Pyroscope server.
pub struct Pyroscope {
    endpoint: String,
    http: ureq::Agent,
}

/// A label key as Pyroscope takes them: letters, digits and `_`, not starting with a digit.
fn label_key(key: &str) -> String {
    let mut cleaned: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if cleaned.is_empty() || cleaned.starts_with(|c: char| c.is_ascii_digit()) {
        cleaned.insert(0, '_');
    }
    cleaned
}

/// A label value or service name without the characters `name`'s syntax uses.
fn label_value(value: &str) -> String {
    value
        .chars()
        .map(|c| match c {
            '{' | '}' | ',' | '=' | '"' | '\n' | '\r' => '_',
            c => c,
        })
        .collect()
}

/// `SERVICE{key=value,...}` for a process.
fn application_name(process: &Process, host: &str, labels: &[(String, String)]) -> String {
    let service = service_name(process, labels);
    let mut pairs = vec![
        ("host_name".to_owned(), label_value(host)),
        ("pid".to_owned(), process.pid.to_string()),
    ];
    if let Some(container) = &process.container {
        pairs.push(("container_id".to_owned(), label_value(container)));
    }
    for (key, value) in labels.iter().filter(|(key, _)| key != SERVICE_NAME) {
        pairs.push((label_key(key), label_value(value)));
    }
    let pairs: Vec<String> = pairs
        .into_iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    format!("{}{{{}}}", label_value(&service), pairs.join(","))
}

/// The window's requests, one per process with samples: each the query string, a newline,
/// and the gzipped pprof (what the spool keeps, what [`Pyroscope::send`] takes).
pub fn requests(profile: &Profile, host: &str, labels: &[(String, String)]) -> Vec<Vec<u8>> {
    let from = profile.run.start_unix_ms / 1000;
    let until = (profile.run.start_unix_ms + (profile.run.duration_secs * 1000.0) as u64)
        .div_ceil(1000)
        .max(from + 1);
    let mut pids: Vec<u32> = profile
        .samples
        .values()
        .flatten()
        .map(|sample| sample.pid)
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids.into_iter()
        .map(|pid| {
            let of_process = profile.of_process(pid);
            let process = of_process.processes.first().cloned().unwrap_or(Process {
                pid,
                name: pid.to_string(),
                command: Vec::new(),
                container: None,
            });
            let query = format!(
                "name={}&from={from}&until={until}&format=pprof&sampleRate={}&spyName=profiler",
                percent_encode(&application_name(&process, host, labels)),
                profile.run.frequency_hz
            );
            let pprof = prost::Message::encode_to_vec(&pprof_profile(&of_process));
            let mut request = query.into_bytes();
            request.push(b'\n');
            request.extend(super::send::body(&pprof, crate::cli::Compression::Gzip));
            request
        })
        .collect()
}

/// `text` for a URL's query: unreserved characters as they are, the rest `%XX`.
fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                encoded.push(byte as char);
            }
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}

impl Pyroscope {
    /// The ingestion endpoint under a server's address (`http://host:4040`).
    pub fn new(base: &str) -> Result<Pyroscope, String> {
        let base = super::send::base_address(base)?;
        Ok(Pyroscope {
            endpoint: format!("{base}/ingest"),
            http: super::send::http_agent(REQUEST_TIMEOUT),
        })
    }

    /// Where requests go.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// POSTs one request made by [`requests`].
    pub fn send(&self, request: &[u8]) -> Result<(), Failure> {
        let Some(split) = request.iter().position(|&b| b == b'\n') else {
            return Err(Failure::Refused("not a request of this agent".into()));
        };
        let (query, body) = (&request[..split], &request[split + 1..]);
        let query = std::str::from_utf8(query)
            .map_err(|_| Failure::Refused("not a request of this agent".into()))?;
        let response = self
            .http
            .post(&format!("{}?{query}", self.endpoint))
            .header("Content-Type", "binary/octet-stream")
            .send(body)
            .map_err(|err| Failure::Retry {
                reason: err.to_string(),
                after: None::<Duration>,
            })?;
        status_failure(&response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::sample_profile;

    #[test]
    fn names_carry_the_service_and_clean_labels() {
        let process = Process {
            pid: 42,
            name: "demo".into(),
            command: vec!["/usr/bin/demo".into()],
            container: Some("c0ffee".into()),
        };
        let labels = [
            ("service.name".to_owned(), "check,out".to_owned()),
            ("deployment.environment".to_owned(), "prod".to_owned()),
        ];
        assert_eq!(
            application_name(&process, "db-1", &labels),
            "check_out{host_name=db-1,pid=42,container_id=c0ffee,deployment_environment=prod}"
        );
        assert_eq!(
            application_name(&process, "h", &[]),
            "demo{host_name=h,pid=42,container_id=c0ffee}"
        );
        assert_eq!(label_key("9x"), "_9x");
    }

    #[test]
    fn one_request_per_process_with_its_window() {
        let profile = sample_profile();
        let requests = requests(&profile, "h", &[]);
        assert_eq!(requests.len(), 1);
        let split = requests[0].iter().position(|&b| b == b'\n').unwrap();
        let query = std::str::from_utf8(&requests[0][..split]).unwrap();
        assert_eq!(
            query,
            "name=demo%7Bhost_name%3Dh%2Cpid%3D42%7D&from=1700000000&until=1700000002\
             &format=pprof&sampleRate=99&spyName=profiler"
        );
        assert_eq!(&requests[0][split + 1..split + 3], b"\x1f\x8b", "gzipped");
    }
}
