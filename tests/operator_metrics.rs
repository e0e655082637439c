//! The metrics textfile of a real daemon, read by a strict Prometheus text-format
//! parser written here (HELP and TYPE before samples, one TYPE per family, label
//! escaping, counters named `_total` and never negative, histogram buckets ascending
//! and cumulative with `+Inf` equal to `_count`, no duplicate series). The parser is
//! shown to refuse each kind of bad input first, so a pass means something.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::agent::{Agent, fast_hub};
use common::sign::destroy_blob;

use std::collections::{BTreeMap, BTreeSet};

use felhom_agent::base::{Clock as _, SystemClock};
use felhom_agent::store::SECOND_MS_ENV;
use felhom_sim::DEFAULT_TOKEN_SECRET;

/// One sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// A parsed textfile: each family's type, and every sample.
#[derive(Debug, Default)]
struct Exposition {
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && l.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.2)
    }
}

fn is_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .ok_or(format!("no =\" in {rest:?}"))?;
        if !is_name(name, false) || name.starts_with("__") {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("unterminated value in {text:?}")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, '\n')) => return Err("raw newline in a label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if out.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = &after[end + 1..];
        rest = match rest.strip_prefix(',') {
            Some(r) if !r.is_empty() => r,
            Some(_) => return Err("trailing comma".into()),
            None if rest.is_empty() => rest,
            None => return Err(format!("junk after a label: {rest:?}")),
        };
    }
    Ok(out)
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|_| format!("bad value {s:?}")),
    }
}

/// The family a sample name belongs to, given the declared types.
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && types.get(base).map(String::as_str) == Some("histogram")
        {
            return Some(base);
        }
    }
    None
}

fn parse(text: &str) -> Result<Exposition, String> {
    if !text.ends_with('\n') {
        return Err("no final newline".into());
    }
    let mut e = Exposition::default();
    let mut helped = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut sampled = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = |why: String| format!("line {}: {why}", n + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest
                .split_once(' ')
                .ok_or_else(|| at("HELP without text".into()))?;
            if !helped.insert(name.to_owned()) {
                return Err(at(format!("second HELP for {name}")));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| at("TYPE without kind".into()))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(at(format!("unknown type {kind}")));
            }
            if !helped.contains(name) {
                return Err(at(format!("TYPE before HELP for {name}")));
            }
            if sampled.contains(name) {
                return Err(at(format!("TYPE after samples of {name}")));
            }
            if e.types.insert(name.to_owned(), kind.to_owned()).is_some() {
                return Err(at(format!("second TYPE for {name}")));
            }
            if kind == "counter" && !name.ends_with("_total") {
                return Err(at(format!("counter {name} not named _total")));
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            return Err(at("stray comment or empty line".into()));
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value".into()))?;
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .ok_or_else(|| at("no closing brace".into()))?;
                (name, parse_labels(inner).map_err(at)?)
            }
            None => (series, BTreeMap::new()),
        };
        if !is_name(name, true) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let family = family_of(name, &e.types).ok_or_else(|| at(format!("{name}: no TYPE")))?;
        sampled.insert(family.to_owned());
        let v = parse_value(value).map_err(at)?;
        if e.types[family] == "counter" && (v.is_nan() || v < 0.0) {
            return Err(at(format!("counter {name} is {v}")));
        }
        if !seen.insert(format!("{name}{labels:?}")) {
            return Err(at(format!("duplicate series {name}{labels:?}")));
        }
        e.samples.push((name.to_owned(), labels, v));
    }
    for (family, kind) in &e.types {
        if kind != "histogram" {
            continue;
        }
        let buckets: Vec<(f64, f64)> = e
            .samples
            .iter()
            .filter(|(n, _, _)| *n == format!("{family}_bucket"))
            .map(|(_, l, v)| Ok((parse_value(l.get("le").ok_or("bucket without le")?)?, *v)))
            .collect::<Result<_, String>>()?;
        if buckets
            .windows(2)
            .any(|w| w[0].0.partial_cmp(&w[1].0) != Some(std::cmp::Ordering::Less))
        {
            return Err(format!("{family}: le not ascending"));
        }
        if buckets.windows(2).any(|w| w[0].1 > w[1].1) {
            return Err(format!("{family}: buckets not cumulative"));
        }
        let last = buckets.last().ok_or(format!("{family}: no buckets"))?;
        if last.0 != f64::INFINITY {
            return Err(format!("{family}: last bucket is not +Inf"));
        }
        let count = e
            .value(&format!("{family}_count"), &[])
            .ok_or(format!("{family}: no _count"))?;
        if last.1 != count {
            return Err(format!("{family}: +Inf {} != _count {count}", last.1));
        }
        e.value(&format!("{family}_sum"), &[])
            .ok_or(format!("{family}: no _sum"))?;
    }
    Ok(e)
}

#[test]
fn the_parser_refuses_what_prometheus_would() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{k=\"x\\\"y\\\\z\\n\"} 1\n\
                # HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n\
                h_sum 3\nh_count 2\n";
    let e = parse(good).unwrap();
    assert_eq!(e.value("a_total", &[("k", "x\"y\\z\n")]), Some(1.0));
    let cases: &[(&str, &str)] = &[
        ("a_total 1\n", "no TYPE"),
        ("# TYPE a_total counter\na_total 1\n", "TYPE before HELP"),
        ("# HELP a A.\n# TYPE a counter\na 1\n", "not named _total"),
        (
            "# HELP a_total A.\n# TYPE a_total counter\na_total -1\n",
            "is -1",
        ),
        (
            "# HELP g G.\n# TYPE g gauge\ng{k=\"\\x\"} 1\n",
            "bad escape",
        ),
        ("# HELP g G.\n# TYPE g gauge\ng 1\ng 2\n", "duplicate"),
        ("# HELP g G.\n# TYPE g gauge\ng 1", "no final newline"),
        (
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
            "not cumulative",
        ),
        (
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
            "!= _count",
        ),
        (
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_sum 1\nh_count 2\n",
            "not +Inf",
        ),
    ];
    for (text, want) in cases {
        let err = parse(text).unwrap_err();
        assert!(err.contains(want), "{text:?}: {err}");
    }
}

#[test]
fn the_daemon_writes_a_valid_textfile_with_what_it_did() {
    let pve = common::agent::operator_pve();
    let hub = fast_hub();
    let dir = common::tempdir("metrics", "daemon");
    let (_, config) = common::agent::operator_setup(&dir, &pve, &hub, |v| {
        v["authz"] = common::sign::authz_json();
    });
    // An unsigned destroy: held pending_signature, a decision about a delivered op.
    let digest = pve.guest_digest(102).unwrap();
    hub.queue_signed_op(
        &destroy_blob("pve-a", "102", &digest, SystemClock.now().unix()),
        None,
    );
    let mut agent = Agent::spawn(
        &["run"],
        &config,
        &dir.join("stderr.log"),
        &[(SECOND_MS_ENV, "20")],
    );
    let path = dir.join("state").join("metrics.textfile");
    let mut last = Exposition::default();
    agent.wait_until(
        "metrics showing the start, a round and the held destroy",
        |_| {
            let Ok(text) = std::fs::read_to_string(&path) else {
                return false;
            };
            last = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            last.value(
                "felhom_agent_actions_total",
                &[("kind", "start"), ("outcome", "applied")],
            ) == Some(1.0)
                && last.value(
                    "felhom_agent_signed_ops_total",
                    &[("outcome", "pending_signature")],
                ) >= Some(1.0)
                && last.value("felhom_agent_pending_signatures", &[]) == Some(1.0)
                && last.value("felhom_agent_hub_rounds_total", &[("result", "ok")]) >= Some(1.0)
        },
    );
    let e = &last;
    assert!(e.value("felhom_agent_passes_total", &[("result", "ok")]) >= Some(1.0));
    assert!(
        e.value(
            "felhom_agent_gate_decisions_total",
            &[("code", "pending_signature")]
        ) >= Some(1.0)
    );
    assert!(e.value("felhom_agent_task_duration_seconds_count", &[]) >= Some(1.0));
    assert_eq!(e.value("felhom_agent_ops_in_flight", &[]), Some(0.0));
    assert!(e.value("felhom_agent_guests", &[("state", "running")]) >= Some(1.0));
    assert!(
        e.value(
            "felhom_agent_last_success_timestamp_seconds",
            &[("what", "report")]
        )
        .is_some_and(|t| t > 1.7e9)
    );
    for (name, kind) in [
        ("felhom_agent_passes_total", "counter"),
        ("felhom_agent_task_duration_seconds", "histogram"),
        ("felhom_agent_paused", "gauge"),
    ] {
        assert_eq!(e.types.get(name).map(String::as_str), Some(kind), "{name}");
    }
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(DEFAULT_TOKEN_SECRET) && !text.contains(&hub.key()));
    agent.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
