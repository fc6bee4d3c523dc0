//! The qcow2 format (versions 2 and 3, 16-bit refcounts), over the file protocol.
//!
//! - [`header`]: parsing and validation of the header (pure).
//! - [`meta`]: L1/L2 tables, refcounts, allocation, crash-safe write-back.
//! - [`cache`]: the bounded metadata cache.
//! - [`compress`]: compressed clusters (deflate, zstd).
//! - [`repair`]: rebuilding the refcounts of a dirty (lazy-refcount) image on a writable open.
//!
//! Everything read from the image is validated before use: table offsets and sizes against the
//! file size and fixed limits, every L1/L2/refcount entry when it is followed. Memory is
//! bounded by the L1 table (at most 32 MiB, as QEMU), the refcount table (8 MiB) and the
//! caches (5 MiB), whatever the header claims.

mod cache;
mod compress;
pub mod header;
mod meta;
mod repair;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rampart_config::{CacheConfig, DiscardMode};

use crate::file::HostFile;
use crate::file::DIRECT_ALIGN;
use crate::{check_range, guest_len, guest_range, BlockBackend, BlockError, GuestBuf};
use header::Header;
use meta::{Mapping, Meta, OFLAG_COPIED, OFLAG_ZERO};

/// What is wrong with an image (turned into a [`BlockError`] naming the file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Qcow2Error {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Corrupt(String),
}

impl Qcow2Error {
    pub fn into_block_error(self, path: &Path) -> BlockError {
        let path = path.to_path_buf();
        match self {
            Qcow2Error::Invalid(reason) => BlockError::Invalid {
                path,
                format: "qcow2",
                reason,
            },
            Qcow2Error::Unsupported(reason) => BlockError::Unsupported { path, reason },
            Qcow2Error::Corrupt(reason) => BlockError::Corrupt {
                path,
                format: "qcow2",
                reason,
            },
        }
    }
}

pub(crate) fn be32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_be_bytes(a)
}

pub(crate) fn be64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_be_bytes(a)
}

/// Reads and validates the header of an open image file.
pub fn read_header(file: &HostFile) -> Result<Header, BlockError> {
    let len = file.len();
    // The header and its extensions live in the first cluster: read the cluster size, then
    // that cluster (not a whole 2 MiB for every image), bounded by the largest cluster size.
    let mut fixed = [0u8; 24];
    file.read_at(0, &mut fixed)?;
    let bits = be32(&fixed, 20).clamp(header::MIN_CLUSTER_BITS, header::MAX_CLUSTER_BITS);
    let want = len.min(1 << bits) as usize;
    let mut head = vec![0u8; want];
    file.read_at(0, &mut head)?;
    let first = match header::parse(&head, len) {
        Ok(h) => h,
        Err(e) => return Err(e.into_block_error(file.path())),
    };
    Ok(first)
}

/// An open qcow2 image.
pub struct Qcow2Backend {
    file: Arc<HostFile>,
    meta: Mutex<Meta>,
    size: u64,
    cs: u64,
    version: u32,
    compression: header::Compression,
    backing: Option<Arc<dyn BlockBackend>>,
    cache: CacheConfig,
    discard: DiscardMode,
}

impl std::fmt::Debug for Qcow2Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Backend")
            .field("path", &self.file.path())
            .field("size", &self.size)
            .finish()
    }
}

impl Qcow2Backend {
    /// Opens an image whose header was read with [`read_header`]; `backing` is the already
    /// opened backing file, if any.
    pub fn open(
        file: Arc<HostFile>,
        mut hdr: Header,
        backing: Option<Arc<dyn BlockBackend>>,
        cache: CacheConfig,
        discard: DiscardMode,
    ) -> Result<Qcow2Backend, BlockError> {
        let writable = !file.read_only();
        let refuse = |reason: String| BlockError::Unsupported {
            path: file.path().to_path_buf(),
            reason,
        };
        if writable {
            if hdr.is_corrupt() {
                return Err(refuse(
                    "the image is marked corrupt; repair it with 'qemu-img check -r all' or \
                     open it read-only"
                        .into(),
                ));
            }
            if hdr.nb_snapshots > 0 {
                return Err(refuse(format!(
                    "the image has {} internal snapshots; rampart opens such images \
                     read-only only",
                    hdr.nb_snapshots
                )));
            }
            if hdr.autoclear != 0 && hdr.version >= 3 {
                // A writer that does not maintain what an autoclear bit describes (persistent
                // bitmaps, say) must clear it — before a repair frees the clusters it used.
                file.write_at(88, &0u64.to_be_bytes())?;
                file.flush()?;
                hdr.autoclear = 0;
            }
            if hdr.is_dirty() {
                // Lazy refcounts were not written back: rebuild them before any allocation
                // trusts them. A read-only open needs no refcounts and proceeds as is.
                repair::repair(&file, &mut hdr)?;
            }
        }
        let (size, cs, version, compression) =
            (hdr.size, hdr.cluster_size(), hdr.version, hdr.compression);
        let mut meta = Meta::load(file.clone(), hdr)?;
        meta.punch_freed = discard == DiscardMode::Unmap;
        meta.no_sync = cache.no_flush;
        Ok(Qcow2Backend {
            file,
            meta: Mutex::new(meta),
            size,
            cs,
            version,
            compression,
            backing,
            cache,
            discard,
        })
    }

    fn meta(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn writable(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        if self.file.read_only() {
            return Err(BlockError::ReadOnly);
        }
        check_range(offset, len, self.size)
    }

    /// Reads the guest bytes `[offset, offset+buf.len())` of unallocated clusters: from the
    /// backing file where it has them, zeroes elsewhere.
    fn read_backing(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let Some(b) = &self.backing else {
            buf.fill(0);
            return Ok(());
        };
        let bsize = b.size();
        let avail = bsize.saturating_sub(offset).min(buf.len() as u64) as usize;
        if avail > 0 {
            b.read_at(offset, &mut buf[..avail])?;
        }
        buf[avail..].fill(0);
        Ok(())
    }

    fn read_compressed(&self, offset: u64, len: u64, out: &mut [u8]) -> Result<(), BlockError> {
        // A cluster compresses to at most a little more than itself.
        let len = len.min(2 * self.cs + 512);
        let mut input = vec![0u8; len as usize];
        self.file.read_at(offset, &mut input)?;
        compress::decompress(self.compression, &input, out).map_err(|reason| BlockError::Corrupt {
            path: self.file.path().to_path_buf(),
            format: "qcow2",
            reason: format!("compressed cluster at 0x{offset:x}: {reason}"),
        })
    }

    /// The current guest contents of whole cluster `vc` (for copy-on-write).
    fn cluster_contents(&self, vc: u64, m: Mapping, out: &mut [u8]) -> Result<(), BlockError> {
        match m {
            Mapping::Unallocated => self.read_backing(vc * self.cs, out),
            Mapping::Zero { .. } => {
                out.fill(0);
                Ok(())
            }
            Mapping::Data { host, .. } => self.file.read_at(host, out),
            Mapping::Compressed { offset, len } => self.read_compressed(offset, len, out),
        }
    }

    /// Writes `data` at `in_off` inside guest cluster `vc`, allocating as needed. Called with
    /// the metadata lock held.
    fn write_cluster(
        &self,
        meta: &mut Meta,
        vc: u64,
        in_off: usize,
        data: &[u8],
    ) -> Result<(), BlockError> {
        let cs = self.cs as usize;
        let m = meta.lookup(vc)?;
        if let Mapping::Data { host, copied: true } = m {
            return self.file.write_at(host + in_off as u64, data);
        }
        let whole = in_off == 0 && data.len() == cs;
        let mut buf;
        let content: &[u8] = if whole {
            data
        } else {
            buf = vec![0u8; cs];
            self.cluster_contents(vc, m, &mut buf)?;
            buf[in_off..in_off + data.len()].copy_from_slice(data);
            &buf
        };
        // A preallocated zero cluster is ours (refcount 1): fill it in place.
        let host = match m {
            Mapping::Zero { host: Some(h) } if meta.refcount(h / self.cs)? == 1 => h,
            _ => meta.alloc_cluster()? * self.cs,
        };
        self.file.write_at(host, content)?;
        meta.set_l2(vc, host | OFLAG_COPIED)?;
        match m {
            Mapping::Compressed { offset, len } => meta.free_later(offset, len),
            Mapping::Data { host: old, .. } => meta.free_later(old, self.cs),
            Mapping::Zero { host: Some(h) } if h != host => meta.free_later(h, self.cs),
            _ => {}
        }
        Ok(())
    }

    /// Writes whole guest clusters `run` (consecutive, each with its old mapping and newly
    /// allocated host offset) from `data`, then updates their L2 entries.
    fn write_run(
        &self,
        meta: &mut Meta,
        run: &[(u64, Mapping, u64)],
        data: &[u8],
    ) -> Result<(), BlockError> {
        let cs = self.cs as usize;
        let mut i = 0;
        while i < run.len() {
            let mut j = i + 1;
            while j < run.len() && run[j].2 == run[j - 1].2 + self.cs {
                j += 1;
            }
            self.file.write_at(run[i].2, &data[i * cs..j * cs])?;
            i = j;
        }
        for &(vc, m, host) in run {
            meta.set_l2(vc, host | OFLAG_COPIED)?;
            match m {
                Mapping::Compressed { offset, len } => meta.free_later(offset, len),
                Mapping::Data { host: old, .. } => meta.free_later(old, self.cs),
                _ => {}
            }
        }
        Ok(())
    }

    /// Visits `[offset, offset+len)` cluster by cluster: `(guest cluster, offset in it,
    /// length, position in the request)`.
    fn clusters(&self, offset: u64, len: u64) -> impl Iterator<Item = (u64, usize, usize, usize)> {
        let cs = self.cs;
        let end = offset + len;
        let mut pos = offset;
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let vc = pos / cs;
            let in_off = pos % cs;
            let n = (cs - in_off).min(end - pos);
            let item = (vc, in_off as usize, n as usize, (pos - offset) as usize);
            pos += n;
            Some(item)
        })
    }

    /// Whether guest buffers can go straight between the image and the guest at `offset`:
    /// aligned as the file needs, and split only at cluster boundaries that keep them so.
    fn guest_direct(&self, offset: u64, bufs: &[GuestBuf]) -> bool {
        self.file.guest_aligned(offset, bufs)
            && (!self.file.direct() || self.cs % DIRECT_ALIGN == 0)
    }

    /// Host runs `(host offset, position in the request, length)` of the guest range
    /// `[offset, offset+len)`, merging clusters that follow one another on the host, with
    /// `host_of` giving each cluster's host offset (`None`: the request is not for this path).
    fn host_runs(
        &self,
        offset: u64,
        len: u64,
        mut host_of: impl FnMut(u64, usize, usize) -> Result<Option<u64>, BlockError>,
    ) -> Result<Option<Vec<HostRun>>, BlockError> {
        let mut runs: Vec<HostRun> = Vec::new();
        for (vc, in_off, n, pos) in self.clusters(offset, len) {
            let Some(host) = host_of(vc, in_off, n)? else {
                return Ok(None);
            };
            let at = host + in_off as u64;
            match runs.last_mut() {
                Some((h, p, l)) if *h + *l as u64 == at && *p + *l == pos => *l += n,
                _ => runs.push((at, pos, n)),
            }
        }
        Ok(Some(runs))
    }

    fn after_write(&self) -> Result<(), BlockError> {
        if self.cache.writethrough {
            self.flush()?;
        }
        Ok(())
    }

    /// Sets whole cluster `vc` to read as zeroes (`unmap`: release its host cluster) or, for
    /// discard without a zero flag available, unallocates it.
    fn zero_cluster(&self, meta: &mut Meta, vc: u64, unmap: bool) -> Result<bool, BlockError> {
        let m = meta.lookup(vc)?;
        let has_backing = self.backing.is_some();
        let entry = if self.version >= 3 {
            match m {
                Mapping::Data { host, copied: true } if !unmap => host | OFLAG_COPIED | OFLAG_ZERO,
                Mapping::Zero { host: Some(h) } if !unmap => h | OFLAG_COPIED | OFLAG_ZERO,
                Mapping::Zero { host: None } => return Ok(true),
                _ => OFLAG_ZERO,
            }
        } else if !has_backing && unmap {
            0
        } else {
            return Ok(false);
        };
        if m == Mapping::Unallocated && entry == 0 {
            return Ok(true);
        }
        meta.set_l2(vc, entry)?;
        let kept = entry & meta::L2E_OFFSET_MASK;
        match m {
            Mapping::Compressed { offset, len } => meta.free_later(offset, len),
            Mapping::Data { host, .. } | Mapping::Zero { host: Some(host) } if host != kept => {
                meta.free_later(host, self.cs)
            }
            _ => {}
        }
        Ok(true)
    }
}

/// Most clusters one allocating write handles at once (bounds the bookkeeping).
const MAX_WRITE_RUN: usize = 1024;

/// A piece of a request in the image file: (host offset, position in the request, length).
type HostRun = (u64, usize, usize);

/// Whether overwriting a whole cluster with this mapping takes a new host cluster.
fn needs_new_cluster(m: Mapping) -> bool {
    matches!(
        m,
        Mapping::Unallocated
            | Mapping::Zero { host: None }
            | Mapping::Compressed { .. }
            | Mapping::Data { copied: false, .. }
    )
}

impl BlockBackend for Qcow2Backend {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.file.read_only()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        check_range(offset, buf.len() as u64, self.size)?;
        let mut chunks = self.clusters(offset, buf.len() as u64).peekable();
        while let Some((vc, in_off, n, pos)) = chunks.next() {
            let m = self.meta().lookup(vc)?;
            match m {
                Mapping::Data { host, .. } => {
                    // Extend over host-contiguous clusters: one pread for the run.
                    let mut len = n;
                    let mut next_host = host + self.cs;
                    while let Some(&(nvc, _, nn, _)) = chunks.peek() {
                        match self.meta().lookup(nvc)? {
                            Mapping::Data { host: h, .. } if h == next_host => {
                                len += nn;
                                next_host += self.cs;
                                chunks.next();
                            }
                            _ => break,
                        }
                    }
                    self.file
                        .read_at(host + in_off as u64, &mut buf[pos..pos + len])?;
                }
                Mapping::Unallocated => {
                    self.read_backing(vc * self.cs + in_off as u64, &mut buf[pos..pos + n])?
                }
                Mapping::Zero { .. } => buf[pos..pos + n].fill(0),
                Mapping::Compressed { offset: co, len } => {
                    let mut tmp = vec![0u8; self.cs as usize];
                    self.read_compressed(co, len, &mut tmp)?;
                    buf[pos..pos + n].copy_from_slice(&tmp[in_off..in_off + n]);
                }
            }
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), BlockError> {
        self.writable(offset, buf.len() as u64)?;
        {
            let mut meta = self.meta();
            let mut chunks = self.clusters(offset, buf.len() as u64).peekable();
            while let Some((vc, in_off, n, pos)) = chunks.next() {
                let m = meta.lookup(vc)?;
                if let Mapping::Data { host, copied: true } = m {
                    // In place, over host-contiguous allocated clusters: one pwrite.
                    let mut len = n;
                    let mut next_host = host + self.cs;
                    while let Some(&(nvc, _, nn, _)) = chunks.peek() {
                        if meta.lookup(nvc)?
                            != (Mapping::Data {
                                host: next_host,
                                copied: true,
                            })
                        {
                            break;
                        }
                        len += nn;
                        next_host += self.cs;
                        chunks.next();
                    }
                    self.file
                        .write_at(host + in_off as u64, &buf[pos..pos + len])?;
                    continue;
                }
                if in_off == 0 && n as u64 == self.cs && needs_new_cluster(m) {
                    // Whole clusters needing new host clusters: allocate them all, write the
                    // data in host-contiguous runs, then point the L2 entries at it.
                    let mut run = vec![(vc, m, meta.alloc_cluster()? * self.cs)];
                    while run.len() < MAX_WRITE_RUN {
                        let Some(&(nvc, 0, nn, _)) = chunks.peek() else {
                            break;
                        };
                        if nn as u64 != self.cs {
                            break;
                        }
                        let nm = meta.lookup(nvc)?;
                        if !needs_new_cluster(nm) {
                            break;
                        }
                        chunks.next();
                        run.push((nvc, nm, meta.alloc_cluster()? * self.cs));
                    }
                    self.write_run(&mut meta, &run, &buf[pos..])?;
                    continue;
                }
                self.write_cluster(&mut meta, vc, in_off, &buf[pos..pos + n])?;
            }
        }
        self.after_write()
    }

    fn flush(&self) -> Result<(), BlockError> {
        if self.file.read_only() {
            return Ok(());
        }
        self.meta().flush_inner(true)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.writable(offset, len)?;
        if self.discard != DiscardMode::Unmap {
            return Ok(());
        }
        let mut meta = self.meta();
        for (vc, in_off, n, _) in self.clusters(offset, len) {
            // Only whole clusters can be released; partial ones keep their data.
            if in_off == 0 && n as u64 == self.cs {
                self.zero_cluster(&mut meta, vc, true)?;
            }
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<(), BlockError> {
        self.writable(offset, len)?;
        let unmap = may_unmap && self.discard == DiscardMode::Unmap;
        {
            let mut meta = self.meta();
            let zeroes = vec![0u8; self.cs as usize];
            for (vc, in_off, n, _) in self.clusters(offset, len) {
                let done = in_off == 0
                    && n as u64 == self.cs
                    && self.zero_cluster(&mut meta, vc, unmap)?;
                if !done {
                    self.write_cluster(&mut meta, vc, in_off, &zeroes[..n])?;
                }
            }
        }
        self.after_write()
    }

    fn supports_discard(&self) -> bool {
        self.discard == DiscardMode::Unmap && !self.file.read_only()
    }

    /// Straight from the image when every cluster of the request is allocated data (one
    /// `preadv` per host-contiguous run); otherwise left to the copy path.
    fn read_guest_at(&self, offset: u64, bufs: &[GuestBuf]) -> Result<bool, BlockError> {
        let len = guest_len(bufs);
        check_range(offset, len, self.size)?;
        if !self.guest_direct(offset, bufs) {
            return Ok(false);
        }
        let runs = {
            let mut meta = self.meta();
            self.host_runs(offset, len, |vc, _, _| {
                Ok(match meta.lookup(vc)? {
                    Mapping::Data { host, .. } => Some(host),
                    _ => None,
                })
            })?
        };
        let Some(runs) = runs else {
            return Ok(false);
        };
        for (host, pos, n) in runs {
            if !self.file.read_guest_at(host, &guest_range(bufs, pos, n))? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Straight into the image when every cluster of the request is allocated and ours
    /// (written in place), written whole (into a new cluster, as `write_at` does), or reads
    /// as zeroes (unallocated without a backing file, or a zero cluster without a host
    /// cluster: a new cluster, the rest of which is written with zeroes). The data goes
    /// first, one `pwritev` per host-contiguous run, then the zeroes, then the L2 entries of
    /// the new clusters. Otherwise it is left to the copy path, with nothing changed. (Linux
    /// splits a 1 MiB write into 1016 KiB and 8 KiB requests, 254 pages each at most: without
    /// the third kind, nearly every sequential write to a new qcow2 image was copied.)
    fn write_guest_at(&self, offset: u64, bufs: &[GuestBuf]) -> Result<bool, BlockError> {
        let len = guest_len(bufs);
        self.writable(offset, len)?;
        if !self.guest_direct(offset, bufs) {
            return Ok(false);
        }
        {
            let mut meta = self.meta();
            // Decide first, so a refused request changes nothing.
            let zeroes = |m| {
                self.backing.is_none()
                    && matches!(m, Mapping::Unallocated | Mapping::Zero { host: None })
            };
            let mut maps = Vec::new();
            for (vc, in_off, n, _) in self.clusters(offset, len) {
                let m = meta.lookup(vc)?;
                let in_place = matches!(m, Mapping::Data { copied: true, .. });
                let whole = in_off == 0 && n as u64 == self.cs && needs_new_cluster(m);
                if !in_place && !whole && !zeroes(m) {
                    return Ok(false);
                }
                maps.push(m);
            }
            // New clusters: (guest cluster, old mapping, host offset, the part written).
            let mut new = Vec::new();
            let mut maps = maps.into_iter();
            let runs = self.host_runs(offset, len, |vc, in_off, n| {
                // (The same clusters in the same order as above.)
                let Some(m) = maps.next() else {
                    return Ok(None);
                };
                Ok(Some(match m {
                    Mapping::Data { host, copied: true } => host,
                    _ => {
                        let host = meta.alloc_cluster()? * self.cs;
                        new.push((vc, m, host, in_off, n));
                        host
                    }
                }))
            })?;
            // (Every cluster has its place: the closure never refuses one.)
            let Some(runs) = runs else {
                return Ok(false);
            };
            for (host, pos, n) in runs {
                if !self.file.write_guest_at(host, &guest_range(bufs, pos, n))? {
                    // (The clusters allocated leak; the guest sees the error.)
                    return Err(BlockError::Unsupported {
                        path: self.file.path().to_path_buf(),
                        reason: "a qcow2 data cluster past the end of a block device".into(),
                    });
                }
            }
            // The rest of each new cluster written in part: zeroes, as it read before.
            let cs = self.cs as usize;
            let mut zero = Vec::new();
            for &(_, _, host, in_off, n) in &new {
                for (at, len) in [(0, in_off), (in_off + n, cs - in_off - n)] {
                    if len > 0 {
                        zero.resize(cs, 0u8);
                        self.file.write_at(host + at as u64, &zero[..len])?;
                    }
                }
            }
            for (vc, m, host, _, _) in new {
                meta.set_l2(vc, host | OFLAG_COPIED)?;
                match m {
                    Mapping::Compressed { offset, len } => meta.free_later(offset, len),
                    Mapping::Data { host: old, .. } => meta.free_later(old, self.cs),
                    _ => {}
                }
            }
        }
        self.after_write()?;
        Ok(true)
    }
}

impl Drop for Qcow2Backend {
    fn drop(&mut self) {
        if self.file.read_only() {
            return;
        }
        if let Err(e) = self.meta().flush_inner(true) {
            tracing::error!(
                "'{}': writing back qcow2 metadata failed: {e}",
                self.file.path().display()
            );
        }
    }
}
