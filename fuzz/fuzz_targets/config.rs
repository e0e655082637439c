//! The config file parser and validator on arbitrary bytes, for every mode, with an
//! empty environment: no panic, and an accepted config's `redacted()` never shows an
//! inline secret.
//!
//! A document that names a secret file (`token_secret_file`, `api_key_file`) is only
//! validated in the modes that read no secret, so the fuzzer never reads files it
//! invents.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use felhom_agent::config::{Config, Mode};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const SECRET_FREE: [Mode; 3] = [Mode::SelftestOffline, Mode::Verify, Mode::Journal];
const READS_SECRETS: [Mode; 5] = [
    Mode::Run,
    Mode::SelftestRead,
    Mode::SelftestTask,
    Mode::SelftestHub,
    Mode::Plan,
];

fn names_secret_file(data: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return false;
    };
    ["/proxmox/token_secret_file", "/hub/api_key_file"]
        .iter()
        .any(|p| v.pointer(p).is_some_and(|f| !f.is_null()))
}

fn check(data: &[u8], mode: Mode) {
    let env = BTreeMap::new();
    let Ok(cfg) = Config::from_slice(data, Path::new("fuzz.json"), &env, mode) else {
        return;
    };
    let shown = cfg.redacted();
    let secrets = [
        cfg.proxmox.as_ref().and_then(|p| p.token_secret.as_ref()),
        cfg.hub.as_ref().and_then(|h| h.api_key.as_ref()),
    ];
    for s in secrets.into_iter().flatten() {
        let s = s.expose();
        // Short secrets can occur by chance in other fields; long ones must not show.
        if s.len() >= 12 {
            assert!(!shown.contains(s), "redacted() shows a secret");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    for mode in SECRET_FREE {
        check(data, mode);
    }
    if !names_secret_file(data) {
        for mode in READS_SECRETS {
            check(data, mode);
        }
    }
});
