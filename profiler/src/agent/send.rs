//! Sending a window to an OpenTelemetry collector: OTLP/HTTP, protobuf, one POST per window;
//! what the answer says about retrying is the OTLP specification's.

use std::time::Duration;

use crate::cli::Compression;

/// The collector's path for the development profiles signal.
const PROFILES_PATH: &str = "/v1development/profiles";

/// How long one request may take, connecting included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a window was not delivered.
#[derive(Debug)]
pub enum Failure {
    /// The backend is unreachable or busy: send it again later (after `after`, when it said).
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// The backend refused it for good (a bad request): sending it again would not help.
    Refused(String),
}

/// An OTLP/HTTP endpoint.
pub struct Otlp {
    endpoint: String,
    compression: Compression,
    http: ureq::Agent,
}

impl Otlp {
    /// The endpoint under a collector's base address (`http://host:4318`).
    pub fn new(base: &str, compression: Compression) -> Result<Otlp, String> {
        let base = base_address(base)?;
        Ok(Otlp {
            endpoint: format!("{base}{PROFILES_PATH}"),
            compression,
            http: http_agent(REQUEST_TIMEOUT),
        })
    }

    /// Where windows go.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

/// The body of a request carrying `message` (an encoded export request), compressed: what
/// the spool keeps.
pub fn body(message: &[u8], compression: Compression) -> Vec<u8> {
    match compression {
        Compression::Gzip => {
            use std::io::Write as _;
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder
                .write_all(message)
                .and_then(|()| encoder.finish())
                .expect("writing to memory")
        }
        Compression::None => message.to_vec(),
    }
}

impl Otlp {
    /// POSTs one window's body.
    pub fn send(&self, body: &[u8]) -> Result<(), Failure> {
        let mut request = self
            .http
            .post(&self.endpoint)
            .header("Content-Type", "application/x-protobuf");
        if self.compression == Compression::Gzip {
            request = request.header("Content-Encoding", "gzip");
        }
        let response = request.send(body).map_err(|err| Failure::Retry {
            reason: err.to_string(),
            after: None,
        })?;
        status_failure(&response)
    }
}

/// A backend's base address, checked: `http://HOST:PORT` or `https://...`, no trailing `/`.
pub fn base_address(base: &str) -> Result<&str, String> {
    let base = base.trim_end_matches('/');
    let scheme_ok = base
        .split_once("://")
        .is_some_and(|(scheme, rest)| matches!(scheme, "http" | "https") && !rest.is_empty());
    match scheme_ok {
        true => Ok(base),
        false => Err(format!(
            "`{base}`: give the address as http://HOST:PORT or https://HOST:PORT"
        )),
    }
}

/// The HTTP client of a destination: statuses are answers to read, not errors; redirects are
/// not followed (a body goes where it was sent, or nowhere).
pub fn http_agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("profiler/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// What a response's status says, as OTLP/HTTP (and Pyroscope) mean it: 2xx delivered;
/// 429, 502, 503 and 504 to retry (after `Retry-After` seconds, when given); the rest refused.
pub fn status_failure(response: &ureq::http::Response<ureq::Body>) -> Result<(), Failure> {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("Retry-After")
        .and_then(|value| value.to_str().ok()?.trim().parse().ok())
        .map(Duration::from_secs);
    match status {
        200..=299 => Ok(()),
        429 | 502 | 503 | 504 => Err(Failure::Retry {
            reason: format!("HTTP {status}"),
            after: retry_after,
        }),
        _ => Err(Failure::Refused(format!("HTTP {status}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_is_the_profiles_path_under_the_address() {
        let otlp = Otlp::new("http://localhost:4318/", Compression::None).unwrap();
        assert_eq!(
            otlp.endpoint(),
            "http://localhost:4318/v1development/profiles"
        );
        for wrong in ["localhost:4318", "ftp://x", "http://", ""] {
            assert!(Otlp::new(wrong, Compression::None).is_err(), "{wrong}");
        }
    }

    #[test]
    fn gzip_bodies_decompress_to_the_message() {
        use std::io::Read as _;
        let body = body(b"message", Compression::Gzip);
        let mut message = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut message)
            .unwrap();
        assert_eq!(message, b"message");
    }
}
