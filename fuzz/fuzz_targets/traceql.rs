//! Fuzz target `traceql`: every input goes through `deepflow_tempo::fuzzing::traceql`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| deepflow_tempo::fuzzing::traceql(data));
