//! libFuzzer entry point of the `x509_dn` target; the checks live in
//! `rampart_fuzz_harness::x509_dn` so the stable replay test runs the very same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rampart_fuzz_harness::x509_dn::run(data));
