//! Fuzz target `token`: see `meshlet::fuzzing::token` and docs/reliability.md, "Fuzzing".
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshlet::fuzzing::token(data));
