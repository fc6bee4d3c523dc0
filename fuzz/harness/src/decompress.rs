//! `decompress`: the bzImage payload decompressors (gzip, xz, zstd, legacy lz4, none) with a
//! small output limit.
//!
//! Checks: the output never exceeds the limit, the detected format is the one `detect`
//! reports, and the heap the call holds at its peak stays within [`ALLOC_BOUND`].

use rampart_vmm::arch::x86_64::decompress::{decompress, Compression};

use crate::alloc_track::peak_during;

/// The output limit the target asks for.
pub const LIMIT: usize = 1 << 20;

/// The most heap one call may hold. "Never allocate past the limit" taken literally would be
/// `LIMIT` plus decoder state; the decoders' own fixed buffers are part of the bound:
/// the output (at most `LIMIT`, doubled once by `Vec` growth), and 8 MiB for the legacy lz4
/// block buffer, which `decompress` allocates whatever the limit (see docs/fuzzing.md).
/// Set `RAMPART_FUZZ_DECOMPRESS_ALLOC_BOUND` (bytes) to try a tighter or looser bound.
pub const ALLOC_BOUND: usize = 2 * LIMIT + (8 << 20) + (1 << 20);

fn alloc_bound() -> usize {
    std::env::var("RAMPART_FUZZ_DECOMPRESS_ALLOC_BOUND")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ALLOC_BOUND)
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
