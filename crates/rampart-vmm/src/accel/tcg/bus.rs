//! Guest-physical memory as one software vCPU sees it: RAM through vm-memory's checked
//! accessors, its own local APIC page, the shared I/O APIC, and every other address through the
//! device buses' MMIO handler.

use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use rampart_tcg::apic::{APIC_BASE_ADDR, IOAPIC_BASE_ADDR};
use rampart_tcg::{GuestMemory, MemFault, RamIdentity, StableRam};
use vm_memory::{GuestMemoryBackend as _, GuestMemoryRegion, VolatileMemory, VolatileSlice};

use super::{Machine, Slot};
use crate::accel::IoHandler;

const PAGE: u64 = 0x1000;

/// Serialises the rare locked accesses that cannot be done with one host atomic (misaligned or
/// 16-byte ones).
static SPLIT_LOCK: Mutex<()> = Mutex::new(());

pub(super) struct VcpuBus<'a> {
    machine: &'a Machine,
    slot: &'a Slot,
    io: &'a dyn IoHandler,
    /// Guest RAM regions as (guest-physical start, bounds-checked volatile view): the CPU's
    /// fast path to RAM, one range check and a copy per access.
    ram: Vec<(u64, VolatileSlice<'a>)>,
}

impl<'a> VcpuBus<'a> {
    pub(super) fn new(machine: &'a Machine, slot: &'a Slot, io: &'a dyn IoHandler) -> Self {
        let ram = machine
            .mem
            .iter()
            .filter_map(|r| Some((r.start_addr().0, r.as_volatile_slice().ok()?)))
            .collect();
        VcpuBus {
            machine,
            slot,
            io,
            ram,
        }
    }

    /// The RAM bytes `[gpa, gpa + len)` if they are all in one RAM region.
    #[inline]
    fn ram(&self, gpa: u64, len: usize) -> Option<VolatileSlice<'a>> {
        let (slice, off) = self.region(gpa)?;
        slice.subslice(off, len).ok()
    }

    /// The RAM region holding `gpa` and the offset of `gpa` in it.
    #[inline]
    fn region(&self, gpa: u64) -> Option<(&VolatileSlice<'a>, usize)> {
        for (start, slice) in &self.ram {
            if let Some(off) = gpa.checked_sub(*start) {
                let off = usize::try_from(off).ok()?;
                if off < slice.len() {
                    return Some((slice, off));
                }
            }
        }
        None
    }
}

fn in_page(gpa: u64, len: usize, base: u64) -> bool {
    gpa >= base && gpa.saturating_add(len as u64) <= base + PAGE
}

impl VcpuBus<'_> {
    fn now(&self) -> u64 {
        self.machine.now_ns()
    }
}

impl GuestMemory for VcpuBus<'_> {
    fn code_watch(&self) -> Option<&rampart_tcg::CodeWatch> {
        Some(self.machine.code_watch())
    }

    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), MemFault> {
        if let Some(ram) = self.ram(gpa, buf.len()) {
            ram.copy_to(buf);
            return Ok(());
        }
        if in_page(gpa, buf.len(), APIC_BASE_ADDR) {
            let now = self.now();
            self.slot
                .lock()
                .apic
                .mmio_read(gpa - APIC_BASE_ADDR, buf, now);
        } else if in_page(gpa, buf.len(), IOAPIC_BASE_ADDR) {
            self.machine
                .ioapic
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .mmio_read(gpa - IOAPIC_BASE_ADDR, buf);
        } else {
            // Partly-RAM accesses cannot happen (the CPU splits at pages and RAM regions are
            // page-aligned); everything else is MMIO, all ones where nothing answers.
            self.io.mmio_read(gpa, buf);
        }
        Ok(())
    }

    fn write(&mut self, gpa: u64, buf: &[u8]) -> Result<(), MemFault> {
        if let Some(ram) = self.ram(gpa, buf.len()) {
            ram.copy_from(buf);
            return Ok(());
        }
        if in_page(gpa, buf.len(), APIC_BASE_ADDR) {
            let now = self.now();
            let ipi = self
                .slot
                .lock()
                .apic
                .mmio_write(gpa - APIC_BASE_ADDR, buf, now);
            self.machine.after_apic_write(self.slot, ipi);
        } else if in_page(gpa, buf.len(), IOAPIC_BASE_ADDR) {
            let msgs = self
                .machine
                .ioapic
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .mmio_write(gpa - IOAPIC_BASE_ADDR, buf);
            for m in &msgs {
                self.machine.route(m);
            }
        } else {
            self.io.mmio_write(gpa, buf);
        }
        Ok(())
    }

    fn read_small(&mut self, gpa: u64, size: u8) -> Result<u64, MemFault> {
        if let Some((slice, off)) = self.region(gpa) {
            // One volatile load of the whole value (unaligned is fine: vm-memory reads it as
            // a packed value), bounds-checked against the region.
            let v = match size {
                1 => slice.get_ref::<u8>(off).map(|r| u64::from(r.load())),
                2 => slice.get_ref::<u16>(off).map(|r| u64::from(r.load())),
                4 => slice.get_ref::<u32>(off).map(|r| u64::from(r.load())),
                _ => slice.get_ref::<u64>(off).map(|r| r.load()),
            };
            if let Ok(v) = v {
                return Ok(v);
            }
        }
        let mut b = [0u8; 8];
        self.read(gpa, &mut b[..usize::from(size).min(8)])?;
        Ok(u64::from_le_bytes(b))
    }

    fn write_small(&mut self, gpa: u64, size: u8, v: u64) -> Result<(), MemFault> {
        if let Some((slice, off)) = self.region(gpa) {
            let done = match size {
                1 => slice.get_ref::<u8>(off).map(|r| r.store(v as u8)),
                2 => slice.get_ref::<u16>(off).map(|r| r.store(v as u16)),
                4 => slice.get_ref::<u32>(off).map(|r| r.store(v as u32)),
                _ => slice.get_ref::<u64>(off).map(|r| r.store(v)),
            };
            if done.is_ok() {
                return Ok(());
            }
        }
        self.write(gpa, &v.to_le_bytes()[..usize::from(size).min(8)])
    }

    fn read_ram(&self, gpa: u64, buf: &mut [u8]) -> bool {
        match self.ram(gpa, buf.len()) {
            Some(ram) => ram.copy_to(buf) == buf.len(),
            None => false,
        }
    }

    fn write_ram(&mut self, gpa: u64, buf: &[u8]) -> bool {
        if !in_page(gpa, buf.len(), gpa & !(PAGE - 1)) {
            return false;
        }
        match self.ram(gpa, buf.len()) {
            Some(ram) => {
                ram.copy_from(buf);
                true
            }
            None => false,
        }
    }

    fn ram_page_addr(&self, gpa: u64) -> Option<(usize, StableRam)> {
        let page = self.ram(gpa & !(PAGE - 1), PAGE as usize)?;
        let addr = page.ptr_guard().as_ptr() as usize;
        // SAFETY: the page lies inside one region of the machine's `GuestMemoryMmap`, an mmap
        // that lives as long as the machine (which outlives this bus and every vCPU run with
        // it) and is never moved or resized; other threads' writes to it are plain stores.
        Some((addr, unsafe { StableRam::new() }))
    }

    fn ram_identity(&self) -> Option<RamIdentity> {
        // SAFETY: the identity is the machine's, made fresh with it and given to no other
        // mapping; every bus that reports it serves that machine's `GuestMemoryMmap`, which
        // is never moved, unmapped or resized while the machine lives, and the machine lives
        // as long as any bus over it (see `ram_page_addr`).
        Some(unsafe { RamIdentity::new(self.machine.ram_id()) })
    }

    fn code_matches(&self, gpa: u64, expected: &[u8]) -> bool {
        let Some(ram) = self.ram(gpa, expected.len()) else {
            return false;
        };
        // A word at a time, each a bounds-checked volatile load by value (no pointer into
        // guest RAM, no copy through a buffer: blocks are short and this runs on every block
        // entry after a generation ends).
        let words = expected.chunks_exact(8);
        let tail = words.remainder();
        let mut off = 0;
        for w in words {
            let want = u64::from_le_bytes(w.try_into().unwrap_or_default());
            match ram.get_ref::<u64>(off) {
                Ok(now) if u64::from_le(now.load()) == want => off += 8,
                _ => return false,
            }
        }
        for &want in tail {
            match ram.get_ref::<u8>(off) {
                Ok(now) if now.load() == want => off += 1,
                _ => return false,
            }
        }
        true
    }

    fn compare_exchange(
        &mut self,
        gpa: u64,
        old: &[u8],
        new: &[u8],
        found: &mut [u8],
    ) -> Result<(), MemFault> {
        let len = old.len();
        if new.len() != len || found.len() != len {
            return Err(MemFault::Malformed { gpa, len });
        }
        let Some(slice) = self.ram(gpa, len) else {
            // Not RAM (or crossing a region): MMIO has no atomics; do it in steps.
            self.read(gpa, found)?;
            if found == old {
                self.write(gpa, new)?;
            }
            return Ok(());
        };
        macro_rules! cas {
            ($atomic:ty, $int:ty) => {{
                if let Ok(a) = slice.get_atomic_ref::<$atomic>(0) {
                    let mut ob = [0u8; std::mem::size_of::<$int>()];
                    let mut nb = ob;
                    ob.copy_from_slice(old);
                    nb.copy_from_slice(new);
                    let (o, n) = (<$int>::from_le_bytes(ob), <$int>::from_le_bytes(nb));
                    let v = match a.compare_exchange(o, n, Ordering::SeqCst, Ordering::SeqCst) {
                        Ok(v) | Err(v) => v,
                    };
                    found.copy_from_slice(&v.to_le_bytes());
                    return Ok(());
                }
            }};
        }
        match len {
            1 => cas!(AtomicU8, u8),
            2 => cas!(AtomicU16, u16),
            4 => cas!(AtomicU32, u32),
            8 => cas!(AtomicU64, u64),
            _ => {}
        }
        // Misaligned or 16 bytes: a split lock. Serialise against other split locks (aligned
        // atomics of other vCPUs cannot be excluded, as on hardware split locks are slow and
        // Linux avoids them).
        let _g = SPLIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        slice.copy_to(found);
        if found == old {
            slice.copy_from(new);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Machine, VcpuBus};
    use crate::accel::IoHandler;
    use rampart_config::VmConfig;
    use rampart_tcg::GuestMemory;
    use std::sync::Mutex;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    /// Records MMIO and answers reads with 0xab bytes.
    #[derive(Default)]
    struct Mmio(Mutex<Vec<(u64, Vec<u8>)>>);

    impl IoHandler for Mmio {
        fn pio_read(&self, _port: u16, _data: &mut [u8]) {}
        fn pio_write(&self, _port: u16, _data: &[u8]) {}
        fn mmio_read(&self, _addr: u64, data: &mut [u8]) {
            data.fill(0xab);
        }
        fn mmio_write(&self, addr: u64, data: &[u8]) {
            self.0.lock().unwrap().push((addr, data.to_vec()));
        }
    }

    #[test]
    fn small_accesses_hit_ram_by_value_and_fall_back_to_mmio_outside_it() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x2000),
            (GuestAddress(0x10_0000), 0x1000),
        ])
        .unwrap();
        let machine = Machine::new(&mem, &VmConfig::default(), None);
        let io = Mmio::default();
        let mut bus = VcpuBus::new(&machine, &machine.slots[0], &io);
        // Every size, aligned and not, in both regions; values read back as written.
        for (gpa, size) in [(0x10, 8), (0x1ffc, 4), (0x123, 2), (0x7, 8), (0x10_0ff8, 8)] {
            let v = 0x1122_3344_5566_7788u64 & (u64::MAX >> (64 - 8 * size));
            bus.write_small(gpa, size as u8, v).unwrap();
            assert_eq!(bus.read_small(gpa, size as u8).unwrap(), v, "{gpa:#x}");
            let mut raw = [0u8; 8];
            mem.read_slice(&mut raw[..size], GuestAddress(gpa)).unwrap();
            assert_eq!(
                raw[..size],
                v.to_le_bytes()[..size],
                "{gpa:#x} little-endian in RAM"
            );
        }
        // Between and past the regions: MMIO, never RAM.
        assert_eq!(bus.read_small(0x8000, 4).unwrap(), 0xabab_abab);
        bus.write_small(0x10_1000, 2, 0xbeef).unwrap();
        assert_eq!(
            io.0.lock().unwrap().as_slice(),
            &[(0x10_1000, vec![0xef, 0xbe])]
        );
        let mut raw = [0u8; 8];
        mem.read_slice(&mut raw, GuestAddress(0x10_0ff8)).unwrap();
        assert_eq!(
            u64::from_le_bytes(raw),
            0x1122_3344_5566_7788,
            "RAM untouched"
        );
    }

    #[test]
    fn code_matches_compares_every_byte_and_only_within_ram() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x2000)]).unwrap();
        let machine = Machine::new(&mem, &VmConfig::default(), None);
        let io = Mmio::default();
        let bus = VcpuBus::new(&machine, &machine.slots[0], &io);
        let code: Vec<u8> = (1..=37).collect();
        for start in [0x100u64, 0x1003, 0x2000 - 37] {
            mem.write_slice(&code, GuestAddress(start)).unwrap();
            for n in 0..code.len() {
                assert!(bus.code_matches(start, &code[..n]), "{start:#x} len {n}");
                for i in 0..n {
                    let mut other = code[..n].to_vec();
                    other[i] ^= 0x40;
                    assert!(
                        !bus.code_matches(start, &other),
                        "{start:#x} len {n} byte {i}"
                    );
                }
            }
        }
        // Running past the end of RAM, or starting outside it, never matches.
        mem.write_slice(&code[..36], GuestAddress(0x2000 - 36))
            .unwrap();
        assert!(bus.code_matches(0x2000 - 36, &code[..36]));
        assert!(!bus.code_matches(0x2000 - 36, &code));
        assert!(!bus.code_matches(0x3000, &[0]));
    }
}
