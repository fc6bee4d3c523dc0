//! `decompress`: the bzImage payload decompressors (gzip, xz, zstd, legacy lz4, none) with a
//! small output limit.
//!
//! Checks: the output never exceeds the limit, the detected format is the one `detect`
//! reports, and the heap the call holds at its peak stays within [`alloc_bound`].

use rampart_vmm::arch::x86_64::decompress::{decompress, Compression};

use crate::alloc_track::peak_during;

/// The output limit the target asks for.
pub const LIMIT: usize = 1 << 20;

/// The most heap one call may hold: the output (at most `LIMIT`, up to twice that while a
/// `Vec` grows) and 1 MiB of decoder state.
pub const STRICT_ALLOC_BOUND: usize = 2 * LIMIT + (1 << 20);
/// The bound in force. (The legacy lz4 decoder once allocated an 8 MiB block buffer whatever
/// the limit — `fuzz/regressions/decompress/lz4-block-buffer-over-limit`; fixed, so the strict
/// bound is the only one.)
pub fn alloc_bound() -> usize {
    STRICT_ALLOC_BOUND
}

pub fn run(data: &[u8]) {
    let (result, peak) = peak_during(|| decompress(data, LIMIT));
    if let Ok((format, out)) = &result {
        assert!(
            out.len() <= LIMIT,
            "{} output of {} bytes exceeds the {LIMIT}-byte limit",
            format.name(),
            out.len()
        );
        assert_eq!(
            *format,
            Compression::detect(data),
            "format differs from detect()"
        );
    }
    let bound = alloc_bound();
    assert!(
        peak <= bound,
        "decompressing {} bytes ({}) held {peak} bytes of heap at once, over the bound of {bound} \
         (limit {LIMIT}); result: {:?}",
        data.len(),
        Compression::detect(data).name(),
        result.as_ref().map(|(f, o)| (f.name(), o.len()))
    );
}
