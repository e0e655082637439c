//! Host health from the privileged backend: SMART per disk (`smartctl --json -a`) and
//! the temperature sensors (`sensors -j`), parsed into small typed readings.
//!
//! This module owns which disks are probed (the whole disks `/sys/block` lists that the
//! backend's device pattern accepts, at most [`MAX_DISKS`]), how long one probe round
//! may take ([`ProbeBudget`]), and how smartctl's and lm-sensors' JSON is read: every
//! field is optional, an unexpected shape reads as unknown, and the counts and strings
//! are capped. It runs programs only through [`Privileged`] and never opens a socket;
//! it never fails the caller: a probe that fails reads as unknown.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::privileged::{Privileged, PrivilegedError, Runner};

/// The most disks one round probes (the rest are left out, logged).
pub const MAX_DISKS: usize = 64;
/// The most sensor readings one round reports.
pub const MAX_SENSORS: usize = 256;
/// The longest model or sensor name kept, in bytes (cut at a character boundary).
pub const MAX_NAME_BYTES: usize = 128;

/// One disk's SMART reading; `None` fields are unknown (the probe failed, or smartctl
/// does not report that field for this disk).
#[derive(Debug, Clone, PartialEq)]
pub struct DiskHealth {
    /// The device, e.g. `/dev/sda`.
    pub device: String,
    /// The model smartctl names (`model_name`, or SCSI `scsi_model_name`).
    pub model: Option<String>,
    /// smartctl's overall verdict (`smart_status.passed`).
    pub smart_ok: Option<bool>,
    /// The current temperature in °C (`temperature.current`).
    pub temperature_c: Option<i64>,
    /// The raw value of ATA attribute 5 (`Reallocated_Sector_Ct`); `None` for disks
    /// without it (NVMe, SCSI).
    pub reallocated_sectors: Option<u64>,
}

impl DiskHealth {
    /// A disk whose probe failed: every reading unknown.
    pub fn unknown(device: &str) -> DiskHealth {
        DiskHealth {
            device: device.to_string(),
            model: None,
            smart_ok: None,
            temperature_c: None,
            reallocated_sectors: None,
        }
    }
}

/// One temperature sensor.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorReading {
    /// `CHIP/LABEL`, e.g. `coretemp-isa-0000/Package id 0`.
    pub name: String,
    /// The reading (`tempN_input`), °C.
    pub celsius: f64,
}

fn capped(s: &str) -> String {
    if s.len() <= MAX_NAME_BYTES {
        return s.to_string();
    }
    let mut end = MAX_NAME_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Reads `smartctl --json -a DEVICE`'s answer.
pub fn parse_smart(device: &str, v: &Value) -> DiskHealth {
    let model = v
        .get("model_name")
        .or_else(|| v.get("scsi_model_name"))
        .and_then(Value::as_str)
        .map(|m| capped(m.trim()));
    let smart_ok = v
        .get("smart_status")
        .and_then(|s| s.get("passed"))
        .and_then(Value::as_bool);
    let temperature_c = v
        .get("temperature")
        .and_then(|t| t.get("current"))
        .and_then(Value::as_i64);
    let reallocated_sectors = v
        .get("ata_smart_attributes")
        .and_then(|a| a.get("table"))
        .and_then(Value::as_array)
        .and_then(|rows| {
            rows.iter()
                .find(|r| r.get("id").and_then(Value::as_u64) == Some(5))
        })
        .and_then(|r| r.get("raw"))
        .and_then(|raw| raw.get("value"))
        .and_then(Value::as_u64);
    DiskHealth {
        device: device.to_string(),
        model,
        smart_ok,
        temperature_c,
        reallocated_sectors,
    }
}

/// Reads `sensors -j`'s answer: for every chip and every feature with a `tempN_input`,
/// one reading named `CHIP/FEATURE`, in the answer's order, at most [`MAX_SENSORS`].
/// Fans, voltages and non-finite readings are left out.
pub fn parse_sensors(v: &Value) -> Vec<SensorReading> {
    let mut out = Vec::new();
    let Some(chips) = v.as_object() else {
        return out;
    };
    for (chip, features) in chips {
        let Some(features) = features.as_object() else {
            continue;
        };
        for (feature, values) in features {
            let Some(values) = values.as_object() else {
                continue;
            };
            let reading = values
                .iter()
                .find(|(k, _)| {
                    k.strip_prefix("temp")
                        .and_then(|r| r.strip_suffix("_input"))
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                })
                .and_then(|(_, v)| v.as_f64())
                .filter(|c| c.is_finite());
            if let Some(celsius) = reading {
                if out.len() == MAX_SENSORS {
                    return out;
                }
                out.push(SensorReading {
                    name: capped(&format!("{chip}/{feature}")),
                    celsius,
                });
            }
        }
    }
    out
}

/// Whether `name` (an entry of `/sys/block`) is a whole disk the backend probes:
/// `sdX` (1–3 letters) or `nvmeNnM`; partitions, loop, dm, zram and the like are not.
pub fn is_probed_disk(name: &str) -> bool {
    let digits = |p: &str| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit());
    if let Some(letters) = name.strip_prefix("sd") {
        return !letters.is_empty()
            && letters.len() <= 3
            && letters.bytes().all(|b| b.is_ascii_lowercase());
    }
    name.strip_prefix("nvme")
        .and_then(|rest| rest.split_once('n'))
        .is_some_and(|(ctrl, ns)| digits(ctrl) && digits(ns))
}

/// The disks under `sys_block` (normally `/sys/block`) that [`is_probed_disk`] accepts,
/// as `/dev/NAME`, sorted, at most [`MAX_DISKS`]. An unreadable directory is an error.
pub fn block_devices(sys_block: &Path) -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(sys_block)?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_probed_disk(n))
        .collect();
    names.sort();
    names.truncate(MAX_DISKS);
    Ok(names.into_iter().map(|n| format!("/dev/{n}")).collect())
}

/// How long one round of SMART probes may take in all: disks not probed when it is
/// spent read as unknown, so a hung disk delays a report by at most this.
#[derive(Debug, Clone, Copy)]
pub struct ProbeBudget(pub Duration);

/// SMART of each of `devices` through `backend`, within `budget`: a disk whose probe
/// fails, or that the budget leaves unprobed, reads as [`DiskHealth::unknown`]; the
/// failures are returned beside the readings, for the caller to log.
pub fn probe_disks<R: Runner>(
    backend: &Privileged<R>,
    devices: &[String],
    budget: ProbeBudget,
) -> (Vec<DiskHealth>, Vec<(String, PrivilegedError)>) {
    let started = Instant::now();
    let mut disks = Vec::with_capacity(devices.len());
    let mut failures = Vec::new();
    for device in devices.iter().take(MAX_DISKS) {
        if started.elapsed() >= budget.0 {
            disks.push(DiskHealth::unknown(device));
            continue;
        }
        match backend.smart(device) {
            Ok(v) => disks.push(parse_smart(device, &v)),
            Err(e) => {
                disks.push(DiskHealth::unknown(device));
                failures.push((device.clone(), e));
            }
        }
    }
    (disks, failures)
}

/// The temperature sensors through `backend`.
pub fn probe_sensors<R: Runner>(
    backend: &Privileged<R>,
) -> Result<Vec<SensorReading>, PrivilegedError> {
    backend.sensors().map(|v| parse_sensors(&v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn smart_of_an_ata_disk_an_nvme_disk_and_garbage() {
        let ata = json!({
            "model_name": "Samsung SSD 870 EVO 1TB",
            "smart_status": {"passed": true},
            "temperature": {"current": 31},
            "ata_smart_attributes": {"table": [
                {"id": 9, "name": "Power_On_Hours", "raw": {"value": 12000}},
                {"id": 5, "name": "Reallocated_Sector_Ct", "raw": {"value": 8, "string": "8"}}
            ]}
        });
        assert_eq!(
            parse_smart("/dev/sda", &ata),
            DiskHealth {
                device: "/dev/sda".into(),
                model: Some("Samsung SSD 870 EVO 1TB".into()),
                smart_ok: Some(true),
                temperature_c: Some(31),
                reallocated_sectors: Some(8),
            }
        );
        let nvme = json!({
            "model_name": "WDC WDS500G2B0C",
            "smart_status": {"passed": false},
            "temperature": {"current": 44},
            "nvme_smart_health_information_log": {"media_errors": 0}
        });
        let d = parse_smart("/dev/nvme0n1", &nvme);
        assert_eq!(d.smart_ok, Some(false));
        assert_eq!(d.reallocated_sectors, None);
        for garbage in [
            json!(null),
            json!([]),
            json!({"smart_status": "yes", "temperature": {"current": "hot"}, "model_name": 7}),
        ] {
            assert_eq!(
                parse_smart("/dev/sdb", &garbage),
                DiskHealth::unknown("/dev/sdb")
            );
        }
        let long = json!({"model_name": "é".repeat(100)});
        let m = parse_smart("/dev/sdc", &long).model.unwrap();
        assert!(m.len() <= MAX_NAME_BYTES && m.chars().all(|c| c == 'é'));
    }

    #[test]
    fn sensors_keep_temperature_inputs_only() {
        let v = json!({
            "coretemp-isa-0000": {
                "Adapter": "ISA adapter",
                "Package id 0": {"temp1_input": 45.0, "temp1_max": 80.0, "temp1_crit": 100.0},
                "Core 0": {"temp2_input": 41.5, "temp2_max": 80.0}
            },
            "nct6775-isa-0290": {
                "Adapter": "ISA adapter",
                "fan1": {"fan1_input": 1200.0},
                "in0": {"in0_input": 0.9}
            },
            "nvme-pci-0100": {"Adapter": "PCI adapter", "Composite": {"temp1_input": 38.85}}
        });
        let names: Vec<(String, f64)> = parse_sensors(&v)
            .into_iter()
            .map(|s| (s.name, s.celsius))
            .collect();
        assert_eq!(
            names,
            vec![
                ("coretemp-isa-0000/Core 0".to_string(), 41.5),
                ("coretemp-isa-0000/Package id 0".to_string(), 45.0),
                ("nvme-pci-0100/Composite".to_string(), 38.85),
            ]
        );
        assert!(parse_sensors(&json!("nope")).is_empty());
        let many: serde_json::Map<String, Value> = (0..300)
            .map(|i| (format!("chip{i}"), json!({"t": {"temp1_input": 30.0}})))
            .collect();
        assert_eq!(parse_sensors(&Value::Object(many)).len(), MAX_SENSORS);
    }

    #[test]
    fn only_whole_disks_the_backend_accepts_are_probed() {
        for ok in ["sda", "sdz", "sdaaa", "nvme0n1", "nvme12n3"] {
            assert!(is_probed_disk(ok), "{ok}");
        }
        for no in [
            "sda1",
            "sdaaaa",
            "sd",
            "nvme0n1p1",
            "nvme0",
            "loop0",
            "dm-0",
            "zram0",
            "sr0",
            "md0",
            "sdA",
        ] {
            assert!(!is_probed_disk(no), "{no}");
        }
        let dir = std::env::temp_dir().join(format!("felhom-sysblock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for n in ["sdb", "sda", "loop0", "nvme0n1", "dm-1"] {
            std::fs::create_dir_all(dir.join(n)).unwrap();
        }
        assert_eq!(
            block_devices(&dir).unwrap(),
            vec!["/dev/nvme0n1", "/dev/sda", "/dev/sdb"]
        );
        let _ = std::fs::remove_dir_all(&dir);
        assert!(block_devices(&dir).is_err());
    }
}
