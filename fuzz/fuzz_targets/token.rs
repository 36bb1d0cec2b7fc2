//! Token text from a client: base64 decoding and opening a sealed token never panic, never
//! open anything tether did not seal, and canonical base64url round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::encoding::{base64_decode, base64url_decode, base64url_encode};
use tether::seal::{Carrier, Sealer};

fuzz_target!(|data: &[u8]| {
    let sealer = Sealer::new(&[[1; 32], [2; 32]], Carrier::Cookie, "tether");
    assert_eq!(
        sealer.open(data, b""),
        None,
        "a token tether never sealed opened"
    );
    assert_eq!(sealer.open(data, data), None);
    if let Some(bytes) = base64url_decode(data) {
        assert_eq!(
            base64url_encode(&bytes).as_bytes(),
            data,
            "two spellings of one value"
        );
    }
    let _ = base64_decode(data);
});
