//! libFuzzer entry point of the `qcow2_open` target; the checks live in
//! `rampart_fuzz_harness::qcow2_open` so the stable replay test runs the very same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rampart_fuzz_harness::qcow2_open::run(data));
