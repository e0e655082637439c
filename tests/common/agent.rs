//! The agent binary as a child process, for the process tests: the config that points
//! it at the simulators and the command that starts it. What to wait for, and when to
//! stop or kill it, stays with each test.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use felhom_sim::{DEFAULT_TOKEN_SECRET, HubSim, ProxmoxSim};
use serde_json::{Value, json};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_felhom-agent");

/// Writes `dir/agent.json` (0600) and returns its path: host `pve-a`, state in
/// `dir/state`, `pve` pinned by its fingerprint, `hub` trusted through
/// `vectors/tls/ca.crt`, 5 s timeouts; `edit` then adds or changes what the test needs.
pub fn write_agent_config(
    dir: &Path,
    pve: &ProxmoxSim,
    hub: &HubSim,
    edit: impl FnOnce(&mut Value),
) -> PathBuf {
    let ca = format!("{}/vectors/tls/ca.crt", env!("CARGO_MANIFEST_DIR"));
    let mut config = json!({
        "host_id": "pve-a",
        "state_dir": dir.join("state"),
        "proxmox": {
            "url": pve.url(), "node": pve.node(),
            "token_id": "felhom-agent@pve!agent", "token_secret": DEFAULT_TOKEN_SECRET,
            "tls": {"fingerprint_sha256": pve.fingerprint()}, "timeout_seconds": 5
        },
        "hub": {"url": hub.url(), "api_key": hub.key(), "timeout_seconds": 5,
            "tls": {"ca_file": ca}}
    });
    edit(&mut config);
    let path = dir.join("agent.json");
    fs::write(&path, config.to_string()).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// [`write_agent_config`] for a daemon that polls the hub every 60 s, trusts the test
/// signer and reconciles toward `dir/desired.json`.
pub fn write_signed_agent_config(dir: &Path, pve: &ProxmoxSim, hub: &HubSim) -> PathBuf {
    write_agent_config(dir, pve, hub, |c| {
        c["hub"]["poll_seconds"] = json!(60);
        c["authz"] = super::sign::authz_json();
        c["reconcile"] = json!({"desired_file": dir.join("desired.json")});
    })
}

/// `felhom-agent ARGS --config CONFIG` with stdin and stdout closed and stderr into
/// `stderr`; the caller adds its environment and spawns it.
pub fn agent_command(args: &[&str], config: &Path, stderr: File) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    cmd
}

/// The envelope of a hub that asks for the shortest poll interval the agent adopts
/// (60 s), so the next round, and its announcement of signed ops, comes soon.
pub fn fast_envelope() -> Value {
    json!({"poll_interval_seconds": 60, "blocked": false,
        "desired_generation": 0, "has_signed_ops": false})
}

/// A hub simulator answering every round with [`fast_envelope`].
pub fn fast_hub() -> HubSim {
    HubSim::builder().default_envelope(fast_envelope()).start()
}
