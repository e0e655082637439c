//! The allow model of Proxmox's permissions: named roles (sets of privileges) granted
//! to the token's user and to the token itself at ACL paths, as
//! pve-access-control's `PVE::AccessControl::roles` and `PVE::RPCEnvironment::permissions`
//! compute them.
//!
//! - Walking from `/` down to the checked path, the entries of the deepest level that
//!   applies (the path itself, or a propagating ancestor) replace those above it,
//!   for the user and for the token each on its own entries.
//! - A token with privilege separation holds the intersection of its own privileges and
//!   its user's; without it, exactly its user's.
//! - Until a test grants anything, the model is off and every privilege is held (the
//!   simulator's token behaves like `root@pam`'s, as before this model existed).
//!
//! Owns the role and ACL tables only. It never answers a request and never knows which
//! endpoint asks: that table is `perms`.

use std::collections::{BTreeMap, BTreeSet};

/// Who an ACL entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AclSubject {
    /// The token's user (`felhom-agent@pve`), as `pveum acl modify --users`.
    User,
    /// The token itself (`felhom-agent@pve!agent`), as `pveum acl modify --tokens`.
    Token,
}

/// One `pveum acl modify PATH --users|--tokens X --roles ROLE --propagate P` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    path: String,
    subject: AclSubject,
    role: String,
    propagate: bool,
}

/// Roles and ACL entries; off (everything held) until the first grant.
#[derive(Debug, Clone)]
pub(crate) struct Acl {
    roles: BTreeMap<String, BTreeSet<String>>,
    entries: Vec<Entry>,
    privsep: bool,
}

impl Default for Acl {
    fn default() -> Acl {
        Acl {
            roles: BTreeMap::new(),
            entries: Vec::new(),
            privsep: true,
        }
    }
}

/// `/a/b` → `["", "a", "b"]`, the levels `roles()` walks (`/` is the one level `""`).
fn levels(path: &str) -> Vec<&str> {
    if path == "/" {
        return vec![""];
    }
    path.split('/').collect()
}

impl Acl {
    /// `pveum role add|modify NAME --privs …` (without `--append`): the role's privileges.
    pub fn set_role(&mut self, name: &str, privs: &[&str]) {
        self.roles.insert(
            name.to_string(),
            privs.iter().map(|p| (*p).to_string()).collect(),
        );
    }

    /// `pveum acl modify PATH --users|--tokens … --roles ROLE --propagate P`.
    pub fn grant(&mut self, path: &str, subject: AclSubject, role: &str, propagate: bool) {
        let entry = Entry {
            path: normalize(path),
            subject,
            role: role.to_string(),
            propagate,
        };
        self.entries
            .retain(|e| !(e.path == entry.path && e.subject == subject && e.role == entry.role));
        self.entries.push(entry);
    }

    /// `pveum user token modify … --privsep 0|1`.
    pub fn set_privsep(&mut self, privsep: bool) {
        self.privsep = privsep;
    }

    /// Is the allow model on (has anything been granted)?
    pub fn active(&self) -> bool {
        !self.entries.is_empty()
    }

    /// Every path an entry names, sorted, once each.
    pub fn paths(&self) -> Vec<String> {
        let set: BTreeSet<String> = self.entries.iter().map(|e| e.path.clone()).collect();
        set.into_iter().collect()
    }

    /// The roles `subject` holds on `path`: the deepest applying level wins.
    fn roles_of(&self, subject: AclSubject, path: &str) -> BTreeSet<&str> {
        let levels = levels(path);
        let mut held = BTreeSet::new();
        let mut at = String::new();
        for (i, seg) in levels.iter().enumerate() {
            if i > 0 {
                at.push('/');
                at.push_str(seg);
            }
            let here = if at.is_empty() { "/" } else { at.as_str() };
            let last = i + 1 == levels.len();
            let found: BTreeSet<&str> = self
                .entries
                .iter()
                .filter(|e| e.subject == subject && e.path == here && (last || e.propagate))
                .map(|e| e.role.as_str())
                .collect();
            if !found.is_empty() {
                held = found;
            }
        }
        held
    }

    fn privileges_of(&self, subject: AclSubject, path: &str) -> BTreeSet<&str> {
        self.roles_of(subject, path)
            .into_iter()
            .filter_map(|r| self.roles.get(r))
            .flatten()
            .map(String::as_str)
            .collect()
    }

    /// Does the token hold `privilege` on `path`?
    pub fn holds(&self, path: &str, privilege: &str) -> bool {
        if !self.active() {
            return true;
        }
        let path = normalize(path);
        let user = self.privileges_of(AclSubject::User, &path);
        if !self.privsep {
            return user.contains(privilege);
        }
        user.contains(privilege)
            && self
                .privileges_of(AclSubject::Token, &path)
                .contains(privilege)
    }
}

/// `/vms/` and `/vms` are one path to PVE (`normalize_path` drops a trailing slash).
fn normalize(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl() -> Acl {
        let mut a = Acl::default();
        a.set_role("R", &["VM.Audit", "VM.PowerMgmt"]);
        a.set_role("Audit", &["VM.Audit"]);
        a
    }

    #[test]
    fn off_until_something_is_granted() {
        assert!(Acl::default().holds("/vms/100", "VM.Allocate"));
    }

    #[test]
    fn a_privsep_token_holds_the_intersection_of_its_user_and_itself() {
        let mut a = acl();
        a.grant("/vms", AclSubject::User, "R", true);
        assert!(
            !a.holds("/vms/100", "VM.Audit"),
            "the token has nothing yet"
        );
        a.grant("/vms", AclSubject::Token, "Audit", true);
        assert!(a.holds("/vms/100", "VM.Audit"));
        assert!(!a.holds("/vms/100", "VM.PowerMgmt"), "not the token's");
        a.set_privsep(false);
        assert!(
            a.holds("/vms/100", "VM.PowerMgmt"),
            "the user's, without privsep"
        );
    }

    #[test]
    fn propagation_and_the_deepest_level_win() {
        let mut a = acl();
        for s in [AclSubject::User, AclSubject::Token] {
            a.grant("/vms", s, "R", false);
        }
        assert!(a.holds("/vms", "VM.PowerMgmt"));
        assert!(!a.holds("/vms/100", "VM.PowerMgmt"), "not propagated");
        for s in [AclSubject::User, AclSubject::Token] {
            a.grant("/vms", s, "R", true);
            a.grant("/vms/100", s, "Audit", true);
        }
        assert!(a.holds("/vms/101", "VM.PowerMgmt"));
        assert!(
            !a.holds("/vms/100", "VM.PowerMgmt"),
            "the deeper entry replaces"
        );
        assert!(a.holds("/vms/100", "VM.Audit"));
        assert!(!a.holds("/storage/local", "VM.Audit"), "another subtree");
        a.set_role("R", &["VM.Audit"]);
        assert!(
            !a.holds("/vms/101", "VM.PowerMgmt"),
            "a role change applies at once"
        );
    }
}
