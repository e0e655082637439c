//! The desired state of this host's guests and where it comes from.
//!
//! A [`DesiredState`] says, per guest, only what is managed: run state, spec (cores,
//! memory) and description, each optional. Providers: [`EmptyProvider`] (nothing
//! managed), [`StaticProvider`] (tests and benches) and [`FileProvider`]
//! (`reconcile.desired_file`, re-read when it changes; a malformed file keeps the last
//! good state); the hub's document is kept by [`super::desired_cache`] and provided by
//! the app, which knows the hub. This module only reads; it never writes the file
//! and never judges actual state.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::base::encoding::hex_encode;

/// The largest desired-state document read, from a file or the hub.
pub(crate) const MAX_FILE_BYTES: u64 = 16 << 20;
/// The lowest vmid Proxmox allows.
pub(crate) const MIN_VMID: u32 = 100;
/// The highest vmid Proxmox allows.
pub(crate) const MAX_VMID: u32 = 999_999_999;
/// The longest description Proxmox stores (bytes).
pub(crate) const MAX_DESCRIPTION: usize = 8192;

/// Whether a guest should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// `running`.
    Running,
    /// `stopped`.
    Stopped,
}

impl Run {
    /// `running` or `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            Run::Running => "running",
            Run::Stopped => "stopped",
        }
    }
}

/// The managed part of a guest's size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spec {
    /// CPU cores.
    pub cores: Option<u32>,
    /// Memory in bytes (Proxmox stores MiB; see [`crate::reconcile::plan`]).
    pub memory_bytes: Option<u64>,
    /// Root disk size in bytes: accepted because the hub's spec carries it, but never
    /// reconciled (growing a disk is a separate, one-way operation).
    pub disk_bytes: Option<u64>,
    /// The root disk's wanted size in bytes: a larger one grows the disk (benign); a
    /// smaller one is never attempted and is reported `shrink_refused`.
    pub rootfs_bytes: Option<u64>,
}

/// What is wanted of one guest; `None` leaves a field unmanaged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredGuest {
    /// The guest.
    pub vmid: u32,
    /// Run state.
    pub run: Option<Run>,
    /// Size.
    pub spec: Option<Spec>,
    /// Description (compared normalized).
    pub description: Option<String>,
    /// What only a guest that does not exist yet uses: its source, host name, storage
    /// and root disk size (see `super::source`).
    pub provision: super::source::Provision,
}

impl DesiredGuest {
    /// A guest with nothing managed yet.
    pub fn new(vmid: u32) -> Self {
        DesiredGuest {
            vmid,
            ..DesiredGuest::default()
        }
    }
}

/// The desired state of every managed guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// The source's generation number (0 when it has none).
    pub generation: u64,
    /// Managed guests by vmid.
    pub guests: BTreeMap<u32, DesiredGuest>,
}

impl DesiredState {
    /// A state built from guests (a later duplicate vmid replaces an earlier one).
    pub fn from_guests(generation: u64, guests: impl IntoIterator<Item = DesiredGuest>) -> Self {
        DesiredState {
            generation,
            guests: guests.into_iter().map(|g| (g.vmid, g)).collect(),
        }
    }

    /// Parses the desired-state JSON shape:
    /// `{"generation":7,"guests":[{"vmid":100,"run":"running","spec":{"cores":4,
    /// "memory_bytes":1073741824},"description":"web"}]}`. Every field but `vmid` is
    /// optional; unknown fields and duplicate vmids are errors naming their path.
    pub fn from_json(bytes: &[u8]) -> Result<DesiredState, Invalid> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| Invalid {
            path: "$".to_owned(),
            reason: format!("not JSON: {e}"),
        })?;
        let top = object(&v, "$")?;
        only_keys(top, "$", &["generation", "guests"])?;
        let generation = match top.get("generation") {
            None | Some(Value::Null) => 0,
            Some(g) => g
                .as_u64()
                .ok_or_else(|| invalid("generation", "must be a non-negative integer"))?,
        };
        let mut guests = BTreeMap::new();
        match top.get("guests") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let path = format!("guests[{i}]");
                    let g = guest(item, &path)?;
                    if guests.contains_key(&g.vmid) {
                        return Err(invalid(
                            &format!("{path}.vmid"),
                            &format!("vmid {} appears twice", g.vmid),
                        ));
                    }
                    guests.insert(g.vmid, g);
                }
            }
            Some(_) => return Err(invalid("guests", "must be an array")),
        }
        Ok(DesiredState { generation, guests })
    }
}

/// A desired-state document that is not valid: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Where in the document, e.g. `guests[2].spec.cores` (`$` for the whole).
    pub path: String,
    /// Why it is rejected.
    pub reason: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

impl std::error::Error for Invalid {}

fn invalid(path: &str, reason: &str) -> Invalid {
    Invalid {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

fn object<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, Invalid> {
    v.as_object()
        .ok_or_else(|| invalid(path, "must be an object"))
}

fn only_keys(o: &Map<String, Value>, path: &str, known: &[&str]) -> Result<(), Invalid> {
    match o.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => {
            let at = if path == "$" {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            Err(invalid(
                &at,
                &format!("unknown field (known: {})", known.join(", ")),
            ))
        }
        None => Ok(()),
    }
}

fn present<'a>(o: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    o.get(key).filter(|v| !v.is_null())
}

fn guest(v: &Value, path: &str) -> Result<DesiredGuest, Invalid> {
    let o = object(v, path)?;
    let mut known = vec!["vmid", "run", "spec", "description"];
    known.extend(super::source::KEYS);
    only_keys(o, path, &known)?;
    let vmid_path = format!("{path}.vmid");
    let vmid = present(o, "vmid")
        .ok_or_else(|| invalid(&vmid_path, "is required"))?
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| (MIN_VMID..=MAX_VMID).contains(n))
        .ok_or_else(|| {
            invalid(
                &vmid_path,
                &format!("must be an integer in {MIN_VMID}..={MAX_VMID}"),
            )
        })?;
    let run = match present(o, "run") {
        None => None,
        Some(Value::String(s)) if s == "running" => Some(Run::Running),
        Some(Value::String(s)) if s == "stopped" => Some(Run::Stopped),
        Some(_) => {
            return Err(invalid(
                &format!("{path}.run"),
                "must be \"running\" or \"stopped\"",
            ));
        }
    };
    let spec = match present(o, "spec") {
        None => None,
        Some(s) => Some(spec(s, &format!("{path}.spec"))?),
    };
    let description = match present(o, "description") {
        None => None,
        Some(Value::String(s)) if s.len() <= MAX_DESCRIPTION => Some(s.clone()),
        Some(Value::String(_)) => {
            return Err(invalid(
                &format!("{path}.description"),
                &format!("longer than {MAX_DESCRIPTION} bytes"),
            ));
        }
        Some(_) => return Err(invalid(&format!("{path}.description"), "must be a string")),
    };
    let provision =
        super::source::parse(o, path).map_err(|(path, reason)| Invalid { path, reason })?;
    Ok(DesiredGuest {
        vmid,
        run,
        spec,
        description,
        provision,
    })
}

/// The smallest `spec.rootfs_bytes` taken: 1 MiB.
const MIN_ROOTFS_BYTES: u64 = 1 << 20;
/// The largest `spec.rootfs_bytes` taken: 1 PiB.
const MAX_ROOTFS_BYTES: u64 = 1 << 50;

fn spec(v: &Value, path: &str) -> Result<Spec, Invalid> {
    let o = object(v, path)?;
    only_keys(
        o,
        path,
        &["cores", "memory_bytes", "disk_bytes", "rootfs_bytes"],
    )?;
    let cores = match present(o, "cores") {
        None => None,
        Some(c) => Some(
            c.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| (1..=8192).contains(n))
                .ok_or_else(|| {
                    invalid(&format!("{path}.cores"), "must be an integer in 1..=8192")
                })?,
        ),
    };
    let memory_bytes = match present(o, "memory_bytes") {
        None => None,
        Some(m) => Some(m.as_u64().filter(|n| *n >= 16 << 20).ok_or_else(|| {
            invalid(
                &format!("{path}.memory_bytes"),
                "must be an integer of at least 16 MiB (16777216)",
            )
        })?),
    };
    let disk_bytes = match present(o, "disk_bytes") {
        None => None,
        Some(d) => Some(d.as_u64().ok_or_else(|| {
            invalid(
                &format!("{path}.disk_bytes"),
                "must be a non-negative integer",
            )
        })?),
    };
    let rootfs_bytes = match present(o, "rootfs_bytes") {
        None => None,
        Some(r) => Some(
            r.as_u64()
                .filter(|n| (MIN_ROOTFS_BYTES..=MAX_ROOTFS_BYTES).contains(n))
                .ok_or_else(|| {
                    invalid(
                        &format!("{path}.rootfs_bytes"),
                        "must be an integer from 1 MiB (1048576) to 1 PiB (1125899906842624)",
                    )
                })?,
        ),
    };
    Ok(Spec {
        cores,
        memory_bytes,
        disk_bytes,
        rootfs_bytes,
    })
}

/// Why a provider has no desired state to give.
#[derive(Debug)]
#[non_exhaustive]
pub enum DesiredError {
    /// The file could not be read and no earlier version was good.
    Read {
        /// The file.
        file: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_FILE_BYTES`] and no earlier version was good.
    TooLarge {
        /// The file.
        file: PathBuf,
        /// Its size.
        len: u64,
    },
    /// The file is not a valid desired state and no earlier version was good.
    Invalid {
        /// The file.
        file: PathBuf,
        /// Where and why.
        source: Invalid,
    },
    /// The hub has served no good document yet and none is cached: no pass runs
    /// (never one toward an empty state).
    NotYet {
        /// Why none is held.
        why: String,
    },
}

impl fmt::Display for DesiredError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DesiredError::Read { file, source } => {
                write!(f, "cannot read desired state {}: {source}", file.display())
            }
            DesiredError::TooLarge { file, len } => write!(
                f,
                "desired state {} is {len} bytes, more than {MAX_FILE_BYTES}",
                file.display()
            ),
            DesiredError::Invalid { file, source } => {
                write!(f, "desired state {}: {source}", file.display())
            }
            DesiredError::NotYet { why } => write!(f, "no desired state yet: {why}"),
        }
    }
}

impl std::error::Error for DesiredError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DesiredError::Read { source, .. } => Some(source),
            DesiredError::Invalid { source, .. } => Some(source),
            DesiredError::TooLarge { .. } | DesiredError::NotYet { .. } => None,
        }
    }
}

/// A source of desired state.
pub trait DesiredProvider: Send + Sync {
    /// The current desired state (re-read from the source if it changed).
    fn desired(&self) -> Result<DesiredState, DesiredError>;

    /// Whether the source changed since the last [`DesiredProvider::desired`] call;
    /// cheap enough to ask every second.
    fn changed(&self) -> bool {
        false
    }
}

/// Nothing is managed: every pass plans nothing.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct EmptyProvider;

impl DesiredProvider for EmptyProvider {
    fn desired(&self) -> Result<DesiredState, DesiredError> {
        Ok(DesiredState::default())
    }
}

/// A desired state held in memory; [`StaticProvider::set`] replaces it and reports a
/// change.
#[derive(Debug, Default)]
pub struct StaticProvider {
    state: Mutex<(DesiredState, bool)>,
}

impl StaticProvider {
    /// A provider giving `state`.
    pub fn new(state: DesiredState) -> Self {
        StaticProvider {
            state: Mutex::new((state, false)),
        }
    }

    /// Replaces the state; [`DesiredProvider::changed`] is true until the next read.
    pub fn set(&self, state: DesiredState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = (state, true);
    }
}

impl DesiredProvider for StaticProvider {
    fn desired(&self) -> Result<DesiredState, DesiredError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.1 = false;
        Ok(st.0.clone())
    }

    fn changed(&self) -> bool {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1
    }
}

/// What identifies one version of the file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

#[derive(Debug, Default)]
struct FileState {
    /// The stamp of the last version read (good or bad).
    stamp: Option<Stamp>,
    /// SHA-256 of the last version read.
    hash: Option<String>,
    /// The last good state.
    good: Option<DesiredState>,
    /// Why the last version read was rejected, if it was.
    last_error: Option<String>,
}

/// The desired-state file: re-read when its mtime, length or content hash changes. A
/// malformed, unreadable or missing file keeps the last good state and logs why once
/// per bad version; with no good version yet, the error is returned.
#[derive(Debug)]
pub(crate) struct FileProvider {
    path: PathBuf,
    state: Mutex<FileState>,
}

impl FileProvider {
    /// A provider for `path` (not read until first asked).
    pub(crate) fn new(path: impl Into<PathBuf>) -> Self {
        FileProvider {
            path: path.into(),
            state: Mutex::new(FileState::default()),
        }
    }

    fn stamp(&self) -> std::io::Result<Stamp> {
        let m = std::fs::metadata(&self.path)?;
        Ok(Stamp {
            modified: m.modified().ok(),
            len: m.len(),
        })
    }

    fn read(&self) -> Result<(Vec<u8>, Stamp), DesiredError> {
        use std::io::Read;
        let read_err = |source| DesiredError::Read {
            file: self.path.clone(),
            source,
        };
        let stamp = self.stamp().map_err(read_err)?;
        if stamp.len > MAX_FILE_BYTES {
            return Err(DesiredError::TooLarge {
                file: self.path.clone(),
                len: stamp.len,
            });
        }
        let mut bytes = Vec::new();
        std::fs::File::open(&self.path)
            .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
            .map_err(read_err)?;
        Ok((bytes, stamp))
    }

    /// Keeps the last good state after a failure, logging the failure once.
    fn fall_back(
        &self,
        st: &mut FileState,
        err: DesiredError,
    ) -> Result<DesiredState, DesiredError> {
        let why = err.to_string();
        if st.last_error.as_deref() != Some(why.as_str()) {
            match &st.good {
                Some(good) => crate::warn!(
                    desired_rejected,
                    "desired state file rejected; keeping the last good state",
                    file = self.path.display(),
                    error = why,
                    kept_generation = good.generation
                ),
                None => crate::warn!(
                    desired_rejected,
                    "desired state file rejected; no good state yet",
                    file = self.path.display(),
                    error = why
                ),
            }
            st.last_error = Some(why);
        }
        st.good.clone().ok_or(err)
    }
}

impl DesiredProvider for FileProvider {
    fn desired(&self) -> Result<DesiredState, DesiredError> {
        // The file is small: reading and hashing it on every pass is cheap and, unlike
        // the mtime, cannot miss a same-second rewrite of equal length.
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (bytes, stamp) = match self.read() {
            Ok(r) => r,
            Err(e) => {
                st.stamp = self.stamp().ok();
                return self.fall_back(&mut st, e);
            }
        };
        let hash = hex_encode(&Sha256::digest(&bytes));
        st.stamp = Some(stamp);
        if st.hash.as_deref() == Some(hash.as_str())
            && st.last_error.is_none()
            && let Some(good) = &st.good
        {
            return Ok(good.clone());
        }
        st.hash = Some(hash);
        match DesiredState::from_json(&bytes) {
            Ok(state) => {
                if st.good.as_ref() != Some(&state) {
                    crate::info!(
                        desired_loaded,
                        "desired state loaded",
                        file = self.path.display(),
                        generation = state.generation,
                        guests = state.guests.len()
                    );
                }
                st.good = Some(state.clone());
                st.last_error = None;
                Ok(state)
            }
            Err(source) => {
                let err = DesiredError::Invalid {
                    file: self.path.clone(),
                    source,
                };
                self.fall_back(&mut st, err)
            }
        }
    }

    fn changed(&self) -> bool {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match (self.stamp(), &st.stamp) {
            (Ok(now), Some(seen)) => now != *seen,
            // Never read, or it reappeared after vanishing: worth a look.
            (Ok(_), None) => true,
            (Err(_), Some(_)) => true,
            (Err(_), None) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_document_parses() {
        let s = DesiredState::from_json(
            br#"{"generation":7,"guests":[{"vmid":100,"run":"running","spec":{"cores":4,
            "memory_bytes":1073741824},"description":"web"},{"vmid":101}]}"#,
        )
        .unwrap();
        assert_eq!(s.generation, 7);
        let g = &s.guests[&100];
        assert_eq!(g.run, Some(Run::Running));
        assert_eq!(
            g.spec,
            Some(Spec {
                cores: Some(4),
                memory_bytes: Some(1 << 30),
                disk_bytes: None,
                rootfs_bytes: None,
            })
        );
        assert_eq!(g.description.as_deref(), Some("web"));
        assert_eq!(s.guests[&101], DesiredGuest::new(101));
        let s = DesiredState::from_json(
            br#"{"guests":[{"vmid":100,"spec":{"rootfs_bytes":17179869184}}]}"#,
        )
        .unwrap();
        let spec = s.guests[&100].spec.unwrap();
        assert_eq!(spec.rootfs_bytes, Some(16 << 30));
    }

    #[test]
    fn errors_name_the_path() {
        let cases: [(&str, &str); 12] = [
            (
                r#"{"guests":[{"vmid":100,"spec":{"rootfs_bytes":0}}]}"#,
                "guests[0].spec.rootfs_bytes",
            ),
            (
                r#"{"guests":[{"vmid":100,"spec":{"rootfs_bytes":1.5e9}}]}"#,
                "guests[0].spec.rootfs_bytes",
            ),
            (
                r#"{"guests":[{"vmid":100,"spec":{"rootfs_bytes":2251799813685248}}]}"#,
                "guests[0].spec.rootfs_bytes",
            ),
            (r#"{"generation":1,"extra":true}"#, "extra"),
            (
                r#"{"guests":[{"vmid":100},{"vmid":101,"spce":{}}]}"#,
                "guests[1].spce",
            ),
            (
                r#"{"guests":[{"vmid":100,"spec":{"cpus":2}}]}"#,
                "guests[0].spec.cpus",
            ),
            (r#"{"guests":[{"run":"running"}]}"#, "guests[0].vmid"),
            (r#"{"guests":[{"vmid":99}]}"#, "guests[0].vmid"),
            (
                r#"{"guests":[{"vmid":100,"run":"paused"}]}"#,
                "guests[0].run",
            ),
            (
                r#"{"guests":[{"vmid":100,"spec":{"cores":0}}]}"#,
                "guests[0].spec.cores",
            ),
            (
                r#"{"guests":[{"vmid":100},{"vmid":100}]}"#,
                "guests[1].vmid",
            ),
            (r#"{"generation":-1}"#, "generation"),
        ];
        for (doc, path) in cases {
            let e = DesiredState::from_json(doc.as_bytes()).unwrap_err();
            assert_eq!(e.path, path, "{doc}: {e}");
        }
        let e = DesiredState::from_json(b"{not json").unwrap_err();
        assert_eq!(e.path, "$");
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("felhom-desired-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn file_provider_rereads_and_keeps_last_good() {
        let dir = scratch("reread");
        let file = dir.join("desired.json");
        let p = FileProvider::new(&file);
        assert!(!p.changed(), "absent and never read: nothing to look at");
        assert!(matches!(p.desired(), Err(DesiredError::Read { .. })));

        // Writes a new document and reads it back, which the provider must notice.
        let write_and_read = |doc: &[u8]| {
            std::fs::write(&file, doc).unwrap();
            assert!(p.changed());
            let read = p.desired().unwrap();
            assert!(!p.changed(), "nothing changed since the read");
            read
        };
        let one = write_and_read(br#"{"generation":1,"guests":[{"vmid":100,"run":"running"}]}"#);
        assert_eq!(one.generation, 1);
        // Different length, so the change shows even within one mtime tick.
        let two = write_and_read(br#"{"generation":2,"guests":[{"vmid":100,"run":"stopped"}]}  "#);
        assert_eq!(two.generation, 2);
        assert_eq!(two.guests[&100].run, Some(Run::Stopped));

        let lines = crate::base::log::tap();
        std::fs::write(
            &file,
            br#"{"generation":3,"guests":[{"vmid":100,"bogus":1}]}"#,
        )
        .unwrap();
        assert_eq!(
            p.desired().unwrap(),
            two,
            "malformed file keeps the last good state"
        );
        assert_eq!(p.desired().unwrap(), two);
        let text = String::from_utf8(lines.lock().unwrap().clone()).unwrap();
        let why: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("keeping the last good state") && l.contains("reread"))
            .collect();
        assert_eq!(why.len(), 1, "logged once per bad version: {why:?}");
        assert!(why[0].contains("guests[0].bogus"), "{}", why[0]);

        std::fs::remove_file(&file).unwrap();
        assert!(p.changed(), "a vanished file is a change");
        assert_eq!(
            p.desired().unwrap(),
            two,
            "a missing file keeps the last good state"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
