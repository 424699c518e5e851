//! Handshake tokens (any text), verified and decoded in development mode.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = std::str::from_utf8(data) {
        nself_realtime::fuzzing::token(token);
    }
});
