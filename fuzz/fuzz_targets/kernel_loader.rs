//! libFuzzer entry point of the `kernel_loader` target; the checks live in
//! `rampart_fuzz_harness::kernel_loader` so the stable replay test runs the very same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rampart_fuzz_harness::kernel_loader::run(data));
