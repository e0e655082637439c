//! What a desired guest that does not exist yet is made from: the desired-state fields
//! only a new guest uses (`source`, `hostname`, `storage`, `rootfs_bytes`), read and
//! checked. This module only parses; it never plans, journals or talks to Proxmox, and
//! never takes provenance from the document (the agent records its own).

use serde_json::{Map, Value};

use crate::proxmox::MAX_ROOTFS_GIB;

/// One GiB: the root disk is sized in whole GiB.
pub(crate) const GIB: u64 = 1 << 30;
/// The longest volume id accepted in a desired `source`.
pub(crate) const MAX_VOLID: usize = 255;

/// What a new guest is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `{"backup": VOLID}`: restore that vzdump or Proxmox Backup Server backup.
    Backup(String),
    /// `{"template": VOLID}`: create from that OS template.
    Template(String),
}

impl Source {
    /// `backup` or `template`: the journaled `source` param.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Backup(_) => "backup",
            Source::Template(_) => "template",
        }
    }

    /// The volume id.
    pub fn volid(&self) -> &str {
        match self {
            Source::Backup(v) | Source::Template(v) => v,
        }
    }
}

/// The desired fields only a guest that does not exist yet uses; all optional, and all
/// ignored while the guest exists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provision {
    /// What to create it from; without it an absent guest is `unprovisionable`.
    pub source: Option<Source>,
    /// Its host name.
    pub hostname: Option<String>,
    /// The storage for its root disk (required with `source`).
    pub storage: Option<String>,
    /// Its root disk size in bytes, rounded up to whole GiB (a restore keeps the
    /// backup's size when absent; a template create takes Proxmox's 4 GiB).
    pub rootfs_bytes: Option<u64>,
}

/// The desired-state keys this module reads.
pub(crate) const KEYS: [&str; 4] = ["source", "hostname", "storage", "rootfs_bytes"];

/// Where (a path in the document) and why a field is refused.
pub(crate) type Refused = (String, String);

fn invalid(path: &str, reason: &str) -> Refused {
    (path.to_owned(), reason.to_owned())
}

fn present<'a>(o: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    o.get(key).filter(|v| !v.is_null())
}

/// Reads the provisioning fields of the desired guest object `o` at `path`.
pub(crate) fn parse(o: &Map<String, Value>, path: &str) -> Result<Provision, Refused> {
    let source = match present(o, "source") {
        None => None,
        Some(v) => Some(parse_source(v, &format!("{path}.source"))?),
    };
    let hostname = match present(o, "hostname") {
        None => None,
        Some(Value::String(s)) if is_hostname(s) => Some(s.clone()),
        Some(_) => {
            return Err(invalid(
                &format!("{path}.hostname"),
                "must be a DNS name: labels of letters, digits and inner '-', at most 253 bytes",
            ));
        }
    };
    let storage = match present(o, "storage") {
        None => None,
        Some(Value::String(s)) if is_storage_id(s) => Some(s.clone()),
        Some(_) => {
            return Err(invalid(
                &format!("{path}.storage"),
                "must be a storage id: a letter, then letters, digits, '-', '_' or '.', at most 64",
            ));
        }
    };
    let rootfs_bytes = match present(o, "rootfs_bytes") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|n| *n >= 1 && n.div_ceil(GIB) <= MAX_ROOTFS_GIB)
                .ok_or_else(|| {
                    invalid(
                        &format!("{path}.rootfs_bytes"),
                        "must be an integer of at least 1 and at most 128 TiB",
                    )
                })?,
        ),
    };
    if source.is_some() && storage.is_none() {
        return Err(invalid(
            &format!("{path}.storage"),
            "is required with source (the storage the new guest's root disk goes to)",
        ));
    }
    Ok(Provision {
        source,
        hostname,
        storage,
        rootfs_bytes,
    })
}

fn parse_source(v: &Value, path: &str) -> Result<Source, Refused> {
    let o = v
        .as_object()
        .ok_or_else(|| invalid(path, "must be an object"))?;
    if o.len() != 1 {
        return Err(invalid(
            path,
            "must have exactly one of \"backup\" or \"template\"",
        ));
    }
    let (key, value) = o.iter().next().ok_or_else(|| invalid(path, "is empty"))?;
    let at = format!("{path}.{key}");
    let (make, content): (fn(String) -> Source, &str) = match key.as_str() {
        "backup" => (Source::Backup, "backup/"),
        "template" => (Source::Template, "vztmpl/"),
        _ => {
            return Err(invalid(&at, "unknown field (known: backup, template)"));
        }
    };
    let volid = value
        .as_str()
        .ok_or_else(|| invalid(&at, "must be a string"))?;
    if volid.len() > MAX_VOLID {
        return Err(invalid(&at, "longer than 255 bytes"));
    }
    let good = volid.split_once(':').is_some_and(|(storage, name)| {
        is_storage_id(storage) && (name.starts_with(content) || key == "backup" && pbs_name(name))
    });
    if !good {
        return Err(invalid(
            &at,
            &format!("must be a volume id STORAGE:{content}NAME"),
        ));
    }
    Ok(make(volid.to_owned()))
}

/// A Proxmox Backup Server snapshot name as PVE lists it: `backup/ct/VMID/TIME`.
fn pbs_name(name: &str) -> bool {
    name.starts_with("backup/ct/")
}

fn is_storage_id(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphabetic()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        })
}
