//! The application layer: the only place that knows both the hub and reconcile. It
//! wires the real clients, bridges the hub's wire records and reconcile's own, starts
//! the reconciler, runs the daemon, and carries one module per command. Nothing below
//! this layer imports it, and it never holds policy of its own: the gate decides, the
//! journal records, the store writes.

pub(crate) mod audit_cmd;
pub(crate) mod bridge;
pub(crate) mod command;
pub(crate) mod compaction;
pub(crate) mod daemon;
pub(crate) mod damage;
pub(crate) mod desired_feed;
pub(crate) mod executors;
pub(crate) mod health;
pub(crate) mod journal;
pub(crate) mod metrics;
pub(crate) mod notify;
pub(crate) mod op_new;
pub(crate) mod pause;
pub(crate) mod plan;
pub(crate) mod reconciler;
pub(crate) mod restore_tests;
pub(crate) mod results;
pub(crate) mod resume;
pub(crate) mod selftest;
pub(crate) mod signals;
pub(crate) mod signed_ops;
pub(crate) mod status;
pub(crate) mod status_cmd;
pub(crate) mod verify;
pub(crate) mod wiring;

pub use audit_cmd::AuditQuery;
pub use bridge::wire_entry;
pub use daemon::{DaemonError, serve};
pub use desired_feed::{FetchBackoff, HubDesired};
pub use executors::{RoutedExecutor, SignerFeed, with_rotation};
pub use health::HostHealth;
pub use metrics::Metrics;
pub use pause::{PauseMarker, PauseState, PauseWatch, PausedPacing, read_pause};
pub use plan::{plan_report, plan_report_as};
pub use reconciler::Reconciler;
pub use restore_tests::{RestoreTestsFeed, wire_restore_test};
pub use results::{AckingRound, ResultsFeed, apply_acks, wire_result};
pub use signed_ops::{
    OpOutcome, SignedOpsError, SignedOpsRunner, run_worker, unverified_intent, unverified_nonce,
};
pub use status::{StatusBoard, StatusDoc};
pub use wiring::{ProxmoxReader, hub_round, selftest_hub};
