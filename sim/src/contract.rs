//! The host-report contract as the hub simulator checks it: the golden file
//! `vectors/host-report.golden.json` is the single source of the shape, and this module
//! says only what the file cannot (which fields may be absent or `null`, which strings
//! are words from a fixed set, which collections share an element shape).
//!
//! Test and demo code: it never talks to the network and never ships in the agent.

use serde_json::Value;

/// The contract every report is checked against.
pub const CONTRACT: &str = include_str!("../../vectors/host-report.golden.json");

/// Fields the contract allows to be left out, as `path` patterns (`[]` for any index):
/// a guest's spec and digest when its config was unreadable, the signer policy of a host
/// with no signers.
pub const OPTIONAL_FIELDS: &[&str] = &["guests[].spec", "guests[].digest", "signer_policy"];

/// Fields the contract allows to be `null` (what Proxmox may not say, or what does not
/// apply: an inactive storage's sizes, a never-verified PBS snapshot, a host-wide audit
/// entry's guest, a host no operator paused (or an unreadable pause marker's author), the delivery of a decision the hub did not deliver). Every other
/// field must be present with the contract's type; a nullable object, when present,
/// must have the contract's shape.
pub const NULLABLE_FIELDS: &[&str] = &[
    "storage_targets[].total_bytes",
    "storage_targets[].used_bytes",
    "storage_targets[].avail_bytes",
    "backups[].vmid",
    "backups[].created_at",
    "backups[].notes",
    "pbs_snapshots[].vmid",
    "pbs_snapshots[].created_at",
    "pbs_snapshots[].verification",
    "pbs_snapshots[].notes",
    "restore_tests[].scratch_vmid",
    "restore_tests[].stage",
    "restore_tests[].detail",
    "restore_tests[].size_bytes",
    "audit_tail[].guest_id",
    "audit_tail[].key_id",
    "audit_tail[].delivery",
    "audit_tail[].delivery.hub_op_id",
    "audit_tail[].delivery.nonce",
    "audit_tail[].delivery.index",
    "audit_tail[].delivery.blob_sha256",
    "audit_tail[].delivery.blob_bytes",
    "pending_signatures[].guest_id",
    "pending_signatures[].key_id",
    "pending_signatures[].delivery",
    "pending_signatures[].delivery.hub_op_id",
    "pending_signatures[].delivery.nonce",
    "pending_signatures[].delivery.index",
    "pending_signatures[].delivery.blob_sha256",
    "pending_signatures[].delivery.blob_bytes",
    "signed_op_results[].nonce",
    "health.disks[].model",
    "health.disks[].smart_ok",
    "health.disks[].temperature_c",
    "health.disks[].reallocated_sectors",
    "paused",
    "paused.since",
    "paused.by_uid",
];

/// Collections whose elements have the shape of another collection's: the contract's
/// first element of the second is the template for both (`pending_signatures` holds
/// audit entries, and the contract shows its fullest audit entry in `audit_tail`).
pub const SHARED_SHAPES: &[(&str, &str)] = &[("pending_signatures", "audit_tail")];

/// Strings the contract limits to a fixed set of words.
pub const ENUM_FIELDS: &[(&str, &[&str])] = &[
    ("guests[].status", &["running", "stopped", "unknown"]),
    ("health.disks_state", &["ok", "unknown"]),
    ("health.sensors_state", &["ok", "unknown"]),
    (
        "signed_op_results[].outcome",
        &[
            "executed",
            "refused",
            "failed",
            "skipped",
            "held",
            "malformed",
            "not_executed",
        ],
    ),
    (
        "cloudflared.status",
        &[
            "active",
            "inactive",
            "failed",
            "activating",
            "deactivating",
            "reloading",
            "maintenance",
            "refreshing",
            "unknown",
        ],
    ),
];

/// The template reports are checked against: [`CONTRACT`] with each of
/// [`SHARED_SHAPES`] applied.
pub fn contract_template() -> Result<Value, String> {
    let mut contract: Value = serde_json::from_str(CONTRACT)
        .map_err(|e| format!("the contract file is not JSON: {e}"))?;
    for (collection, like) in SHARED_SHAPES {
        let template = contract
            .get(*like)
            .cloned()
            .ok_or_else(|| format!("the contract has no {like}"))?;
        if let Some(o) = contract.as_object_mut() {
            o.insert((*collection).to_string(), template);
        }
    }
    Ok(contract)
}

/// Checks a report against [`CONTRACT`]; returns one line per problem, each naming the
/// field's path (`guests[0].spec.cores: missing`, `host.kernel: not in the contract`,
/// `backups: must be an array, got null`). Empty when the report conforms.
///
/// Objects must have exactly the contract's keys (except [`OPTIONAL_FIELDS`], which may
/// be absent); every element of an array is checked against the contract's first
/// element (an array the contract shows empty must be empty); a scalar must have the
/// contract's JSON type; a field may be `null` only where [`NULLABLE_FIELDS`] says so;
/// a word must be one of those [`ENUM_FIELDS`] lists for it.
pub fn validate_report(report: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    match contract_template() {
        Ok(contract) => check(report, &contract, "", "", &mut problems),
        Err(e) => problems.push(e),
    }
    problems
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// `path` names the place for messages (`guests[0].spec`); `pattern` the same place
/// with indices blanked (`guests[].spec`) for [`OPTIONAL_FIELDS`].
fn check(got: &Value, want: &Value, path: &str, pattern: &str, problems: &mut Vec<String>) {
    let name = if path.is_empty() { "report" } else { path };
    match want {
        Value::Object(w) => {
            if got.is_null() && NULLABLE_FIELDS.contains(&pattern) {
                return;
            }
            let Value::Object(g) = got else {
                problems.push(format!("{name}: must be an object, got {}", kind(got)));
                return;
            };
            for (k, wv) in w {
                let (p, pat) = (join(path, k), join(pattern, k));
                match g.get(k) {
                    Some(gv) => check(gv, wv, &p, &pat, problems),
                    None if OPTIONAL_FIELDS.contains(&pat.as_str()) => {}
                    None => problems.push(format!("{p}: missing")),
                }
            }
            for k in g.keys().filter(|k| !w.contains_key(*k)) {
                problems.push(format!("{}: not in the contract", join(path, k)));
            }
        }
        Value::Array(w) => {
            let Value::Array(g) = got else {
                problems.push(format!("{name}: must be an array, got {}", kind(got)));
                return;
            };
            match w.first() {
                Some(w0) => {
                    for (i, gv) in g.iter().enumerate() {
                        check(
                            gv,
                            w0,
                            &format!("{path}[{i}]"),
                            &format!("{pattern}[]"),
                            problems,
                        );
                    }
                }
                None if !g.is_empty() => problems.push(format!(
                    "{name}: must be empty (the contract defines no element shape)"
                )),
                None => {}
            }
        }
        Value::Null => {
            if got.is_object() || got.is_array() {
                problems.push(format!("{name}: must be a scalar, got {}", kind(got)));
            }
        }
        scalar => {
            if got.is_null() {
                if !NULLABLE_FIELDS.contains(&pattern) {
                    problems.push(format!(
                        "{name}: must be {}, got null (the field is not nullable)",
                        kind(scalar)
                    ));
                }
            } else if kind(got) != kind(scalar) {
                problems.push(format!(
                    "{name}: must be {}, got {}",
                    kind(scalar),
                    kind(got)
                ));
            } else if let (Some(word), Some((_, words))) = (
                got.as_str(),
                ENUM_FIELDS.iter().find(|(p, _)| *p == pattern),
            ) && !words.contains(&word)
            {
                problems.push(format!(
                    "{name}: must be one of {}, got {word:?}",
                    words.join(", ")
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn contract() -> Value {
        serde_json::from_str(CONTRACT).unwrap_or_default()
    }

    fn pointer(pattern: &str) -> String {
        format!("/{}", pattern.replace("[]", "/0").replace('.', "/"))
    }

    #[test]
    fn the_contract_itself_conforms() {
        assert_eq!(validate_report(&contract()), Vec::<String>::new());
    }

    #[test]
    fn missing_extra_and_mistyped_fields_are_named() {
        let mut r = contract();
        let top = r.as_object_mut().map(|o| {
            o.remove("host_id");
            o.insert("kernel".into(), json!("6.8"));
            o.insert("backups".into(), Value::Null);
        });
        assert!(top.is_some());
        r["guests"][0]["spec"]
            .as_object_mut()
            .map(|o| o.remove("cores"));
        r["host"]["load"]["avg1"] = json!("0.12");
        r["restore_tests"][0]["x"] = json!(1);
        let p = validate_report(&r);
        for want in [
            "host_id: missing",
            "kernel: not in the contract",
            "backups: must be an array, got null",
            "guests[0].spec.cores: missing",
            "host.load.avg1: must be a number, got a string",
            "restore_tests[0].x: not in the contract",
        ] {
            assert!(p.iter().any(|l| l.starts_with(want)), "{want} not in {p:?}");
        }
    }

    /// The contract's value at a pattern (first element for `[]`).
    fn at<'a>(v: &'a Value, pattern: &str) -> Option<&'a Value> {
        pattern
            .split('.')
            .try_fold(v, |v, seg| match seg.strip_suffix("[]") {
                Some(k) => v.get(k)?.get(0),
                None => v.get(seg),
            })
    }

    #[test]
    fn every_nullable_and_enum_pattern_names_a_contract_field() {
        let c = contract_template().unwrap_or_default();
        for p in NULLABLE_FIELDS {
            let v = at(&c, p).unwrap_or_else(|| panic!("{p} is not in the contract"));
            assert!(!v.is_array(), "{p} is an array (arrays are never null)");
        }
        for (p, _) in ENUM_FIELDS {
            let v = at(&c, p).unwrap_or_else(|| panic!("{p} is not in the contract"));
            assert!(!v.is_object() && !v.is_array(), "{p} is not a scalar");
        }
        for (p, words) in ENUM_FIELDS {
            let v = at(&c, p).and_then(Value::as_str);
            assert!(v.is_some_and(|w| words.contains(&w)), "{p}: {v:?}");
        }
    }

    #[test]
    fn required_scalars_may_not_be_null() {
        for (pointer, field) in [
            ("/host_id", "host_id"),
            ("/guests/0/vmid", "guests[0].vmid"),
            ("/guests/0/status", "guests[0].status"),
            ("/guests/0/name", "guests[0].name"),
            ("/host/cpu/usage", "host.cpu.usage"),
            ("/cloudflared/status", "cloudflared.status"),
            ("/backups/0/size_bytes", "backups[0].size_bytes"),
            ("/storage_targets/1/active", "storage_targets[1].active"),
            ("/audit_tail/0/decision", "audit_tail[0].decision"),
            (
                "/audit_tail/0/truncated/0/bytes",
                "audit_tail[0].truncated[0].bytes",
            ),
            (
                "/pending_signatures/0/reason",
                "pending_signatures[0].reason",
            ),
        ] {
            let mut r = contract();
            if let Some(v) = r.pointer_mut(pointer) {
                *v = Value::Null;
            }
            let p = validate_report(&r);
            assert_eq!(p.len(), 1, "{field}: {p:?}");
            assert!(
                p[0].starts_with(&format!("{field}: must be ")) && p[0].contains("got null"),
                "{p:?}"
            );
        }
    }

    #[test]
    fn a_signed_op_result_has_the_contracts_fields_and_outcome_words() {
        let mut r = contract();
        r["signed_op_results"][0]["nonce"] = Value::Null;
        assert_eq!(
            validate_report(&r),
            Vec::<String>::new(),
            "nonce may be null"
        );
        r["signed_op_results"][0]["outcome"] = json!("won");
        r["signed_op_results"][0]
            .as_object_mut()
            .map(|o| o.remove("code"));
        let mut p = validate_report(&r);
        p.sort();
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0], "signed_op_results[0].code: missing");
        assert!(p[1].starts_with("signed_op_results[0].outcome: must be one of executed, "));
    }

    #[test]
    fn guest_and_cloudflared_status_are_words_from_the_contract() {
        let mut r = contract();
        for w in ["running", "stopped", "unknown"] {
            r["guests"][0]["status"] = json!(w);
            assert_eq!(validate_report(&r), Vec::<String>::new(), "{w}");
        }
        r["guests"][0]["status"] = json!("paused");
        r["cloudflared"]["status"] = json!("up");
        let mut p = validate_report(&r);
        p.sort();
        assert_eq!(
            p,
            [
                "cloudflared.status: must be one of active, inactive, failed, activating, \
                 deactivating, reloading, maintenance, refreshing, unknown, got \"up\"",
                "guests[0].status: must be one of running, stopped, unknown, got \"paused\""
            ]
        );
    }

    #[test]
    fn spec_may_be_absent_and_nullable_fields_may_be_null() {
        let template = contract_template().unwrap_or_default();
        for p in NULLABLE_FIELDS {
            let mut r = template.clone();
            if let Some(v) = r.pointer_mut(&pointer(p)) {
                *v = Value::Null;
            }
            assert_eq!(validate_report(&r), Vec::<String>::new(), "{p}");
        }
        let mut r = contract();
        r["guests"][0].as_object_mut().map(|o| o.remove("spec"));
        r["guests"] = json!([r["guests"][0].clone(), r["guests"][0].clone()]);
        assert_eq!(validate_report(&r), Vec::<String>::new());
        r["host"].as_object_mut().map(|o| o.remove("cpu"));
        assert_eq!(validate_report(&r), vec!["host.cpu: missing".to_string()]);
    }

    #[test]
    fn audit_entries_are_checked_to_their_nested_fields_in_both_collections() {
        let template = contract_template().unwrap_or_default();
        let full = template["audit_tail"][0].clone();
        let mut r = contract();
        r["pending_signatures"] = json!([full.clone()]);
        assert_eq!(validate_report(&r), Vec::<String>::new());
        for collection in ["audit_tail", "pending_signatures"] {
            let mut r = contract();
            let mut e = full.clone();
            e["delivery"]["blob_bytes"] = json!("312");
            e["truncated"][0]
                .as_object_mut()
                .map(|o| o.remove("sha256"));
            e["delivery"]
                .as_object_mut()
                .map(|o| o.insert("blob".into(), json!("AAAA")));
            r[collection] = json!([e]);
            let mut p = validate_report(&r);
            p.sort();
            assert_eq!(
                p,
                [
                    format!("{collection}[0].delivery.blob: not in the contract"),
                    format!("{collection}[0].delivery.blob_bytes: must be a number, got a string"),
                    format!("{collection}[0].truncated[0].sha256: missing"),
                ],
                "{collection}"
            );
            r[collection][0]["delivery"] = json!([]);
            r[collection][0]["truncated"] = Value::Null;
            let p = validate_report(&r);
            assert!(
                p.contains(&format!(
                    "{collection}[0].delivery: must be an object, got an array"
                )) && p.contains(&format!(
                    "{collection}[0].truncated: must be an array, got null"
                )),
                "{p:?}"
            );
        }
    }
}
