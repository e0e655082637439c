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
    "src/proxmox/client.rs",
    "src/proxmox/decode.rs",
    "src/proxmox/error.rs",
    "src/proxmox/types.rs",
    "src/proxmox/upid.rs",
    "src/proxmox/validate.rs",
    "src/proxmox/wait.rs",
];

/// The privileged side: may spawn, must never open a socket.
const PRIVILEGED_FILES: &[&str] = &["src/proxmox/privileged.rs"];

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
