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
    /// Destroy a guest and its volumes.
    GuestDestroy,
    /// Wipe a storage.
    StorageWipe,
    /// Restore a backup over an existing guest.
    RestoreOverwrite,
    /// Take the host out of service.
    Decommission,
    /// Replace the allow-listed signers.
    RotateSigners,
    /// Restore a backup into a new scratch guest for a restore test (never with
    /// `force`: Proxmox refuses a vmid that exists, so it cannot overwrite anything).
    ScratchRestore,
    /// Any other word: treated as destructive.
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
            "guest_destroy" => OpClass::GuestDestroy,
            "storage_wipe" => OpClass::StorageWipe,
            "restore_overwrite" => OpClass::RestoreOverwrite,
            "decommission" => OpClass::Decommission,
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
            OpClass::GuestDestroy => "guest_destroy",
            OpClass::StorageWipe => "storage_wipe",
            OpClass::RestoreOverwrite => "restore_overwrite",
            OpClass::Decommission => "decommission",
            OpClass::RotateSigners => "rotate_signers",
            OpClass::ScratchRestore => "scratch_restore",
            OpClass::Unknown(s) => s,
        }
    }

    /// Whether the class can never lose data by itself (start, stop, set config, and a
    /// restore into a vmid that must not exist).
    pub fn is_benign_by_class(&self) -> bool {
        matches!(
            self,
            OpClass::Start | OpClass::Stop | OpClass::SetConfig | OpClass::ScratchRestore
        )
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
            "guest_destroy",
            "storage_wipe",
            "restore_overwrite",
            "decommission",
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
        assert_eq!(
            classify(&i(OpClass::GuestDestroy), None),
            Class::Destructive
        );
        assert_eq!(
            classify(&i(OpClass::GuestDestroy), Some(Provenance::AgentScratch)),
            Class::BenignByProvenance(Provenance::AgentScratch)
        );
        // Provenance never makes a wipe or a restore benign.
        assert_eq!(
            classify(&i(OpClass::StorageWipe), Some(Provenance::AgentScratch)),
            Class::Destructive
        );
        assert_eq!(
            classify(&i(OpClass::Unknown("reboot".into())), None),
            Class::Destructive
        );
    }
}
