//! The desired-state file parser on arbitrary bytes: no panic, and an accepted state
//! keys every guest by its own vmid.
#![no_main]

use felhom_agent::reconcile::DesiredState;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = DesiredState::from_json(data) {
        for (vmid, guest) in &state.guests {
            assert_eq!(*vmid, guest.vmid);
        }
    }
});
