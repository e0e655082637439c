//! `net` over real loopback TLS against the simulator. Server trust: a SHA-256 pin, a
//! CA file, the system bundle, and the explicit insecure mode; a refused handshake is
//! a typed, never-sent error and no request reaches the server. And the HTTP rules
//! every client inherits: no redirects, error statuses as readable answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use felhom_agent::base::Secret;
use felhom_agent::net::{
    HttpClient, HttpOptions, Method, Request, Sha256Pin, TlsFailure, TlsTrust, TransportError,
};
use felhom_agent::proxmox::{Client, ClientOptions, ProxmoxError};
use felhom_sim::{
    CertChoice, DEFAULT_TOKEN_ID, DEFAULT_TOKEN_SECRET, Fault, FaultKind, ProxmoxSim,
};

fn vectors(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("vectors/tls")
        .join(name)
}

/// The fingerprint `openssl x509 -fingerprint -sha256` printed for a vector.
fn openssl_fingerprint(cert: &str) -> String {
    let list = std::fs::read_to_string(vectors("fingerprints.txt")).unwrap();
    let line = list.lines().find(|l| l.starts_with(cert)).unwrap();
    line.split(' ').nth(1).unwrap().to_string()
}

fn client(sim: &ProxmoxSim, trust: TlsTrust) -> Client {
    let mut o = ClientOptions::new(
        sim.url(),
        sim.node(),
        DEFAULT_TOKEN_ID,
        Secret::new(DEFAULT_TOKEN_SECRET),
        trust,
    );
    o.timeout = Duration::from_secs(10);
    Client::new(o).unwrap()
}

fn tls_failure(e: ProxmoxError) -> TlsFailure {
    assert!(e.never_sent(), "a refused handshake sends nothing: {e}");
    match e {
        ProxmoxError::Transport(TransportError::Tls { failure, .. }) => failure,
        other => panic!("expected a TLS failure, got {other:?}"),
    }
}

#[test]
fn the_right_pin_is_accepted() {
    let sim = ProxmoxSim::builder().start();
    let pin = Sha256Pin::parse(&openssl_fingerprint("pve-self.crt")).unwrap();
    assert_eq!(pin.to_string(), sim.fingerprint());
    let c = client(&sim, TlsTrust::Pin(pin));
    assert!(c.version().is_ok());
    assert!(c.nodes().is_ok(), "and again on the kept-alive connection");
}

#[test]
fn a_wrong_pin_is_refused_before_any_request() {
    let sim = ProxmoxSim::builder().start();
    let wrong = Sha256Pin::parse(&openssl_fingerprint("other-self.crt")).unwrap();
    let e = client(&sim, TlsTrust::Pin(wrong)).version().unwrap_err();
    let text = e.to_string();
    match tls_failure(e) {
        TlsFailure::PinMismatch {
            expected,
            presented,
        } => {
            assert_eq!(expected, wrong);
            assert_eq!(presented.to_string(), sim.fingerprint());
        }
        other => panic!("expected a pin mismatch, got {other:?}"),
    }
    assert!(text.contains("pin mismatch"), "{text}");
    assert!(sim.requests().is_empty(), "nothing reached the server");
}

#[test]
fn a_self_signed_server_without_pin_or_ca_is_refused() {
    let sim = ProxmoxSim::builder().start();
    if std::path::Path::new(felhom_agent::net::SYSTEM_BUNDLE).exists() {
        match tls_failure(client(&sim, TlsTrust::SystemBundle).version().unwrap_err()) {
            TlsFailure::Untrusted { detail } => assert!(detail.contains("issuer"), "{detail}"),
            other => panic!("expected an untrusted certificate, got {other:?}"),
        }
    } else {
        // No bundle on this machine: the choice is refused when the client is built.
        let o = ClientOptions::new(
            sim.url(),
            "pve",
            DEFAULT_TOKEN_ID,
            Secret::new(DEFAULT_TOKEN_SECRET),
            TlsTrust::SystemBundle,
        );
        assert!(matches!(Client::new(o), Err(ProxmoxError::Trust(_))));
    }
    // The test CA does not vouch for the self-signed certificate either.
    let ca = TlsTrust::CaFile(vectors("ca.crt"));
    assert!(matches!(
        tls_failure(client(&sim, ca).version().unwrap_err()),
        TlsFailure::Untrusted { .. }
    ));
    assert!(sim.requests().is_empty());
}

#[test]
fn a_ca_file_is_accepted_for_a_ca_signed_server() {
    let sim = ProxmoxSim::builder().cert(CertChoice::CaSigned).start();
    let c = client(&sim, TlsTrust::CaFile(vectors("ca.crt")));
    assert!(c.version().is_ok());

    // The name is checked: the certificate is for localhost and 127.0.0.1 only.
    let http = HttpClient::new(&HttpOptions::new(TlsTrust::CaFile(vectors("ca.crt")))).unwrap();
    let by_name = format!("https://localhost:{}/api2/json/version", sim.port());
    let answer = http.send(Request::new(Method::Get, by_name)).unwrap();
    assert_eq!(answer.status, 401, "TLS passed; the missing token did not");
    assert_eq!(answer.reason, "Authentication failed!");

    // A pin on a CA-signed server works too: it judges only the leaf.
    let pin = Sha256Pin::parse(&openssl_fingerprint("ca-leaf.crt")).unwrap();
    assert!(client(&sim, TlsTrust::Pin(pin)).version().is_ok());
}

#[test]
fn a_changed_certificate_is_refused_on_the_next_connection() {
    let sim = ProxmoxSim::builder().start();
    let pin = Sha256Pin::parse(&sim.fingerprint()).unwrap();
    let c = client(&sim, TlsTrust::Pin(pin));
    assert!(c.version().is_ok());

    sim.set_cert(CertChoice::Other);
    // The open connection keeps the old certificate; an error answer makes the server
    // close it, like pveproxy does for every status >= 400.
    sim.inject(Fault::new(
        Some("GET"),
        "/version",
        FaultKind::Status {
            code: 500,
            message: "closing".into(),
        },
    ));
    let _ = c.version();
    let seen = sim.requests().len();

    match tls_failure(c.version().unwrap_err()) {
        TlsFailure::PinMismatch { presented, .. } => {
            assert_eq!(presented.to_string(), CertChoice::Other.fingerprint());
        }
        other => panic!("expected a pin mismatch, got {other:?}"),
    }
    assert_eq!(
        sim.requests().len(),
        seen,
        "the refused connection sent nothing"
    );
    assert!(matches!(
        tls_failure(client(&sim, TlsTrust::Pin(pin)).version().unwrap_err()),
        TlsFailure::PinMismatch { .. }
    ));
}

#[test]
fn insecure_mode_accepts_anything_and_says_so() {
    let sim = ProxmoxSim::builder().cert(CertChoice::Other).start();
    let trust = TlsTrust::InsecureSkipVerify;
    assert!(trust.warning().unwrap().contains("insecure"));
    assert!(client(&sim, trust).version().is_ok());
}

#[test]
fn an_unusable_ca_file_is_refused_at_construction() {
    let sim = ProxmoxSim::builder().start();
    let mut o = ClientOptions::new(
        sim.url(),
        "pve",
        DEFAULT_TOKEN_ID,
        Secret::new(DEFAULT_TOKEN_SECRET),
        TlsTrust::CaFile(vectors("no-such-ca.crt")),
    );
    o.timeout = Duration::from_secs(5);
    let e = Client::new(o).unwrap_err();
    assert!(matches!(e, ProxmoxError::Trust(_)), "{e:?}");
    assert!(e.to_string().contains("no-such-ca.crt"), "{e}");
}

#[test]
fn redirects_are_not_followed_and_error_statuses_are_answers() {
    let sim = ProxmoxSim::builder().start();
    let pin = Sha256Pin::parse(&sim.fingerprint()).unwrap();
    let http = HttpClient::new(&HttpOptions::new(TlsTrust::Pin(pin))).unwrap();
    let url = format!("{}/api2/json/version", sim.url());
    // The redirect points at a real endpoint of the same simulator that answers 200,
    // so a client that followed it would show up in the recorded requests.
    let target = format!("{}/api2/json/nodes", sim.url());
    for code in [301, 302, 303, 307, 308] {
        sim.inject(Fault::new(
            Some("GET"),
            "/version",
            FaultKind::Redirect {
                code,
                location: target.clone(),
            },
        ));
        let answer = http.send(Request::new(Method::Get, url.clone())).unwrap();
        assert_eq!(answer.status, code);
        let e = answer.into_success().unwrap_err();
        assert_eq!((e.status, e.reason.as_str()), (code, "Found"), "{e}");
        assert!(e.body_excerpt.contains("Found"), "{e}");
    }
    let seen: Vec<String> = sim.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(seen, ["/version"; 5], "no redirect was followed");

    // The target is real: asked directly, it answers 200.
    let secret = Secret::new(sim.token_header());
    let nodes = http
        .send(Request::new(Method::Get, target).secret_header("authorization", &secret))
        .unwrap();
    assert_eq!(nodes.status, 200);
    assert_eq!(sim.requests().last().unwrap().path, "/nodes");

    let ok = http
        .send(Request::new(Method::Get, url).secret_header("authorization", &secret))
        .unwrap()
        .into_success()
        .unwrap();
    assert_eq!(ok.status, 200);
    assert!(String::from_utf8(ok.body).unwrap().starts_with("{\"data\""));
}
