use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::pci::msix::test_util::Recorder;
use crate::virtio::rng::Rng;
use crate::virtio::worker::service_queue;

const STATUS: u64 = 0x14;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

fn device() -> (VirtioPci, WorkerParts, Recorder, GuestMemoryMmap) {
    let mem = mem();
    let rec = Recorder::default();
    let (dev, parts) =
        VirtioPci::new(Box::new(Rng::new()), 0xff00, mem.clone(), &rec, None).unwrap();
    (dev, parts, rec, mem)
}

fn w32(d: &mut VirtioPci, off: u64, v: u32) {
    d.bar_write(0, off, &v.to_le_bytes());
}
fn w16(d: &mut VirtioPci, off: u64, v: u16) {
    d.bar_write(0, off, &v.to_le_bytes());
}
fn w8(d: &mut VirtioPci, off: u64, v: u8) {
    d.bar_write(0, off, &[v]);
}
fn r32(d: &mut VirtioPci, off: u64) -> u32 {
    let mut b = [0u8; 4];
    d.bar_read(0, off, &mut b);
    u32::from_le_bytes(b)
}
fn r8(d: &mut VirtioPci, off: u64) -> u8 {
    let mut b = [0u8; 1];
    d.bar_read(0, off, &mut b);
    b[0]
}

/// Negotiates `features` and returns the status the device kept.
fn negotiate(d: &mut VirtioPci, features: u64) -> u8 {
    w8(d, STATUS, 1 | 2);
    w32(d, 0x08, 0);
    w32(d, 0x0c, features as u32);
    w32(d, 0x08, 1);
    w32(d, 0x0c, (features >> 32) as u32);
    w8(d, STATUS, 1 | 2 | 8);
    r8(d, STATUS)
}

#[test]
fn offers_version_1_event_idx_and_indirect_descriptors() {
    let (mut d, ..) = device();
    w32(&mut d, 0x00, 1);
    assert_eq!(r32(&mut d, 0x04), 1, "VERSION_1 (bit 32)");
    w32(&mut d, 0x00, 0);
    let low = r32(&mut d, 0x04);
    assert_ne!(low & 1 << 28, 0);
    assert_ne!(low & 1 << 29, 0);
    // IDs: modern virtio-rng.
    assert_eq!(d.config().u32_at(0), 0x1044_1af4);
}

#[test]
fn features_without_version_1_are_refused() {
    let (mut d, ..) = device();
    assert_eq!(negotiate(&mut d, 1 << 28) & 8, 0);
}

#[test]
fn unknown_feature_bits_are_refused_and_valid_ones_accepted() {
    let (mut d, ..) = device();
    assert_eq!(negotiate(&mut d, 1 << 32 | 1 << 50) & 8, 0);
    w8(&mut d, STATUS, 0);
    assert_eq!(negotiate(&mut d, 1 << 32 | 1 << 29), 1 | 2 | 8);
}

/// Sets up queue 0 at fixed addresses with `size` entries, vector 1, and DRIVER_OK.
fn bring_up(d: &mut VirtioPci, size: u16) {
    negotiate(d, 1 << 32);
    w16(d, 0x16, 0);
    w16(d, 0x18, size);
    w16(d, 0x1a, 1);
    w32(d, 0x20, 0x1000);
    w32(d, 0x24, 0);
    w32(d, 0x28, 0x2000);
    w32(d, 0x2c, 0);
    w32(d, 0x30, 0x3000);
    w32(d, 0x34, 0);
    w16(d, 0x1c, 1);
    w8(d, STATUS, 1 | 2 | 8 | 4);
}

fn enable_msix(d: &mut VirtioPci) {
    // The MSI-X capability is the first one (0x40); program vector 1 and enable.
    d.bar_write(0, 0x4000 + 16, &0xfee0_0000u32.to_le_bytes());
    d.bar_write(0, 0x4000 + 16 + 8, &0x41u32.to_le_bytes());
    d.bar_write(0, 0x4000 + 16 + 12, &0u32.to_le_bytes());
    d.config_write(0x42, &0x8000u16.to_le_bytes());
}

#[test]
fn notified_queue_is_served_by_the_worker_and_interrupts() {
    // Arrange
    let (mut d, parts, rec, mem) = device();
    enable_msix(&mut d);
    bring_up(&mut d, 8);
    // One 32-byte writable descriptor at 0x8000, made available.
    mem.write_obj(0x8000u64, GuestAddress(0x1000)).unwrap();
    mem.write_obj(32u32, GuestAddress(0x1008)).unwrap();
    mem.write_obj(2u16, GuestAddress(0x100c)).unwrap(); // VRING_DESC_F_WRITE
    mem.write_obj(0u16, GuestAddress(0x2004)).unwrap();
    mem.write_obj(1u16, GuestAddress(0x2002)).unwrap();
    // Act
    d.bar_write(0, 0x3000, &0u16.to_le_bytes());
    assert!(parts.queue_evts[0].read().unwrap() >= 1);
    service_queue(&mut parts.state.lock().unwrap(), &parts.msix, 0);
    // Assert
    let used_idx: u16 = mem.read_obj(GuestAddress(0x3002)).unwrap();
    let used_len: u32 = mem.read_obj(GuestAddress(0x3008)).unwrap();
    assert_eq!((used_idx, used_len), (1, 32));
    assert_eq!(rec.sent.lock().unwrap().len(), 1);
    assert_eq!(rec.sent.lock().unwrap()[0].1.data, 0x41);
}

#[test]
fn avail_index_jumping_past_queue_size_sets_needs_reset() {
    let (mut d, parts, _rec, mem) = device();
    bring_up(&mut d, 8);
    mem.write_obj(100u16, GuestAddress(0x2002)).unwrap();
    service_queue(&mut parts.state.lock().unwrap(), &parts.msix, 0);
    assert_ne!(r8(&mut d, STATUS) & 0x40, 0);
    // A reset brings the device back.
    w8(&mut d, STATUS, 0);
    assert_eq!(r8(&mut d, STATUS), 0);
    bring_up(&mut d, 8);
    assert_eq!(r8(&mut d, STATUS) & 0x40, 0);
}

#[test]
fn queue_placed_outside_guest_ram_sets_needs_reset_at_driver_ok() {
    let (mut d, ..) = device();
    negotiate(&mut d, 1 << 32);
    w16(&mut d, 0x18, 8);
    w32(&mut d, 0x20, 0x1000);
    w32(&mut d, 0x28, 0x2000);
    w32(&mut d, 0x30, 0);
    w32(&mut d, 0x34, 0x10); // far beyond RAM
    w16(&mut d, 0x1c, 1);
    w8(&mut d, STATUS, 1 | 2 | 8 | 4);
    assert_ne!(r8(&mut d, STATUS) & 0x40, 0);
}

#[test]
fn out_of_range_msix_vector_reads_back_as_no_vector() {
    let (mut d, ..) = device();
    w16(&mut d, 0x1a, 77);
    let mut b = [0u8; 2];
    d.bar_read(0, 0x1a, &mut b);
    assert_eq!(u16::from_le_bytes(b), NO_VECTOR);
    w16(&mut d, 0x10, 1);
    d.bar_read(0, 0x10, &mut b);
    assert_eq!(u16::from_le_bytes(b), 1);
}

#[test]
fn accesses_to_odd_places_are_harmless() {
    let (mut d, ..) = device();
    d.bar_write(0, 0x7fff, &[1, 2, 3, 4]);
    d.bar_write(0, 0x3ffe, &[1, 2, 3, 4]);
    d.bar_write(1, 0, &[1]);
    d.bar_write(0, 0x3000 + 0xffc, &[0, 0, 0, 0]); // notify for a queue that does not exist
    let mut b = [0xaa; 8];
    d.bar_read(0, 0x6000, &mut b);
    assert_eq!(b, [0; 8]);
    d.bar_read(0, 0x0ffe, &mut b[..4]);
}
