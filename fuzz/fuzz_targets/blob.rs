//! The two blob parsers: the SSHSIG blob inside the armor, and the JSON op blob.
#![no_main]

use felhom_agent::authz::{OpBlob, sshsig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sig) = sshsig::decode_blob(data) {
        let _ = sshsig::check_key_policy(sig.public_key());
        let _ = sshsig::check_algorithm(sig.public_key(), &sig.algorithm());
        let _ = sshsig::sk_assertion(&sig);
    }
    let _ = OpBlob::parse(data);
});
