//! Fuzz target `config_load`: see `meshlet::fuzzing::config_load` and docs/reliability.md, "Fuzzing".
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshlet::fuzzing::config_load(data));
