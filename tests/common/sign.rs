//! Signed ops for the tests: nonces no other blob of the process uses, the operator's
//! `guest_destroy` blob, and its signature by the real `ssh-keygen -Y sign -n
//! felhom-op-v1` with the test key `vectors/sshsig/keys/ed25519` (allow-listed as
//! `ops-2026`). Also read by `benches/verify.rs` for the blob text; test code, never in
//! the agent.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use felhom_agent::authz::{AuthzConfig, FileNonceStore, Role, SignerEntry, Verifier};
use felhom_agent::base::{ManualClock, Timestamp};

/// A nonce no other blob of this process uses (nonces must not collide between the
/// tests of one binary): the pid and a process-wide counter, 32 hex digits.
pub fn nonce() -> String {
    static N: AtomicU64 = AtomicU64::new(1);
    format!(
        "{:016x}{:016x}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A `guest_destroy` an operator signs: `digest` is the guest's config digest as they
/// saw it.
pub struct Destroy<'a> {
    pub key_id: &'a str,
    pub host: &'a str,
    pub guest: &'a str,
    pub digest: &'a str,
    pub nonce: String,
    pub not_before: Timestamp,
    pub expires_at: Timestamp,
}

impl<'a> Destroy<'a> {
    /// By `ops-2026`, with a fresh nonce, valid from a minute before `now` (Unix
    /// seconds) to half an hour after.
    pub fn new(host: &'a str, guest: &'a str, digest: &'a str, now: i64) -> Self {
        Destroy {
            key_id: "ops-2026",
            host,
            guest,
            digest,
            nonce: nonce(),
            not_before: Timestamp(now - 60),
            expires_at: Timestamp(now + 1800),
        }
    }

    /// The blob, written by hand (trailing newline, key order of our choosing): the
    /// exact bytes must survive the trip, not a re-serialization of them.
    pub fn blob(&self) -> Vec<u8> {
        let Destroy {
            key_id,
            host,
            guest,
            digest,
            nonce,
            not_before,
            expires_at,
        } = self;
        format!(
            "{{\"op\":\"guest_destroy\",\"host_id\":\"{host}\",\"guest_id\":\"{guest}\",\"guest_digest\":\"{digest}\",\"params\":{{\"purge\":\"1\"}},\"key_id\":\"{key_id}\",\"nonce\":\"{nonce}\",\"not_before\":\"{not_before}\",\"expires_at\":\"{expires_at}\"}}\n"
        )
        .into_bytes()
    }
}

/// [`Destroy::new`]'s blob.
pub fn destroy_blob(host: &str, guest: &str, digest: &str, now: i64) -> Vec<u8> {
    Destroy::new(host, guest, digest, now).blob()
}

/// Signs `blob` with the real `ssh-keygen -Y sign`, from a 0600 copy of the test key in
/// `dir` (a 0700 directory the test owns); returns the armored signature.
pub fn ssh_keygen_sign(dir: &Path, blob: &[u8]) -> String {
    sign_ns(dir, "ed25519", blob, "felhom-op-v1")
}

/// Signs `blob` with test key `name` of `vectors/sshsig/keys/` by the real `ssh-keygen
/// -Y sign -n NS` (from a 0600 copy in `dir`); returns the armor.
pub fn sign_ns(dir: &Path, name: &str, blob: &[u8], ns: &str) -> String {
    let key = dir.join(format!("key-{name}"));
    if !key.exists() {
        fs::copy(
            format!("{}/vectors/sshsig/keys/{name}", env!("CARGO_MANIFEST_DIR")),
            &key,
        )
        .unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    }
    let msg = dir.join(format!("blob-{}.json", nonce()));
    fs::write(&msg, blob).unwrap();
    let st = Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", ns, "-f"])
        .arg(&key)
        .arg(&msg)
        .stderr(Stdio::null())
        .status()
        .expect("ssh-keygen runs");
    assert!(st.success(), "ssh-keygen -Y sign failed");
    fs::read_to_string(format!("{}.sig", msg.display())).unwrap()
}

/// The test key's public line, as an allow-list holds it.
pub const PUBLIC_KEY: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/vectors/sshsig/keys/ed25519.pub"
));

/// The allow-list entry for the test key: `ops-2026`, operational.
pub fn signer() -> SignerEntry {
    SignerEntry {
        key_id: "ops-2026".into(),
        role: Role::Operational,
        public_key: PUBLIC_KEY.into(),
        valid_before: None,
    }
}

/// The verifier of host `pve-a` allowing [`signer`] alone, on `clock`, burning nonces
/// in `dir/nonces.log` (a 300 s clock skew).
pub fn verifier(dir: &Path, clock: &ManualClock) -> Verifier {
    let cfg = AuthzConfig {
        signers: vec![signer()],
        ..AuthzConfig::default()
    };
    let nonces = Arc::new(FileNonceStore::open(dir.join("nonces.log"), 300).unwrap());
    Verifier::from_config(&cfg, "pve-a", Arc::new(clock.clone()), nonces).unwrap()
}

/// The config file's `authz` section allowing the test key as [`signer`] does.
pub fn authz_json() -> serde_json::Value {
    serde_json::json!({"signers": [
        {"key_id": "ops-2026", "role": "operational", "public_key": PUBLIC_KEY.trim()}
    ]})
}

/// Any op's blob, by `ops-2026`, with a fresh nonce, valid from a minute before `now`
/// (Unix seconds) to half an hour after: `params` as given, in that order.
pub fn op_blob(
    op: &str,
    host: &str,
    guest: &str,
    digest: &str,
    params: &[(&str, &str)],
    now: i64,
) -> (Vec<u8>, String) {
    let nonce = nonce();
    let params: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("\"{k}\":\"{v}\""))
        .collect();
    let blob = format!(
        "{{\"op\":\"{op}\",\"host_id\":\"{host}\",\"guest_id\":\"{guest}\",\"guest_digest\":\"{digest}\",\"params\":{{{}}},\"key_id\":\"ops-2026\",\"nonce\":\"{nonce}\",\"not_before\":\"{}\",\"expires_at\":\"{}\"}}\n",
        params.join(","),
        Timestamp(now - 60),
        Timestamp(now + 1800)
    )
    .into_bytes();
    (blob, nonce)
}
