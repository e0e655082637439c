//! The base layer: what every other layer stands on. Time and its wire format,
//! encodings, secrets, the shutdown signal, logging, the poison-tolerant lock and the
//! version. Nothing here does I/O beyond writing log lines to stderr, and nothing here
//! imports another layer of the crate.

pub(crate) mod backoff;
pub(crate) mod encoding;
pub(crate) mod json;
pub mod log;
pub(crate) mod secret;
pub(crate) mod shutdown;
pub(crate) mod sync;
pub(crate) mod time;
pub(crate) mod version;

pub use encoding::{EncodingError, base64_decode, base64_encode, hex_decode, hex_encode};
pub use secret::{REDACTED, Secret};
pub use shutdown::Shutdown;
pub use time::{
    Clock, ManualClock, ManualMonotonic, MonotonicClock, SystemClock, SystemMonotonic,
    TimeParseError, Timestamp,
};
pub use version::VERSION;
