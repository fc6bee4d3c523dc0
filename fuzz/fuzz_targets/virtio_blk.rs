//! libFuzzer entry point of the `virtio_blk` target; the checks live in
//! `rampart_fuzz_harness::virtio_blk` so the stable replay test runs the very same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rampart_fuzz_harness::virtio_blk::run(data));
