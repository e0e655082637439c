//! Reconcile: converging guests toward the desired state, and the machinery every
//! mutation passes through (gate → queue → journal).
//!
//! This module only declares its parts; each file's own doc says what it owns.

pub mod audit;
pub mod classify;
pub mod gate;
pub mod journal;
