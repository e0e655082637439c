//! The strict armor parser and everything before the allow-list, on arbitrary text.
//!
//! Properties, not only "no panic": an accepted armor is exactly one BEGIN/END block
//! with nothing but whitespace around it; re-armoring the decoded bytes the way
//! ssh-keygen does decodes back to the same bytes; `parse` never accepts what
//! `dearmor` refuses, and an accepted signature is in our namespace.
#![no_main]

use felhom_agent::authz::{NAMESPACE, sshsig};
use libfuzzer_sys::fuzz_target;

const BEGIN: &str = "-----BEGIN SSH SIGNATURE-----";
const END: &str = "-----END SSH SIGNATURE-----";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dearmored = sshsig::dearmor(text);
    if let Ok(bytes) = &dearmored {
        let inner = text.trim_matches(|c| matches!(c, ' ' | '\t' | '\r' | '\n'));
        assert!(inner.starts_with(BEGIN), "accepted without BEGIN first");
        assert!(inner.ends_with(END), "accepted with text after END");
        assert_eq!(inner.matches(BEGIN).count(), 1, "accepted two BEGIN lines");
        assert_eq!(inner.matches(END).count(), 1, "accepted two END lines");
        assert!(text.len() <= sshsig::MAX_ARMOR_BYTES, "accepted over the cap");
        // Canonical 70-column lines can be longer than the input's wrapping, so the
        // round trip is checked where the canonical text is itself under the cap.
        let canonical = sshsig::armor(bytes);
        if canonical.len() <= sshsig::MAX_ARMOR_BYTES {
            let again = sshsig::dearmor(&canonical).expect("canonical armor decodes");
            assert_eq!(&again, bytes, "re-armored bytes differ");
        }
    }
    match sshsig::parse(text, NAMESPACE) {
        Ok(sig) => {
            assert!(dearmored.is_ok(), "parse accepted what dearmor refused");
            assert_eq!(sig.namespace(), NAMESPACE, "parse accepted another namespace");
            assert!(sshsig::check_key_policy(sig.public_key()).is_ok());
            assert!(sshsig::check_algorithm(sig.public_key(), &sig.algorithm()).is_ok());
        }
        Err(e) => assert!(!e.to_string().is_empty(), "an empty refusal"),
    }
});
