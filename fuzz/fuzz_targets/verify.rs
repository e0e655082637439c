//! The whole pipeline: input is `blob 0x00 armored-signature`, against an allow-list of
//! the committed test keys, a fixed clock and a memory nonce store.
//!
//! Properties: without the private keys the fuzzer cannot forge, so an op verifies only
//! when its bytes are exactly a committed blob that ssh-keygen signed; the op returned is
//! that blob's own; and a nonce verifies once — every later try is a replay, because the
//! memory store lives as long as the fuzzing process.
#![no_main]

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use felhom_agent::authz::{MemoryNonceStore, OpBlob, Policy, Role, Signer, Verifier};
use felhom_agent::base::{ManualClock, Timestamp};
use libfuzzer_sys::fuzz_target;

const KEYS: [&str; 4] = [
    include_str!("../../vectors/sshsig/keys/ed25519.pub"),
    include_str!("../../vectors/sshsig/keys/ecdsa-p256.pub"),
    include_str!("../../vectors/sshsig/keys/rsa-2048.pub"),
    include_str!("../../vectors/openssh-sshsig/ed25519_sk.pub"),
];

/// Every blob the committed vectors sign in our namespace.
const SIGNED_BLOBS: [&[u8]; 9] = [
    include_bytes!("../../vectors/sshsig/blobs/op-valid.json"),
    include_bytes!("../../vectors/sshsig/blobs/op-base64-nonce.json"),
    include_bytes!("../../vectors/sshsig/blobs/op-expired.json"),
    include_bytes!("../../vectors/sshsig/blobs/op-long-window.json"),
    include_bytes!("../../vectors/sshsig/blobs/op-not-json.json"),
    include_bytes!("../../vectors/sshsig/blobs/op-not-yet-valid.json"),
    include_bytes!("../../vectors/sshsig/blobs/op-short-nonce.json"),
    include_bytes!("../../vectors/sshsig/blobs/op-unknown-field.json"),
    include_bytes!("../../vectors/sshsig/blobs/op-wrong-host.json"),
];

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let signers = KEYS
            .iter()
            .enumerate()
            .filter_map(|(i, k)| {
                Signer::from_authorized_key(&format!("k{i}"), Role::Operational, k).ok()
            })
            .collect();
        Verifier::new(
            signers,
            "pve-a",
            Policy::default(),
            Arc::new(ManualClock::new(Timestamp(1_893_457_800))),
            Arc::new(MemoryNonceStore::new()),
        )
    })
}

fn verified_nonces() -> &'static Mutex<HashSet<String>> {
    static N: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    N.get_or_init(|| Mutex::new(HashSet::new()))
}

fuzz_target!(|data: &[u8]| {
    let (blob, sig) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(sig) = std::str::from_utf8(sig) else {
        return;
    };
    match verifier().verify(blob, sig) {
        Ok(op) => {
            assert!(
                SIGNED_BLOBS.contains(&blob),
                "verified bytes no committed vector signs: {:?}",
                String::from_utf8_lossy(blob)
            );
            let parsed = OpBlob::parse(blob).expect("a verified blob parses");
            assert_eq!(op.blob, parsed, "the op is not its blob's");
            let mut seen = verified_nonces().lock().unwrap_or_else(|p| p.into_inner());
            let nonce = &op.blob.nonce;
            assert!(seen.insert(nonce.clone()), "nonce {nonce} verified twice");
        }
        Err(e) => assert!(!e.to_string().is_empty(), "an empty refusal"),
    }
});
