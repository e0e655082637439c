//! Replay of a store file's bytes: every line check, the chain, torn-tail detection.
#![no_main]

use felhom_agent::store::replay_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut last = 0u64;
    if let Ok(r) = replay_bytes(data, &mut |seq, _| {
        // Sequence numbers handed to the visitor always increase by one.
        if last != 0 && seq != last + 1 {
            return Err("out of order".into());
        }
        last = seq;
        Ok(())
    }) {
        assert!(r.good_len <= data.len());
        assert_eq!(r.summary.torn_bytes, data.len() - r.good_len);
    }
});
