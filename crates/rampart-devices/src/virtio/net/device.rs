//! The virtio-net device model (ID 1): one receive queue, one transmit queue and a control
//! queue; MAC, link status, mergeable receive buffers, checksum and TCP segmentation offload
//! both ways through the virtio-net header (the tap gets TUNSETOFFLOAD for what the guest
//! acked), receive filtering, and rate limits enforced with timerfds on the I/O thread.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rampart_block::throttle::Buckets;
use rampart_config::control::RxFilter;
use rampart_config::NetLimits;
use tracing::{info, warn};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_CTRL_MAC_ADDR, VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_CTRL_VQ,
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use super::handle::NetHandle;
use super::header::{HDR_LEN, MAX_FRAME};
use crate::net::tap::NetBackend;
use crate::virtio::{read_config_bytes, EventAction, QueueError, VirtioDevice};

/// PCI class: network controller, Ethernet.
pub const PCI_CLASS: u32 = 0x02_00_00;
pub(super) const RX: usize = 0;
pub(super) const TX: usize = 1;
pub(super) const CTRL: usize = 2;
const QUEUE_SIZES: [u16; 3] = [256, 256, 64];

/// Extra event sources, in [`VirtioDevice::event_fds`] order.
const EV_TAP: usize = 0;
const EV_WAKE: usize = 1;
const EV_KICK: usize = 2;
const EV_RX_TIMER: usize = 3;
const EV_TX_TIMER: usize = 4;

/// Rate-limit bucket indices.
pub(super) const BYTES: usize = 0;
pub(super) const PACKETS: usize = 1;

/// A receive buffer: the tap's largest frame (a 64 KiB GSO packet) with its header.
pub(super) const RX_BUF: usize = HDR_LEN + MAX_FRAME;

/// The features this device offers.
pub const OFFERED: u64 = 1 << VIRTIO_NET_F_CSUM
    | 1 << VIRTIO_NET_F_GUEST_CSUM
    | 1 << VIRTIO_NET_F_MAC
    | 1 << VIRTIO_NET_F_GUEST_TSO4
    | 1 << VIRTIO_NET_F_GUEST_TSO6
    | 1 << VIRTIO_NET_F_GUEST_ECN
    | 1 << VIRTIO_NET_F_HOST_TSO4
    | 1 << VIRTIO_NET_F_HOST_TSO6
    | 1 << VIRTIO_NET_F_HOST_ECN
    | 1 << VIRTIO_NET_F_MRG_RXBUF
    | 1 << VIRTIO_NET_F_STATUS
    | 1 << VIRTIO_NET_F_CTRL_VQ
    | 1 << VIRTIO_NET_F_CTRL_RX
    | 1 << VIRTIO_NET_F_CTRL_MAC_ADDR;

/// The tap offloads (`TUN_F_*`) that match the guest's acked receive features.
pub fn tun_offloads(acked: u64) -> u32 {
    let has = |f: u32| acked & (1u64 << f) != 0;
    let mut t = 0;
    if has(VIRTIO_NET_F_GUEST_CSUM) {
        t |= libc::TUN_F_CSUM;
        if has(VIRTIO_NET_F_GUEST_TSO4) {
            t |= libc::TUN_F_TSO4;
        }
        if has(VIRTIO_NET_F_GUEST_TSO6) {
            t |= libc::TUN_F_TSO6;
        }
        if has(VIRTIO_NET_F_GUEST_ECN) && t & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 {
            t |= libc::TUN_F_TSO_ECN;
        }
    }
    t
}

/// The shortest wait a rate-limit timer is armed for.
const SOON: Duration = Duration::from_micros(100);

/// A direction's rate limiter: buckets (bytes, packets) and the timer that resumes it.
pub(super) struct Limiter {
    pub buckets: Buckets,
    pub timer: TimerFd,
    pub armed: bool,
}

impl Limiter {
    fn new(
        bytes: rampart_config::RateLimit,
        packets: rampart_config::RateLimit,
    ) -> std::io::Result<Self> {
        Ok(Limiter {
            buckets: Buckets::new(&[bytes, packets], Instant::now()),
            timer: TimerFd::new()?,
            armed: false,
        })
    }

    /// Whether a frame may go now; if not, arms the timer.
    pub fn allow(&mut self) -> bool {
        match self.buckets.wait(&[BYTES, PACKETS], Instant::now()) {
            None => true,
            Some(d) => {
                if !self.armed {
                    let d = d.max(SOON);
                    if self.timer.reset(d, None).is_ok() {
                        self.armed = true;
                    }
                }
                false
            }
        }
    }

    /// New limits: fresh buckets, and a timer armed for the old limits fires at once instead
    /// (a wait planned at a low rate must not hold up a direction whose limit was raised).
    fn set(&mut self, bytes: rampart_config::RateLimit, packets: rampart_config::RateLimit) {
        self.buckets = Buckets::new(&[bytes, packets], Instant::now());
        if self.armed && self.timer.reset(SOON, None).is_err() {
            self.armed = false;
        }
    }

    pub fn take(&mut self, bytes: usize) {
        self.buckets.take(&[(BYTES, bytes as u64), (PACKETS, 1)]);
    }
}

/// A virtio network device over a [`NetBackend`].
pub struct Net {
    pub(super) handle: Arc<NetHandle>,
    pub(super) backend: Box<dyn NetBackend>,
    pub(super) acked: u64,
    pub(super) link_up: bool,
    pub(super) filter: RxFilter,
    pub(super) rx_buf: Vec<u8>,
    /// A frame read from the tap that is waiting for receive buffers.
    pub(super) rx_pending: Option<usize>,
    /// Receive stopped for want of buffers (more buffers mean more work).
    pub(super) rx_blocked: bool,
    pub(super) tx_buf: Vec<u8>,
    /// Transmit stopped for its budget or its rate limit.
    pub(super) tx_stopped: bool,
    /// Self-notification for work left over when a budget ran out.
    pub(super) kick: EventFd,
    pub(super) kick_queues: u64,
    pub(super) rx_limit: Limiter,
    pub(super) tx_limit: Limiter,
    /// The limits the buckets were made for.
    limits: NetLimits,
    /// Told of the receive and control buffers written (see
    /// [`crate::virtio::GuestWriteHook`]).
    pub(super) guest_writes: Option<crate::virtio::GuestWriteHook>,
    /// Offloads (`TUN_F_*`) to give the tap: set by feature negotiation (a vCPU thread), applied
    /// by the I/O thread before it next moves frames (until then the tap sends plain frames,
    /// which every guest accepts).
    pending_offloads: Option<u32>,
    config: [u8; 10],
}

impl Net {
    /// A NIC with the MAC and limits of `handle`, sending and receiving through `backend`.
    pub fn new(handle: Arc<NetHandle>, backend: Box<dyn NetBackend>) -> std::io::Result<Net> {
        let l = handle.limits();
        let mut config = [0u8; 10];
        config[..6].copy_from_slice(&handle.mac());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        let mac = handle.mac();
        Ok(Net {
            link_up: handle.link_up(),
            handle,
            backend,
            acked: 0,
            filter: RxFilter::reset(mac),
            rx_buf: vec![0; RX_BUF],
            rx_pending: None,
            rx_blocked: false,
            tx_buf: Vec::with_capacity(RX_BUF),
            tx_stopped: false,
            kick: EventFd::new(EFD_NONBLOCK)?,
            kick_queues: 0,
            rx_limit: Limiter::new(l.rx_bps, l.rx_pps)?,
            tx_limit: Limiter::new(l.tx_bps, l.tx_pps)?,
            limits: l,
            guest_writes: None,
            pending_offloads: None,
            config,
        })
    }

    fn apply_limits(&mut self, l: NetLimits) {
        if l == self.limits {
            return;
        }
        info!(?l, "virtio-net: rate limits changed");
        self.limits = l;
        self.rx_limit.set(l.rx_bps, l.rx_pps);
        self.tx_limit.set(l.tx_bps, l.tx_pps);
    }

    /// Asks the I/O thread to come back to `queue` after other events.
    pub(super) fn kick_later(&mut self, queue: usize) {
        self.kick_queues |= 1 << queue;
        let _ = self.kick.write(1);
    }

    /// Gives the tap the offloads negotiated last (on the I/O thread).
    fn apply_offloads(&mut self) {
        if let Some(t) = self.pending_offloads.take() {
            if let Err(e) = self.backend.set_offload(t) {
                warn!("virtio-net: TUNSETOFFLOAD {t:#x} failed: {e}");
            }
        }
    }

    pub(super) fn has(&self, feature: u32) -> bool {
        self.acked & (1u64 << feature) != 0
    }
}

impl VirtioDevice for Net {
    fn device_id(&self) -> u32 {
        VIRTIO_ID_NET
    }
    fn features(&self) -> u64 {
        OFFERED
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut c = self.config;
        let status = if self.link_up {
            VIRTIO_NET_S_LINK_UP as u16
        } else {
            0
        };
        c[6..8].copy_from_slice(&status.to_le_bytes());
        read_config_bytes(&c, offset, data);
    }
    fn ack_features(&mut self, features: u64) {
        self.acked = features;
        self.pending_offloads = Some(tun_offloads(features));
    }
    fn set_guest_writes(&mut self, hook: crate::virtio::GuestWriteHook) {
        self.guest_writes = Some(hook);
    }

    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        self.apply_offloads();
        match index {
            RX => self.rx(queue, mem),
            TX => self.tx(queue, mem),
            CTRL => self.ctrl(queue, mem),
            _ => Ok(false),
        }
    }
    fn reset(&mut self) {
        self.acked = 0;
        self.filter = RxFilter::reset(self.handle.mac());
        self.handle.filter_reset(&self.filter);
        self.rx_pending = None;
        self.rx_blocked = false;
        self.tx_stopped = false;
        self.pending_offloads = Some(0);
    }
    fn event_fds(&self) -> Vec<(RawFd, bool)> {
        let tap = self.backend.fd().unwrap_or(self.kick.as_raw_fd());
        vec![
            (tap, true),
            (self.handle.wake_fd().as_raw_fd(), false),
            (self.kick.as_raw_fd(), false),
            (self.rx_limit.timer.as_raw_fd(), false),
            (self.tx_limit.timer.as_raw_fd(), false),
        ]
    }
    fn handle_event(&mut self, index: usize) -> EventAction {
        let mut a = EventAction::default();
        match index {
            EV_TAP => a.queues = 1 << RX,
            EV_WAKE => {
                let _ = self.handle.wake_fd().read();
                let up = self.handle.link_up();
                if up != self.link_up {
                    info!(up, "virtio-net: link changed");
                    self.link_up = up;
                    a.config_changed = true;
                }
                self.apply_limits(self.handle.limits());
                a.queues = 1 << RX | 1 << TX;
            }
            EV_KICK => {
                let _ = self.kick.read();
                a.queues = std::mem::take(&mut self.kick_queues);
            }
            EV_RX_TIMER => {
                let _ = self.rx_limit.timer.wait();
                self.rx_limit.armed = false;
                a.queues = 1 << RX;
            }
            EV_TX_TIMER => {
                let _ = self.tx_limit.timer.wait();
                self.tx_limit.armed = false;
                a.queues = 1 << TX;
            }
            _ => {}
        }
        a
    }
    fn more_work(&self, index: usize) -> bool {
        match index {
            RX => self.rx_blocked,
            TX => !self.tx_stopped,
            _ => true,
        }
    }
}
