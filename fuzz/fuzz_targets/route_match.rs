//! Fuzz target `route_match`: see `meshlet::fuzzing::route_match` and docs/reliability.md, "Fuzzing".
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshlet::fuzzing::route_match(data));
