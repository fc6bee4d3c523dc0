//! `virtio_blk`: rampart's virtio-blk request queue on hostile guest memory.
//!
//! The input is the driver's side of one virtqueue: byte 0 picks the queue size (1..=256),
//! bytes 1-2 the available index, byte 3 the disk's flags (bit 0 read-only, bit 1 discard
//! support, bit 2 event indices, bit 3 reads and writes straight between guest buffers and
//! the disk, which lets the device merge adjacent requests); the rest fills the first 64 KiB
//! of a 1 MiB guest memory, which holds the descriptor table at 0, the available ring at
//! 0x1000 and the used ring at 0x2000 — descriptors, indirect tables and request buffers can
//! point anywhere, in RAM or not.
//! Checks, beyond "returns Ok or Err without panicking":
//! - a read-only disk is never changed;
//! - one pass uses at most a queue's worth of buffers (no chain is served twice, nothing loops).

use std::sync::{Arc, Mutex};

use rampart_block::{BlockBackend, BlockError, GuestBuf};
use rampart_devices::virtio::block::BlockRequests;

const DISK_BYTES: usize = 64 << 10;

/// A disk in memory.
struct MemDisk {
    data: Mutex<Vec<u8>>,
    read_only: bool,
    discard: bool,
    /// Serves `read_guest_at`/`write_guest_at` (as a raw image does).
    direct: bool,
}

impl MemDisk {
    fn range(&self, offset: u64, len: u64) -> Result<(usize, usize), BlockError> {
        let size = DISK_BYTES as u64;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok((offset as usize, end as usize)),
            _ => Err(BlockError::OutOfRange { offset, len, size }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl BlockBackend for MemDisk {
    fn size(&self) -> u64 {
        DISK_BYTES as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let (a, b) = self.range(offset, buf.len() as u64)?;
        buf.copy_from_slice(&self.lock()[a..b]);
        Ok(())
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let (a, b) = self.range(offset, buf.len() as u64)?;
        self.lock()[a..b].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> Result<(), BlockError> {
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.write_zeroes(offset, len, true)
    }
    fn write_zeroes(&self, offset: u64, len: u64, _may_unmap: bool) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let (a, b) = self.range(offset, len)?;
        self.lock()[a..b].fill(0);
        Ok(())
    }
    fn supports_discard(&self) -> bool {
        self.discard
    }
    fn read_guest_at(&self, offset: u64, bufs: &[GuestBuf]) -> Result<bool, BlockError> {
        if !self.direct {
            return Ok(false);
        }
        let len = bufs.iter().map(|b| b.len() as u64).sum();
        let (mut at, _) = self.range(offset, len)?;
        let data = self.lock();
        for b in bufs {
            let from = &data[at..at + b.len()];
            // SAFETY: `GuestBuf::new`'s contract: the buffer is one mapping of this process,
            // writable, for as long as it is used; `from` is as long and cannot overlap it.
            unsafe { std::ptr::copy(from.as_ptr(), b.as_ptr(), b.len()) };
            at += b.len();
        }
        Ok(true)
    }
    fn write_guest_at(&self, offset: u64, bufs: &[GuestBuf]) -> Result<bool, BlockError> {
        if !self.direct {
            return Ok(false);
        }
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let len = bufs.iter().map(|b| b.len() as u64).sum();
        let (mut at, _) = self.range(offset, len)?;
        let mut data = self.lock();
        for b in bufs {
            let to = &mut data[at..at + b.len()];
            // SAFETY: as in `read_guest_at` (the buffer is readable).
            unsafe { std::ptr::copy(b.as_ptr(), to.as_mut_ptr(), b.len()) };
            at += b.len();
        }
        Ok(true)
    }
}

pub fn run(data: &[u8]) {
    let Some(mut hq) = crate::virtqueue::hostile_queue(data, 4) else {
        return;
    };
    let flags = hq.setup;
    let pattern: Vec<u8> = (0..DISK_BYTES).map(|i| (i * 7 % 251) as u8).collect();
    let disk = Arc::new(MemDisk {
        data: Mutex::new(pattern.clone()),
        read_only: flags & 1 != 0,
        discard: flags & 2 != 0,
        direct: flags & 8 != 0,
    });
    let stats = Arc::new(rampart_block::stats::BlockStats::new());
    let mut requests = BlockRequests::new(disk.clone(), "fuzz", stats);
    let _ = requests.process(&mut hq.queue, &hq.mem);
    crate::virtqueue::check_one_pass(&hq);
    if disk.read_only {
        assert!(*disk.lock() == pattern, "a read-only disk was changed");
    }
}
