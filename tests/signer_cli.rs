//! The signer lifecycle as an operator sees it through the real binary: `verify` with
//! several `--sig` files over one rotation blob (threshold met, and not), the effective
//! signer set it prints (source, version, each key's role, fingerprint and expiry, the
//! revoked keys), the same set read from `signers.json` after a rotation, and `selftest
//! offline` showing that set and warning of a signer about to expire.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::logfmt::events;
use common::rotate::{
    NEW_OPS, OPS, REC1, REC2, REC3, entry, pubkey, rotation_blob, rotation_params, sign_as,
};
use common::tempdir;
use felhom_agent::authz::{AuthzConfig, load_signer_set_os, plan_rotation};
use felhom_agent::base::{Clock, SystemClock, Timestamp};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_felhom-agent");

fn dir(name: &str) -> PathBuf {
    let d = tempdir("signer-cli", name);
    fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
    fs::create_dir_all(d.join("state")).unwrap();
    fs::set_permissions(d.join("state"), fs::Permissions::from_mode(0o700)).unwrap();
    d
}

fn authz(valid_before_ops: Option<i64>, revoked: Option<&Path>) -> serde_json::Value {
    let mut ops = json!({"key_id": "ops-2026", "role": "operational", "public_key": pubkey(OPS)});
    if let Some(t) = valid_before_ops {
        ops["valid_before"] = json!(Timestamp(t).to_string());
    }
    json!({
        "recovery_threshold": 2,
        "revoked_keys_file": revoked,
        "signers": [
            ops,
            {"key_id": "rec-1", "role": "recovery", "public_key": pubkey(REC1)},
            {"key_id": "rec-2", "role": "recovery", "public_key": pubkey(REC2)},
        ]
    })
}

fn write_config(d: &Path, authz: serde_json::Value) -> PathBuf {
    let cfg = json!({"host_id": "pve-a", "state_dir": d.join("state"), "authz": authz});
    let p = d.join("agent.json");
    fs::write(&p, cfg.to_string()).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn run(cfg: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(cfg)
        .env_remove("FELHOM_AGENT_HOST_ID")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `verify --blob B --sig S1 [--sig S2 ...]` over `blob` signed by `keys`.
fn verify(d: &Path, cfg: &Path, blob: &[u8], keys: &[&str]) -> Output {
    let b = d.join(format!("blob-{}.json", common::sign::nonce()));
    fs::write(&b, blob).unwrap();
    let mut args: Vec<String> = vec!["verify".into(), "--blob".into(), b.display().to_string()];
    for k in keys {
        let s = d.join(format!("sig-{}.sig", common::sign::nonce()));
        fs::write(&s, sign_as(d, k, blob)).unwrap();
        args.push("--sig".into());
        args.push(s.display().to_string());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run(cfg, &refs)
}

fn line_with<'a>(stdout: &'a str, prefix: &str) -> Vec<&'a str> {
    stdout.lines().filter(|l| l.starts_with(prefix)).collect()
}

fn new_set() -> Vec<serde_json::Value> {
    vec![
        entry("ops-2027", "operational", NEW_OPS),
        entry("rec-1", "recovery", REC1),
        entry("rec-3", "recovery", REC3),
    ]
}

#[test]
fn verify_counts_distinct_recovery_signatures_and_prints_the_effective_set() {
    let d = dir("verify");
    let revoked = d.join("revoked_keys");
    fs::write(&revoked, format!("{}\n", pubkey("rsa-2048"))).unwrap();
    let cfg = write_config(&d, authz(None, Some(&revoked)));
    let now = SystemClock.now().unix();
    let blob = rotation_blob("pve-a", "emergency", "1", &new_set(), now);

    let out = verify(&d, &cfg, &blob, &[REC1, REC2]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.starts_with("verified (no nonce burned)\n"),
        "{stdout}"
    );
    assert_eq!(
        line_with(&stdout, "cosigner: rec-2 recovery").len(),
        1,
        "{stdout}"
    );
    assert_eq!(
        line_with(&stdout, "signer_source: config"),
        vec!["signer_source: config"]
    );
    assert_eq!(
        line_with(&stdout, "signer_version: 0"),
        vec!["signer_version: 0"]
    );
    // The set's lines carry a fingerprint; the op's own `signer:` line does not.
    let signers: Vec<&str> = line_with(&stdout, "signer: ")
        .into_iter()
        .filter(|l| l.contains(" SHA256:"))
        .collect();
    assert_eq!(signers.len(), 3, "{stdout}");
    assert!(
        signers[1].starts_with("signer: rec-1 recovery SHA256:"),
        "{stdout}"
    );
    assert!(signers[1].ends_with("valid_before=never"), "{stdout}");
    assert_eq!(line_with(&stdout, "revoked: SHA256:").len(), 1, "{stdout}");

    // One recovery signature twice, or one and an operational one: below the threshold.
    for keys in [&[REC1, REC1][..], &[REC1, OPS][..], &[REC1][..]] {
        let out = verify(&d, &cfg, &blob, keys);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{keys:?}: {stdout}");
        assert!(
            stdout.starts_with("refused: below_threshold\n"),
            "{keys:?}: {stdout}"
        );
    }
    let skipped = rotation_blob("pve-a", "emergency", "2", &new_set(), now);
    let out = verify(&d, &cfg, &skipped, &[REC1, REC2]);
    assert!(text(&out.stdout).starts_with("refused: policy_version\n"));
    // Nothing was written: verify burns nothing and rotates nothing.
    assert!(!d.join("state").join("signers.json").exists());
    assert!(!d.join("state").join("nonces.log").exists());
}

#[test]
fn after_a_rotation_verify_and_selftest_show_the_rotated_set() {
    let d = dir("rotated");
    let now = SystemClock.now().unix();
    // ops-2026 expires in ten days: selftest warns.
    let cfg = write_config(&d, authz(Some(now + 10 * 86_400), None));
    let acfg: AuthzConfig = serde_json::from_value(authz(Some(now + 10 * 86_400), None)).unwrap();

    let out = run(&cfg, &["selftest", "offline"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("signers: signer_source") && stdout.contains("config"),
        "{stdout}"
    );
    assert!(stdout.contains("signers: expiry"), "{stdout}");
    let warned = events(&text(&out.stderr), "signer_expiring");
    assert_eq!(warned.len(), 1);
    assert_eq!(warned[0].get("key_id"), Some("ops-2026"));

    // Rotate through the library, as the daemon's executor does.
    let set = load_signer_set_os(&acfg, Some(&d.join("state"))).unwrap();
    let blob = rotation_blob("pve-a", "emergency", "1", &new_set(), now);
    let next = plan_rotation(&rotation_params(&blob), &set.policy(), &set.revoked()).unwrap();
    set.apply_rotation(next).unwrap();

    let destroy = common::sign::destroy_blob("pve-a", "105", "ab12", now);
    let out = verify(&d, &cfg, &destroy, &[OPS]);
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("refused: unknown_signer\n"), "{stdout}");
    assert_eq!(
        line_with(&stdout, "signer_source: rotated").len(),
        1,
        "{stdout}"
    );
    assert_eq!(line_with(&stdout, "signer_version: 1").len(), 1, "{stdout}");
    let out = verify(&d, &cfg, &destroy, &[NEW_OPS]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));

    let out = run(&cfg, &["selftest", "offline"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("version 1 from rotated"), "{stdout}");
    assert!(
        !stdout.contains("signers: expiry"),
        "the expiring key is gone: {stdout}"
    );
}
