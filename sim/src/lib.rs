//! Proxmox VE and felhom hub simulators for felhom-agent's tests and demo.
