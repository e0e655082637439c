//! Every kind of answer the hub simulator composes keeps to its published schema, and a
//! report off the schema is refused naming the problem.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Conn, connect};
use felhom_sim::schema::{self, validate};
use felhom_sim::{DESIRED_STATE_PATH, EVENTS_PATH, HubSim, SIGNED_OPS_PATH, contract::CONTRACT};
use serde_json::{Value, json};

fn hub_conn(hub: &HubSim) -> Conn {
    connect(hub.port(), Some(format!("Bearer {}", hub.key()))).unwrap()
}

fn report(c: &mut Conn, body: &[u8]) -> (u16, Value) {
    let r = c
        .call(
            "POST",
            "/api/v1/host-report",
            Some(("application/json", body)),
        )
        .unwrap();
    (r.status, r.json())
}

fn get(c: &mut Conn, target: &str) -> Value {
    let r = c.call("GET", target, None).unwrap();
    assert_eq!(r.status, 200, "{target}");
    r.json()
}

fn assert_valid(name: &str, v: &Value) {
    assert_eq!(validate(name, v), Vec::<String>::new(), "{name}: {v}");
}

#[test]
fn every_answer_the_simulator_composes_validates() {
    let hub = HubSim::start();
    let mut c = hub_conn(&hub);
    // The default envelope.
    let (status, envelope) = report(&mut c, CONTRACT.as_bytes());
    assert_eq!(status, 200);
    assert_valid(schema::ENVELOPE, &envelope);
    // Acknowledgements, a block, a queued op, a published document.
    hub.ack_signed_op_results(&["op-7"]);
    hub.set_blocked(true);
    hub.queue_signed_op(b"{\"op\":\"guest_destroy\"}\n", None);
    hub.queue_signed_op(b"blob", Some("-----BEGIN SSH SIGNATURE-----\n"));
    hub.publish_desired_state(&json!({
        "generation": 3,
        "guests": [{"vmid": 100, "run": "running", "spec": {"cores": 2}, "description": "web"}]
    }));
    let (status, envelope) = report(&mut c, CONTRACT.as_bytes());
    assert_eq!(status, 200);
    assert_valid(schema::ENVELOPE, &envelope);
    assert_eq!(envelope["ack_signed_op_results"], json!(["op-7"]));
    assert_eq!(envelope["blocked"], json!(true));
    assert_eq!(envelope["has_signed_ops"], json!(true));
    assert_eq!(envelope["desired_generation"], json!(3));
    // Acknowledged automatically: the golden report carries a result.
    hub.auto_ack_signed_op_results(true);
    let (_, envelope) = report(&mut c, CONTRACT.as_bytes());
    assert_valid(schema::ENVELOPE, &envelope);
    assert_eq!(envelope["ack_signed_op_results"], json!(["op-7"]));
    // The event stream, now and with acknowledgements.
    let event = get(&mut c, &format!("{EVENTS_PATH}?wait_seconds=1"));
    assert_valid(schema::EVENT, &event);
    hub.ack_signed_op_results_by_event(&["op-8"]);
    let event = get(&mut c, &format!("{EVENTS_PATH}?after=0&wait_seconds=1"));
    assert_valid(schema::EVENT, &event);
    assert_eq!(event["ack_signed_op_results"], json!(["op-8"]));
    // The long poll's timeout: the same cursor back.
    let cursor = event["cursor"].as_str().unwrap().to_string();
    let again = get(
        &mut c,
        &format!("{EVENTS_PATH}?after={cursor}&wait_seconds=1"),
    );
    assert_valid(schema::EVENT, &again);
    assert_eq!(again["cursor"], json!(cursor));
    // The desired state and the signed ops.
    assert_valid(schema::DESIRED_STATE, &get(&mut c, DESIRED_STATE_PATH));
    let ops = get(&mut c, SIGNED_OPS_PATH);
    assert_valid(schema::SIGNED_OPS, &ops);
    assert_eq!(ops["ops"].as_array().unwrap().len(), 2);
    let empty = get(&mut c, SIGNED_OPS_PATH);
    assert_valid(schema::SIGNED_OPS, &empty);
    assert_eq!(empty, json!({"ops": []}));
}

#[test]
fn a_scripted_envelope_is_sent_as_written_even_off_the_schema() {
    let hub = HubSim::start();
    let mut c = hub_conn(&hub);
    let script = json!({"poll_interval_seconds": 120, "blocked": false, "future": [1]});
    hub.script_envelope(script.clone());
    let (_, envelope) = report(&mut c, CONTRACT.as_bytes());
    assert_valid(schema::ENVELOPE, &envelope);
    assert_eq!(envelope, script);
    hub.script_envelope(json!({"blocked": "no"}));
    let (status, envelope) = report(&mut c, CONTRACT.as_bytes());
    assert_eq!(status, 200);
    assert!(!validate(schema::ENVELOPE, &envelope).is_empty());
}

#[test]
fn a_report_off_the_schema_is_400_naming_the_path() {
    let hub = HubSim::start();
    let mut c = hub_conn(&hub);
    let mut golden: Value = serde_json::from_str(CONTRACT).unwrap();
    // The golden file's own contract check cannot see a count or a length.
    golden["audit_tail"] = json!(vec![golden["audit_tail"][0].clone(); 51]);
    golden["guests"][0]["vmid"] = json!(-1);
    let (status, body) = report(&mut c, golden.to_string().as_bytes());
    assert_eq!(status, 400);
    let problems: Vec<&str> = body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        problems.iter().any(|p| p.starts_with("$.audit_tail:")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.starts_with("$.guests[0].vmid:")),
        "{problems:?}"
    );
    assert!(hub.reports().is_empty());
}
