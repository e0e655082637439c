//! Operation classes and the classifier: which actions are benign and which destroy or
//! overwrite data that may not be the agent's to lose.
//!
//! This module owns the vocabulary the gate, the journal and signed ops share
//! ([`OpClass`], [`Intent`]) and the pure rule that maps an intent plus the agent's own
//! provenance records to [`Class`]. It never reads a file, never talks to Proxmox and
//! never trusts provenance claimed in an intent's params: provenance comes only from the
//! journal, handed in by the gate.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The op words an operator may sign: every other word is `unknown_op`, at `verify`
/// time and on delivery alike.
pub const SIGNED_CATALOGUE: &[&str] = &[
    "guest_destroy",
    "restore_overwrite",
    "snapshot_rollback",
    "backup_delete",
    "rotate_signers",
];

/// The kind of operation an action or a signed op performs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpClass {
    /// Start a guest.
    Start,
    /// Stop a guest.
    Stop,
    /// Change a guest's configuration (cores, memory, description).
    SetConfig,
    /// Grow a guest's root disk (never shrink it).
    Resize,
    /// Create a guest that does not exist (provisioning): it overwrites nothing.
    GuestCreate,
    /// Destroy a guest and its volumes.
    GuestDestroy,
    /// Restore a backup over an existing guest.
    RestoreOverwrite,
    /// Roll a guest back to one of its snapshots, discarding what was written since.
    SnapshotRollback,
    /// Delete one backup volume of a guest.
    BackupDelete,
    /// Replace the allow-listed signers.
    RotateSigners,
    /// Restore a backup into a new scratch guest for a restore test (never with
    /// `force`: Proxmox refuses a vmid that exists, so it cannot overwrite anything).
    ScratchRestore,
    /// Any other word: destructive, and refused `unknown_op` (not in the catalogue).
    #[serde(untagged)]
    Unknown(String),
}

impl OpClass {
    /// The class for a wire word; anything not known is [`OpClass::Unknown`].
    pub fn parse(s: &str) -> OpClass {
        match s {
            "start" => OpClass::Start,
            "stop" => OpClass::Stop,
            "set_config" => OpClass::SetConfig,
            "resize" => OpClass::Resize,
            "guest_create" => OpClass::GuestCreate,
            "guest_destroy" => OpClass::GuestDestroy,
            "restore_overwrite" => OpClass::RestoreOverwrite,
            "snapshot_rollback" => OpClass::SnapshotRollback,
            "backup_delete" => OpClass::BackupDelete,
            "rotate_signers" => OpClass::RotateSigners,
            "scratch_restore" => OpClass::ScratchRestore,
            other => OpClass::Unknown(other.to_string()),
        }
    }

    /// The wire word (the same one [`OpClass::parse`] reads).
    pub fn as_str(&self) -> &str {
        match self {
            OpClass::Start => "start",
            OpClass::Stop => "stop",
            OpClass::SetConfig => "set_config",
            OpClass::Resize => "resize",
            OpClass::GuestCreate => "guest_create",
            OpClass::GuestDestroy => "guest_destroy",
            OpClass::RestoreOverwrite => "restore_overwrite",
            OpClass::SnapshotRollback => "snapshot_rollback",
            OpClass::BackupDelete => "backup_delete",
            OpClass::RotateSigners => "rotate_signers",
            OpClass::ScratchRestore => "scratch_restore",
            OpClass::Unknown(s) => s,
        }
    }

    /// Whether the class can never lose data by itself (start, stop, set config, a disk
    /// grown, a create, which Proxmox refuses over a taken vmid without `force`, and a
    /// restore into a scratch vmid that must not exist).
    pub fn is_benign_by_class(&self) -> bool {
        matches!(
            self,
            OpClass::Start
                | OpClass::Stop
                | OpClass::SetConfig
                | OpClass::Resize
                | OpClass::GuestCreate
                | OpClass::ScratchRestore
        )
    }

    /// Whether the class is in the signed-op catalogue ([`SIGNED_CATALOGUE`]). A signed
    /// op of any other class is refused `unknown_op` before its nonce could be burned.
    pub fn in_catalogue(&self) -> bool {
        matches!(
            self,
            OpClass::GuestDestroy
                | OpClass::RestoreOverwrite
                | OpClass::SnapshotRollback
                | OpClass::BackupDelete
                | OpClass::RotateSigners
        )
    }

    /// Whether a signed blob's `op` word names an op of the catalogue.
    pub fn is_catalogued(op: &str) -> bool {
        OpClass::parse(op).in_catalogue()
    }
}

impl fmt::Display for OpClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an action would do, in the terms the gate and the signed op use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    /// The operation.
    pub class: OpClass,
    /// The host it runs on (must equal the signed op's `host_id`).
    pub host_id: String,
    /// The guest it targets (`None` for host-wide operations).
    pub guest_id: Option<String>,
    /// The operation's parameters, exactly as a signed op would carry them.
    pub params: BTreeMap<String, String>,
}

impl Intent {
    /// An intent with no params.
    pub fn new(class: OpClass, host_id: impl Into<String>, guest_id: Option<String>) -> Intent {
        Intent {
            class,
            host_id: host_id.into(),
            guest_id,
            params: BTreeMap::new(),
        }
    }

    /// The guest id as a vmid, when it is one.
    pub fn vmid(&self) -> Option<u32> {
        self.guest_id.as_deref().and_then(|g| g.parse().ok())
    }
}

/// Agent-internal provenance of a guest, as recorded in the journal by the agent itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provenance {
    /// The agent created the guest in the journaled transaction named by the intent's
    /// `txn` param, and that creation succeeded.
    CreatedInTransaction,
    /// The agent tagged the guest as its own scratch guest.
    AgentScratch,
}

/// What the classifier decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Can be applied unsigned: the class cannot lose data.
    Benign,
    /// Destroys or overwrites only what the agent itself made (journal provenance).
    BenignByProvenance(Provenance),
    /// Needs an operator signature.
    Destructive,
}

/// Classifies `intent`. `provenance` is what the journal says about the target guest —
/// never anything taken from the intent's params. Only guest destruction can be made
/// benign by provenance; every other non-benign class, and every unknown one, is
/// destructive.
pub(crate) fn classify(intent: &Intent, provenance: Option<Provenance>) -> Class {
    if intent.class.is_benign_by_class() {
        return Class::Benign;
    }
    match (&intent.class, provenance) {
        (OpClass::GuestDestroy, Some(p)) => Class::BenignByProvenance(p),
        _ => Class::Destructive,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips_every_known_word_and_keeps_unknown_ones() {
        for w in [
            "start",
            "stop",
            "set_config",
            "resize",
            "guest_create",
            "guest_destroy",
            "restore_overwrite",
            "snapshot_rollback",
            "backup_delete",
            "rotate_signers",
            "scratch_restore",
        ] {
            let c = OpClass::parse(w);
            assert!(!matches!(c, OpClass::Unknown(_)), "{w}");
            assert_eq!(c.as_str(), w);
        }
        assert_eq!(OpClass::parse("reboot"), OpClass::Unknown("reboot".into()));
    }

    #[test]
    fn the_catalogue_is_exactly_the_signable_words() {
        for w in SIGNED_CATALOGUE {
            assert!(OpClass::parse(w).in_catalogue(), "{w}");
        }
        for w in [
            "start",
            "stop",
            "set_config",
            "storage_wipe",
            "decommission",
            "",
            "GUEST_DESTROY",
        ] {
            assert!(!OpClass::is_catalogued(w), "{w:?}");
        }
    }

    #[test]
    fn serde_uses_the_wire_words_and_unknown_is_untagged() {
        let j = serde_json::to_string(&OpClass::GuestDestroy).unwrap();
        assert_eq!(j, "\"guest_destroy\"");
        let u: OpClass = serde_json::from_str("\"format_disk\"").unwrap();
        assert_eq!(u, OpClass::Unknown("format_disk".into()));
        assert_eq!(serde_json::to_string(&u).unwrap(), "\"format_disk\"");
    }

    #[test]
    fn classes_by_provenance_and_data_bearingness() {
        let i = |c| Intent::new(c, "pve-a", Some("105".into()));
        assert_eq!(classify(&i(OpClass::Start), None), Class::Benign);
        assert_eq!(classify(&i(OpClass::SetConfig), None), Class::Benign);
        assert_eq!(classify(&i(OpClass::Resize), None), Class::Benign);
        assert_eq!(
            classify(&i(OpClass::GuestDestroy), None),
            Class::Destructive
        );
        assert_eq!(
            classify(&i(OpClass::GuestDestroy), Some(Provenance::AgentScratch)),
            Class::BenignByProvenance(Provenance::AgentScratch)
        );
        // Provenance never makes a rollback, a backup deletion or a restore benign.
        for c in [
            OpClass::SnapshotRollback,
            OpClass::BackupDelete,
            OpClass::RestoreOverwrite,
        ] {
            assert_eq!(
                classify(&i(c), Some(Provenance::AgentScratch)),
                Class::Destructive
            );
        }
        assert_eq!(
            classify(&i(OpClass::Unknown("reboot".into())), None),
            Class::Destructive
        );
    }
}
