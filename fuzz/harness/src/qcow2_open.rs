//! `qcow2_open`: rampart's qcow2 driver on a hostile image file.
//!
//! The input is the whole image, held in a memfd. It is opened read-only (backing files are
//! never followed: the image could name any host file) and read at a few places, then opened
//! read-write, written, zeroed, discarded and flushed, then read again. Checks, beyond "returns
//! Ok or Err":
//! - the host heap one open-and-read holds at its peak stays within [`ALLOC_BOUND`], whatever
//!   the header claims;
//! - writing never grows the image by more than [`GROWTH_BOUND`];
//! - the written image opens and reads again without harm.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use rampart_block::{open, BlockBackend};
use rampart_config::{BackingConfig, BlockFormat, BlockNodeConfig, DiscardMode, LockingMode};

use crate::alloc_track::peak_during;

/// L1 table (32 MiB at most), refcount table (8 MiB), metadata caches (5 MiB), the first
/// cluster (2 MiB), a decompression buffer pair and slack.
pub const ALLOC_BOUND: usize = (32 << 20) + (8 << 20) + (5 << 20) + (8 << 20) + (4 << 20);
/// How much the few writes may grow the file: a handful of 2 MiB clusters, L2 tables,
/// refcount blocks and a refcount table.
pub const GROWTH_BOUND: u64 = 64 << 20;

fn memfd_with(data: &[u8]) -> File {
    // SAFETY: the name is a NUL-terminated static string; memfd_create reads it and returns a
    // new descriptor or -1, touching no other memory.
    let fd = unsafe { libc::memfd_create(c"rampart-fuzz-qcow2".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just returned by memfd_create, is valid and owned by nobody else.
    let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(data).expect("writing the memfd");
    file
}

fn node(path: PathBuf, read_only: bool) -> BlockNodeConfig {
    let mut n = BlockNodeConfig::new("fuzz", BlockFormat::Qcow2, path);
    n.read_only = read_only;
    n.locking = LockingMode::Off;
    n.backing = BackingConfig::None;
    n.discard = DiscardMode::Unmap;
    n
}

/// A few offsets spread over the disk, each with a 4 KiB request inside it.
fn probes(size: u64) -> Vec<u64> {
    if size < 4096 {
        return Vec::new();
    }
    let last = size - 4096;
    vec![0, last / 3, last / 2 + 1234, last]
}

fn read_some(disk: &dyn BlockBackend) {
    let mut buf = vec![0u8; 4096];
    for off in probes(disk.size()) {
        let _ = disk.read_at(off, &mut buf);
    }
}

pub fn run(data: &[u8]) {
    let file = memfd_with(data);
    let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    let (opened, peak) = peak_during(|| {
        let r = open(&node(path.clone(), true));
        if let Ok(disk) = &r {
            read_some(&**disk);
        }
        r.is_ok()
    });
    assert!(
        peak <= ALLOC_BOUND,
        "open and read held {peak} bytes of heap, bound {ALLOC_BOUND}"
    );
    if !opened {
        return;
    }
    let Ok(disk) = open(&node(path.clone(), false)) else {
        return;
    };
    let size = disk.size();
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 1) as u8).collect();
    for off in probes(size) {
        let _ = disk.write_at(off, &pattern);
    }
    let _ = disk.write_zeroes(size / 4, 8192.min(size / 4), true);
    let _ = disk.discard(size / 5, 65536.min(size / 5));
    let flushed = disk.flush().is_ok();
    drop(disk);
    let len = file.metadata().expect("memfd metadata").len();
    assert!(
        len <= data.len() as u64 + GROWTH_BOUND,
        "the image grew from {} to {len} bytes",
        data.len()
    );
    if !flushed {
        return;
    }
    let Ok(disk) = open(&node(path, true)) else {
        return;
    };
    // A hostile image may alias data and metadata clusters, so what reads back is not
    // checked: only that reopening and reading the written image is safe.
    read_some(&*disk);
}
