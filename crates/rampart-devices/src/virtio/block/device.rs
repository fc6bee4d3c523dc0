//! The virtio-blk device model: features and configuration space from the back end's size,
//! read-only flag and discard support; one request queue served by [`BlockRequests`].

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use rampart_block::throttle::{ThrottleHandle, Waker};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use rampart_block::stats::BlockStats;
use rampart_block::BlockBackend;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::handler::{BlockRequests, MAX_REQUEST_BYTES, MAX_SEGMENTS, SECTOR_SIZE};
use crate::virtio::{read_config_bytes, EventAction, QueueError, VirtioDevice};

/// PCI class: mass storage, SCSI (what QEMU's virtio-blk-pci reports).
pub const PCI_CLASS: u32 = 0x01_00_00;
const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];
/// Largest segment the driver may use, and how many per request: together they bound one
/// request by [`MAX_REQUEST_BYTES`].
const SIZE_MAX: u32 = 64 * 1024;
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
const _: () = assert!(SIZE_MAX as usize * SEG_MAX as usize <= MAX_REQUEST_BYTES);
/// Discard/write-zeroes limits: 1 GiB per segment, 4 KiB granularity.
const MAX_DISCARD_SECTORS: u32 = (1 << 30) / SECTOR_SIZE as u32;
const DISCARD_ALIGNMENT_SECTORS: u32 = 8;
/// Size of the configuration space we expose (up to write_zeroes_may_unmap and padding).
const CONFIG_LEN: usize = 0x3c;

/// The shortest wait the throttling timer is armed for.
const RESUME_SOON: std::time::Duration = std::time::Duration::from_micros(100);

/// A virtio block device.
pub struct Block {
    requests: BlockRequests,
    features: u64,
    config: [u8; CONFIG_LEN],
    /// Throttling: the timer that resumes a throttled queue, the eventfd a limit change
    /// signals, and the waker registered with the throttle (kept alive here).
    timer: TimerFd,
    timer_armed: bool,
    wake: Arc<EventFd>,
    _waker: Option<Waker>,
}

impl Block {
    /// A disk serving `disk`; `serial` is what GET_ID answers (truncated to 20 bytes); its
    /// requests are accounted in `stats`. Fails only when no timerfd or eventfd can be made.
    pub fn new(
        disk: Arc<dyn BlockBackend>,
        serial: &str,
        stats: Arc<BlockStats>,
    ) -> std::io::Result<Self> {
        let mut features = 1u64 << VIRTIO_BLK_F_SIZE_MAX
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_FLUSH;
        if disk.read_only() {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        let discard = disk.supports_discard() && !disk.read_only();
        if discard {
            features |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        let mut c = [0u8; CONFIG_LEN];
        let mut put = |off: usize, v: &[u8]| c[off..off + v.len()].copy_from_slice(v);
        put(0x00, &(disk.size() / SECTOR_SIZE).to_le_bytes());
        put(0x08, &SIZE_MAX.to_le_bytes());
        put(0x0c, &SEG_MAX.to_le_bytes());
        put(0x14, &(SECTOR_SIZE as u32).to_le_bytes());
        put(0x22, &1u16.to_le_bytes()); // num_queues
        if discard {
            put(0x24, &MAX_DISCARD_SECTORS.to_le_bytes());
            put(0x28, &(MAX_SEGMENTS as u32).to_le_bytes());
            put(0x2c, &DISCARD_ALIGNMENT_SECTORS.to_le_bytes());
            put(0x30, &MAX_DISCARD_SECTORS.to_le_bytes());
            put(0x34, &(MAX_SEGMENTS as u32).to_le_bytes());
            put(0x38, &[1]); // write_zeroes_may_unmap
        }
        Ok(Block {
            requests: BlockRequests::new(disk, serial, stats),
            features,
            config: c,
            timer: TimerFd::new()?,
            timer_armed: false,
            wake: Arc::new(EventFd::new(EFD_NONBLOCK)?),
            _waker: None,
        })
    }

    /// Limits this device's I/O with `throttle` (its own, or its group's).
    pub fn with_throttle(mut self, throttle: Arc<ThrottleHandle>) -> Self {
        let wake = self.wake.clone();
        let waker: Waker = Arc::new(move || {
            let _ = wake.write(1);
        });
        throttle.register(&waker);
        self._waker = Some(waker);
        self.requests.throttle = Some(throttle);
        self
    }
}

impl VirtioDevice for Block {
    fn device_id(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }
    fn features(&self) -> u64 {
        self.features
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn set_guest_writes(&mut self, hook: crate::virtio::GuestWriteHook) {
        self.requests.guest_writes = Some(hook);
    }

    fn process_queue(
        &mut self,
        _index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        let used = self.requests.process(queue, mem)?;
        if let Some(wait) = self.requests.throttled_for {
            if !self.timer_armed {
                let wait = wait.max(RESUME_SOON);
                self.timer_armed = self.timer.reset(wait, None).is_ok();
            }
        }
        Ok(used)
    }
    fn event_fds(&self) -> Vec<(RawFd, bool)> {
        vec![
            (self.timer.as_raw_fd(), false),
            (self.wake.as_raw_fd(), false),
        ]
    }
    fn handle_event(&mut self, index: usize) -> EventAction {
        if index == 0 {
            let _ = self.timer.wait();
            self.timer_armed = false;
        } else {
            let _ = self.wake.read();
            // New limits: a wait planned for the old ones ends now (the queue is serviced
            // below and, if still over the new limits, the timer is armed for them).
            if self.timer_armed && self.timer.reset(RESUME_SOON, None).is_err() {
                self.timer_armed = false;
            }
        }
        EventAction {
            queues: 1,
            config_changed: false,
        }
    }
    fn more_work(&self, _index: usize) -> bool {
        self.requests.throttled_for.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_block::BlockError;
    use rampart_config::{BlockLimits, RateLimit};

    /// A disk of zeroes that is never read in these tests.
    struct Zeroes;
    impl BlockBackend for Zeroes {
        fn size(&self) -> u64 {
            1 << 20
        }
        fn read_only(&self) -> bool {
            true
        }
        fn read_at(&self, _: u64, buf: &mut [u8]) -> Result<(), BlockError> {
            buf.fill(0);
            Ok(())
        }
        fn write_at(&self, _: u64, _: &[u8]) -> Result<(), BlockError> {
            Err(BlockError::ReadOnly)
        }
        fn flush(&self) -> Result<(), BlockError> {
            Ok(())
        }
        fn discard(&self, _: u64, _: u64) -> Result<(), BlockError> {
            Err(BlockError::ReadOnly)
        }
        fn write_zeroes(&self, _: u64, _: u64, _: bool) -> Result<(), BlockError> {
            Err(BlockError::ReadOnly)
        }
        fn supports_discard(&self) -> bool {
            false
        }
    }

    #[test]
    fn a_limit_change_ends_a_wait_planned_for_the_old_limits() {
        let throttle = ThrottleHandle::new(BlockLimits::default(), None);
        let mut b = Block::new(Arc::new(Zeroes), "", Arc::new(BlockStats::default()))
            .unwrap()
            .with_throttle(throttle.clone());
        // A wait of an hour, as a very low limit would plan.
        b.timer
            .reset(std::time::Duration::from_secs(3600), None)
            .unwrap();
        b.timer_armed = true;
        throttle.set_limits(BlockLimits {
            bps_total: RateLimit {
                avg: 1 << 20,
                max: 0,
                max_length: 0,
            },
            ..Default::default()
        });
        let a = b.handle_event(1);
        assert_eq!(a.queues, 1);
        let mut p = libc::pollfd {
            fd: b.timer.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `p` is one valid pollfd that outlives the call.
        let ready = unsafe { libc::poll(&mut p, 1, 1000) };
        assert_eq!(ready, 1, "the hour-long wait was kept");
    }
}
