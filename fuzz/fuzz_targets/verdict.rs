//! Policy module verdicts: allow, modify (a rewritten payload) or reject (code, message).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&tag, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let (a, b) = text.split_once('\0').unwrap_or((&text, ""));
    nself_realtime::fuzzing::verdict(tag, a, b);
});
