//! Fuzz target `grpc_values`: see `meshlet::fuzzing::grpc_values` and docs/reliability.md, "Fuzzing".
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshlet::fuzzing::grpc_values(data));
