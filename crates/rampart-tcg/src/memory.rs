//! Guest *physical* memory as the CPU sees it.
//!
//! The CPU never holds a pointer into guest memory: every access goes through [`GuestMemory`]
//! with a guest-physical address and a length, and the implementation bounds-checks it.
//! Contract for callers (the CPU keeps it): a single access never crosses a 4 KiB physical page,
//! and is at most 16 bytes long. That lets an implementation decide RAM vs MMIO once per access.
//!
//! MMIO is a synchronous callback ([`MmioHandler`]) rather than a run-loop exit: an interpreter
//! instruction may touch memory several times (string ops, RMW, exception frames), and restarting
//! it after an exit would need a replay log. Devices behind the callback are expected to be quick
//! and to hand heavy work to the VMM thread, as the DESIGN asks of exit handlers anyway.
//!
//! The VMM will implement this trait over its vm-memory mmap (one instance per vCPU thread,
//! holding an `Arc` of the shared memory and a handle to the MMIO bus).

use thiserror::Error;

use crate::code_watch::CodeWatch;

/// Size of a guest page as the CPU splits accesses.
pub const PAGE_SIZE: u64 = 4096;
/// Largest single access the CPU issues.
pub const MAX_ACCESS: usize = 16;

/// A physical access that no RAM and no device claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum MemFault {
    /// Nothing is mapped at this guest-physical address.
    #[error("no RAM or device at guest-physical {gpa:#x} ({len} bytes)")]
    Unmapped {
        /// First byte of the access.
        gpa: u64,
        /// Length of the access.
        len: usize,
    },
    /// The access violates the page/length contract above.
    #[error("malformed access at guest-physical {gpa:#x} ({len} bytes)")]
    Malformed {
        /// First byte of the access.
        gpa: u64,
        /// Length of the access.
        len: usize,
    },
}

/// A promise about a [`GuestMemory`]'s RAM, which only `unsafe` code can make: a page address
/// its [`GuestMemory::ram_page_addr`] returns stays valid for reads and writes of the whole
/// page, reaching the RAM itself, for as long as the memory object lives (RAM is never moved,
/// unmapped or resized under it). The block translator (`Cpu::enable_jit`) then lets
/// translated code read and write a page it found there straight through that address,
/// within one [`crate::Cpu::run`]. Other threads' accesses meanwhile are fine (these are
/// plain loads and stores of the mapping, like the volatile accesses of `vm-memory`).
#[derive(Debug, Clone, Copy)]
pub struct StableRam(());

impl StableRam {
    /// # Safety
    /// The caller's [`GuestMemory`] must keep the promise in the type's documentation.
    #[allow(unsafe_code)]
    pub unsafe fn new() -> Self {
        StableRam(())
    }
}

/// A second promise about a [`GuestMemory`]'s RAM, which only `unsafe` code can make: an
/// identity no other RAM mapping of the process ever has, such that while any memory object
/// reporting it lives, the page addresses its [`GuestMemory::ram_page_addr`] returned (or the
/// ones of any other object with the same identity) are valid as [`StableRam`] says. A CPU
/// then keeps the host addresses it learnt from one run to the next as long as it runs with
/// the same identity, instead of learning them again at every run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamIdentity(u64);

impl RamIdentity {
    /// # Safety
    /// The caller's [`GuestMemory`] must keep the promise in the type's documentation with
    /// `id`.
    #[allow(unsafe_code)]
    pub unsafe fn new(id: std::num::NonZeroU64) -> Self {
        RamIdentity(id.get())
    }

    /// A fresh identity, never returned before in this process.
    pub fn unique() -> std::num::NonZeroU64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::num::NonZeroU64::new(id).unwrap_or(std::num::NonZeroU64::MIN)
    }
}

/// Guest-physical memory: RAM plus whatever MMIO sits outside it.
pub trait GuestMemory {
    /// The watch of this memory's code pages ([`CodeWatch`]), if every write into guest RAM
    /// by anything but the CPUs is reported to it. `None` (the default): a CPU ends its block
    /// validation generation at every run slice and event delivery.
    fn code_watch(&self) -> Option<&CodeWatch> {
        None
    }

    /// The host address of the 4 KiB RAM page at page-aligned `gpa`, if it is all plain RAM,
    /// with the [`StableRam`] promise that the address stays valid. `None` (the default) keeps
    /// translated code on the checked path for every access to it.
    fn ram_page_addr(&self, _gpa: u64) -> Option<(usize, StableRam)> {
        None
    }

    /// The identity of this memory's RAM mapping ([`RamIdentity`]). `None` (the default): a
    /// CPU forgets the host addresses of RAM pages at the start of every run.
    fn ram_identity(&self) -> Option<RamIdentity> {
        None
    }

    /// Read `buf.len()` bytes at `gpa`.
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), MemFault>;

    /// Write `buf` at `gpa`.
    fn write(&mut self, gpa: u64, buf: &[u8]) -> Result<(), MemFault>;

    /// Read `size` bytes (1, 2, 4 or 8; within one page) at `gpa` as a little-endian value:
    /// the data path of most instructions. Implementations may make it faster than
    /// [`GuestMemory::read`] for RAM; the default goes through it.
    fn read_small(&mut self, gpa: u64, size: u8) -> Result<u64, MemFault> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b[..(size as usize).min(8)])?;
        Ok(u64::from_le_bytes(b))
    }

    /// Write the low `size` bytes (1, 2, 4 or 8; within one page) of `v` at `gpa`; the
    /// default goes through [`GuestMemory::write`].
    fn write_small(&mut self, gpa: u64, size: u8, v: u64) -> Result<(), MemFault> {
        self.write(gpa, &v.to_le_bytes()[..(size as usize).min(8)])
    }

    /// Fast path: the RAM bytes `[gpa, gpa+len)` if they are plain RAM, else `None`.
    fn ram_slice(&self, _gpa: u64, _len: usize) -> Option<&[u8]> {
        None
    }

    /// Copy the RAM bytes `[gpa, gpa + buf.len())` (within one page, any length up to a page)
    /// into `buf` for the code fetcher; `false` if they are not all plain RAM (never touches
    /// MMIO). The default goes through [`GuestMemory::ram_slice`].
    fn read_ram(&self, gpa: u64, buf: &mut [u8]) -> bool {
        match self.ram_slice(gpa, buf.len()) {
            Some(s) => {
                buf.copy_from_slice(s);
                true
            }
            None => false,
        }
    }

    /// Copy `buf` into RAM at `gpa` (within one page, any length up to a page) for the bulk
    /// path of REP MOVS/STOS; `false`, writing nothing, if the bytes are not all plain RAM
    /// (never touches MMIO). The default always declines.
    fn write_ram(&mut self, _gpa: u64, _buf: &[u8]) -> bool {
        false
    }

    /// Whether the RAM bytes `[gpa, gpa + expected.len())` (within one page) are exactly
    /// `expected`: how decoded code is validated before it runs. `false` if not all RAM.
    fn code_matches(&self, gpa: u64, expected: &[u8]) -> bool {
        self.ram_slice(gpa, expected.len()) == Some(expected)
    }

    /// Atomic compare-and-exchange of `old.len()` bytes (1/2/4/8/16) at `gpa` for `lock`-prefixed
    /// instructions and page-table A/D updates. Returns the value found in memory (equal to
    /// `old` on success). The default is correct for one vCPU only; an SMP implementation over
    /// shared memory must override it with a real atomic operation.
    fn compare_exchange(
        &mut self,
        gpa: u64,
        old: &[u8],
        new: &[u8],
        found: &mut [u8],
    ) -> Result<(), MemFault> {
        if old.len() != new.len() || old.len() != found.len() {
            return Err(MemFault::Malformed {
                gpa,
                len: old.len(),
            });
        }
        self.read(gpa, found)?;
        if found == old {
            self.write(gpa, new)?;
        }
        Ok(())
    }
}

/// A device region outside RAM.
pub trait MmioHandler {
    /// Read `data.len()` bytes at `gpa`; return `false` if no device claims it.
    fn mmio_read(&mut self, gpa: u64, data: &mut [u8]) -> bool;
    /// Write `data` at `gpa`; return `false` if no device claims it.
    fn mmio_write(&mut self, gpa: u64, data: &[u8]) -> bool;
}

/// RAM from guest-physical 0 backed by a boxed slice, plus an optional MMIO handler for
/// everything above it. Used by tests and by simple embedders.
pub struct FlatMemory {
    ram: Box<[u8]>,
    /// This RAM's identity (see [`RamIdentity`]).
    id: std::num::NonZeroU64,
    mmio: Option<Box<dyn MmioHandler + Send>>,
    /// Told of every [`FlatMemory::load`] (the writes of "others": loaders, tests playing a
    /// device), if set.
    watch: Option<std::sync::Arc<CodeWatch>>,
}

impl std::fmt::Debug for FlatMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlatMemory")
            .field("ram_len", &self.ram.len())
            .field("mmio", &self.mmio.is_some())
            .finish()
    }
}

impl FlatMemory {
    /// `size` bytes of zeroed RAM.
    pub fn new(size: usize) -> Self {
        Self {
            ram: vec![0u8; size].into_boxed_slice(),
            id: RamIdentity::unique(),
            mmio: None,
            watch: None,
        }
    }

    /// Report every later [`FlatMemory::load`] to `watch` (see [`GuestMemory::code_watch`]).
    pub fn with_code_watch(mut self, watch: std::sync::Arc<CodeWatch>) -> Self {
        self.watch = Some(watch);
        self
    }

    /// Attach an MMIO handler for addresses outside RAM.
    pub fn with_mmio(mut self, handler: Box<dyn MmioHandler + Send>) -> Self {
        self.mmio = Some(handler);
        self
    }

    /// RAM size in bytes.
    pub fn ram_len(&self) -> u64 {
        self.ram.len() as u64
    }

    /// The RAM range for `[gpa, gpa+len)`, if entirely inside RAM.
    fn range(&self, gpa: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let start = usize::try_from(gpa).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.ram.len()).then_some(start..end)
    }

    /// Copy `data` into RAM at `gpa` (loader/test helper; any length).
    pub fn load(&mut self, gpa: u64, data: &[u8]) -> Result<(), MemFault> {
        let r = self.range(gpa, data.len()).ok_or(MemFault::Unmapped {
            gpa,
            len: data.len(),
        })?;
        self.ram[r].copy_from_slice(data);
        if let Some(w) = &self.watch {
            w.wrote(gpa, data.len() as u64);
        }
        Ok(())
    }

    /// Copy RAM at `gpa` into `out` (test helper; any length).
    pub fn dump(&self, gpa: u64, out: &mut [u8]) -> Result<(), MemFault> {
        let r = self.range(gpa, out.len()).ok_or(MemFault::Unmapped {
            gpa,
            len: out.len(),
        })?;
        out.copy_from_slice(&self.ram[r]);
        Ok(())
    }

    /// Read a little-endian u64 from RAM (test helper).
    pub fn read_u64(&self, gpa: u64) -> Result<u64, MemFault> {
        let mut b = [0u8; 8];
        self.dump(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Write a little-endian u64 to RAM (test helper).
    pub fn write_u64(&mut self, gpa: u64, v: u64) -> Result<(), MemFault> {
        self.load(gpa, &v.to_le_bytes())
    }
}

fn check_contract(gpa: u64, len: usize) -> Result<(), MemFault> {
    let crosses = (gpa % PAGE_SIZE) + len as u64 > PAGE_SIZE;
    if len == 0 || len > MAX_ACCESS || crosses {
        return Err(MemFault::Malformed { gpa, len });
    }
    Ok(())
}

impl GuestMemory for FlatMemory {
    fn code_watch(&self) -> Option<&CodeWatch> {
        self.watch.as_deref()
    }

    #[allow(unsafe_code)]
    fn ram_page_addr(&self, gpa: u64) -> Option<(usize, StableRam)> {
        let page = self.ram_slice(gpa & !(PAGE_SIZE - 1), PAGE_SIZE as usize)?;
        // SAFETY: `ram` is a boxed slice allocated once in `new` and never replaced or
        // resized, so the page stays at this address for as long as `self` lives. (Only
        // generated code reads and writes through it, never Rust code; strictly, Rust's
        // aliasing model would want the address derived from a mutable borrow, or RAM held in
        // `UnsafeCell`s, for the writes: `FlatMemory` serves tests and simple embedders.)
        Some((page.as_ptr() as usize, unsafe { StableRam::new() }))
    }

    #[allow(unsafe_code)]
    fn ram_identity(&self) -> Option<RamIdentity> {
        // SAFETY: the identity is this object's alone (a fresh one from `new`; a clone would
        // need its own), and its RAM stays put while it lives (see `ram_page_addr`).
        Some(unsafe { RamIdentity::new(self.id) })
    }

    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), MemFault> {
        check_contract(gpa, buf.len())?;
        if let Some(r) = self.range(gpa, buf.len()) {
            buf.copy_from_slice(&self.ram[r]);
            return Ok(());
        }
        let claimed = self.mmio.as_mut().is_some_and(|h| h.mmio_read(gpa, buf));
        if claimed {
            Ok(())
        } else {
            Err(MemFault::Unmapped {
                gpa,
                len: buf.len(),
            })
        }
    }

    fn write(&mut self, gpa: u64, buf: &[u8]) -> Result<(), MemFault> {
        check_contract(gpa, buf.len())?;
        if let Some(r) = self.range(gpa, buf.len()) {
            self.ram[r].copy_from_slice(buf);
            return Ok(());
        }
        let claimed = self.mmio.as_mut().is_some_and(|h| h.mmio_write(gpa, buf));
        if claimed {
            Ok(())
        } else {
            Err(MemFault::Unmapped {
                gpa,
                len: buf.len(),
            })
        }
    }

    fn ram_slice(&self, gpa: u64, len: usize) -> Option<&[u8]> {
        self.range(gpa, len).map(|r| &self.ram[r])
    }

    fn write_ram(&mut self, gpa: u64, buf: &[u8]) -> bool {
        if (gpa % PAGE_SIZE) + buf.len() as u64 > PAGE_SIZE {
            return false;
        }
        match self.range(gpa, buf.len()) {
            Some(r) => {
                self.ram[r].copy_from_slice(buf);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl MmioHandler for Echo {
        fn mmio_read(&mut self, gpa: u64, data: &mut [u8]) -> bool {
            data.fill(gpa as u8);
            gpa < 0x2_0000
        }
        fn mmio_write(&mut self, _gpa: u64, _data: &[u8]) -> bool {
            true
        }
    }

    #[test]
    fn reads_back_what_was_written() {
        let mut m = FlatMemory::new(0x2000);
        m.write(0x1ff8, &7u64.to_le_bytes()).unwrap();
        let mut b = [0u8; 8];
        m.read(0x1ff8, &mut b).unwrap();
        assert_eq!(u64::from_le_bytes(b), 7);
    }

    #[test]
    fn rejects_access_past_ram_without_mmio() {
        let mut m = FlatMemory::new(0x1000);
        let mut b = [0u8; 4];
        assert_eq!(
            m.read(0xffe, &mut b),
            Err(MemFault::Malformed { gpa: 0xffe, len: 4 })
        );
        assert_eq!(
            m.read(0x1000, &mut b),
            Err(MemFault::Unmapped {
                gpa: 0x1000,
                len: 4
            })
        );
        assert_eq!(
            m.read(u64::MAX - 1, &mut b[..1]),
            Err(MemFault::Unmapped {
                gpa: u64::MAX - 1,
                len: 1
            })
        );
    }

    #[test]
    fn routes_accesses_outside_ram_to_mmio() {
        let mut m = FlatMemory::new(0x1000).with_mmio(Box::new(Echo));
        let mut b = [0u8; 2];
        m.read(0x1042, &mut b).unwrap();
        assert_eq!(b, [0x42, 0x42]);
        assert!(m.read(0x3_0000, &mut b).is_err());
    }

    #[test]
    fn default_compare_exchange_swaps_only_on_match() {
        let mut m = FlatMemory::new(0x1000);
        m.write(0x10, &[1, 2]).unwrap();
        let mut found = [0u8; 2];
        m.compare_exchange(0x10, &[9, 9], &[5, 5], &mut found)
            .unwrap();
        assert_eq!(found, [1, 2]);
        m.compare_exchange(0x10, &[1, 2], &[5, 5], &mut found)
            .unwrap();
        let mut b = [0u8; 2];
        m.read(0x10, &mut b).unwrap();
        assert_eq!(b, [5, 5]);
    }
}
