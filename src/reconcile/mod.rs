//! Reconcile: converge this host's guests toward the desired state, one journaled,
//! gated, queued mutation at a time.
//!
//! The flow is desired + actual → [`plan`] (pure) → gate → [`queue`] (lane per vmid)
//! → Proxmox, with every step journaled. This module tree owns that flow; it never
//! executes a destructive change without the gate's verified signature, and nothing in
//! it mutates Proxmox outside the queue.

pub mod desired;
pub mod normalize;
pub mod plan;
pub mod queue;
