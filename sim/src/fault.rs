//! How a simulator answers a request an injected [`FaultKind`] hit: one mapping from the
//! fault to an answer, in the dress of the server that gives it (its headers, its error
//! body, its garbage). Never decides which request a fault hits, and never touches a
//! simulator's state: each simulator queues its own faults and records its own requests.

use crate::http::{Body, Delivery, Response};
use crate::pve::FaultKind;

/// How one simulated server dresses the answers a fault makes it give.
pub(crate) struct Dress {
    /// A bare answer with this status line and the headers the server always sends.
    pub base: fn(u16, &str) -> Response,
    /// The answer to [`FaultKind::Status`], from its code and message.
    pub error: fn(u16, String) -> Response,
    /// The content type JSON answers carry.
    pub json_type: &'static str,
    /// The content type HTML answers carry.
    pub html_type: &'static str,
    /// The body of a [`FaultKind::Garbage`] answer (sent as JSON, and not JSON).
    pub garbage: &'static str,
    /// How an [`FaultKind::Oversized`] body starts; `x` fills it to its length and `"}`
    /// ends it.
    pub oversized_prefix: &'static [u8],
}

/// What a request hit by a fault gets.
pub(crate) enum FaultAnswer {
    /// Processed as usual, its answer delivered this way.
    Process(Delivery),
    /// This answer instead; the request is not processed.
    Answer(Response),
    /// The handler panics, once the caller has released its state lock.
    Panic,
}

impl Dress {
    /// The answer `fault` makes this server give.
    pub(crate) fn answer(&self, fault: FaultKind) -> FaultAnswer {
        let response = match fault {
            FaultKind::Delay(d) => return FaultAnswer::Process(Delivery::Delay(d)),
            FaultKind::DropMidBody => return FaultAnswer::Process(Delivery::DropMidBody),
            FaultKind::Panic => return FaultAnswer::Panic,
            FaultKind::Status { code, message } => (self.error)(code, message),
            FaultKind::Redirect { code, location } => (self.base)(code, "Found")
                .with_header("Location", &location)
                .with_header("Content-Type", self.html_type)
                .with_body(format!("<html><body>Found: {location}</body></html>\n")),
            FaultKind::DropConnection => {
                Response::new(0, "dropped").with_delivery(Delivery::DropConnection)
            }
            FaultKind::Garbage => (self.base)(200, "OK")
                .with_header("Content-Type", self.json_type)
                .with_body(self.garbage),
            FaultKind::Oversized(len) => {
                let mut r = (self.base)(200, "OK").with_header("Content-Type", self.json_type);
                r.body = Body::Filler {
                    prefix: self.oversized_prefix.to_vec(),
                    fill: b'x',
                    len,
                    suffix: b"\"}".to_vec(),
                };
                r
            }
        };
        FaultAnswer::Answer(response)
    }
}

/// The status a request's record keeps for `response`: 0 when the connection is dropped
/// without an answer.
pub(crate) fn recorded_status(response: &Response) -> u16 {
    if response.delivery == Delivery::DropConnection {
        0
    } else {
        response.status
    }
}
