//! virtio-net against a hostile guest (issue 9 §4): short, oversized and malformed frames,
//! descriptor abuse, a guest that never gives receive buffers, floods. Each test fails without
//! the protection it names.

use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MRG_RXBUF};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::device::{RX_BUF, TX};
use super::header::{HDR_LEN, MAX_FRAME};
use super::tests::{frame, mem, net, used, used_idx, writable, MAC};
use super::BUDGET;
use crate::virtio::VirtioDevice;

/// Guest-physical address past the end of the tests' guest memory (16 MiB).
const OUTSIDE_RAM: u64 = 0x4000_0000;
/// Where rings of more than a few entries put their used ring: the mock's own overlaps its
/// available ring beyond a few entries.
const USED_RING: GuestAddress = GuestAddress(0x80_0000);

/// The queue of `vq`, with its used ring at [`USED_RING`].
fn big_queue(vq: &MockSplitQueue<GuestMemoryMmap>) -> Queue {
    let mut q: Queue = vq.create_queue().unwrap();
    q.try_set_used_ring_address(USED_RING).unwrap();
    q
}

/// Entry `i` (id, length) of the used ring at [`USED_RING`].
fn big_used(mem: &GuestMemoryMmap, i: u64) -> (u32, u32) {
    let a = USED_RING.unchecked_add(4 + i * 8);
    (
        mem.read_obj(a).unwrap(),
        mem.read_obj(a.unchecked_add(4)).unwrap(),
    )
}

/// The index of the used ring at [`USED_RING`].
fn big_used_idx(mem: &GuestMemoryMmap) -> u16 {
    mem.read_obj(USED_RING.unchecked_add(2)).unwrap()
}

#[test]
fn a_frame_shorter_than_an_ethernet_header_from_the_tap_is_dropped() {
    let mem = mem();
    let vq = MockSplitQueue::new(&mem, 16);
    vq.add_desc_chains(&[writable(0x10_0000, 2048), writable(0x20_0000, 2048)], 0)
        .unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let (mut n, wire, _) = net(0);
    {
        let mut w = wire.0.lock().unwrap();
        w.incoming.push_back(vec![0; HDR_LEN + 13]);
        w.incoming.push_back(frame(MAC, 100));
    }
    n.process_queue(0, &mut q, &mem).unwrap();
    // Only the whole frame reached the guest, in the first buffer.
    assert_eq!(used_idx(&mem, &vq), 1);
    assert_eq!(used(&mem, &vq, 0), (0, 112));
}

#[test]
fn an_oversized_transmit_chain_is_dropped_without_being_copied() {
    // Arrange: a header and one byte more than the largest frame, over two descriptors.
    let mem = mem();
    let vq = MockSplitQueue::new(&mem, 16);
    vq.build_desc_chain(&[
        RawDescriptor::from(Descriptor::new(
            0x10_0000,
            HDR_LEN as u32,
            VRING_DESC_F_NEXT as u16,
            1,
        )),
        RawDescriptor::from(Descriptor::new(0x20_0000, MAX_FRAME as u32 + 1, 0, 0)),
    ])
    .unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let (mut n, wire, _) = net(0);
    // Act
    n.process_queue(TX, &mut q, &mem).unwrap();
    // Assert: returned, not sent, and the copy buffer never grew past one frame.
    assert!(wire.0.lock().unwrap().sent.is_empty());
    assert_eq!(used_idx(&mem, &vq), 1);
    assert!(n.tx_buf.capacity() <= RX_BUF);
}

#[test]
fn a_transmit_chain_outside_guest_memory_is_returned_and_the_next_frame_goes() {
    let mem = mem();
    let vq = MockSplitQueue::new(&mem, 16);
    let f = frame(MAC, 60);
    mem.write_slice(&f, GuestAddress(0x10_0000)).unwrap();
    vq.add_desc_chains(
        &[
            RawDescriptor::from(Descriptor::new(OUTSIDE_RAM, 72, 0, 0)),
            RawDescriptor::from(Descriptor::new(0x10_0000, 72, 0, 0)),
        ],
        0,
    )
    .unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let (mut n, wire, _) = net(0);
    n.process_queue(TX, &mut q, &mem).unwrap();
    assert_eq!(wire.0.lock().unwrap().sent, vec![f]);
    assert_eq!(used_idx(&mem, &vq), 2);
}

#[test]
fn a_ring_of_unusable_receive_buffers_is_returned_without_recursion() {
    // Arrange: a large ring (the guest can refill as fast as chains are returned), every chain
    // outside guest memory but the last. (Handled one nested call per chain, this overflows
    // the stack.)
    let mem = mem();
    let size: u16 = 4096;
    let vq = MockSplitQueue::create(&mem, GuestAddress(0x40_0000), size);
    let mut chains: Vec<RawDescriptor> =
        (0..size - 1).map(|_| writable(OUTSIDE_RAM, 2048)).collect();
    chains.push(writable(0x10_0000, 2048));
    vq.add_desc_chains(&chains, 0).unwrap();
    let mut q = big_queue(&vq);
    let (mut n, wire, _) = net(0);
    let f = frame(MAC, 100);
    wire.0.lock().unwrap().incoming.push_back(f.clone());
    // Act
    n.process_queue(0, &mut q, &mem).unwrap();
    // Assert: every chain used once, the last with the frame.
    assert_eq!(big_used_idx(&mem), size);
    for i in 0..u64::from(size) - 1 {
        assert_eq!(big_used(&mem, i), (i as u32, 0));
    }
    assert_eq!(
        big_used(&mem, u64::from(size) - 1),
        (u32::from(size) - 1, 112)
    );
    let mut got = vec![0u8; 112];
    mem.read_slice(&mut got, GuestAddress(0x10_0000)).unwrap();
    assert_eq!(got[12..], f[12..]);
}

#[test]
fn an_unusable_buffer_among_merged_ones_drops_the_frame_and_uses_each_chain_once() {
    // Arrange: a 3000-byte frame, a good 1024-byte buffer, then one outside guest memory.
    let mem = mem();
    let vq = MockSplitQueue::new(&mem, 16);
    vq.add_desc_chains(&[writable(0x10_0000, 1024), writable(OUTSIDE_RAM, 4096)], 0)
        .unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let (mut n, wire, _) = net(1 << VIRTIO_NET_F_MRG_RXBUF);
    wire.0.lock().unwrap().incoming.push_back(frame(MAC, 3000));
    // Act
    n.process_queue(0, &mut q, &mem).unwrap();
    // Assert: both chains came back empty, once each, and nothing is held for them.
    assert_eq!(used_idx(&mem, &vq), 2);
    let mut heads = [used(&mem, &vq, 0), used(&mem, &vq, 1)];
    heads.sort();
    assert_eq!(heads, [(0, 0), (1, 0)]);
    assert!(wire.0.lock().unwrap().incoming.is_empty());
    n.process_queue(0, &mut q, &mem).unwrap();
    assert_eq!(used_idx(&mem, &vq), 2, "a chain was used twice");
}

#[test]
fn a_transmit_flood_is_served_a_budget_at_a_time() {
    // Arrange: more frames than one pass may send.
    let mem = mem();
    let size = 512u16;
    let vq = MockSplitQueue::new(&mem, size);
    mem.write_slice(&frame(MAC, 60), GuestAddress(0x10_0000))
        .unwrap();
    let d = RawDescriptor::from(Descriptor::new(0x10_0000, 72, 0, 0));
    vq.add_desc_chains(&vec![d; usize::from(size)], 0).unwrap();
    let mut q = big_queue(&vq);
    let (mut n, wire, _) = net(0);
    // Act
    n.process_queue(TX, &mut q, &mem).unwrap();
    // Assert: one budget went, the rest waits for the device's own kick (other events first).
    assert_eq!(wire.0.lock().unwrap().sent.len(), BUDGET);
    assert_eq!(usize::from(big_used_idx(&mem)), BUDGET);
    assert!(!n.more_work(TX));
    let a = n.handle_event(2);
    assert_eq!(a.queues, 1 << TX);
    n.process_queue(TX, &mut q, &mem).unwrap();
    assert_eq!(wire.0.lock().unwrap().sent.len(), usize::from(size));
    assert_eq!(big_used_idx(&mem), size);
}

#[test]
fn a_receive_flood_is_served_a_budget_at_a_time() {
    let mem = mem();
    let size = 512u16;
    let vq = MockSplitQueue::new(&mem, size);
    let bufs: Vec<RawDescriptor> = (0..u64::from(size))
        .map(|i| writable(0x10_0000 + i * 256, 256))
        .collect();
    vq.add_desc_chains(&bufs, 0).unwrap();
    let mut q = big_queue(&vq);
    let (mut n, wire, _) = net(0);
    for _ in 0..size {
        wire.0.lock().unwrap().incoming.push_back(frame(MAC, 100));
    }
    n.process_queue(0, &mut q, &mem).unwrap();
    assert_eq!(usize::from(big_used_idx(&mem)), BUDGET);
    assert_eq!(n.handle_event(2).queues, 1 << 0);
    n.process_queue(0, &mut q, &mem).unwrap();
    assert_eq!(big_used_idx(&mem), size);
    assert_eq!(
        big_used(&mem, u64::from(size) - 1),
        (u32::from(size) - 1, 112)
    );
}

#[test]
fn a_control_command_larger_than_the_cap_is_refused_unread() {
    // Arrange: a MAC table of 1000 entries (6 KiB): over the cap, it would otherwise be taken
    // as an overflowing table and switch the filter to accept every unicast address.
    let mem = mem();
    let (mut n, _, handle) = net(1 << VIRTIO_NET_F_CTRL_VQ);
    let mut cmd = vec![1u8, 0];
    cmd.extend_from_slice(&1000u32.to_le_bytes());
    cmd.extend(std::iter::repeat_n(0x02, 6000));
    cmd.extend_from_slice(&0u32.to_le_bytes());
    mem.write_slice(&cmd, GuestAddress(0x10_0000)).unwrap();
    let ctrl = MockSplitQueue::new(&mem, 16);
    ctrl.build_desc_chain(&[
        RawDescriptor::from(Descriptor::new(
            0x10_0000,
            cmd.len() as u32,
            VRING_DESC_F_NEXT as u16,
            1,
        )),
        writable(0x20_0000, 1),
    ])
    .unwrap();
    let mut q: Queue = ctrl.create_queue().unwrap();
    let before = handle.rx_filter();
    // Act
    n.process_queue(2, &mut q, &mem).unwrap();
    // Assert: VIRTIO_NET_ERR, filter unchanged.
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x20_0000)).unwrap(), 1);
    assert_eq!(handle.rx_filter(), before);
}
