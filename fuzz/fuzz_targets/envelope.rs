//! The hub's control envelope on arbitrary bytes: no panic, an accepted interval always
//! inside the clamp, acknowledgements within their caps, and what the agent prints of an envelope parses back to the same.
#![no_main]

use felhom_agent::hub::{
    ControlEnvelope, MAX_ACK_ID_BYTES, MAX_ACKS, MAX_POLL_SECONDS, MIN_POLL_SECONDS,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = ControlEnvelope::parse(data) {
        if let Some(s) = e.poll_interval_seconds {
            assert!((MIN_POLL_SECONDS..=MAX_POLL_SECONDS).contains(&s));
        }
        assert!(e.ack_signed_op_results.len() <= MAX_ACKS);
        assert!(e.ack_signed_op_results.iter().all(|id| !id.is_empty() && id.len() <= MAX_ACK_ID_BYTES));
        let printed = e.to_json().to_string();
        let again = ControlEnvelope::parse(printed.as_bytes()).expect("printed envelope parses");
        assert_eq!(again, e);
    }
});
