//! Fuzz target `registry_endpoint`: see `meshlet::fuzzing::registry_endpoint` and docs/reliability.md, "Fuzzing".
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshlet::fuzzing::registry_endpoint(data));
