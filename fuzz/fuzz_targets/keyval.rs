//! libFuzzer entry point of the `keyval` target; the checks live in
//! `rampart_fuzz_harness::keyval` so the stable replay test runs the very same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rampart_fuzz_harness::keyval::run(data));
