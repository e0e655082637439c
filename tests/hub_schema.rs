//! The published schemas (`vectors/hub/`) and the agent's own parsers agree: what the
//! agent accepts validates, and what it rejects does not, wherever a schema can say so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use felhom_agent::hub::{ControlEnvelope, HubEvent, MAX_ACK_ID_BYTES, MAX_ACKS, MAX_CURSOR_BYTES};
use felhom_agent::reconcile::DesiredState;
use felhom_sim::schema::{self, validate};
use serde_json::{Value, json};

fn agree(name: &str, body: &Value, agent_accepts: bool) {
    let problems = validate(name, body);
    assert_eq!(
        problems.is_empty(),
        agent_accepts,
        "{name}: {body}: agent accepts {agent_accepts}, schema says {problems:?}"
    );
}

fn envelopes() -> Vec<Value> {
    vec![
        json!({"poll_interval_seconds": 300, "blocked": false, "desired_generation": 0, "has_signed_ops": false}),
        json!({}),
        json!({"poll_interval_seconds": null, "blocked": null, "future": {"x": [1]}}),
        json!({"poll_interval_seconds": -5}),
        json!({"poll_interval_seconds": 18446744073709551615u64}),
        json!({"ack_signed_op_results": ["op-1", "op 2", "op-1"]}),
        json!({"ack_signed_op_results": null}),
        json!({"ack_signed_op_results": vec!["op"; MAX_ACKS]}),
        json!({"ack_signed_op_results": ["i".repeat(MAX_ACK_ID_BYTES)]}),
        // Rejected by the agent.
        json!([1]),
        json!("text"),
        json!({"poll_interval_seconds": "300"}),
        json!({"poll_interval_seconds": 1.5}),
        json!({"poll_interval_seconds": 300.0}),
        json!({"blocked": "no"}),
        json!({"has_signed_ops": 1}),
        json!({"desired_generation": -1}),
        json!({"desired_generation": "7"}),
        json!({"ack_signed_op_results": "op-1"}),
        json!({"ack_signed_op_results": {"id": "op-1"}}),
        json!({"ack_signed_op_results": ["op-1", 7]}),
        json!({"ack_signed_op_results": [""]}),
        json!({"ack_signed_op_results": ["i".repeat(MAX_ACK_ID_BYTES + 1)]}),
        json!({"ack_signed_op_results": vec!["op"; MAX_ACKS + 1]}),
    ]
}

#[test]
fn envelopes_the_agent_accepts_validate_and_the_rest_do_not() {
    for body in envelopes() {
        let accepts = ControlEnvelope::parse(body.to_string().as_bytes()).is_ok();
        agree(schema::ENVELOPE, &body, accepts);
    }
}

#[test]
fn events_the_agent_accepts_validate_and_the_rest_do_not() {
    let mut cases = vec![
        json!({"cursor": "c-41", "desired_generation": 7, "has_signed_ops": true, "blocked": false}),
        json!({"cursor": "", "poll_interval_seconds": 60, "future": 1}),
        json!({"cursor": "x".repeat(MAX_CURSOR_BYTES)}),
        json!({"cursor": "c", "ack_signed_op_results": ["op-1"]}),
        json!({"desired_generation": 1}),
        json!({"cursor": null}),
        json!({"cursor": 5}),
        json!({"cursor": "x".repeat(MAX_CURSOR_BYTES + 1)}),
    ];
    // Every envelope case with a cursor added: the same verdicts.
    for mut e in envelopes() {
        if let Some(o) = e.as_object_mut() {
            o.insert("cursor".into(), json!("c-1"));
        }
        cases.push(e);
    }
    for body in cases {
        let accepts = HubEvent::parse(body.to_string().as_bytes()).is_ok();
        agree(schema::EVENT, &body, accepts);
    }
}

#[test]
fn desired_state_documents_the_agent_accepts_validate_and_the_rest_do_not() {
    let cases = [
        json!({"generation": 7, "guests": [{"vmid": 100, "run": "running", "spec": {"cores": 4, "memory_bytes": 1073741824}, "description": "web"}]}),
        json!({}),
        json!({"generation": null, "guests": null}),
        json!({"guests": [{"vmid": 999999999, "run": null, "spec": null, "description": null}]}),
        json!({"guests": [{"vmid": 100, "spec": {"cores": 8192, "memory_bytes": 16777216, "disk_bytes": 0}}]}),
        json!({"guests": [{"vmid": 100, "description": "d".repeat(8192)}]}),
        json!({"guests": [{"vmid": 100, "spec": {"rootfs_bytes": 1048576}}]}),
        json!({"guests": [{"vmid": 100, "spec": {"rootfs_bytes": 1125899906842624u64}}]}),
        json!({"guests": [{"vmid": 100, "spec": {"rootfs_bytes": null}}]}),
        // Rejected by the agent.
        json!({"guests": [{"vmid": 100, "spec": {"rootfs_bytes": 1048575}}]}),
        json!({"guests": [{"vmid": 100, "spec": {"rootfs_bytes": 1125899906842625u64}}]}),
        json!({"guests": [{"vmid": 100, "spec": {"rootfs_bytes": "8G"}}]}),
        json!({"guests": [{"vmid": 200, "source": {"backup": "local:backup/vzdump-lxc-100-2024_05_01-10_00_00.tar.zst"}, "hostname": "web-2", "storage": "local-lvm", "rootfs_bytes": 8589934592u64}]}),
        json!({"guests": [{"vmid": 201, "source": {"template": "local:vztmpl/debian-12.tar.zst"}, "storage": "local-lvm", "rootfs_bytes": 140737488355328u64}]}),
        json!({"guests": [{"vmid": 202, "source": null, "hostname": null, "storage": null, "rootfs_bytes": null}]}),
        // Rejected by the agent.
        json!({"guests": [{"vmid": 200, "source": {"iso": "local:iso/x.iso"}, "storage": "local-lvm"}]}),
        json!({"guests": [{"vmid": 200, "source": "local:backup/x"}]}),
        json!({"guests": [{"vmid": 200, "rootfs_bytes": 0}]}),
        json!({"guests": [{"vmid": 200, "rootfs_bytes": 140737488355329u64}]}),
        json!({"guests": [{"vmid": 200, "hostname": 5}]}),
        json!([]),
        json!({"generation": -1}),
        json!({"generation": 1.5}),
        json!({"extra": 1}),
        json!({"guests": {}}),
        json!({"guests": [{}]}),
        json!({"guests": [{"vmid": null}]}),
        json!({"guests": [{"vmid": 99}]}),
        json!({"guests": [{"vmid": 1000000000}]}),
        json!({"guests": [{"vmid": "100"}]}),
        json!({"guests": [{"vmid": 100, "run": "paused"}]}),
        json!({"guests": [{"vmid": 100, "name": "x"}]}),
        json!({"guests": [{"vmid": 100, "spec": {"cores": 0}}]}),
        json!({"guests": [{"vmid": 100, "spec": {"cores": 8193}}]}),
        json!({"guests": [{"vmid": 100, "spec": {"memory_bytes": 16777215}}]}),
        json!({"guests": [{"vmid": 100, "spec": {"disk_bytes": -1}}]}),
        json!({"guests": [{"vmid": 100, "spec": {"swap": 1}}]}),
        json!({"guests": [{"vmid": 100, "description": "d".repeat(8193)}]}),
        json!({"guests": [{"vmid": 100, "description": 5}]}),
    ];
    for body in cases {
        let accepts = DesiredState::from_json(body.to_string().as_bytes()).is_ok();
        agree(schema::DESIRED_STATE, &body, accepts);
    }
}

#[test]
fn what_the_schemas_cannot_say_the_agent_still_refuses() {
    // A vmid twice, an ack id with a control character, a cursor with a space: valid
    // per the schemas (the page says so), refused by the agent.
    let twice = json!({"guests": [{"vmid": 100}, {"vmid": 100}]});
    assert!(validate(schema::DESIRED_STATE, &twice).is_empty());
    assert!(DesiredState::from_json(twice.to_string().as_bytes()).is_err());
    let control = json!({"ack_signed_op_results": ["a\u{1}b"]});
    assert!(validate(schema::ENVELOPE, &control).is_empty());
    assert!(ControlEnvelope::parse(control.to_string().as_bytes()).is_err());
    let spaced = json!({"cursor": "a b"});
    assert!(validate(schema::EVENT, &spaced).is_empty());
    assert!(HubEvent::parse(spaced.to_string().as_bytes()).is_err());
}
