//! Helpers for this crate's unit tests.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh, empty directory for one test (on the disk file system, which supports O_DIRECT).
///
/// Named after the checkout and a per-run counter, not the process: the next run of the same
/// checkout empties and reuses the same few directories instead of leaving new ones behind,
/// and checkouts running their tests at the same time do not meet.
pub fn scratch_dir() -> PathBuf {
    use std::hash::{Hash, Hasher};
    static N: AtomicUsize = AtomicUsize::new(0);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    env!("CARGO_MANIFEST_DIR").hash(&mut h);
    let d = std::env::temp_dir().join(format!(
        "rampart-block-test-{:016x}-{}",
        h.finish(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Bytes the file system has allocated for `p`.
pub fn allocated_bytes(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().blocks() * 512
}
