//! virtio-blk (block device, ID 2) over the block layer's [`rampart_block::BlockBackend`]:
//! read, write, flush, get-id, and discard/write-zeroes when the back end supports them.

mod device;
mod handler;

pub use device::{Block, PCI_CLASS};
pub use handler::{BlockRequests, ID_BYTES, MAX_REQUEST_BYTES, SECTOR_SIZE};
