//! The felhom hub simulator: `POST /api/v1/host-report` and `GET /api/v1/signed-ops`
//! over HTTPS on loopback.
//!
//! It checks the bearer key (401), validates each report against the contract file
//! `vectors/host-report.golden.json` and `vectors/hub/host-report.schema.json` (400
//! naming every problem either finds), and checks every answer it composes against its
//! schema in `vectors/hub/` (see [`crate::schema`]); only what a test hands it raw
//! (`script_envelope`, `queue_signed_op_raw`, `publish_desired_bytes`) goes out as
//! written, off the schema if the test wants the agent to see that. It records
//! the reports it accepts, and answers each with a control envelope — scripted ones
//! first, then a default. Faults use the Proxmox simulator's [`Fault`]/[`FaultKind`]
//! (500s, delays, garbage, dropped connections), matched on the request path. Signed ops
//! queued by a test are announced by `has_signed_ops` and handed over once, each blob as
//! base64 of its exact bytes. A desired-state document a test publishes is served at
//! `GET /api/v1/desired-state` with its generation as the entity tag (`304` to an
//! `If-None-Match` naming it) and announced in every envelope's `desired_generation`.
//! `GET /api/v1/events?after=CURSOR&wait_seconds=N` is a long poll: it answers at once
//! when the state has moved past the cursor (a published document, a queued or fetched
//! op, a block), else as soon as it moves, else after `wait_seconds` with the same
//! cursor; a hub built `without_events` answers it 404.
//! The `signed_op_results` of every accepted report are recorded (the latest per op id);
//! ids a test acknowledges ([`HubSim::ack_signed_op_results`], or every id reported
//! with [`HubSim::auto_ack_signed_op_results`]) go out in the next envelope's
//! `ack_signed_op_results`.
//!
//! Test and demo code: it never reaches beyond 127.0.0.1 and never ships in the agent.
//! It owns no contract of its own: the golden file and the published schemas are.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fault::{Dress, FaultAnswer, recorded_status};
use crate::http::{self, Delivery, Request, Response};
use crate::pve::{CertChoice, Fault, FaultKind};
use crate::schema;

/// The bearer key accepted unless the builder sets another. Test material only.
pub const DEFAULT_HUB_KEY: &str = "hubkey-7c1e4b9a-2f60-4d8e-9a35-b04f6e21d7c8";

/// The report endpoint.
pub const REPORT_PATH: &str = "/api/v1/host-report";

/// The endpoint that hands queued signed ops to the agent.
pub const SIGNED_OPS_PATH: &str = "/api/v1/signed-ops";

/// The endpoint that serves this host's desired-state document.
pub const DESIRED_STATE_PATH: &str = "/api/v1/desired-state";

/// The long-poll event stream.
pub const EVENTS_PATH: &str = "/api/v1/events";

/// The longest `wait_seconds` the simulator honours.
pub const MAX_EVENT_WAIT_SECONDS: u64 = 300;

pub use crate::contract::{
    CONTRACT, ENUM_FIELDS, NULLABLE_FIELDS, OPTIONAL_FIELDS, SHARED_SHAPES, contract_template,
    validate_report,
};

/// The envelope answered when no scripted one is queued.
pub fn default_envelope() -> Value {
    json!({
        "poll_interval_seconds": 300,
        "blocked": false,
        "desired_generation": 0,
        "has_signed_ops": false
    })
}

/// One request as the hub simulator received it.
#[derive(Debug, Clone, PartialEq)]
pub struct HubRequest {
    /// The method.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The `Authorization` header as sent.
    pub authorization: Option<String>,
    /// The `If-None-Match` header as sent.
    pub if_none_match: Option<String>,
    /// The body as sent.
    pub body: Vec<u8>,
    /// When it arrived.
    pub at: Instant,
    /// The status answered; 0 when the connection was dropped without an answer.
    pub status: u16,
}

#[derive(Debug)]
struct State {
    key: String,
    envelopes: VecDeque<Value>,
    default_envelope: Value,
    faults: VecDeque<Fault>,
    requests: Vec<HubRequest>,
    reports: Vec<Value>,
    signed_ops: Vec<Value>,
    next_op: u64,
    /// The published document's bytes and the generation it is served and announced as.
    /// The third is whether a test published raw bytes (sent as they are, even off the
    /// schema).
    desired: Option<(Vec<u8>, u64, bool)>,
    /// A test queued a raw entry: the next hand-over is sent as it is.
    raw_ops: bool,
    /// `blocked` as a test set it, over what the envelopes say.
    blocked: Option<bool>,
    /// Bumped on every change the event stream reports; the cursor is its decimal.
    version: u64,
    /// Whether `GET /api/v1/events` exists (an older hub answers 404).
    events: bool,
    /// Set at shutdown: held long polls answer at once, so their threads can be joined.
    stopping: bool,
    /// The latest signed-op result heard per id, in the order the ids were first heard.
    results: Vec<Value>,
    /// Ids to acknowledge in the next envelope.
    acks: Vec<String>,
    /// Acknowledge every result id each report carries, in its own answer.
    auto_ack: bool,
    /// Ids to acknowledge in the next event instead.
    event_acks: Vec<String>,
}

impl State {
    /// Something the event stream reports changed.
    fn bump(&mut self) {
        self.version += 1;
    }

    /// What the event stream and the envelopes say now.
    fn event(&self) -> Value {
        let generation = self.desired.as_ref().map_or_else(
            || {
                self.default_envelope["desired_generation"]
                    .as_u64()
                    .unwrap_or(0)
            },
            |(_, g, _)| *g,
        );
        let blocked = self
            .blocked
            .unwrap_or_else(|| self.default_envelope["blocked"].as_bool().unwrap_or(false));
        json!({
            "cursor": self.version.to_string(),
            "desired_generation": generation,
            "has_signed_ops": !self.signed_ops.is_empty(),
            "blocked": blocked,
        })
    }
}

impl State {
    fn take_fault(&mut self, method: &str, path: &str) -> Option<FaultKind> {
        let i = self.faults.iter().position(|f| {
            f.times > 0
                && f.method.as_deref().is_none_or(|m| m == method)
                && path.starts_with(&f.path_prefix)
        })?;
        let fault = self.faults.get_mut(i)?;
        fault.times -= 1;
        let kind = fault.kind.clone();
        if fault.times == 0 {
            self.faults.remove(i);
        }
        Some(kind)
    }
}

struct Inner {
    state: Mutex<State>,
    accepted: Condvar,
    /// Notified whenever `State::version` moves.
    changed: Condvar,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Configures and starts a [`HubSim`].
#[derive(Debug, Clone)]
pub struct HubSimBuilder {
    key: String,
    cert: CertChoice,
    default_envelope: Value,
    port: u16,
    events: bool,
}

impl Default for HubSimBuilder {
    fn default() -> Self {
        HubSimBuilder {
            key: DEFAULT_HUB_KEY.to_string(),
            cert: CertChoice::CaSigned,
            default_envelope: default_envelope(),
            port: 0,
            events: true,
        }
    }
}

impl HubSimBuilder {
    /// An older hub: `GET /api/v1/events` answers 404.
    pub fn without_events(mut self) -> Self {
        self.events = false;
        self
    }

    /// The one bearer key accepted.
    pub fn key(mut self, key: &str) -> Self {
        self.key = key.to_string();
        self
    }

    /// The certificate presented (default [`CertChoice::CaSigned`], as a real hub has a
    /// CA-issued one; trust it with `vectors/tls/ca.crt`).
    pub fn cert(mut self, c: CertChoice) -> Self {
        self.cert = c;
        self
    }

    /// The envelope answered when none is scripted (default [`default_envelope`]).
    pub fn default_envelope(mut self, envelope: Value) -> Self {
        self.default_envelope = envelope;
        self
    }

    /// Listens on 127.0.0.1:`port` instead of an ephemeral port: a hub brought back
    /// where an agent already points (a closed port in between is a hub that is down).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Binds 127.0.0.1 on an ephemeral port and starts serving.
    ///
    /// # Panics
    /// If the socket cannot be bound or the committed certificates do not load (test
    /// code: nothing useful can happen without them).
    pub fn start(self) -> HubSim {
        #[allow(clippy::expect_used)]
        let tls = http::tls_config(self.cert.cert_pem(), key_pem(self.cert))
            .expect("the committed test certificates load");
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                key: self.key,
                envelopes: VecDeque::new(),
                default_envelope: self.default_envelope,
                faults: VecDeque::new(),
                requests: Vec::new(),
                reports: Vec::new(),
                signed_ops: Vec::new(),
                next_op: 1,
                desired: None,
                raw_ops: false,
                blocked: None,
                version: 0,
                events: self.events,
                stopping: false,
                results: Vec::new(),
                acks: Vec::new(),
                auto_ack: false,
                event_acks: Vec::new(),
            }),
            accepted: Condvar::new(),
            changed: Condvar::new(),
        });
        let handler_inner = Arc::clone(&inner);
        #[allow(clippy::expect_used)]
        let server = http::Server::start_on(self.port, tls, move |req: &Request| {
            handle(&handler_inner, req)
        })
        .expect("binding the hub simulator's 127.0.0.1 port succeeds");
        HubSim {
            inner,
            panics: server.panics(),
            server: Some(server),
            cert: self.cert,
        }
    }
}

fn key_pem(c: CertChoice) -> &'static [u8] {
    match c {
        CertChoice::SelfSigned => include_bytes!("../../vectors/tls/pve-self.key"),
        CertChoice::CaSigned => include_bytes!("../../vectors/tls/ca-leaf.key"),
        CertChoice::Other => include_bytes!("../../vectors/tls/other-self.key"),
    }
}

/// A running hub simulator. Dropping it (or [`HubSim::shutdown`]) stops the server, and
/// panics if any of its threads panicked and nobody took it ([`HubSim::take_panics`]).
pub struct HubSim {
    inner: Arc<Inner>,
    server: Option<http::Server>,
    cert: CertChoice,
    panics: Arc<http::Panics>,
}

impl std::fmt::Debug for HubSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSim")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

impl HubSim {
    /// A builder with the defaults: [`DEFAULT_HUB_KEY`], the CA-signed certificate, the
    /// default envelope.
    pub fn builder() -> HubSimBuilder {
        HubSimBuilder::default()
    }

    /// Starts a hub simulator with the defaults.
    pub fn start() -> HubSim {
        HubSimBuilder::default().start()
    }

    /// `https://127.0.0.1:PORT` (no path; the agent appends [`REPORT_PATH`]).
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port())
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.server.as_ref().map_or(0, |s| s.addr().port())
    }

    /// The bearer key it accepts.
    pub fn key(&self) -> String {
        self.inner.lock().key.clone()
    }

    /// The SHA-256 fingerprint of the served certificate, `AB:CD:…`.
    pub fn fingerprint(&self) -> String {
        self.cert.fingerprint()
    }

    /// Queues an envelope for the next accepted report (scripted envelopes are answered
    /// in order, then the default again). Any JSON is sent as is, so tests can script
    /// unknown fields or wrong types.
    pub fn script_envelope(&self, envelope: Value) {
        self.inner.lock().envelopes.push_back(envelope);
    }

    /// Queues a fault; the first matching requests get it (path prefix on the request
    /// path, e.g. `/api/v1/host-report`, or `""` for every request).
    pub fn inject(&self, fault: Fault) {
        self.inner.lock().faults.push_back(fault);
    }

    /// Queues a signed op for the agent and returns its id: `blob` travels as base64 of
    /// exactly these bytes, `signature` as the armored SSHSIG or `null`. Every envelope
    /// says `has_signed_ops: true` while any op is queued; one authenticated
    /// `GET` [`SIGNED_OPS_PATH`] hands over all queued ops and empties the queue (the hub
    /// delivers each op once; queue it again to deliver it again).
    pub fn queue_signed_op(&self, blob: &[u8], signature: Option<&str>) -> String {
        let mut st = self.inner.lock();
        let id = format!("op-{}", st.next_op);
        st.next_op += 1;
        st.signed_ops.push(json!({
            "id": id,
            "blob_b64": base64(blob),
            "signature": signature,
        }));
        st.bump();
        drop(st);
        self.inner.changed.notify_all();
        id
    }

    /// Queues a signed op carrying several signatures over `blob` (an emergency
    /// `rotate_signers`): the first as `signature`, the rest as `signatures`, as the
    /// protocol says; returns its id.
    pub fn queue_signed_op_cosigned(&self, blob: &[u8], signatures: &[&str]) -> String {
        let mut st = self.inner.lock();
        let id = format!("op-{}", st.next_op);
        st.next_op += 1;
        st.signed_ops.push(json!({
            "id": id,
            "blob_b64": base64(blob),
            "signature": signatures.first(),
            "signatures": signatures.get(1..).unwrap_or_default(),
        }));
        st.bump();
        drop(st);
        self.inner.changed.notify_all();
        id
    }

    /// Queues one raw entry of the `ops` array as is, so tests can send malformed ones.
    pub fn queue_signed_op_raw(&self, entry: Value) {
        self.change(|st| {
            st.signed_ops.push(entry);
            st.raw_ops = true;
        });
    }

    /// Applies `f` to the state as one change the event stream reports.
    fn change(&self, f: impl FnOnce(&mut State)) {
        let mut st = self.inner.lock();
        f(&mut st);
        st.bump();
        drop(st);
        self.inner.changed.notify_all();
    }

    /// Blocks (or unblocks) the host: every envelope and event says so from now on.
    pub fn set_blocked(&self, blocked: bool) {
        self.change(|st| st.blocked = Some(blocked));
    }

    /// Publishes a desired-state document: served from now on, and its `generation`
    /// announced as `desired_generation` in every envelope.
    /// The document must keep to `desired-state.schema.json` (the answer checks it).
    pub fn publish_desired_state(&self, document: &Value) {
        let generation = document["generation"].as_u64().unwrap_or(0);
        let bytes = document.to_string().into_bytes();
        self.change(|st| st.desired = Some((bytes, generation, false)));
    }

    /// Publishes `bytes` as they are (tests send invalid documents this way), served
    /// and announced as `generation`.
    pub fn publish_desired_bytes(&self, bytes: Vec<u8>, generation: u64) {
        self.change(|st| st.desired = Some((bytes, generation, true)));
    }

    /// Requests for the desired state so far.
    pub fn desired_state_fetches(&self) -> Vec<HubRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == DESIRED_STATE_PATH)
            .collect()
    }

    /// The latest `signed_op_results` entry heard for each op id, in the order the ids
    /// were first reported (an acknowledged result stays here: it is what the hub
    /// recorded).
    pub fn signed_op_results(&self) -> Vec<Value> {
        self.inner.lock().results.clone()
    }

    /// Acknowledges `ids` in the next envelope answered (once).
    pub fn ack_signed_op_results(&self, ids: &[&str]) {
        let mut st = self.inner.lock();
        st.acks.extend(ids.iter().map(|s| (*s).to_string()));
    }

    /// Acknowledges `ids` in the next answer of the event stream (which it wakes).
    pub fn ack_signed_op_results_by_event(&self, ids: &[&str]) {
        self.change(|st| st.event_acks.extend(ids.iter().map(|s| (*s).to_string())));
    }

    /// When `on`, each answer acknowledges every result id its report carried.
    pub fn auto_ack_signed_op_results(&self, on: bool) {
        self.inner.lock().auto_ack = on;
    }

    /// Signed ops queued and not yet fetched.
    pub fn pending_signed_ops(&self) -> usize {
        self.inner.lock().signed_ops.len()
    }

    /// Drops every queued fault.
    pub fn clear_faults(&self) {
        self.inner.lock().faults.clear();
    }

    /// Every request, in arrival order.
    pub fn requests(&self) -> Vec<HubRequest> {
        self.inner.lock().requests.clone()
    }

    /// The reports it accepted, in arrival order.
    pub fn reports(&self) -> Vec<Value> {
        self.inner.lock().reports.clone()
    }

    /// Waits until at least `n` reports have been accepted or `timeout` passes; returns
    /// the reports accepted so far either way.
    pub fn wait_for_reports(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let guard = self.inner.lock();
        let (guard, _) = self
            .inner
            .accepted
            .wait_timeout_while(guard, timeout, |st| st.reports.len() < n)
            .unwrap_or_else(PoisonError::into_inner);
        guard.reports.clone()
    }

    /// Panics caught in the simulator's threads so far, with the first messages.
    pub fn panics(&self) -> (usize, Vec<String>) {
        (self.panics.count(), self.panics.messages())
    }

    /// Returns and forgets the caught panics (for a test that provoked one on purpose).
    pub fn take_panics(&self) -> (usize, Vec<String>) {
        self.panics.take()
    }

    /// Stops the server and closes every connection.
    pub fn shutdown(mut self) {
        self.stop_server();
    }

    /// Releases held long polls, then stops the server (which joins their threads).
    fn stop_server(&mut self) {
        if let Some(s) = self.server.take() {
            self.inner.lock().stopping = true;
            self.inner.changed.notify_all();
            s.shutdown();
        }
    }
}

impl Drop for HubSim {
    fn drop(&mut self) {
        self.stop_server();
        // Threads are joined: every panic is counted. Never panic while unwinding.
        if let Some(what) = self.panics.summary()
            && !std::thread::panicking()
        {
            panic!("the hub simulator failed: {what}");
        }
    }
}

fn json_answer(status: u16, reason: &str, body: &Value) -> Response {
    Response::new(status, reason)
        .with_header("Content-Type", "application/json")
        .with_body(body.to_string())
}

/// How the hub dresses the answers an injected fault gives.
const HUB: Dress = Dress {
    base: Response::new,
    error: fault_error,
    json_type: "application/json",
    html_type: "text/html",
    garbage: "<html><body><h1>502 Bad Gateway</h1></body></html>\n",
    oversized_prefix: b"{\"poll_interval_seconds\":300,\"pad\":\"",
};

fn fault_error(code: u16, message: String) -> Response {
    let reason = message.lines().next().unwrap_or_default().to_string();
    json_answer(code, &reason, &json!({ "error": message }))
}

fn handle(inner: &Inner, req: &Request) -> Response {
    let mut st = inner.lock();
    let path = req.raw_path().to_string();
    let index = st.requests.len();
    st.requests.push(HubRequest {
        method: req.method.clone(),
        path: path.clone(),
        authorization: req.header("Authorization").map(str::to_string),
        if_none_match: req.header("If-None-Match").map(str::to_string),
        body: req.body.clone(),
        at: Instant::now(),
        status: 0,
    });
    // Faults act before authentication: trouble between the agent and the hub.
    let fault = st.take_fault(&req.method, &path);
    let response = match fault.map(|f| HUB.answer(f)) {
        None if path == EVENTS_PATH => {
            let (r, guard) = long_poll(inner, st, req);
            st = guard;
            r
        }
        None => process(&mut st, req, &path),
        Some(FaultAnswer::Process(delivery)) if path == EVENTS_PATH => {
            let (r, guard) = long_poll(inner, st, req);
            st = guard;
            r.with_delivery(delivery)
        }
        Some(FaultAnswer::Process(delivery)) => {
            process(&mut st, req, &path).with_delivery(delivery)
        }
        Some(FaultAnswer::Answer(r)) => r,
        Some(FaultAnswer::Panic) => {
            drop(st);
            panic!("injected fault: the hub simulator's handler panics");
        }
    };
    if let Some(rec) = st.requests.get_mut(index) {
        rec.status = recorded_status(&response);
    }
    if (200..300).contains(&response.status) && response.delivery != Delivery::DropConnection {
        inner.accepted.notify_all();
    }
    drop(st);
    // A fetch may have moved the state (an emptied queue): wake the long polls to look.
    inner.changed.notify_all();
    response
}

/// The answer for a request that may not go on: an unknown path (404), a wrong method
/// (405), a wrong key (401); `None` when it may.
fn refusal(st: &State, req: &Request, path: &str) -> Option<Response> {
    let allowed = match path {
        REPORT_PATH => "POST",
        SIGNED_OPS_PATH | DESIRED_STATE_PATH => "GET",
        EVENTS_PATH if st.events => "GET",
        _ => {
            return Some(json_answer(
                404,
                "Not Found",
                &json!({ "error": "no such endpoint" }),
            ));
        }
    };
    if req.method != allowed {
        return Some(
            json_answer(
                405,
                "Method Not Allowed",
                &json!({ "error": format!("use {allowed}") }),
            )
            .with_header("Allow", allowed),
        );
    }
    let expected = format!("Bearer {}", st.key);
    // The key is compared, never echoed.
    if req.header("Authorization") != Some(expected.as_str()) {
        return Some(
            json_answer(
                401,
                "Unauthorized",
                &json!({ "error": "invalid bearer key" }),
            )
            .with_header("WWW-Authenticate", "Bearer"),
        );
    }
    None
}

/// `GET /api/v1/events`: waits, the state unlocked, until it moves past `after` or
/// `wait_seconds` pass, then answers the state as it is.
fn long_poll<'a>(
    inner: &'a Inner,
    st: MutexGuard<'a, State>,
    req: &Request,
) -> (Response, MutexGuard<'a, State>) {
    if let Some(r) = refusal(&st, req, EVENTS_PATH) {
        return (r, st);
    }
    let mut after = None;
    let mut wait_seconds = 0;
    for pair in req.raw_query().unwrap_or("").split('&') {
        match pair.split_once('=') {
            Some(("after", v)) => after = Some(v.to_owned()),
            Some(("wait_seconds", v)) => match v.parse::<u64>() {
                Ok(n) => wait_seconds = n.min(MAX_EVENT_WAIT_SECONDS),
                Err(_) => {
                    let r = json_answer(
                        400,
                        "Bad Request",
                        &json!({ "error": "wait_seconds must be a whole number" }),
                    );
                    return (r, st);
                }
            },
            _ => {}
        }
    }
    let current = st.version.to_string();
    let st = match after {
        Some(cursor) if cursor == current => {
            let seen = st.version;
            inner
                .changed
                .wait_timeout_while(st, Duration::from_secs(wait_seconds), |s| {
                    s.version == seen && !s.stopping
                })
                .unwrap_or_else(PoisonError::into_inner)
                .0
        }
        _ => st,
    };
    let mut st = st;
    let mut event = st.event();
    if !st.event_acks.is_empty() {
        event["ack_signed_op_results"] = json!(std::mem::take(&mut st.event_acks));
    }
    own_answer(schema::EVENT, &event);
    (json_answer(200, "OK", &event), st)
}

fn process(st: &mut State, req: &Request, path: &str) -> Response {
    if let Some(r) = refusal(st, req, path) {
        return r;
    }
    if path == SIGNED_OPS_PATH {
        let ops = std::mem::take(&mut st.signed_ops);
        if !ops.is_empty() {
            st.bump();
        }
        let answer = json!({ "ops": ops });
        if !std::mem::take(&mut st.raw_ops) {
            own_answer(schema::SIGNED_OPS, &answer);
        }
        return json_answer(200, "OK", &answer);
    }
    if path == DESIRED_STATE_PATH {
        return match &st.desired {
            None => json_answer(
                404,
                "Not Found",
                &json!({ "error": "no desired state published for this host" }),
            ),
            Some((bytes, generation, raw)) => {
                if !raw {
                    own_answer(
                        schema::DESIRED_STATE,
                        &serde_json::from_slice(bytes).unwrap_or(Value::Null),
                    );
                }
                let etag = format!("\"{generation}\"");
                if req.header("If-None-Match") == Some(etag.as_str()) {
                    Response::new(304, "Not Modified").with_header("ETag", &etag)
                } else {
                    Response::new(200, "OK")
                        .with_header("Content-Type", "application/json")
                        .with_header("ETag", &etag)
                        .with_body(bytes.clone())
                }
            }
        };
    }
    let report: Value = match serde_json::from_slice(&req.body) {
        Ok(v) => v,
        Err(e) => {
            return json_answer(
                400,
                "Bad Request",
                &json!({ "error": format!("report is not JSON: {e}") }),
            );
        }
    };
    let mut problems = validate_report(&report);
    problems.extend(schema::validate(schema::HOST_REPORT, &report));
    if !problems.is_empty() {
        return json_answer(
            400,
            "Bad Request",
            &json!({ "error": "report does not match the contract", "problems": problems }),
        );
    }
    let reported: Vec<Value> = report["signed_op_results"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for r in &reported {
        match st.results.iter_mut().find(|k| k["id"] == r["id"]) {
            Some(kept) => *kept = r.clone(),
            None => st.results.push(r.clone()),
        }
    }
    let mut acks = std::mem::take(&mut st.acks);
    if st.auto_ack {
        acks.extend(
            reported
                .iter()
                .filter_map(|r| r["id"].as_str().map(str::to_string)),
        );
    }
    st.reports.push(report);
    // A scripted envelope is sent as the test wrote it, off the schema too: that is
    // how tests feed the agent a wrong answer. Everything else must keep to it.
    let scripted = st.envelopes.pop_front();
    let deliberate = scripted.is_some();
    let mut envelope = scripted.unwrap_or_else(|| st.default_envelope.clone());
    if !st.signed_ops.is_empty()
        && let Some(obj) = envelope.as_object_mut()
    {
        obj.insert("has_signed_ops".into(), Value::Bool(true));
    }
    if let Some((_, generation, _)) = &st.desired
        && let Some(obj) = envelope.as_object_mut()
    {
        obj.insert("desired_generation".into(), json!(generation));
    }
    if let Some(blocked) = st.blocked
        && let Some(obj) = envelope.as_object_mut()
    {
        obj.insert("blocked".into(), json!(blocked));
    }
    if !acks.is_empty()
        && let Some(obj) = envelope.as_object_mut()
    {
        obj.insert("ack_signed_op_results".into(), json!(acks));
    }
    if !deliberate {
        own_answer(schema::ENVELOPE, &envelope);
    }
    json_answer(200, "OK", &envelope)
}

/// Checks an answer the simulator composed itself against its schema. One that fails
/// is a bug in the simulator (or a test that fed it off-schema data through a method
/// not meant for that): it panics rather than answer, and the panic fails the test.
fn own_answer(schema_name: &str, answer: &Value) {
    let problems = schema::validate(schema_name, answer);
    assert!(
        problems.is_empty(),
        "the hub simulator would answer off {schema_name}: {problems:?}"
    );
}

/// Standard base64 with padding (RFC 4648 §4), as the hub sends signed blobs.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases: [(&[u8], &str); 7] = [
            (b"", ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
        ];
        for (input, want) in cases {
            assert_eq!(base64(input), want);
        }
    }
}
