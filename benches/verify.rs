//! Verifications per second through the whole pipeline (memory nonce store, a fresh
//! nonce every time) against the raw `PublicKey::verify` on the same inputs, per key
//! type; printed with their ratio. Goal: pipeline ≤ 1.2× the raw check for ed25519.
//!
//! `cargo bench --bench verify` (release profile). Not a test: it asserts nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use felhom_agent::authz::{MemoryNonceStore, NAMESPACE, Policy, Role, Signer, Verifier, sshsig};
use felhom_agent::time::{ManualClock, Timestamp};
use ssh_key::{HashAlg, LineEnding, PrivateKey};

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/sshsig/keys");
const NOW: Timestamp = Timestamp(1_893_457_800);

fn blob(i: usize) -> Vec<u8> {
    format!(
        r#"{{"op":"guest_destroy","host_id":"pve-a","guest_id":"105","params":{{"purge":"1"}},"key_id":"bench","nonce":"{i:032x}","not_before":"2030-01-01T00:00:00Z","expires_at":"2030-01-01T01:00:00Z"}}"#
    )
    .into_bytes()
}

fn time_per_op(mut f: impl FnMut(), n: usize) -> Duration {
    // Take the best of three runs: the machine is shared.
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed() / n as u32
        })
        .min()
        .unwrap()
}

fn main() {
    // The RSA vectors claim another key_id than the bench signer: keep the output clean.
    felhom_agent::log::set_level(felhom_agent::log::Level::Error);
    println!(
        "{:<12} {:>14} {:>14} {:>7}",
        "key", "pipeline/s", "raw verify/s", "ratio"
    );
    for (name, n) in [
        ("ed25519", 2000),
        ("ecdsa-p256", 500),
        ("ecdsa-p384", 200),
        ("ecdsa-p521", 100),
        ("rsa-2048", 300),
        ("rsa-3072", 150),
    ] {
        let key = PrivateKey::read_openssh_file(format!("{KEYS}/{name}").as_ref()).unwrap();
        let public = key.public_key().clone();
        let line = public.to_openssh().unwrap();
        // ssh-key 0.6.7 cannot sign with these RSA keys (it refuses them with `Crypto`),
        // so RSA reuses the committed ssh-keygen vector: one signature, and a fresh
        // verifier (memory store) per verification instead of a fresh nonce.
        let fresh_store_each = key.sign(NAMESPACE, HashAlg::Sha512, &blob(0)).is_err();
        let inputs: Vec<(Vec<u8>, String)> = (0..n)
            .map(|i| {
                if fresh_store_each {
                    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/sshsig");
                    return (
                        std::fs::read(format!("{dir}/blobs/op-valid.json")).unwrap(),
                        std::fs::read_to_string(format!("{dir}/sigs/op-valid.{name}.sig")).unwrap(),
                    );
                }
                let b = blob(i);
                let s = key.sign(NAMESPACE, HashAlg::Sha512, &b).unwrap();
                (b, s.to_pem(LineEnding::LF).unwrap())
            })
            .collect();
        let parsed: Vec<_> = inputs
            .iter()
            .map(|(_, s)| sshsig::parse(s, NAMESPACE).unwrap())
            .collect();
        let signer = Signer::from_authorized_key("bench", Role::Operational, &line).unwrap();

        let make = || {
            Verifier::new(
                vec![signer.clone()],
                "pve-a",
                Policy::default(),
                Arc::new(ManualClock::new(NOW)),
                Arc::new(MemoryNonceStore::new()),
            )
        };
        let pipeline = time_per_op(
            || {
                let mut v = make();
                for (b, s) in &inputs {
                    if fresh_store_each {
                        v = make();
                    }
                    std::hint::black_box(v.verify(b, s).unwrap());
                }
            },
            n,
        );
        let raw = time_per_op(
            || {
                for ((b, _), s) in inputs.iter().zip(&parsed) {
                    public.verify(NAMESPACE, b, s).unwrap();
                    std::hint::black_box(());
                }
            },
            n,
        );
        println!(
            "{name:<12} {:>14.0} {:>14.0} {:>6.2}x",
            1.0 / pipeline.as_secs_f64(),
            1.0 / raw.as_secs_f64(),
            pipeline.as_secs_f64() / raw.as_secs_f64()
        );
    }
}
