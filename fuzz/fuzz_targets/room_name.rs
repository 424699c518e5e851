//! Room names as clients send them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(name) = std::str::from_utf8(data) {
        nself_realtime::fuzzing::room_name(name);
    }
});
