//! The structural fence between the Proxmox API client and the privileged backend,
//! checked on the source: the API side (every file of `src/net` and `src/proxmox`
//! but `privileged.rs`) never starts a process and never calls into the privileged
//! backend; the privileged backend never opens a socket or speaks HTTP.
//!
//! Every file in those directories must be named below, on one side or the other, so
//! a new file cannot slip past unclassified.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The API side: may open sockets, must never spawn.
const API_FILES: &[&str] = &[
    "src/net/mod.rs",
    "src/net/error.rs",
    "src/net/http.rs",
    "src/net/tls.rs",
    "src/proxmox/mod.rs",
    "src/proxmox/answer.rs",
    "src/proxmox/capacity.rs",
    "src/proxmox/client.rs",
    "src/proxmox/create.rs",
    "src/proxmox/decode.rs",
    "src/proxmox/error.rs",
    "src/proxmox/privileges/mod.rs",
    "src/proxmox/privileges/calls.rs",
    "src/proxmox/task.rs",
    "src/proxmox/types.rs",
    "src/proxmox/upid.rs",
    "src/proxmox/validate.rs",
    "src/proxmox/wait.rs",
];

/// The privileged side: may spawn, must never open a socket.
const PRIVILEGED_FILES: &[&str] = &[
    "src/proxmox/privileged.rs",
    "src/proxmox/privileged/exec.rs",
    "src/proxmox/health.rs",
];

/// What starting a process looks like in Rust source.
const SPAWN_TOKENS: &[&str] = &[
    "std::process",
    "process::",
    "Command",
    ".spawn(",
    "Stdio",
    "libc",
    "nix::",
    "execv",
    "fork(",
];

/// What network access looks like.
const SOCKET_TOKENS: &[&str] = &[
    "std::net",
    "net::",
    "TcpStream",
    "TcpListener",
    "UdpSocket",
    "UnixStream",
    "UnixDatagram",
    "ureq",
    "rustls",
    "HttpClient",
    "Client::",
    "socket",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root()).unwrap();
            out.insert(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

/// The source with comments blanked out, so docs that say "never spawns a
/// process" are not mistaken for code. Strings (plain, byte, raw) stay: a forbidden
/// name in a string is suspicious enough to flag.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let rest = &src[i..];
        if rest.starts_with("//") {
            let end = rest.find('\n').unwrap_or(rest.len());
            i += end;
            continue;
        }
        if rest.starts_with("/*") {
            let end = rest.find("*/").map(|e| e + 2).unwrap_or(rest.len());
            i += end;
            out.push(' ');
            continue;
        }
        // Raw strings: r"..." or r#"..."# (also br).
        if b[i] == b'r' && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) {
            let hashes = rest[1..].bytes().take_while(|&c| c == b'#').count();
            if rest.as_bytes().get(1 + hashes) == Some(&b'"') {
                let close = format!("\"{}", "#".repeat(hashes));
                let body_start = 2 + hashes;
                let end = rest[body_start..]
                    .find(&close)
                    .map(|e| body_start + e + close.len())
                    .unwrap_or(rest.len());
                out.push_str(&rest[..end]);
                i += end;
                continue;
            }
        }
        if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(b.len());
            out.push_str(&src[i..end]);
            i = end;
            continue;
        }
        if b[i] == b'\'' {
            // A char literal ('x', '\n', '"'), else a lifetime.
            if b.get(i + 1) == Some(&b'\\') {
                let end = src[i + 2..]
                    .find('\'')
                    .map(|e| i + 3 + e)
                    .unwrap_or(b.len());
                out.push_str(&src[i..end]);
                i = end;
                continue;
            }
            let ch_len = rest[1..].chars().next().map(char::len_utf8).unwrap_or(0);
            if b.get(i + 1 + ch_len) == Some(&b'\'') {
                out.push_str(&src[i..i + 2 + ch_len]);
                i += 2 + ch_len;
                continue;
            }
        }
        let ch = rest.chars().next().unwrap();
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

fn violations(file: &str, forbidden: &[&str]) -> Vec<String> {
    let src = std::fs::read_to_string(root().join(file)).unwrap();
    let code = code_only(&src);
    let mut found = Vec::new();
    for (n, line) in code.lines().enumerate() {
        for token in forbidden {
            if line.contains(token) {
                found.push(format!("{file}:{}: `{token}` in: {}", n + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn every_file_is_classified() {
    let mut present = BTreeSet::new();
    rust_files(&root().join("src/net"), &mut present);
    rust_files(&root().join("src/proxmox"), &mut present);
    let listed: BTreeSet<String> = API_FILES
        .iter()
        .chain(PRIVILEGED_FILES)
        .map(|s| s.to_string())
        .collect();
    let unlisted: Vec<_> = present.difference(&listed).collect();
    let missing: Vec<_> = listed.difference(&present).collect();
    assert!(
        unlisted.is_empty(),
        "new files must be put on one side of the fence in tests/fence.rs: {unlisted:?}"
    );
    assert!(
        missing.is_empty(),
        "files named in tests/fence.rs are gone (renamed?): {missing:?}"
    );
}

#[test]
fn the_api_client_never_spawns_a_process() {
    let mut found = Vec::new();
    for file in API_FILES {
        found.extend(violations(file, SPAWN_TOKENS));
    }
    assert!(
        found.is_empty(),
        "process use on the API side:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_api_client_never_calls_the_privileged_backend() {
    let mut found = Vec::new();
    for file in API_FILES.iter().filter(|f| **f != "src/proxmox/mod.rs") {
        found.extend(violations(file, &["privileged::", "Privileged", "Runner"]));
    }
    assert!(
        found.is_empty(),
        "the API side reaches into the privileged backend:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_privileged_backend_never_opens_a_socket() {
    let mut found = Vec::new();
    for file in PRIVILEGED_FILES {
        found.extend(violations(file, SOCKET_TOKENS));
    }
    assert!(
        found.is_empty(),
        "network use in the privileged backend:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_fence_would_catch_a_spawning_client_file() {
    let planted = "pub fn probe() { let _ = std::process::Command::new(\"/bin/true\").spawn(); }";
    let code = code_only(planted);
    let hits: Vec<_> = SPAWN_TOKENS.iter().filter(|t| code.contains(**t)).collect();
    assert!(hits.len() >= 3, "{hits:?}");
    let net = code_only("let s = std::net::TcpStream::connect(addr);");
    assert!(SOCKET_TOKENS.iter().any(|t| net.contains(t)));
}

#[test]
fn the_scanner_sees_code_and_skips_comments() {
    let src = r####"
        //! Never uses Command or TcpStream.
        use std::process::Command; // a real one
        /* block with TcpStream */ let url = "https://x"; let c = '"'; let d = 'a';
        fn f<'a>(x: &'a str) {} let r = r#"raw "TcpStream" here"#; let e = '\'';
        let s = "escaped \" quote // not a comment"; ureq::get();
    "####;
    let code = code_only(src);
    assert!(!code.contains("Never uses"), "doc comments are skipped");
    assert!(!code.contains("a real one"), "line comments are skipped");
    assert!(!code.contains("block with"), "block comments are skipped");
    assert!(code.contains("std::process::Command"), "code is kept");
    assert!(
        code.contains("\"https://x\""),
        "// inside a string is not a comment"
    );
    assert!(
        code.contains("not a comment"),
        "escaped quotes keep the string open"
    );
    assert!(
        code.contains("raw \"TcpStream\" here"),
        "raw strings are kept whole"
    );
    assert!(
        code.contains("ureq::get()"),
        "code after tricky literals is kept"
    );
}

// ---------------------------------------------------------------------------------------
// The layers. Each top-level module of `src/` is one layer; a module may import only its
// own layer and the layers below it, and two layers of one rank never import each
// other (hub and reconcile meet only in app). ARCHITECTURE.md draws the same table.

/// Every layer, lowest first, with its rank.
const LAYERS: &[(&str, u8)] = &[
    ("base", 0),
    ("store", 1),
    ("net", 2),
    ("authz", 2),
    ("proxmox", 3),
    ("config", 4),
    ("hub", 5),
    ("reconcile", 5),
    ("app", 6),
    ("cli", 7),
];

/// The crate roots: they declare the layers and import nothing from them but `cli`.
const ROOTS: &[&str] = &["src/lib.rs", "src/main.rs"];

fn rank(layer: &str) -> Option<u8> {
    LAYERS.iter().find(|(l, _)| *l == layer).map(|(_, r)| *r)
}

/// `src/a/b.rs` → `["a", "b"]`, `src/a/mod.rs` → `["a"]`, `src/cli.rs` → `["cli"]`.
fn module_of(file: &str) -> Vec<String> {
    let rel = file.trim_start_matches("src/").trim_end_matches(".rs");
    let mut parts: Vec<String> = rel.split('/').map(str::to_string).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// Reads a use tree at `s` (after `crate::` or `super::`): `a::b::{c, d::e}` gives
/// `a::b::c` and `a::b::d::e`. Returns the paths and where the tree ended.
fn use_tree(s: &[u8], mut i: usize, prefix: &str, out: &mut Vec<String>) -> usize {
    let mut path = prefix.to_string();
    loop {
        let start = i;
        while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == b'_') {
            i += 1;
        }
        if i > start {
            if !path.is_empty() {
                path.push_str("::");
            }
            path.push_str(std::str::from_utf8(&s[start..i]).unwrap());
        }
        let group = if s[i..].starts_with(b"::{") {
            Some(3)
        } else if i == start && s.get(i) == Some(&b'{') {
            Some(1)
        } else {
            None
        };
        if let Some(skip) = group {
            i += skip;
            loop {
                while i < s.len() && s[i].is_ascii_whitespace() {
                    i += 1;
                }
                if i >= s.len() || s[i] == b'}' {
                    return i + 1;
                }
                i = use_tree(s, i, &path, out);
                while i < s.len() && (s[i].is_ascii_whitespace() || s[i] == b',') {
                    i += 1;
                }
            }
        }
        if s[i..].starts_with(b"::")
            && s.get(i + 2)
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
        {
            i += 2;
            continue;
        }
        // `as name`, `*`, `(`: the path is what was read; resolving keeps its longest
        // prefix that is a module.
        while i < s.len() && !matches!(s[i], b',' | b'}' | b';' | b'(' | b')' | b'\n') {
            i += 1;
        }
        out.push(path);
        return i;
    }
}

/// Every module path a piece of code names through `crate::` or `super::` (the latter
/// resolved against `module`), `$crate::` included.
fn named_paths(code: &str, module: &[String], is_mod_rs: bool) -> Vec<Vec<String>> {
    let s = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let boundary = i == 0 || !(s[i - 1].is_ascii_alphanumeric() || s[i - 1] == b'_');
        let (skip, base): (usize, Vec<String>) = if boundary && s[i..].starts_with(b"crate::") {
            (7, Vec::new())
        } else if boundary && s[i..].starts_with(b"super::") {
            // In `a/b.rs` (module a::b) `super` is `a`; in `a/mod.rs` (module a) it is
            // the crate root's `a`'s parent.
            let _ = is_mod_rs;
            (7, module[..module.len().saturating_sub(1)].to_vec())
        } else {
            i += 1;
            continue;
        };
        let mut paths = Vec::new();
        i = use_tree(s, i + skip, "", &mut paths);
        for p in paths {
            let mut full = base.clone();
            full.extend(p.split("::").filter(|x| !x.is_empty()).map(str::to_string));
            out.push(full);
        }
    }
    out
}

/// The code of `file` without comments, split into the module's own code and its
/// `#[cfg(test)] mod tests` (where `super` means the file's module itself).
fn code_and_tests(file: &str) -> (String, String) {
    let code = code_only(&std::fs::read_to_string(root().join(file)).unwrap());
    match code.find("\nmod tests {") {
        Some(at) => {
            // From the `#[cfg(...)]` line above it, when there is one.
            let at = code[..at]
                .rfind('\n')
                .filter(|l| code[l + 1..at].starts_with("#[cfg("))
                .unwrap_or(at);
            (code[..at].to_string(), code[at..].to_string())
        }
        None => (code, String::new()),
    }
}

/// Each source file's module and the modules it imports (the longest existing module
/// prefix of every path it names).
fn import_graph() -> Vec<(String, Vec<String>, Vec<Vec<String>>)> {
    let mut files = BTreeSet::new();
    rust_files(&root().join("src"), &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(f)).collect();
    let resolve = |path: &[String]| -> Option<Vec<String>> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| modules.contains(p))
    };
    let mut graph = Vec::new();
    for file in &files {
        let module = module_of(file);
        let (code, tests) = code_and_tests(file);
        let mut deps: Vec<Vec<String>> = named_paths(&code, &module, file.ends_with("mod.rs"))
            .iter()
            .filter_map(|p| resolve(p))
            .filter(|p| *p != module)
            .collect();
        let mut own = module.clone();
        own.push("tests".into());
        deps.extend(
            named_paths(&tests, &own, false)
                .iter()
                .filter_map(|p| resolve(p))
                .filter(|p| *p != module),
        );
        deps.sort();
        deps.dedup();
        graph.push((file.clone(), module, deps));
    }
    graph
}

#[test]
fn every_import_points_to_the_same_or_a_lower_layer() {
    let mut found = Vec::new();
    let mut unlayered = Vec::new();
    for (file, module, deps) in import_graph() {
        if ROOTS.contains(&file.as_str()) {
            continue;
        }
        let layer = &module[0];
        let Some(own) = rank(layer) else {
            unlayered.push(file.clone());
            continue;
        };
        for dep in deps {
            let to = &dep[0];
            let Some(theirs) = rank(to) else {
                found.push(format!(
                    "{file}: imports `{}`, which is in no layer",
                    dep.join("::")
                ));
                continue;
            };
            if theirs > own || (theirs == own && to != layer) {
                found.push(format!(
                    "{file} ({layer}, rank {own}) imports `{}` ({to}, rank {theirs})",
                    dep.join("::")
                ));
            }
        }
    }
    assert!(
        unlayered.is_empty(),
        "files outside every layer (add the layer to LAYERS and ARCHITECTURE.md): {unlayered:?}"
    );
    assert!(
        found.is_empty(),
        "imports against the layers:\n{}",
        found.join("\n")
    );
}

#[test]
fn no_module_imports_itself_in_a_circle() {
    let graph = import_graph();
    let edges: Vec<(Vec<String>, Vec<String>)> = graph
        .iter()
        .flat_map(|(_, m, deps)| deps.iter().map(move |d| (m.clone(), d.clone())))
        .collect();
    // A module is on a circle when it can reach itself.
    let mut circles = Vec::new();
    for (_, start, _) in &graph {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&Vec<String>> = vec![start];
        while let Some(m) = stack.pop() {
            for (from, to) in &edges {
                if from == m && seen.insert(to.clone()) {
                    stack.push(to);
                }
            }
        }
        if seen.contains(start) {
            circles.push(start.join("::"));
        }
    }
    assert!(
        circles.is_empty(),
        "modules on an import circle: {circles:?}"
    );
}

#[test]
fn no_source_file_is_over_1000_lines() {
    let mut files = BTreeSet::new();
    rust_files(&root().join("src"), &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(root().join(f))
                .unwrap()
                .lines()
                .count();
            (n > 1000).then(|| format!("{f}: {n} lines"))
        })
        .collect();
    assert!(long.is_empty(), "split these by idea: {long:?}");
}

#[test]
fn every_module_says_what_it_owns_and_what_it_never_does() {
    let mut files = BTreeSet::new();
    rust_files(&root().join("src"), &mut files);
    let mut missing = Vec::new();
    for f in &files {
        let src = std::fs::read_to_string(root().join(f)).unwrap();
        let doc: String = src
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .collect::<Vec<_>>()
            .join(" ");
        let doc = doc.to_lowercase();
        if !(doc.contains("never") || doc.contains("nothing")) {
            missing.push(f.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "open these with a `//!` paragraph that says what the module never does: {missing:?}"
    );
}

#[test]
fn the_layer_scanner_reads_use_trees_and_super() {
    let module = vec!["reconcile".to_string(), "gate".to_string()];
    let code = code_only(
        "use crate::{hub::report::AuditEntry, base::{time::Clock, sync}};\n\
         use super::journal::Journal; // crate::app in a comment\n\
         let x = crate::store::faultpoint::reached(\"a\"); $crate::base::log::emit();\n\
         let s = \"not crate-like\"; mycrate::x();",
    );
    let mut got: Vec<String> = named_paths(&code, &module, false)
        .iter()
        .map(|p| p.join("::"))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            "base::log::emit",
            "base::sync",
            "base::time::Clock",
            "hub::report::AuditEntry",
            "reconcile::journal::Journal",
            "store::faultpoint::reached",
        ]
    );
}

#[test]
fn every_error_type_has_its_own_name() {
    let mut files = BTreeSet::new();
    rust_files(&root().join("src"), &mut files);
    let mut seen: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for f in &files {
        let (code, _) = code_and_tests(f);
        for line in code.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let Some(at) = words.iter().position(|w| *w == "enum" || *w == "struct") else {
                continue;
            };
            let Some(name) = words.get(at + 1) else {
                continue;
            };
            let name: String = name
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name.ends_with("Error") {
                seen.entry(name).or_default().push(f.clone());
            }
        }
    }
    let clashes: Vec<_> = seen.iter().filter(|(_, at)| at.len() > 1).collect();
    assert!(
        clashes.is_empty(),
        "error types sharing a name: {clashes:?}"
    );
    assert!(
        !seen.contains_key("Error"),
        "an error type named only `Error` does not say its layer: {:?}",
        seen.get("Error")
    );
}
