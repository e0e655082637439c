//! Reconcile: converge this host's guests toward the desired state, one journaled,
//! gated, queued mutation at a time.
//!
//! The flow is desired + actual → [`plan`] (pure) → [`gate`] → [`queue`] (lane per
//! vmid) → Proxmox, with every step in the [`journal`] and every gate decision in the
//! [`audit`] log. This module tree owns that flow; it never executes a destructive
//! change without the gate's verified signature, and nothing in it mutates Proxmox
//! outside the queue. Each file's own doc says what it owns.

pub mod action;
pub mod audit;
pub mod classify;
pub mod desired;
pub mod engine;
pub mod gate;
pub mod jobs;
pub mod journal;
pub mod normalize;
pub mod plan;
pub mod queue;
pub mod recover;
