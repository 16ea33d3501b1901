//! Fuzz target `hub_frames`: see `meshlet::fuzzing::hub_frames` and docs/reliability.md, "Fuzzing".
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshlet::fuzzing::hub_frames(data));
