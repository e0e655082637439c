//! `pct exec`: run a fixed program inside a container, the one proof that a restored
//! guest booted that the API cannot give (a container "running" to the API may still
//! have a dead init).
//!
//! Only a fixed, absolute program with no arguments is ever run inside the guest; the
//! vmid is checked first. Like the rest of the privileged backend it never opens a
//! socket.

use super::{Privileged, PrivilegedError, Runner};
use crate::proxmox::validate;

/// The program a boot check runs inside the guest: present in every Linux userland,
/// does nothing, exits 0.
pub const BOOT_CHECK_PROGRAM: &str = "/bin/true";

impl<R: Runner> Privileged<R> {
    /// `pct exec VMID -- /bin/true`: succeeds only when the container's init accepted
    /// a process and the program exited 0.
    pub fn exec_true(&self, vmid: u32) -> Result<(), PrivilegedError> {
        validate::vmid(vmid)?;
        self.run_ok(
            &self.programs.pct,
            vec![
                "exec".into(),
                vmid.to_string(),
                "--".into(),
                BOOT_CHECK_PROGRAM.into(),
            ],
        )
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::super::{FakeRunner, Programs};
    use super::*;

    #[test]
    fn exec_true_runs_pct_exec_with_a_fixed_argv() {
        let f = Arc::new(FakeRunner::new());
        let p = Privileged::with_programs(f.clone(), Programs::default());
        p.exec_true(9901).unwrap();
        let calls = f.calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0, PathBuf::from("/usr/sbin/pct"));
        assert_eq!(calls[0].1, ["exec", "9901", "--", "/bin/true"]);
    }

    #[test]
    fn a_failing_exec_is_an_error_and_a_bad_vmid_runs_nothing() {
        let f = Arc::new(FakeRunner::new());
        let p = Privileged::with_programs(f.clone(), Programs::default());
        f.reply_with(255, "");
        assert!(matches!(
            p.exec_true(9901),
            Err(PrivilegedError::Failed {
                code: Some(255),
                ..
            })
        ));
        assert!(matches!(p.exec_true(99), Err(PrivilegedError::Argument(_))));
        assert_eq!(f.calls().len(), 1, "the bad vmid ran nothing");
    }
}
