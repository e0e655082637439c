//! The agent's version string, in the base layer so every layer can name it (the host
//! report, the start-up log line, `felhom-agent version`) without importing the command
//! line. It reads nothing at run time.

/// Version string: `FELHOM_BUILD_VERSION` at build time, else the crate version.
pub const VERSION: &str = match option_env!("FELHOM_BUILD_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};
