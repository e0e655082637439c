//! The simulator on the wire: TLS, auth, framing, keep-alive, faults, certificates, shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{API, call, conn, connect, get, sim_with};
use felhom_sim::{
    CertChoice, DEFAULT_TOKEN_ID, DEFAULT_TOKEN_SECRET, Fault, FaultKind, GuestSeed, ProxmoxSim,
};

#[test]
fn version_with_the_right_token_is_200_with_pve_headers() {
    let sim = sim_with(vec![]);
    assert_eq!(
        sim.token_header(),
        format!("PVEAPIToken={DEFAULT_TOKEN_ID}={DEFAULT_TOKEN_SECRET}")
    );
    assert!(sim.url().starts_with("https://127.0.0.1:"));
    assert_eq!(sim.url(), format!("https://127.0.0.1:{}", sim.port()));
    let r = get(&sim, "/version");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("Content-Type"),
        Some("application/json;charset=UTF-8")
    );
    assert_eq!(r.header("Server"), Some("pve-api-daemon/3.0"));
    let data = r.data();
    assert_eq!(data["version"], "9.2.11");
    assert_eq!(data["release"], "9.2");
    assert!(data["repoid"].is_string());
    let recorded = sim.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].path, "/version");
    assert_eq!(
        recorded[0].authorization.as_deref(),
        Some(sim.token_header().as_str())
    );
    assert_eq!(recorded[0].status, 200);
}

#[test]
fn a_wrong_or_missing_token_is_401_without_body_and_closes() {
    let sim = sim_with(vec![]);
    for auth in [
        Some(format!("PVEAPIToken={DEFAULT_TOKEN_ID}=wrong-secret")),
        Some(format!(
            "PVEAPIToken=other@pve!agent={DEFAULT_TOKEN_SECRET}"
        )),
        Some("Bearer abc".to_string()),
        None,
    ] {
        let mut c = connect(sim.port(), auth.clone()).unwrap();
        let r = c.call("GET", &format!("{API}/version"), None).unwrap();
        assert_eq!(r.status, 401, "{auth:?}");
        assert_eq!(r.reason, "Authentication failed!");
        assert!(r.body.is_empty());
        assert_eq!(r.header("Content-Type"), None);
        assert_eq!(r.header("Connection"), Some("close"));
        assert!(c.is_closed());
    }
    // Every attempt is recorded with what it sent.
    let recorded = sim.requests();
    assert_eq!(recorded.len(), 4);
    assert!(recorded.iter().all(|r| r.status == 401));
    assert_eq!(recorded[3].authorization, None);
}

#[test]
fn token_value_may_be_space_separated_and_uri_escaped() {
    let sim = sim_with(vec![]);
    let escaped = format!(
        "PVEAPIToken {}={DEFAULT_TOKEN_SECRET}",
        DEFAULT_TOKEN_ID.replace('!', "%21").replace('@', "%40")
    );
    let mut c = connect(sim.port(), Some(escaped)).unwrap();
    assert_eq!(
        c.call("GET", &format!("{API}/version"), None)
            .unwrap()
            .status,
        200
    );
}

#[test]
fn unknown_paths_are_501_with_the_message_in_reason_and_body() {
    let sim = sim_with(vec![]);
    let r = get(&sim, "/nodes/pve/foo");
    assert_eq!(r.status, 501);
    assert_eq!(r.reason, "Method 'GET /nodes/pve/foo' not implemented");
    assert_eq!(
        r.json(),
        serde_json::json!({"data": null, "message": "Method 'GET /nodes/pve/foo' not implemented\n"})
    );
    // A known path with the wrong method is just as unknown.
    let r = call(&sim, "PUT", "/version", Some("a=1"));
    assert_eq!(r.status, 501);
    assert_eq!(r.reason, "Method 'PUT /version' not implemented");
}

#[test]
fn a_body_on_get_is_refused() {
    let sim = sim_with(vec![]);
    let r = call(&sim, "GET", "/version", Some("x=1"));
    assert_eq!(r.status, 501);
    assert_eq!(r.reason, "Unexpected content for method 'GET'");
}

#[test]
fn keep_alive_serves_many_requests_and_errors_close() {
    let sim = sim_with(vec![GuestSeed::new(100, "web")]);
    let mut c = conn(&sim);
    for _ in 0..3 {
        let r = c.call("GET", &format!("{API}/version"), None).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("Connection"), Some("Keep-Alive"));
    }
    let r = c
        .call("GET", &format!("{API}/nodes/pve/lxc/999/config"), None)
        .unwrap();
    assert_eq!(r.status, 500);
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(c.is_closed());
}

#[test]
fn malformed_http_gets_400_and_a_close() {
    let sim = sim_with(vec![]);
    let mut raw = connect(sim.port(), None).unwrap();
    // The helper appends " HTTP/1.1": this request line has four parts.
    raw.send("GET", "/x HTTP/1.1 extra", None).unwrap();
    let r = raw.recv().unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(raw.is_closed());
    // Nothing a handler could see was recorded.
    assert!(sim.requests().is_empty());
}

#[test]
fn status_fault_answers_pve_error_shape_then_counts_down() {
    let sim = sim_with(vec![GuestSeed::new(100, "web")]);
    sim.inject(
        Fault::new(
            Some("GET"),
            "/nodes/pve/lxc",
            FaultKind::Status {
                code: 500,
                message: "CT is locked (backup)".into(),
            },
        )
        .times(2),
    );
    // Not matching: another path, another method.
    assert_eq!(get(&sim, "/version").status, 200);
    for _ in 0..2 {
        let r = get(&sim, "/nodes/pve/lxc");
        assert_eq!(r.status, 500);
        assert_eq!(r.reason, "CT is locked (backup)");
        assert_eq!(
            r.json(),
            serde_json::json!({"data": null, "message": "CT is locked (backup)\n"})
        );
    }
    let r = get(&sim, "/nodes/pve/lxc");
    assert_eq!(r.status, 200);
    assert_eq!(r.data().as_array().unwrap().len(), 1);
}

#[test]
fn faults_apply_in_queue_order_to_the_first_match() {
    let sim = sim_with(vec![]);
    let status = |code: u16| FaultKind::Status {
        code,
        message: format!("fault {code}"),
    };
    sim.inject(Fault::new(Some("POST"), "/", status(599)));
    sim.inject(Fault::new(None, "/version", status(596)));
    sim.inject(Fault::new(None, "/", status(595)));
    assert_eq!(get(&sim, "/version").status, 596);
    assert_eq!(get(&sim, "/version").status, 595);
    assert_eq!(get(&sim, "/version").status, 200);
    assert_eq!(
        call(&sim, "POST", "/nodes/pve/vzdump", Some("all=1")).status,
        599
    );
}

#[test]
fn drop_connection_answers_nothing_and_does_nothing() {
    let sim = sim_with(vec![GuestSeed::new(100, "web")]);
    sim.inject(Fault::new(
        Some("POST"),
        "/nodes/pve/lxc/100/status",
        FaultKind::DropConnection,
    ));
    let mut c = conn(&sim);
    let err = c
        .call(
            "POST",
            &format!("{API}/nodes/pve/lxc/100/status/start"),
            Some(("application/x-www-form-urlencoded", b"")),
        )
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    assert!(sim.tasks().is_empty());
    assert_eq!(sim.mutations()[0].status, 0);
    // Consumed: the next one goes through.
    let r = call(&sim, "POST", "/nodes/pve/lxc/100/status/start", Some(""));
    assert_eq!(r.status, 200);
}

#[test]
fn drop_mid_body_truncates_an_answer_whose_effect_landed() {
    let sim = sim_with(vec![GuestSeed::new(100, "web")]);
    sim.inject(Fault::new(
        None,
        "/nodes/pve/lxc/100/status/start",
        FaultKind::DropMidBody,
    ));
    let r = call(&sim, "POST", "/nodes/pve/lxc/100/status/start", Some(""));
    assert_eq!(r.status, 200);
    assert!(!r.complete);
    let length: usize = r.header("Content-Length").unwrap().parse().unwrap();
    assert!(r.body.len() < length);
    assert!(serde_json::from_slice::<serde_json::Value>(&r.body).is_err());
    // The start was processed: the task exists.
    assert_eq!(sim.tasks().len(), 1);
}

#[test]
fn garbage_is_200_with_a_body_that_is_not_json() {
    let sim = sim_with(vec![]);
    sim.inject(Fault::new(None, "/version", FaultKind::Garbage));
    let r = get(&sim, "/version");
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert!(!r.body.is_empty());
    assert!(serde_json::from_slice::<serde_json::Value>(&r.body).is_err());
}

#[test]
fn oversized_is_a_complete_valid_body_of_exactly_that_size() {
    let sim = sim_with(vec![]);
    sim.inject(Fault::new(
        None,
        "/nodes",
        FaultKind::Oversized(3 * 1024 * 1024 + 7),
    ));
    let r = get(&sim, "/nodes");
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert_eq!(r.body.len(), 3 * 1024 * 1024 + 7);
    assert!(r.json()["data"].is_string());
}

#[test]
fn delay_processes_at_once_and_answers_late() {
    let sim = sim_with(vec![GuestSeed::new(100, "web")]);
    sim.inject(Fault::new(
        Some("POST"),
        "/nodes/pve/lxc/100/status/start",
        FaultKind::Delay(Duration::from_secs(30)),
    ));
    let mut c = conn(&sim);
    c.set_read_timeout(Duration::from_millis(200));
    c.send(
        "POST",
        &format!("{API}/nodes/pve/lxc/100/status/start"),
        Some(("application/x-www-form-urlencoded", b"")),
    )
    .unwrap();
    let err = c.recv().unwrap_err();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{err:?}"
    );
    // The client gave up, yet the request was carried out: the task exists.
    let tasks = sim.tasks();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["type"], "vzstart");
    // Shutting down cuts the delay short instead of waiting 30 s.
    sim.shutdown();
}

#[test]
fn a_short_delay_still_delivers_the_normal_answer() {
    let sim = sim_with(vec![]);
    sim.inject(Fault::new(
        None,
        "/version",
        FaultKind::Delay(Duration::from_millis(50)),
    ));
    let r = get(&sim, "/version");
    assert_eq!(r.status, 200);
    assert_eq!(r.data()["version"], "9.2.11");
}

#[test]
fn set_cert_changes_what_new_connections_see() {
    let sim = ProxmoxSim::builder().start();
    let c = conn(&sim);
    let mut c = c;
    c.call("GET", &format!("{API}/version"), None).unwrap();
    let first = c.fingerprint.lock().unwrap().clone().unwrap();
    assert_eq!(first, CertChoice::SelfSigned.fingerprint());
    assert_eq!(sim.fingerprint(), first);

    sim.set_cert(CertChoice::Other);
    // The open connection keeps its session.
    assert_eq!(
        c.call("GET", &format!("{API}/version"), None)
            .unwrap()
            .status,
        200
    );
    let mut fresh = conn(&sim);
    fresh.call("GET", &format!("{API}/version"), None).unwrap();
    let second = fresh.fingerprint.lock().unwrap().clone().unwrap();
    assert_eq!(second, CertChoice::Other.fingerprint());
    assert_eq!(sim.fingerprint(), second);
    assert_ne!(first, second);
    // /nodes reports the node's current fingerprint.
    assert_eq!(get(&sim, "/nodes").data()[0]["ssl_fingerprint"], second);
}

#[test]
fn ca_signed_cert_is_presented_when_chosen() {
    let sim = ProxmoxSim::builder().cert(CertChoice::CaSigned).start();
    let mut c = conn(&sim);
    c.call("GET", &format!("{API}/version"), None).unwrap();
    assert_eq!(
        c.fingerprint.lock().unwrap().clone().unwrap(),
        CertChoice::CaSigned.fingerprint()
    );
}

#[test]
fn shutdown_closes_idle_connections_and_stops_accepting() {
    let sim = sim_with(vec![]);
    let port = sim.port();
    let mut idle = conn(&sim);
    assert_eq!(
        idle.call("GET", &format!("{API}/version"), None)
            .unwrap()
            .status,
        200
    );
    sim.shutdown();
    assert!(idle.is_closed());
    assert!(
        connect(port, None)
            .and_then(|mut c| c.call("GET", "/", None))
            .is_err()
    );
}

#[test]
fn requests_record_decoded_paths_query_and_form() {
    let sim = sim_with(vec![GuestSeed::new(100, "web")]);
    let mut c = conn(&sim);
    c.call(
        "GET",
        &format!("{API}/nodes/pve/tasks?vmid=100&typefilter=vz%73tart"),
        None,
    )
    .unwrap();
    let mut c = conn(&sim);
    c.call(
        "PUT",
        &format!("{API}/nodes/pve/lxc/100/config"),
        Some((
            "application/x-www-form-urlencoded",
            b"description=a+b%3Ac&cores=2",
        )),
    )
    .unwrap();
    let reqs = sim.requests();
    assert_eq!(
        reqs[0].query,
        vec![
            ("vmid".into(), "100".into()),
            ("typefilter".into(), "vzstart".into())
        ]
    );
    assert_eq!(reqs[1].method, "PUT");
    assert_eq!(
        reqs[1].form,
        vec![
            ("description".into(), "a b:c".into()),
            ("cores".into(), "2".into())
        ]
    );
    assert_eq!(sim.mutations().len(), 1);
    sim.clear_requests();
    assert!(sim.requests().is_empty());
}

fn raw_request(sim: &ProxmoxSim, head_and_body: &str) -> common::Conn {
    let mut c = connect(sim.port(), None).unwrap();
    c.send_raw(
        head_and_body
            .replace("{AUTH}", &sim.token_header())
            .as_bytes(),
    )
    .unwrap();
    c
}

#[test]
fn chunked_bodies_are_decoded() {
    let sim = sim_with(vec![GuestSeed::new(100, "web")]);
    let mut c = raw_request(
        &sim,
        "PUT /api2/json/nodes/pve/lxc/100/config HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\ncores\r\n2;ext=1\r\n=5\r\n0\r\nTrailer: x\r\n\r\n",
    );
    let r = c.recv().unwrap();
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(sim.guest_config(100).unwrap()["cores"], 5);
    // The connection stays usable after a chunked request.
    let r = c.call("GET", &format!("{API}/version"), None);
    // No Authorization on this helper's own requests: the answer is a 401, on the same socket.
    assert_eq!(r.unwrap().status, 401);
}

#[test]
fn expect_continue_gets_an_interim_100() {
    let sim = sim_with(vec![GuestSeed::new(100, "web")]);
    let mut c = raw_request(
        &sim,
        "PUT /api2/json/nodes/pve/lxc/100/config HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\nExpect: 100-continue\r\n\r\n",
    );
    let interim = c.recv().unwrap();
    assert_eq!(interim.status, 100);
    c.send_raw(b"cores=6").unwrap();
    assert_eq!(c.recv().unwrap().status, 200);
    assert_eq!(sim.guest_config(100).unwrap()["cores"], 6);
}

#[test]
fn oversized_requests_are_refused_before_the_handler() {
    let sim = sim_with(vec![]);
    let mut c = raw_request(
        &sim,
        "POST /api2/json/nodes/pve/vzdump HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n",
    );
    assert_eq!(c.recv().unwrap().status, 413);
    assert!(c.is_closed());
    let big = format!(
        "GET /api2/json/version HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(felhom_sim::http::MAX_HEAD + 1)
    );
    let mut c = raw_request(&sim, &big);
    assert_eq!(c.recv().unwrap().status, 431);
    let mut c = raw_request(
        &sim,
        "GET /api2/json/version HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    );
    assert_eq!(c.recv().unwrap().status, 400);
    assert!(sim.requests().is_empty());
}

#[test]
fn http_1_0_is_answered_then_closed() {
    let sim = sim_with(vec![]);
    let mut c = raw_request(
        &sim,
        "GET /api2/json/version HTTP/1.0\r\nAuthorization: {AUTH}\r\n\r\n",
    );
    let r = c.recv().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(c.is_closed());
}

#[test]
fn paths_outside_the_api_are_501_after_auth() {
    let sim = sim_with(vec![]);
    let r = conn(&sim)
        .call("GET", "/pve2/ext6/ext-all.js", None)
        .unwrap();
    assert_eq!(r.status, 501);
    assert_eq!(
        r.reason,
        "Method 'GET /pve2/ext6/ext-all.js' not implemented"
    );
    assert_eq!(sim.requests()[0].path, "/pve2/ext6/ext-all.js");
}

#[test]
fn a_panicking_handler_is_answered_500_counted_and_the_server_goes_on() {
    use felhom_sim::http::{Request, Response, Server, tls_config};
    let (cert, key) = (
        include_bytes!("../../vectors/tls/pve-self.crt").as_slice(),
        include_bytes!("../../vectors/tls/pve-self.key").as_slice(),
    );
    let server = Server::start(tls_config(cert, key).unwrap(), |req: &Request| {
        if req.raw_path() == "/boom" {
            panic!("a handler bug");
        }
        Response::new(200, "OK").with_body("fine")
    })
    .unwrap();
    let panics = server.panics();
    assert_eq!(panics.count(), 0);
    let r = connect(server.addr().port(), None)
        .unwrap()
        .call("GET", "/boom", None)
        .unwrap();
    assert_eq!(r.status, 500);
    let r = connect(server.addr().port(), None)
        .unwrap()
        .call("GET", "/ok", None)
        .unwrap();
    assert_eq!(r.status, 200, "the server still serves");
    assert_eq!(panics.count(), 1);
    assert!(
        panics.messages()[0].contains("GET /boom"),
        "{:?}",
        panics.messages()
    );
    assert!(panics.summary().is_some());
    server.shutdown();
    assert_eq!(panics.count(), 1, "the count outlives the server");
    assert_eq!(panics.take().0, 1);
    assert_eq!((panics.count(), panics.summary()), (0, None));
}

#[test]
fn a_simulator_whose_thread_panicked_fails_the_test_when_dropped() {
    let sim = sim_with(vec![]);
    sim.inject(Fault::new(Some("GET"), "/version", FaultKind::Panic));
    assert_eq!(get(&sim, "/version").status, 500);
    assert_eq!(
        get(&sim, "/version").status,
        200,
        "one fault, then normal answers"
    );
    assert_eq!(sim.panics().0, 1);
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(sim)));
    assert!(dropped.is_err(), "dropping it panics: the test fails");

    // Taken on purpose, it no longer fails the drop.
    let sim = sim_with(vec![]);
    sim.inject(Fault::new(None, "/version", FaultKind::Panic));
    assert_eq!(get(&sim, "/version").status, 500);
    assert_eq!(sim.take_panics().0, 1);
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(sim)));
    assert!(dropped.is_ok());

    // The hub simulator: the same server, the same rule.
    let hub = felhom_sim::HubSim::start();
    hub.inject(Fault::new(None, "", FaultKind::Panic));
    let r = connect(hub.port(), None)
        .unwrap()
        .call("GET", "/api/v1/signed-ops", None)
        .unwrap();
    assert_eq!(r.status, 500);
    assert_eq!(hub.panics().0, 1);
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || hub.shutdown()));
    assert!(dropped.is_err(), "shutting it down panics too");
}
