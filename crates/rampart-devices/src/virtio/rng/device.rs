//! The virtio-rng device model: one queue, no configuration space, no device features.

use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::handler::{fill_requests, EntropySource, HostRandom};
use crate::virtio::{QueueError, VirtioDevice};

const QUEUE_SIZES: [u16; 1] = [256];
/// PCI class of the device: "other" (QEMU uses the same).
pub const PCI_CLASS: u32 = 0x00_ff_00;

/// A virtio entropy device.
pub struct Rng {
    source: Box<dyn EntropySource>,
    guest_writes: Option<crate::virtio::GuestWriteHook>,
}

impl Rng {
    /// An entropy device fed from the host's getrandom.
    pub fn new() -> Self {
        Rng {
            source: Box::new(HostRandom),
            guest_writes: None,
        }
    }
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

impl VirtioDevice for Rng {
    fn device_id(&self) -> u32 {
        VIRTIO_ID_RNG
    }
    fn features(&self) -> u64 {
        0
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn set_guest_writes(&mut self, hook: crate::virtio::GuestWriteHook) {
        self.guest_writes = Some(hook);
    }

    fn process_queue(
        &mut self,
        _index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        fill_requests(queue, mem, self.source.as_mut(), self.guest_writes.as_ref())
    }
}
