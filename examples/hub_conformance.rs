//! Checks a hub against hub protocol v1 (`docs/hub-protocol.md`), playing an agent:
//! `cargo run -q --locked --example hub_conformance -- URL KEY [--ca FILE|--pin SHA256]`
//! (or `scripts/hub-conformance.sh`, which runs this).
//!
//! It posts the golden report (`vectors/host-report.golden.json`) and checks every
//! answer against the schemas in `vectors/hub/` with the hub simulator's validator,
//! over the agent's own HTTPS client and trust rules: a report with a wrong key is
//! 401; the envelope (and its `ack_signed_op_results`) validates; the desired-state
//! document validates and an `If-None-Match` naming its generation is 304; an event
//! validates and a long poll with nothing changed gives the same cursor back after
//! `wait_seconds=1` (or the hub has no event stream: 404); the signed ops validate.
//! One line per check, `ok` or `FAIL`; exit 0 when every check passed, 1 otherwise,
//! 2 for a usage error. The key is never printed: answers are shown only as the
//! validator's problems, with the key cut out of any.
//!
//! A check reads the hub's state but never changes it, except what a report does.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use felhom_agent::base::Secret;
use felhom_agent::net::{HttpClient, HttpOptions, Method, Request, Response, Sha256Pin, TlsTrust};
use felhom_sim::schema::{self, validate};
use serde_json::Value;

const USAGE: &str = "usage: hub_conformance URL KEY [--ca FILE|--pin SHA256]";
const GOLDEN: &str = include_str!("../vectors/host-report.golden.json");

struct Hub {
    http: HttpClient,
    base: String,
    key: Secret,
}

impl Hub {
    fn send(
        &self,
        method: Method,
        path: &str,
        key: &Secret,
        extra: Option<(&str, &str)>,
        body: Option<&[u8]>,
    ) -> Result<Response, String> {
        let mut r = Request::new(method, format!("{}{path}", self.base))
            .header("accept", "application/json")
            .secret_header(
                "authorization",
                &Secret::new(format!("Bearer {}", key.expose())),
            );
        if let Some((name, value)) = extra {
            r = r.header(name, value);
        }
        if let Some(b) = body {
            r = r.json(b.to_vec());
        }
        self.http.send(r).map_err(|e| self.scrub(&e.to_string()))
    }

    fn scrub(&self, text: &str) -> String {
        text.replace(self.key.expose(), felhom_agent::base::REDACTED)
    }
}

#[derive(Default)]
struct Checks {
    failed: Vec<String>,
}

impl Checks {
    fn check(&mut self, name: &str, result: Result<String, String>) {
        match result {
            Ok(note) => println!(
                "ok   {name}{}",
                if note.is_empty() {
                    String::new()
                } else {
                    format!(" ({note})")
                }
            ),
            Err(why) => {
                println!("FAIL {name}: {why}");
                self.failed.push(name.to_string());
            }
        }
    }
}

/// The answer's JSON, when it is a 2xx JSON answer that keeps to `schema_name`.
fn valid(hub: &Hub, r: &Response, schema_name: &str) -> Result<Value, String> {
    if !r.is_success() {
        return Err(format!("HTTP {} {}", r.status, hub.scrub(&r.reason)));
    }
    let v: Value = serde_json::from_slice(&r.body).map_err(|e| format!("not JSON: {e}"))?;
    let problems = validate(schema_name, &v);
    if problems.is_empty() {
        Ok(v)
    } else {
        Err(hub.scrub(&problems.join("; ")))
    }
}

fn parse_args(args: &[String]) -> Result<(String, Secret, TlsTrust), String> {
    let (url, key) = match args {
        [url, key, ..] => (
            url.trim_end_matches('/').to_string(),
            Secret::new(key.clone()),
        ),
        _ => return Err(USAGE.into()),
    };
    let trust = match &args[2..] {
        [] => TlsTrust::SystemBundle,
        [flag, value] if flag == "--ca" => TlsTrust::CaFile(value.into()),
        [flag, value] if flag == "--pin" => {
            TlsTrust::Pin(Sha256Pin::parse(value).map_err(|e| format!("--pin: {e}"))?)
        }
        _ => return Err(USAGE.into()),
    };
    if !url.starts_with("https://") {
        return Err(format!("URL must be https://HOST[:PORT][/PATH]\n{USAGE}"));
    }
    Ok((url, key, trust))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (base, key, trust) = match parse_args(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut options = HttpOptions::new(trust);
    options.timeout = Duration::from_secs(30);
    options.max_body = 16 << 20;
    let http = match HttpClient::new(&options) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("TLS trust: {e}");
            return ExitCode::from(2);
        }
    };
    let hub = Hub { http, base, key };
    let mut checks = Checks::default();
    run(&hub, &mut checks);
    if checks.failed.is_empty() {
        println!("all checks passed");
        ExitCode::SUCCESS
    } else {
        println!(
            "{} check(s) failed: {}",
            checks.failed.len(),
            checks.failed.join(", ")
        );
        ExitCode::from(1)
    }
}

fn run(hub: &Hub, checks: &mut Checks) {
    let golden = GOLDEN.as_bytes();
    checks.check(
        "golden report keeps to host-report.schema.json",
        serde_json::from_str::<Value>(GOLDEN)
            .map_err(|e| e.to_string())
            .and_then(|v| match validate(schema::HOST_REPORT, &v) {
                p if p.is_empty() => Ok(String::new()),
                p => Err(p.join("; ")),
            }),
    );
    let wrong = Secret::new(format!("{}-wrong", hub.key.expose()));
    checks.check(
        "POST /api/v1/host-report with a wrong key is 401",
        hub.send(
            Method::Post,
            "/api/v1/host-report",
            &wrong,
            None,
            Some(golden),
        )
        .and_then(|r| {
            if r.status == 401 {
                Ok(String::new())
            } else {
                Err(format!("HTTP {}", r.status))
            }
        }),
    );
    let envelope = hub
        .send(
            Method::Post,
            "/api/v1/host-report",
            &hub.key,
            None,
            Some(golden),
        )
        .and_then(|r| valid(hub, &r, schema::ENVELOPE));
    checks.check(
        "POST /api/v1/host-report answers an envelope",
        envelope
            .as_ref()
            .map(|_| String::new())
            .map_err(Clone::clone),
    );
    if let Ok(e) = &envelope {
        checks.check(
            "envelope ack_signed_op_results validates",
            match e.get("ack_signed_op_results") {
                None | Some(Value::Null) => Ok("none sent".into()),
                Some(acks) => match validate(schema::ACKS, acks) {
                    p if p.is_empty() => {
                        Ok(format!("{} id(s)", acks.as_array().map_or(0, Vec::len)))
                    }
                    p => Err(p.join("; ")),
                },
            },
        );
    }
    desired_state(hub, checks);
    events(hub, checks);
    checks.check(
        "GET /api/v1/signed-ops answers signed ops",
        hub.send(Method::Get, "/api/v1/signed-ops", &hub.key, None, None)
            .and_then(|r| valid(hub, &r, schema::SIGNED_OPS))
            .map(|v| format!("{} op(s)", v["ops"].as_array().map_or(0, Vec::len))),
    );
}

fn desired_state(hub: &Hub, checks: &mut Checks) {
    const PATH: &str = "/api/v1/desired-state";
    let first = hub.send(Method::Get, PATH, &hub.key, None, None);
    let document = match first {
        Ok(r) if r.status == 404 => {
            checks.check(
                "GET /api/v1/desired-state",
                Ok("404: no document for this host; 304 not checked".into()),
            );
            return;
        }
        other => other.and_then(|r| valid(hub, &r, schema::DESIRED_STATE)),
    };
    checks.check(
        "GET /api/v1/desired-state answers a document",
        document
            .as_ref()
            .map(|_| String::new())
            .map_err(Clone::clone),
    );
    let Ok(doc) = document else { return };
    let generation = doc["generation"].as_u64().unwrap_or(0);
    let etag = format!("\"{generation}\"");
    checks.check(
        "GET /api/v1/desired-state with If-None-Match of its generation is 304",
        hub.send(
            Method::Get,
            PATH,
            &hub.key,
            Some(("if-none-match", &etag)),
            None,
        )
        .and_then(|r| {
            if r.status == 304 {
                Ok(format!("If-None-Match: {etag}"))
            } else {
                Err(format!("HTTP {}", r.status))
            }
        }),
    );
}

fn events(hub: &Hub, checks: &mut Checks) {
    let first = hub.send(
        Method::Get,
        "/api/v1/events?wait_seconds=1",
        &hub.key,
        None,
        None,
    );
    let event = match first {
        Ok(r) if r.status == 404 => {
            checks.check(
                "GET /api/v1/events",
                Ok("404: an older hub without the event stream".into()),
            );
            return;
        }
        other => other.and_then(|r| valid(hub, &r, schema::EVENT)),
    };
    checks.check(
        "GET /api/v1/events answers an event",
        event.as_ref().map(|_| String::new()).map_err(Clone::clone),
    );
    let Ok(event) = event else { return };
    let cursor = event["cursor"].as_str().unwrap_or_default().to_string();
    let query = format!("/api/v1/events?after={}&wait_seconds=1", percent(&cursor));
    checks.check(
        "GET /api/v1/events long poll with nothing changed gives the same cursor back",
        hub.send(Method::Get, &query, &hub.key, None, None)
            .and_then(|r| valid(hub, &r, schema::EVENT))
            .and_then(|v| {
                if v["cursor"].as_str() == Some(cursor.as_str()) {
                    Ok(String::new())
                } else {
                    Err(
                        "another cursor came back (did the hub's state change during the check?)"
                            .into(),
                    )
                }
            }),
    );
}

/// Percent-encodes everything but RFC 3986's unreserved characters, as the agent does.
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
