//! The two ways an HTTP exchange fails: the transport ([`TransportError`]: nothing or
//! only part of an answer came back) and the answer ([`HttpError`]: a complete response
//! with a status the caller did not want). Neither carries a header value, so no
//! credential can be inside one: only methods, URLs (without user info), statuses and
//! bounded, escaped body excerpts.

use std::fmt;
use std::io;

use super::tls::TlsFailure;

/// How many bytes of a body an error keeps.
pub const EXCERPT_LIMIT: usize = 512;

/// When in the exchange a timeout hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimeoutPhase {
    /// Resolving, connecting or the TLS handshake: the request was never sent.
    Connect,
    /// Sending the request or reading the answer: the server may have acted on it.
    Exchange,
}

/// A request that did not produce a complete response.
#[derive(Debug)]
#[non_exhaustive]
pub enum TransportError {
    /// Name resolution or the TCP connection failed: the request provably never
    /// reached the server, so it is safe to send again.
    Connect {
        /// `METHOD URL` of the request.
        target: String,
        /// What failed.
        detail: String,
        /// The OS error, when there is one.
        source: Option<io::Error>,
    },
    /// The TLS handshake failed (pin mismatch, untrusted certificate, protocol): the
    /// request was never sent.
    Tls {
        /// `METHOD URL` of the request.
        target: String,
        /// Which check failed.
        failure: TlsFailure,
    },
    /// The connect or overall timeout ran out.
    Timeout {
        /// `METHOD URL` of the request.
        target: String,
        /// Before or after the request went out.
        phase: TimeoutPhase,
    },
    /// The connection broke while sending the request or reading the answer: the
    /// server may have processed the request.
    Io {
        /// `METHOD URL` of the request.
        target: String,
        /// The OS error.
        source: io::Error,
    },
    /// The server's answer is not valid HTTP/1.1 (or its head is too large): it may
    /// have processed the request.
    Protocol {
        /// `METHOD URL` of the request.
        target: String,
        /// What is wrong.
        detail: String,
    },
    /// The response body is larger than the configured cap; reading stopped there.
    BodyTooLarge {
        /// `METHOD URL` of the request.
        target: String,
        /// The cap in bytes.
        limit: u64,
    },
    /// The request could not be built (bad URL, header name or value); nothing was sent.
    InvalidRequest {
        /// `METHOD URL` of the request.
        target: String,
        /// What is wrong.
        detail: String,
    },
}

impl TransportError {
    /// Whether the request provably never reached the server (safe to resend even
    /// for a mutation).
    pub fn never_sent(&self) -> bool {
        match self {
            TransportError::Connect { .. }
            | TransportError::Tls { .. }
            | TransportError::InvalidRequest { .. } => true,
            TransportError::Timeout { phase, .. } => *phase == TimeoutPhase::Connect,
            TransportError::Io { .. }
            | TransportError::Protocol { .. }
            | TransportError::BodyTooLarge { .. } => false,
        }
    }

    /// `METHOD URL` of the failed request.
    pub fn target(&self) -> &str {
        match self {
            TransportError::Connect { target, .. }
            | TransportError::Tls { target, .. }
            | TransportError::Timeout { target, .. }
            | TransportError::Io { target, .. }
            | TransportError::Protocol { target, .. }
            | TransportError::BodyTooLarge { target, .. }
            | TransportError::InvalidRequest { target, .. } => target,
        }
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Connect { target, detail, .. } => {
                write!(f, "{target}: cannot connect: {detail}")
            }
            TransportError::Tls { target, failure } => write!(f, "{target}: TLS: {failure}"),
            TransportError::Timeout {
                target,
                phase: TimeoutPhase::Connect,
            } => write!(f, "{target}: timed out connecting"),
            TransportError::Timeout { target, .. } => {
                write!(f, "{target}: timed out waiting for the answer")
            }
            TransportError::Io { target, source } => {
                write!(f, "{target}: connection broken mid-exchange: {source}")
            }
            TransportError::Protocol { target, detail } => {
                write!(f, "{target}: invalid HTTP answer: {detail}")
            }
            TransportError::BodyTooLarge { target, limit } => {
                write!(f, "{target}: response body exceeds {limit} bytes")
            }
            TransportError::InvalidRequest { target, detail } => {
                write!(f, "{target}: invalid request: {detail}")
            }
        }
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TransportError::Connect {
                source: Some(s), ..
            } => Some(s),
            TransportError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A complete answer whose status is not a success (2xx); redirects are not
/// followed, so a 3xx lands here too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    /// The status code.
    pub status: u16,
    /// The reason phrase as sent (or the standard one when it could not be read),
    /// control characters escaped.
    pub reason: String,
    /// The start of the body, at most [`EXCERPT_LIMIT`] bytes, control characters escaped.
    pub body_excerpt: String,
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {} {}", self.status, self.reason)?;
        if !self.body_excerpt.is_empty() {
            write!(f, ": {}", self.body_excerpt)?;
        }
        Ok(())
    }
}

impl std::error::Error for HttpError {}

/// A printable excerpt of untrusted bytes: at most `limit` bytes of input (cut at a
/// character boundary), invalid UTF-8 replaced, control characters escaped so the
/// text cannot break a log line or a terminal; `…` marks a cut.
pub fn excerpt(bytes: &[u8], limit: usize) -> String {
    let cut = bytes.len() > limit;
    let head = &bytes[..bytes.len().min(limit)];
    let text = String::from_utf8_lossy(head);
    let mut out = String::with_capacity(text.len() + 8);
    crate::base::log::push_escaped(&mut out, &text);
    if cut {
        // A multi-byte character split by the cut decodes as U+FFFD; drop it.
        if out.ends_with('\u{fffd}') {
            out.pop();
        }
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_bounds_and_escapes() {
        assert_eq!(excerpt(b"a\nb\x1b[0m", 100), "a\\nb\\u{1b}[0m");
        let long = vec![b'x'; 2000];
        let e = excerpt(&long, EXCERPT_LIMIT);
        assert_eq!(e.chars().filter(|&c| c == 'x').count(), EXCERPT_LIMIT);
        assert!(e.ends_with('…'));
        // "é" is two bytes; cutting after the first must not leave a replacement char.
        assert_eq!(excerpt("aé".as_bytes(), 2), "a…");
    }

    #[test]
    fn only_connect_phase_failures_are_never_sent() {
        let t = || "GET https://h/".to_string();
        assert!(
            TransportError::Connect {
                target: t(),
                detail: "refused".into(),
                source: None
            }
            .never_sent()
        );
        assert!(
            TransportError::Timeout {
                target: t(),
                phase: TimeoutPhase::Connect
            }
            .never_sent()
        );
        assert!(
            !TransportError::Timeout {
                target: t(),
                phase: TimeoutPhase::Exchange
            }
            .never_sent()
        );
        assert!(
            !TransportError::Io {
                target: t(),
                source: io::Error::from(io::ErrorKind::ConnectionReset)
            }
            .never_sent()
        );
        assert!(
            !TransportError::BodyTooLarge {
                target: t(),
                limit: 1
            }
            .never_sent()
        );
    }
}
