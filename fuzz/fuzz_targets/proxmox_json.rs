//! Every Proxmox answer the client decodes, on arbitrary bytes: the success envelope and
//! the typed shape inside it for each kind of call, and the error body with its
//! privilege and transience reading. The same functions the client runs on the wire.
#![no_main]

use felhom_agent::proxmox::{Answer, decode_answer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for answer in Answer::ALL {
        if let Err(e) = decode_answer(answer, data) {
            // Every refusal names where it happened; the excerpt stays bounded.
            assert!(!e.field.is_empty());
            assert!(e.found.len() <= 1024, "excerpt of {} bytes", e.found.len());
        }
    }
});
