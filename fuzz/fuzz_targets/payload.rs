//! Client payloads (any bytes) through the validation of every event.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nself_realtime::fuzzing::payload(data));
