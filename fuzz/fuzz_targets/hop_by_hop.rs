//! Fuzz target `hop_by_hop`: see `meshlet::fuzzing::hop_by_hop` and docs/reliability.md, "Fuzzing".
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshlet::fuzzing::hop_by_hop(data));
