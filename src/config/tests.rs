//! The configuration's unit tests: loading, the overlay, every field error and the
//! redacted form. They never read the process environment or a real config path.

use super::schema::{SCHEMA, env_name};
use super::*;
use crate::net::Sha256Pin;
use serde_json::json;

const PIN: &str = "0B:9F:FE:ED:3A:31:26:BC:FB:D3:C1:AA:8F:90:EF:F5:A0:47:04:96:79:0B:4D:19:ED:EA:3D:99:26:B2:A1:C6";
const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILegkWonGBmXh5jeLDN8tuep67C4kAWq6lYQK3C5cpaf ops";

fn full() -> Value {
    json!({
        "host_id": "pve-a",
        "state_dir": "/var/lib/felhom-agent",
        "log": {"level": "debug"},
        "proxmox": {
            "url": "https://127.0.0.1:8006",
            "node": "pve-a",
            "token_id": "felhom-agent@pve!agent",
            "token_secret": "s3cr3t-token-value",
            "tls": {"fingerprint_sha256": PIN, "ca_file": null, "insecure_skip_verify": false},
            "timeout_seconds": 30
        },
        "hub": {
            "url": "https://hub.example.net",
            "api_key": "hub-key-value",
            "poll_seconds": 300,
            "timeout_seconds": 30,
            "tls": {"ca_file": null, "fingerprint_sha256": null}
        },
        "authz": {
            "max_clock_skew_seconds": 120,
            "sk_counter_strict": false,
            "signers": [{"key_id": "ops-2026", "role": "operational", "public_key": KEY}]
        },
        "reconcile": {"desired_file": null, "max_parallel": 4},
        "audit": {"max_bytes": 16777216}
    })
}

fn err(v: &Value, mode: Mode) -> String {
    Config::from_value(v, mode).unwrap_err().to_string()
}

#[test]
fn the_design_example_loads_for_run() {
    let c = Config::from_value(&full(), Mode::Run).unwrap();
    assert_eq!(c.host_id, "pve-a");
    assert_eq!(c.log_level, Level::Debug);
    let p = c.proxmox.unwrap();
    assert_eq!(p.tls, TlsTrust::Pin(Sha256Pin::parse(PIN).unwrap()));
    assert_eq!(p.token_secret.unwrap().expose(), "s3cr3t-token-value");
    assert_eq!(c.hub.unwrap().tls, TlsTrust::SystemBundle);
    assert_eq!(c.authz.unwrap().signers[0].key_id, "ops-2026");
    assert_eq!(c.reconcile.max_parallel, 4);
    assert_eq!(
        u64::from(c.reconcile.shutdown_timeout_seconds),
        DEFAULT_SHUTDOWN_TIMEOUT_SECONDS
    );
}

#[test]
fn max_disruptive_per_hour_defaults_to_10_and_takes_0_to_10000() {
    let c = Config::from_value(&full(), Mode::Run).unwrap();
    assert_eq!(
        u64::from(c.reconcile.max_disruptive_per_hour),
        DEFAULT_MAX_DISRUPTIVE_PER_HOUR
    );
    for n in [0, 1, MAX_DISRUPTIVE_PER_HOUR] {
        let mut doc = full();
        doc["reconcile"]["max_disruptive_per_hour"] = json!(n);
        let c = Config::from_value(&doc, Mode::Run).unwrap();
        assert_eq!(u64::from(c.reconcile.max_disruptive_per_hour), n);
    }
    let env = BTreeMap::from([(
        "FELHOM_AGENT_RECONCILE_MAX_DISRUPTIVE_PER_HOUR".to_owned(),
        "3".to_owned(),
    )]);
    let mut v = full();
    apply_env(&mut v, &env).unwrap();
    let c = Config::from_value(&v, Mode::Run).unwrap();
    assert_eq!(c.reconcile.max_disruptive_per_hour, 3);
}

#[test]
fn each_malformed_field_names_itself() {
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "/proxmox/url",
            json!("http://pve:8006"),
            "proxmox.url: must be https://HOST[:PORT], got \"http://pve:8006\"",
        ),
        (
            "/proxmox/url",
            json!("https://pve:8006/api2/json"),
            "proxmox.url: must be https://HOST[:PORT]",
        ),
        (
            "/proxmox/url",
            json!("https://pve:99999"),
            "proxmox.url: must be https://HOST[:PORT]",
        ),
        (
            "/proxmox/url",
            json!(8006),
            "proxmox.url: must be a string, got a number",
        ),
        (
            "/proxmox/tls/fingerprint_sha256",
            json!("AB:CD"),
            "proxmox.tls.fingerprint_sha256: ",
        ),
        (
            "/authz/signers/0/public_key",
            json!("ssh-ed25519 AAAA ops"),
            "authz.signers[0].public_key: ",
        ),
        (
            "/proxmox/node",
            json!("pve a"),
            "proxmox.node: must be a Proxmox node name",
        ),
        (
            "/proxmox/token_id",
            json!("felhom-agent@pve"),
            "proxmox.token_id: must be USER@REALM!TOKENID",
        ),
        (
            "/proxmox/token_id",
            json!("agent!tok"),
            "proxmox.token_id: must be USER@REALM!TOKENID",
        ),
        (
            "/proxmox/timeout_seconds",
            json!(0),
            "proxmox.timeout_seconds: must be a whole number from 1 to 600, got 0",
        ),
        (
            "/proxmox/timeout_seconds",
            json!("30"),
            "proxmox.timeout_seconds: must be a number, got a string",
        ),
        (
            "/proxmox/tls/insecure_skip_verify",
            json!("yes"),
            "proxmox.tls.insecure_skip_verify: must be true or false",
        ),
        (
            "/proxmox/tls/insecure_skip_verify",
            json!(true),
            "proxmox.tls.insecure_skip_verify: cannot be combined",
        ),
        (
            "/proxmox/tls/ca_file",
            json!("/etc/ca.pem"),
            "proxmox.tls: set either fingerprint_sha256 or ca_file, not both",
        ),
        (
            "/proxmox/token_secret_file",
            json!("/run/x"),
            "proxmox.token_secret: set either token_secret or token_secret_file, not both",
        ),
        (
            "/hub/url",
            json!("hub.example.net"),
            "hub.url: must be https://HOST[:PORT][/PATH]",
        ),
        (
            "/hub/poll_seconds",
            json!(5),
            "hub.poll_seconds: must be a whole number from 60 to 3600, got 5",
        ),
        (
            "/host_id",
            json!("pve a!"),
            "host_id: must be a host identifier",
        ),
        (
            "/state_dir",
            json!("var/lib"),
            "state_dir: must be an absolute path",
        ),
        (
            "/log/level",
            json!("verbose"),
            "log.level: must be one of error, warn, info, debug; got \"verbose\"",
        ),
        (
            "/authz/signers",
            json!({}),
            "authz.signers: must be an array, got an object",
        ),
        (
            "/authz/signers/0/role",
            json!("admin"),
            "authz.signers[0].role: must be \"operational\" or \"recovery\", got \"admin\"",
        ),
        (
            "/authz/signers/0/public_key",
            json!(""),
            "authz.signers[0].public_key: must not be empty",
        ),
        (
            "/authz/signers/0/comment",
            json!("x"),
            "authz.signers[0].comment: unknown field",
        ),
        (
            "/authz/max_clock_skew_seconds",
            json!(-1),
            "authz.max_clock_skew_seconds: must be a whole number from 0 to 3600, got -1",
        ),
        (
            "/reconcile/max_parallel",
            json!(0),
            "reconcile.max_parallel: must be a whole number from 1 to 64, got 0",
        ),
        (
            "/reconcile/shutdown_timeout_seconds",
            json!(0),
            "reconcile.shutdown_timeout_seconds: must be a whole number from 1 to 600, got 0",
        ),
        (
            "/reconcile/shutdown_timeout_seconds",
            json!(601),
            "reconcile.shutdown_timeout_seconds: must be a whole number from 1 to 600, got 601",
        ),
        (
            "/reconcile/max_disruptive_per_hour",
            json!(10001),
            "reconcile.max_disruptive_per_hour: must be a whole number from 0 to 10000, got 10001",
        ),
        (
            "/reconcile/max_disruptive_per_hour",
            json!(-1),
            "reconcile.max_disruptive_per_hour: must be a whole number from 0 to 10000, got -1",
        ),
        (
            "/reconcile/max_disruptive_per_hour",
            json!("ten"),
            "reconcile.max_disruptive_per_hour: must be a number, got a string",
        ),
        (
            "/reconcile/max_paralel",
            json!(2),
            "reconcile.max_paralel: unknown field",
        ),
        (
            "/audit/max_bytes",
            json!(65536),
            "audit.max_bytes: must be a whole number from 1048576 to 1073741824, got 65536",
        ),
        (
            "/audit/max_bytes",
            json!(2_147_483_648u64),
            "audit.max_bytes: must be a whole number from 1048576 to 1073741824",
        ),
        (
            "/audit/max_bytes",
            json!("16M"),
            "audit.max_bytes: must be a number, got a string",
        ),
        (
            "/audit/max_files",
            json!(2),
            "audit.max_files: unknown field",
        ),
        (
            "/proxmox/tls/pin",
            json!("x"),
            "proxmox.tls.pin: unknown field",
        ),
        ("/extra", json!(1), "extra: unknown field"),
        (
            "/proxmox/tls",
            json!("pin"),
            "proxmox.tls: must be an object, got a string",
        ),
    ];
    for (ptr, value, want) in cases {
        let mut v = full();
        let (parent, key) = ptr.rsplit_once('/').unwrap();
        v.pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .unwrap_or_else(|| panic!("{parent} is an object in the fixture"))
            .insert(key.to_owned(), value);
        let got = err(&v, Mode::Run);
        assert!(
            got.starts_with(want),
            "{ptr}: got {got:?}, want prefix {want:?}"
        );
    }
}

#[test]
fn sections_are_required_by_mode_only() {
    let mut v = full();
    v.as_object_mut().unwrap().remove("hub");
    v.as_object_mut().unwrap().remove("authz");
    v.as_object_mut().unwrap().remove("host_id");
    assert!(Config::from_value(&v, Mode::SelftestRead).is_ok());
    assert_eq!(err(&v, Mode::Run), "host_id: is required for `run`");
    v["host_id"] = json!("pve-a");
    assert_eq!(err(&v, Mode::Run), "hub: section is required for `run`");
    assert_eq!(
        err(&v, Mode::Verify),
        "authz.signers: `verify` needs at least one signer"
    );
    let verify_only = json!({"host_id": "pve-a", "authz": full()["authz"].clone()});
    assert!(Config::from_value(&verify_only, Mode::Verify).is_ok());
    assert_eq!(
        err(&verify_only, Mode::SelftestRead),
        "proxmox: section is required for `selftest read`"
    );
}

#[test]
fn missing_secret_is_required_only_where_used() {
    let mut v = full();
    v["proxmox"].as_object_mut().unwrap().remove("token_secret");
    let e = err(&v, Mode::SelftestRead);
    assert!(
        e.starts_with("proxmox.token_secret: is required for `selftest read`"),
        "{e}"
    );
    assert!(e.contains("FELHOM_AGENT_PROXMOX_TOKEN_SECRET"));
    v["proxmox"]["token_secret_file"] = json!("/nonexistent/secret");
    assert!(
        Config::from_value(&v, Mode::Verify).is_ok(),
        "verify reads no Proxmox secret"
    );
}

#[test]
fn env_overlay_wins_and_is_typed() {
    let mut v = full();
    let env: BTreeMap<String, String> = [
        ("FELHOM_AGENT_HOST_ID", "pve-b"),
        ("FELHOM_AGENT_PROXMOX_TOKEN_SECRET", "from-env"),
        ("FELHOM_AGENT_PROXMOX_TIMEOUT_SECONDS", "7"),
        ("FELHOM_AGENT_PROXMOX_TLS_FINGERPRINT_SHA256", ""),
        ("FELHOM_AGENT_PROXMOX_TLS_INSECURE_SKIP_VERIFY", "true"),
        (
            "FELHOM_AGENT_RECONCILE_DESIRED_FILE",
            "/etc/felhom-agent/desired.json",
        ),
        ("FELHOM_AGENT_RECONCILE_SHUTDOWN_TIMEOUT_SECONDS", "30"),
        ("FELHOM_AGENT_AUTHZ_SIGNERS", "[]"),
        ("OTHER", "ignored"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    apply_env(&mut v, &env).unwrap();
    let c = Config::from_value(&v, Mode::Run).unwrap();
    assert_eq!(c.host_id, "pve-b");
    let p = c.proxmox.unwrap();
    assert_eq!(p.token_secret.unwrap().expose(), "from-env");
    assert_eq!(p.timeout_seconds, 7);
    assert_eq!(p.tls, TlsTrust::InsecureSkipVerify);
    assert!(c.authz.unwrap().signers.is_empty());
    assert_eq!(
        c.reconcile.desired_file.unwrap(),
        PathBuf::from("/etc/felhom-agent/desired.json")
    );
    assert_eq!(c.reconcile.shutdown_timeout_seconds, 30);
}

#[test]
fn audit_max_bytes_defaults_to_16_mib_and_the_environment_overrides_it() {
    let mut v = full();
    v.as_object_mut().unwrap().remove("audit");
    let c = Config::from_value(&v, Mode::Run).unwrap();
    assert_eq!(c.audit.max_bytes, 16 * 1024 * 1024);
    assert!(
        c.redacted().contains("\"max_bytes\": 16777216"),
        "{}",
        c.redacted()
    );

    let env = BTreeMap::from([(
        "FELHOM_AGENT_AUDIT_MAX_BYTES".to_owned(),
        "2097152".to_owned(),
    )]);
    apply_env(&mut v, &env).unwrap();
    assert_eq!(
        Config::from_value(&v, Mode::Run).unwrap().audit.max_bytes,
        2 * 1024 * 1024
    );

    let mut v = full();
    let env = BTreeMap::from([("FELHOM_AGENT_AUDIT_MAX_BYTES".to_owned(), "4096".to_owned())]);
    apply_env(&mut v, &env).unwrap();
    assert_eq!(
        err(&v, Mode::Run),
        "audit.max_bytes: must be a whole number from 1048576 to 1073741824, got 4096"
    );
    let mut v = full();
    v["audit"] = json!(16);
    assert_eq!(err(&v, Mode::Run), "audit: must be an object, got a number");
}

#[test]
fn env_errors_name_the_variable() {
    let cases = [
        (
            "FELHOM_AGENT_PROXMOX_TIMEOUT",
            "1",
            "FELHOM_AGENT_PROXMOX_TIMEOUT: not a configuration field",
        ),
        (
            "FELHOM_AGENT_HUB_POLL_SECONDS",
            "soon",
            "FELHOM_AGENT_HUB_POLL_SECONDS: must be a whole number, got \"soon\"",
        ),
        (
            "FELHOM_AGENT_AUTHZ_SK_COUNTER_STRICT",
            "yes",
            "FELHOM_AGENT_AUTHZ_SK_COUNTER_STRICT: must be true or false",
        ),
        (
            "FELHOM_AGENT_AUTHZ_SIGNERS",
            "[",
            "FELHOM_AGENT_AUTHZ_SIGNERS: must be JSON",
        ),
    ];
    for (k, val, want) in cases {
        let mut v = full();
        let env = BTreeMap::from([(k.to_owned(), val.to_owned())]);
        let got = apply_env(&mut v, &env).unwrap_err().to_string();
        assert!(got.starts_with(want), "{got}");
    }
}

#[test]
fn every_schema_leaf_has_an_env_name_that_maps_back() {
    for (path, _) in SCHEMA {
        let mut v = json!({});
        let var = env_name(path);
        let env = BTreeMap::from([(var.clone(), "1".to_owned())]);
        // Every variable is accepted by the overlay (the value may then fail
        // validation, which is a different error).
        if let Err(ConfigError::Env { problem, .. }) = apply_env(&mut v, &env) {
            assert!(
                !problem.contains("not a configuration field"),
                "{var} was not recognised"
            );
        }
        assert!(
            v.pointer(&format!("/{}", path.replace('.', "/"))).is_some(),
            "{var} did not land on {path}"
        );
    }
}

#[test]
fn redacted_hides_secrets_and_debug_too() {
    let c = Config::from_value(&full(), Mode::Run).unwrap();
    let r = c.redacted();
    assert!(r.contains("<redacted>"));
    for secret in ["s3cr3t-token-value", "hub-key-value"] {
        assert!(!r.contains(secret));
        assert!(!format!("{c:?}").contains(secret));
    }
}

#[test]
fn secret_file_is_read_trimmed_and_checked() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("felhom-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("token");
    std::fs::write(&f, "file-secret\n").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut v = full();
    v["proxmox"].as_object_mut().unwrap().remove("token_secret");
    v["proxmox"]["token_secret_file"] = json!(f.display().to_string());
    let c = Config::from_value(&v, Mode::SelftestRead).unwrap();
    assert_eq!(
        c.proxmox.unwrap().token_secret.unwrap().expose(),
        "file-secret"
    );
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("readable by group or others"))
    );

    std::fs::write(&f, "").unwrap();
    let e = err(&v, Mode::SelftestRead);
    assert!(e.ends_with("the file is empty"), "{e}");
    v["proxmox"]["token_secret_file"] = json!("relative/token");
    assert!(err(&v, Mode::SelftestRead).contains("must be an absolute path"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn load_reports_json_syntax_with_position() {
    let dir = std::env::temp_dir().join(format!("felhom-cfg-syntax-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("agent.json");
    std::fs::write(&f, "{\n  \"host_id\": \"pve-a\",\n  oops\n}").unwrap();
    let e = Config::load(&f, &BTreeMap::new(), Mode::Verify).unwrap_err();
    assert!(matches!(e, ConfigError::Syntax { line: 3, .. }), "{e}");
    // An inline secret in a group-readable file is warned about; at 0600 it is not.
    use std::os::unix::fs::PermissionsExt;
    let mut doc = full();
    doc["hub"].as_object_mut().unwrap().remove("api_key");
    std::fs::write(&f, doc.to_string()).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = Config::load(&f, &BTreeMap::new(), Mode::SelftestRead).unwrap();
    assert!(
        c.warnings.iter().any(|w| w.contains("holds a secret")),
        "{:?}",
        c.warnings
    );
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = Config::load(&f, &BTreeMap::new(), Mode::SelftestRead).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let missing = Config::load(&dir.join("nope.json"), &BTreeMap::new(), Mode::Verify)
        .unwrap_err()
        .to_string();
    assert!(missing.contains("nope.json"), "{missing}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn from_slice_validates_like_load_and_names_the_origin() {
    let origin = Path::new("from-memory.json");
    let env = BTreeMap::new();
    let doc = full().to_string();
    let c = Config::from_slice(doc.as_bytes(), origin, &env, Mode::Run).unwrap();
    assert_eq!(c.host_id, "pve-a");
    let e = Config::from_slice(b"{\n oops", origin, &env, Mode::Verify).unwrap_err();
    match &e {
        ConfigError::Syntax { path, line: 2, .. } => assert_eq!(path, origin),
        other => panic!("{other:?}"),
    }
    // The env overlay applies, and an unknown variable is refused as in `load`.
    let env: BTreeMap<String, String> =
        [("FELHOM_AGENT_HOST_ID".to_string(), "pve-b".to_string())].into();
    let c = Config::from_slice(doc.as_bytes(), origin, &env, Mode::Run).unwrap();
    assert_eq!(c.host_id, "pve-b");
    let env: BTreeMap<String, String> = [("FELHOM_AGENT_NOPE".to_string(), "1".to_string())].into();
    let e = Config::from_slice(doc.as_bytes(), origin, &env, Mode::Run).unwrap_err();
    assert!(matches!(e, ConfigError::Env { .. }), "{e}");
}

#[test]
fn the_desired_state_source_is_the_file_unless_the_hub_is_named() {
    let c = Config::from_value(&full(), Mode::Run).unwrap();
    assert_eq!(c.reconcile.source, DesiredSource::File, "the default");

    let mut doc = full();
    doc["reconcile"]["source"] = json!("hub");
    let c = Config::from_value(&doc, Mode::Run).unwrap();
    assert_eq!(c.reconcile.source, DesiredSource::Hub);
    assert!(c.redacted().contains("\"source\": \"hub\""));

    doc["reconcile"]["source"] = json!("git");
    assert_eq!(
        err(&doc, Mode::Run),
        "reconcile.source: must be `file` or `hub`"
    );

    doc["reconcile"]["source"] = json!("hub");
    doc["reconcile"]["desired_file"] = json!("/etc/felhom/desired.json");
    assert!(
        err(&doc, Mode::Run).starts_with("reconcile.desired_file: is for reconcile.source `file`"),
        "{}",
        err(&doc, Mode::Run)
    );

    let mut no_hub = full();
    no_hub.as_object_mut().unwrap().remove("hub");
    no_hub["reconcile"]["source"] = json!("hub");
    assert_eq!(
        err(&no_hub, Mode::Plan),
        "reconcile.source: `hub` needs a hub section to fetch the desired state from"
    );
}

#[test]
fn a_unit_credential_path_is_looked_for_outside_the_unit_too() {
    use super::check::{CREDENTIALS_FALLBACK_DIR, secret_candidates};
    let unit = Path::new("/run/credentials/felhom-agent.service/pve-token");
    let creds = Path::new("/tmp/creds");
    assert_eq!(
        secret_candidates(unit, Some(creds)),
        vec![
            unit.to_path_buf(),
            creds.join("pve-token"),
            Path::new(CREDENTIALS_FALLBACK_DIR).join("pve-token"),
        ]
    );
    assert_eq!(
        secret_candidates(unit, Some(Path::new("relative"))),
        vec![
            unit.to_path_buf(),
            Path::new(CREDENTIALS_FALLBACK_DIR).join("pve-token")
        ],
        "a relative $CREDENTIALS_DIRECTORY is ignored"
    );
    let own = Path::new("/etc/secrets/pve-token");
    assert_eq!(secret_candidates(own, Some(creds)), vec![own.to_path_buf()]);

    // Found in $CREDENTIALS_DIRECTORY; and a miss names the field and every place.
    let dir = std::env::temp_dir().join(format!("felhom-creds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pve-token"), "from-credentials\n").unwrap();
    let mut v = full();
    v["proxmox"].as_object_mut().unwrap().remove("token_secret");
    v["proxmox"]["token_secret_file"] = json!(unit.display().to_string());
    let c = Config::from_value_with(&v, Mode::SelftestRead, Some(&dir)).unwrap();
    assert_eq!(
        c.proxmox.unwrap().token_secret.unwrap().expose(),
        "from-credentials"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    // A name no installed agent has, so that a host with the package installed (and
    // its /etc/felhom-agent/credentials/pve-token) runs this test the same.
    let name = format!("pve-token-missing-{}", std::process::id());
    v["proxmox"]["token_secret_file"] = json!(unit.with_file_name(&name).display().to_string());
    let e = Config::from_value_with(&v, Mode::SelftestRead, Some(&dir))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("proxmox.token_secret_file: ")
            && e.contains(&dir.join(&name).display().to_string())
            && e.contains(&format!("{CREDENTIALS_FALLBACK_DIR}/{name}")),
        "{e}"
    );
}
