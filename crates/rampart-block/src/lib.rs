//! rampart's block layer: disk images behind one [`BlockBackend`] trait, so a virtio device
//! does not know which format it serves.
//!
//! - [`file`]: the `file` protocol (host file or block device; `pread`/`pwrite`, `O_DIRECT`
//!   with aligned bounce buffers, hole punching).
//! - [`lock`]: QEMU-compatible image locking with OFD locks.
//! - [`raw`]: the raw format.
//! - [`qcow2`]: the qcow2 format (v2/v3), with backing chains.
//! - [`opener`]: how file names become open files (paths, passed fds, the monitor's policy).
//! - [`open()`]: a configured block node ([`rampart_config::BlockNodeConfig`]) to a back end.
//!
//! Everything an image file contains is hostile input.

mod error;
pub mod file;
pub mod lock;
mod open;
pub mod opener;
pub mod qcow2;
pub mod raw;
pub mod stats;
#[cfg(test)]
mod testutil;
pub mod throttle;

pub use error::BlockError;
pub use open::{open, open_with_chain, open_with_chain_via, probe_format, ChainImage};
pub use opener::{NameOrigin, Opener, PathOpener};

/// A disk as a device model sees it: a fixed number of bytes, readable and (unless read-only)
/// writable at any byte offset. Implementations are thread-safe; requests may run
/// concurrently.
pub trait BlockBackend: Send + Sync {
    /// Virtual size in bytes.
    fn size(&self) -> u64;
    fn read_only(&self) -> bool;
    /// Fills `buf` from `offset`; fails if the range is not inside [`size`](Self::size).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError>;
    /// Writes `buf` at `offset`; fails on a read-only disk or outside the disk.
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), BlockError>;
    /// Makes every completed write durable (unless `cache=unsafe`).
    fn flush(&self) -> Result<(), BlockError>;
    /// Deallocates a range if `discard=unmap` (a no-op otherwise); its contents become
    /// unspecified.
    fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError>;
    /// Makes a range read as zeroes; `may_unmap` lets it be deallocated (with `discard=unmap`).
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<(), BlockError>;
    /// True if `discard=unmap` and the back end can deallocate.
    fn supports_discard(&self) -> bool;
}

/// Checks that `[offset, offset+len)` lies inside a disk of `size` bytes.
pub(crate) fn check_range(offset: u64, len: u64, size: u64) -> Result<(), BlockError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(BlockError::OutOfRange { offset, len, size }),
    }
}
