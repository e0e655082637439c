//! Signer-rotation helpers: signing with any test key of `vectors/sshsig/keys/` through
//! the real `ssh-keygen -Y sign`, the keys' public lines, and the blob of a
//! `rotate_signers` op (its new set as the JSON string the params carry).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;

use felhom_agent::base::Timestamp;

use super::sign::nonce;
pub use super::sign::sign_ns;

/// The test keys a rotation test uses, by role in the story.
pub const OPS: &str = "ed25519";
pub const NEW_OPS: &str = "other-ed25519";
pub const REC1: &str = "ecdsa-p256";
pub const REC2: &str = "ecdsa-p384";
pub const REC3: &str = "ecdsa-p521";
pub const NEW_REC: &str = "rsa-2048";

/// The public line of test key `name`, trimmed.
pub fn pubkey(name: &str) -> String {
    fs::read_to_string(format!(
        "{}/vectors/sshsig/keys/{name}.pub",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .trim()
    .to_string()
}

/// `TYPE BASE64` of test key `name` (no comment).
pub fn bare_key(name: &str) -> String {
    let k = pubkey(name);
    let mut it = k.split_ascii_whitespace();
    format!("{} {}", it.next().unwrap(), it.next().unwrap())
}

/// Signs `blob` with test key `name` by the real `ssh-keygen -Y sign -n felhom-op-v1`
/// (from a 0600 copy in `dir`); returns the armor.
pub fn sign_as(dir: &Path, name: &str, blob: &[u8]) -> String {
    sign_ns(dir, name, blob, "felhom-op-v1")
}

/// One entry of a rotation's new set.
pub fn entry(key_id: &str, role: &str, key: &str) -> serde_json::Value {
    serde_json::json!({"key_id": key_id, "role": role, "public_key": pubkey(key)})
}

/// A `rotate_signers` blob for `host`: `mode`, `version` and the new set, valid from a
/// minute before `now` to half an hour after, with a fresh nonce.
pub fn rotation_blob(
    host: &str,
    mode: &str,
    version: &str,
    set: &[serde_json::Value],
    now: i64,
) -> Vec<u8> {
    let signers = serde_json::to_string(set).unwrap();
    let blob = serde_json::json!({
        "op": "rotate_signers",
        "host_id": host,
        "params": {"mode": mode, "version": version, "signers": signers},
        "key_id": "operator",
        "nonce": nonce(),
        "not_before": Timestamp(now - 60).to_string(),
        "expires_at": Timestamp(now + 1800).to_string(),
    });
    let mut b = serde_json::to_vec(&blob).unwrap();
    b.push(b'\n');
    b
}

/// The params a [`rotation_blob`] carries, as the intent must name them.
pub fn rotation_params(blob: &[u8]) -> std::collections::BTreeMap<String, String> {
    let v: serde_json::Value = serde_json::from_slice(blob).unwrap();
    v["params"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

/// A `guest_destroy` blob signed for guest `guest` with config digest `digest`.
pub fn destroy_blob(host: &str, guest: &str, digest: &str, now: i64) -> Vec<u8> {
    super::sign::destroy_blob(host, guest, digest, now)
}
