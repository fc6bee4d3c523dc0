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
    let Some(mut hq) = crate::virtqueue::hostile_queue(data, 2) else {
        return;
    };
    let setup = hq.setup;
    let mut features = 1u64 << 32 | 1 << 17 | 1 << 18;
    for (i, f) in FEATURES.iter().enumerate() {
        if setup & (4 << i) != 0 {
            features |= 1 << f;
        }
    }
    let handle =
        NetHandle::new([0x52, 0x54, 0, 0x12, 0x34, 0x56], NetLimits::default()).expect("handle");
    let tap = Tap::default();
    let mut net = Net::new(handle, Box::new(tap.clone())).expect("device");
    net.ack_features(features);
    let queue = if setup & 1 != 0 { 2 } else { 1 };
    let _ = net.process_queue(queue, &mut hq.queue, &hq.mem);
    crate::virtqueue::check_one_pass(&hq);
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
