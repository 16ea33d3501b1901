//! Fuzz target `event_envelope`: see `meshlet::fuzzing::event_envelope` and docs/reliability.md, "Fuzzing".
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshlet::fuzzing::event_envelope(data));
