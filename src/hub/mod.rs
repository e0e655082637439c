//! The hub side of the agent: the host-report contract, the collector that fills it,
//! the client that posts it, the control envelope that answers it, and the poller that
//! repeats it.
//!
//! Data flows one way: [`collect::Collector`] reads the node (read-only) →
//! [`report::HostReport`] → the hub client posts it → [`envelope::ControlEnvelope`] →
//! [`poller::Poller`] adopts the interval and keeps the envelope for the reconcile
//! engine. Nothing here mutates Proxmox, and the hub's bearer key never leaves the
//! client's request header: not in an error, a log line or a `Debug`.

pub mod client;
pub mod collect;
pub mod envelope;

pub mod ops_feed;
pub mod poller;
pub mod report;
pub mod round;

pub use client::{HubClient, HubClientError, HubClientOptions, HubSetupError};
pub use collect::{
    AuditTail, CloudflaredProbe, CollectError, Collector, GuestConfigRow, HostReader, NoAudit,
};
pub use envelope::{ControlEnvelope, EnvelopeError};
pub use poller::{Poller, Reporter, SharedEnvelope, Sleeper};
pub use report::HostReport;
pub use round::{HubRound, HubRoundError};
