//! The destructive executor the daemon hands to signed ops: `rotate_signers` goes to
//! reconcile's [`RotationExecutor`] on the gate's own signer set, every other class to
//! the Proxmox executor; and the report's view of that signer set ([`SignerFeed`]),
//! bound once the reconciler has built it. It only routes: it never decides and never
//! executes itself.

use std::fmt;
use std::sync::{Arc, OnceLock};

use crate::authz::SignerSet;
use crate::hub::{SignerPolicyReport, SignerPolicySource};

use crate::reconcile::{
    AuditLog, DestructiveExecutor, Gate, GuestNow, Intent, OnTask, OpClass, Refusal,
    RotationExecutor,
};

/// Routes each op class to the executor that carries it.
pub struct RoutedExecutor {
    ops: Arc<dyn DestructiveExecutor>,
    rotation: Option<RotationExecutor>,
}

impl fmt::Debug for RoutedExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoutedExecutor")
            .field("rotation", &self.rotation.is_some())
            .finish_non_exhaustive()
    }
}

/// `ops` for every class but `rotate_signers`, which rotates `gate`'s signer set (when
/// it has one), auditing to `audit`.
pub fn with_rotation(
    ops: Arc<dyn DestructiveExecutor>,
    gate: &Gate,
    audit: &Arc<AuditLog>,
) -> Arc<dyn DestructiveExecutor> {
    Arc::new(RoutedExecutor {
        ops,
        rotation: gate
            .signer_set()
            .map(|set| RotationExecutor::new(Arc::clone(set), Arc::clone(audit))),
    })
}

impl DestructiveExecutor for RoutedExecutor {
    fn carries(&self, class: &OpClass) -> bool {
        match (&self.rotation, class) {
            (Some(r), OpClass::RotateSigners) => r.carries(class),
            (None, OpClass::RotateSigners) => false,
            _ => self.ops.carries(class),
        }
    }

    fn guest_now(&self, vmid: u32) -> GuestNow {
        self.ops.guest_now(vmid)
    }

    fn check_target(&self, intent: &Intent) -> Result<(), (Refusal, String)> {
        match (&self.rotation, &intent.class) {
            (Some(r), OpClass::RotateSigners) => r.check_target(intent),
            _ => self.ops.check_target(intent),
        }
    }

    fn unprotect(&self, vmid: u32, digest: &str, on_task: &mut OnTask<'_>) -> Result<(), String> {
        self.ops.unprotect(vmid, digest, on_task)
    }

    fn stop_guest(&self, vmid: u32, on_task: &mut OnTask<'_>) -> Result<(), String> {
        self.ops.stop_guest(vmid, on_task)
    }

    fn execute(&self, intent: &Intent, on_task: &mut OnTask<'_>) -> Result<(), String> {
        match (&self.rotation, &intent.class) {
            (Some(r), OpClass::RotateSigners) => r.execute(intent, on_task),
            (None, OpClass::RotateSigners) => Err("no signer set to rotate".into()),
            _ => self.ops.execute(intent, on_task),
        }
    }
}

/// The report's `signer_policy`, bound to the gate's signer set once the reconciler is
/// open (the poller reports before that, without it).
#[derive(Debug, Default)]
pub struct SignerFeed(OnceLock<Arc<SignerSet>>);

impl SignerFeed {
    /// Binds the feed to `set`; `false` (and the first kept) if already bound.
    pub fn bind(&self, set: Arc<SignerSet>) -> bool {
        self.0.set(set).is_ok()
    }
}

impl SignerPolicySource for SignerFeed {
    fn signer_policy(&self) -> Option<SignerPolicyReport> {
        self.0.get().and_then(|s| s.signer_policy())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records which method the router passed on, and refuses every target.
    #[derive(Default)]
    struct Inner(Mutex<Vec<&'static str>>);

    impl DestructiveExecutor for Inner {
        fn carries(&self, _: &OpClass) -> bool {
            true
        }
        fn guest_now(&self, _: u32) -> GuestNow {
            GuestNow::Gone
        }
        fn check_target(&self, _: &Intent) -> Result<(), (Refusal, String)> {
            self.0.lock().unwrap().push("check_target");
            Err((Refusal::ForeignVolume, "not this guest's".into()))
        }
        fn unprotect(&self, _: u32, _: &str, _: &mut OnTask<'_>) -> Result<(), String> {
            self.0.lock().unwrap().push("unprotect");
            Ok(())
        }
        fn stop_guest(&self, _: u32, _: &mut OnTask<'_>) -> Result<(), String> {
            self.0.lock().unwrap().push("stop_guest");
            Ok(())
        }
        fn execute(&self, _: &Intent, _: &mut OnTask<'_>) -> Result<(), String> {
            self.0.lock().unwrap().push("execute");
            Ok(())
        }
    }

    #[test]
    fn every_guest_op_step_reaches_the_proxmox_executor() {
        let inner = Arc::new(Inner::default());
        let routed = RoutedExecutor {
            ops: inner.clone(),
            rotation: None,
        };
        let intent = Intent::new(OpClass::BackupDelete, "pve-a", Some("105".into()));
        // The target check is the catalogue's refusal: a router that dropped it would
        // let a backup of another guest be deleted.
        assert_eq!(
            routed.check_target(&intent).unwrap_err().0,
            Refusal::ForeignVolume
        );
        let mut on_task = |_: &str| Ok(());
        routed.stop_guest(105, &mut on_task).unwrap();
        routed.unprotect(105, "d", &mut on_task).unwrap();
        routed.execute(&intent, &mut on_task).unwrap();
        assert_eq!(
            *inner.0.lock().unwrap(),
            ["check_target", "stop_guest", "unprotect", "execute"]
        );
        // Without a signer set, a rotation is carried by nobody.
        assert!(!routed.carries(&OpClass::RotateSigners));
    }
}
