//! Fuzz target `deepflow_body`: every input goes through `deepflow_tempo::fuzzing::deepflow_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| deepflow_tempo::fuzzing::deepflow_body(data));
