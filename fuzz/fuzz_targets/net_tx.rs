//! libFuzzer entry point of the `net_tx` target; the checks live in
//! `rampart_fuzz_harness::net_tx` so the stable replay test runs the very same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rampart_fuzz_harness::net_tx::run(data));
