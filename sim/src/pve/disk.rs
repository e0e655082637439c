//! Disk and volume routes: `PUT …/lxc/{vmid}/resize` (grow only) and `DELETE
//! …/storage/{storage}/content/{volume}` (backup volumes), with Proxmox's checks in
//! Proxmox's order and its texts: pve-container `src/PVE/API2/LXC.pm` (`resize_vm`)
//! and pve-storage `src/PVE/API2/Storage/Content.pm` (`delete`).

use super::api::{ApiResult, check, unlocked_at_digest, upid, vmid_param, vms};
use super::model::{Effect, Failure, State, TaskSpec, parse_size};
use super::params::{ApiError, Kind, Params};
use super::perms;

/// `\+?\d+(\.\d+)?[KMGT]?`, the pattern of `resize`'s `size`.
fn valid_size(s: &str) -> bool {
    let s = s.strip_prefix('+').unwrap_or(s);
    let s = s.strip_suffix(['K', 'M', 'G', 'T']).unwrap_or(s);
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    digits(int) && frac.is_none_or(digits)
}

/// A size as pve-common's `format_size` prints it into a mount point: the largest unit
/// that divides it evenly.
fn format_size(bytes: u64) -> String {
    for (unit, shift) in [('T', 40), ('G', 30), ('M', 20), ('K', 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// `rootfs` or `mp0` … `mp255`, the volume keys an LXC config can have.
fn valid_disk(d: &str) -> bool {
    if d == "rootfs" {
        return true;
    }
    let Some(n) = d.strip_prefix("mp") else {
        return false;
    };
    !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_digit())
        && (n == "0" || !n.starts_with('0'))
        && n.parse::<u16>().is_ok_and(|n| n <= 255)
}

/// `PUT /nodes/{node}/lxc/{vmid}/resize`: checked once before the fork as `resize_vm`'s
/// `$load_and_check` does (lock, digest, disk, storage privilege, shrink, same size),
/// then a `resize` task that writes the new `size=` into the volume's line.
pub(super) fn resize(st: &mut State, p: &mut Params, v: &str) -> ApiResult {
    let extra = [
        ("disk", Kind::Str),
        ("size", Kind::Str),
        ("digest", Kind::StrMax(40)),
    ];
    let vmid = vmid_param(p, v, &extra)?;
    check(p, &extra, &["disk", "size"])?;
    let disk = p.get("disk").unwrap_or_default().to_string();
    if !valid_disk(&disk) {
        return Err(ApiError::param(
            "disk",
            format!(
                "value '{disk}' does not have a value in the enumeration 'rootfs, mp0, …, mp255'"
            ),
        ));
    }
    let size = p.get("size").unwrap_or_default().to_string();
    if !valid_size(&size) {
        return Err(ApiError::param(
            "size",
            "value does not match the regex pattern",
        ));
    }
    st.check_sync(&vms(vmid), perms::VM_CONFIG_DISK)?;
    let g = unlocked_at_digest(st, vmid, p)?;
    let Some(line) = g.conf.get(&disk).cloned() else {
        return Err(ApiError::die(format!("invalid disk '{disk}'")));
    };
    let volume = line.split(',').next().unwrap_or_default().to_string();
    let storage = volume.split(':').next().unwrap_or_default().to_string();
    st.check_sync(&format!("/storage/{storage}"), perms::DATASTORE_SPACE)?;
    let current = line
        .split(',')
        .find_map(|o| o.strip_prefix("size="))
        .and_then(parse_size)
        .unwrap_or(4 << 30);
    let (grow, amount) = match size.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, size.as_str()),
    };
    let request = parse_size(amount).unwrap_or(0);
    let new = if grow {
        current.saturating_add(request)
    } else {
        request
    };
    if new < current {
        return Err(ApiError::die("unable to shrink disk size"));
    }
    if new == current {
        return Err(ApiError::die("disk is already at specified size"));
    }
    let mut opts: Vec<String> = line
        .split(',')
        .filter(|o| !o.starts_with("size="))
        .map(str::to_string)
        .collect();
    opts.push(format!("size={}", format_size(new)));
    let failure = st.check_in_task(&vms(vmid), perms::VM_CONFIG_DISK);
    let mut spec = TaskSpec::new(
        "resize",
        vmid.to_string(),
        Effect::Config {
            vmid,
            set: vec![(disk, opts.join(","))],
            delete: Vec::new(),
        },
    );
    spec.failure = failure;
    upid(st.spawn(spec))
}

/// `DELETE /nodes/{node}/storage/{storage}/content/{volume}` of a backup volume: the
/// volume id resolved as `$real_volume_id` does, `Datastore.AllocateSpace` on the
/// storage and `VM.Backup` on the owner, then an `imgdel` task (id `OWNER@STORAGE`)
/// that fails on a protected backup.
pub(super) fn content_delete(
    st: &mut State,
    p: &mut Params,
    storage: &str,
    volume: &str,
) -> ApiResult {
    p.push("storage", storage);
    p.push("volume", volume);
    check(
        p,
        &[
            ("storage", Kind::Str),
            ("volume", Kind::Str),
            ("delay", Kind::Int(Some(1), Some(30))),
        ],
        &[],
    )?;
    let volid = match volume.split_once(':') {
        Some((sid, _)) if sid != storage => {
            return Err(ApiError::param(
                "volume",
                format!("storage ID mismatch ({sid} != {storage})"),
            ));
        }
        Some(_) => volume.to_string(),
        None => format!("{storage}:{volume}"),
    };
    if st.storage(storage).is_none() {
        return Err(ApiError::die(format!("storage '{storage}' does not exist")));
    }
    let Some(backup) = st.backups.iter().find(|b| b.volid == volid).cloned() else {
        // Only backup volumes are modelled: anything else is not there to remove.
        return Err(ApiError::die(format!("volume '{volid}' does not exist")));
    };
    st.check_sync(&format!("/storage/{storage}"), perms::DATASTORE_SPACE)?;
    st.check_sync(&vms(backup.vmid), perms::VM_BACKUP)?;
    let volname = volid.split_once(':').map_or("", |(_, n)| n).to_string();
    let failure = st
        .check_in_task(&format!("/storage/{storage}"), perms::DATASTORE_SPACE)
        .or_else(|| {
            backup.protected.then(|| {
                Failure::new(format!(
                    "cannot remove protected volume '{volname}' on '{storage}'"
                ))
            })
        });
    let mut spec = TaskSpec::new(
        "imgdel",
        format!("{}@{storage}", backup.vmid),
        Effect::DeleteVolume(volid.clone()),
    );
    spec.log.push(format!("Removed volume '{volid}'"));
    spec.failure = failure;
    upid(st.spawn(spec))
}

impl super::ProxmoxSim {
    /// Marks the backup `volid` protected or not, as `PUT …/content/{volume}
    /// protected=1` would; false when no backup has that volid.
    pub fn set_backup_protected(&self, volid: &str, protected: bool) -> bool {
        match self.state().backups.iter_mut().find(|b| b.volid == volid) {
            Some(b) => {
                b.protected = protected;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_resize_pattern_and_print_like_format_size() {
        for ok in ["8G", "+1G", "1024", "1.5G", "+512M", "10T"] {
            assert!(valid_size(ok), "{ok}");
        }
        for bad in ["", "+", "-1G", "1.G", "G", "1GB", "1,5G"] {
            assert!(!valid_size(bad), "{bad}");
        }
        assert_eq!(format_size(8 << 30), "8G");
        assert_eq!(format_size(1536 << 20), "1536M");
        assert_eq!(format_size(1 << 40), "1T");
        assert_eq!(format_size(1000), "1000");
    }

    #[test]
    fn disks_are_rootfs_and_mount_points() {
        for ok in ["rootfs", "mp0", "mp7", "mp255"] {
            assert!(valid_disk(ok), "{ok}");
        }
        for bad in ["", "mp", "mp256", "mp01", "net0", "rootfs0"] {
            assert!(!valid_disk(bad), "{bad}");
        }
    }
}
