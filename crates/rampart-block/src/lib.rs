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
    /// Fills the guest buffers `bufs`, in order, from `offset` straight from the image (no
    /// copy through a buffer of ours), if this back end can: `Ok(false)` if it cannot for
    /// this request (nothing was read), and the caller copies through
    /// [`read_at`](Self::read_at). Fails as `read_at` does.
    fn read_guest_at(&self, _offset: u64, _bufs: &[GuestBuf]) -> Result<bool, BlockError> {
        Ok(false)
    }
    /// Writes the guest buffers `bufs`, in order, at `offset` straight into the image, if this
    /// back end can: `Ok(false)` if it cannot for this request (nothing was written), and the
    /// caller copies through [`write_at`](Self::write_at). Fails as `write_at` does.
    fn write_guest_at(&self, _offset: u64, _bufs: &[GuestBuf]) -> Result<bool, BlockError> {
        Ok(false)
    }
}

/// A buffer in guest memory, handed to the host kernel as it is (`preadv`/`pwritev`) rather
/// than copied. Only ever reached through its raw address: the guest may change it at any
/// moment, so no Rust reference to it is made.
#[derive(Debug, Clone, Copy)]
pub struct GuestBuf {
    ptr: *mut u8,
    len: usize,
}

impl GuestBuf {
    /// A buffer of `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr..ptr + len` must be one mapping of this process, readable and writable, for as
    /// long as this value or a copy of it is used.
    pub unsafe fn new(ptr: *mut u8, len: usize) -> GuestBuf {
        GuestBuf { ptr, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Its address, for a back end that moves the bytes itself (a test's, a fuzz harness's
    /// in-memory disk): only through raw pointer copies, never a reference.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn addr(&self) -> usize {
        self.ptr as usize
    }

    /// The buffer as an `iovec` for the kernel.
    pub(crate) fn iovec(&self) -> libc::iovec {
        libc::iovec {
            iov_base: self.ptr.cast(),
            iov_len: self.len,
        }
    }
}

/// Total length of `bufs` (`u64::MAX` if it does not fit: no disk is that big).
pub(crate) fn guest_len(bufs: &[GuestBuf]) -> u64 {
    bufs.iter()
        .try_fold(0u64, |t, b| t.checked_add(b.len() as u64))
        .unwrap_or(u64::MAX)
}

/// The bytes `skip..skip + len` of the guest buffers `bufs` (taken as one run), as buffers
/// of their own: pieces of the given ones, so `GuestBuf::new`'s contract holds for them too.
pub(crate) fn guest_range(bufs: &[GuestBuf], mut skip: usize, mut len: usize) -> Vec<GuestBuf> {
    let mut out = Vec::new();
    for b in bufs {
        if len == 0 {
            break;
        }
        if skip >= b.len {
            skip -= b.len;
            continue;
        }
        let n = (b.len - skip).min(len);
        out.push(GuestBuf {
            ptr: b.ptr.wrapping_add(skip),
            len: n,
        });
        skip = 0;
        len -= n;
    }
    out
}

/// Checks that `[offset, offset+len)` lies inside a disk of `size` bytes.
pub(crate) fn check_range(offset: u64, len: u64, size: u64) -> Result<(), BlockError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(BlockError::OutOfRange { offset, len, size }),
    }
}
