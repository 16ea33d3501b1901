//! Fuzz target `units`: see `meshlet::fuzzing::units` and docs/reliability.md, "Fuzzing".
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshlet::fuzzing::units(data));
