//! The hub client against the hub simulator over real loopback TLS: the bearer header,
//! the envelope, every failure's type, TLS trust choices, and the key kept out of every
//! error, log line and `Debug`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use felhom_agent::base::Secret;
use felhom_agent::hub::HostReport;
use felhom_agent::hub::{ControlEnvelope, EnvelopeError};
use felhom_agent::hub::{HubClient, HubClientError, HubClientOptions, HubSetupError};
use felhom_agent::net::{
    HttpClient, HttpOptions, Method, Request, Sha256Pin, TimeoutPhase, TlsTrust, TransportError,
};
use felhom_sim::{CertChoice, Fault, FaultKind, HubSim};
use serde_json::{Value, json};

const GOLDEN: &str = include_str!("../vectors/host-report.golden.json");
const REPORT: &str = "/api/v1/host-report";

fn report() -> HostReport {
    serde_json::from_str(GOLDEN).unwrap()
}

fn ca_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors/tls/ca.crt")
}

fn options(sim: &HubSim, key: &str) -> HubClientOptions {
    HubClientOptions {
        url: sim.url(),
        api_key: Secret::new(key),
        trust: TlsTrust::CaFile(ca_file()),
        timeout: Duration::from_secs(5),
    }
}

fn client(sim: &HubSim) -> HubClient {
    HubClient::new(options(sim, &sim.key())).unwrap()
}

#[test]
fn a_report_goes_out_with_the_bearer_key_and_the_envelope_comes_back() {
    let sim = HubSim::start();
    sim.script_envelope(json!({
        "poll_interval_seconds": 120,
        "blocked": true,
        "desired_generation": 9,
        "has_signed_ops": true,
        "a_field_from_the_future": {"x": 1}
    }));
    let c = client(&sim);
    let env = c.post_report(&report()).unwrap();
    assert_eq!(
        env,
        ControlEnvelope {
            poll_interval_seconds: Some(120),
            blocked: true,
            desired_generation: 9,
            has_signed_ops: true,
            ack_signed_op_results: Vec::new(),
        }
    );
    let reqs = sim.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, REPORT);
    assert_eq!(
        reqs[0].authorization.as_deref(),
        Some(format!("Bearer {}", sim.key()).as_str())
    );
    let sent: Value = serde_json::from_slice(&reqs[0].body).unwrap();
    assert_eq!(sent, serde_json::from_str::<Value>(GOLDEN).unwrap());
    assert_eq!(sim.reports().len(), 1, "the simulator accepted it");
    // The scripted envelope is used once; then the default comes back.
    assert_eq!(
        c.post_report(&report()).unwrap().poll_interval_seconds,
        Some(300)
    );
}

#[test]
fn a_base_url_with_a_path_and_trailing_slash_is_joined_cleanly() {
    let sim = HubSim::start();
    let mut o = options(&sim, &sim.key());
    o.url = format!("{}/", sim.url());
    let c = HubClient::new(o).unwrap();
    assert_eq!(c.endpoint(), format!("{}{REPORT}", sim.url()));
    c.post_report(&report()).unwrap();
}

#[test]
fn a_wrong_key_is_an_http_401_that_does_not_contain_either_key() {
    let sim = HubSim::start();
    let wrong = "wrong-key-3b8f0c5d9e1a";
    let c = HubClient::new(options(&sim, wrong)).unwrap();
    let e = c.post_report(&report()).unwrap_err();
    assert_eq!(e.status(), Some(401), "{e}");
    assert!(matches!(e, HubClientError::Http(_)));
    for shown in [e.to_string(), format!("{e:?}"), format!("{c:?}")] {
        assert!(!shown.contains(wrong), "{shown}");
        assert!(!shown.contains(&sim.key()), "{shown}");
    }
    assert!(sim.reports().is_empty());
}

#[test]
fn non_2xx_answers_are_http_errors_with_status_and_message() {
    let sim = HubSim::start();
    sim.inject(Fault::new(
        Some("POST"),
        REPORT,
        FaultKind::Status {
            code: 503,
            message: "hub is draining".into(),
        },
    ));
    let e = client(&sim).post_report(&report()).unwrap_err();
    match &e {
        HubClientError::Http(h) => {
            assert_eq!(h.status, 503);
            assert!(h.body_excerpt.contains("hub is draining"), "{h}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        client(&sim).post_report(&report()).is_ok(),
        "the fault was used up"
    );
}

#[test]
fn a_redirect_is_an_http_error_and_is_not_followed() {
    let sim = HubSim::start();
    // A 307 keeps the method and body: a client that followed it would post the
    // report to the very endpoint that accepts it.
    sim.inject(Fault::new(
        Some("POST"),
        REPORT,
        FaultKind::Redirect {
            code: 307,
            location: format!("{}{REPORT}", sim.url()),
        },
    ));
    let e = client(&sim).post_report(&report()).unwrap_err();
    match &e {
        HubClientError::Http(h) => assert_eq!(h.status, 307, "{h}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.requests().len(), 1, "the redirect was not followed");
    assert!(sim.reports().is_empty());
    assert!(!e.to_string().contains(&sim.key()), "{e}");
}

/// Posts `report` to the simulator as raw JSON with its key; the status and the
/// problems its 400 answer lists.
fn post_raw(sim: &HubSim, report: &Value) -> (u16, Vec<String>) {
    let (status, problems) = post_raw_all(sim, report);
    // The golden file's own check; the schema's problems start with `$.` (see
    // `the_schema_names_the_same_fields_by_path`).
    (
        status,
        problems
            .into_iter()
            .filter(|p| !p.starts_with('$'))
            .collect(),
    )
}

/// Posts `report` as raw JSON with the simulator's key; the status and every problem
/// its 400 answer lists, the golden file's and the schema's.
fn post_raw_all(sim: &HubSim, report: &Value) -> (u16, Vec<String>) {
    let http = HttpClient::new(&HttpOptions::new(TlsTrust::CaFile(ca_file()))).unwrap();
    let resp = http
        .send(
            Request::new(Method::Post, format!("{}{REPORT}", sim.url()))
                .secret_header(
                    "authorization",
                    &Secret::new(format!("Bearer {}", sim.key())),
                )
                .json(report.to_string().into_bytes()),
        )
        .unwrap();
    (resp.status, all_problems(&resp.body))
}

fn all_problems(body: &[u8]) -> Vec<String> {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    body["problems"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_schema_names_the_same_fields_by_path() {
    let sim = HubSim::start();
    let mut bad: Value = serde_json::from_str(GOLDEN).unwrap();
    bad["host"].as_object_mut().unwrap().remove("load");
    bad["guests"][0]["colour"] = json!("blue");
    let (status, problems) = post_raw_all(&sim, &bad);
    assert_eq!(status, 400);
    let schema_paths: Vec<String> = problems
        .into_iter()
        .filter(|p| p.starts_with('$'))
        .filter_map(|p| p.split_once(':').map(|(path, _)| path.to_owned()))
        .collect();
    assert_eq!(schema_paths, ["$.guests[0].colour", "$.host.load"]);
}

#[test]
fn the_simulator_names_the_field_a_report_is_missing() {
    let sim = HubSim::start();
    let mut bad: Value = serde_json::from_str(GOLDEN).unwrap();
    bad["host"].as_object_mut().unwrap().remove("load");
    bad["guests"][0]["colour"] = json!("blue");
    assert_eq!(
        post_raw(&sim, &bad),
        (
            400,
            vec![
                "guests[0].colour: not in the contract".to_string(),
                "host.load: missing".to_string()
            ]
        )
    );
    assert!(sim.reports().is_empty());
}

#[test]
fn the_simulator_refuses_null_required_scalars_and_unknown_status_words() {
    let sim = HubSim::start();
    let post = |report: &Value| post_raw(&sim, report);
    let golden: Value = serde_json::from_str(GOLDEN).unwrap();
    for (pointer, field) in [
        ("/host_id", "host_id"),
        ("/guests/0/vmid", "guests[0].vmid"),
        ("/guests/0/status", "guests[0].status"),
    ] {
        let mut bad = golden.clone();
        *bad.pointer_mut(pointer).unwrap() = Value::Null;
        let (status, problems) = post(&bad);
        assert_eq!(status, 400, "{field}");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with(&format!("{field}: must be ")) && problems[0].contains("null"),
            "{problems:?}"
        );
    }
    let mut bad = golden.clone();
    bad["guests"][0]["status"] = json!("paused");
    let (status, problems) = post(&bad);
    assert_eq!(status, 400);
    assert_eq!(
        problems,
        ["guests[0].status: must be one of running, stopped, unknown, got \"paused\""]
    );
    assert!(sim.reports().is_empty());

    // What the contract lets be null still passes: a never-verified PBS snapshot.
    let mut ok = golden;
    ok["pbs_snapshots"][0]["verification"] = Value::Null;
    ok["audit_tail"][0]["guest_id"] = Value::Null;
    assert_eq!(post(&ok), (200, Vec::new()));
    assert_eq!(sim.reports().len(), 1);
}

#[test]
fn an_unreachable_hub_is_a_transport_error_that_was_never_sent() {
    let sim = HubSim::start();
    let c = client(&sim);
    sim.shutdown();
    match c.post_report(&report()).unwrap_err() {
        HubClientError::Transport(t) => {
            assert!(t.never_sent(), "{t}");
            assert!(matches!(t, TransportError::Connect { .. }), "{t:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_slow_hub_is_a_timeout() {
    let sim = HubSim::start();
    sim.inject(Fault::new(
        None,
        REPORT,
        FaultKind::Delay(Duration::from_secs(3)),
    ));
    let mut o = options(&sim, &sim.key());
    o.timeout = Duration::from_millis(500);
    match HubClient::new(o)
        .unwrap()
        .post_report(&report())
        .unwrap_err()
    {
        HubClientError::Transport(TransportError::Timeout { phase, .. }) => {
            assert_eq!(phase, TimeoutPhase::Exchange);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_dropped_connection_is_a_transport_error_that_may_have_been_processed() {
    let sim = HubSim::start();
    sim.inject(Fault::new(None, REPORT, FaultKind::DropConnection));
    match client(&sim).post_report(&report()).unwrap_err() {
        HubClientError::Transport(t) => assert!(!t.never_sent(), "{t:?}"),
        other => panic!("{other:?}"),
    }
    sim.inject(Fault::new(None, REPORT, FaultKind::DropMidBody));
    assert!(matches!(
        client(&sim).post_report(&report()).unwrap_err(),
        HubClientError::Transport(_)
    ));
}

#[test]
fn garbage_and_malformed_envelopes_are_envelope_errors() {
    let sim = HubSim::start();
    sim.inject(Fault::new(None, REPORT, FaultKind::Garbage));
    assert!(matches!(
        client(&sim).post_report(&report()).unwrap_err(),
        HubClientError::Envelope(EnvelopeError::Syntax(_))
    ));
    sim.script_envelope(json!({"poll_interval_seconds": "soon"}));
    match client(&sim).post_report(&report()).unwrap_err() {
        HubClientError::Envelope(EnvelopeError::Field { field, .. }) => {
            assert_eq!(field, "poll_interval_seconds");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_oversized_answer_stops_at_the_cap() {
    let sim = HubSim::start();
    sim.inject(Fault::new(None, REPORT, FaultKind::Oversized(3 << 20)));
    assert!(matches!(
        client(&sim).post_report(&report()).unwrap_err(),
        HubClientError::Transport(TransportError::BodyTooLarge { .. })
    ));
}

#[test]
fn trust_choices_pin_ca_and_system_bundle() {
    let sim = HubSim::builder().cert(CertChoice::SelfSigned).start();
    let mut o = options(&sim, &sim.key());
    o.trust = TlsTrust::Pin(Sha256Pin::parse(&sim.fingerprint()).unwrap());
    HubClient::new(o.clone())
        .unwrap()
        .post_report(&report())
        .unwrap();
    o.trust = TlsTrust::CaFile(ca_file());
    assert!(matches!(
        HubClient::new(o.clone()).unwrap().post_report(&report()),
        Err(HubClientError::Transport(TransportError::Tls { .. }))
    ));
    o.trust = TlsTrust::SystemBundle;
    if std::path::Path::new(felhom_agent::net::SYSTEM_BUNDLE).exists() {
        assert!(matches!(
            HubClient::new(o).unwrap().post_report(&report()),
            Err(HubClientError::Transport(TransportError::Tls { .. }))
        ));
    }
    let other_pin = Sha256Pin::parse(&CertChoice::Other.fingerprint()).unwrap();
    let ca_signed = HubSim::start();
    let mut o = options(&ca_signed, &ca_signed.key());
    o.trust = TlsTrust::Pin(other_pin);
    assert!(matches!(
        HubClient::new(o).unwrap().post_report(&report()),
        Err(HubClientError::Transport(TransportError::Tls { .. }))
    ));
}

#[test]
fn construction_refuses_bad_urls_and_empty_keys() {
    let sim = HubSim::start();
    for url in [
        "http://127.0.0.1:1",
        "https://",
        "https:///path",
        "https://user:pw@hub",
        "https://hub?x=1",
    ] {
        let mut o = options(&sim, "k");
        o.url = url.into();
        assert!(
            matches!(HubClient::new(o), Err(HubSetupError::Url { .. })),
            "{url}"
        );
    }
    assert!(matches!(
        HubClient::new(options(&sim, "")),
        Err(HubSetupError::MissingKey)
    ));
    let mut o = options(&sim, "k");
    o.trust = TlsTrust::CaFile("/nonexistent/ca.pem".into());
    let e = HubClient::new(o).unwrap_err();
    assert!(matches!(e, HubSetupError::Trust(_)));
    assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
}

#[test]
fn the_key_is_in_no_error_no_log_line_and_no_debug() {
    let key = "hub-secret-6e2d9f13a7b4c508";
    let sim = HubSim::builder().key(key).start();
    let tap = felhom_agent::base::log::tap();
    let c = HubClient::new(options(&sim, key)).unwrap();
    let mut shown = vec![format!("{c:?}"), format!("{:?}", options(&sim, key))];
    // An accepted report, then every failure kind, including a hub that echoes the key.
    c.post_report(&report()).unwrap();
    let echo = format!("bad key {key} for host pve-a");
    let faults = [
        FaultKind::Status {
            code: 500,
            message: echo.clone(),
        },
        FaultKind::Status {
            code: 401,
            message: key.to_string(),
        },
        FaultKind::Garbage,
        FaultKind::DropConnection,
        FaultKind::DropMidBody,
        FaultKind::Oversized(2 << 20),
    ];
    for kind in faults {
        sim.inject(Fault::new(None, REPORT, kind));
        let e = c.post_report(&report()).unwrap_err();
        felhom_agent::warn!(report_failed, "hub round failed", error = e);
        shown.push(e.to_string());
        shown.push(format!("{e:?}"));
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            shown.push(s.to_string());
            source = s.source();
        }
    }
    let wrong = HubClient::new(options(&sim, "not-the-key"))
        .unwrap()
        .post_report(&report())
        .unwrap_err();
    shown.push(format!("{wrong:?}"));
    sim.shutdown();
    let down = c.post_report(&report()).unwrap_err();
    shown.push(format!("{down} {down:?}"));
    shown.push(String::from_utf8(tap.lock().unwrap().clone()).unwrap());
    for text in &shown {
        assert!(!text.contains(key), "key leaked: {text}");
        assert!(!text.contains(&key[..12]), "key prefix leaked: {text}");
    }
    assert!(
        shown
            .iter()
            .any(|t| t.contains("bad key <redacted> for host")),
        "the echoed key was cut out, the rest of the message kept"
    );
}
