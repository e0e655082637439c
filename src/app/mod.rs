//! The application layer: the only place that knows both the hub and reconcile. It
//! wires the real clients, bridges the hub's wire records and reconcile's own, starts
//! the reconciler, runs the daemon, and carries one module per command. Nothing below
//! this layer imports it, and it never holds policy of its own: the gate decides, the
//! journal records, the store writes.

pub mod bridge;
pub mod daemon;
pub mod plan;
pub mod reconciler;
pub mod selftest;
pub mod signed_ops;
pub mod wiring;
