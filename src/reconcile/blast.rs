//! The blast-radius limit on benign changes: a stop is benign (it loses no data), so a
//! compromised hub could stop every guest at once; `reconcile.max_disruptive_per_hour`
//! bounds how many **disruptive** benign actions run per rolling hour.
//!
//! Disruptive: a stop, and a config write that lowers `cores` or `memory` (even if it
//! raises the other). A start, an increase and a description write never count and are
//! never held. The window is read from the journal (records marked `disruptive`, in
//! flight or succeeded within the hour), so a restart never resets it; compaction keeps
//! those records for the hour. An action beyond the limit is held, not sent: the engine
//! audits it once as `rate_limited` and reports [`super::action::Outcome::RateLimited`].
//!
//! An operator lets the currently held ones through, once, with
//! `felhom-agent resume --rate-limit`, which only writes the marker
//! [`RESUME_MARKER`] in the state directory ([`request_resume`]; no state lock needed).
//! A pass that knows what the previous pass held takes the marker durably
//! ([`crate::store::take_file`]) before anything is sent and releases exactly those.
//! This module never sends a request, never writes the journal, never audits (the
//! engine does, through the gate) and never holds a start or an increase.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::journal::Journal;
use super::plan::{Action, ActionKind};
use crate::base::sync::lock;
use crate::base::time::Timestamp;
use crate::proxmox::GuestConfig;
use crate::store::{Io, OsIo, replace_file, take_file};

/// The resume marker's file name in the state directory.
pub const RESUME_MARKER: &str = "rate-limit-resume.json";

/// `state_dir/rate-limit-resume.json`.
pub fn resume_marker_path(state_dir: &Path) -> PathBuf {
    state_dir.join(RESUME_MARKER)
}

/// What the resume marker holds: when the operator asked. Its presence is the request;
/// a marker that does not parse is taken and ignored (logged), never obeyed.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumeMarker {
    #[serde(with = "crate::base::time::rfc3339")]
    requested_at: Timestamp,
}

/// Asks the engine to let the actions it holds `rate_limited` through, once: writes the
/// marker in `state_dir` durably (temp file, fsync, rename, directory fsync). Needs no
/// state lock: the engine takes the marker by renaming it away, so a request written
/// meanwhile is never lost. Returns the marker's path.
pub fn request_resume(state_dir: &Path, at: Timestamp) -> std::io::Result<PathBuf> {
    let path = resume_marker_path(state_dir);
    let bytes = serde_json::to_vec(&ResumeMarker { requested_at: at })
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    replace_file(&OsIo, &path, &bytes)?;
    Ok(path)
}

/// Whether `action` is disruptive, given the guest's config as read this pass. A stop
/// is; a config write is when it lowers `cores` or `memory`, or sets one whose current
/// value is unknown or unset (an unset `cores` is every host core: fail closed).
pub fn is_disruptive(action: &Action, have: Option<&GuestConfig>) -> bool {
    match action.kind {
        ActionKind::Start | ActionKind::Resize | ActionKind::Create => false,
        ActionKind::Stop => true,
        ActionKind::SetConfig => {
            let Some(have) = have else {
                return true;
            };
            let lowers = |key: &str, now: Option<u64>| match action.params.get(key) {
                None => false,
                Some(v) => match (v.parse::<u64>(), now) {
                    (Ok(new), Some(old)) => new < old,
                    _ => true,
                },
            };
            lowers("cores", have.cores.map(u64::from)) || lowers("memory", have.memory_mib)
        }
    }
}

/// A held action's identity: its guest and kind.
type Key = (u32, ActionKind);

/// The limiter of one engine: the limit, where the resume marker is, and what the last
/// pass held (so each hold is audited once and a resume releases exactly those).
pub(crate) struct Limiter {
    limit: u32,
    marker: Option<PathBuf>,
    io: Arc<dyn Io>,
    state: Mutex<LimiterState>,
}

#[derive(Default)]
struct LimiterState {
    /// Passes that ran the limiter: the first after a start knows nothing held yet.
    passes: u64,
    held: BTreeSet<Key>,
}

/// The limiter's word on one disruptive action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Within the limit: send it.
    Go,
    /// Beyond the limit, but held last pass and released by the operator's resume.
    Released,
    /// Beyond the limit: hold it. `first` when it was not held last pass (audit it).
    Held {
        /// Not held last pass: audit and log it now.
        first: bool,
        /// Disruptive actions in the window, this pass's admitted ones included.
        in_window: usize,
    },
}

/// One pass's budget: the window's count, whether a resume was taken, what was held.
pub(crate) struct PassBudget {
    limit: u32,
    in_window: usize,
    resume: bool,
    previous: BTreeSet<Key>,
    held: BTreeSet<Key>,
    released: usize,
}

impl PassBudget {
    /// The limit per rolling hour.
    pub(crate) fn limit(&self) -> u32 {
        self.limit
    }

    /// Decides on one disruptive action; an admitted one counts at once.
    pub(crate) fn admit(&mut self, action: &Action) -> Admit {
        let key = (action.vmid, action.kind);
        let limit = usize::try_from(self.limit).unwrap_or(usize::MAX);
        if self.in_window < limit {
            self.in_window += 1;
            return Admit::Go;
        }
        if self.resume && self.previous.contains(&key) {
            self.in_window += 1;
            self.released += 1;
            return Admit::Released;
        }
        self.held.insert(key);
        Admit::Held {
            first: !self.previous.contains(&key),
            in_window: self.in_window,
        }
    }

    /// A disruptive action deferred before the limit looked at it (the hub's hold, an
    /// op in flight, a back-off): a hold already audited stays held and audited.
    pub(crate) fn carry(&mut self, action: &Action) {
        let key = (action.vmid, action.kind);
        if self.previous.contains(&key) {
            self.held.insert(key);
        }
    }
}

impl Limiter {
    /// A limiter of `limit` disruptive actions per rolling hour, with no resume marker.
    pub(crate) fn new(limit: u32) -> Limiter {
        Limiter {
            limit,
            marker: None,
            io: Arc::new(OsIo),
            state: Mutex::new(LimiterState::default()),
        }
    }

    /// Reads the operator's resume requests from `marker` through `io`.
    pub(crate) fn with_marker(mut self, marker: PathBuf, io: Arc<dyn Io>) -> Limiter {
        self.marker = Some(marker);
        self.io = io;
        self
    }

    /// Starts a pass at `now`: counts the window from `journal`, and takes a resume
    /// marker when a previous pass said what is held (after a start the marker waits
    /// one pass). The marker is durably gone before anything is released.
    pub(crate) fn begin(&self, journal: &Journal, now: Timestamp) -> PassBudget {
        let st = lock(&self.state);
        let resume = st.passes > 0 && self.take_resume();
        PassBudget {
            limit: self.limit,
            in_window: journal.disruptive_since(now),
            resume,
            previous: st.held.clone(),
            held: BTreeSet::new(),
            released: 0,
        }
    }

    /// Ends the pass: what it held is what the next one knows as held.
    pub(crate) fn end(&self, budget: PassBudget) {
        let mut st = lock(&self.state);
        st.passes = st.passes.saturating_add(1);
        if budget.resume {
            crate::info!(
                rate_limit_resumed,
                "operator resume: held disruptive actions let through once",
                released = budget.released,
                still_held = budget.held.len()
            );
        }
        st.held = budget.held;
    }

    fn take_resume(&self) -> bool {
        let Some(path) = &self.marker else {
            return false;
        };
        match take_file(self.io.as_ref(), path) {
            Ok(None) => false,
            Ok(Some(bytes)) => match serde_json::from_slice::<ResumeMarker>(&bytes) {
                Ok(m) => {
                    crate::info!(
                        rate_limit_resume_taken,
                        "operator asked to let rate-limited actions through",
                        requested_at = m.requested_at
                    );
                    true
                }
                Err(e) => {
                    crate::error!(
                        rate_limit_resume_invalid,
                        "resume marker does not parse: taken and ignored",
                        path = path.display(),
                        error = e
                    );
                    false
                }
            },
            Err(e) => {
                crate::error!(
                    rate_limit_resume_invalid,
                    "resume marker could not be taken: nothing released",
                    path = path.display(),
                    error = e
                );
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn config(cores: Option<u32>, memory_mib: Option<u64>) -> GuestConfig {
        GuestConfig {
            cores,
            memory_mib,
            ..GuestConfig::default()
        }
    }

    fn set(params: &[(&str, &str)]) -> Action {
        Action {
            vmid: 100,
            kind: ActionKind::SetConfig,
            params: params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
            digest: None,
            reason: String::new(),
        }
    }

    #[test]
    fn stops_and_reductions_are_disruptive_starts_and_increases_are_not() {
        let have = config(Some(4), Some(2048));
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[("cores", "2")], true),
            (&[("cores", "8")], false),
            (&[("cores", "4")], false),
            (&[("memory", "1024")], true),
            (&[("memory", "4096")], false),
            (&[("cores", "8"), ("memory", "1024")], true),
            (&[("cores", "2"), ("memory", "4096")], true),
            (&[("cores", "8"), ("memory", "4096")], false),
            (&[("description", "web")], false),
            (&[("cores", "x")], true),
        ];
        for (params, want) in cases {
            assert_eq!(
                is_disruptive(&set(params), Some(&have)),
                *want,
                "{params:?}"
            );
        }
        let unset = config(None, None);
        assert!(is_disruptive(&set(&[("cores", "2")]), Some(&unset)));
        assert!(is_disruptive(&set(&[("memory", "512")]), Some(&unset)));
        assert!(!is_disruptive(&set(&[("description", "x")]), Some(&unset)));
        assert!(
            is_disruptive(&set(&[("cores", "8")]), None),
            "unread: fail closed"
        );
        let mut stop = set(&[]);
        stop.kind = ActionKind::Stop;
        assert!(is_disruptive(&stop, None));
        stop.kind = ActionKind::Start;
        assert!(!is_disruptive(&stop, None));
    }

    #[test]
    fn a_budget_admits_the_limit_then_holds_and_audits_each_hold_once() {
        let mut stop = set(&[]);
        stop.kind = ActionKind::Stop;
        let at = |vmid| Action {
            vmid,
            ..stop.clone()
        };
        let mut b = PassBudget {
            limit: 1,
            in_window: 0,
            resume: false,
            previous: BTreeSet::from([(102, ActionKind::Stop)]),
            held: BTreeSet::new(),
            released: 0,
        };
        assert_eq!(b.admit(&at(100)), Admit::Go);
        assert_eq!(
            b.admit(&at(101)),
            Admit::Held {
                first: true,
                in_window: 1
            }
        );
        assert_eq!(
            b.admit(&at(102)),
            Admit::Held {
                first: false,
                in_window: 1
            }
        );
        b.resume = true;
        assert_eq!(b.admit(&at(102)), Admit::Released, "held last pass");
        assert!(matches!(b.admit(&at(103)), Admit::Held { first: true, .. }));
    }
}
