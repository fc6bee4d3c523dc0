//! virtio-net queue processing against crafted guest memory and a scripted back end.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use rampart_config::NetLimits;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::net::tap::NetBackend;
use crate::virtio::VirtioDevice;

pub(super) const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

#[derive(Default)]
pub(super) struct Wire {
    pub(super) incoming: VecDeque<Vec<u8>>,
    pub(super) sent: Vec<Vec<u8>>,
    reads: usize,
    offloads: Option<u32>,
}

#[derive(Clone, Default)]
pub(super) struct Fake(pub(super) Arc<Mutex<Wire>>);

impl NetBackend for Fake {
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut w = self.0.lock().unwrap();
        w.reads += 1;
        match w.incoming.pop_front() {
            Some(f) => {
                buf[..f.len()].copy_from_slice(&f);
                Ok(f.len())
            }
            None => Err(std::io::ErrorKind::WouldBlock.into()),
        }
    }
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.0.lock().unwrap().sent.push(frame.to_vec());
        Ok(())
    }
    fn set_offload(&mut self, flags: u32) -> std::io::Result<()> {
        self.0.lock().unwrap().offloads = Some(flags);
        Ok(())
    }
    fn fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

pub(super) fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
}

pub(super) fn net(features: u64) -> (Net, Fake, Arc<NetHandle>) {
    let handle = NetHandle::new(MAC, NetLimits::default()).unwrap();
    let wire = Fake::default();
    let mut n = Net::new(handle.clone(), Box::new(wire.clone())).unwrap();
    n.ack_features(features | 1 << 32);
    (n, wire, handle)
}

/// A frame to `dst` with the 12-byte header, `len` bytes after the header.
pub(super) fn frame(dst: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = vec![0u8; 12 + len];
    f[12..18].copy_from_slice(&dst);
    for (i, b) in f[24..].iter_mut().enumerate() {
        *b = i as u8;
    }
    f
}

pub(super) fn used(
    mem: &GuestMemoryMmap,
    q: &MockSplitQueue<GuestMemoryMmap>,
    i: u64,
) -> (u32, u32) {
    let base = q.used_addr().unchecked_add(4 + i * 8);
    (
        mem.read_obj(base).unwrap(),
        mem.read_obj(base.unchecked_add(4)).unwrap(),
    )
}

pub(super) fn used_idx(mem: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>) -> u16 {
    mem.read_obj(q.used_addr().unchecked_add(2)).unwrap()
}

pub(super) fn writable(addr: u64, len: u32) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, VRING_DESC_F_WRITE as u16, 0))
}

#[test]
fn transmits_a_checked_frame_to_the_tap() {
    // Arrange: header + 60-byte frame in two readable descriptors.
    let mem = mem();
    let vq = MockSplitQueue::new(&mem, 16);
    let f = frame(MAC, 60);
    mem.write_slice(&f[..12], GuestAddress(0x10_0000)).unwrap();
    mem.write_slice(&f[12..], GuestAddress(0x20_0000)).unwrap();
    vq.build_desc_chain(&[
        RawDescriptor::from(Descriptor::new(0x10_0000, 12, VRING_DESC_F_NEXT as u16, 1)),
        RawDescriptor::from(Descriptor::new(0x20_0000, 60, 0, 0)),
    ])
    .unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let (mut n, wire, _) = net(0);
    let (hook, log) = crate::virtio::write_recorder();
    n.set_guest_writes(hook);
    // Act
    assert!(n.process_queue(1, &mut q, &mem).unwrap());
    // Assert (and a transmitted frame is only read: nothing reported written)
    assert_eq!(wire.0.lock().unwrap().sent, vec![f]);
    assert_eq!(used(&mem, &vq, 0), (0, 0));
    assert!(log.lock().unwrap().is_empty());
}

#[test]
fn malformed_transmit_headers_are_dropped_and_the_chain_returned() {
    let mem = mem();
    let vq = MockSplitQueue::new(&mem, 16);
    // Checksum offload without VIRTIO_NET_F_CSUM, then a chain shorter than a header.
    let mut f = frame(MAC, 60);
    f[0] = 1;
    mem.write_slice(&f, GuestAddress(0x10_0000)).unwrap();
    vq.add_desc_chains(
        &[
            RawDescriptor::from(Descriptor::new(0x10_0000, 72, 0, 0)),
            RawDescriptor::from(Descriptor::new(0x10_0000, 5, 0, 0)),
            // A writable-only chain: nothing to send.
            writable(0x10_0000, 100),
        ],
        0,
    )
    .unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let (mut n, wire, _) = net(0);
    assert!(n.process_queue(1, &mut q, &mem).unwrap());
    assert!(wire.0.lock().unwrap().sent.is_empty());
    assert_eq!(used_idx(&mem, &vq), 3);
}

#[test]
fn received_frame_spreads_over_mergeable_buffers() {
    // Arrange: a 3000-byte frame, 2048-byte buffers.
    let mem = mem();
    let vq = MockSplitQueue::new(&mem, 16);
    vq.add_desc_chains(&[writable(0x10_0000, 2048), writable(0x20_0000, 2048)], 0)
        .unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let (mut n, wire, _) = net(1 << VIRTIO_NET_F_MRG_RXBUF);
    let (hook, log) = crate::virtio::write_recorder();
    n.set_guest_writes(hook);
    let f = frame(MAC, 3000);
    wire.0.lock().unwrap().incoming.push_back(f.clone());
    // Act
    assert!(n.process_queue(0, &mut q, &mem).unwrap());
    // Assert: num_buffers = 2, the bytes in order, both buffers reported written.
    assert_eq!(*log.lock().unwrap(), [(0x10_0000, 2048), (0x20_0000, 2048)]);
    assert_eq!(used(&mem, &vq, 0), (0, 2048));
    assert_eq!(used(&mem, &vq, 1), (1, 3012 - 2048));
    let mut got = vec![0u8; 3012];
    mem.read_slice(&mut got[..2048], GuestAddress(0x10_0000))
        .unwrap();
    mem.read_slice(&mut got[2048..], GuestAddress(0x20_0000))
        .unwrap();
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 2);
    assert_eq!(got[12..], f[12..]);
}

#[test]
fn without_receive_buffers_frames_stay_in_the_tap() {
    let mem = mem();
    let vq = MockSplitQueue::new(&mem, 16);
    let mut q: Queue = vq.create_queue().unwrap();
    let (mut n, wire, _) = net(0);
    wire.0.lock().unwrap().incoming.push_back(frame(MAC, 100));
    assert!(!n.process_queue(0, &mut q, &mem).unwrap());
    // Nothing was read (no unbounded host buffering) and the device waits for buffers.
    assert_eq!(wire.0.lock().unwrap().reads, 0);
    assert!(n.more_work(0));
}

#[test]
fn frame_too_big_for_one_buffer_is_dropped_without_mergeable_buffers() {
    let mem = mem();
    let vq = MockSplitQueue::new(&mem, 16);
    vq.add_desc_chains(&[writable(0x10_0000, 1024)], 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let (mut n, wire, _) = net(0);
    wire.0.lock().unwrap().incoming.push_back(frame(MAC, 1500));
    n.process_queue(0, &mut q, &mem).unwrap();
    assert_eq!(used(&mem, &vq, 0), (0, 0));
    assert!(wire.0.lock().unwrap().incoming.is_empty());
}

#[test]
fn link_down_drops_frames_both_ways() {
    let mem = mem();
    let (mut n, wire, handle) = net(0);
    handle.set_link(false);
    n.handle_event(1);
    let mut cfg = [0u8; 2];
    n.read_config(6, &mut cfg);
    assert_eq!(cfg, [0, 0], "status shows the link down");
    // Receive: the tap is drained, the guest's buffer untouched.
    let rx = MockSplitQueue::new(&mem, 16);
    rx.add_desc_chains(&[writable(0x10_0000, 2048)], 0).unwrap();
    let mut q: Queue = rx.create_queue().unwrap();
    wire.0.lock().unwrap().incoming.push_back(frame(MAC, 100));
    n.process_queue(0, &mut q, &mem).unwrap();
    assert!(wire.0.lock().unwrap().incoming.is_empty());
    assert_eq!(used_idx(&mem, &rx), 0);
    // Transmit: consumed, not sent.
    let tx = MockSplitQueue::create(&mem, GuestAddress(0x80_0000), 16);
    mem.write_slice(&frame(MAC, 60), GuestAddress(0x30_0000))
        .unwrap();
    tx.add_desc_chains(
        &[RawDescriptor::from(Descriptor::new(0x30_0000, 72, 0, 0))],
        0,
    )
    .unwrap();
    let mut q: Queue = tx.create_queue().unwrap();
    n.process_queue(1, &mut q, &mem).unwrap();
    assert!(wire.0.lock().unwrap().sent.is_empty());
    assert_eq!(used_idx(&mem, &tx), 1);
}

#[test]
fn receive_filter_set_on_the_control_queue_applies_and_is_published() {
    let mem = mem();
    let (mut n, wire, handle) = net(1 << VIRTIO_NET_F_CTRL_VQ | 1 << VIRTIO_NET_F_CTRL_RX);
    let events = Arc::new(Mutex::new(0));
    let e = events.clone();
    handle.set_listener(Box::new(move || *e.lock().unwrap() += 1));
    // Promiscuous off: class 0, command 0, data 0; ack byte writable.
    let ctrl = MockSplitQueue::new(&mem, 16);
    mem.write_slice(&[0, 0, 0], GuestAddress(0x10_0000))
        .unwrap();
    ctrl.build_desc_chain(&[
        RawDescriptor::from(Descriptor::new(0x10_0000, 3, VRING_DESC_F_NEXT as u16, 1)),
        writable(0x20_0000, 1),
    ])
    .unwrap();
    mem.write_obj(0xffu8, GuestAddress(0x20_0000)).unwrap();
    let mut q: Queue = ctrl.create_queue().unwrap();
    n.process_queue(2, &mut q, &mem).unwrap();
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x20_0000)).unwrap(), 0);
    assert!(!handle.rx_filter().promiscuous);
    assert_eq!(*events.lock().unwrap(), 1);
    // A frame for another MAC is now filtered out; one for ours passes.
    let rx = MockSplitQueue::create(&mem, GuestAddress(0x80_0000), 16);
    rx.add_desc_chains(&[writable(0x30_0000, 2048)], 0).unwrap();
    let mut q: Queue = rx.create_queue().unwrap();
    {
        let mut w = wire.0.lock().unwrap();
        w.incoming.push_back(frame([0x52, 0x54, 0, 0, 0, 9], 100));
        w.incoming.push_back(frame(MAC, 100));
    }
    n.process_queue(0, &mut q, &mem).unwrap();
    assert_eq!(used_idx(&mem, &rx), 1);
    assert_eq!(used(&mem, &rx, 0), (0, 112));
}

#[test]
fn acked_offloads_reach_the_tap_from_the_io_thread() {
    let mem = mem();
    let (mut n, wire, _) = net(1 << VIRTIO_NET_F_CSUM);
    // Negotiation (a vCPU thread) makes no system call; the next queue pass applies them.
    assert_eq!(wire.0.lock().unwrap().offloads, None);
    let vq = MockSplitQueue::new(&mem, 16);
    let mut q: Queue = vq.create_queue().unwrap();
    n.process_queue(1, &mut q, &mem).unwrap();
    assert_eq!(wire.0.lock().unwrap().offloads, Some(0));
    let g = 1u64 << virtio_bindings::virtio_net::VIRTIO_NET_F_GUEST_CSUM
        | 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_GUEST_TSO4;
    assert_eq!(tun_offloads(g), libc::TUN_F_CSUM | libc::TUN_F_TSO4);
    // TSO without checksum offload is meaningless: nothing.
    assert_eq!(
        tun_offloads(1 << virtio_bindings::virtio_net::VIRTIO_NET_F_GUEST_TSO4),
        0
    );
}

/// Limits with only a transmit rate of `avg` frames per second (no burst).
fn tx_pps(avg: u64) -> NetLimits {
    NetLimits {
        tx_pps: rampart_config::RateLimit {
            avg,
            max: 0,
            max_length: 0,
        },
        ..Default::default()
    }
}

#[test]
fn transmit_rate_limit_stops_the_queue_and_arms_the_timer() {
    let mem = mem();
    let handle = NetHandle::new(MAC, tx_pps(10)).unwrap();
    let wire = Fake::default();
    let mut n = Net::new(handle, Box::new(wire.clone())).unwrap();
    let vq = MockSplitQueue::new(&mem, 16);
    mem.write_slice(&frame(MAC, 60), GuestAddress(0x10_0000))
        .unwrap();
    let d = RawDescriptor::from(Descriptor::new(0x10_0000, 72, 0, 0));
    vq.add_desc_chains(&[d, d, d, d], 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    n.process_queue(1, &mut q, &mem).unwrap();
    // A bucket of one packet (a tenth of a second at 10/s): the first frame goes (a second
    // may, on the few microseconds' refill), the rest wait in the ring, not dropped.
    let sent = wire.0.lock().unwrap().sent.len();
    assert!((1..=2).contains(&sent), "{sent}");
    assert_eq!(usize::from(used_idx(&mem, &vq)), sent);
    assert!(!n.more_work(1));
}

/// Whether `fd` becomes readable within `ms` milliseconds.
fn readable_within(fd: std::os::fd::RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd that outlives the call.
    unsafe { libc::poll(&mut p, 1, ms) == 1 }
}

#[test]
fn raising_a_limit_brings_a_waiting_direction_back_at_once() {
    // Arrange: 10 bytes/s, so after the first 60-byte frame the rest wait about six seconds.
    let mem = mem();
    let slow = rampart_config::RateLimit {
        avg: 10,
        max: 0,
        max_length: 0,
    };
    let handle = NetHandle::new(
        MAC,
        NetLimits {
            tx_bps: slow,
            ..Default::default()
        },
    )
    .unwrap();
    let wire = Fake::default();
    let mut n = Net::new(handle.clone(), Box::new(wire.clone())).unwrap();
    let vq = MockSplitQueue::new(&mem, 16);
    mem.write_slice(&frame(MAC, 60), GuestAddress(0x10_0000))
        .unwrap();
    let d = RawDescriptor::from(Descriptor::new(0x10_0000, 72, 0, 0));
    vq.add_desc_chains(&[d, d, d], 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    n.process_queue(1, &mut q, &mem).unwrap();
    assert_eq!(wire.0.lock().unwrap().sent.len(), 1);
    let timer = std::os::fd::AsRawFd::as_raw_fd(&n.tx_limit.timer);
    assert!(!readable_within(timer, 0));
    // Act: the monitor raises the limit (still a limit: 10 frames per second).
    handle.set_limits(tx_pps(10));
    let a = n.handle_event(1);
    // Assert: the queue is serviced now, and the timer planned for the old limit fires at
    // once, not six seconds later.
    assert_ne!(a.queues & 1 << 1, 0);
    assert!(readable_within(timer, 1000), "the old wait was kept");
    n.handle_event(4);
    n.process_queue(1, &mut q, &mem).unwrap();
    assert!(wire.0.lock().unwrap().sent.len() >= 2);
}

#[test]
fn lifting_every_limit_lets_the_queue_run_unthrottled() {
    let mem = mem();
    let handle = NetHandle::new(MAC, tx_pps(1)).unwrap();
    let wire = Fake::default();
    let mut n = Net::new(handle.clone(), Box::new(wire.clone())).unwrap();
    let vq = MockSplitQueue::new(&mem, 16);
    mem.write_slice(&frame(MAC, 60), GuestAddress(0x10_0000))
        .unwrap();
    let d = RawDescriptor::from(Descriptor::new(0x10_0000, 72, 0, 0));
    vq.add_desc_chains(&[d; 8], 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    n.process_queue(1, &mut q, &mem).unwrap();
    assert_eq!(wire.0.lock().unwrap().sent.len(), 1);
    handle.set_limits(NetLimits::default());
    n.handle_event(1);
    n.process_queue(1, &mut q, &mem).unwrap();
    assert_eq!(wire.0.lock().unwrap().sent.len(), 8);
    assert!(n.more_work(1));
}
