//! The hub's desired state: `GET {hub}/api/v1/desired-state`, with the same bearer key
//! and TLS trust as the report.
//!
//! The answer is the desired-state document in exactly the file's format
//! (`{"generation":N,"guests":[…]}`), carried as the bytes the hub sent. The request
//! names the generation the agent holds as its entity tag (`If-None-Match: "N"`), so a
//! hub whose document has not moved answers `304 Not Modified` with no body. Answers
//! are capped in size.
//!
//! This module is transport only: it never parses, validates or keeps the document
//! (reconcile's desired-state cache does), never decides when to fetch, and never lets
//! the bearer key into an error, a log line or a `Debug`.

use std::fmt;

use super::client::{EndpointError, HubClientOptions, HubEndpoint, HubSetupError};
use crate::config::HubConfig;
use crate::net::{HttpError, TransportError};

/// The path of the desired-state endpoint under the hub's base URL.
pub(crate) const DESIRED_STATE_PATH: &str = "/api/v1/desired-state";

/// The entity tag of a generation, as `If-None-Match` carries it: `"7"`.
pub fn generation_etag(generation: u64) -> String {
    format!("\"{generation}\"")
}

/// What one fetch brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DesiredFetch {
    /// `304`: the hub's document is still the generation named.
    NotModified,
    /// A document's bytes, exactly as served (at most the client's cap).
    Document(Vec<u8>),
}

/// Why a fetch brought nothing usable.
#[derive(Debug)]
#[non_exhaustive]
pub enum DesiredFetchError {
    /// No complete answer: connect, TLS, timeout, broken connection, a body over the cap.
    Transport(TransportError),
    /// A status other than 2xx or 304 (404 from a hub without the endpoint, 401 for a
    /// wrong key).
    Http(HttpError),
}

impl DesiredFetchError {
    /// The HTTP status when the hub answered with an error status.
    pub fn status(&self) -> Option<u16> {
        match self {
            DesiredFetchError::Http(e) => Some(e.status),
            DesiredFetchError::Transport(_) => None,
        }
    }
}

impl fmt::Display for DesiredFetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DesiredFetchError::Transport(e) => write!(f, "hub unreachable: {e}"),
            DesiredFetchError::Http(e) => write!(f, "hub refused the desired-state fetch: {e}"),
        }
    }
}

impl std::error::Error for DesiredFetchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DesiredFetchError::Transport(e) => Some(e),
            DesiredFetchError::Http(e) => Some(e),
        }
    }
}

/// Fetches the hub's desired-state document.
pub struct DesiredStateClient {
    endpoint: HubEndpoint,
}

impl fmt::Debug for DesiredStateClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DesiredStateClient")
            .field("url", &self.endpoint.url())
            .finish_non_exhaustive()
    }
}

impl DesiredStateClient {
    /// Builds the client (a CA file is read now); answers over `max_bytes` are a
    /// transport error. The URL rules are the report client's.
    pub fn new(
        options: &HubClientOptions,
        max_bytes: u64,
    ) -> Result<DesiredStateClient, HubSetupError> {
        Ok(DesiredStateClient {
            endpoint: HubEndpoint::new(options, DESIRED_STATE_PATH, max_bytes)?,
        })
    }

    /// Builds the client from the `hub` section of the configuration.
    pub fn from_config(
        hub: &HubConfig,
        max_bytes: u64,
    ) -> Result<DesiredStateClient, HubSetupError> {
        DesiredStateClient::new(&HubClientOptions::from_config(hub)?, max_bytes)
    }

    /// The full URL the document is fetched from.
    pub fn endpoint(&self) -> &str {
        self.endpoint.url()
    }

    /// Fetches the document; with `held`, asks for it only if the hub's generation is
    /// another one.
    pub fn fetch(&self, held: Option<u64>) -> Result<DesiredFetch, DesiredFetchError> {
        let etag = held.map(generation_etag);
        match self.endpoint.get_unless_match(etag.as_deref()) {
            Ok(None) => Ok(DesiredFetch::NotModified),
            Ok(Some(body)) => Ok(DesiredFetch::Document(body)),
            Err(EndpointError::Transport(e)) => Err(DesiredFetchError::Transport(e)),
            Err(EndpointError::Http(e)) => Err(DesiredFetchError::Http(e)),
        }
    }
}
