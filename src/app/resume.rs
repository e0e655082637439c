//! `felhom-agent resume --rate-limit`: asks the daemon to let the disruptive actions its
//! blast-radius limit holds (`rate_limited`) through, once, by writing the resume
//! marker in the state directory durably. The engine takes the marker at its next
//! pass that knows what is held. This command never takes the state lock (the engine
//! takes the marker by renaming it away, so the two never race), never talks to
//! Proxmox or the hub, and never touches the journal or the audit log.

use std::io::Write;
use std::path::Path;

use super::command::{EXIT_FAILED, EXIT_OK};
use crate::base::time::{Clock, SystemClock};
use crate::reconcile::blast::request_resume;

/// Writes the resume marker in `state_dir`; 0 once it is durable, 1 if it could not be.
pub(crate) fn resume_rate_limit(state_dir: &Path, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    if !state_dir.is_dir() {
        let _ = writeln!(
            err,
            "felhom-agent: state_dir {} is not a directory: no daemon has run here",
            state_dir.display()
        );
        return EXIT_FAILED;
    }
    match request_resume(state_dir, SystemClock.now()) {
        Ok(path) => {
            crate::info!(
                rate_limit_resume_requested,
                "operator asked to let rate-limited actions through once",
                marker = path.display()
            );
            let _ = writeln!(
                out,
                "resume requested ({}): the daemon lets the actions it holds rate_limited \
                 through once, at its next pass",
                path.display()
            );
            EXIT_OK
        }
        Err(e) => {
            let _ = writeln!(
                err,
                "felhom-agent: cannot write the resume marker in {}: {e}",
                state_dir.display()
            );
            EXIT_FAILED
        }
    }
}
