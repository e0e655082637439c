//! felhom-agent: the host agent of the felhom platform.
//!
//! It runs as root on a Proxmox VE host, reports the host to the central hub,
//! converges the host's LXC guests toward a desired state through the Proxmox API,
//! journals every operation so a crash loses nothing, and refuses destructive changes
//! unless an operator signed that exact action with an allow-listed SSH key.
//!
//! The modules follow the data flow: [`config`] → [`net`] → [`proxmox`] / hub →
//! reconcile (plan → gate → queue → journal) → daemon. `main.rs` only parses the
//! command line ([`cli`]) and dispatches.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod authz;
pub mod cli;
pub mod config;

pub mod hub;

pub mod net;
pub mod proxmox;
pub mod reconcile;

pub mod store;

pub mod app;
pub mod base;
