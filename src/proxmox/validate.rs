//! Strict patterns for every value the agent puts into a Proxmox API path, form or
//! command line: vmids, node, storage and snapshot names, volume ids, config keys,
//! host names, token ids. A value that does not match is refused before anything is
//! sent or run, with an [`InvalidArgument`] naming the argument.
//!
//! Shared by the API client and the privileged backend; it only inspects strings and
//! never rewrites a value to make it fit.

use std::fmt;

use crate::net::excerpt;

/// The smallest and largest vmid Proxmox accepts.
pub const VMID_RANGE: std::ops::RangeInclusive<u32> = 100..=999_999_999;

/// An argument refused before it was sent to Proxmox or put on a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidArgument {
    /// The argument's name, e.g. `vmid`, `snapshot`, `storage`.
    pub name: &'static str,
    /// The refused value, escaped and bounded for display.
    pub value: String,
    /// Why it was refused.
    pub reason: &'static str,
}

impl InvalidArgument {
    /// Refusal of `value` for argument `name`.
    pub fn new(name: &'static str, value: &str, reason: &'static str) -> Self {
        InvalidArgument {
            name,
            value: excerpt(value.as_bytes(), 128),
            reason,
        }
    }
}

impl fmt::Display for InvalidArgument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {} {:?}: {}", self.name, self.value, self.reason)
    }
}

impl std::error::Error for InvalidArgument {}

type Check = Result<(), &'static str>;

/// Applies a check and names the argument on failure.
pub(crate) fn check(
    name: &'static str,
    value: &str,
    f: impl FnOnce(&str) -> Check,
) -> Result<(), InvalidArgument> {
    f(value).map_err(|reason| InvalidArgument::new(name, value, reason))
}

/// An ACL path: `/`, or `/`-separated segments of letters, digits, `-`, `_` and `.`
/// (`/nodes/pve-a`, `/vms/100`, `/storage/local-lvm`), at most 128 bytes.
pub(crate) fn acl_path(s: &str) -> Check {
    if s.len() > 128 {
        return Err("must be at most 128 bytes");
    }
    if s == "/" {
        return Ok(());
    }
    let Some(rest) = s.strip_prefix('/') else {
        return Err("must start with '/'");
    };
    let segment_ok = |seg: &str| {
        !seg.is_empty()
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    if rest.split('/').all(segment_ok) {
        Ok(())
    } else {
        Err("must be '/'-separated segments of letters, digits, '-', '_' and '.'")
    }
}

/// A vmid in Proxmox's range.
pub(crate) fn vmid(v: u32) -> Result<(), InvalidArgument> {
    if VMID_RANGE.contains(&v) {
        Ok(())
    } else {
        Err(InvalidArgument::new(
            "vmid",
            &v.to_string(),
            "must be between 100 and 999999999",
        ))
    }
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// A node name: letters, digits, inner hyphens (the UPID pattern).
pub(crate) fn node_name(s: &str) -> Check {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 63 {
        return Err("must be 1 to 63 characters");
    }
    if !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return Err("must start and end with a letter or digit");
    }
    if !b.iter().all(|&c| is_alnum(c) || c == b'-') {
        return Err("may contain only letters, digits and '-'");
    }
    Ok(())
}

/// A storage id (pve-storage-id): a letter, then letters, digits, `-`, `_`, `.`,
/// ending in a letter or digit.
pub(crate) fn storage_id(s: &str) -> Check {
    let b = s.as_bytes();
    if b.len() < 2 || b.len() > 64 {
        return Err("must be 2 to 64 characters");
    }
    if !b[0].is_ascii_alphabetic() {
        return Err("must start with a letter");
    }
    if !is_alnum(b[b.len() - 1]) {
        return Err("must end with a letter or digit");
    }
    if !b
        .iter()
        .all(|&c| is_alnum(c) || matches!(c, b'-' | b'_' | b'.'))
    {
        return Err("may contain only letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

/// A snapshot name (pve-configid, at most 40): a letter, then letters, digits and
/// `_`; `current` and `vzdump` are reserved by Proxmox.
pub(crate) fn snapshot_name(s: &str) -> Check {
    let b = s.as_bytes();
    if b.len() < 2 || b.len() > 40 {
        return Err("must be 2 to 40 characters");
    }
    if !b[0].is_ascii_alphabetic() {
        return Err("must start with a letter");
    }
    if !b.iter().all(|&c| is_alnum(c) || c == b'_') {
        return Err("may contain only letters, digits and '_'");
    }
    if s == "current" || s == "vzdump" {
        return Err("is a name Proxmox reserves");
    }
    Ok(())
}

/// A volume id `STORAGE:NAME` (a backup archive, a template): valid storage id, then
/// a name of letters, digits and `-_.+/:=@`, no `..` segment, no leading `/` or `-`.
pub(crate) fn volid(s: &str) -> Check {
    let Some((storage, name)) = s.split_once(':') else {
        return Err("must be STORAGE:NAME");
    };
    storage_id(storage).map_err(|_| "has an invalid storage part")?;
    if name.is_empty() || name.len() > 255 {
        return Err("name must be 1 to 255 characters");
    }
    if name.starts_with('/') || name.starts_with('-') {
        return Err("name must not start with '/' or '-'");
    }
    if !name
        .bytes()
        .all(|c| is_alnum(c) || matches!(c, b'-' | b'_' | b'.' | b'+' | b'/' | b':' | b'=' | b'@'))
    {
        return Err("name may contain only letters, digits and -_.+/:=@");
    }
    if name
        .split('/')
        .any(|seg| seg == ".." || seg == "." || seg.is_empty())
    {
        return Err("name must not have empty, '.' or '..' path segments");
    }
    Ok(())
}

/// A guest config key: lower-case letter, then lower-case letters, digits, `_`, `-`.
pub(crate) fn config_key(s: &str) -> Check {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 64 {
        return Err("must be 1 to 64 characters");
    }
    if !b[0].is_ascii_lowercase() {
        return Err("must start with a lower-case letter");
    }
    if !b
        .iter()
        .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
    {
        return Err("may contain only lower-case letters, digits, '_' and '-'");
    }
    Ok(())
}

/// A config value: any text but NUL (descriptions carry newlines), at most 64 KiB.
pub(crate) fn config_value(s: &str) -> Check {
    if s.len() > 64 * 1024 {
        return Err("must be at most 65536 bytes");
    }
    if s.contains('\0') {
        return Err("must not contain NUL");
    }
    Ok(())
}

/// A config digest: 1 to 64 hex digits (Proxmox sends a SHA-1).
pub(crate) fn digest(s: &str) -> Check {
    if s.is_empty() || s.len() > 64 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err("must be 1 to 64 hex digits");
    }
    Ok(())
}

/// A DNS host name: dot-separated labels of letters, digits and inner hyphens, each
/// at most 63, in all at most 253.
pub(crate) fn hostname(s: &str) -> Check {
    if s.is_empty() || s.len() > 253 {
        return Err("must be 1 to 253 characters");
    }
    for label in s.split('.') {
        let b = label.as_bytes();
        if b.is_empty() || b.len() > 63 {
            return Err("each label must be 1 to 63 characters");
        }
        if !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
            return Err("each label must start and end with a letter or digit");
        }
        if !b.iter().all(|&c| is_alnum(c) || c == b'-') {
            return Err("may contain only letters, digits, '-' and '.'");
        }
    }
    Ok(())
}

/// A short lower-case word: a content type (`backup`) or task type (`vzdump`).
pub(crate) fn word(s: &str) -> Check {
    if s.is_empty() || s.len() > 32 {
        return Err("must be 1 to 32 characters");
    }
    if !s
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        return Err("may contain only lower-case letters and digits");
    }
    Ok(())
}

/// An API token id `USER@REALM!NAME`: user without whitespace, `:` or `/`; realm and
/// token name a letter followed by letters, digits, `.`, `-`, `_`.
pub(crate) fn token_id(s: &str) -> Check {
    let Some((userid, name)) = s.rsplit_once('!') else {
        return Err("must be USER@REALM!TOKENNAME");
    };
    let Some((user, realm)) = userid.rsplit_once('@') else {
        return Err("must be USER@REALM!TOKENNAME (no '@' before '!')");
    };
    if user.is_empty() || user.len() > 64 {
        return Err("user part must be 1 to 64 characters");
    }
    if user
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ':' || c == '/' || c == '=')
    {
        return Err("user part must not contain whitespace, ':', '/' or '='");
    }
    let ident = |p: &str| {
        let b = p.as_bytes();
        b.len() >= 2
            && b.len() <= 64
            && b[0].is_ascii_alphabetic()
            && b.iter()
                .all(|&c| is_alnum(c) || matches!(c, b'.' | b'-' | b'_'))
    };
    if !ident(realm) {
        return Err("realm must be a letter then letters, digits, '.', '-', '_'");
    }
    if !ident(name) {
        return Err("token name must be a letter then letters, digits, '.', '-', '_'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmid_bounds() {
        assert!(vmid(100).is_ok());
        assert!(vmid(999_999_999).is_ok());
        let e = vmid(99).unwrap_err();
        assert_eq!(e.name, "vmid");
        assert!(e.to_string().contains("\"99\""));
        assert!(vmid(1_000_000_000).is_err());
    }

    #[test]
    fn names() {
        assert!(snapshot_name("pre_upgrade_2").is_ok());
        assert!(snapshot_name("Snap1").is_ok());
        for bad in [
            "current",
            "vzdump",
            "1snap",
            "a",
            "has-dash",
            "has space",
            &"x".repeat(41),
        ] {
            assert!(snapshot_name(bad).is_err(), "{bad}");
        }
        assert!(storage_id("local-lvm").is_ok());
        assert!(storage_id("pbs.backup_1").is_ok());
        for bad in ["-x", "local-", "1abc", "lo cal", "a"] {
            assert!(storage_id(bad).is_err(), "{bad}");
        }
        assert!(node_name("pve").is_ok());
        assert!(node_name("pve-a1").is_ok());
        for bad in ["", "-pve", "pve-", "pve.a", "pve/x"] {
            assert!(node_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn volids() {
        for good in [
            "local:backup/vzdump-lxc-100-2024_05_01-10_00_00.tar.zst",
            "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst",
            "pbs:backup/ct/100/2024-05-01T10:00:00Z",
        ] {
            assert!(volid(good).is_ok(), "{good}");
        }
        for bad in [
            "nostorage",
            "local:",
            "local:/etc/passwd",
            "local:backup/../../etc",
            "local:-rf",
            "local:a b",
            "local:a;b",
            "1x:backup/a",
            "local:backup//a",
        ] {
            assert!(volid(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_values_digests_hostnames() {
        assert!(config_key("description").is_ok());
        assert!(config_key("mp0").is_ok());
        assert!(config_key("Cores").is_err());
        assert!(config_key("lxc.apparmor").is_err());
        assert!(config_value("line 1\nline 2").is_ok());
        assert!(config_value("a\0b").is_err());
        assert!(digest("0123abcdef").is_ok());
        assert!(digest("xyz").is_err());
        assert!(hostname("web-1.example.net").is_ok());
        for bad in ["", "-web", "web_1", "a..b", "web.", &"a".repeat(64)] {
            assert!(hostname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn token_ids() {
        assert!(token_id("felhom-agent@pve!agent").is_ok());
        assert!(token_id("root@pam!opentofu").is_ok());
        for bad in [
            "felhom-agent@pve",
            "agent!tok",
            "@pve!tok",
            "a b@pve!tok",
            "u@pve!1tok",
            "u@p!tok",
            "u=x@pve!tok",
        ] {
            assert!(token_id(bad).is_err(), "{bad}");
        }
    }
}
