//! The `raw` format (and `-blockdev driver=file` without a format): the guest sees the file's
//! bytes, with a fixed size taken when the image is opened.

use std::sync::Arc;

use rampart_config::{CacheConfig, DiscardMode};

use crate::file::HostFile;
use crate::{check_range, guest_len, BlockBackend, BlockError, GuestBuf};

/// A raw image.
#[derive(Debug)]
pub struct RawBackend {
    file: Arc<HostFile>,
    size: u64,
    cache: CacheConfig,
    discard: DiscardMode,
}

impl RawBackend {
    pub fn new(file: Arc<HostFile>, cache: CacheConfig, discard: DiscardMode) -> RawBackend {
        let size = file.len();
        RawBackend {
            file,
            size,
            cache,
            discard,
        }
    }

    fn writable(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        if self.file.read_only() {
            return Err(BlockError::ReadOnly);
        }
        check_range(offset, len, self.size)
    }

    fn after_write(&self) -> Result<(), BlockError> {
        if self.cache.writethrough {
            self.file.flush()?;
        }
        Ok(())
    }
}

impl BlockBackend for RawBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.file.read_only()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        check_range(offset, buf.len() as u64, self.size)?;
        self.file.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), BlockError> {
        self.writable(offset, buf.len() as u64)?;
        self.file.write_at(offset, buf)?;
        self.after_write()
    }

    fn flush(&self) -> Result<(), BlockError> {
        if self.cache.no_flush {
            return Ok(());
        }
        self.file.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.writable(offset, len)?;
        if !self.supports_discard() {
            return Ok(());
        }
        match self.file.punch_hole(offset, len) {
            // Discard is a hint: a host that cannot punch holes simply keeps the data.
            Err(e) if e.is_unsupported() => Ok(()),
            r => r,
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<(), BlockError> {
        self.writable(offset, len)?;
        let unmap = may_unmap && self.discard == DiscardMode::Unmap;
        self.file.write_zeroes(offset, len, unmap)?;
        self.after_write()
    }

    fn supports_discard(&self) -> bool {
        self.discard == DiscardMode::Unmap && !self.file.read_only() && self.file.can_punch()
    }

    fn read_guest_at(&self, offset: u64, bufs: &[GuestBuf]) -> Result<bool, BlockError> {
        check_range(offset, guest_len(bufs), self.size)?;
        self.file.read_guest_at(offset, bufs)
    }

    fn write_guest_at(&self, offset: u64, bufs: &[GuestBuf]) -> Result<bool, BlockError> {
        self.writable(offset, guest_len(bufs))?;
        if !self.file.write_guest_at(offset, bufs)? {
            return Ok(false);
        }
        self.after_write()?;
        Ok(true)
    }
}
