//! The virtio-blk request queue: each available chain is one request — a 16-byte
//! device-readable header (type, reserved, sector), data, and a device-writable status byte
//! last. Requests go to a [`BlockBackend`]; the device never knows the image format.
//!
//! Every request is checked before any I/O: the header must be readable, the status byte
//! writable, sectors and lengths inside the disk (no overflow), data no larger than
//! [`MAX_REQUEST_BYTES`], discard/write-zeroes segments at most [`MAX_SEGMENTS`]. A malformed
//! request is answered with VIRTIO_BLK_S_IOERR (or UNSUPP) when it has a status byte, and
//! returned used with length 0 when it has none; it never stops the device.
//!
//! Reads and writes go straight between the guest's buffers and the image when the back end
//! can (a raw image; with `cache=none` only buffers aligned as `O_DIRECT` needs): the guest
//! buffers, each checked to lie in one region of guest RAM, are handed to `preadv`/`pwritev`.
//! Otherwise the data is copied through a buffer of the device's.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Instant;

use rampart_block::stats::{BlockStats, IoKind};
use rampart_block::throttle::{self, ThrottleHandle};
use rampart_block::{BlockBackend, GuestBuf};
use tracing::debug;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::virtio::QueueError;

/// Bytes per virtio-blk sector (fixed by the specification, whatever the block size).
pub const SECTOR_SIZE: u64 = 512;
/// Largest data transfer of one request (reads and writes): 16 MiB. The driver may send at most
/// `seg_max` segments of `size_max` bytes (and Linux usually sends 1 MiB or less).
pub const MAX_REQUEST_BYTES: usize = 16 << 20;
/// Most discard/write-zeroes segments in one request (advertised as max_discard_seg).
pub const MAX_SEGMENTS: usize = 32;
/// Length of the ID string GET_ID returns.
pub const ID_BYTES: usize = 20;
/// Bytes of a discard/write-zeroes segment.
const SEGMENT_BYTES: usize = 16;
/// Write-zeroes segment flag: the device may unmap (punch a hole).
const WRITE_ZEROES_UNMAP: u32 = 1;

/// What the queue handler needs to serve requests.
pub struct BlockRequests {
    pub disk: Arc<dyn BlockBackend>,
    pub serial: [u8; ID_BYTES],
    /// The device's I/O accounting (read by the monitor).
    pub stats: Arc<BlockStats>,
    /// Bytes the current request moved, and (for writes) the end of its range.
    acct_bytes: u64,
    acct_end: Option<u64>,
    /// Scratch buffer reused across requests (at most [`MAX_REQUEST_BYTES`]).
    buf: Scratch,
    /// The drive's (or its group's) I/O limits.
    pub throttle: Option<Arc<ThrottleHandle>>,
    /// Set when processing stopped at a throttled request: how long until it may start.
    pub throttled_for: Option<std::time::Duration>,
    /// Told of the buffers written (see [`crate::virtio::GuestWriteHook`]).
    pub guest_writes: Option<crate::virtio::GuestWriteHook>,
}

/// Why a request failed; becomes its status byte.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The back end failed the request.
    IoErr,
    /// The request was malformed (out of range, misaligned, too large): no I/O was done.
    Invalid,
    Unsupported,
}

impl BlockRequests {
    pub fn new(disk: Arc<dyn BlockBackend>, serial: &str, stats: Arc<BlockStats>) -> Self {
        let mut s = [0u8; ID_BYTES];
        let n = serial.len().min(ID_BYTES);
        s[..n].copy_from_slice(&serial.as_bytes()[..n]);
        BlockRequests {
            disk,
            serial: s,
            stats,
            acct_bytes: 0,
            acct_end: None,
            buf: Scratch::default(),
            throttle: None,
            throttled_for: None,
            guest_writes: None,
        }
    }

    /// What a request costs its throttle: its kind and data bytes (from its header and
    /// buffer sizes; a malformed request costs nothing and fails later).
    fn cost(
        mem: &GuestMemoryMmap,
        chain: &virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    ) -> (throttle::IoKind, u64) {
        let none = (throttle::IoKind::Other, 0);
        let Ok(mut r) = Reader::<()>::new(mem, chain.clone()) else {
            return none;
        };
        let mut header = [0u8; 16];
        if r.read_exact(&mut header).is_err() {
            return none;
        }
        match u32::from_le_bytes([header[0], header[1], header[2], header[3]]) {
            VIRTIO_BLK_T_IN => {
                let w = Writer::<()>::new(mem, chain.clone()).map_or(0, |w| w.available_bytes());
                (throttle::IoKind::Read, w.saturating_sub(1) as u64)
            }
            VIRTIO_BLK_T_OUT => (throttle::IoKind::Write, r.available_bytes() as u64),
            _ => none,
        }
    }

    /// Serves every available request on `queue`; returns whether any was completed.
    ///
    /// Reads (or writes) that can go straight between guest buffers and the image and follow
    /// each other on the disk are merged into one transfer, as QEMU's virtio-blk does: Linux
    /// splits a 1 MiB request into 1016 KiB and 8 KiB (254 segments), which then cost the
    /// host one `preadv`/`pwritev` instead of two.
    pub fn process(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        let mut used = false;
        self.throttled_for = None;
        let mut batch: Vec<Pending<'_>> = Vec::new();
        while let Some(chain) = queue.iter(mem)?.next() {
            if let Some(t) = &self.throttle {
                let (kind, bytes) = Self::cost(mem, &chain);
                if let Some(wait) = t.wait(kind) {
                    // Slowed, never failed: the request waits in the ring for the timer.
                    queue.go_to_previous_position();
                    self.throttled_for = Some(wait);
                    break;
                }
                t.take(kind, bytes);
            }
            let span = self.span(mem, &chain);
            if !joins(&batch, span.as_ref()) {
                used |= self.serve(&mut batch, queue, mem)?;
            }
            batch.push(Pending { chain, span });
        }
        used |= self.serve(&mut batch, queue, mem)?;
        Ok(used)
    }

    /// Serves `batch` (one request, or requests merged by [`joins`]) and returns them used;
    /// returns whether there were any.
    fn serve<'m>(
        &mut self,
        batch: &mut Vec<Pending<'m>>,
        queue: &mut Queue,
        mem: &'m GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        if batch.is_empty() {
            return Ok(false);
        }
        let straight = self.straight(batch);
        for p in batch.drain(..) {
            let len = match (straight, &p.span) {
                (Straight::Answered(code), Some(span)) => span.finish(mem, code),
                _ => match (
                    Reader::<()>::new(mem, p.chain.clone()),
                    Writer::<()>::new(mem, p.chain.clone()),
                ) {
                    (Ok(r), Ok(w)) => {
                        let direct = matches!(straight, Straight::OneByOne { direct: true });
                        self.request(mem, &p.chain, r, w, direct)
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        debug!("virtio-blk: request with unusable buffers: {e}");
                        0
                    }
                },
            };
            crate::virtio::report_writes(self.guest_writes.as_ref(), &p.chain);
            queue
                .add_used(mem, p.chain.head_index(), len)
                .map_err(|e| QueueError::Used(e.to_string()))?;
        }
        Ok(true)
    }

    /// Moves the data of a batch of [`Span`]s straight between their guest buffers and the
    /// image in one transfer, and accounts each request: [`Straight::Answered`] with the
    /// status byte they all get. Otherwise the batch is served request by request: it is not
    /// all spans, the back end cannot take it, or a merged transfer failed (each request is
    /// then tried on its own, so that only the failing ones fail).
    fn straight(&mut self, batch: &[Pending<'_>]) -> Straight {
        let one_by_one = Straight::OneByOne { direct: true };
        let Some(spans) = batch
            .iter()
            .map(|p| p.span.as_ref())
            .collect::<Option<Vec<&Span>>>()
        else {
            return one_by_one;
        };
        let Some(first) = spans.first() else {
            return one_by_one;
        };
        let merged: Vec<GuestBuf>;
        let bufs: &[GuestBuf] = if let [one] = spans[..] {
            &one.bufs
        } else {
            merged = spans.iter().flat_map(|s| s.bufs.iter().copied()).collect();
            &merged
        };
        let start = Instant::now();
        let result = if first.write {
            self.disk.write_guest_at(first.offset, bufs)
        } else {
            self.disk.read_guest_at(first.offset, bufs)
        };
        let io = if first.write {
            IoKind::Write
        } else {
            IoKind::Read
        };
        match result {
            Ok(true) => {
                for s in &spans {
                    let end = s.write.then_some(s.offset + s.len as u64);
                    self.stats.done(io, s.len as u64, start.elapsed(), end);
                }
                Straight::Answered(VIRTIO_BLK_S_OK)
            }
            // (A lone request the back end cannot take straight is copied, not asked again;
            // the parts of a merged one may each be taken.)
            Ok(false) => Straight::OneByOne {
                direct: spans.len() > 1,
            },
            Err(e) if spans.len() > 1 => {
                debug!("virtio-blk: merged transfer failed ({e}); serving its requests one by one");
                one_by_one
            }
            Err(e) => {
                debug!("virtio-blk: back end error: {e}");
                self.stats.failed(io, start.elapsed());
                Straight::Answered(VIRTIO_BLK_S_IOERR)
            }
        }
    }

    /// The request in `chain` as a [`Span`], if it is a well-formed read or write whose data
    /// lies in guest RAM (it may then go straight and be merged); `None` for anything else,
    /// which [`request`](Self::request) then serves, checks and answers as usual.
    fn span(&self, mem: &GuestMemoryMmap, chain: &Chain<'_>) -> Option<Span> {
        let mut reader = Reader::<()>::new(mem, chain.clone()).ok()?;
        let writable = Writer::<()>::new(mem, chain.clone())
            .ok()?
            .available_bytes();
        let mut header = [0u8; 16];
        reader.read_exact(&mut header).ok()?;
        let kind = u32::from_le_bytes(header[0..4].try_into().ok()?);
        let sector = u64::from_le_bytes(header[8..16].try_into().ok()?);
        let (write, len, skip) = match kind {
            VIRTIO_BLK_T_IN => (false, writable.checked_sub(1)?, 0),
            VIRTIO_BLK_T_OUT if !self.disk.read_only() && writable > 0 => {
                (true, reader.available_bytes(), reader.bytes_read())
            }
            _ => return None,
        };
        if len == 0 || len > MAX_REQUEST_BYTES || !(len as u64).is_multiple_of(SECTOR_SIZE) {
            return None;
        }
        let offset = sector.checked_mul(SECTOR_SIZE)?;
        if offset.checked_add(len as u64)? > self.disk.size() {
            return None;
        }
        let data = if write {
            chain.clone().readable()
        } else {
            chain.clone().writable()
        };
        let bufs = guest_bufs(mem, data.map(desc), skip, len)?;
        if bufs.len() > MERGE_BUFFERS {
            return None;
        }
        // The status byte: the last byte the device may write.
        let (at, n) = chain
            .clone()
            .writable()
            .map(desc)
            .filter(|&(_, n)| n > 0)
            .last()?;
        let status = at.checked_add(n as u64 - 1)?;
        Some(Span {
            write,
            offset,
            len,
            bufs,
            status,
        })
    }

    /// Serves one request, asking the back end to move its data straight between guest
    /// buffers and the image first if `direct`; returns the number of bytes written into the
    /// guest's buffers.
    fn request<'m>(
        &mut self,
        mem: &'m GuestMemoryMmap,
        chain: &Chain<'m>,
        mut reader: Reader<'m>,
        mut writer: Writer<'m>,
        direct: bool,
    ) -> u32 {
        let writable = writer.available_bytes();
        if writable == 0 {
            debug!("virtio-blk: request without a status byte dropped");
            return 0;
        }
        let Ok(mut status) = writer.split_at(writable - 1) else {
            return 0;
        };
        let mut header = [0u8; 16];
        let result = if reader.read_exact(&mut header).is_err() {
            debug!("virtio-blk: request header missing or not device-readable");
            Err(Failure::IoErr)
        } else {
            let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
            let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or([0; 8]));
            self.acct_bytes = 0;
            self.acct_end = None;
            let start = Instant::now();
            let io = Io {
                mem,
                chain,
                reader: &mut reader,
                writer: &mut writer,
                direct,
            };
            let result = self.execute(kind, sector, io);
            self.account(kind, &result, start);
            result
        };
        let code = match result {
            Ok(_) => VIRTIO_BLK_S_OK,
            Err(Failure::IoErr | Failure::Invalid) => VIRTIO_BLK_S_IOERR,
            Err(Failure::Unsupported) => VIRTIO_BLK_S_UNSUPP,
        };
        if status.write_all(&[code as u8]).is_err() {
            return 0;
        }
        let data = result.unwrap_or(0);
        u32::try_from(data + 1).unwrap_or(u32::MAX)
    }

    /// Records a finished request in the device's statistics, as QEMU's virtio-blk accounts
    /// them (write-zeroes as a write, discard as an unmap; GET_ID and unknown types not).
    fn account(&self, kind: u32, result: &Result<usize, Failure>, start: Instant) {
        let io = match kind {
            VIRTIO_BLK_T_IN => IoKind::Read,
            VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_WRITE_ZEROES => IoKind::Write,
            VIRTIO_BLK_T_FLUSH => IoKind::Flush,
            VIRTIO_BLK_T_DISCARD => IoKind::Unmap,
            _ => return,
        };
        match result {
            Ok(_) => self
                .stats
                .done(io, self.acct_bytes, start.elapsed(), self.acct_end),
            Err(Failure::IoErr) => self.stats.failed(io, start.elapsed()),
            Err(Failure::Invalid) => self.stats.invalid(io),
            Err(Failure::Unsupported) => {}
        }
    }

    /// The byte range `[sector * 512, + len)` if it lies inside the disk.
    fn range(&self, sector: u64, len: u64) -> Result<u64, Failure> {
        let offset = sector.checked_mul(SECTOR_SIZE).ok_or(Failure::Invalid)?;
        let end = offset.checked_add(len).ok_or(Failure::Invalid)?;
        if end > self.disk.size() {
            debug!(sector, len, "virtio-blk: request past the end of the disk");
            return Err(Failure::Invalid);
        }
        Ok(offset)
    }

    /// Executes a request; returns the data bytes written into guest memory.
    fn execute(&mut self, kind: u32, sector: u64, io_: Io<'_, '_>) -> Result<usize, Failure> {
        let Io {
            mem,
            chain,
            reader,
            writer,
            direct,
        } = io_;
        let io = |e: rampart_block::BlockError| {
            debug!("virtio-blk: back end error: {e}");
            Failure::IoErr
        };
        match kind {
            VIRTIO_BLK_T_IN => {
                let len = writer.available_bytes();
                if len > MAX_REQUEST_BYTES || !(len as u64).is_multiple_of(SECTOR_SIZE) {
                    return Err(Failure::Invalid);
                }
                let offset = self.range(sector, len as u64)?;
                // The data is the writable part before the status byte.
                let bufs = direct
                    .then(|| guest_bufs(mem, chain.clone().writable().map(desc), 0, len))
                    .flatten();
                let direct = match bufs {
                    Some(b) => self.disk.read_guest_at(offset, &b).map_err(io)?,
                    None => false,
                };
                if !direct {
                    let buf = self.buf.get(len);
                    self.disk.read_at(offset, buf).map_err(io)?;
                    writer.write_all(buf).map_err(|_| Failure::IoErr)?;
                }
                self.acct_bytes = len as u64;
                Ok(len)
            }
            VIRTIO_BLK_T_OUT => {
                if self.disk.read_only() {
                    return Err(Failure::IoErr);
                }
                let len = reader.available_bytes();
                if len > MAX_REQUEST_BYTES || !(len as u64).is_multiple_of(SECTOR_SIZE) {
                    return Err(Failure::Invalid);
                }
                let offset = self.range(sector, len as u64)?;
                // The data is the readable part after the header.
                let skip = reader.bytes_read();
                let bufs = direct
                    .then(|| guest_bufs(mem, chain.clone().readable().map(desc), skip, len))
                    .flatten();
                let direct = match bufs {
                    Some(b) => self.disk.write_guest_at(offset, &b).map_err(io)?,
                    None => false,
                };
                if !direct {
                    let buf = self.buf.get(len);
                    reader.read_exact(buf).map_err(|_| Failure::IoErr)?;
                    self.disk.write_at(offset, buf).map_err(io)?;
                }
                self.acct_bytes = len as u64;
                self.acct_end = Some(offset + len as u64);
                Ok(0)
            }
            VIRTIO_BLK_T_FLUSH => {
                self.disk.flush().map_err(io)?;
                Ok(0)
            }
            VIRTIO_BLK_T_GET_ID => {
                let n = writer.available_bytes().min(ID_BYTES);
                writer
                    .write_all(&self.serial[..n])
                    .map_err(|_| Failure::IoErr)?;
                Ok(n)
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                if !self.disk.supports_discard() {
                    return Err(Failure::Unsupported);
                }
                if self.disk.read_only() {
                    return Err(Failure::IoErr);
                }
                let len = reader.available_bytes();
                if len == 0
                    || !len.is_multiple_of(SEGMENT_BYTES)
                    || len / SEGMENT_BYTES > MAX_SEGMENTS
                {
                    return Err(Failure::Invalid);
                }
                for _ in 0..len / SEGMENT_BYTES {
                    let mut seg = [0u8; SEGMENT_BYTES];
                    reader.read_exact(&mut seg).map_err(|_| Failure::IoErr)?;
                    let start = u64::from_le_bytes(seg[0..8].try_into().unwrap_or([0; 8]));
                    let count = u32::from_le_bytes(seg[8..12].try_into().unwrap_or([0; 4]));
                    let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap_or([0; 4]));
                    let bytes = u64::from(count) * SECTOR_SIZE;
                    let offset = self.range(start, bytes)?;
                    if kind == VIRTIO_BLK_T_DISCARD {
                        if flags != 0 {
                            return Err(Failure::Unsupported);
                        }
                        self.disk.discard(offset, bytes).map_err(io)?;
                    } else {
                        if flags & !WRITE_ZEROES_UNMAP != 0 {
                            return Err(Failure::Unsupported);
                        }
                        let unmap = flags & WRITE_ZEROES_UNMAP != 0;
                        self.disk.write_zeroes(offset, bytes, unmap).map_err(io)?;
                        self.acct_end = self.acct_end.max(Some(offset + bytes));
                    }
                    self.acct_bytes += bytes;
                }
                Ok(0)
            }
            _ => Err(Failure::Unsupported),
        }
    }
}

/// The copy path's buffer, 4 KiB aligned so that the back end can hand it (and the
/// cluster-aligned pieces of it a qcow2 image writes) to an `O_DIRECT` file without copying
/// it once more into a bounce buffer.
#[derive(Default)]
struct Scratch {
    storage: Vec<u8>,
    start: usize,
}

impl Scratch {
    const ALIGN: usize = 4096;

    /// `len` bytes of it, aligned (what an earlier request left there, or zeroes).
    fn get(&mut self, len: usize) -> &mut [u8] {
        if self.storage.len() < len + Self::ALIGN {
            self.storage = vec![0u8; len + Self::ALIGN];
            self.start = self.storage.as_ptr().align_offset(Self::ALIGN);
        }
        let start = self.start.min(Self::ALIGN);
        &mut self.storage[start..start + len]
    }
}

/// A request's descriptor chain.
type Chain<'m> = virtio_queue::DescriptorChain<&'m GuestMemoryMmap>;

/// Most guest buffers one merged transfer may carry: one `preadv`/`pwritev` (`IOV_MAX`).
const MERGE_BUFFERS: usize = 1024;

/// How [`BlockRequests::straight`] left a batch.
#[derive(Clone, Copy)]
enum Straight {
    /// Moved and accounted: every request gets this status byte.
    Answered(u32),
    /// To serve request by request, asking the back end for the straight path if `direct`.
    OneByOne { direct: bool },
}

/// A request taken from the queue, waiting to be served with the ones it merges with.
struct Pending<'m> {
    chain: Chain<'m>,
    span: Option<Span>,
}

/// A well-formed read or write whose data lies in guest RAM, found by
/// [`BlockRequests::span`]: already checked against the disk's size and the request cap.
struct Span {
    write: bool,
    /// Byte offset on the disk.
    offset: u64,
    len: usize,
    bufs: Vec<GuestBuf>,
    /// Where its status byte goes.
    status: GuestAddress,
}

impl Span {
    /// Writes its status `code`; returns its used length (data written into the guest, plus
    /// the status byte), 0 if the status byte cannot be written.
    fn finish(&self, mem: &GuestMemoryMmap, code: u32) -> u32 {
        if mem.write_obj(code as u8, self.status).is_err() {
            return 0;
        }
        let data = if self.write || code != VIRTIO_BLK_S_OK {
            0
        } else {
            self.len
        };
        u32::try_from(data + 1).unwrap_or(u32::MAX)
    }
}

/// Whether a request (`span`, if it is one) joins `batch` rather than being served after it:
/// both reads or both writes, straight after the batch's last one on the disk, and the merged
/// transfer within [`MAX_REQUEST_BYTES`] and [`MERGE_BUFFERS`].
fn joins(batch: &[Pending<'_>], span: Option<&Span>) -> bool {
    let (Some(span), Some(Some(last))) = (span, batch.last().map(|p| p.span.as_ref())) else {
        return false;
    };
    let (mut bytes, mut bufs) = (span.len, span.bufs.len());
    for p in batch {
        let Some(s) = &p.span else { return false };
        bytes += s.len;
        bufs += s.bufs.len();
    }
    last.write == span.write
        && last.offset + last.len as u64 == span.offset
        && bytes <= MAX_REQUEST_BYTES
        && bufs <= MERGE_BUFFERS
}

/// What a request's execution works on: guest memory, its chain, the chain's readable part
/// (past the header) and writable part (before the status byte), and whether to ask the back
/// end for the straight path first.
struct Io<'a, 'm> {
    mem: &'m GuestMemoryMmap,
    chain: &'a Chain<'m>,
    reader: &'a mut Reader<'m>,
    writer: &'a mut Writer<'m>,
    direct: bool,
}

/// A descriptor's address and length.
fn desc(d: virtio_queue::desc::split::Descriptor) -> (GuestAddress, usize) {
    (d.addr(), d.len() as usize)
}

/// The guest buffers holding bytes `skip..skip + len` of the buffers `descs` name, for I/O
/// straight to or from them; `None` if they hold fewer bytes or one of them does not lie in a
/// single region of guest RAM (the copy path then serves, or fails, the request).
fn guest_bufs(
    mem: &GuestMemoryMmap,
    descs: impl Iterator<Item = (GuestAddress, usize)>,
    mut skip: usize,
    mut len: usize,
) -> Option<Vec<GuestBuf>> {
    let mut out = Vec::new();
    for (addr, n) in descs {
        if len == 0 {
            break;
        }
        if skip >= n {
            skip -= n;
            continue;
        }
        let take = (n - skip).min(len);
        let slice = mem.get_slice(addr.checked_add(skip as u64)?, take).ok()?;
        // SAFETY: the slice is `take` bytes of a region of `mem`, an mmap of this process,
        // readable and writable, which stays mapped while `mem` is borrowed: the buffers are
        // used only while the request is served, under that borrow.
        out.push(unsafe { GuestBuf::new(slice.ptr_guard_mut().as_ptr(), take) });
        skip = 0;
        len -= take;
    }
    (len == 0).then_some(out)
}

#[cfg(test)]
#[path = "handler_tests.rs"]
mod tests;
