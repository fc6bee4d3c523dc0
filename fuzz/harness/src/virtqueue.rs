//! The input layout the virtqueue targets share: byte 0 picks the queue size (1..=256), bytes
//! 1-2 the available index, byte 3 is the target's own set-up byte, and the rest fills the first
//! 64 KiB of a 1 MiB guest memory (descriptor table at 0, available ring at 0x1000, used ring at
//! 0x2000) — descriptors, indirect tables and buffers can point anywhere, in RAM or not.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// One ready queue over guest memory built from a fuzz input.
pub struct HostileQueue {
    pub mem: GuestMemoryMmap,
    pub queue: Queue,
    /// The queue's size, the most buffers one pass may use.
    pub size: u16,
    /// Byte 3 of the input.
    pub setup: u8,
}

/// Builds the queue, with event indices when `setup & event_idx_bit` is set; `None` for an
/// input shorter than its 4-byte head.
pub fn hostile_queue(data: &[u8], event_idx_bit: u8) -> Option<HostileQueue> {
    if data.len() < 4 {
        return None;
    }
    let size = 1u16 << (data[0] % 9);
    let avail_idx = u16::from_le_bytes([data[1], data[2]]);
    let setup = data[3];
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("guest memory");
    let body = &data[4..data.len().min(4 + 0x10000)];
    mem.write_slice(body, GuestAddress(0))
        .expect("fill guest memory");
    mem.write_obj(avail_idx, GuestAddress(0x1002))
        .expect("avail index");
    let mut queue = Queue::new(256).expect("queue");
    queue.set_size(size);
    queue.set_desc_table_address(Some(0), Some(0));
    queue.set_avail_ring_address(Some(0x1000), Some(0));
    queue.set_used_ring_address(Some(0x2000), Some(0));
    queue.set_event_idx(setup & event_idx_bit != 0);
    queue.set_ready(true);
    Some(HostileQueue {
        mem,
        queue,
        size,
        setup,
    })
}

/// The property every virtqueue target checks: one pass uses at most a queue's worth of
/// buffers (no chain is served twice, nothing loops).
pub fn check_one_pass(q: &HostileQueue) {
    assert!(
        q.queue.next_used() <= q.size,
        "used {} buffers of a {}-entry queue in one pass",
        q.queue.next_used(),
        q.size
    );
}
