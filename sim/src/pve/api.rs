//! The routes: from a parsed HTTP request to a PVE answer, with PVE's checks in PVE's
//! order (auth, handler lookup, node, parameters, permissions, sync errors, then fork).
//!
//! Owns request recording, fault application and the endpoint table. It must never block
//! while holding the state lock: delays are handed to the HTTP core as a delivery.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::RecordedRequest;
use super::model::{
    Backup, Effect, Failure, Guest, HOST_CPUS, HOST_ROOTFS, PVE_REPOID, PVE_VERSION, State,
    TaskSpec, config_key_kind, config_key_priv,
};
use super::params::{ApiError, Kind, Params, parse_json_body, parse_urlencoded, percent_decode};
use super::perms;
use crate::clock;
use crate::fault::{Dress, FaultAnswer, recorded_status};
use crate::http::{Delivery, Request, Response};

pub(super) const VMID: (&str, Kind) = ("vmid", Kind::Int(Some(100), Some(999_999_999)));
const NODE: (&str, Kind) = ("node", Kind::Str);
const GIB: u64 = 1 << 30;

/// A successful answer: `data`, and `total` when non-zero.
pub(super) struct Answer {
    data: Value,
    total: Option<usize>,
}

impl Answer {
    pub(super) fn data(data: Value) -> Answer {
        Answer { data, total: None }
    }
}

pub(super) type ApiResult = Result<Answer, ApiError>;

/// What the routes need from a request, decoded once.
struct Incoming<'a> {
    req: &'a Request,
    /// Decoded segments after `/api2/json` (or of the whole path outside it).
    segments: Vec<String>,
    in_api: bool,
    path: String,
    query: Vec<(String, String)>,
    form: Vec<(String, String)>,
    is_json: bool,
    body_error: Option<ApiError>,
}

impl<'a> Incoming<'a> {
    fn parse(req: &'a Request) -> Incoming<'a> {
        let raw_path = req.raw_path();
        let api_rel = raw_path
            .strip_prefix("/api2/json")
            .filter(|r| r.is_empty() || r.starts_with('/'));
        // Split before decoding, so an encoded `/` inside a segment stays in it.
        let segments: Vec<String> = api_rel
            .unwrap_or(raw_path)
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| percent_decode(s, false))
            .collect();
        let path = format!("/{}", segments.join("/"));
        let is_json = req
            .header("Content-Type")
            .is_some_and(|c| c.trim_start().starts_with("application/json"));
        let (form, body_error) = if req.body.is_empty() {
            (Vec::new(), None)
        } else if is_json {
            match parse_json_body(&req.body) {
                Ok(pairs) => (pairs, None),
                Err(e) => (Vec::new(), Some(e)),
            }
        } else {
            (parse_urlencoded(&String::from_utf8_lossy(&req.body)), None)
        };
        Incoming {
            req,
            segments,
            in_api: api_rel.is_some(),
            path,
            query: parse_urlencoded(req.raw_query().unwrap_or_default()),
            form,
            is_json,
            body_error,
        }
    }
}

/// Answers one request: records it, applies a queued fault, else routes it.
pub(crate) fn handle(state: &Mutex<State>, req: &Request) -> Response {
    let at = Instant::now();
    let inc = Incoming::parse(req);
    let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
    st.advance();
    let index = st.requests.len();
    st.requests.push(RecordedRequest {
        method: req.method.clone(),
        path: inc.path.clone(),
        raw_path: req.raw_path().to_string(),
        query: inc.query.clone(),
        form: inc.form.clone(),
        authorization: req.header("Authorization").map(str::to_string),
        at,
        status: 0,
    });
    // Faults act before authentication: they stand for trouble on the way to pveproxy.
    let fault = st.take_fault(&req.method, &inc.path);
    let response = match fault.map(|f| PVEPROXY.answer(f)) {
        None => process(&mut st, &inc),
        Some(FaultAnswer::Process(delivery)) => process(&mut st, &inc).with_delivery(delivery),
        Some(FaultAnswer::Answer(r)) => r,
        Some(FaultAnswer::Panic) => {
            drop(st);
            panic!("injected fault: the simulator's handler panics");
        }
    };
    if let Some(rec) = st.requests.get_mut(index) {
        rec.status = recorded_status(&response);
    }
    response
}

/// How pveproxy dresses the answers an injected fault gives.
const PVEPROXY: Dress = Dress {
    base,
    error: fault_error,
    json_type: "application/json;charset=UTF-8",
    html_type: "text/html;charset=UTF-8",
    garbage: "<html><body><h1>502 Bad Gateway</h1>upstream went away</body></html>\n",
    oversized_prefix: b"{\"data\":\"",
};

fn fault_error(code: u16, message: String) -> Response {
    error_response(&ApiError::status(code, message))
}

/// Headers every pveproxy answer carries.
fn base(status: u16, reason: &str) -> Response {
    let date = clock::http_date(clock::epoch_now());
    Response::new(status, reason)
        .with_header("Cache-Control", "max-age=0")
        .with_header("Date", &date)
        .with_header("Pragma", "no-cache")
        .with_header("Server", "pve-api-daemon/3.0")
        .with_header("Expires", &date)
}

fn json_response(status: u16, reason: &str, body: &Value) -> Response {
    base(status, reason)
        .with_header("Content-Type", "application/json;charset=UTF-8")
        .with_body(body.to_string())
}

fn error_response(e: &ApiError) -> Response {
    json_response(e.code, e.reason(), &e.body())
}

fn process(st: &mut State, inc: &Incoming<'_>) -> Response {
    if !authenticated(st, inc.req.header("Authorization")) {
        let mut r = base(401, "Authentication failed!");
        if !st.auth_delay.is_zero() {
            r.delivery = Delivery::Delay(st.auth_delay);
        }
        return r;
    }
    let result = (|| {
        if !inc.req.body.is_empty() && !matches!(inc.req.method.as_str(), "POST" | "PUT") {
            return Err(ApiError::status(
                501,
                format!("Unexpected content for method '{}'", inc.req.method),
            ));
        }
        if !inc.in_api {
            return Err(ApiError::not_implemented(&inc.req.method, &inc.path));
        }
        if let Some(e) = &inc.body_error {
            return Err(e.clone());
        }
        let mut params = Params::new(
            inc.query.iter().chain(&inc.form).cloned().collect(),
            inc.is_json,
        );
        let segs: Vec<&str> = inc.segments.iter().map(String::as_str).collect();
        route(st, &inc.req.method, &segs, &inc.path, &mut params)
    })();
    match result {
        Ok(answer) => {
            let mut body = json!({ "data": answer.data });
            if let (Some(total), Some(obj)) =
                (answer.total.filter(|t| *t > 0), body.as_object_mut())
            {
                obj.insert("total".into(), Value::from(total));
            }
            json_response(200, "OK", &body)
        }
        Err(e) => error_response(&e),
    }
}

/// `PVEAPIToken=USER@REALM!NAME=SECRET` (or `PVEAPIToken USER…`), as pve-http-server
/// extracts it: the value runs to a `;`, is URI-unescaped, and splits at the last `=`.
fn authenticated(st: &State, header: Option<&str>) -> bool {
    let Some(h) = header else {
        return false;
    };
    let start = h.match_indices("PVEAPIToken").find_map(|(i, m)| {
        let before_ok = i == 0 || h[..i].ends_with(char::is_whitespace);
        let after = &h[i + m.len()..];
        let after_ok = after.starts_with('=') || after.starts_with(' ');
        (before_ok && after_ok).then(|| &after[1..])
    });
    let Some(value) = start else {
        return false;
    };
    let value = percent_decode(value.split(';').next().unwrap_or_default(), false);
    match value.rsplit_once('=') {
        Some((id, secret)) => id == st.token_id && secret == st.secret,
        None => false,
    }
}

/// Every endpoint the simulator serves, with the path pieces it needs.
enum Ep<'a> {
    Version,
    AccessPermissions,
    Nodes,
    StorageIndex,
    NodeStatus,
    LxcList,
    LxcCreate,
    LxcIndex(&'a str),
    LxcDestroy(&'a str),
    ConfigGet(&'a str),
    ConfigPut(&'a str),
    StatusIndex(&'a str),
    StatusCurrent(&'a str),
    Power(&'a str, &'a str),
    SnapList(&'a str),
    SnapCreate(&'a str),
    SnapIndex(&'a str, &'a str),
    SnapRollback(&'a str, &'a str),
    SnapDelete(&'a str, &'a str),
    Vzdump,
    NodeStorage,
    StorageContent(&'a str),
    /// The volume may come with raw `/` (more segments) or `%2F`, as Proxmox takes it.
    ContentDelete(&'a str, String),
    Resize(&'a str),
    StorageStatus(&'a str),
    Tasks,
    TaskStatus(&'a str),
    TaskLog(&'a str),
    TaskStop(&'a str),
}

fn route(st: &mut State, method: &str, segs: &[&str], path: &str, p: &mut Params) -> ApiResult {
    use Ep::*;
    let (node, ep) = match (method, segs) {
        ("GET", ["version"]) => (None, Version),
        ("GET", ["nodes"]) => (None, Nodes),
        ("GET", ["storage"]) => (None, StorageIndex),
        ("GET", ["access", "permissions"]) => (None, AccessPermissions),
        (m, ["nodes", node, rest @ ..]) => {
            let ep = match (m, rest) {
                ("GET", ["status"]) => NodeStatus,
                ("GET", ["lxc"]) => LxcList,
                ("POST", ["lxc"]) => LxcCreate,
                ("GET", ["lxc", v]) => LxcIndex(v),
                ("DELETE", ["lxc", v]) => LxcDestroy(v),
                ("GET", ["lxc", v, "config"]) => ConfigGet(v),
                ("PUT", ["lxc", v, "config"]) => ConfigPut(v),
                ("GET", ["lxc", v, "status"]) => StatusIndex(v),
                ("GET", ["lxc", v, "status", "current"]) => StatusCurrent(v),
                (
                    "POST",
                    [
                        "lxc",
                        v,
                        "status",
                        a @ ("start" | "stop" | "shutdown" | "reboot"),
                    ],
                ) => Power(v, a),
                ("GET", ["lxc", v, "snapshot"]) => SnapList(v),
                ("POST", ["lxc", v, "snapshot"]) => SnapCreate(v),
                ("GET", ["lxc", v, "snapshot", s]) => SnapIndex(v, s),
                ("POST", ["lxc", v, "snapshot", s, "rollback"]) => SnapRollback(v, s),
                ("DELETE", ["lxc", v, "snapshot", s]) => SnapDelete(v, s),
                ("POST", ["vzdump"]) => Vzdump,
                ("GET", ["storage"]) => NodeStorage,
                ("GET", ["storage", s, "content"]) => StorageContent(s),
                ("DELETE", ["storage", s, "content", vol @ ..]) if !vol.is_empty() => {
                    ContentDelete(s, vol.join("/"))
                }
                ("PUT", ["lxc", v, "resize"]) => Resize(v),
                ("GET", ["storage", s, "status"]) => StorageStatus(s),
                ("GET", ["tasks"]) => Tasks,
                ("GET", ["tasks", u, "status"]) => TaskStatus(u),
                ("GET", ["tasks", u, "log"]) => TaskLog(u),
                ("DELETE", ["tasks", u]) => TaskStop(u),
                _ => return Err(ApiError::not_implemented(method, path)),
            };
            (Some(*node), ep)
        }
        _ => return Err(ApiError::not_implemented(method, path)),
    };
    if let Some(node) = node {
        // pveproxy proxies `{node}` calls to that node; an unknown one fails the lookup.
        if node != st.node {
            return Err(ApiError::die(format!(
                "hostname lookup '{node}' failed - failed to get address info for: {node}: Name or service not known"
            )));
        }
        p.push("node", node);
    }
    match ep {
        Version => version(p),
        Nodes => nodes(st, p),
        StorageIndex => storage_index(st, p),
        AccessPermissions => super::access::permissions(st, p).map(Answer::data),
        NodeStatus => node_status(st, p),
        LxcList => lxc_list(st, p),
        LxcCreate => super::create::lxc_create(st, p),
        LxcIndex(v) => {
            let vmid = vmid_param(p, v, &[])?;
            guest(st, vmid)?;
            Ok(Answer::data(json!([
                {"subdir": "config"}, {"subdir": "status"}, {"subdir": "snapshot"},
                {"subdir": "rrd"}, {"subdir": "rrddata"}, {"subdir": "firewall"}
            ])))
        }
        LxcDestroy(v) => lxc_destroy(st, p, v),
        ConfigGet(v) => config_get(st, p, v),
        ConfigPut(v) => config_put(st, p, v),
        StatusIndex(v) => {
            vmid_param(p, v, &[])?;
            Ok(Answer::data(json!([
                {"subdir": "current"}, {"subdir": "start"}, {"subdir": "stop"},
                {"subdir": "shutdown"}, {"subdir": "reboot"}
            ])))
        }
        StatusCurrent(v) => status_current(st, p, v),
        Power(v, action) => power(st, p, v, action),
        SnapList(v) => snapshot_list(st, p, v),
        SnapCreate(v) => snapshot_create(st, p, v),
        SnapIndex(v, s) => {
            p.push("snapname", s);
            vmid_param(p, v, &[("snapname", Kind::Str)])?;
            Ok(Answer::data(
                json!([{"cmd": "rollback"}, {"cmd": "config"}]),
            ))
        }
        SnapRollback(v, s) => snapshot_rollback(st, p, v, s),
        SnapDelete(v, s) => snapshot_delete(st, p, v, s),
        Vzdump => vzdump(st, p),
        NodeStorage => node_storage(st, p),
        StorageContent(s) => storage_content(st, p, s),
        ContentDelete(s, vol) => super::disk::content_delete(st, p, s, &vol),
        Resize(v) => super::disk::resize(st, p, v),
        StorageStatus(s) => storage_status(st, p, s),
        Tasks => task_list(st, p),
        TaskStatus(u) => task_status(st, p, u),
        TaskLog(u) => task_log(st, p, u),
        TaskStop(u) => task_stop(st, p, u),
    }
}

/// Validates the path's vmid together with the other parameters (`extra`, plus `node`).
pub(super) fn vmid_param(p: &mut Params, v: &str, extra: &[(&str, Kind)]) -> Result<u32, ApiError> {
    p.push("vmid", v);
    check(p, extra, &[])?;
    let vmid = p.int("vmid").and_then(|n| u32::try_from(n).ok());
    vmid.ok_or_else(|| {
        ApiError::param("vmid", format!("type check ('integer') failed - got '{v}'"))
    })
}

/// Validates against `allowed` plus the standard `node` and `vmid`.
pub(super) fn check(
    p: &Params,
    allowed: &[(&str, Kind)],
    required: &[&str],
) -> Result<(), ApiError> {
    p.check(
        |k| {
            [NODE, VMID]
                .iter()
                .chain(allowed)
                .find(|(name, _)| *name == k)
                .map(|(_, kind)| *kind)
        },
        required,
    )
}

pub(super) fn guest(st: &State, vmid: u32) -> Result<&Guest, ApiError> {
    st.guests.get(&vmid).ok_or_else(|| missing_conf(st, vmid))
}

/// The guest a synchronous config change (`PUT config`, `PUT resize`) edits, checked
/// as the real handlers do before they touch it: not locked, and still at the `digest`
/// the caller read (when it sent one).
pub(super) fn unlocked_at_digest<'a>(
    st: &'a State,
    vmid: u32,
    p: &Params,
) -> Result<&'a Guest, ApiError> {
    let g = guest(st, vmid)?;
    if let Some(lock) = g.lock() {
        return Err(ApiError::die(format!("CT is locked ({lock})")));
    }
    if let Some(digest) = p.get("digest").filter(|d| !d.is_empty())
        && digest != g.digest()
    {
        return Err(ApiError::die(
            "detected modified configuration - file changed by other user? Try again.",
        ));
    }
    Ok(g)
}

fn missing_conf(st: &State, vmid: u32) -> ApiError {
    ApiError::die(format!(
        "Configuration file 'nodes/{}/lxc/{vmid}.conf' does not exist",
        st.node
    ))
}

pub(super) fn vms(vmid: u32) -> String {
    format!("/vms/{vmid}")
}

pub(super) fn upid(data: String) -> ApiResult {
    Ok(Answer::data(Value::String(data)))
}

fn version(p: &Params) -> ApiResult {
    check(p, &[], &[])?;
    let release = PVE_VERSION.rsplit_once('.').map_or(PVE_VERSION, |(r, _)| r);
    Ok(Answer::data(
        json!({"version": PVE_VERSION, "release": release, "repoid": PVE_REPOID}),
    ))
}

fn nodes(st: &State, p: &Params) -> ApiResult {
    check(p, &[], &[])?;
    let mem = st.host_memory();
    Ok(Answer::data(json!([{
        "node": st.node,
        "status": "online",
        "type": "node",
        "id": format!("node/{}", st.node),
        "cpu": 0.0312,
        "maxcpu": HOST_CPUS,
        "mem": mem.used,
        "maxmem": mem.total,
        "disk": 11 * GIB,
        "maxdisk": HOST_ROOTFS,
        "uptime": st.uptime(),
        "level": "",
        "ssl_fingerprint": st.fingerprint,
    }])))
}

fn node_status(st: &State, p: &Params) -> ApiResult {
    check(p, &[], &[])?;
    st.check_sync(&format!("/nodes/{}", st.node), perms::SYS_AUDIT)?;
    let mem = st.host_memory();
    let rootfs_used = 11 * GIB;
    Ok(Answer::data(json!({
        "uptime": st.uptime(),
        "idle": 0,
        "loadavg": ["0.12", "0.10", "0.05"],
        "kversion": "Linux 6.14.8-2-pve #1 SMP PREEMPT_DYNAMIC PMX 6.14.8-2 (2025-07-22T10:04Z)",
        "current-kernel": {
            "sysname": "Linux",
            "release": "6.14.8-2-pve",
            "version": "#1 SMP PREEMPT_DYNAMIC PMX 6.14.8-2 (2025-07-22T10:04Z)",
            "machine": "x86_64"
        },
        "boot-info": {"mode": "efi", "secureboot": 0},
        "cpuinfo": {
            "model": "Intel(R) Xeon(R) E-2236 CPU @ 3.40GHz",
            "cpus": HOST_CPUS,
            "sockets": 1,
            "cores": HOST_CPUS / 2,
            "mhz": "3400.000",
            "hvm": "1",
            "user_hz": 100,
            "flags": "fpu vme de pse tsc msr pae mce cx8 apic sep"
        },
        "cpu": 0.0312,
        "wait": 0.0004,
        "memory": {
            "total": mem.total,
            "used": mem.used,
            "free": mem.free,
            "available": mem.available
        },
        "ksm": {"shared": 0},
        "swap": {
            "total": mem.swap_total,
            "used": mem.swap_used,
            "free": mem.swap_total - mem.swap_used
        },
        "pveversion": format!("pve-manager/{PVE_VERSION}/{PVE_REPOID}"),
        "rootfs": {
            "total": HOST_ROOTFS,
            "used": rootfs_used,
            "free": HOST_ROOTFS - rootfs_used,
            "avail": HOST_ROOTFS - rootfs_used - 5 * GIB
        }
    })))
}

fn lxc_list(st: &State, p: &Params) -> ApiResult {
    check(p, &[], &[])?;
    let rows: Vec<Value> = st
        .guests
        .values()
        .filter(|g| st.allowed(&vms(g.vmid), perms::VM_AUDIT))
        .map(|g| Value::Object(g.status_json(st.clock.now())))
        .collect();
    Ok(Answer::data(Value::Array(rows)))
}

fn status_current(st: &State, p: &mut Params, v: &str) -> ApiResult {
    let vmid = vmid_param(p, v, &[])?;
    st.check_sync(&vms(vmid), perms::VM_AUDIT)?;
    let mut row = guest(st, vmid)?.status_json(st.clock.now());
    row.insert("ha".into(), json!({"managed": 0}));
    Ok(Answer::data(Value::Object(row)))
}

fn config_get(st: &State, p: &mut Params, v: &str) -> ApiResult {
    let vmid = vmid_param(
        p,
        v,
        &[("current", Kind::Bool), ("snapshot", Kind::StrMax(40))],
    )?;
    st.check_sync(&vms(vmid), perms::VM_AUDIT)?;
    let g = guest(st, vmid)?;
    let Some(snapname) = p.get("snapshot") else {
        return Ok(Answer::data(Value::Object(g.config_json())));
    };
    let snap = g
        .snapshots
        .get(snapname)
        .ok_or_else(|| ApiError::die(format!("snapshot '{snapname}' does not exist")))?;
    let mut view = g.clone();
    view.conf = snap.conf.clone();
    view.description = snap.description.clone();
    view.snapshots.clear();
    let mut map = view.config_json();
    map.insert("snaptime".into(), Value::from(snap.snaptime));
    map.insert("digest".into(), Value::String(g.digest()));
    Ok(Answer::data(Value::Object(map)))
}

fn config_put(st: &mut State, p: &mut Params, v: &str) -> ApiResult {
    p.push("vmid", v);
    p.check(
        |k| match k {
            "node" => Some(Kind::Str),
            "vmid" => Some(VMID.1),
            "delete" | "revert" => Some(Kind::Str),
            "digest" => Some(Kind::StrMax(64)),
            // Not settable through the API: written by snapshots only.
            "parent" | "snaptime" => None,
            k => config_key_kind(k),
        },
        &[],
    )?;
    let vmid = p
        .int("vmid")
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0);
    st.check_sync(&vms(vmid), perms::VM_CONFIG_ANY)?;

    let delete: Vec<String> = p
        .get("delete")
        .unwrap_or_default()
        .split([',', ';', ' '])
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .collect();
    let set: Vec<(String, String)> = p
        .keys()
        .into_iter()
        .filter(|k| !matches!(*k, "node" | "vmid" | "delete" | "revert" | "digest"))
        .map(|k| (k.to_string(), p.get(k).unwrap_or_default().to_string()))
        .collect();
    if set.is_empty() && delete.is_empty() && p.get("revert").is_none() {
        return Err(ApiError::die("no options specified"));
    }
    for k in &delete {
        if config_key_kind(k).is_none() {
            return Err(ApiError::param("delete", format!("unknown option '{k}'")));
        }
        if set.iter().any(|(s, _)| s == k) {
            return Err(ApiError::param(
                "delete",
                format!("you can't use '-{k}' and -delete {k}' at the same time"),
            ));
        }
    }
    for k in set.iter().map(|(k, _)| k).chain(&delete) {
        st.check_sync(&vms(vmid), &[config_key_priv(k)])?;
        // … and for a net* key, check_bridge_access on its old value and its new one.
        if !k.starts_with("net") {
            continue;
        }
        let old = st.guests.get(&vmid).and_then(|g| g.conf.get(k));
        let new = set.iter().find(|(s, _)| s == k).map(|(_, v)| v);
        for net in old.into_iter().chain(new) {
            for path in perms::vnet_paths(net) {
                st.check_sync(&path, perms::SDN_USE)?;
            }
        }
    }
    unlocked_at_digest(st, vmid, p)?;
    if let Some(k) = delete
        .iter()
        .find(|k| matches!(k.as_str(), "memory" | "rootfs" | "ostype"))
    {
        return Err(ApiError::die(format!(
            "unable to delete required option '{k}'"
        )));
    }
    if st.sync_config_put {
        if let Some(g) = st.guests.get_mut(&vmid) {
            g.apply_config(&set, &delete);
        }
        return Ok(Answer::data(Value::Null));
    }
    let failure = set
        .iter()
        .map(|(k, _)| k)
        .chain(&delete)
        .find_map(|k| st.check_in_task(&vms(vmid), &[config_key_priv(k)]));
    let effect = Effect::Config { vmid, set, delete };
    let mut spec = TaskSpec::new("vzconfig", vmid.to_string(), effect);
    spec.failure = failure;
    upid(st.spawn(spec))
}

fn power(st: &mut State, p: &mut Params, v: &str, action: &str) -> ApiResult {
    let extra: &[(&str, Kind)] = match action {
        "start" => &[("skiplock", Kind::Bool), ("debug", Kind::Bool)],
        "stop" => &[("skiplock", Kind::Bool), ("overrule-shutdown", Kind::Bool)],
        "shutdown" => &[
            ("timeout", Kind::Int(Some(0), None)),
            ("forceStop", Kind::Bool),
        ],
        _ => &[("timeout", Kind::Int(Some(0), None))],
    };
    let vmid = vmid_param(p, v, extra)?;
    st.check_sync(&vms(vmid), perms::VM_POWER)?;
    let g = guest(st, vmid)?;
    let mut shutdown = None;
    let (kind, effect) = match action {
        "start" => {
            if g.running {
                return Err(ApiError::die(format!("CT {vmid} already running")));
            }
            ("vzstart", Effect::Start(vmid))
        }
        other => {
            if !g.running {
                return Err(ApiError::die(format!("CT {vmid} not running")));
            }
            match other {
                "stop" => ("vzstop", Effect::Stop(vmid)),
                "shutdown" => {
                    let timeout = p.int("timeout").and_then(|t| u64::try_from(t).ok());
                    let clean = (!g.ignores_shutdown).then_some(st.task_duration);
                    shutdown = Some(shutdown_worker(
                        vmid,
                        clean,
                        timeout.unwrap_or(60),
                        p.flag("forceStop"),
                    ));
                    ("vzshutdown", Effect::Stop(vmid))
                }
                _ => ("vzreboot", Effect::Reboot(vmid)),
            }
        }
    };
    let lock_failure = g
        .lock()
        .filter(|_| !p.flag("skiplock"))
        .map(|l| Failure::new(format!("CT is locked ({l})")));
    let mut spec = TaskSpec::new(kind, vmid.to_string(), effect);
    spec.failure = st
        .check_in_task(&vms(vmid), perms::VM_POWER)
        .or(lock_failure);
    if let Some(worker) = shutdown
        && spec.failure.is_none()
    {
        spec.duration = Some(worker.runs);
        spec.log = worker.log;
        spec.failure = worker.failure;
    }
    upid(st.spawn(spec))
}

/// How long a task the simulator never ends runs: a shutdown that waits on a guest
/// which will not stop by itself.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 86_400);

/// How a `vzshutdown` worker goes.
#[derive(Debug, Clone)]
struct ShutdownWorker {
    /// When the task ends.
    runs: Duration,
    /// What it prints on the way.
    log: Vec<String>,
    /// Set when it ends in an error (the guest keeps running).
    failure: Option<Failure>,
}

/// pve-container's `vm_shutdown` → `PVE::LXC::vm_stop($vmid, 0, $timeout, $forceStop)`:
/// `lxc-stop -n VMID --timeout T` (plus `--nokill` without forceStop), then it reads the
/// container's command socket until the container is gone. `clean` is how long the
/// guest takes to shut down cleanly, `None` when it ignores the request.
///
/// - It stops within T: OK then.
/// - forceStop: lxc-stop kills it at T, silently; the task ends OK.
/// - No forceStop: lxc-stop gives up at T and its failure is printed; the worker then
///   polls the socket for another T + 5 s. If the guest goes in that time the task still
///   ends OK, else it dies with `container did not stop` and the guest keeps running.
/// - T = 0: lxc-stop neither waits nor kills; the worker waits for the guest however
///   long that takes (for ever if it ignores the request).
fn shutdown_worker(
    vmid: u32,
    clean: Option<Duration>,
    timeout: u64,
    force: bool,
) -> ShutdownWorker {
    let limit = Duration::from_secs(timeout);
    let ok = |runs: Duration, log: Vec<String>| ShutdownWorker {
        runs,
        log,
        failure: None,
    };
    if timeout == 0 {
        return ok(clean.unwrap_or(FOREVER), Vec::new());
    }
    match clean {
        Some(d) if d <= limit => return ok(d, Vec::new()),
        _ if force => return ok(limit, Vec::new()),
        _ => {}
    }
    let gave_up = vec![format!(
        "command 'lxc-stop -n {vmid} --nokill --timeout {timeout}' failed: exit code 1"
    )];
    let poll_end = limit + limit + Duration::from_secs(5);
    match clean {
        Some(d) if d <= poll_end => ok(d, gave_up),
        _ => ShutdownWorker {
            runs: poll_end,
            log: Vec::new(),
            failure: Some(Failure {
                exitstatus: "container did not stop".into(),
                log: gave_up,
            }),
        },
    }
}

fn lxc_destroy(st: &mut State, p: &mut Params, v: &str) -> ApiResult {
    let vmid = vmid_param(
        p,
        v,
        &[
            ("force", Kind::Bool),
            ("purge", Kind::Bool),
            ("destroy-unreferenced-disks", Kind::Bool),
        ],
    )?;
    st.check_sync(&vms(vmid), perms::VM_ALLOCATE)?;
    let g = guest(st, vmid)?;
    if g.protected() {
        return Err(ApiError::die(format!(
            "can't remove CT {vmid} - protection mode enabled"
        )));
    }
    if let Some(lock) = g.lock() {
        return Err(ApiError::die(format!("CT is locked ({lock})")));
    }
    if g.running && !p.flag("force") {
        return Err(ApiError::die(format!(
            "unable to destroy CT {vmid} - container is running"
        )));
    }
    let mut log = Vec::new();
    if g.running {
        log.push(format!("stopping CT {vmid}"));
    }
    log.push(format!(
        "  Logical volume \"vm-{vmid}-disk-0\" successfully removed."
    ));
    if p.flag("purge") {
        log.push(format!("purging CT {vmid} from related configurations.."));
    }
    let mut spec = TaskSpec::new("vzdestroy", vmid.to_string(), Effect::Destroy(vmid));
    spec.lock = vec![(vmid, "destroyed")];
    spec.log = log;
    spec.failure = st.check_in_task(&vms(vmid), perms::VM_ALLOCATE);
    upid(st.spawn(spec))
}

fn snapshot_list(st: &State, p: &mut Params, v: &str) -> ApiResult {
    let vmid = vmid_param(p, v, &[])?;
    st.check_sync(&vms(vmid), perms::VM_AUDIT)?;
    let g = guest(st, vmid)?;
    let mut rows: Vec<Value> = g
        .snapshots
        .iter()
        .map(|(name, s)| {
            let mut row = json!({
                "name": name,
                "description": s.description.iter().map(|l| format!("{l}\n")).collect::<String>(),
                "snaptime": s.snaptime,
            });
            if let (Some(parent), Some(obj)) = (s.conf.get("parent"), row.as_object_mut()) {
                obj.insert("parent".into(), Value::String(parent.clone()));
            }
            row
        })
        .collect();
    let mut current = json!({
        "name": "current",
        "description": "You are here!",
        "digest": g.digest(),
        "running": u8::from(g.running),
    });
    if let (Some(parent), Some(obj)) = (g.conf.get("parent"), current.as_object_mut()) {
        obj.insert("parent".into(), Value::String(parent.clone()));
    }
    rows.push(current);
    Ok(Answer::data(Value::Array(rows)))
}

/// pve-configid: a letter, then letters, digits, `-` and `_`; at most 40 characters.
fn valid_snapname(name: &str) -> Result<(), ApiError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.len() >= 2
        && name.len() <= 40;
    if ok {
        Ok(())
    } else {
        Err(ApiError::param(
            "snapname",
            format!("invalid format - invalid configuration ID '{name}'\n"),
        ))
    }
}

fn snapshot_create(st: &mut State, p: &mut Params, v: &str) -> ApiResult {
    let vmid = vmid_param(p, v, &[("snapname", Kind::Str), ("description", Kind::Str)])?;
    let name = p
        .get("snapname")
        .map(str::to_string)
        .ok_or_else(|| ApiError::param("snapname", "property is missing and it is not optional"))?;
    valid_snapname(&name)?;
    st.check_sync(&vms(vmid), perms::VM_SNAPSHOT)?;
    if name == "current" || name == "vzdump" {
        return Err(ApiError::die(format!(
            "unable to use snapshot name '{name}' (reserved name)"
        )));
    }
    let g = guest(st, vmid)?;
    let failure = st
        .check_in_task(&vms(vmid), perms::VM_SNAPSHOT)
        .or_else(|| {
            g.lock()
                .map(|l| Failure::new(format!("CT is locked ({l})")))
        })
        .or_else(|| {
            g.snapshots
                .contains_key(&name)
                .then(|| Failure::new(format!("snapshot name '{name}' already used")))
        });
    let effect = Effect::Snapshot {
        vmid,
        name,
        description: p.get("description").map(str::to_string),
    };
    let mut spec = TaskSpec::new("vzsnapshot", vmid.to_string(), effect);
    spec.lock = vec![(vmid, "snapshot")];
    spec.failure = failure;
    upid(st.spawn(spec))
}

fn snapshot_rollback(st: &mut State, p: &mut Params, v: &str, snap: &str) -> ApiResult {
    p.push("snapname", snap);
    let vmid = vmid_param(p, v, &[("snapname", Kind::Str), ("start", Kind::Bool)])?;
    valid_snapname(snap)?;
    let privs = perms::VM_ROLLBACK;
    st.check_sync(&vms(vmid), privs)?;
    let g = guest(st, vmid)?;
    let failure = st
        .check_in_task(&vms(vmid), privs)
        .or_else(|| {
            (!g.snapshots.contains_key(snap))
                .then(|| Failure::new(format!("snapshot '{snap}' does not exist")))
        })
        .or_else(|| {
            g.lock()
                .map(|l| Failure::new(format!("CT is locked ({l})")))
        });
    let mut spec = TaskSpec::new(
        "vzrollback",
        vmid.to_string(),
        Effect::Rollback {
            vmid,
            name: snap.to_string(),
            start: p.flag("start"),
        },
    );
    if g.running {
        spec.log.push(format!("stopping CT {vmid}"));
    }
    spec.lock = vec![(vmid, "rollback")];
    spec.failure = failure;
    upid(st.spawn(spec))
}

fn snapshot_delete(st: &mut State, p: &mut Params, v: &str, snap: &str) -> ApiResult {
    p.push("snapname", snap);
    let vmid = vmid_param(p, v, &[("snapname", Kind::Str), ("force", Kind::Bool)])?;
    valid_snapname(snap)?;
    st.check_sync(&vms(vmid), perms::VM_SNAPSHOT)?;
    let g = guest(st, vmid)?;
    let failure = st
        .check_in_task(&vms(vmid), perms::VM_SNAPSHOT)
        .or_else(|| {
            (!g.snapshots.contains_key(snap))
                .then(|| Failure::new(format!("snapshot '{snap}' does not exist")))
        })
        .or_else(|| {
            g.lock()
                .filter(|_| !p.flag("force"))
                .map(|l| Failure::new(format!("CT is locked ({l})")))
        });
    let mut spec = TaskSpec::new(
        "vzdelsnapshot",
        vmid.to_string(),
        Effect::DelSnapshot {
            vmid,
            name: snap.to_string(),
        },
    );
    spec.lock = vec![(vmid, "snapshot-delete")];
    spec.failure = failure;
    upid(st.spawn(spec))
}

fn vzdump(st: &mut State, p: &Params) -> ApiResult {
    const MODES: &[&str] = &["snapshot", "suspend", "stop"];
    const COMPRESS: &[&str] = &["0", "1", "gzip", "lzo", "zstd"];
    p.check(
        |k| match k {
            "node" | "vmid" | "storage" | "notes-template" | "prune-backups" | "exclude"
            | "dumpdir" | "mailto" | "pool" => Some(Kind::Str),
            "all" | "remove" | "protected" | "stdexcludes" | "stop" | "quiet" => Some(Kind::Bool),
            "mode" => Some(Kind::Enum(MODES)),
            "compress" => Some(Kind::Enum(COMPRESS)),
            "bwlimit" | "ionice" | "lockwait" | "zstd" => Some(Kind::Int(Some(0), None)),
            _ => None,
        },
        &[],
    )?;
    let storage = p.get("storage").unwrap_or("local").to_string();
    st.check_sync(&format!("/storage/{storage}"), perms::DATASTORE_SPACE)?;
    let Some(target) = st.storage(&storage) else {
        return Err(ApiError::die(format!("storage '{storage}' does not exist")));
    };
    if !target.content.split(',').any(|c| c == "backup") {
        return Err(ApiError::die(format!(
            "storage '{storage}' does not support backups"
        )));
    }
    let requested: Vec<u32> = if p.flag("all") {
        if p.get("vmid").is_some() {
            return Err(ApiError::param(
                "all",
                "option conflicts with option 'vmid'",
            ));
        }
        st.guests.keys().copied().collect()
    } else {
        let Some(list) = p.get("vmid") else {
            return Err(ApiError::param(
                "vmid",
                "property is missing and it is not optional",
            ));
        };
        let mut ids = Vec::new();
        for part in list.split([',', ';', ' ']).filter(|s| !s.is_empty()) {
            match part.parse::<u32>() {
                Ok(id) if id >= 100 => ids.push(id),
                _ => {
                    return Err(ApiError::param(
                        "vmid",
                        format!("value '{list}' does not match the regex pattern"),
                    ));
                }
            }
        }
        ids
    };
    // Guests that are not on this node are somebody else's job: PVE answers "OK".
    let local: Vec<u32> = requested
        .into_iter()
        .filter(|id| st.guests.contains_key(id))
        .collect();
    if local.is_empty() {
        return Ok(Answer::data(Value::String("OK".into())));
    }
    let ext = match p.get("compress").unwrap_or("0") {
        "gzip" => ".gz",
        "zstd" => ".zst",
        "1" | "lzo" => ".lzo",
        _ => "",
    };
    let now = clock::epoch_now();
    let ids: Vec<String> = local.iter().map(u32::to_string).collect();
    let mut cmdline = format!("INFO: starting new backup job: vzdump {}", ids.join(" "));
    for key in ["storage", "mode", "compress", "remove", "notes-template"] {
        if let Some(val) = p.get(key) {
            cmdline.push_str(&format!(" --{key} {val}"));
        }
    }
    let mut log = vec![cmdline];
    let mut backups = Vec::new();
    let mut errors = Vec::new();
    for id in &local {
        let Some(g) = st.guests.get(id) else { continue };
        log.push(format!("INFO: Starting Backup of VM {id} (lxc)"));
        if let Some(lock) = g.lock() {
            let line = format!("ERROR: Backup of VM {id} failed - CT is locked ({lock})");
            log.push(line.clone());
            errors.push(line);
            continue;
        }
        let pbs = target.kind == "pbs";
        let mut b = if pbs {
            Backup::pbs(g, &storage, now)
        } else {
            Backup::of(g, &storage, now, ext)
        };
        b.notes = p.get("notes-template").map(|t| {
            t.replace("{{guestname}}", &g.name())
                .replace("{{vmid}}", &id.to_string())
                .replace("{{node}}", &st.node)
                .replace("{{cluster}}", "")
        });
        log.push(format!(
            "INFO: status = {}",
            if g.running { "running" } else { "stopped" }
        ));
        log.push(format!("INFO: CT Name: {}", g.name()));
        log.push(if pbs {
            format!(
                "INFO: creating Proxmox Backup Server archive 'ct/{id}/{}'",
                clock::pbs_stamp(now)
            )
        } else {
            format!(
                "INFO: creating vzdump archive '/var/lib/vz/dump/{}'",
                b.file_name()
            )
        });
        log.push(format!("INFO: Total bytes written: {}", b.size * 3));
        log.push(format!("INFO: archive file size: {}MB", b.size >> 20));
        log.push(format!("INFO: Finished Backup of VM {id} (00:00:01)"));
        backups.push(b);
    }
    let task_id = if local.len() == 1 {
        local[0].to_string()
    } else {
        String::new()
    };
    // VM.Backup is checked inside the worker, for every guest, before any backup.
    let permission = local
        .iter()
        .find_map(|id| st.check_in_task(&vms(*id), perms::VM_BACKUP));
    let mut spec = TaskSpec::new("vzdump", task_id, Effect::Backup(backups));
    spec.lock = local.iter().map(|id| (*id, "backup")).collect();
    if let Some(f) = permission {
        spec.failure = Some(f);
    } else if !errors.is_empty() {
        log.push("INFO: Backup job finished with errors".to_string());
        spec.failure = Some(Failure {
            exitstatus: "job errors".to_string(),
            log,
        });
    } else {
        log.push("INFO: Backup job finished successfully".to_string());
        spec.log = log;
    }
    upid(st.spawn(spec))
}

fn storage_digest(st: &State) -> String {
    use sha2::{Digest, Sha256};
    let names: Vec<&str> = st.storages.iter().map(|s| s.name.as_str()).collect();
    let hash = Sha256::digest(names.join(",").as_bytes());
    hash.iter().take(20).map(|b| format!("{b:02x}")).collect()
}

fn storage_index(st: &State, p: &Params) -> ApiResult {
    p.check(|k| (k == "type").then_some(Kind::Str), &[])?;
    let digest = storage_digest(st);
    let rows: Vec<Value> = st
        .storages
        .iter()
        .filter(|s| p.get("type").is_none_or(|t| t == s.kind))
        .filter(|s| st.allowed(&format!("/storage/{}", s.name), perms::DATASTORE_SEE))
        .map(|s| {
            let mut row = json!({
                "storage": s.name,
                "type": s.kind,
                "content": s.content,
                "digest": digest,
            });
            if let Some(obj) = row.as_object_mut() {
                match s.path {
                    // pve-storage's PBSPlugin options: the server and datastore it reaches.
                    None if s.kind == "pbs" => {
                        obj.insert("server".into(), Value::String("192.0.2.10".into()));
                        obj.insert("datastore".into(), Value::String("store1".into()));
                        obj.insert("username".into(), Value::String("pve@pbs".into()));
                        obj.insert("prune-backups".into(), Value::String("keep-all=1".into()));
                    }
                    Some(path) => {
                        obj.insert("path".into(), Value::String(path.into()));
                        obj.insert("prune-backups".into(), Value::String("keep-all=1".into()));
                        obj.insert("shared".into(), Value::from(0));
                    }
                    None => {
                        obj.insert("thinpool".into(), Value::String("data".into()));
                        obj.insert("vgname".into(), Value::String("pve".into()));
                    }
                }
            }
            row
        })
        .collect();
    Ok(Answer::data(Value::Array(rows)))
}

fn node_storage(st: &State, p: &Params) -> ApiResult {
    check(
        p,
        &[
            ("storage", Kind::Str),
            ("content", Kind::Str),
            ("enabled", Kind::Bool),
            ("target", Kind::Str),
            ("format", Kind::Bool),
        ],
        &[],
    )?;
    if let Some(s) = p.get("storage")
        && st.storage(s).is_none()
    {
        return Err(ApiError::param("storage", "No such storage."));
    }
    let rows: Vec<Value> = st
        .storages
        .iter()
        .filter(|s| p.get("storage").is_none_or(|name| name == s.name))
        .filter(|s| {
            p.get("content").is_none_or(|c| {
                c.split(',')
                    .all(|want| s.content.split(',').any(|h| h == want))
            })
        })
        .filter(|s| st.allowed(&format!("/storage/{}", s.name), perms::DATASTORE_SEE))
        .map(|s| {
            let used = st.storage_used(s);
            json!({
                "storage": s.name,
                "type": s.kind,
                "content": s.content,
                "active": 1,
                "enabled": 1,
                "shared": 0,
                "total": s.total,
                "used": used,
                "avail": s.total - used,
                "used_fraction": used as f64 / s.total as f64,
            })
        })
        .collect();
    Ok(Answer::data(Value::Array(rows)))
}

/// pve-storage `API2/Storage/Status.pm` `read_status`: the storage's entry of
/// `storage_info` (no `storage` key: the path names it); an unknown one is a parameter
/// error, `No such storage.`
fn storage_status(st: &State, p: &mut Params, name: &str) -> ApiResult {
    p.push("storage", name);
    check(p, &[("storage", Kind::Str)], &[])?;
    st.check_sync(
        &format!("/storage/{name}"),
        &["Datastore.Audit", "Datastore.AllocateSpace"],
    )?;
    let Some(s) = st.storage(name) else {
        return Err(ApiError::param("storage", "No such storage."));
    };
    let used = st.storage_used(s);
    Ok(Answer::data(json!({
        "type": s.kind,
        "content": s.content,
        "active": 1,
        "enabled": 1,
        "shared": 0,
        "total": s.total,
        "used": used,
        "avail": s.total - used,
    })))
}

fn storage_content(st: &State, p: &mut Params, name: &str) -> ApiResult {
    p.push("storage", name);
    check(p, &[("storage", Kind::Str), ("content", Kind::Str)], &[])?;
    st.check_sync(&format!("/storage/{name}"), perms::DATASTORE_SEE)?;
    let Some(storage) = st.storage(name) else {
        return Err(ApiError::die(format!("storage '{name}' does not exist")));
    };
    let vmid = p.int("vmid");
    let want = p.get("content");
    let mut rows = Vec::new();
    for b in st.backups.iter().filter(|b| b.storage == storage.name) {
        if want.is_some_and(|c| c != "backup") || vmid.is_some_and(|v| v != i64::from(b.vmid)) {
            continue;
        }
        if !perms::backup_volume_visible(|at, pr| st.holds(at, pr), &storage.name, b.vmid) {
            continue;
        }
        let mut row = json!({
            "volid": b.volid,
            "content": "backup",
            "format": b.format,
            "size": b.size,
            "ctime": b.ctime,
            "vmid": b.vmid,
        });
        let Some(obj) = row.as_object_mut() else {
            continue;
        };
        // PBSPlugin's list_volumes sets no subtype and passes verification through as
        // PBS reports it: the state and the verify task's (PBS) UPID.
        if !b.is_pbs() {
            obj.insert("subtype".into(), Value::String("lxc".into()));
        }
        if let Some(state) = &b.verification {
            obj.insert(
                "verification".into(),
                json!({"state": state, "upid": pbs_verify_upid(b.ctime)}),
            );
        }
        if b.protected {
            obj.insert("protected".into(), Value::from(1));
        }
        if let Some(notes) = &b.notes {
            let first = notes.lines().next().unwrap_or_default();
            obj.insert("notes".into(), Value::String(first.to_string()));
        }
        rows.push(row);
    }
    for t in &st.templates {
        if !t.starts_with(&format!("{}:", storage.name))
            || want.is_some_and(|c| c != "vztmpl")
            || vmid.is_some()
        {
            continue;
        }
        // pve-storage names a template's format by its extension (`tzst`, `tgz`, `txz`).
        let format = if t.ends_with(".tar.zst") {
            "tzst"
        } else if t.ends_with(".tar.xz") {
            "txz"
        } else {
            "tgz"
        };
        rows.push(json!({
            "volid": t,
            "content": "vztmpl",
            "format": format,
            "size": 130_023_424,
            "ctime": 1_714_557_600,
        }));
    }
    for g in st.guests.values() {
        let Some(rootfs) = g.conf.get("rootfs") else {
            continue;
        };
        let volume = rootfs.split(',').next().unwrap_or_default();
        if !volume.starts_with(&format!("{}:", storage.name))
            || want.is_some_and(|c| c != "rootdir")
            || vmid.is_some_and(|v| v != i64::from(g.vmid))
        {
            continue;
        }
        rows.push(json!({
            "volid": volume,
            "content": "rootdir",
            "format": "raw",
            "size": g.disk_bytes(),
            "used": g.disk_bytes() / 4,
            "vmid": g.vmid,
        }));
    }
    Ok(Answer::data(Value::Array(rows)))
}

/// A PBS verify job's UPID, an hour after the snapshot: PBS's own UPID shape (task id
/// field, `\x3a`-escaped worker id), not PVE's.
fn pbs_verify_upid(ctime: u64) -> String {
    format!(
        "UPID:pbs:000004D2:0000162E:00000000:{:08X}:verificationjob:store1\\x3av\\x2d0001:root@pam:",
        ctime.saturating_add(3600)
    )
}

/// The decode regex of pve-common's UPID.pm, written out.
fn valid_upid(upid: &str) -> bool {
    let Some(rest) = upid.strip_prefix("UPID:") else {
        return false;
    };
    let Some(body) = rest.strip_suffix(':') else {
        return false;
    };
    let parts: Vec<&str> = body.split(':').collect();
    let [node, pid, pstart, start, kind, id, user] = parts.as_slice() else {
        return false;
    };
    let hex = |s: &str, lo: usize, hi: usize| {
        (lo..=hi).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
    };
    let node_ok = node
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && node
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && node.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let field = |s: &str| !s.contains(char::is_whitespace) && !s.contains('/');
    node_ok
        && hex(pid, 8, 8)
        && hex(pstart, 8, 9)
        && hex(start, 8, 8)
        && !kind.is_empty()
        && field(kind)
        && field(id)
        && !user.is_empty()
        && field(user)
}

fn find_task(
    st: &State,
    p: &mut Params,
    upid: &str,
    extra: &[(&str, Kind)],
) -> Result<usize, ApiError> {
    p.push("upid", upid);
    let mut allowed = vec![("upid", Kind::Str)];
    allowed.extend_from_slice(extra);
    check(p, &allowed, &[])?;
    if !valid_upid(upid) {
        return Err(ApiError::param("upid", "unable to parse worker upid"));
    }
    st.tasks
        .iter()
        .position(|t| t.upid == upid)
        .ok_or_else(|| ApiError::param("upid", "no such task"))
}

fn task_status(st: &State, p: &mut Params, upid: &str) -> ApiResult {
    let i = find_task(st, p, upid, &[])?;
    let (user, tokenid) = st.user_and_token();
    Ok(Answer::data(st.tasks[i].status_json(
        &st.node,
        &user,
        tokenid.as_deref(),
    )))
}

fn task_log(st: &State, p: &mut Params, upid: &str) -> ApiResult {
    let i = find_task(
        st,
        p,
        upid,
        &[
            ("start", Kind::Int(Some(0), None)),
            ("limit", Kind::Int(Some(0), None)),
            ("download", Kind::Bool),
        ],
    )?;
    let lines = st.tasks[i].log_lines();
    if lines.is_empty() {
        return Ok(Answer::data(json!([{"n": 1, "t": "no content"}])));
    }
    let start = usize::try_from(p.int("start").unwrap_or(0)).unwrap_or(0);
    let limit = usize::try_from(p.int("limit").unwrap_or(50)).unwrap_or(50);
    let take = if limit == 0 { usize::MAX } else { limit };
    let rows: Vec<Value> = lines
        .iter()
        .enumerate()
        .skip(start)
        .take(take)
        .map(|(i, t)| json!({"n": i + 1, "t": t}))
        .collect();
    Ok(Answer {
        data: Value::Array(rows),
        total: Some(lines.len()),
    })
}

fn task_stop(st: &mut State, p: &mut Params, upid: &str) -> ApiResult {
    let i = find_task(st, p, upid, &[])?;
    if st.tasks[i].running() {
        st.finish(i, Some("received interrupt"));
    }
    Ok(Answer::data(Value::Null))
}

fn task_list(st: &State, p: &Params) -> ApiResult {
    const SOURCES: &[&str] = &["archive", "active", "all"];
    check(
        p,
        &[
            ("start", Kind::Int(Some(0), None)),
            ("limit", Kind::Int(Some(0), None)),
            ("typefilter", Kind::Str),
            ("userfilter", Kind::Str),
            ("statusfilter", Kind::Str),
            ("since", Kind::Int(None, None)),
            ("until", Kind::Int(None, None)),
            ("errors", Kind::Bool),
            ("source", Kind::Enum(SOURCES)),
        ],
        &[],
    )?;
    let source = p.get("source").unwrap_or("archive");
    let vmid = p.int("vmid");
    let (user, tokenid) = st.user_and_token();
    let raw = st.task_list_unfiltered;
    let mut rows: Vec<(u64, usize, Value)> = st
        .tasks
        .iter()
        .enumerate()
        .filter(|(_, t)| match source {
            "active" => t.running(),
            "all" => true,
            _ => !t.running(),
        })
        .filter(|(_, t)| raw || vmid.is_none_or(|v| t.id == v.to_string()))
        .filter(|(_, t)| raw || p.get("typefilter").is_none_or(|f| t.kind == f))
        .filter(|(_, t)| raw || p.int("since").is_none_or(|s| t.starttime as i64 >= s))
        .filter(|(_, t)| raw || p.int("until").is_none_or(|u| t.starttime as i64 <= u))
        .filter(|(_, t)| !p.flag("errors") || (!t.running() && t.exitstatus != "OK"))
        .map(|(i, t)| {
            (
                t.starttime,
                i,
                t.list_json(&st.node, &user, tokenid.as_deref()),
            )
        })
        .collect();
    // Newest first.
    rows.sort_by_key(|r| std::cmp::Reverse((r.0, r.1)));
    let total = rows.len();
    let start = usize::try_from(p.int("start").unwrap_or(0)).unwrap_or(0);
    let limit = usize::try_from(p.int("limit").unwrap_or(50)).unwrap_or(50);
    let data: Vec<Value> = rows
        .into_iter()
        .skip(start)
        .take(if limit == 0 { usize::MAX } else { limit })
        .map(|(_, _, v)| v)
        .collect();
    Ok(Answer {
        data: Value::Array(data),
        total: Some(total),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upid_validation_follows_the_decode_regex() {
        assert!(valid_upid(
            "UPID:pve:0001A2B3:00C0FFEE:66A1B2C3:vzstart:100:root@pam:"
        ));
        assert!(valid_upid(
            "UPID:pve:0001A2B3:00C0FFEE:66A1B2C3:vzdump::felhom-agent@pve!agent:"
        ));
        assert!(!valid_upid(
            "UPID:pve:0001A2B3:00C0FFEE:66A1B2C3:vzstart:100:root@pam"
        ));
        assert!(!valid_upid(
            "UPID:-pve:0001A2B3:00C0FFEE:66A1B2C3:vzstart:100:root@pam:"
        ));
        assert!(!valid_upid(
            "UPID:pve:1A2B3:00C0FFEE:66A1B2C3:vzstart:100:root@pam:"
        ));
        assert!(!valid_upid("junk"));
    }
}
