//! felhom-agent: the host agent of the felhom platform.
//!
//! It runs as root on a Proxmox VE host, reports the host to the central hub,
//! converges the host's LXC guests toward a desired state through the Proxmox API,
//! journals every operation so a crash loses nothing, and refuses destructive changes
//! unless an operator signed that exact action with an allow-listed SSH key.
//!
//! The modules are layers, each importing only the layers below it (`tests/fence.rs`
//! checks it; `ARCHITECTURE.md` describes each):
//!
//! ```text
//! 7 cli          parse the command line, dispatch to app
//! 6 app          wiring, bridges, start-up, daemon, one module per command
//! 5 hub | reconcile   transport to the hub | plan → gate → queue → journal, Recover, engine
//! 4 config       the config file and its env overlay
//! 3 proxmox      the Proxmox API client (over net) and the fenced privileged backend
//! 2 net | authz  TLS trust and HTTP | SSHSIG, verifier, signers, nonces
//! 1 store        the one durable file format, fault points, the state lock
//! 0 base         time, encodings, JSON type names, secrets, shutdown, logging, locks, version
//! ```
//!
//! `hub` and `reconcile` never import each other; they meet in [`app`]. Each layer's
//! submodules are crate-private behind the layer's re-exports. `main.rs` only calls
//! [`cli`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(unreachable_pub)]

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
