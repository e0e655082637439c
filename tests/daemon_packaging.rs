//! The systemd unit: the hardening the issue requires is present, it is a notify unit
//! with a watchdog that a configuration error does not restart, its credentials are the
//! files the example config reads, and `systemd-analyze verify` accepts it and `security`
//! rates its exposure at most 1.8 (when systemd-analyze is installed; otherwise those two
//! checks are skipped with a reason).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

const UNIT: &str = include_str!("../packaging/felhom-agent.service");
const EXAMPLE_CONFIG: &str = include_str!("../configs/agent.example.json");
const MAN_PAGE: &str = include_str!("../packaging/felhom-agent.8");

/// Every `Key=value` line of the unit, in order (comments and sections skipped).
fn directives() -> Vec<(String, String)> {
    UNIT.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn values(key: &str) -> Vec<String> {
    directives()
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect()
}

fn one(key: &str) -> String {
    let v = values(key);
    assert_eq!(v.len(), 1, "{key} should be set exactly once, got {v:?}");
    v[0].clone()
}

#[test]
fn the_required_hardening_is_present() {
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("PrivateTmp"), "yes");
    assert_eq!(one("Restart"), "on-failure");
    assert!(
        values("ReadWritePaths")
            .iter()
            .any(|v| v.split_whitespace().any(|p| p == "/var/lib/felhom-agent")),
        "the state dir is writable"
    );
    assert_eq!(one("StateDirectory"), "felhom-agent");
    assert_eq!(one("StateDirectoryMode"), "0700");
    assert_eq!(one("CapabilityBoundingSet"), "");
    assert_eq!(one("UMask"), "0077");
    assert_eq!(
        one("ExecStart"),
        "/usr/sbin/felhom-agent run --config /etc/felhom-agent/agent.json",
        "the path the Debian package installs the binary at"
    );
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
}

#[test]
fn the_unit_is_notify_with_a_watchdog_and_a_config_error_is_not_restarted() {
    assert_eq!(one("Type"), "notify");
    assert_eq!(
        one("NotifyAccess"),
        "main",
        "only the agent itself may notify"
    );
    let watchdog = one("WatchdogSec");
    let seconds: u64 = watchdog
        .strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("WatchdogSec={watchdog} is not whole seconds"));
    assert!(
        (30..=600).contains(&seconds),
        "WatchdogSec={watchdog}: long enough for a loaded host, short enough to matter"
    );
    // Exit 2 is a usage or configuration error (DESIGN "Command line"); exactly that.
    assert_eq!(one("RestartPreventExitStatus"), "2");
    assert_eq!(one("Restart"), "on-failure", "other failures still restart");
    assert_eq!(one("Documentation"), "man:felhom-agent(8)");
    assert!(
        MAN_PAGE.contains(".TH FELHOM-AGENT 8 "),
        "the unit's Documentation= names the man page the package ships"
    );
}

#[test]
fn the_credentials_are_the_files_the_example_config_reads() {
    let creds: Vec<String> = values("LoadCredential")
        .iter()
        .map(|v| v.split_once(':').expect("NAME:PATH").0.to_owned())
        .collect();
    assert_eq!(creds, ["pve-token", "hub-key"]);
    let cfg: serde_json::Value = serde_json::from_str(EXAMPLE_CONFIG).unwrap();
    let dir = "/run/credentials/felhom-agent.service/";
    assert_eq!(
        cfg["proxmox"]["token_secret_file"],
        format!("{dir}pve-token")
    );
    assert_eq!(cfg["hub"]["api_key_file"], format!("{dir}hub-key"));
    assert!(
        cfg["proxmox"]["token_secret"].is_null() && cfg["hub"]["api_key"].is_null(),
        "the example keeps no secret inline"
    );
    assert_eq!(
        cfg["state_dir"], "/var/lib/felhom-agent",
        "the writable path is the configured state dir"
    );
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let probe = Command::new("systemd-analyze").arg("--version").output();
    if !probe.is_ok_and(|o| o.status.success()) {
        println!("SKIPPED: systemd-analyze is not installed; the unit was not verified");
        return;
    }
    // verify checks that ExecStart exists: point it at the binary this build made.
    let dir = std::env::temp_dir().join(format!("felhom-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = dir.join("felhom-agent.service");
    let bin = env!("CARGO_BIN_EXE_felhom-agent");
    assert!(Path::new(bin).exists());
    std::fs::write(
        &unit,
        UNIT.replace("/usr/sbin/felhom-agent", bin)
            .replace("/bin/kill", "/usr/bin/env"),
    )
    .unwrap();
    // verify also looks up the unit's Documentation= with man(1): the page the package
    // ships, found through MANPATH as it would be under /usr/share/man.
    let man8 = dir.join("man/man8");
    std::fs::create_dir_all(&man8).unwrap();
    std::fs::write(man8.join("felhom-agent.8"), MAN_PAGE).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .env("MANPATH", dir.join("man"))
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .expect("systemd-analyze runs");
    std::fs::remove_dir_all(&dir).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify failed: {stderr}");
    assert!(
        !stderr.contains("felhom-agent.service"),
        "verify warned about the unit: {stderr}"
    );
}

/// The exposure `systemd-analyze security` gives the unit as shipped; the hardening
/// must not weaken past the 1.8 it had before the unit became a notify unit.
#[test]
fn systemd_analyze_security_rates_the_unit_at_most_1_8() {
    let probe = Command::new("systemd-analyze").arg("--version").output();
    if !probe.is_ok_and(|o| o.status.success()) {
        println!("SKIPPED: systemd-analyze is not installed; the exposure was not rated");
        return;
    }
    let dir = std::env::temp_dir().join(format!("felhom-unit-sec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = dir.join("felhom-agent.service");
    std::fs::write(&unit, UNIT).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .env("SYSTEMD_COLORS", "0")
        .output()
        .expect("systemd-analyze runs");
    std::fs::remove_dir_all(&dir).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // "→ Overall exposure level for felhom-agent.service: 1.8 OK 🙂"
    let level = stdout
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for felhom-agent.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in the output: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(level <= 1.8, "exposure {level} is over 1.8:\n{stdout}");
}

/// The example's secret files as systemd would deliver them: 0600 files under a
/// private temp dir, named through the environment overlay (the document is used as
/// shipped).
struct Credentials(std::path::PathBuf);

impl Credentials {
    fn new() -> Credentials {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!(
            "felhom-example-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, value) in [
            ("pve-token", "example-token-secret"),
            ("hub-key", "example-key"),
        ] {
            let p = dir.join(name);
            std::fs::write(&p, format!("{value}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        Credentials(dir)
    }

    fn env(&self) -> std::collections::BTreeMap<String, String> {
        [
            ("FELHOM_AGENT_PROXMOX_TOKEN_SECRET_FILE", "pve-token"),
            ("FELHOM_AGENT_HUB_API_KEY_FILE", "hub-key"),
        ]
        .into_iter()
        .map(|(k, f)| (k.to_owned(), self.0.join(f).display().to_string()))
        .collect()
    }
}

impl Drop for Credentials {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_example_config_loads_for_the_daemon() {
    use felhom_agent::config::{Config, Mode};
    use felhom_agent::net::TlsTrust;
    let creds = Credentials::new();
    let origin = Path::new("configs/agent.example.json");
    let cfg = Config::from_slice(EXAMPLE_CONFIG.as_bytes(), origin, &creds.env(), Mode::Run)
        .unwrap_or_else(|e| panic!("the example config does not load: {e}"));
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    assert_eq!(cfg.host_id, "pve-a");
    let pve = cfg.proxmox.as_ref().expect("a proxmox section");
    assert!(matches!(pve.tls, TlsTrust::Pin(_)), "{:?}", pve.tls);
    let hub = cfg.hub.as_ref().expect("a hub section");
    assert!(matches!(hub.tls, TlsTrust::SystemBundle), "{:?}", hub.tls);
    let authz = cfg.authz.as_ref().expect("an authz section");
    assert_eq!(authz.signers.len(), 1);
    assert!(
        authz.signers[0].public_key.contains("EXAMPLE"),
        "the example signer says it is an example"
    );

    // The check is real: the placeholder the example once carried is refused.
    let placeholder = EXAMPLE_CONFIG.replace(
        &authz.signers[0].public_key,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEEXAMPLEEXAMPLEEXAMPLEEXAMPLEEXAMPLE ops@felhom",
    );
    assert_ne!(placeholder, EXAMPLE_CONFIG);
    let e =
        Config::from_slice(placeholder.as_bytes(), origin, &creds.env(), Mode::Run).unwrap_err();
    assert!(e.to_string().contains("authz.signers[0]"), "{e}");
}

#[test]
fn the_example_signer_is_no_key_whose_private_half_is_in_the_repository() {
    let cfg: serde_json::Value = serde_json::from_str(EXAMPLE_CONFIG).unwrap();
    let example = cfg["authz"]["signers"][0]["public_key"].as_str().unwrap();
    let blob = example.split_whitespace().nth(1).unwrap();
    let keys = Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors");
    let mut stack = vec![keys];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(text) = std::fs::read_to_string(&p) {
                assert!(
                    !text.contains(blob),
                    "{} holds the example signer: anyone with the repository could sign ops \
                     for a host that keeps the example",
                    p.display()
                );
            }
        }
    }
}

/// Every leaf of the config, as `section.field` paths.
fn leaves(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    if let serde_json::Value::Object(map) = v {
        for (k, child) in map {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if child.is_object() {
                leaves(child, &path, out);
            } else {
                out.push(path);
            }
        }
    }
}

#[test]
fn the_example_config_and_the_readme_name_every_field() {
    use felhom_agent::config::{SIGNER_FIELDS, field_paths};
    let cfg: serde_json::Value = serde_json::from_str(EXAMPLE_CONFIG).unwrap();
    let mut in_example = Vec::new();
    leaves(&cfg, "", &mut in_example);
    let mut schema: Vec<String> = field_paths().map(str::to_owned).collect();
    in_example.sort();
    schema.sort();
    assert_eq!(
        in_example, schema,
        "the example has every field, and no other"
    );
    let signer = cfg["authz"]["signers"][0].as_object().unwrap();
    let mut keys: Vec<&str> = signer.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want = SIGNER_FIELDS.to_vec();
    want.sort_unstable();
    assert_eq!(keys, want, "the example signer has every signer field");

    const README: &str = include_str!("../README.md");
    for f in field_paths() {
        assert!(
            README.contains(&format!("`{f}`")) || README.contains(&format!("`{f}[]`")),
            "README's configuration reference does not name `{f}`"
        );
    }
}
