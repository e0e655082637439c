//! The `restore_tests` section: how often the agent proves that each guest's newest
//! backup restores and boots, into which scratch vmids, on which storage, how many at a
//! time, and the free memory and storage the host must have before one starts.
//!
//! A present section turns restore tests on; every field is checked here and an error
//! names it. This module holds values only; it never opens a connection and never
//! decides which vmid is free.

use std::ops::RangeInclusive;

use super::schema::Reader;
use super::{ConfigError, check::check_name, field_err};

/// `restore_tests.every_hours` when absent: one round a day.
pub(super) const DEFAULT_EVERY_HOURS: u64 = 24;
/// The longest `restore_tests.every_hours`: a round at least once a year.
pub(super) const MAX_EVERY_HOURS: u64 = 8760;
/// The most scratch vmids a range may hold: the agent scans the whole range for a free
/// one each time, so it stays small.
pub(super) const MAX_SCRATCH_VMIDS: u32 = 1000;
/// The largest `restore_tests.max_parallel`.
pub(super) const MAX_PARALLEL_TESTS: u64 = 8;
/// `restore_tests.min_free_memory_mib` when absent.
pub(super) const DEFAULT_MIN_FREE_MEMORY_MIB: u64 = 2048;
/// `restore_tests.min_free_storage_gib` when absent.
pub(super) const DEFAULT_MIN_FREE_STORAGE_GIB: u64 = 16;

/// The `restore_tests` section, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreTestsConfig {
    /// Hours between the starts of two rounds.
    pub every_hours: u64,
    /// The scratch vmids the agent owns (`"9900-9999"`): a restore test restores only
    /// into one of these, and cleans up only these.
    pub vmid_range: RangeInclusive<u32>,
    /// The storage the scratch guests' disks go to.
    pub storage: String,
    /// Restore tests running at once.
    pub max_parallel: usize,
    /// A test starts only while the node has at least this much memory available, MiB.
    pub min_free_memory_mib: u64,
    /// A test starts only while `storage` has at least this much room, GiB.
    pub min_free_storage_gib: u64,
}

/// Parses `"FIRST-LAST"` into a vmid range inside Proxmox's vmid range, at most
/// 1000 vmids long; the error says why.
pub fn parse_vmid_range(s: &str) -> Result<RangeInclusive<u32>, String> {
    let Some((a, b)) = s.split_once('-') else {
        return Err(format!("must be FIRST-LAST (e.g. 9900-9999), got {s:?}"));
    };
    let num = |t: &str| -> Result<u32, String> {
        if t.is_empty() || t.len() > 9 || !t.bytes().all(|c| c.is_ascii_digit()) {
            return Err(format!("must be FIRST-LAST (e.g. 9900-9999), got {s:?}"));
        }
        t.parse::<u32>()
            .map_err(|_| format!("must be FIRST-LAST (e.g. 9900-9999), got {s:?}"))
    };
    let (first, last) = (num(a)?, num(b)?);
    if first < 100 || last > 999_999_999 {
        return Err(format!("vmids must be from 100 to 999999999, got {s:?}"));
    }
    if first > last {
        return Err(format!("FIRST must not be above LAST, got {s:?}"));
    }
    if last - first >= MAX_SCRATCH_VMIDS {
        return Err(format!(
            "may hold at most {MAX_SCRATCH_VMIDS} vmids, got {}",
            u64::from(last - first) + 1
        ));
    }
    Ok(first..=last)
}

/// Reads the section; `None` when it is absent (restore tests off).
pub(super) fn restore_tests(r: &Reader<'_>) -> Result<Option<RestoreTestsConfig>, ConfigError> {
    if !r.has_section("restore_tests") {
        return Ok(None);
    }
    let range_text = match r.string("restore_tests.vmid_range")? {
        Some(s) if !s.is_empty() => s,
        _ => {
            return Err(field_err(
                "restore_tests.vmid_range",
                "is required: the scratch vmids the agent owns, FIRST-LAST",
            ));
        }
    };
    let vmid_range =
        parse_vmid_range(&range_text).map_err(|e| field_err("restore_tests.vmid_range", e))?;
    let storage = match r.string("restore_tests.storage")? {
        Some(s) if !s.is_empty() => s,
        _ => {
            return Err(field_err(
                "restore_tests.storage",
                "is required: the storage the scratch guests' disks go to",
            ));
        }
    };
    check_name("restore_tests.storage", &storage, "a Proxmox storage id")?;
    let max_parallel = r.int("restore_tests.max_parallel", 1, 1, MAX_PARALLEL_TESTS)?;
    let slots = u64::from(vmid_range.end() - vmid_range.start()) + 1;
    if max_parallel > slots {
        return Err(field_err(
            "restore_tests.max_parallel",
            format!("is {max_parallel}, more than the {slots} vmids of restore_tests.vmid_range"),
        ));
    }
    Ok(Some(RestoreTestsConfig {
        every_hours: r.int(
            "restore_tests.every_hours",
            DEFAULT_EVERY_HOURS,
            1,
            MAX_EVERY_HOURS,
        )?,
        vmid_range,
        storage,
        max_parallel: usize::try_from(max_parallel).unwrap_or(1),
        min_free_memory_mib: r.int(
            "restore_tests.min_free_memory_mib",
            DEFAULT_MIN_FREE_MEMORY_MIB,
            0,
            16 * 1024 * 1024,
        )?,
        min_free_storage_gib: r.int(
            "restore_tests.min_free_storage_gib",
            DEFAULT_MIN_FREE_STORAGE_GIB,
            0,
            1024 * 1024,
        )?,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::{Config, Mode};
    use super::*;
    use serde_json::{Value, json};

    fn with(section: Value) -> Value {
        json!({"host_id": "pve-a", "restore_tests": section})
    }

    #[test]
    fn absent_means_off_and_a_section_gets_its_defaults() {
        let off = Config::from_value(&json!({"host_id": "pve-a"}), Mode::SelftestOffline);
        assert!(off.unwrap().restore_tests.is_none());
        let c = Config::from_value(
            &with(json!({"vmid_range": "9900-9999", "storage": "local-lvm"})),
            Mode::SelftestOffline,
        )
        .unwrap();
        let t = c.restore_tests.unwrap();
        assert_eq!(t.every_hours, DEFAULT_EVERY_HOURS);
        assert_eq!(t.vmid_range, 9900..=9999);
        assert_eq!(t.max_parallel, 1);
        assert_eq!(t.min_free_memory_mib, DEFAULT_MIN_FREE_MEMORY_MIB);
        assert_eq!(t.min_free_storage_gib, DEFAULT_MIN_FREE_STORAGE_GIB);
    }

    #[test]
    fn restore_tests_leave_reconcile_a_mutation_slot() {
        let mut v = with(json!({"vmid_range": "9900-9999", "storage": "local-lvm",
            "max_parallel": 2}));
        v["reconcile"] = json!({"max_parallel": 2});
        let e = Config::from_value(&v, Mode::SelftestOffline)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("restore_tests.max_parallel"), "{e}");
        v["reconcile"] = json!({"max_parallel": 3});
        assert!(Config::from_value(&v, Mode::SelftestOffline).is_ok());
    }

    #[test]
    fn each_bad_field_names_itself() {
        let ok = json!({"vmid_range": "9900-9901", "storage": "local-lvm"});
        let cases: &[(&str, Value, &str)] = &[
            ("vmid_range", json!(null), "restore_tests.vmid_range"),
            ("vmid_range", json!("9999-9900"), "restore_tests.vmid_range"),
            ("vmid_range", json!(9900), "restore_tests.vmid_range"),
            ("storage", json!(null), "restore_tests.storage"),
            ("storage", json!("bad storage"), "restore_tests.storage"),
            ("every_hours", json!(0), "restore_tests.every_hours"),
            ("every_hours", json!(8761), "restore_tests.every_hours"),
            ("max_parallel", json!(0), "restore_tests.max_parallel"),
            ("max_parallel", json!(3), "restore_tests.max_parallel"),
            (
                "min_free_memory_mib",
                json!(-1),
                "restore_tests.min_free_memory_mib",
            ),
            (
                "min_free_storage_gib",
                json!("x"),
                "restore_tests.min_free_storage_gib",
            ),
            ("scratch", json!(true), "restore_tests.scratch"),
        ];
        for (key, value, field) in cases {
            let mut section = ok.clone();
            section[*key] = value.clone();
            let e = Config::from_value(&with(section), Mode::SelftestOffline)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(field), "{key}={value}: {e}");
        }
    }

    #[test]
    fn vmid_ranges_are_checked_and_name_why() {
        assert_eq!(parse_vmid_range("9900-9999").unwrap(), 9900..=9999);
        assert_eq!(parse_vmid_range("100-100").unwrap(), 100..=100);
        for bad in [
            "",
            "9900",
            "9900-",
            "-9999",
            "a-b",
            "+100-200",
            "99-200",
            "200-100",
            "100-1100",
            "100-1000000000",
            "9900 - 9999",
        ] {
            assert!(parse_vmid_range(bad).is_err(), "{bad:?}");
        }
    }
}
