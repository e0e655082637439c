//! The base layer: what every other layer stands on. Time and its wire format,
//! encodings, secrets, the shutdown signal, logging, the poison-tolerant lock and the
//! version. Nothing here does I/O beyond writing log lines to stderr, and nothing here
//! imports another layer of the crate.

pub mod encoding;
pub mod log;
pub mod secret;
pub mod shutdown;
pub mod sync;
pub mod time;
pub mod version;
