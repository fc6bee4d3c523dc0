//! What each rampart fuzz target runs, and the properties it checks beyond "no panic".
//!
//! Every target module has `pub fn run(data: &[u8])`: the libFuzzer binaries in
//! `fuzz/fuzz_targets/` call it, and so does the stable replay test (`tests/replay.rs`), so a
//! crash found by the fuzzer replays without a fuzzer or a nightly compiler. A property that
//! does not hold panics with a message naming it: that is how libFuzzer learns of it.
//!
//! The allocation tracker ([`alloc_track`]) is installed as the global allocator of every
//! binary that links this crate, so targets can bound the memory a hostile input makes the
//! host allocate.

pub mod alloc_track;
pub mod bzimage_header;
pub mod decompress;
pub mod json_props;
pub mod kernel_loader;
pub mod keyval;
pub mod net_tx;
pub mod qcow2_open;
pub mod tcg_run;
pub mod virtio_blk;
pub mod virtqueue;
pub mod x509_dn;

mod props_check;

/// Whether the checks of findings that are still open are on (`RAMPART_FUZZ_STRICT=1`).
///
/// By default a target checks what the code guarantees today, so fuzzing can go past a known
/// weakness; in strict mode it checks what the code should guarantee, and the inputs in
/// `fuzz/regressions/` that show each open finding fail (docs/fuzzing.md lists them). Once a
/// finding is fixed, its strict check becomes the default.
pub fn strict() -> bool {
    static STRICT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("RAMPART_FUZZ_STRICT").is_some_and(|v| v == "1"))
}

/// The names of all targets, as the folders under `fuzz/corpus/` and `fuzz/regressions/`.
pub const TARGETS: [&str; 10] = [
    "bzimage_header",
    "decompress",
    "kernel_loader",
    "keyval",
    "json_props",
    "tcg_run",
    "qcow2_open",
    "virtio_blk",
    "net_tx",
    "x509_dn",
];

/// Runs target `name` on `data`; `None` if there is no target of that name.
pub fn run_target(name: &str, data: &[u8]) -> Option<()> {
    match name {
        "bzimage_header" => bzimage_header::run(data),
        "decompress" => decompress::run(data),
        "kernel_loader" => kernel_loader::run(data),
        "keyval" => keyval::run(data),
        "json_props" => json_props::run(data),
        "tcg_run" => tcg_run::run(data),
        "qcow2_open" => qcow2_open::run(data),
        "virtio_blk" => virtio_blk::run(data),
        "net_tx" => net_tx::run(data),
        "x509_dn" => x509_dn::run(data),
        _ => return None,
    }
    Some(())
}
