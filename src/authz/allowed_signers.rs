//! `authz.allowed_signers_file`: the signer set in OpenSSH's own ALLOWED SIGNERS format
//! (`ssh-keygen(1)`), so the file an operator checks a signature with by hand,
//! `ssh-keygen -Y verify -f FILE -I KEY_ID -n felhom-op-v1 -s SIG < BLOB`, is the file the
//! agent trusts. One line per key:
//!
//! ```text
//! ops-2026 namespaces="felhom-op-v1",valid-before="20270101Z" ssh-ed25519 AAAA… felhom-role=operational
//! ```
//!
//! * the principal is the signer's `key_id`: exactly one, no pattern (`*`, `?`, `!`, `,`);
//! * `namespaces="…"` is required and must list `felhom-op-v1`;
//! * `valid-after` / `valid-before` (`YYYYMMDD[HHMM[SS]]Z`, UTC: the trailing `Z` is
//!   required here, as a local time would depend on the host's zone) bound the key's
//!   validity as `ssh-keygen` bounds it: refused before `valid-after`, and after
//!   `valid-before` (that second itself is still valid);
//! * `cert-authority` is refused (the agent trusts keys, never a CA), as is any other option;
//! * the **role** is a word of the key's comment, `felhom-role=operational` or
//!   `felhom-role=recovery`. `ssh-keygen` ignores the comment, so the stock tool accepts the
//!   file unchanged; a line without the word is refused.
//!
//! Blank lines and `#` comments are skipped. Every error names the 1-based line and why.
//! This module only parses text: it never reads a file itself and never logs a key.

use ssh_key::PublicKey;

use super::NAMESPACE;
use super::config::{MAX_SIGNERS, Role, Signer, SignersConfigError, push_unique, valid_key_id};
use crate::base::time::Timestamp;

/// Largest allowed_signers file read, in bytes.
pub const MAX_ALLOWED_SIGNERS_BYTES: usize = 256 * 1024;

/// The comment word that carries a signer's role.
pub const ROLE_WORD: &str = "felhom-role=";

/// Parses an allowed_signers file's text into signers; `file` names it in errors.
pub fn parse_allowed_signers(text: &str, file: &str) -> Result<Vec<Signer>, SignersConfigError> {
    let mut out: Vec<Signer> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let field = format!("{file}:{}", i + 1);
        let err = |reason: String| SignersConfigError {
            field: field.clone(),
            reason,
        };
        let signer = parse_line(line).map_err(err)?;
        if out.len() >= MAX_SIGNERS {
            return Err(SignersConfigError {
                field,
                reason: format!("more than {MAX_SIGNERS} signers"),
            });
        }
        push_unique(&mut out, signer, file, &field, &field)?;
    }
    if out.is_empty() {
        return Err(SignersConfigError {
            field: file.to_string(),
            reason: "lists no signer".into(),
        });
    }
    Ok(out)
}

/// Splits off the first whitespace-delimited token, honouring double quotes.
fn token(s: &str) -> (&str, &str) {
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_ascii_whitespace() && !quoted => return (&s[..i], s[i..].trim_start()),
            _ => {}
        }
    }
    (s, "")
}

fn is_key_type(t: &str) -> bool {
    t.starts_with("ssh-") || t.starts_with("ecdsa-") || t.starts_with("sk-")
}

fn parse_line(line: &str) -> Result<Signer, String> {
    let (principal, rest) = token(line);
    let principal = principal.trim_matches('"');
    if principal
        .bytes()
        .any(|b| matches!(b, b'*' | b'?' | b'!' | b','))
    {
        return Err(format!(
            "principal {:?}: exactly one key_id, no pattern or list",
            principal.escape_debug().to_string()
        ));
    }
    if !valid_key_id(principal) {
        return Err(format!(
            "principal {:?} is not 1-64 characters of [A-Za-z0-9._@-]",
            principal.escape_debug().to_string()
        ));
    }
    let (first, after) = token(rest);
    let (options, key_text) = if is_key_type(first) {
        ("", rest)
    } else {
        (first, after)
    };
    let opts = parse_options(options)?;
    let key = PublicKey::from_openssh(key_text).map_err(|e| format!("not a public key: {e}"))?;
    let role = role_of(key.comment())?;
    let mut s =
        Signer::from_authorized_key(principal, role, &key.to_openssh().unwrap_or_default())?;
    s.valid_after = opts.valid_after;
    s.valid_before = opts.valid_before;
    Ok(s)
}

fn role_of(comment: &str) -> Result<Role, String> {
    let mut roles = comment
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix(ROLE_WORD));
    let role = match roles.next() {
        Some("operational") => Role::Operational,
        Some("recovery") => Role::Recovery,
        Some(other) => {
            return Err(format!(
                "{ROLE_WORD}{:?}: must be operational or recovery",
                other.escape_debug().to_string()
            ));
        }
        None => {
            return Err(format!(
                "the key's comment must carry {ROLE_WORD}operational or {ROLE_WORD}recovery"
            ));
        }
    };
    if roles.next().is_some() {
        return Err(format!("the comment carries {ROLE_WORD} twice"));
    }
    Ok(role)
}

#[derive(Default)]
struct Options {
    valid_after: Option<Timestamp>,
    valid_before: Option<Timestamp>,
}

fn parse_options(text: &str) -> Result<Options, String> {
    let mut out = Options::default();
    let mut namespace_ok = false;
    let mut seen: Vec<&str> = Vec::new();
    for opt in split_options(text) {
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(unquote(v)?)),
            None => (opt, None),
        };
        let name_lc = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return Err(format!("option {name} given twice"));
        }
        seen.push(name);
        match (name_lc.as_str(), value) {
            ("cert-authority", _) => {
                return Err("cert-authority is refused: the agent trusts keys, never a CA".into());
            }
            ("namespaces", Some(v)) => {
                namespace_ok = v.split(',').any(|n| n == NAMESPACE);
                if !namespace_ok {
                    return Err(format!("namespaces={v:?} does not list {NAMESPACE}"));
                }
            }
            ("valid-after", Some(v)) => out.valid_after = Some(parse_time(v, "valid-after")?),
            ("valid-before", Some(v)) => out.valid_before = Some(parse_time(v, "valid-before")?),
            _ => {
                return Err(format!(
                    "option {:?} is not supported",
                    opt.escape_debug().to_string()
                ));
            }
        }
    }
    if !namespace_ok {
        return Err(format!("namespaces=\"{NAMESPACE}\" is required"));
    }
    Ok(out)
}

fn split_options(text: &str) -> Vec<&str> {
    if text.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

fn unquote(v: &str) -> Result<&str, String> {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .filter(|v| !v.contains('"'))
        .ok_or_else(|| {
            format!(
                "option value {:?} must be in double quotes",
                v.escape_debug().to_string()
            )
        })
}

/// `YYYYMMDD[HHMM[SS]]Z`, as `ssh-keygen` writes it, UTC only.
fn parse_time(v: &str, name: &str) -> Result<Timestamp, String> {
    let bad = || format!("{name}={v:?}: want YYYYMMDD[HHMM[SS]]Z (UTC)");
    let digits = v.strip_suffix('Z').ok_or_else(bad)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let (date, hm, s) = match digits.len() {
        8 => (digits, "0000", "00"),
        12 => (&digits[..8], &digits[8..12], "00"),
        14 => (&digits[..8], &digits[8..12], &digits[12..]),
        _ => return Err(bad()),
    };
    let rfc = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &date[..4],
        &date[4..6],
        &date[6..8],
        &hm[..2],
        &hm[2..],
        s
    );
    Timestamp::parse_rfc3339(&rfc).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = include_str!("../../vectors/sshsig/keys/ed25519.pub");
    const OTHER: &str = include_str!("../../vectors/sshsig/keys/other-ed25519.pub");

    fn key(k: &str) -> String {
        let mut it = k.split_ascii_whitespace();
        format!("{} {}", it.next().unwrap(), it.next().unwrap())
    }

    #[test]
    fn a_line_carries_key_id_role_and_validity() {
        let text = format!(
            "# comment\n\nops-2026 namespaces=\"felhom-op-v1\",valid-after=\"20260101Z\",valid-before=\"203001011230Z\" {} felhom-role=operational\nrec-1 namespaces=\"git,felhom-op-v1\" {} laptop felhom-role=recovery\n",
            key(KEY),
            key(OTHER)
        );
        let s = parse_allowed_signers(&text, "as").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].key_id.as_str(), s[0].role),
            ("ops-2026", Role::Operational)
        );
        assert_eq!(
            s[0].valid_after,
            Some(Timestamp::parse_rfc3339("2026-01-01T00:00:00Z").unwrap())
        );
        assert_eq!(
            s[0].valid_before,
            Some(Timestamp::parse_rfc3339("2030-01-01T12:30:00Z").unwrap())
        );
        assert_eq!((s[1].key_id.as_str(), s[1].role), ("rec-1", Role::Recovery));
    }

    #[test]
    fn refused_lines_name_their_line_and_why() {
        let k = key(KEY);
        let cases: &[(String, &str)] = &[
            (format!("ops {k} felhom-role=operational"), "namespaces"),
            (
                format!("ops namespaces=\"git\" {k} felhom-role=operational"),
                "does not list",
            ),
            (
                format!(
                    "ops cert-authority,namespaces=\"felhom-op-v1\" {k} felhom-role=operational"
                ),
                "cert-authority",
            ),
            (
                format!("ops namespaces=\"felhom-op-v1\" {k}"),
                "felhom-role",
            ),
            (
                format!("ops namespaces=\"felhom-op-v1\" {k} felhom-role=admin"),
                "operational or recovery",
            ),
            (
                format!("ops,rec namespaces=\"felhom-op-v1\" {k} felhom-role=operational"),
                "exactly one",
            ),
            (
                format!("ops* namespaces=\"felhom-op-v1\" {k} felhom-role=operational"),
                "exactly one",
            ),
            (
                format!(
                    "ops namespaces=\"felhom-op-v1\",valid-before=\"20300101\" {k} felhom-role=operational"
                ),
                "UTC",
            ),
            (
                format!(
                    "ops namespaces=\"felhom-op-v1\",no-touch-required {k} felhom-role=operational"
                ),
                "not supported",
            ),
            (
                "ops namespaces=\"felhom-op-v1\" ssh-ed25519 @@@ felhom-role=operational"
                    .to_string(),
                "not a public key",
            ),
        ];
        for (line, want) in cases {
            let text = format!("# first\n{line}\n");
            let e = parse_allowed_signers(&text, "as").unwrap_err();
            assert_eq!(e.field, "as:2", "{line}");
            assert!(e.reason.contains(want), "{line}: {e}");
        }
        let dup = format!(
            "a namespaces=\"felhom-op-v1\" {k} felhom-role=operational\nb namespaces=\"felhom-op-v1\" {k} felhom-role=recovery\n"
        );
        assert!(
            parse_allowed_signers(&dup, "as")
                .unwrap_err()
                .reason
                .contains("same key")
        );
        assert!(parse_allowed_signers("# nothing\n", "as").is_err());
    }
}
