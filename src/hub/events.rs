//! The hub's event stream: a long poll that tells the agent at once what the report's
//! envelope would tell it at the next report.
//!
//! One dedicated thread holds `GET {hub}/api/v1/events?after=CURSOR&wait_seconds=55`
//! open, like Consul's blocking queries. The hub answers as soon as anything for this
//! host changes, or with the same cursor once `wait_seconds` pass:
//! `{"cursor":"…","desired_generation":N,"has_signed_ops":bool,"blocked":bool}` (the
//! envelope's fields, parsed by the envelope's own parser, `ack_signed_op_results`
//! included, which go to the app's hook). Each answer updates the
//! shared envelope the engine and the signed-ops worker read, and then, when it says
//! the hub has signed ops, raises their announcement, so whoever wakes reads the answer
//! that woke it. A `404` is an older hub: the agent says so once and follows the report
//! cadence alone, asking again every [`REPROBE_AFTER_404`]. Other faults back off with
//! jitter, from 1 s to a minute.
//!
//! The stream only speeds things up: it never delays or replaces a report, never
//! mutates anything but the in-memory envelope, never fetches what it announces (the
//! workers do), and never lets the bearer key into an error, a log line or a `Debug`.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

use super::client::{EndpointError, HubClientOptions, HubEndpoint, HubSetupError};
use super::envelope::{ControlEnvelope, EnvelopeError};
use super::ops_feed::Announcement;
use super::poller::{JITTER_FRACTION, Jitter, SharedEnvelope, Sleeper, random_jitter};
use crate::base::backoff::doubling;
use crate::base::json::kind;
use crate::net::{HttpError, TransportError};

/// The path of the event stream under the hub's base URL.
pub(crate) const EVENTS_PATH: &str = "/api/v1/events";

/// How long the hub may hold one request open before answering with the same cursor.
pub const DEFAULT_EVENT_WAIT: Duration = Duration::from_secs(55);

/// After a `404`, how long until the agent asks again (the hub may be upgraded).
pub const REPROBE_AFTER_404: Duration = Duration::from_secs(900);

/// The largest answer read.
const MAX_EVENT_BYTES: u64 = 16 * 1024;

/// The longest cursor taken; a longer one is a malformed answer.
pub const MAX_CURSOR_BYTES: usize = 256;

/// First back-off after a failed request; doubles per failure up to [`BACKOFF_CAP`].
const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// One answer of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubEvent {
    /// Where the next request resumes.
    pub cursor: String,
    /// What the host should know now: `desired_generation`, `has_signed_ops`,
    /// `blocked` (an interval in an event is ignored; the report's envelope sets it).
    pub state: ControlEnvelope,
}

/// Why an answer is not a usable event.
#[derive(Debug)]
#[non_exhaustive]
pub enum EventError {
    /// The shared fields are not an envelope's.
    Envelope(EnvelopeError),
    /// `cursor` is missing, not a string, too long, or holds other than visible ASCII.
    Cursor {
        /// What is wrong.
        problem: String,
    },
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventError::Envelope(e) => write!(f, "event: {e}"),
            EventError::Cursor { problem } => write!(f, "event field cursor: {problem}"),
        }
    }
}

impl std::error::Error for EventError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EventError::Envelope(e) => Some(e),
            EventError::Cursor { .. } => None,
        }
    }
}

impl HubEvent {
    /// Parses an answer: the envelope's fields by the envelope's rules, and `cursor`, a
    /// string of at most [`MAX_CURSOR_BYTES`] visible ASCII characters.
    pub fn parse(body: &[u8]) -> Result<HubEvent, EventError> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| EventError::Envelope(EnvelopeError::Syntax(e)))?;
        let mut state = ControlEnvelope::from_value(&v).map_err(EventError::Envelope)?;
        state.poll_interval_seconds = None;
        let cursor = match v.get("cursor") {
            Some(Value::String(s)) => s,
            None | Some(Value::Null) => {
                return Err(EventError::Cursor {
                    problem: "is required".into(),
                });
            }
            Some(other) => {
                return Err(EventError::Cursor {
                    problem: format!("must be a string, got {}", kind(other)),
                });
            }
        };
        if cursor.len() > MAX_CURSOR_BYTES {
            return Err(EventError::Cursor {
                problem: format!("is {} bytes, more than {MAX_CURSOR_BYTES}", cursor.len()),
            });
        }
        if let Some(at) = cursor.bytes().position(|b| !b.is_ascii_graphic()) {
            return Err(EventError::Cursor {
                problem: format!("byte {at} is not visible ASCII"),
            });
        }
        Ok(HubEvent {
            cursor: cursor.clone(),
            state,
        })
    }
}

/// Why one request of the stream brought no event.
#[derive(Debug)]
#[non_exhaustive]
pub enum EventsError {
    /// The hub has no event stream (`404`): an older hub.
    Unsupported,
    /// No complete answer: connect, TLS, timeout, broken connection, oversized body.
    Transport(TransportError),
    /// A status other than 2xx and 404.
    Http(HttpError),
    /// A 2xx answer that is not an event.
    Event(EventError),
}

impl fmt::Display for EventsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventsError::Unsupported => f.write_str("the hub has no event stream (404)"),
            EventsError::Transport(e) => write!(f, "hub unreachable: {e}"),
            EventsError::Http(e) => write!(f, "hub refused the event stream: {e}"),
            EventsError::Event(e) => write!(f, "hub answer unusable: {e}"),
        }
    }
}

impl std::error::Error for EventsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EventsError::Unsupported => None,
            EventsError::Transport(e) => Some(e),
            EventsError::Http(e) => Some(e),
            EventsError::Event(e) => Some(e),
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Long-polls the hub's event stream.
pub struct EventsClient {
    endpoint: HubEndpoint,
    wait: Duration,
}

impl fmt::Debug for EventsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventsClient")
            .field("url", &self.endpoint.url())
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

impl EventsClient {
    /// Builds the client: the hub may hold each request `wait` (whole seconds, at least
    /// one), so a request's timeout is the configured one plus `wait`.
    pub fn new(options: &HubClientOptions, wait: Duration) -> Result<EventsClient, HubSetupError> {
        let wait = Duration::from_secs(wait.as_secs().max(1));
        let mut options = options.clone();
        options.timeout = options.timeout.saturating_add(wait);
        Ok(EventsClient {
            endpoint: HubEndpoint::new(&options, EVENTS_PATH, MAX_EVENT_BYTES)?,
            wait,
        })
    }

    /// The full URL of the stream.
    pub fn endpoint(&self) -> &str {
        self.endpoint.url()
    }

    /// One long poll, resuming `after` the cursor given (the first asks for the state
    /// now).
    pub fn next(&self, after: Option<&str>) -> Result<HubEvent, EventsError> {
        let mut query = format!("wait_seconds={}", self.wait.as_secs());
        if let Some(cursor) = after {
            query = format!("after={}&{query}", query_value(cursor));
        }
        match self.endpoint.get_query(&query) {
            Ok(body) => HubEvent::parse(&body).map_err(EventsError::Event),
            Err(EndpointError::Http(e)) if e.status == 404 => Err(EventsError::Unsupported),
            Err(EndpointError::Http(e)) => Err(EventsError::Http(e)),
            Err(EndpointError::Transport(e)) => Err(EventsError::Transport(e)),
        }
    }
}

/// What the app does with the `ack_signed_op_results` an event carries.
pub type AckHook = Box<dyn Fn(&[String]) + Send>;

/// The stream's loop: each event into the shared envelope, then the announcement.
pub struct EventStream<S> {
    client: EventsClient,
    envelope: SharedEnvelope,
    announcement: Announcement,
    on_acks: Option<AckHook>,
    sleeper: S,
    jitter: Jitter,
    cursor: Option<String>,
    failures: u32,
    said_unsupported: bool,
}

impl<S> fmt::Debug for EventStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("client", &self.client)
            .field("cursor", &self.cursor)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

impl<S: Sleeper> EventStream<S> {
    /// A stream through `client` into `envelope` (the poller's) and `announcement`
    /// (the signed-ops worker's).
    pub fn new(
        client: EventsClient,
        envelope: SharedEnvelope,
        announcement: Announcement,
        sleeper: S,
    ) -> Self {
        EventStream {
            client,
            envelope,
            announcement,
            on_acks: None,
            sleeper,
            jitter: random_jitter(),
            cursor: None,
            failures: 0,
            said_unsupported: false,
        }
    }

    /// Replaces the jitter source (tests pass a constant).
    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Hands the signed-op results an event acknowledges to `hook` (the app drops them).
    pub fn with_acks(mut self, hook: AckHook) -> Self {
        self.on_acks = Some(hook);
        self
    }

    /// The cursor the next request resumes after.
    pub fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref()
    }

    /// Runs until the sleeper says stop.
    pub fn run(&mut self) {
        while !self.sleeper.stopped() {
            let wait = self.step();
            if !wait.is_zero() && self.sleeper.sleep(wait) {
                break;
            }
        }
        crate::info!(hub_events_stopped, "hub event stream stopped");
    }

    /// One request; returns how long to wait before the next (zero after an event).
    pub fn step(&mut self) -> Duration {
        match self.client.next(self.cursor.as_deref()) {
            Ok(event) => {
                if self.said_unsupported || self.failures > 0 {
                    crate::info!(
                        hub_events_resumed,
                        "hub event stream answering again",
                        failed_requests = self.failures
                    );
                }
                self.said_unsupported = false;
                self.failures = 0;
                if self.cursor.as_deref() != Some(event.cursor.as_str()) {
                    crate::debug!(
                        hub_event,
                        "hub event",
                        cursor = event.cursor,
                        desired_generation = event.state.desired_generation,
                        has_signed_ops = event.state.has_signed_ops,
                        blocked = event.state.blocked
                    );
                }
                self.envelope.merge_event(&event.state);
                if event.state.has_signed_ops {
                    self.announcement.raise();
                }
                if let Some(hook) = &self.on_acks
                    && !event.state.ack_signed_op_results.is_empty()
                {
                    hook(&event.state.ack_signed_op_results);
                }
                self.cursor = Some(event.cursor);
                Duration::ZERO
            }
            Err(EventsError::Unsupported) => {
                if !self.said_unsupported {
                    crate::info!(
                        hub_events_unsupported,
                        "the hub has no event stream (404): following the report cadence only",
                        retry_in_seconds = REPROBE_AFTER_404.as_secs()
                    );
                    self.said_unsupported = true;
                }
                self.cursor = None;
                REPROBE_AFTER_404
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                let base = doubling(BACKOFF_INITIAL, BACKOFF_CAP, self.failures);
                let j = (self.jitter)().clamp(0.0, 1.0);
                let wait = base + base.mul_f64(JITTER_FRACTION * j);
                crate::warn!(
                    hub_events_failed,
                    "hub event stream request failed; the report cadence goes on",
                    error = e,
                    consecutive_failures = self.failures,
                    retry_in_ms = wait.as_millis()
                );
                wait
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_parses_with_the_envelope_rules_and_a_bounded_cursor() {
        let e = HubEvent::parse(
            br#"{"cursor":"c-41","desired_generation":7,"has_signed_ops":true,"blocked":false,"poll_interval_seconds":60,"future":1}"#,
        )
        .unwrap();
        assert_eq!(e.cursor, "c-41");
        assert_eq!(e.state.desired_generation, 7);
        assert!(e.state.has_signed_ops && !e.state.blocked);
        assert_eq!(e.state.poll_interval_seconds, None, "the report sets it");

        let cases: &[(&[u8], &str)] = &[
            (
                br#"{"desired_generation":1}"#,
                "event field cursor: is required",
            ),
            (
                br#"{"cursor":5}"#,
                "event field cursor: must be a string, got a number",
            ),
            (
                br#"{"cursor":"a b"}"#,
                "event field cursor: byte 1 is not visible ASCII",
            ),
            (
                br#"{"cursor":"c","blocked":"yes"}"#,
                "event: control envelope field blocked: must be true or false, got a string",
            ),
            (
                b"[1]",
                "event: control envelope must be a JSON object, got an array",
            ),
        ];
        for (body, want) in cases {
            let got = HubEvent::parse(body).unwrap_err().to_string();
            assert_eq!(&got, want, "{}", String::from_utf8_lossy(body));
        }
        let long = format!(r#"{{"cursor":"{}"}}"#, "x".repeat(MAX_CURSOR_BYTES + 1));
        assert!(
            HubEvent::parse(long.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("more than 256")
        );
    }

    #[test]
    fn a_cursor_is_percent_encoded_in_the_query() {
        assert_eq!(query_value("a-Z_0.~"), "a-Z_0.~");
        assert_eq!(query_value("a&b=c/d"), "a%26b%3Dc%2Fd");
    }
}
