//! `GET /nodes/{node}/storage/{storage}/status`: one storage's size and free space on
//! this node, the figure a restore test's guard reads before it fills the storage.
//!
//! It only reads; it never spawns a process.

use super::client::{Client, api_path};
use super::decode::{DecodeError, Obj};
use super::error::ProxmoxError;
use super::validate::{self, check};

/// One storage's state on this node, as pve-storage's `storage_info` reports it (the
/// answer names no storage: the path does).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageCapacity {
    /// Type (`dir`, `lvmthin`, `zfspool`, `pbs`, ...).
    pub kind: String,
    /// Whether it is active (mounted, reachable); an inactive one reports no sizes.
    pub active: bool,
    /// Size, bytes.
    pub total: Option<u64>,
    /// Used, bytes.
    pub used: Option<u64>,
    /// Available, bytes.
    pub avail: Option<u64>,
}

impl StorageCapacity {
    fn decode(o: &Obj<'_>) -> Result<Self, DecodeError> {
        Ok(StorageCapacity {
            kind: o.string("type")?,
            active: o.flag("active")?,
            total: o.opt_u64("total")?,
            used: o.opt_u64("used")?,
            avail: o.opt_u64("avail")?,
        })
    }
}

impl Client {
    /// `GET /nodes/{node}/storage/{storage}/status`.
    pub fn storage_status(&self, storage: &str) -> Result<StorageCapacity, ProxmoxError> {
        check("storage", storage, validate::storage_id)?;
        self.get_one(
            api_path(&["nodes", self.node(), "storage", storage, "status"]),
            vec![],
            StorageCapacity::decode,
        )
    }
}
