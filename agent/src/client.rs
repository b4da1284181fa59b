//! A blocking HTTP client for the server's API (the agent is a CLI: no runtime).
//!
//! Every request has a timeout, and transient failures (connect errors, timeouts,
//! 5xx answers, a body cut short) are retried with exponential backoff. Errors name
//! the URL and the server's own `{"error": {kind, message}}` when there is one.

use std::io::Read;
use std::time::Duration;

use kmodforge_api::names::{KernelRelease, ModuleName, ModuleVersion};
use kmodforge_api::wire::{
    AddModuleResponse, BuildRequest, BuildResponse, ErrorBody, ErrorKind, Manifest,
};
use reqwest::blocking::{RequestBuilder, Response};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::config::HttpSettings;
use crate::exitcode::Exit;

/// First backoff delay; doubled after each failed attempt.
const BACKOFF_START: Duration = Duration::from_millis(500);
/// Longest backoff delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Why a request failed. Small (the details of an error answer are boxed), so
/// that the errors carrying it stay cheap to return.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer: connect error, timeout, connection reset (after the retries).
    #[error("server unreachable: {target}: {cause}")]
    Unreachable { target: String, cause: String },
    /// The answer's body stopped before its end: the connection closed mid-body,
    /// short of its `Content-Length` (after the retries). Nothing of it is used.
    #[error("{}", cut_message(.0))]
    CutShort(Box<CutShort>),
    /// The server answered with an error.
    #[error("{0}")]
    Status(Box<ErrorAnswer>),
    /// The answer is not what the API promises.
    #[error("{target}: unexpected answer: {cause}")]
    Protocol { target: String, cause: String },
    /// The client could not be set up (TLS backend, ...).
    #[error("HTTP client: {0}")]
    Setup(String),
    /// 401 or 403: no token, a token the server does not accept, or one without
    /// the right. A configuration problem of this host, never retried.
    #[error("{}", auth_message(.0))]
    Auth(Box<AuthRefusal>),
}

/// An answer whose body was cut short.
#[derive(Debug)]
pub struct CutShort {
    /// `METHOD URL`.
    pub target: String,
    /// Bytes that arrived, and the `Content-Length` when the answer had one.
    pub received: u64,
    pub expected: Option<u64>,
    /// The reader's error, one line.
    pub cause: String,
    /// Attempts made, all cut (set once the retries are spent).
    pub attempts: u32,
}

fn cut_message(c: &CutShort) -> String {
    let of = c.expected.map(|n| format!(" of {n}")).unwrap_or_default();
    let tries = match c.attempts {
        0 | 1 => String::new(),
        n => format!(", in each of {n} attempts"),
    };
    format!(
        "{}: the answer was cut short: the connection closed after {}{of} bytes{tries} ({})",
        c.target, c.received, c.cause
    )
}

/// A 401/403 answer and whether a token was sent.
#[derive(Debug)]
pub struct AuthRefusal {
    pub answer: ErrorAnswer,
    pub had_token: bool,
}

fn auth_message(r: &AuthRefusal) -> String {
    let a = &r.answer;
    match (a.status, r.had_token) {
        (401, false) => format!(
            "{}: the server requires a token and none is configured: set `token_file` in the \
             agent's config (or pass --token-file FILE) to a file holding a `read` token ({})",
            a.target, a.message
        ),
        (401, true) => format!(
            "{}: the server refused the configured token (revoked, mistyped, or for another \
             server): {}",
            a.target, a.message
        ),
        _ => format!(
            "{}: the configured token is not allowed to: {}",
            a.target, a.message
        ),
    }
}

/// An error answer: the server's `{"error": {kind, message, log_tail?}}`.
#[derive(Debug, thiserror::Error)]
#[error("{target}: {status} {}: {message}", shown_kind(.kind, .status))]
pub struct ErrorAnswer {
    /// `METHOD URL`.
    pub target: String,
    pub status: u16,
    /// The server's error kind; `None` when the answer was not its JSON (a proxy's).
    pub kind: Option<ErrorKind>,
    pub message: String,
    pub log_tail: Option<String>,
}

/// The kind for a message: the server's, else the status's reason (`bad_gateway`).
fn shown_kind(kind: &Option<ErrorKind>, status: &u16) -> String {
    match kind {
        Some(k) => k.to_string(),
        None => StatusCode::from_u16(*status).map_or_else(|_| "error".to_string(), reason),
    }
}

impl ClientError {
    /// Worth another attempt: no answer, or a 5xx.
    fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } | ClientError::CutShort(_) => true,
            ClientError::Status(a) => a.status >= 500,
            _ => false,
        }
    }

    /// The exit code this error maps to.
    pub fn exit(&self) -> Exit {
        match self {
            ClientError::Auth(_) => Exit::Usage,
            ClientError::Status(a) if a.status < 500 => Exit::BuildFailed,
            ClientError::Setup(_) => Exit::Usage,
            _ => Exit::Unreachable,
        }
    }

    /// True when the server did not answer at all.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }

    /// True when the server refused this host's token (or its absence).
    pub fn is_auth(&self) -> bool {
        matches!(self, ClientError::Auth(_))
    }
}

/// `delay` scaled by a factor in [0.5, 1.5): a fleet that upgrades at the same minute
/// does not retry in lockstep. The factor comes from the clock's nanoseconds and the
/// process id, different on every host and attempt (no cryptographic need here).
fn jittered(delay: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let seed = u64::from(nanos) ^ (u64::from(std::process::id()) << 20);
    let mixed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
    let factor = 0.5 + (mixed % 1000) as f64 / 1000.0;
    delay.mul_f64(factor)
}

/// One line for a reqwest error: what kind, then its innermost cause (reqwest's own
/// outer text repeats the URL and says little).
fn chain(e: &dyn std::error::Error) -> String {
    let mut innermost = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        innermost = s.to_string();
        src = s.source();
    }
    innermost.replace('\n', " ")
}

fn request_cause(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    format!("{what}: {}", chain(e))
}

/// A client bound to one server.
pub struct Client {
    http: reqwest::blocking::Client,
    base: String,
    settings: HttpSettings,
}

impl Client {
    /// A client for `base` (`http://host:port`, no trailing slash). With a CA file,
    /// HTTPS trusts that CA only (not the system's roots).
    pub fn new(base: &str, settings: &HttpSettings) -> Result<Client, ClientError> {
        let mut builder = reqwest::blocking::Client::builder()
            .connect_timeout(settings.connect_timeout)
            // Per-request timeouts instead: log streams and build waits run long.
            .timeout(None::<Duration>)
            .user_agent(concat!("kmodforge-agent/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &settings.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| ClientError::Setup(format!("ca_file: {}", chain(&e))))?;
            builder = builder.tls_certs_only(certs);
        }
        let http = builder.build().map_err(|e| ClientError::Setup(chain(&e)))?;
        Ok(Client {
            http,
            base: base.to_string(),
            settings: settings.clone(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn settings(&self) -> &HttpSettings {
        &self.settings
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn request(&self, method: Method, url: &str, timeout: Option<Duration>) -> RequestBuilder {
        let mut rb = self.http.request(method, url);
        if let Some(t) = timeout {
            rb = rb.timeout(t);
        }
        if let Some(token) = &self.settings.token {
            rb = rb.bearer_auth(token);
        }
        rb
    }

    /// Sends once; a non-2xx answer becomes [`ClientError::Status`].
    fn send(
        &self,
        method: &Method,
        url: &str,
        rb: RequestBuilder,
    ) -> Result<Response, ClientError> {
        let resp = rb.send().map_err(|e| ClientError::Unreachable {
            target: format!("{method} {url}"),
            cause: request_cause(&e),
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let err = status_error(method, url, resp);
        match err {
            ClientError::Status(answer)
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN =>
            {
                Err(ClientError::Auth(Box::new(AuthRefusal {
                    answer: *answer,
                    had_token: self.settings.token.is_some(),
                })))
            }
            other => Err(other),
        }
    }

    /// Runs `attempt` up to `1 + retries` times while it fails transiently.
    fn retrying<T>(
        &self,
        mut attempt: impl FnMut() -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let mut delay = BACKOFF_START;
        let mut left = self.settings.retries;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match attempt() {
                Err(e) if e.is_transient() && left > 0 => {
                    left -= 1;
                    std::thread::sleep(jittered(delay));
                    delay = (delay * 2).min(BACKOFF_MAX);
                }
                Err(ClientError::CutShort(mut c)) => {
                    c.attempts = attempts;
                    return Err(ClientError::CutShort(c));
                }
                other => return other,
            }
        }
    }

    /// A JSON request with retries; `body` is sent as JSON when given.
    fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        self.retrying(|| {
            let mut rb = self.request(method.clone(), &url, Some(self.settings.request_timeout));
            if let Some(b) = body {
                rb = rb.json(b);
            }
            let bytes = read_body(&method, &url, self.send(&method, &url, rb)?)?;
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
                target: format!("{method} {url}"),
                cause: format!("invalid JSON: {e}"),
            })
        })
    }

    /// `GET /v1/artifacts/{name}/{version}/{krel}`: the newest manifest, or None (404).
    pub fn manifest(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
        krel: &KernelRelease,
    ) -> Result<Option<Manifest>, ClientError> {
        let path = format!("/v1/artifacts/{name}/{version}/{krel}");
        match self.json(Method::GET, &path, None) {
            Ok(m) => Ok(Some(m)),
            Err(ClientError::Status(a))
                if a.status == 404 && a.kind == Some(ErrorKind::NotFound) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// `POST /v1/builds`: a cache hit, a joined build or a new one.
    pub fn submit_build(&self, req: &BuildRequest) -> Result<BuildResponse, ClientError> {
        let body = serde_json::to_value(req).map_err(|e| ClientError::Setup(e.to_string()))?;
        self.json(Method::POST, "/v1/builds", Some(&body))
    }

    /// `GET /v1/builds/{id}`.
    pub fn build(&self, id: &str) -> Result<BuildResponse, ClientError> {
        self.json(Method::GET, &format!("/v1/builds/{id}"), None)
    }

    /// `GET /v1/builds/{id}/log`: a reader of the log, live while the build runs
    /// (no retries; the stream is bounded by `build_wait`).
    pub fn log(&self, id: &str) -> Result<Response, ClientError> {
        let url = self.url(&format!("/v1/builds/{id}/log"));
        let rb = self.request(Method::GET, &url, Some(self.settings.build_wait));
        self.send(&Method::GET, &url, rb)
    }

    /// `GET .../files/{file}`: one `.ko`, with retries.
    pub fn file(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
        krel: &KernelRelease,
        file: &str,
    ) -> Result<Vec<u8>, ClientError> {
        let url = self.url(&format!(
            "/v1/artifacts/{name}/{version}/{krel}/files/{file}"
        ));
        self.retrying(|| {
            let rb = self.request(Method::GET, &url, Some(self.settings.request_timeout));
            read_body(&Method::GET, &url, self.send(&Method::GET, &url, rb)?)
        })
    }

    /// `GET /v1/keys/module-signing/{sha256}`: a module-signing certificate (DER).
    pub fn module_certificate(&self, sha256: &str) -> Result<Vec<u8>, ClientError> {
        let url = self.url(&format!("/v1/keys/module-signing/{sha256}"));
        self.retrying(|| {
            let rb = self.request(Method::GET, &url, Some(self.settings.request_timeout));
            read_body(&Method::GET, &url, self.send(&Method::GET, &url, rb)?)
        })
    }

    /// `GET /v1/keys`: the server's public keys.
    pub fn public_keys(&self) -> Result<Vec<kmodforge_api::wire::PublicKey>, ClientError> {
        self.json(Method::GET, "/v1/keys", None)
    }

    /// `PUT /v1/modules/{name}/{version}` with a tar.gz body (retried: the same
    /// content again is a 200).
    pub fn put_module(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
        body: &[u8],
    ) -> Result<AddModuleResponse, ClientError> {
        let url = self.url(&format!("/v1/modules/{name}/{version}"));
        let method = Method::PUT;
        self.retrying(|| {
            let rb = self
                .request(method.clone(), &url, Some(self.settings.request_timeout))
                .body(body.to_vec());
            let bytes = read_body(&method, &url, self.send(&method, &url, rb)?)?;
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
                target: format!("{method} {url}"),
                cause: format!("invalid JSON: {e}"),
            })
        })
    }
}

/// The whole body. A body cut short (the connection closed before its
/// `Content-Length`, or mid-body) is [`ClientError::CutShort`] (retried); the part
/// that arrived is dropped.
fn read_body(method: &Method, url: &str, mut resp: Response) -> Result<Vec<u8>, ClientError> {
    let expected = resp.content_length();
    let mut buf = Vec::new();
    let read = resp.read_to_end(&mut buf);
    let target = || format!("{method} {url}");
    let cut = |cause: String, received: usize| {
        ClientError::CutShort(Box::new(CutShort {
            target: target(),
            received: received as u64,
            expected,
            cause,
            attempts: 1,
        }))
    };
    match read {
        Ok(n) if expected.is_none_or(|len| len == n as u64) => Ok(buf),
        Ok(n) => Err(cut("fewer bytes than its Content-Length".into(), n)),
        Err(e) if expected.is_some() || !buf.is_empty() => Err(cut(chain(&e), buf.len())),
        Err(e) => Err(ClientError::Unreachable {
            target: target(),
            cause: format!("reading the answer: {}", chain(&e)),
        }),
    }
}

fn status_error(method: &Method, url: &str, resp: Response) -> ClientError {
    let status = resp.status();
    let text = resp.text().unwrap_or_default();
    let (kind, message, log_tail) = match serde_json::from_str::<ErrorBody>(&text) {
        Ok(b) => (Some(b.error.kind), b.error.message, b.error.log_tail),
        Err(_) => (
            None,
            text.lines()
                .next()
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect(),
            None,
        ),
    };
    ClientError::Status(Box::new(ErrorAnswer {
        target: format!("{method} {url}"),
        status: status.as_u16(),
        kind,
        message,
        log_tail,
    }))
}

fn reason(status: StatusCode) -> String {
    status
        .canonical_reason()
        .unwrap_or("error")
        .to_lowercase()
        .replace(' ', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_and_exit() {
        let st = |status| {
            ClientError::Status(Box::new(ErrorAnswer {
                target: "GET u".into(),
                status,
                kind: Some(ErrorKind::Internal),
                message: "m".into(),
                log_tail: None,
            }))
        };
        assert!(st(503).is_transient());
        assert!(!st(404).is_transient());
        assert_eq!(st(404).exit(), Exit::BuildFailed);
        assert_eq!(st(500).exit(), Exit::Unreachable);
        let down = ClientError::Unreachable {
            target: "GET u".into(),
            cause: "refused".into(),
        };
        assert!(down.is_transient() && down.is_unreachable());
        assert_eq!(down.exit(), Exit::Unreachable);
        let cut = ClientError::CutShort(Box::new(CutShort {
            target: "GET u".into(),
            received: 100,
            expected: Some(400),
            cause: "unexpected end of file".into(),
            attempts: 3,
        }));
        assert!(cut.is_transient() && !cut.is_unreachable());
        assert_eq!(cut.exit(), Exit::Unreachable);
        assert_eq!(
            cut.to_string(),
            "GET u: the answer was cut short: the connection closed after 100 of 400 bytes, \
             in each of 3 attempts (unexpected end of file)"
        );
    }
}
