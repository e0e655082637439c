//! Configuration: the JSON file, the `FELHOM_AGENT_*` environment overlay, defaults
//! and mode-aware validation.
