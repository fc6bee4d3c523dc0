//! `net_tx`: rampart's virtio-net transmit and control queues on hostile guest memory.
//!
//! The input is the driver's side of one virtqueue: byte 0 picks the queue size (1..=256),
//! bytes 1-2 the available index, byte 3 the set-up (bit 0: the control queue instead of the
//! transmit queue; bit 1: event indices; bits 2-6: the acked features CSUM, HOST_TSO4,
//! HOST_TSO6, HOST_ECN, MRG_RXBUF); the rest fills the first 64 KiB of a 1 MiB guest memory
//! (descriptor table at 0, available ring at 0x1000, used ring at 0x2000).
//! Checks, beyond "returns Ok or Err without panicking":
//! - every frame that reaches the tap is between a header plus an Ethernet header and a
//!   header plus [`MAX_FRAME`], with a header that passes `check_tx` for the acked features
//!   and `num_buffers` 0;
//! - one pass uses at most a queue's worth of buffers.

use std::sync::{Arc, Mutex};

use rampart_config::NetLimits;
use rampart_devices::net::tap::NetBackend;
use rampart_devices::virtio::net::header::{check_tx, VnetHdr, HDR_LEN, MAX_FRAME};
use rampart_devices::virtio::net::{Net, NetHandle};
use rampart_devices::virtio::VirtioDevice;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Feature bits selected by byte 3's bits 2-6.
const FEATURES: [u32; 5] = [0, 11, 12, 13, 15];

#[derive(Clone, Default)]
struct Tap(Arc<Mutex<Vec<Vec<u8>>>>);

impl NetBackend for Tap {
    fn recv(&mut self, _buf: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::WouldBlock.into())
    }
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(frame.to_vec());
        Ok(())
    }
    fn set_offload(&mut self, _flags: u32) -> std::io::Result<()> {
        Ok(())
    }
    fn fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

pub fn run(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let size = 1u16 << (data[0] % 9);
    let avail_idx = u16::from_le_bytes([data[1], data[2]]);
    let setup = data[3];
    let mut features = 1u64 << 32 | 1 << 17 | 1 << 18;
    for (i, f) in FEATURES.iter().enumerate() {
        if setup & (4 << i) != 0 {
            features |= 1 << f;
        }
    }
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("guest memory");
    let body = &data[4..data.len().min(4 + 0x10000)];
    mem.write_slice(body, GuestAddress(0))
        .expect("fill guest memory");
    mem.write_obj(avail_idx, GuestAddress(0x1002))
        .expect("avail index");
    let mut q = Queue::new(256).expect("queue");
    q.set_size(size);
    q.set_desc_table_address(Some(0), Some(0));
    q.set_avail_ring_address(Some(0x1000), Some(0));
    q.set_used_ring_address(Some(0x2000), Some(0));
    q.set_event_idx(setup & 2 != 0);
    q.set_ready(true);
    let handle =
        NetHandle::new([0x52, 0x54, 0, 0x12, 0x34, 0x56], NetLimits::default()).expect("handle");
    let tap = Tap::default();
    let mut net = Net::new(handle, Box::new(tap.clone())).expect("device");
    net.ack_features(features);
    let queue = if setup & 1 != 0 { 2 } else { 1 };
    let _ = net.process_queue(queue, &mut q, &mem);
    assert!(
        q.next_used() <= size,
        "used {} buffers of a {size}-entry queue in one pass",
        q.next_used()
    );
    for f in tap.0.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        assert!(
            (HDR_LEN + 14..=HDR_LEN + MAX_FRAME).contains(&f.len()),
            "a {}-byte frame reached the tap",
            f.len()
        );
        let h = VnetHdr::parse(f).expect("header");
        assert_eq!(h.num_buffers, 0, "num_buffers passed through");
        check_tx(&h, f.len() - HDR_LEN, features).expect("an unchecked header reached the tap");
    }
}
