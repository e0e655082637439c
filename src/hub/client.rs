//! The hub client: `POST {url}/api/v1/host-report` with `Authorization: Bearer KEY`,
//! answered by a [`ControlEnvelope`].
//!
//! TLS goes through [`crate::net`] (system bundle, CA file or pin; verification is
//! always on unless `insecure_skip_verify` was chosen by name). The bearer key lives in
//! a [`Secret`] and is exposed only as the header is written: it is never in an error,
//! a log line or a `Debug`, and if a hub echoes it back in an error answer it is cut
//! out before the answer becomes an [`HttpError`]. This client never retries; the
//! poller owns the schedule.

use std::fmt;
use std::time::Duration;

use super::envelope::{ControlEnvelope, EnvelopeError};
use super::report::HostReport;
use crate::base::secret::{REDACTED, Secret};
use crate::config::HubConfig;
use crate::net::{
    EXCERPT_LIMIT, HttpClient, HttpError, HttpOptions, Method, Request, Response, TlsTrust,
    TransportError, TrustError, excerpt,
};

/// The path of the report endpoint under the hub's base URL.
pub(crate) const REPORT_PATH: &str = "/api/v1/host-report";

/// The shortest tail of a phrase taken for a cut-off copy of the key.
const MIN_PARTIAL: usize = 4;

/// The largest envelope read from the hub.
const MAX_ANSWER_BYTES: u64 = 1 << 20;

/// How to reach the hub.
#[derive(Clone)]
pub struct HubClientOptions {
    /// Base URL, `https://HOST[:PORT][/PATH]`.
    pub url: String,
    /// The bearer key.
    pub api_key: Secret,
    /// How the hub's certificate is judged.
    pub trust: TlsTrust,
    /// Time allowed for a whole request.
    pub timeout: Duration,
}

impl fmt::Debug for HubClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubClientOptions")
            .field("url", &self.url)
            .field("api_key", &self.api_key)
            .field("trust", &self.trust.describe())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Why a hub client could not be built.
#[derive(Debug)]
#[non_exhaustive]
pub enum HubSetupError {
    /// The configuration has no `hub` section (the mode needs one).
    NoHubSection,
    /// The hub key is missing or empty.
    MissingKey,
    /// The URL is not `https://HOST[:PORT][/PATH]`.
    Url {
        /// The URL as configured.
        url: String,
    },
    /// The trust choice could not become a TLS configuration (e.g. unreadable CA file).
    Trust(TrustError),
}

impl fmt::Display for HubSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HubSetupError::NoHubSection => f.write_str("hub: section is missing"),
            HubSetupError::MissingKey => f.write_str("hub.api_key: no key configured"),
            HubSetupError::Url { url } => {
                write!(
                    f,
                    "hub.url: must be https://HOST[:PORT][/PATH], got {url:?}"
                )
            }
            HubSetupError::Trust(e) => write!(f, "hub.tls: {e}"),
        }
    }
}

impl std::error::Error for HubSetupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HubSetupError::Trust(e) => Some(e),
            _ => None,
        }
    }
}

/// Why one report did not get a usable envelope back.
#[derive(Debug)]
#[non_exhaustive]
pub enum HubClientError {
    /// The report could not be serialized (a bug; nothing was sent).
    Encode(serde_json::Error),
    /// No complete answer: connect, TLS, timeout, broken connection, oversized body.
    Transport(TransportError),
    /// The hub answered with a status other than 2xx (401 for a wrong key, 400 for a
    /// report it rejects, 5xx when it is unwell).
    Http(HttpError),
    /// The hub answered 2xx but the body is not a control envelope.
    Envelope(EnvelopeError),
}

impl HubClientError {
    /// The HTTP status when the hub answered with an error status.
    pub fn status(&self) -> Option<u16> {
        match self {
            HubClientError::Http(e) => Some(e.status),
            _ => None,
        }
    }
}

impl fmt::Display for HubClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HubClientError::Encode(e) => write!(f, "host report could not be encoded: {e}"),
            HubClientError::Transport(e) => write!(f, "hub unreachable: {e}"),
            HubClientError::Http(e) if e.status == 401 => write!(
                f,
                "hub refused the report: {e} (the hub does not accept the configured hub.api_key)"
            ),
            HubClientError::Http(e) => write!(f, "hub refused the report: {e}"),
            HubClientError::Envelope(e) => write!(f, "hub answer unusable: {e}"),
        }
    }
}

impl std::error::Error for HubClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HubClientError::Encode(e) => Some(e),
            HubClientError::Transport(e) => Some(e),
            HubClientError::Http(e) => Some(e),
            HubClientError::Envelope(e) => Some(e),
        }
    }
}

/// One authenticated endpoint on the hub: its HTTP agent, full URL and bearer key.
/// The report client and the signed-ops client are each one of these, so the URL
/// rules, the TLS setup and the scrubbing of an echoed key live in one place.
pub(crate) struct HubEndpoint {
    http: HttpClient,
    url: String,
    authorization: Secret,
    key: Secret,
}

/// Why a request to a [`HubEndpoint`] got no 2xx answer.
pub(crate) enum EndpointError {
    /// No complete answer.
    Transport(TransportError),
    /// A status other than 2xx; the key is already cut out of reason and body.
    Http(HttpError),
}

impl HubEndpoint {
    /// Checks the base URL, reads the trust (a CA file is read now) and builds the
    /// agent for `{url}{path}`, answers capped at `max_body` bytes.
    pub(crate) fn new(
        options: &HubClientOptions,
        path: &str,
        max_body: u64,
    ) -> Result<HubEndpoint, HubSetupError> {
        if options.api_key.is_empty() {
            return Err(HubSetupError::MissingKey);
        }
        let base = options.url.trim_end_matches('/');
        let has_host = base
            .strip_prefix("https://")
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
        if !has_host || base.contains(['?', '#', '@']) || base.chars().any(char::is_whitespace) {
            return Err(HubSetupError::Url {
                url: options.url.clone(),
            });
        }
        let mut http_options = HttpOptions::new(options.trust.clone());
        http_options.timeout = options.timeout;
        http_options.connect_timeout = options.timeout.min(Duration::from_secs(10));
        http_options.max_body = max_body;
        http_options.max_idle_per_host = 1;
        let http = HttpClient::new(&http_options).map_err(HubSetupError::Trust)?;
        Ok(HubEndpoint {
            http,
            url: format!("{base}{path}"),
            authorization: Secret::new(format!("Bearer {}", options.api_key.expose())),
            key: options.api_key.clone(),
        })
    }

    /// The full URL.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Sends `method` (with a JSON body when given) and returns the 2xx answer's body.
    pub(crate) fn send(
        &self,
        method: Method,
        json: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, EndpointError> {
        let mut request = self.request(method);
        if let Some(body) = json {
            request = request.json(body);
        }
        let response = self.http.send(request).map_err(EndpointError::Transport)?;
        self.success(response)
    }

    /// `GET` with `If-None-Match: etag` when one is given: `None` for `304 Not
    /// Modified`, else the 2xx answer's body.
    pub(crate) fn get_unless_match(
        &self,
        etag: Option<&str>,
    ) -> Result<Option<Vec<u8>>, EndpointError> {
        let mut request = self.request(Method::Get);
        if let Some(tag) = etag {
            request = request.header("if-none-match", tag);
        }
        let response = self.http.send(request).map_err(EndpointError::Transport)?;
        if response.status == 304 {
            return Ok(None);
        }
        self.success(response).map(Some)
    }

    /// `GET {url}?{query}` (the caller encodes the query) and the 2xx answer's body.
    pub(crate) fn get_query(&self, query: &str) -> Result<Vec<u8>, EndpointError> {
        let request = self.request_to(Method::Get, format!("{}?{query}", self.url));
        let response = self.http.send(request).map_err(EndpointError::Transport)?;
        self.success(response)
    }

    fn request(&self, method: Method) -> Request {
        self.request_to(method, self.url.clone())
    }

    fn request_to(&self, method: Method, url: String) -> Request {
        Request::new(method, url)
            .header("accept", "application/json")
            .secret_header("authorization", &self.authorization)
    }

    /// The body of a 2xx answer, or the error with the key cut out of it.
    fn success(&self, response: Response) -> Result<Vec<u8>, EndpointError> {
        if !response.is_success() {
            let key = self.key.expose();
            // Scrub before excerpting, so the cut cannot leave part of the key behind.
            let body = replace_bytes(&response.body, key.as_bytes(), REDACTED.as_bytes());
            return Err(EndpointError::Http(HttpError {
                status: response.status,
                reason: scrub_reason(&response.reason, key),
                body_excerpt: excerpt(&body, EXCERPT_LIMIT),
            }));
        }
        Ok(response.body)
    }
}

impl HubClientOptions {
    /// The options the `hub` section of the configuration gives.
    pub fn from_config(hub: &HubConfig) -> Result<HubClientOptions, HubSetupError> {
        Ok(HubClientOptions {
            url: hub.url.clone(),
            api_key: hub.api_key.clone().ok_or(HubSetupError::MissingKey)?,
            trust: hub.tls.clone(),
            timeout: Duration::from_secs(hub.timeout_seconds),
        })
    }
}

/// Posts host reports to the hub.
pub struct HubClient {
    endpoint: HubEndpoint,
    trust: TlsTrust,
}

impl fmt::Debug for HubClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubClient")
            .field("endpoint", &self.endpoint.url)
            .field("authorization", &self.endpoint.authorization)
            .field("trust", &self.trust.describe())
            .finish_non_exhaustive()
    }
}

impl HubClient {
    /// Builds the client (a CA file is read now).
    pub fn new(options: HubClientOptions) -> Result<HubClient, HubSetupError> {
        let endpoint = HubEndpoint::new(&options, REPORT_PATH, MAX_ANSWER_BYTES)?;
        Ok(HubClient {
            endpoint,
            trust: options.trust,
        })
    }

    /// Builds the client from the `hub` section of the configuration.
    pub fn from_config(hub: &HubConfig) -> Result<HubClient, HubSetupError> {
        HubClient::new(HubClientOptions::from_config(hub)?)
    }

    /// The full URL reports go to.
    pub fn endpoint(&self) -> &str {
        self.endpoint.url()
    }

    /// The trust in force, for the start-up warning.
    pub fn trust(&self) -> &TlsTrust {
        &self.trust
    }

    /// Posts one report and parses the hub's answer.
    pub fn post_report(&self, report: &HostReport) -> Result<ControlEnvelope, HubClientError> {
        let body = serde_json::to_vec(report).map_err(HubClientError::Encode)?;
        let answer = self
            .endpoint
            .send(Method::Post, Some(body))
            .map_err(|e| match e {
                EndpointError::Transport(e) => HubClientError::Transport(e),
                EndpointError::Http(e) => HubClientError::Http(e),
            })?;
        ControlEnvelope::parse(&answer).map_err(HubClientError::Envelope)
    }
}

/// `haystack` with every occurrence of `needle` replaced by `with`.
fn replace_bytes(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    if needle.is_empty() {
        return haystack.to_vec();
    }
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

/// The reason phrase with the key cut out, including a key cut short at the end of an
/// already bounded phrase (at least [`MIN_PARTIAL`] characters of it, so an ordinary
/// word that happens to end like the key's first letter is left alone).
fn scrub_reason(reason: &str, key: &str) -> String {
    if key.is_empty() {
        return reason.to_owned();
    }
    let mut out = reason.replace(key, REDACTED);
    let tail = (MIN_PARTIAL.min(key.len())..key.len())
        .rev()
        .filter(|n| key.is_char_boundary(*n))
        .find(|n| out.ends_with(&key[..*n]));
    if let Some(n) = tail {
        out.truncate(out.len() - n);
        out.push_str(REDACTED);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_cut_out_of_echoed_text() {
        assert_eq!(
            replace_bytes(b"bad key k3y-abc, k3y-abc!", b"k3y-abc", b"<redacted>"),
            b"bad key <redacted>, <redacted>!"
        );
        assert_eq!(
            scrub_reason("Unauthorized k3y-abc", "k3y-abc"),
            "Unauthorized <redacted>"
        );
        assert_eq!(
            scrub_reason("Unauthorized k3y-a", "k3y-abc"),
            "Unauthorized <redacted>",
            "a key cut short at the end is still cut out"
        );
        assert_eq!(scrub_reason("Unauthorized", "d3y-abc"), "Unauthorized");
    }
}
