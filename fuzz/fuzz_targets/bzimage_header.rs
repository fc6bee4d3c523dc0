//! libFuzzer entry point of the `bzimage_header` target; the checks live in
//! `rampart_fuzz_harness::bzimage_header` so the stable replay test runs the very same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rampart_fuzz_harness::bzimage_header::run(data));
