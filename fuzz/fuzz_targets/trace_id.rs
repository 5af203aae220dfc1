//! Fuzz target `trace_id`: every input goes through `deepflow_tempo::fuzzing::trace_id`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| deepflow_tempo::fuzzing::trace_id(data));
