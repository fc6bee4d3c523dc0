//! The virtio-blk queue against crafted guest memory: well-formed requests, and every hostile
//! shape of chain a guest can build.

use std::sync::Mutex;

use rampart_block::stats::{BlockStats, StatsSnapshot};
use rampart_block::BlockError;
use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress};

use super::*;

/// An in-memory disk that records what was asked of it.
struct MemDisk {
    data: Mutex<Vec<u8>>,
    read_only: bool,
    discard: bool,
    log: Mutex<Vec<String>>,
    /// Buffers of `read_at`/`write_at` that were not 4 KiB aligned.
    unaligned: std::sync::atomic::AtomicU32,
}

impl MemDisk {
    fn new(size: usize, read_only: bool, discard: bool) -> Arc<MemDisk> {
        let data = (0..size).map(|i| (i / 512) as u8).collect();
        Arc::new(MemDisk {
            data: Mutex::new(data),
            read_only,
            discard,
            log: Mutex::new(Vec::new()),
            unaligned: Default::default(),
        })
    }

    fn note_alignment(&self, p: *const u8) {
        let n = u32::from(!(p as usize).is_multiple_of(4096));
        self.unaligned
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn check(&self, offset: u64, len: u64) -> Result<(usize, usize), BlockError> {
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok((offset as usize, end as usize)),
            _ => Err(BlockError::OutOfRange { offset, len, size }),
        }
    }
}

impl BlockBackend for MemDisk {
    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let (a, b) = self.check(offset, buf.len() as u64)?;
        self.note_alignment(buf.as_ptr());
        buf.copy_from_slice(&self.data.lock().unwrap()[a..b]);
        Ok(())
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let (a, b) = self.check(offset, buf.len() as u64)?;
        self.note_alignment(buf.as_ptr());
        self.data.lock().unwrap()[a..b].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> Result<(), BlockError> {
        self.log.lock().unwrap().push("flush".into());
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.check(offset, len)?;
        self.log
            .lock()
            .unwrap()
            .push(format!("discard {offset} {len}"));
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<(), BlockError> {
        let (a, b) = self.check(offset, len)?;
        self.data.lock().unwrap()[a..b].fill(0);
        self.log
            .lock()
            .unwrap()
            .push(format!("zeroes {offset} {len} {may_unmap}"));
        Ok(())
    }
    fn supports_discard(&self) -> bool {
        self.discard
    }
}

const RAM: u64 = 0x40_0000;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x11_0000;
const STATUS: u64 = 0x20_0000;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap()
}

fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next))
}

fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
    mem.write_obj(kind, GuestAddress(HDR)).unwrap();
    mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
    mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
}

/// A standard three-descriptor request: header, data (`data_flags`), status.
fn request(len: u32, data_write: bool) -> Vec<RawDescriptor> {
    let dflag = if data_write { VRING_DESC_F_WRITE } else { 0 };
    vec![
        desc(HDR, 16, VRING_DESC_F_NEXT, 1),
        desc(DATA, len, dflag | VRING_DESC_F_NEXT, 2),
        desc(STATUS, 1, VRING_DESC_F_WRITE, 0),
    ]
}

struct Run {
    used_len: u32,
    used_idx: u16,
    status: u8,
    stats: StatsSnapshot,
}

/// Offers `descs` as one chain (starting at descriptor 0) and processes the queue.
fn run(mem: &GuestMemoryMmap, disk: Arc<dyn BlockBackend>, descs: &[RawDescriptor]) -> Run {
    let vq = MockSplitQueue::new(mem, 16);
    for (i, d) in descs.iter().enumerate() {
        vq.desc_table().store(i as u16, *d).unwrap();
    }
    vq.avail().ring().ref_at(0).unwrap().store(0u16);
    vq.avail().idx().store(1u16);
    mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let stats = Arc::new(BlockStats::new());
    let mut reqs = BlockRequests::new(disk, "SERIAL-1", stats.clone());
    reqs.process(&mut q, mem).unwrap();
    let used = vq.used_addr();
    Run {
        used_idx: mem.read_obj(used.unchecked_add(2)).unwrap(),
        used_len: mem.read_obj(used.unchecked_add(8)).unwrap(),
        status: mem.read_obj(GuestAddress(STATUS)).unwrap(),
        stats: stats.snapshot(),
    }
}

#[test]
fn completed_failed_and_invalid_requests_are_accounted_like_qemu() {
    let mem = mem();
    header(&mem, VIRTIO_BLK_T_IN, 3);
    let r = run(
        &mem,
        MemDisk::new(64 * 512, false, false),
        &request(1024, true),
    );
    assert_eq!((r.stats.read.operations, r.stats.read.bytes), (1, 1024));
    assert_eq!(r.stats.write.operations, 0);

    header(&mem, VIRTIO_BLK_T_OUT, 2);
    let r = run(
        &mem,
        MemDisk::new(64 * 512, false, false),
        &request(512, false),
    );
    assert_eq!((r.stats.write.operations, r.stats.write.bytes), (1, 512));
    assert_eq!(r.stats.wr_highest_offset, 3 * 512);

    header(&mem, VIRTIO_BLK_T_OUT, 0);
    let r = run(
        &mem,
        MemDisk::new(64 * 512, true, false),
        &request(512, false),
    );
    assert_eq!(r.status, VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(
        (r.stats.write.operations, r.stats.write.failed_operations),
        (0, 1)
    );

    header(&mem, VIRTIO_BLK_T_IN, 64);
    let r = run(
        &mem,
        MemDisk::new(64 * 512, false, false),
        &request(512, true),
    );
    assert_eq!(r.status, VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(
        (r.stats.read.operations, r.stats.read.invalid_operations),
        (0, 1)
    );

    header(&mem, VIRTIO_BLK_T_GET_ID, 0);
    let r = run(&mem, MemDisk::new(512, false, false), &request(20, true));
    assert_eq!(r.stats, StatsSnapshot::default(), "GET_ID is not block I/O");
}

#[test]
fn read_copies_sectors_into_guest_memory() {
    let mem = mem();
    let disk = MemDisk::new(64 * 512, false, false);
    header(&mem, VIRTIO_BLK_T_IN, 3);
    let r = run(&mem, disk, &request(1024, true));
    assert_eq!((r.status, r.used_len, r.used_idx), (0, 1025, 1));
    let mut b = [0u8; 2];
    mem.read_slice(&mut b, GuestAddress(DATA + 511)).unwrap();
    assert_eq!(b, [3, 4]);
}

#[test]
fn the_buffers_a_request_may_write_are_reported_before_it_is_used() {
    // A read (data and status written) and a write (only the status written).
    for (kind, data_write) in [(VIRTIO_BLK_T_IN, true), (VIRTIO_BLK_T_OUT, false)] {
        let mem = mem();
        header(&mem, kind, 1);
        let vq = MockSplitQueue::new(&mem, 16);
        for (i, d) in request(1024, data_write).iter().enumerate() {
            vq.desc_table().store(i as u16, *d).unwrap();
        }
        vq.avail().ring().ref_at(0).unwrap().store(0u16);
        vq.avail().idx().store(1u16);
        let mut q: Queue = vq.create_queue().unwrap();
        let mut reqs = BlockRequests::new(
            MemDisk::new(64 * 512, false, false),
            "S",
            Arc::new(BlockStats::new()),
        );
        let (hook, log) = crate::virtio::write_recorder();
        reqs.guest_writes = Some(hook);
        reqs.process(&mut q, &mem).unwrap();
        let want = if data_write {
            vec![(DATA, 1024), (STATUS, 1)]
        } else {
            vec![(STATUS, 1)]
        };
        assert_eq!(*log.lock().unwrap(), want, "type {kind}");
    }
}

#[test]
fn write_stores_guest_data_on_the_disk() {
    let mem = mem();
    let disk = MemDisk::new(64 * 512, false, false);
    header(&mem, VIRTIO_BLK_T_OUT, 2);
    mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    let r = run(&mem, disk.clone(), &request(512, false));
    assert_eq!((r.status, r.used_len), (0, 1));
    assert_eq!(disk.data.lock().unwrap()[1024..1536], [0xab; 512]);
}

#[test]
fn the_copy_path_hands_the_back_end_4k_aligned_buffers() {
    // (So a qcow2 image on an O_DIRECT file writes its clusters without a bounce copy.)
    let mem = mem();
    let disk = MemDisk::new(64 * 512, false, false);
    for (kind, write, len) in [
        (VIRTIO_BLK_T_OUT, false, 4096),
        (VIRTIO_BLK_T_IN, true, 1024),
        (VIRTIO_BLK_T_OUT, false, 8192),
    ] {
        header(&mem, kind, 2);
        let r = run(&mem, disk.clone(), &request(len, write));
        assert_eq!(r.status, 0);
    }
    let n = disk.unaligned.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(n, 0, "unaligned buffers");
}

#[test]
fn write_to_read_only_disk_fails_with_ioerr_and_changes_nothing() {
    let mem = mem();
    let disk = MemDisk::new(64 * 512, true, false);
    header(&mem, VIRTIO_BLK_T_OUT, 0);
    mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    let r = run(&mem, disk.clone(), &request(512, false));
    assert_eq!(r.status, VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(disk.data.lock().unwrap()[0], 0);
}

#[test]
fn get_id_returns_the_serial_padded_to_20_bytes() {
    let mem = mem();
    header(&mem, VIRTIO_BLK_T_GET_ID, 0);
    let r = run(&mem, MemDisk::new(512, false, false), &request(20, true));
    assert_eq!((r.status, r.used_len), (0, 21));
    let mut b = [0u8; 20];
    mem.read_slice(&mut b, GuestAddress(DATA)).unwrap();
    assert_eq!(&b[..9], b"SERIAL-1\0");
}

#[test]
fn flush_reaches_the_back_end() {
    let mem = mem();
    let disk = MemDisk::new(512, false, false);
    header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    let descs = [
        desc(HDR, 16, VRING_DESC_F_NEXT, 1),
        desc(STATUS, 1, VRING_DESC_F_WRITE, 0),
    ];
    let r = run(&mem, disk.clone(), &descs);
    assert_eq!(r.status, 0);
    assert_eq!(*disk.log.lock().unwrap(), vec!["flush".to_string()]);
}

fn segment(mem: &GuestMemoryMmap, at: u64, sector: u64, count: u32, flags: u32) {
    mem.write_obj(sector, GuestAddress(at)).unwrap();
    mem.write_obj(count, GuestAddress(at + 8)).unwrap();
    mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
}

#[test]
fn discard_and_write_zeroes_go_to_the_back_end_when_supported() {
    let mem = mem();
    let disk = MemDisk::new(64 * 512, false, true);
    header(&mem, VIRTIO_BLK_T_DISCARD, 0);
    segment(&mem, DATA, 8, 8, 0);
    let r = run(&mem, disk.clone(), &request(16, false));
    assert_eq!(r.status, 0);
    header(&mem, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    segment(&mem, DATA, 1, 1, 1);
    let r = run(&mem, disk.clone(), &request(16, false));
    assert_eq!(r.status, 0);
    assert_eq!(
        *disk.log.lock().unwrap(),
        vec![
            "discard 4096 4096".to_string(),
            "zeroes 512 512 true".to_string()
        ]
    );
    assert_eq!(disk.data.lock().unwrap()[512..1024], [0; 512]);
}

#[test]
fn discard_without_support_is_unsupported() {
    let mem = mem();
    header(&mem, VIRTIO_BLK_T_DISCARD, 0);
    segment(&mem, DATA, 0, 1, 0);
    let r = run(&mem, MemDisk::new(512, false, false), &request(16, false));
    assert_eq!(r.status, VIRTIO_BLK_S_UNSUPP as u8);
}

#[test]
fn unknown_request_type_is_unsupported() {
    let mem = mem();
    header(&mem, 0x7777, 0);
    let r = run(&mem, MemDisk::new(512, false, false), &request(512, true));
    assert_eq!(r.status, VIRTIO_BLK_S_UNSUPP as u8);
}

// --- hostile requests ---

#[test]
fn rejects_read_past_the_end_of_the_disk() {
    let mem = mem();
    header(&mem, VIRTIO_BLK_T_IN, 63);
    let r = run(
        &mem,
        MemDisk::new(64 * 512, false, false),
        &request(1024, true),
    );
    assert_eq!((r.status, r.used_len), (VIRTIO_BLK_S_IOERR as u8, 1));
}

#[test]
fn rejects_sector_whose_byte_offset_overflows() {
    let mem = mem();
    header(&mem, VIRTIO_BLK_T_IN, u64::MAX / 256);
    let r = run(&mem, MemDisk::new(512, false, false), &request(512, true));
    assert_eq!(r.status, VIRTIO_BLK_S_IOERR as u8);
}

#[test]
fn rejects_header_in_a_write_only_buffer() {
    let mem = mem();
    header(&mem, VIRTIO_BLK_T_IN, 0);
    let descs = [
        desc(HDR, 16, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1),
        desc(STATUS, 1, VRING_DESC_F_WRITE, 0),
    ];
    let r = run(&mem, MemDisk::new(512, false, false), &descs);
    assert_eq!(r.status, VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(r.used_idx, 1);
}

#[test]
fn request_without_a_status_byte_is_returned_unanswered() {
    let mem = mem();
    header(&mem, VIRTIO_BLK_T_OUT, 0);
    let descs = [desc(HDR, 16, 0, 0)];
    let disk = MemDisk::new(512, false, false);
    let r = run(&mem, disk.clone(), &descs);
    assert_eq!((r.used_idx, r.used_len, r.status), (1, 0, 0xee));
}

#[test]
fn rejects_descriptor_chain_past_guest_ram() {
    let mem = mem();
    header(&mem, VIRTIO_BLK_T_IN, 0);
    let descs = [
        desc(HDR, 16, VRING_DESC_F_NEXT, 1),
        desc(RAM - 256, 512, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 2),
        desc(STATUS, 1, VRING_DESC_F_WRITE, 0),
    ];
    let r = run(&mem, MemDisk::new(4096, false, false), &descs);
    assert_eq!((r.used_idx, r.used_len, r.status), (1, 0, 0xee));
}

#[test]
fn rejects_absurd_descriptor_lengths() {
    let mem = mem();
    header(&mem, VIRTIO_BLK_T_IN, 0);
    let descs = [
        desc(HDR, 16, VRING_DESC_F_NEXT, 1),
        desc(DATA, u32::MAX, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 2),
        desc(STATUS, 1, VRING_DESC_F_WRITE, 0),
    ];
    let r = run(&mem, MemDisk::new(4096, false, false), &descs);
    assert_eq!((r.used_idx, r.used_len), (1, 0));
}

#[test]
fn rejects_transfer_larger_than_the_request_cap() {
    // Many descriptors together exceed 16 MiB (each within RAM, all overlapping).
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x200_0000)]).unwrap();
    header(&mem, VIRTIO_BLK_T_IN, 0);
    let mut descs = vec![desc(HDR, 16, VRING_DESC_F_NEXT, 1)];
    for i in 1..10 {
        descs.push(desc(
            0x40_0000,
            0x100_0000 / 8,
            VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
            i + 1,
        ));
    }
    descs.push(desc(STATUS, 1, VRING_DESC_F_WRITE, 0));
    let r = run(&mem, MemDisk::new(64 << 20, false, false), &descs);
    assert_eq!(r.status, VIRTIO_BLK_S_IOERR as u8);
}

#[test]
fn looping_chain_is_cut_at_the_queue_size() {
    // Descriptor 1 points at itself: iteration stops after queue-size descriptors, and the
    // request (no writable status at the end) is returned unanswered.
    let mem = mem();
    header(&mem, VIRTIO_BLK_T_OUT, 0);
    let descs = [
        desc(HDR, 16, VRING_DESC_F_NEXT, 1),
        desc(DATA, 512, VRING_DESC_F_NEXT, 1),
    ];
    let disk = MemDisk::new(64 * 512, false, false);
    let r = run(&mem, disk.clone(), &descs);
    assert_eq!((r.used_idx, r.used_len), (1, 0));
    assert_eq!(disk.data.lock().unwrap()[0], 0, "nothing written");
}

#[test]
fn chain_longer_than_the_queue_is_cut() {
    // 16 descriptors, each pointing to the next, the last one pointing past the table.
    let mem = mem();
    header(&mem, VIRTIO_BLK_T_IN, 0);
    let mut descs = vec![desc(HDR, 16, VRING_DESC_F_NEXT, 1)];
    for i in 1..16u16 {
        descs.push(desc(
            DATA,
            512,
            VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
            i + 1,
        ));
    }
    let r = run(&mem, MemDisk::new(64 * 512, false, false), &descs);
    assert_eq!(r.used_idx, 1);
}

#[test]
fn nested_indirect_table_is_refused() {
    let mem = mem();
    header(&mem, VIRTIO_BLK_T_IN, 0);
    // An indirect table whose entry is itself indirect.
    let table = 0x30_0000u64;
    mem.write_obj(
        desc(table, 16, VRING_DESC_F_INDIRECT, 0),
        GuestAddress(table),
    )
    .unwrap();
    let descs = [desc(table, 16, VRING_DESC_F_INDIRECT, 0)];
    let r = run(&mem, MemDisk::new(512, false, false), &descs);
    assert_eq!((r.used_idx, r.used_len), (1, 0));
}

#[test]
fn indirect_descriptors_carry_a_normal_request() {
    let mem = mem();
    header(&mem, VIRTIO_BLK_T_IN, 1);
    let table = 0x30_0000u64;
    for (i, d) in request(512, true).iter().enumerate() {
        mem.write_obj(*d, GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    let descs = [desc(table, 48, VRING_DESC_F_INDIRECT, 0)];
    let r = run(&mem, MemDisk::new(4096, false, false), &descs);
    assert_eq!((r.status, r.used_len), (0, 513));
    assert_eq!(mem.read_obj::<u8>(GuestAddress(DATA)).unwrap(), 1);
}

#[test]
fn status_byte_overlapping_the_used_ring_does_not_break_the_queue() {
    // The guest points the status byte into the queue's own used ring: the device writes it,
    // then its used-ring update overwrites it; rampart carries on.
    let mem = mem();
    header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    let vq = MockSplitQueue::new(&mem, 16);
    let used = vq.used_addr().0;
    let descs = [
        desc(HDR, 16, VRING_DESC_F_NEXT, 1),
        desc(used + 4, 1, VRING_DESC_F_WRITE, 0),
    ];
    for (i, d) in descs.iter().enumerate() {
        vq.desc_table().store(i as u16, *d).unwrap();
    }
    vq.avail().ring().ref_at(0).unwrap().store(0u16);
    vq.avail().idx().store(1u16);
    let mut q: Queue = vq.create_queue().unwrap();
    let mut reqs = BlockRequests::new(
        MemDisk::new(512, false, false),
        "",
        Arc::new(BlockStats::new()),
    );
    assert!(reqs.process(&mut q, &mem).unwrap());
    assert_eq!(mem.read_obj::<u16>(GuestAddress(used + 2)).unwrap(), 1);
}

/// A raw image on a host file, counting the requests it served straight from or into guest
/// buffers, and those it was asked to.
struct Counted {
    raw: rampart_block::raw::RawBackend,
    direct: std::sync::atomic::AtomicU32,
    asked: std::sync::atomic::AtomicU32,
}

impl BlockBackend for Counted {
    fn size(&self) -> u64 {
        self.raw.size()
    }
    fn read_only(&self) -> bool {
        self.raw.read_only()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.raw.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), BlockError> {
        self.raw.write_at(offset, buf)
    }
    fn flush(&self) -> Result<(), BlockError> {
        self.raw.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.raw.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<(), BlockError> {
        self.raw.write_zeroes(offset, len, may_unmap)
    }
    fn supports_discard(&self) -> bool {
        false
    }
    fn read_guest_at(&self, offset: u64, bufs: &[GuestBuf]) -> Result<bool, BlockError> {
        self.asked
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let r = self.raw.read_guest_at(offset, bufs)?;
        self.direct
            .fetch_add(r as u32, std::sync::atomic::Ordering::Relaxed);
        Ok(r)
    }
    fn write_guest_at(&self, offset: u64, bufs: &[GuestBuf]) -> Result<bool, BlockError> {
        self.asked
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let r = self.raw.write_guest_at(offset, bufs)?;
        self.direct
            .fetch_add(r as u32, std::sync::atomic::Ordering::Relaxed);
        Ok(r)
    }
}

/// A 64 KiB raw image holding `fill`, opened with `O_DIRECT` or not.
fn raw_image(name: &str, direct: bool, fill: u8) -> (Arc<Counted>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("rampart-blk-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{direct}.img"));
    std::fs::write(&path, vec![fill; 64 << 10]).unwrap();
    let opts = rampart_block::file::FileOptions {
        read_only: false,
        direct,
    };
    let file = Arc::new(rampart_block::file::HostFile::open(&path, opts).unwrap());
    let cache = rampart_config::CacheConfig {
        direct,
        no_flush: false,
        writethrough: false,
    };
    let raw = rampart_block::raw::RawBackend::new(file, cache, rampart_config::DiscardMode::Ignore);
    let disk = Arc::new(Counted {
        raw,
        direct: Default::default(),
        asked: Default::default(),
    });
    (disk, path)
}

/// Removes an image made by `raw_image` and its directory.
fn remove_image(path: &std::path::Path) {
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Header, three data pages out of order in guest memory (`write`: device-writable), status.
fn paged_request(data_write: bool, pages: [u64; 3], len: u32) -> Vec<RawDescriptor> {
    let dflag = if data_write { VRING_DESC_F_WRITE } else { 0 };
    vec![
        desc(HDR, 16, VRING_DESC_F_NEXT, 1),
        desc(pages[0], len, dflag | VRING_DESC_F_NEXT, 2),
        desc(pages[1], len, dflag | VRING_DESC_F_NEXT, 3),
        desc(pages[2], len, dflag | VRING_DESC_F_NEXT, 4),
        desc(STATUS, 1, VRING_DESC_F_WRITE, 0),
    ]
}

#[test]
fn reads_and_writes_of_a_raw_image_go_straight_between_guest_buffers_and_the_file() {
    for direct in [false, true] {
        let (disk, path) = raw_image("straight", direct, 0x11);
        let mem = mem();
        let pages = [DATA + 0x2000, DATA, DATA + 0x5000];
        for (k, p) in pages.iter().enumerate() {
            mem.write_slice(&[0xa0 + k as u8; 4096], GuestAddress(*p))
                .unwrap();
        }
        // Write sectors 8.. (4 KiB in): the three pages in chain order.
        header(&mem, VIRTIO_BLK_T_OUT, 8);
        let r = run(&mem, disk.clone(), &paged_request(false, pages, 4096));
        assert_eq!((r.status, r.used_len), (0, 1), "direct {direct}");
        let data = std::fs::read(&path).unwrap();
        assert!(data[..4096].iter().all(|&b| b == 0x11));
        for k in 0..3 {
            let page = &data[4096 * (k + 1)..][..4096];
            assert!(page.iter().all(|&b| b == 0xa0 + k as u8), "page {k}");
        }
        assert!(data[16384..].iter().all(|&b| b == 0x11));
        // Read them back into other pages, in another order.
        let back = [DATA + 0x9000, DATA + 0x7000, DATA + 0x8000];
        header(&mem, VIRTIO_BLK_T_IN, 8);
        let r = run(&mem, disk.clone(), &paged_request(true, back, 4096));
        assert_eq!((r.status, r.used_len), (0, 3 * 4096 + 1));
        for (k, p) in back.iter().enumerate() {
            let mut b = [0u8; 4096];
            mem.read_slice(&mut b, GuestAddress(*p)).unwrap();
            assert!(b.iter().all(|&x| x == 0xa0 + k as u8), "page {k}");
        }
        let straight = disk.direct.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(straight, 2, "both went straight, direct {direct}");
        remove_image(&path);
    }
}

#[test]
fn unaligned_buffers_of_an_o_direct_image_are_copied_and_still_right() {
    let (disk, path) = raw_image("unaligned", true, 0x22);
    let mem = mem();
    let pages = [DATA + 512, DATA + 0x3000 + 1024, DATA + 0x6000];
    for (k, p) in pages.iter().enumerate() {
        mem.write_slice(&[0xb0 + k as u8; 1024], GuestAddress(*p))
            .unwrap();
    }
    header(&mem, VIRTIO_BLK_T_OUT, 1);
    let r = run(&mem, disk.clone(), &paged_request(false, pages, 1024));
    assert_eq!(r.status, 0);
    let data = std::fs::read(&path).unwrap();
    assert!(data[..512].iter().all(|&b| b == 0x22));
    for k in 0..3 {
        let piece = &data[512 + 1024 * k..][..1024];
        assert!(piece.iter().all(|&b| b == 0xb0 + k as u8), "piece {k}");
    }
    assert!(data[512 + 3072..].iter().all(|&b| b == 0x22));
    let back = [DATA + 0x9000 + 512, DATA + 0x8000, DATA + 0xa000 + 2048];
    header(&mem, VIRTIO_BLK_T_IN, 1);
    let r = run(&mem, disk.clone(), &paged_request(true, back, 1024));
    assert_eq!(r.status, 0);
    for (k, p) in back.iter().enumerate() {
        let mut b = [0u8; 1024];
        mem.read_slice(&mut b, GuestAddress(*p)).unwrap();
        assert!(b.iter().all(|&x| x == 0xb0 + k as u8), "piece {k}");
    }
    assert_eq!(disk.direct.load(std::sync::atomic::Ordering::Relaxed), 0);
    // Each asked once: a request the back end cannot take straight is copied, not asked again.
    assert_eq!(disk.asked.load(std::sync::atomic::Ordering::Relaxed), 2);
    remove_image(&path);
}

/// Writes a request header at `at`.
fn header_at(mem: &GuestMemoryMmap, at: u64, kind: u32, sector: u64) {
    mem.write_obj(kind, GuestAddress(at)).unwrap();
    mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
    mem.write_obj(sector, GuestAddress(at + 8)).unwrap();
}

/// Request `i` of a batch: a read or write (`data_write`: device-writable data) of the pages
/// `pages` (4 KiB each) at `sector`, as descriptors `4 * i..`; its header at `HDR + 0x100 * i`
/// and its status byte at `STATUS + i`.
fn batch_request(
    mem: &GuestMemoryMmap,
    i: u16,
    kind: u32,
    sector: u64,
    pages: &[u64],
) -> Vec<RawDescriptor> {
    assert!(pages.len() <= 3);
    let base = 4 * i;
    let hdr = HDR + 0x100 * u64::from(i);
    header_at(mem, hdr, kind, sector);
    let dflag = if kind == VIRTIO_BLK_T_IN {
        VRING_DESC_F_WRITE
    } else {
        0
    };
    let mut d = vec![desc(hdr, 16, VRING_DESC_F_NEXT, base + 1)];
    for (k, p) in pages.iter().enumerate() {
        d.push(desc(
            *p,
            4096,
            dflag | VRING_DESC_F_NEXT,
            base + 2 + k as u16,
        ));
    }
    d.push(desc(STATUS + u64::from(i), 1, VRING_DESC_F_WRITE, 0));
    d
}

/// Offers the requests `reqs` (made by [`batch_request`]) at once and processes the queue;
/// returns each one's status byte and used length, in the order they were used.
fn run_batch(
    mem: &GuestMemoryMmap,
    disk: Arc<dyn BlockBackend>,
    reqs: &[Vec<RawDescriptor>],
) -> (Vec<(u8, u32)>, StatsSnapshot) {
    let vq = MockSplitQueue::new(mem, 64);
    for (i, chain) in reqs.iter().enumerate() {
        for (k, d) in chain.iter().enumerate() {
            vq.desc_table().store(4 * i as u16 + k as u16, *d).unwrap();
        }
        vq.avail().ring().ref_at(i).unwrap().store(4 * i as u16);
        mem.write_obj(0xeeu8, GuestAddress(STATUS + i as u64))
            .unwrap();
    }
    vq.avail().idx().store(reqs.len() as u16);
    let mut q: Queue = vq.create_queue().unwrap();
    let stats = Arc::new(BlockStats::new());
    let mut blk = BlockRequests::new(disk, "", stats.clone());
    blk.process(&mut q, mem).unwrap();
    let used = vq.used_addr();
    let n: u16 = mem.read_obj(used.unchecked_add(2)).unwrap();
    assert_eq!(usize::from(n), reqs.len(), "every request was used");
    let out = (0..u64::from(n))
        .map(|k| {
            let id: u32 = mem.read_obj(used.unchecked_add(4 + 8 * k)).unwrap();
            let len: u32 = mem.read_obj(used.unchecked_add(8 + 8 * k)).unwrap();
            assert_eq!(id, 4 * k as u32, "used in order");
            let status = mem.read_obj(GuestAddress(STATUS + k)).unwrap();
            (status, len)
        })
        .collect();
    (out, stats.snapshot())
}

#[test]
fn adjacent_reads_and_writes_are_merged_into_one_transfer_and_each_answered() {
    for direct in [false, true] {
        let (disk, path) = raw_image("merged", direct, 0x33);
        let mem = mem();
        let src = [DATA, DATA + 0x3000, DATA + 0x1000, DATA + 0x6000];
        for (k, p) in src.iter().enumerate() {
            mem.write_slice(&[0xc0 + k as u8; 4096], GuestAddress(*p))
                .unwrap();
        }
        // Sectors 8-15 and 16-31 follow each other (merged); 40-47 do not.
        let writes = [
            batch_request(&mem, 0, VIRTIO_BLK_T_OUT, 8, &src[..1]),
            batch_request(&mem, 1, VIRTIO_BLK_T_OUT, 16, &src[1..3]),
            batch_request(&mem, 2, VIRTIO_BLK_T_OUT, 40, &src[3..]),
        ];
        let (done, stats) = run_batch(&mem, disk.clone(), &writes);
        assert_eq!(done, [(0, 1); 3], "direct {direct}");
        assert_eq!((stats.write.operations, stats.write.bytes), (3, 4 * 4096));
        assert_eq!(stats.wr_highest_offset, 48 * 512);
        let straight = |d: &Counted| d.direct.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(straight(&disk), 2, "two transfers for three writes");
        let data = std::fs::read(&path).unwrap();
        let want = |k: usize| 0xc0 + k as u8;
        for (page, k) in [(1, 0), (2, 1), (3, 2), (5, 3)] {
            let got = &data[4096 * page..][..4096];
            assert!(got.iter().all(|&b| b == want(k)), "page {page}");
        }
        for page in [0, 4, 6, 7] {
            assert!(data[4096 * page..][..4096].iter().all(|&b| b == 0x33));
        }
        // Read them back: 4 KiB at sector 8 and 8 KiB at 16 merge; sector 0 does not.
        let dst = [DATA + 0x9000, DATA + 0xc000, DATA + 0xa000, DATA + 0xe000];
        let reads = [
            batch_request(&mem, 0, VIRTIO_BLK_T_IN, 8, &dst[..1]),
            batch_request(&mem, 1, VIRTIO_BLK_T_IN, 16, &dst[1..3]),
            batch_request(&mem, 2, VIRTIO_BLK_T_IN, 0, &dst[3..]),
        ];
        let (done, stats) = run_batch(&mem, disk.clone(), &reads);
        assert_eq!(done, [(0, 4097), (0, 8193), (0, 4097)]);
        assert_eq!((stats.read.operations, stats.read.bytes), (3, 4 * 4096));
        assert_eq!(straight(&disk), 4, "two transfers for three reads");
        for (p, fill) in dst.iter().zip([want(0), want(1), want(2), 0x33]) {
            let mut b = [0u8; 4096];
            mem.read_slice(&mut b, GuestAddress(*p)).unwrap();
            assert!(b.iter().all(|&x| x == fill), "page at {p:#x}");
        }
        remove_image(&path);
    }
}

#[test]
fn a_write_and_a_read_of_the_same_sectors_keep_their_order() {
    let (disk, path) = raw_image("order", false, 0x44);
    let mem = mem();
    mem.write_slice(&[0x55; 4096], GuestAddress(DATA)).unwrap();
    // Read the old bytes, write new ones, read those: three transfers, in ring order.
    let reqs = [
        batch_request(&mem, 0, VIRTIO_BLK_T_IN, 8, &[DATA + 0x4000]),
        batch_request(&mem, 1, VIRTIO_BLK_T_OUT, 8, &[DATA]),
        batch_request(&mem, 2, VIRTIO_BLK_T_IN, 8, &[DATA + 0x8000]),
    ];
    let (done, _) = run_batch(&mem, disk.clone(), &reqs);
    assert_eq!(done, [(0, 4097), (0, 1), (0, 4097)]);
    for (at, fill) in [(DATA + 0x4000, 0x44), (DATA + 0x8000, 0x55)] {
        let mut b = [0u8; 4096];
        mem.read_slice(&mut b, GuestAddress(at)).unwrap();
        assert!(b.iter().all(|&x| x == fill), "page at {at:#x}");
    }
    assert_eq!(disk.direct.load(std::sync::atomic::Ordering::Relaxed), 3);
    remove_image(&path);
}

/// A raw image whose bytes from `bad` on cannot be read.
struct BadSector {
    inner: Arc<Counted>,
    bad: u64,
}

impl BadSector {
    fn check(&self, offset: u64, len: usize) -> Result<(), BlockError> {
        if offset + len as u64 > self.bad {
            return Err(BlockError::Io {
                path: "bad.img".into(),
                op: "read",
                offset,
                source: std::io::Error::from_raw_os_error(libc::EIO),
            });
        }
        Ok(())
    }
}

impl BlockBackend for BadSector {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.check(offset, buf.len())?;
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), BlockError> {
        self.inner.write_at(offset, buf)
    }
    fn flush(&self) -> Result<(), BlockError> {
        Ok(())
    }
    fn discard(&self, _offset: u64, _len: u64) -> Result<(), BlockError> {
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<(), BlockError> {
        self.inner.write_zeroes(offset, len, may_unmap)
    }
    fn supports_discard(&self) -> bool {
        false
    }
    fn read_guest_at(&self, offset: u64, bufs: &[GuestBuf]) -> Result<bool, BlockError> {
        self.check(offset, bufs.iter().map(|b| b.len()).sum())?;
        self.inner.read_guest_at(offset, bufs)
    }
}

#[test]
fn a_failed_merged_transfer_fails_only_the_requests_that_fail_alone() {
    let (inner, path) = raw_image("bad", false, 0x66);
    let disk = Arc::new(BadSector {
        inner,
        bad: 20 * 512,
    });
    let mem = mem();
    // Sectors 8-15 read well on their own; 16-23 cross the bad sector 20.
    let reqs = [
        batch_request(&mem, 0, VIRTIO_BLK_T_IN, 8, &[DATA]),
        batch_request(&mem, 1, VIRTIO_BLK_T_IN, 16, &[DATA + 0x2000]),
    ];
    let (done, stats) = run_batch(&mem, disk, &reqs);
    assert_eq!(done, [(0, 4097), (VIRTIO_BLK_S_IOERR as u8, 1)]);
    let mut b = [0u8; 4096];
    mem.read_slice(&mut b, GuestAddress(DATA)).unwrap();
    assert!(b.iter().all(|&x| x == 0x66));
    assert_eq!(
        (stats.read.operations, stats.read.failed_operations),
        (1, 1)
    );
    remove_image(&path);
}
