//! The whole pipeline: input is `blob 0x00 armored-signature`, against an allow-list of
//! the committed test keys, a fixed clock and a memory nonce store.
#![no_main]

use std::sync::{Arc, OnceLock};

use felhom_agent::authz::{MemoryNonceStore, Policy, Role, Signer, Verifier};
use felhom_agent::time::{ManualClock, Timestamp};
use libfuzzer_sys::fuzz_target;

const KEYS: [&str; 4] = [
    include_str!("../../vectors/sshsig/keys/ed25519.pub"),
    include_str!("../../vectors/sshsig/keys/ecdsa-p256.pub"),
    include_str!("../../vectors/sshsig/keys/rsa-2048.pub"),
    include_str!("../../vectors/openssh-sshsig/ed25519_sk.pub"),
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

fuzz_target!(|data: &[u8]| {
    let (blob, sig) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    if let Ok(sig) = std::str::from_utf8(sig) {
        let _ = verifier().verify(blob, sig);
    }
});
