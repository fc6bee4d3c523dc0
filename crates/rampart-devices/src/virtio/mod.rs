//! Virtio 1.x: the device-independent state (feature negotiation, status, split virtqueues
//! through the `virtio-queue` crate), the modern PCI transport (`pci`), the I/O thread that
//! processes queues (`worker`), and the devices.
//!
//! A device implements [`VirtioDevice`]: its features, configuration space and the queue
//! processing (in its `handler.rs`, free of transport concerns so it can be driven against
//! crafted guest memory in unit tests). Queue processing never runs on a vCPU thread: the
//! transport only signals an eventfd per queue (written by the notify MMIO handler under
//! `tcg`, or by KVM itself through an ioeventfd), and the device's I/O thread does the work.

pub mod block;
pub mod net;
pub mod pci;
pub mod rng;
pub mod worker;

use std::os::fd::RawFd;
use virtio_bindings::bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, GuestMemoryMmap};

/// Features every device of ours offers: virtio 1.x, indirect descriptors, event indices.
pub const TRANSPORT_FEATURES: u64 =
    1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_INDIRECT_DESC | 1 << VIRTIO_RING_F_EVENT_IDX;

/// "No MSI-X vector" in the common configuration.
pub const NO_VECTOR: u16 = 0xffff;

/// Why a queue cannot be processed any further: the device needs a reset.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("virtqueue: {0}")]
    Queue(#[from] virtio_queue::Error),
    #[error("virtqueue: used ring not writable: {0}")]
    Used(String),
}

/// Told of a range `(gpa, len)` of guest RAM after a device wrote into it. Under `tcg` it is
/// the vCPUs' code watch (`rampart_tcg::CodeWatch::wrote`): code a device overwrites must not
/// keep running from a stale decoded copy.
pub type GuestWriteHook = std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Tell `hook` of the device-writable buffers of `chain`, which the device wrote (all of
/// them, whatever it wrote: a bound from above is enough). Call it before the chain is put in
/// the used ring: the guest may reuse the descriptors after.
pub fn report_writes<M>(hook: Option<&GuestWriteHook>, chain: &virtio_queue::DescriptorChain<M>)
where
    M: std::ops::Deref + Clone,
    M::Target: vm_memory::GuestMemoryBackend,
{
    if let Some(hook) = hook {
        for d in chain.clone().writable() {
            hook(d.addr().raw_value(), u64::from(d.len()));
        }
    }
}

/// What a [`write_recorder`] hook was told.
#[cfg(test)]
pub(crate) type WriteLog = std::sync::Arc<std::sync::Mutex<Vec<(u64, u64)>>>;

/// A [`GuestWriteHook`] that records what it is told (for tests).
#[cfg(test)]
pub(crate) fn write_recorder() -> (GuestWriteHook, WriteLog) {
    let log = WriteLog::default();
    let l = log.clone();
    let hook: GuestWriteHook = std::sync::Arc::new(move |gpa, len| {
        l.lock().unwrap_or_else(|e| e.into_inner()).push((gpa, len))
    });
    (hook, log)
}

/// A virtio device model, independent of the transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (2 = block, 4 = entropy, ...).
    fn device_id(&self) -> u32;
    /// Device-specific feature bits (the transport adds [`TRANSPORT_FEATURES`]).
    fn features(&self) -> u64;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the device configuration space (out-of-range bytes read as zero).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space (ignored by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver accepted these features (called once FEATURES_OK is accepted).
    fn ack_features(&mut self, _features: u64) {}
    /// Processes the available buffers of queue `index`; returns whether any buffer was
    /// used (the guest may need an interrupt). An error puts the device into NEEDS_RESET.
    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError>;
    /// The driver reset the device.
    fn reset(&mut self) {}
    /// From now on, tell `hook` of every range of guest RAM the device writes, once written
    /// ([`report_writes`] for a chain's buffers; the transport reports the used ring).
    /// Required: a device that wrote guest RAM unreported could leave a software CPU running
    /// code the device overwrote.
    fn set_guest_writes(&mut self, hook: GuestWriteHook);
    /// Extra descriptors the I/O thread polls for this device (a tap, timers, a wake-up
    /// eventfd), each with whether it is edge-triggered. Asked once, when the thread starts.
    fn event_fds(&self) -> Vec<(RawFd, bool)> {
        Vec::new()
    }
    /// Extra descriptor `index` (of [`event_fds`](Self::event_fds)) is ready: the device
    /// consumes the event and says what the I/O thread must do.
    fn handle_event(&mut self, _index: usize) -> EventAction {
        EventAction::default()
    }
    /// After processing queue `index`, whether to process it again while the driver has
    /// buffers available. True for request queues; a queue of buffers the device fills only
    /// when it has data (network receive) says whether it is waiting for buffers.
    fn more_work(&self, _index: usize) -> bool {
        true
    }
}

/// What the I/O thread does after a device handled one of its own events.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EventAction {
    /// Queues to process (bit *n* = queue *n*).
    pub queues: u64,
    /// The configuration space changed: interrupt the driver.
    pub config_changed: bool,
}

/// The device-independent state of a virtio device, shared by the transport (vCPU threads)
/// and the I/O thread under one mutex.
pub struct VirtioState {
    pub device: Box<dyn VirtioDevice>,
    pub queues: Vec<Queue>,
    pub queue_vectors: Vec<u16>,
    pub config_vector: u16,
    pub status: u8,
    pub driver_features: u64,
    pub isr: u8,
    pub config_generation: u8,
    pub mem: GuestMemoryMmap,
    /// Told of the guest RAM the device wrote, if set.
    pub guest_writes: Option<GuestWriteHook>,
}

impl VirtioState {
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max).unwrap_or_else(|_| Queue::new(256).expect("valid size")))
            .collect::<Vec<_>>();
        let n = queues.len();
        VirtioState {
            device,
            queues,
            queue_vectors: vec![NO_VECTOR; n],
            config_vector: NO_VECTOR,
            status: 0,
            driver_features: 0,
            isr: 0,
            config_generation: 0,
            mem,
            guest_writes: None,
        }
    }

    /// All features the device offers.
    pub fn device_features(&self) -> u64 {
        self.device.features() | TRANSPORT_FEATURES
    }

    /// Whether queues may be processed: the driver is ready and nothing failed.
    pub fn running(&self) -> bool {
        let s = u32::from(self.status);
        s & VIRTIO_CONFIG_S_DRIVER_OK != 0
            && s & (VIRTIO_CONFIG_S_NEEDS_RESET | VIRTIO_CONFIG_S_FAILED) == 0
    }

    /// Back to the power-on state (driver wrote 0 to device_status).
    pub fn reset(&mut self) {
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_vectors.fill(NO_VECTOR);
        self.config_vector = NO_VECTOR;
        self.status = 0;
        self.driver_features = 0;
        self.isr = 0;
        self.device.reset();
    }

    /// Marks the device broken until the driver resets it.
    pub fn set_needs_reset(&mut self) {
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET as u8;
        self.config_generation = self.config_generation.wrapping_add(1);
        self.isr |= ISR_CONFIG;
    }
}

/// ISR status bits.
pub const ISR_QUEUE: u8 = 1;
pub const ISR_CONFIG: u8 = 2;

/// Copies the bytes `[offset, offset + data.len())` of `bytes` into `data`, zero beyond.
pub fn read_config_bytes(bytes: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| bytes.get(o))
            .copied()
            .unwrap_or(0);
    }
}
