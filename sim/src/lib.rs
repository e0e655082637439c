//! Proxmox VE and felhom hub simulators for felhom-agent's tests and demo.
//!
//! Owns the loopback HTTPS servers the agent's integration tests and README demo run
//! against. Test and demo code only: a dev-dependency of the agent, never part of its
//! release binary, and it never reaches beyond 127.0.0.1.
//!
//! - [`http`]: the HTTP/1.1-over-TLS server core (threads, rustls, a small parser),
//!   knowing nothing about Proxmox, so every simulator can stand on it.
//! - [`pve`]: the Proxmox VE API simulator ([`ProxmoxSim`]).
//! - [`hub`]: the felhom hub simulator ([`HubSim`]); [`contract`]: how it checks reports.
//! - [`schema`]: the hub protocol's JSON Schemas and the validator the simulator and
//!   the conformance check use.
//! - [`demo`]: what the two simulator binaries share.

pub mod clock;
pub mod contract;
pub mod demo;
mod fault;
pub mod http;
pub mod hub;
pub mod pve;
pub mod schema;

pub use hub::{
    DEFAULT_HUB_KEY, DESIRED_STATE_PATH, EVENTS_PATH, HubRequest, HubSim, HubSimBuilder,
    SIGNED_OPS_PATH,
};
pub use pve::{
    AclSubject, BackupSeed, Broken, CertChoice, DEFAULT_NODE, DEFAULT_TASK_DURATION,
    DEFAULT_TOKEN_ID, DEFAULT_TOKEN_SECRET, ENDPOINT_CHECKS, EndpointCheck, Fault, FaultKind,
    GuestSeed, ProxmoxSim, ProxmoxSimBuilder, RecordedRequest, When,
};
