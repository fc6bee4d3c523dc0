//! The `file` protocol: a host regular file or block device, read and written with
//! `pread`/`pwrite`, optionally with `O_DIRECT` (`cache.direct`).
//!
//! With `O_DIRECT` every transfer must be aligned in offset, length and memory address.
//! Requests that are not go through an aligned bounce buffer of bounded size (kept and reused,
//! so bouncing neither allocates nor zeroes memory per request); unaligned writes
//! read-modify-write the blocks they touch under a lock, so two of them cannot lose each
//! other's bytes. Reads past the end of the file return zeroes; writes past it grow the file to
//! exactly the end of the write (never to the end of the aligned block).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::opener::{NameOrigin, Opener};
use crate::{guest_len, BlockError, GuestBuf};

/// Alignment of offsets, lengths and buffers for `O_DIRECT` (covers 512-byte and 4 KiB
/// logical blocks).
pub const DIRECT_ALIGN: u64 = 4096;
/// Largest bounce buffer one request uses; bigger requests are split.
const BOUNCE_MAX: usize = 1 << 20;
/// Most buffers one `preadv`/`pwritev` takes (Linux's `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

/// How to open a host file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileOptions {
    pub read_only: bool,
    pub direct: bool,
}

/// An open host file.
#[derive(Debug)]
pub struct HostFile {
    file: File,
    path: PathBuf,
    direct: bool,
    read_only: bool,
    is_block_device: bool,
    /// The file's length as this process knows it (it is the only writer: the image is
    /// locked, or the user opted out).
    len: AtomicU64,
    /// Serialises read-modify-write cycles and growth of the file; holds the bounce buffer
    /// unaligned `O_DIRECT` writes reuse.
    rmw: Mutex<Bounce>,
    /// The bounce buffer unaligned `O_DIRECT` reads reuse (a read that finds it busy
    /// allocates its own).
    read_bounce: Mutex<Bounce>,
    /// Cleared once the host says it cannot punch holes.
    can_punch: AtomicBool,
}

/// A heap buffer whose usable part is aligned to [`DIRECT_ALIGN`].
struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let align = DIRECT_ALIGN as usize;
        let storage = vec![0u8; len + align];
        let start = storage.as_ptr().align_offset(align);
        AlignedBuf {
            storage,
            start,
            len,
        }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }

    fn as_ref(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

/// A lazily allocated [`BOUNCE_MAX`]-byte aligned buffer kept for reuse, so that bouncing a
/// request neither allocates nor zeroes memory. Its contents are stale: every user
/// overwrites (by a read or a copy) the part it uses before using it.
#[derive(Default)]
struct Bounce(Option<AlignedBuf>);

impl std::fmt::Debug for Bounce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bounce")
    }
}

impl Bounce {
    /// The first `len` (at most [`BOUNCE_MAX`]) bytes of the buffer.
    fn get(&mut self, len: usize) -> &mut [u8] {
        let b = self.0.get_or_insert_with(|| AlignedBuf::new(BOUNCE_MAX));
        &mut b.as_mut()[..len]
    }
}

fn align_down(v: u64) -> u64 {
    v & !(DIRECT_ALIGN - 1)
}

fn align_up(v: u64) -> Option<u64> {
    v.checked_add(DIRECT_ALIGN - 1).map(align_down)
}

fn is_aligned(offset: u64, buf: &[u8]) -> bool {
    offset % DIRECT_ALIGN == 0
        && buf.len() as u64 % DIRECT_ALIGN == 0
        && (buf.as_ptr() as usize) % DIRECT_ALIGN as usize == 0
}

impl HostFile {
    /// Opens `path` (a regular file or a block device).
    pub fn open(path: &Path, opts: FileOptions) -> Result<HostFile, BlockError> {
        HostFile::open_with(&crate::opener::PathOpener, path, opts, NameOrigin::Config)
    }

    /// Opens `path` through `opener` (which may map it to a passed descriptor or confine
    /// it); `origin` says whether the name came from the configuration or an image.
    pub fn open_with(
        opener: &dyn Opener,
        path: &Path,
        opts: FileOptions,
        origin: NameOrigin,
    ) -> Result<HostFile, BlockError> {
        let mut flags = if opts.read_only {
            libc::O_RDONLY
        } else {
            libc::O_RDWR
        };
        if opts.direct {
            flags |= libc::O_DIRECT;
        }
        let file = opener.open(path, flags, origin).map_err(|source| {
            let source = if opts.direct && source.raw_os_error() == Some(libc::EINVAL) {
                io::Error::other(
                    "the file system does not support O_DIRECT (cache=none/directsync); \
                     use cache=writeback",
                )
            } else {
                source
            };
            BlockError::Open {
                path: path.to_path_buf(),
                source,
            }
        })?;
        let meta = file.metadata().map_err(|source| BlockError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let ft = meta.file_type();
        let is_block_device = ft.is_block_device();
        if !ft.is_file() && !is_block_device {
            return Err(BlockError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let len = if is_block_device {
            seek_end(&file).map_err(|source| BlockError::Open {
                path: path.to_path_buf(),
                source,
            })?
        } else {
            meta.len()
        };
        Ok(HostFile {
            file,
            path: path.to_path_buf(),
            direct: opts.direct,
            read_only: opts.read_only,
            is_block_device,
            len: AtomicU64::new(len),
            rmw: Mutex::new(Bounce(None)),
            read_bounce: Mutex::new(Bounce(None)),
            can_punch: AtomicBool::new(true),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether the file is open with `O_DIRECT` (`cache=none`, `cache.direct=on`).
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// The file's current length.
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn raw_file(&self) -> &File {
        &self.file
    }

    fn io_err(&self, op: &'static str, offset: u64, source: io::Error) -> BlockError {
        BlockError::Io {
            path: self.path.clone(),
            op,
            offset,
            source,
        }
    }

    fn lock_rmw(&self) -> std::sync::MutexGuard<'_, Bounce> {
        self.rmw.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads `buf.len()` bytes at `offset`; bytes past the end of the file read as zeroes.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| self.io_err("read", offset, overflow()))?;
        if !self.direct || is_aligned(offset, buf) {
            return self.pread_full(offset, buf);
        }
        let mut shared = self.read_bounce.try_lock().ok();
        let mut own = Bounce(None);
        let bounce = shared.as_deref_mut().unwrap_or(&mut own);
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let a0 = align_down(pos);
            let want_end = offset + buf.len() as u64;
            let a1 = align_up(want_end)
                .ok_or_else(|| self.io_err("read", pos, overflow()))?
                .min(a0 + BOUNCE_MAX as u64);
            let chunk = bounce.get((a1 - a0) as usize);
            self.pread_full(a0, chunk)?;
            let skip = (pos - a0) as usize;
            let n = (chunk.len() - skip).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&chunk[skip..skip + n]);
            done += n;
        }
        Ok(())
    }

    /// `pread` until `buf` is full or end of file (the rest is zeroed). With `O_DIRECT`,
    /// `offset`, `buf` and its length are aligned.
    fn pread_full(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            match self.file.read_at(&mut buf[done..], pos) {
                Ok(0) => break,
                Ok(n) => {
                    done += n;
                    // A short O_DIRECT read that ends unaligned stopped at end of file.
                    if self.direct && (pos + n as u64) % DIRECT_ALIGN != 0 {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_err("read", pos, e)),
            }
        }
        buf[done..].fill(0);
        Ok(())
    }

    fn pwrite_full(&self, offset: u64, buf: &[u8]) -> Result<(), BlockError> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| self.io_err("write", offset, e))
    }

    /// Writes `buf` at `offset`, growing the file if the write ends past its end.
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| self.io_err("write", offset, overflow()))?;
        if self.is_block_device && end > self.len() {
            return Err(BlockError::OutOfRange {
                offset,
                len: buf.len() as u64,
                size: self.len(),
            });
        }
        let grows = end > self.len();
        if !self.direct || (is_aligned(offset, buf) && !grows) {
            if grows {
                let _g = self.lock_rmw();
                self.pwrite_full(offset, buf)?;
                self.len.fetch_max(end, Ordering::AcqRel);
            } else {
                self.pwrite_full(offset, buf)?;
            }
            return Ok(());
        }
        let mut bounce = self.lock_rmw();
        let old_len = self.len();
        if is_aligned(offset, buf) {
            self.pwrite_full(offset, buf)?;
        } else {
            let mut done = 0usize;
            while done < buf.len() {
                let pos = offset + done as u64;
                let a0 = align_down(pos);
                let a1 = align_up(end)
                    .ok_or_else(|| self.io_err("write", pos, overflow()))?
                    .min(a0 + BOUNCE_MAX as u64);
                let chunk = bounce.get((a1 - a0) as usize);
                let skip = (pos - a0) as usize;
                let n = (chunk.len() - skip).min(buf.len() - done);
                // Only the partial blocks at either end need their old contents.
                let whole = skip == 0 && n == chunk.len();
                if !whole {
                    self.pread_full(a0, chunk)?;
                }
                chunk[skip..skip + n].copy_from_slice(&buf[done..done + n]);
                self.pwrite_full(a0, chunk)?;
                done += n;
            }
        }
        // An aligned write may have grown the file past the end of the data: trim it back.
        // Only a write whose last block is partial and reaches past the old end can have.
        let new_len = old_len.max(end);
        let overshoot = end % DIRECT_ALIGN != 0 && align_up(end).is_none_or(|a| a > old_len);
        if !self.is_block_device && overshoot {
            let on_disk = self
                .file
                .metadata()
                .map_err(|e| self.io_err("stat", offset, e))?
                .len();
            if on_disk > new_len {
                self.file
                    .set_len(new_len)
                    .map_err(|e| self.io_err("truncate", new_len, e))?;
            }
        }
        self.len.store(new_len, Ordering::Release);
        Ok(())
    }

    /// Whether `offset` and `bufs` are aligned as `O_DIRECT` needs (always, without it).
    pub(crate) fn guest_aligned(&self, offset: u64, bufs: &[GuestBuf]) -> bool {
        let align = DIRECT_ALIGN as usize;
        !self.direct
            || (offset % DIRECT_ALIGN == 0
                && bufs
                    .iter()
                    .all(|b| b.addr() % align == 0 && b.len() % align == 0))
    }

    /// Fills the guest buffers `bufs` from `offset` with `preadv`, bytes past the end of the
    /// file as zeroes; `Ok(false)` (nothing read) if they lack the alignment `O_DIRECT` needs.
    pub fn read_guest_at(&self, offset: u64, bufs: &[GuestBuf]) -> Result<bool, BlockError> {
        offset
            .checked_add(guest_len(bufs))
            .ok_or_else(|| self.io_err("read", offset, overflow()))?;
        if !self.guest_aligned(offset, bufs) {
            return Ok(false);
        }
        self.vectored(false, offset, bufs)?;
        Ok(true)
    }

    /// Writes the guest buffers `bufs` at `offset` with `pwritev`, growing the file if the
    /// write ends past its end (serialised with the other growth, as in
    /// [`HostFile::write_at`]); `Ok(false)` (nothing written) if they lack the alignment
    /// `O_DIRECT` needs or the write would grow a block device.
    pub fn write_guest_at(&self, offset: u64, bufs: &[GuestBuf]) -> Result<bool, BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let end = offset
            .checked_add(guest_len(bufs))
            .ok_or_else(|| self.io_err("write", offset, overflow()))?;
        if !self.guest_aligned(offset, bufs) || (self.is_block_device && end > self.len()) {
            return Ok(false);
        }
        if end > self.len() {
            // (Aligned: no partial block to trim past the data afterwards.)
            let _g = self.lock_rmw();
            self.vectored(true, offset, bufs)?;
            self.len.fetch_max(end, Ordering::AcqRel);
        } else {
            self.vectored(true, offset, bufs)?;
        }
        Ok(true)
    }

    /// `pwritev` (`write`) or `preadv` of all of `bufs` from `offset`, in calls of at most
    /// [`IOV_MAX`] buffers, going on after short transfers; a read stops at end of file and
    /// zeroes the rest.
    fn vectored(&self, write: bool, offset: u64, bufs: &[GuestBuf]) -> Result<(), BlockError> {
        let op = if write { "write" } else { "read" };
        let fd = self.file.as_raw_fd();
        let mut iov: Vec<libc::iovec> = bufs
            .iter()
            .filter(|b| !b.is_empty())
            .map(GuestBuf::iovec)
            .collect();
        let mut first = 0usize;
        let mut pos = offset;
        while let Some(rest) = iov.get(first..).filter(|r| !r.is_empty()) {
            let count = rest.len().min(IOV_MAX);
            let at = libc::off_t::try_from(pos).map_err(|_| self.io_err(op, pos, overflow()))?;
            // SAFETY: `rest` is a live slice of at least `count` iovecs, each naming (part of)
            // a `GuestBuf`, which `GuestBuf::new`'s contract keeps mapped, readable and
            // writable for the call; the kernel reads or writes only those ranges.
            let r = unsafe {
                if write {
                    libc::pwritev(fd, rest.as_ptr(), count as libc::c_int, at)
                } else {
                    libc::preadv(fd, rest.as_ptr(), count as libc::c_int, at)
                }
            };
            let mut n = match usize::try_from(r) {
                Ok(n) => n,
                Err(_) => {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(self.io_err(op, pos, e));
                }
            };
            if n == 0 {
                if write {
                    return Err(self.io_err(op, pos, io::ErrorKind::WriteZero.into()));
                }
                break;
            }
            pos += n as u64;
            while let Some(v) = iov.get_mut(first).filter(|_| n > 0) {
                if n >= v.iov_len {
                    n -= v.iov_len;
                    first += 1;
                } else {
                    v.iov_base = v.iov_base.cast::<u8>().wrapping_add(n).cast();
                    v.iov_len -= n;
                    n = 0;
                }
            }
            // A short O_DIRECT read that ends unaligned stopped at end of file.
            if !write && self.direct && pos % DIRECT_ALIGN != 0 {
                break;
            }
        }
        if !write {
            for v in iov.get(first..).unwrap_or_default() {
                // SAFETY: as above: what is left of a `GuestBuf`, mapped and writable.
                unsafe { std::ptr::write_bytes(v.iov_base.cast::<u8>(), 0, v.iov_len) };
            }
        }
        Ok(())
    }

    /// `fdatasync`.
    pub fn flush(&self) -> Result<(), BlockError> {
        if self.read_only {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(|e| self.io_err("flush", 0, e))
    }

    /// Sets the file's length (regular files only).
    pub fn set_len(&self, len: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let _g = self.lock_rmw();
        self.file
            .set_len(len)
            .map_err(|e| self.io_err("truncate", len, e))?;
        self.len.store(len, Ordering::Release);
        Ok(())
    }

    /// Whether punching holes has not (yet) been refused by the host.
    pub fn can_punch(&self) -> bool {
        self.can_punch.load(Ordering::Relaxed)
    }

    fn fallocate(
        &self,
        op: &'static str,
        mode: libc::c_int,
        offset: u64,
        len: u64,
    ) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        if len == 0 {
            return Ok(());
        }
        let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(self.io_err(op, offset, overflow()));
        };
        loop {
            // SAFETY: fallocate on a descriptor we own; it touches no memory of ours.
            let r = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, l) };
            if r == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(self.io_err(op, offset, e));
            }
        }
    }

    /// Deallocates `[offset, offset+len)` (it then reads as zeroes), keeping the file size.
    pub fn punch_hole(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        let r = self.fallocate(
            "discard",
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        );
        if let Err(e) = &r {
            if e.is_unsupported() {
                self.can_punch.store(false, Ordering::Relaxed);
            }
        }
        r
    }

    /// Makes `[offset, offset+len)` read as zeroes: a hole if `may_unmap` and the host can
    /// punch, otherwise `FALLOC_FL_ZERO_RANGE`, otherwise written zeroes.
    pub fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let end = offset
            .checked_add(len)
            .ok_or_else(|| self.io_err("write zeroes", offset, overflow()))?;
        // Holes and zero ranges never grow a file: only use them inside it.
        if end <= self.len() {
            if may_unmap && self.can_punch() {
                match self.punch_hole(offset, len) {
                    Ok(()) => return Ok(()),
                    Err(e) if e.is_unsupported() => {}
                    Err(e) => return Err(e),
                }
            }
            let mode = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
            match self.fallocate("write zeroes", mode, offset, len) {
                Ok(()) => return Ok(()),
                Err(e) if e.is_unsupported() || e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(e),
            }
        }
        let chunk = AlignedBuf::new(BOUNCE_MAX.min(usize::try_from(len).unwrap_or(BOUNCE_MAX)));
        let mut pos = offset;
        while pos < end {
            let n = (end - pos).min(chunk.len as u64) as usize;
            self.write_at(pos, &chunk.as_ref()[..n])?;
            pos += n as u64;
        }
        Ok(())
    }
}

fn overflow() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "offset overflows")
}

fn seek_end(file: &File) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::End(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str, len: u64) -> PathBuf {
        let p = crate::testutil::scratch_dir().join(name);
        let f = File::create(&p).unwrap();
        f.set_len(len).unwrap();
        p
    }

    fn open(p: &Path, direct: bool) -> HostFile {
        HostFile::open(
            p,
            FileOptions {
                read_only: false,
                direct,
            },
        )
        .unwrap()
    }

    /// Page-aligned host memory standing in for guest RAM, and `GuestBuf`s over pieces of it.
    struct Ram(Vec<u8>, usize);

    impl Ram {
        fn new(len: usize) -> Ram {
            let v = vec![0u8; len + 4096];
            let start = v.as_ptr().align_offset(4096);
            Ram(v, start)
        }

        fn bytes(&mut self) -> &mut [u8] {
            let s = self.1;
            &mut self.0[s..]
        }

        /// Buffers of `len` bytes at each of `offsets`.
        fn bufs(&mut self, offsets: &[usize], len: usize) -> Vec<GuestBuf> {
            let base = self.bytes().as_mut_ptr();
            offsets
                .iter()
                .map(|&o| {
                    assert!(o + len <= self.0.len() - self.1);
                    // SAFETY: inside `self`, which outlives the buffers in each test.
                    unsafe { GuestBuf::new(base.add(o), len) }
                })
                .collect()
        }
    }

    #[test]
    fn guest_buffers_are_written_and_read_in_order_in_batches_of_iov_max() {
        for direct in [false, true] {
            let p = tmp("vectored", 1 << 20);
            let f = open(&p, direct);
            let mut ram = Ram::new(1 << 20);
            for (i, b) in ram.bytes().iter_mut().enumerate() {
                *b = (i / 4096) as u8 ^ (i as u8);
            }
            // 256 pages in reverse order, then 1500 buffers of 512 bytes (buffered only:
            // O_DIRECT needs 4 KiB here, and refuses them untouched).
            let pages: Vec<usize> = (0..256).rev().map(|i| i * 4096).collect();
            let bufs = ram.bufs(&pages, 4096);
            assert!(f.write_guest_at(0, &bufs).unwrap());
            let data = std::fs::read(&p).unwrap();
            for (k, &o) in pages.iter().enumerate() {
                assert_eq!(data[k * 4096..][..4096], ram.bytes()[o..o + 4096]);
            }
            let small: Vec<usize> = (0..1500).map(|i| i * 512).collect();
            let bufs = ram.bufs(&small, 512);
            assert_eq!(f.write_guest_at(4096, &bufs).unwrap(), !direct);
            let mut back = Ram::new(1 << 20);
            let bufs = back.bufs(&pages, 4096);
            assert!(f.read_guest_at(0, &bufs).unwrap());
            let data = std::fs::read(&p).unwrap();
            for (k, &o) in pages.iter().enumerate() {
                assert_eq!(back.bytes()[o..o + 4096], data[k * 4096..][..4096]);
            }
            if !direct {
                assert_eq!(data[4096..4096 + 1500 * 512], ram.bytes()[..1500 * 512]);
            }
        }
    }

    #[test]
    fn guest_buffers_read_past_the_end_of_the_file_as_zeroes() {
        for direct in [false, true] {
            let p = tmp("vectored-eof", 0);
            std::fs::write(&p, vec![7u8; 6000]).unwrap();
            let f = open(&p, direct);
            let mut ram = Ram::new(4 * 4096);
            ram.bytes().fill(0xee);
            let bufs = ram.bufs(&[8192, 0, 4096], 4096);
            assert!(f.read_guest_at(0, &bufs).unwrap());
            let b = ram.bytes();
            assert!(b[8192..12288].iter().all(|&x| x == 7));
            assert!(b[..6000 - 4096].iter().all(|&x| x == 7));
            assert!(b[6000 - 4096..4096].iter().all(|&x| x == 0));
            assert!(b[4096..8192].iter().all(|&x| x == 0));
            assert!(
                b[12288..].iter().all(|&x| x == 0xee),
                "nothing else touched"
            );
        }
    }

    #[test]
    fn a_guest_write_past_the_end_grows_the_file() {
        for direct in [false, true] {
            let p = tmp("vectored-grow", 4096);
            let f = open(&p, direct);
            let mut ram = Ram::new(8192);
            ram.bytes()[..4096].fill(3);
            ram.bytes()[4096..].fill(4);
            let bufs = ram.bufs(&[0, 4096], 4096);
            assert!(f.write_guest_at(8192, &bufs).unwrap());
            assert_eq!(f.len(), 16384);
            let data = std::fs::read(&p).unwrap();
            assert_eq!(data.len(), 16384);
            assert!(
                data[4096..8192].iter().all(|&x| x == 0),
                "the gap reads as zeroes"
            );
            assert!(data[8192..12288].iter().all(|&x| x == 3));
            assert!(data[12288..].iter().all(|&x| x == 4));
            // Unaligned for O_DIRECT: left to the copy path, nothing written.
            let odd = ram.bufs(&[512], 4096);
            assert_eq!(f.write_guest_at(16384, &odd).unwrap(), !direct);
            let grown = if direct { 16384 } else { 20480 };
            assert_eq!(std::fs::metadata(&p).unwrap().len(), grown);
        }
    }

    #[test]
    fn unaligned_direct_write_keeps_neighbouring_bytes() {
        let p = tmp("rmw", 16384);
        std::fs::write(&p, vec![0xaau8; 16384]).unwrap();
        let f = open(&p, true);

        f.write_at(4090, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
            .unwrap();

        let data = std::fs::read(&p).unwrap();
        assert_eq!(data.len(), 16384);
        assert_eq!(
            &data[4088..4104],
            &[0xaa, 0xaa, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0xaa, 0xaa]
        );
    }

    #[test]
    fn reused_bounce_buffer_leaks_nothing_into_later_requests() {
        // The bounce buffers are reused without zeroing: a request after a big one must only
        // see its own bytes and the file's.
        let p = tmp("reuse", 0);
        let f = open(&p, true);
        f.write_at(1, &vec![0xaau8; 1 << 20]).unwrap();
        let mut big = vec![0u8; (1 << 20) - 7];
        f.read_at(3, &mut big).unwrap();

        f.write_at((2 << 20) + 100, &[5, 6]).unwrap();
        f.write_at((3 << 20) + 4096, &vec![3u8; 8192 + 1]).unwrap();
        let mut small = vec![0xffu8; 300];
        f.read_at((2 << 20) - 50, &mut small).unwrap();

        let data = std::fs::read(&p).unwrap();
        assert_eq!(data.len(), (3 << 20) + 4096 + 8193);
        assert!(data[(1 << 20) + 1..(2 << 20) + 100].iter().all(|&b| b == 0));
        assert_eq!(&data[(2 << 20) + 100..(2 << 20) + 102], &[5, 6]);
        assert!(data[(2 << 20) + 102..(3 << 20) + 4096]
            .iter()
            .all(|&b| b == 0));
        assert!(small[..150].iter().all(|&b| b == 0));
        assert_eq!(&small[150..152], &[5, 6]);
        assert!(small[152..].iter().all(|&b| b == 0));
        assert_eq!(f.len(), data.len() as u64);
    }

    #[test]
    fn unaligned_direct_read_returns_the_right_bytes() {
        let p = tmp("rd", 0);
        let content: Vec<u8> = (0..20000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &content).unwrap();
        let f = open(&p, true);
        let mut buf = vec![0u8; 9000];

        f.read_at(3333, &mut buf).unwrap();

        assert_eq!(&buf[..], &content[3333..12333]);
    }

    #[test]
    fn direct_read_past_end_of_unaligned_file_is_zero_filled() {
        let p = tmp("tail", 0);
        std::fs::write(&p, vec![7u8; 5000]).unwrap();
        let f = open(&p, true);
        let mut buf = vec![0xffu8; 4096];

        f.read_at(4096, &mut buf).unwrap();

        assert!(buf[..904].iter().all(|&b| b == 7));
        assert!(buf[904..].iter().all(|&b| b == 0));
    }

    #[test]
    fn direct_write_at_unaligned_tail_does_not_grow_the_file_past_the_data() {
        let p = tmp("grow", 0);
        std::fs::write(&p, vec![7u8; 5000]).unwrap();
        let f = open(&p, true);

        f.write_at(4999, &[9, 9]).unwrap();

        let data = std::fs::read(&p).unwrap();
        assert_eq!(data.len(), 5001);
        assert_eq!(&data[4998..], &[7, 9, 9]);
        assert_eq!(f.len(), 5001);
    }

    #[test]
    fn large_unaligned_write_spans_several_bounce_buffers() {
        let p = tmp("big", 3 << 20);
        let f = open(&p, true);
        let data: Vec<u8> = (0..(2 << 20) + 777).map(|i| (i % 253) as u8).collect();

        f.write_at(123, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        f.read_at(123, &mut back).unwrap();

        assert!(back == data);
    }

    #[test]
    fn punch_hole_reads_back_zeroes_and_frees_blocks() {
        let p = tmp("punch", 0);
        std::fs::write(&p, vec![1u8; 1 << 20]).unwrap();
        let f = open(&p, false);
        f.flush().unwrap();
        let before = crate::testutil::allocated_bytes(&p);

        f.punch_hole(0, 512 << 10).unwrap();

        let mut buf = vec![1u8; 4096];
        f.read_at(4096, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        assert!(crate::testutil::allocated_bytes(&p) < before);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 1 << 20);
    }

    #[test]
    fn write_zeroes_zeroes_the_range_only() {
        let p = tmp("wz", 0);
        std::fs::write(&p, vec![5u8; 8192]).unwrap();
        let f = open(&p, false);

        f.write_zeroes(100, 5000, false).unwrap();

        let data = std::fs::read(&p).unwrap();
        assert!(data[..100].iter().all(|&b| b == 5));
        assert!(data[100..5100].iter().all(|&b| b == 0));
        assert!(data[5100..].iter().all(|&b| b == 5));
    }

    #[test]
    fn read_only_file_refuses_writes() {
        let p = tmp("ro", 4096);
        let f = HostFile::open(
            &p,
            FileOptions {
                read_only: true,
                direct: false,
            },
        )
        .unwrap();

        assert!(matches!(f.write_at(0, &[1]), Err(BlockError::ReadOnly)));
    }

    #[test]
    fn directory_is_refused_by_name() {
        let d = crate::testutil::scratch_dir();

        let err = HostFile::open(
            &d,
            FileOptions {
                read_only: true,
                direct: false,
            },
        )
        .unwrap_err();

        assert!(matches!(err, BlockError::NotAFile { .. }), "{err}");
    }
}
