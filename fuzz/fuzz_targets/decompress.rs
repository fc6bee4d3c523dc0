//! libFuzzer entry point of the `decompress` target; the checks live in
//! `rampart_fuzz_harness::decompress` so the stable replay test runs the very same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rampart_fuzz_harness::decompress::run(data));
