//! The live host-health probe behind the report's `health`: the whole disks in
//! `/sys/block`, `smartctl` on each and `sensors -j`, through the privileged backend,
//! kept for [`HEALTH_TTL`] so a report round runs them at most that often.
//!
//! It only reads: it never writes a file, never mutates Proxmox, and never fails a
//! report (a probe that fails reads `unknown` in the collector). One round of SMART
//! probes is bounded by [`SMART_BUDGET`] in all.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::base::sync::lock;
use crate::hub::collect::{HealthProbe, ReadError};
use crate::proxmox::privileged::{Privileged, Programs, SystemRunner};
use crate::proxmox::{DiskHealth, ProbeBudget, SensorReading};

/// How long a health reading is reused before the programs run again.
pub(crate) const HEALTH_TTL: Duration = Duration::from_secs(600);
/// The most one round of SMART probes may take in all.
pub(crate) const SMART_BUDGET: Duration = Duration::from_secs(20);
/// How long one `smartctl` or `sensors` run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(10);

type Reading<T> = Option<(Instant, Result<T, String>)>;

/// SMART and sensors of this host, each reading reused for ten minutes.
pub struct HostHealth {
    backend: Privileged<SystemRunner>,
    sys_block: PathBuf,
    disks: Mutex<Reading<Vec<DiskHealth>>>,
    sensors: Mutex<Reading<Vec<SensorReading>>>,
}

impl std::fmt::Debug for HostHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostHealth")
            .field("sys_block", &self.sys_block)
            .finish_non_exhaustive()
    }
}

impl HostHealth {
    /// The probe on the host's programs and `/sys/block`.
    pub fn new() -> HostHealth {
        let runner = SystemRunner {
            timeout: RUN_TIMEOUT,
            max_output: 1 << 20,
        };
        HostHealth {
            backend: Privileged::with_programs(runner, Programs::detect()),
            sys_block: PathBuf::from("/sys/block"),
            disks: Mutex::new(None),
            sensors: Mutex::new(None),
        }
    }

    fn cached<T: Clone>(
        slot: &Mutex<Reading<T>>,
        read: impl FnOnce() -> Result<T, String>,
    ) -> Result<T, ReadError> {
        let mut slot = lock(slot);
        let fresh = slot
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < HEALTH_TTL);
        if !fresh {
            *slot = Some((Instant::now(), read()));
        }
        match slot.as_ref() {
            Some((_, Ok(v))) => Ok(v.clone()),
            Some((_, Err(e))) => Err(e.clone().into()),
            None => Err("no reading".into()),
        }
    }
}

impl Default for HostHealth {
    fn default() -> Self {
        HostHealth::new()
    }
}

impl HealthProbe for HostHealth {
    fn disks(&self) -> Result<Vec<DiskHealth>, ReadError> {
        Self::cached(&self.disks, || {
            let devices = crate::proxmox::block_devices(&self.sys_block)
                .map_err(|e| format!("{}: {e}", self.sys_block.display()))?;
            let (disks, failures) =
                crate::proxmox::probe_disks(&self.backend, &devices, ProbeBudget(SMART_BUDGET));
            for (device, error) in failures {
                crate::warn!(
                    health_disk_probe_failed,
                    "SMART probe failed; the disk reads unknown",
                    device = device,
                    error = error
                );
            }
            Ok(disks)
        })
    }

    fn sensors(&self) -> Result<Vec<SensorReading>, ReadError> {
        Self::cached(&self.sensors, || {
            crate::proxmox::probe_sensors(&self.backend).map_err(|e| e.to_string())
        })
    }
}
