//! Token claims (any JSON) in a validly signed token: the identity extraction.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nself_realtime::fuzzing::claims(data));
