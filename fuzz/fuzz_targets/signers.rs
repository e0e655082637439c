//! The signer-lifecycle parsers: an OpenSSH allowed_signers file, a revoked-keys file,
//! and a `rotate_signers` op's params (read from the input as a JSON object of strings)
//! planned against a fixed held policy.
//!
//! Properties: an accepted allowed_signers file holds 1 to 32 signers with distinct key
//! ids and key material; a planned rotation is exactly one version above the held one,
//! holds at most 32 distinct signers, at least as many recovery keys as the threshold,
//! and no revoked key.
#![no_main]

use std::collections::{BTreeMap, HashSet};

use felhom_agent::authz::{
    RevokedKeys, Role, SignerPolicy, SignerSource, parse_allowed_signers, plan_rotation,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(signers) = parse_allowed_signers(text, "fuzz") {
        assert!((1..=32).contains(&signers.len()));
        let ids: HashSet<&str> = signers.iter().map(|s| s.key_id.as_str()).collect();
        let fps: HashSet<&str> = signers.iter().map(|s| s.fingerprint.as_str()).collect();
        assert_eq!(ids.len(), signers.len(), "duplicate key_id accepted");
        assert_eq!(fps.len(), signers.len(), "duplicate key accepted");
    }
    let revoked = RevokedKeys::parse(text).unwrap_or_default();
    let Ok(params) = serde_json::from_slice::<BTreeMap<String, String>>(data) else {
        return;
    };
    let held = SignerPolicy {
        version: 7,
        source: SignerSource::Config,
        signers: Vec::new(),
        recovery_threshold: 2,
    };
    if let Ok(next) = plan_rotation(&params, &held, &revoked) {
        assert_eq!(next.version, 8);
        assert!(next.signers.len() <= 32);
        assert!(next.signers.iter().filter(|s| s.role == Role::Recovery).count() >= 2);
        let fps: HashSet<&str> = next.signers.iter().map(|s| s.fingerprint.as_str()).collect();
        assert_eq!(fps.len(), next.signers.len(), "duplicate key accepted");
        assert!(
            next.signers
                .iter()
                .all(|s| revoked.find(s.public_key.key_data()).is_none()),
            "a revoked key planned in"
        );
    }
});
