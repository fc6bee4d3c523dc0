//! libFuzzer entry point of the `json_props` target; the checks live in
//! `rampart_fuzz_harness::json_props` so the stable replay test runs the very same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rampart_fuzz_harness::json_props::run(data));
