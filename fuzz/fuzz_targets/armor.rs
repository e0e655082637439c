//! The strict armor parser and everything before the allow-list, on arbitrary text.
#![no_main]

use felhom_agent::authz::{NAMESPACE, sshsig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = sshsig::dearmor(text);
        let _ = sshsig::parse(text, NAMESPACE);
    }
});
