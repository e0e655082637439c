//! The Proxmox VE API client and the fenced privileged backend.
