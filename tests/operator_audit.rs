//! `felhom-agent audit` as a process over an audit log written by the real `AuditLog`,
//! rotated once: filters, `--pending`, JSON, and a damaged file reported with exit 1
//! while every byte of both files stays as it was (read-only).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::agent::run_command;

use std::path::Path;

use felhom_agent::base::Timestamp;
use felhom_agent::reconcile::{AuditLog, AuditRecord};
use serde_json::Value;

fn audit(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = run_command(&[&["audit"], args].concat(), config);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn rec(at: i64, op: &str, guest: &str, decision: &str, reason: &str) -> AuditRecord {
    AuditRecord::new(
        Timestamp(1_800_000_000 + at),
        op,
        Some(guest.to_owned()),
        decision,
        reason,
        None,
    )
}

#[test]
fn audit_filters_across_the_rotation_and_reports_damage_read_only() {
    let dir = common::tempdir("audit", "cmd");
    let (config, state) = common::agent::offline_config(&dir);
    {
        let log = AuditLog::open(&state.join("audit.log")).unwrap();
        log.record(&rec(
            1,
            "guest_destroy",
            "105",
            "pending_signature",
            "needs a signature",
        ))
        .unwrap();
        log.record(&rec(2, "start", "101", "allowed", "benign"))
            .unwrap();
        log.rotate().unwrap();
        log.record(&rec(
            3,
            "guest_destroy",
            "106",
            "pending_signature",
            "line\nbreak",
        ))
        .unwrap();
        log.record(&rec(4, "guest_destroy", "105", "executed", "signed by ops"))
            .unwrap();
    }
    assert!(state.join("audit.log.1").is_file(), "rotated once");

    let (code, out, err) = audit(&config, &["--json"]);
    assert_eq!(code, 0, "{err}");
    let all: Value = serde_json::from_str(&out).unwrap();
    let ats: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["decision"].as_str().unwrap())
        .collect();
    assert_eq!(
        ats,
        [
            "pending_signature",
            "allowed",
            "pending_signature",
            "executed"
        ],
        "both files, oldest first, the carried copy listed once"
    );

    let (_, out, _) = audit(&config, &["--json", "--pending"]);
    let pending: Value = serde_json::from_str(&out).unwrap();
    let guests: Vec<&str> = pending
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["guest_id"].as_str().unwrap())
        .collect();
    assert_eq!(guests, ["106"], "105 was executed since");

    let (_, out, _) = audit(&config, &["--json", "--guest", "105", "--code", "executed"]);
    assert_eq!(
        serde_json::from_str::<Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (_, out, _) = audit(&config, &["--json", "--tail", "1"]);
    let last: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(last[0]["decision"], "executed");

    // The table shows control characters, never sends them.
    let (code, out, _) = audit(&config, &[]);
    assert_eq!(code, 0);
    assert!(out.contains("line\\nbreak"), "{out}");
    assert!(out.contains("4 entries"), "{out}");

    // Damage inside the rotated file: exit 1, named; nothing written.
    let rotated = state.join("audit.log.1");
    let mut bytes = std::fs::read(&rotated).unwrap();
    let pos = bytes.windows(6).position(|w| w == b"benign").unwrap();
    bytes[pos] = b'B';
    std::fs::write(&rotated, &bytes).unwrap();
    let before: Vec<Vec<u8>> = ["audit.log", "audit.log.1"]
        .iter()
        .map(|f| std::fs::read(state.join(f)).unwrap())
        .collect();
    let (code, out, err) = audit(&config, &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains("signed by ops"),
        "the current file still reads: {out}"
    );
    assert!(
        err.contains("DAMAGED") && err.contains("audit.log.1 line"),
        "{err}"
    );
    let after: Vec<Vec<u8>> = ["audit.log", "audit.log.1"]
        .iter()
        .map(|f| std::fs::read(state.join(f)).unwrap())
        .collect();
    assert_eq!(before, after, "read-only");
    let _ = std::fs::remove_dir_all(&dir);
}
