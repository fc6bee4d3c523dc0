//! libFuzzer entry point of the `tcg_run` target; the checks live in
//! `rampart_fuzz_harness::tcg_run` so the stable replay test runs the very same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rampart_fuzz_harness::tcg_run::run(data));
