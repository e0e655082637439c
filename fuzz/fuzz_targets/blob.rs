//! The two blob parsers: the SSHSIG blob inside the armor, and the JSON op blob.
//!
//! Properties, checked independently of the parsers' own code: a decoded SSHSIG blob is
//! version 1 with an empty reserved field and a sha256/sha512 hash; the key and
//! algorithm policy never passes DSA, small RSA or `ssh-rsa`; an accepted op blob has a
//! nonce of at least 128 bits (a string of hex digits counts as hex), a validity
//! window of at most 24 h, non-empty fields without control characters, and a
//! `guest_digest` of lower-case hex exactly when it names a guest.
#![no_main]

use felhom_agent::authz::{OpBlob, sshsig};
use libfuzzer_sys::fuzz_target;
use ssh_key::public::KeyData;
use ssh_key::{Algorithm, HashAlg};

fn clean(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(char::is_control)
}

/// Bits a nonce carries, counted the conservative way: hex when every character is a
/// hex digit, otherwise base64 (4 characters carry 3 bytes, padding carries nothing).
fn nonce_bits(n: &str) -> usize {
    if n.len() % 2 == 0 && n.bytes().all(|b| b.is_ascii_hexdigit()) {
        return n.len() * 4;
    }
    let data = n.trim_end_matches('=').len();
    data * 6 / 8 * 8
}

fuzz_target!(|data: &[u8]| {
    if let Ok(sig) = sshsig::decode_blob(data) {
        assert_eq!(sig.version(), 1);
        assert!(sig.reserved().is_empty());
        assert!(matches!(sig.hash_alg(), HashAlg::Sha256 | HashAlg::Sha512));
        let key = sig.public_key();
        if sshsig::check_key_policy(key).is_ok() {
            assert!(!matches!(key, KeyData::Dsa(_)), "DSA key passed the policy");
            if let KeyData::Rsa(k) = key {
                let n = k.n.as_positive_bytes().unwrap_or_default();
                let n = &n[n.iter().position(|&b| b != 0).unwrap_or(n.len())..];
                assert!(n.len() >= 256, "RSA key under 2048 bits passed the policy");
            }
        }
        if sshsig::check_algorithm(key, &sig.algorithm()).is_ok() {
            assert!(
                !matches!(sig.algorithm(), Algorithm::Rsa { hash: None }),
                "ssh-rsa (SHA-1) passed the algorithm check"
            );
            assert_eq!(
                std::mem::discriminant(&key.algorithm()),
                std::mem::discriminant(&sig.algorithm()),
                "signature algorithm of another key type passed"
            );
        }
        let _ = sshsig::sk_assertion(&sig);
    }
    if let Ok(op) = OpBlob::parse(data) {
        assert!(clean(&op.op) && clean(&op.host_id) && clean(&op.key_id));
        assert!(op.guest_id.as_deref().is_none_or(clean));
        assert_eq!(
            op.guest_id.is_some(),
            op.guest_digest.is_some(),
            "a guest named without its digest, or a digest without a guest"
        );
        assert!(op.guest_digest.as_deref().is_none_or(|d| {
            (1..=64).contains(&d.len()) && d.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        }));
        assert!(
            nonce_bits(&op.nonce) >= 128,
            "nonce {:?} of under 128 bits accepted",
            op.nonce
        );
        let window = op.expires_at.0 - op.not_before.0;
        assert!(window > 0 && window <= 24 * 3600, "window of {window} s accepted");
    }
});
