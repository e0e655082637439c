//! `felhom-agent state acknowledge-damage FILE`: an operator's word that a damaged
//! state file has been looked at. The file is archived (renamed, never deleted) and
//! the acknowledgement audited with who (uid, login uid) and when, so the refusal the
//! damage caused ends at the daemon's next start.
//!
//! It touches only `*.damaged` files directly inside the state directory, holds the
//! state lock while it works (the daemon is stopped), and never edits a file's bytes.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::command::{EXIT_FAILED, EXIT_OK, EXIT_USAGE, lock_state, visible};
use crate::base::time::{Clock, SystemClock, Timestamp};
use crate::config::Config;
use crate::reconcile::{AuditLog, AuditRecord};
use crate::store::{OsIo, set_aside};

/// The suffix every damaged file the agent sets aside carries.
const DAMAGED_SUFFIX: &str = ".damaged";

/// The process's uid (the owner of `/proc/self`) and its audit login uid (who logged
/// in, through `sudo` too); `None` where the kernel does not say.
fn who() -> (Option<u32>, Option<u32>) {
    let uid = std::fs::metadata("/proc/self").ok().map(|m| m.uid());
    let login = std::fs::read_to_string("/proc/self/loginuid")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|&u| u != u32::MAX);
    (uid, login)
}

/// `2026-12-06T21:00:00Z` → `20261206T210000Z`, for a file name.
fn stamp(t: Timestamp) -> String {
    t.to_rfc3339()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect()
}

/// The damaged file `given` names: a bare name in the state directory, or a path whose
/// directory is the state directory. It must end in `.damaged` and be a regular file.
fn resolve(state_dir: &Path, given: &Path) -> Result<PathBuf, String> {
    let shown = visible(&given.display().to_string());
    let name = given
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| n.ends_with(DAMAGED_SUFFIX) && n.len() > DAMAGED_SUFFIX.len())
        .ok_or_else(|| {
            format!(
                "{shown}: not a damaged file (the name a damage log line gives ends in .damaged)"
            )
        })?;
    let dir = match given.parent().filter(|p| !p.as_os_str().is_empty()) {
        None => state_dir.to_path_buf(),
        Some(p) => p.to_path_buf(),
    };
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same(&dir, state_dir) {
        return Err(format!(
            "{shown}: not in the state directory {}",
            visible(&state_dir.display().to_string())
        ));
    }
    let path = state_dir.join(name);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_file() => Ok(path),
        Ok(_) => Err(format!("{shown}: not a regular file")),
        Err(e) => Err(format!("{shown}: {e}")),
    }
}

/// Runs `state acknowledge-damage`; returns the exit code.
pub(crate) fn acknowledge_damage(
    cfg: &Config,
    file: &Path,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let path = match resolve(&cfg.state_dir, file) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(err, "felhom-agent: state acknowledge-damage: {e}");
            return EXIT_USAGE;
        }
    };
    let _lock = match lock_state(&cfg.state_dir, err) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let now = SystemClock.now();
    let (uid, login) = who();
    let show = |u: Option<u32>| u.map_or_else(|| "unknown".to_owned(), |u| u.to_string());
    let suffix = format!("acknowledged-{}", stamp(now));
    let archived = {
        let mut s = path.as_os_str().to_os_string();
        s.push(format!(".{suffix}"));
        PathBuf::from(s)
    };
    // Audited first: if the rename then fails, the damage still stands (the safe side)
    // and the log says an operator tried.
    let audit = AuditLog::open_bounded(
        &cfg.state_dir.join("audit.log"),
        Arc::new(OsIo),
        cfg.audit.max_bytes,
    )
    .map_err(|e| e.to_string())
    .and_then(|log| {
        log.record(&AuditRecord::new(
            now,
            "acknowledge_damage",
            None,
            "acknowledged",
            format!(
                "uid {} (login uid {}) archived {} as {}",
                show(uid),
                show(login),
                path.display(),
                archived.display()
            ),
            None,
        ))
        .map_err(|e| e.to_string())
    });
    if let Err(e) = audit {
        let _ = writeln!(
            err,
            "felhom-agent: state acknowledge-damage: cannot audit it, nothing archived: {e}"
        );
        return EXIT_FAILED;
    }
    if let Err(e) = set_aside(&OsIo, &path, &suffix) {
        let _ = writeln!(
            err,
            "felhom-agent: state acknowledge-damage: cannot archive {}: {e}",
            visible(&path.display().to_string())
        );
        return EXIT_FAILED;
    }
    crate::info!(
        damage_acknowledged,
        "damaged state file acknowledged and archived",
        file = path.display(),
        archived_as = archived.display(),
        uid = show(uid),
        login_uid = show(login)
    );
    let _ = writeln!(
        out,
        "archived {} as {}; audited (acknowledge_damage, uid {}). The daemon's next start no \
         longer refuses destructive operations for it.",
        visible(&path.display().to_string()),
        visible(&archived.display().to_string()),
        show(uid)
    );
    EXIT_OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_damaged_files_inside_the_state_dir() {
        let d = std::env::temp_dir().join(format!("felhom-ack-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("journal.log.damaged"), b"x").unwrap();
        std::fs::write(d.join("journal.log"), b"x").unwrap();
        std::fs::write(d.join("sub/x.damaged"), b"x").unwrap();
        let ok = d.join("journal.log.damaged");
        assert_eq!(
            resolve(&d, Path::new("journal.log.damaged")),
            Ok(ok.clone())
        );
        assert_eq!(resolve(&d, &ok), Ok(ok));
        for bad in [
            PathBuf::from("journal.log"),
            PathBuf::from(".damaged"),
            PathBuf::from("gone.damaged"),
            d.join("sub/x.damaged"),
            PathBuf::from("/etc/passwd.damaged"),
        ] {
            assert!(resolve(&d, &bad).is_err(), "{}", bad.display());
        }
        assert_eq!(stamp(Timestamp(0)), "19700101T000000Z");
        let _ = std::fs::remove_dir_all(&d);
    }
}
