//! Helpers shared by the integration tests (each `tests/*.rs` that needs one says
//! `mod common;`). Not every test file uses every helper.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use felhom_agent::net::{Sha256Pin, TlsTrust};
use felhom_agent::proxmox::{Client, ClientOptions};
use felhom_agent::secret::Secret;
use felhom_sim::{DEFAULT_TOKEN_ID, DEFAULT_TOKEN_SECRET, ProxmoxSim};

/// A Proxmox client for `sim`: its default token, its certificate pinned, a 10 s call
/// timeout (long enough for a loaded machine, short enough to fail a hung test).
pub fn pinned_client(sim: &ProxmoxSim) -> Client {
    let mut o = ClientOptions::new(
        sim.url(),
        sim.node(),
        DEFAULT_TOKEN_ID,
        Secret::new(DEFAULT_TOKEN_SECRET),
        TlsTrust::Pin(Sha256Pin::parse(&sim.fingerprint()).unwrap()),
    );
    o.timeout = Duration::from_secs(10);
    Client::new(o).unwrap()
}
