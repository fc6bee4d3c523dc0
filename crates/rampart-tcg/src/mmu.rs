//! Linear-to-physical translation: the long-mode 4-level page walk and a small software TLB.
//!
//! Supported: 4-level paging (CR0.PG with EFER.LMA) with 4 KiB, 2 MiB and 1 GiB pages, U/S,
//! R/W with CR0.WP, NX with EFER.NXE, accessed/dirty bits, reserved-bit checks, #PF error codes
//! and CR2; and paging disabled (linear = physical). Legacy 32-bit and PAE paging without long
//! mode are not implemented yet (the walk reports them as an unsupported exit). SMEP/SMAP/PKE are
//! not advertised by the baseline CPU model and so never enabled.
//!
//! The TLB caches the *combined* permissions of a completed walk. It is flushed entirely on
//! every CR3 write, INVLPG (single page), and any CR0/CR4/EFER paging-bit change. Global pages are
//! flushed with everything else, which is always architecturally allowed.

use crate::cpu::{cr0, cr4, efer, Cpu};
use crate::exception::{vector, Event, Exception};
use crate::memory::{GuestMemory, PAGE_SIZE};
use crate::Exit;

/// Physical-address width of the model (bits). Matches the CPUID 0x80000008 report.
pub const PHYS_ADDR_BITS: u32 = 40;
const ADDR_MASK: u64 = ((1u64 << PHYS_ADDR_BITS) - 1) & !0xfff;

const PTE_P: u64 = 1 << 0;
const PTE_W: u64 = 1 << 1;
const PTE_U: u64 = 1 << 2;
const PTE_A: u64 = 1 << 5;
const PTE_D: u64 = 1 << 6;
const PTE_PS: u64 = 1 << 7;
const PTE_NX: u64 = 1 << 63;

/// #PF error-code bits.
pub mod pf {
    /// The page was present (protection violation).
    pub const PRESENT: u32 = 1 << 0;
    /// The access was a write.
    pub const WRITE: u32 = 1 << 1;
    /// The access came from CPL 3.
    pub const USER: u32 = 1 << 2;
    /// A reserved bit was set in a paging entry.
    pub const RSVD: u32 = 1 << 3;
    /// The access was an instruction fetch.
    pub const FETCH: u32 = 1 << 4;
}

/// The kind of memory access being translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessKind {
    /// Data read.
    Read,
    /// Data write.
    Write,
    /// Instruction fetch.
    Fetch,
}

/// One access: its kind and whether it is checked with user privilege.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Read, write or fetch.
    pub kind: AccessKind,
    /// Checked as a CPL-3 access.
    pub user: bool,
}

/// Entries of the TLB (direct-mapped). 256 were too few for a Linux guest's scheduler and
/// block paths: with 1,024 (and as many host-address slots per table), random disk reads rose
/// ~4% and the busybox workload of `bench/boot` ran ~15% faster, in alternated runs.
const TLB_ENTRIES: usize = 1024;

/// TLB slot of a virtual page number: folded so that pages at large power-of-two strides
/// (code and data 1 MiB apart, stacks) do not all land in the same slot.
#[inline]
fn tlb_slot(vpn: u64) -> usize {
    ((vpn ^ (vpn >> 8) ^ (vpn >> 16)) as usize) % TLB_ENTRIES
}

#[derive(Debug, Clone, Copy, Default)]
struct TlbEntry {
    /// Virtual page number + 1 (0 = empty).
    tag: u64,
    /// Physical page base.
    ppage: u64,
    /// The accesses this translation allows without a walk, one bit per [`access_bit`]:
    /// the combined permissions of the walk under the CR0.WP and EFER.NXE of the fill (a
    /// change of either flushes the TLB), writes only once the leaf is dirty.
    allow: u8,
    /// Size of the page the walk found (4 KiB, 2 MiB or 1 GiB): INVLPG of any address in a
    /// large page drops every 4 KiB piece of it held here.
    span: u64,
}

/// The bit of `a` in [`TlbEntry::allow`].
#[inline]
fn access_bit(a: Access) -> u8 {
    let kind = match a.kind {
        AccessKind::Read => 0,
        AccessKind::Write => 2,
        AccessKind::Fetch => 4,
    };
    1 << (kind + a.user as u8)
}

/// Slots of each of the two read tables of [`Tlb::fast`] (a power of two).
pub(crate) const FAST_ENTRIES: usize = 1024;

/// A RAM page for translated code (`crate::jit`): `tag` is the virtual page number
/// ([`FastEntry::EMPTY`]: none), `addend` what to add to a virtual address in the page for the
/// address of its byte in the RAM mapping (the page's host address minus its virtual address,
/// wrapping), which [`crate::memory::StableRam`] promises stays valid. Filled only after an
/// access of the table's kind through the TLB succeeded at the table's privilege, and emptied
/// with the TLB entry it came from.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(crate) struct FastEntry {
    pub(crate) tag: u64,
    pub(crate) addend: u64,
    /// The physical page number (for the code-page watch of stores).
    pub(crate) ppn: u64,
    _pad: u64,
}

impl FastEntry {
    /// The tag of an empty entry: no page number (an address shifted right by 12) is this.
    pub(crate) const EMPTY: u64 = u64::MAX;

    fn is_empty(&self) -> bool {
        self.tag == Self::EMPTY
    }
}

impl Default for FastEntry {
    fn default() -> Self {
        Self {
            tag: Self::EMPTY,
            addend: 0,
            ppn: 0,
            _pad: 0,
        }
    }
}

/// A direct-mapped software TLB of 4 KiB translations.
#[derive(Debug, Clone)]
pub struct Tlb {
    entries: [TlbEntry; TLB_ENTRIES],
    /// Counts flushes: a running block stops when translations may have changed under it.
    pub(crate) epoch: u64,
    /// Read translations straight to host addresses, for translated code: supervisor reads
    /// in the first [`FAST_ENTRIES`] slots, user reads in the next (slot: page number modulo
    /// [`FAST_ENTRIES`]). Filled only by the translator's load helper; emptied with the TLB
    /// and at a `Cpu::run` with memory of another identity (`memory::RamIdentity`).
    pub(crate) fast: Box<[FastEntry]>,
    /// The same for writes, filled by the translator's store helper after a write through
    /// the TLB succeeded (the page is then dirty and writable at that privilege).
    pub(crate) fast_w: Box<[FastEntry]>,
    /// The slots of `fast` (0..) and `fast_w` (`2 * FAST_ENTRIES`..) filled since they were
    /// last emptied (each listed when it goes from empty to filled), so emptying them clears
    /// those rather than 128 KiB of tables. Past [`FAST_FILLED_MAX`] entries the tables are
    /// cleared whole.
    fast_filled: Vec<u16>,
}

/// Most slots [`Tlb::fast_filled`] lists before the tables are cleared whole instead.
const FAST_FILLED_MAX: usize = 4 * FAST_ENTRIES;

impl Default for Tlb {
    fn default() -> Self {
        Self {
            entries: [TlbEntry::default(); TLB_ENTRIES],
            epoch: 0,
            fast: vec![FastEntry::default(); 2 * FAST_ENTRIES].into_boxed_slice(),
            fast_w: vec![FastEntry::default(); 2 * FAST_ENTRIES].into_boxed_slice(),
            fast_filled: Vec::with_capacity(FAST_FILLED_MAX),
        }
    }
}

impl Tlb {
    /// Drop every translation.
    pub fn flush_all(&mut self) {
        self.entries = [TlbEntry::default(); TLB_ENTRIES];
        self.epoch = self.epoch.wrapping_add(1);
        self.flush_fast();
    }

    /// Drop the translation of the page containing `la`: its 4 KiB entry and, when `la` lies
    /// in a large page, every 4 KiB piece of that page held here.
    pub fn flush_page(&mut self, la: u64) {
        self.epoch = self.epoch.wrapping_add(1);
        let vpn = la >> 12;
        for i in 0..TLB_ENTRIES {
            let e = self.entries[i];
            if e.tag == 0 {
                continue;
            }
            let evpn = e.tag - 1;
            let span = e.span.max(0x1000);
            if evpn == vpn || (span > 0x1000 && ((evpn << 12) ^ la) & !(span - 1) == 0) {
                self.entries[i] = TlbEntry::default();
                self.drop_fast(evpn);
            }
        }
        self.drop_fast(vpn);
    }

    /// Drop the host-address entries of virtual page `vpn` (both privileges, both kinds).
    fn drop_fast(&mut self, vpn: u64) {
        for table in [0, FAST_ENTRIES] {
            let slot = table + vpn as usize % FAST_ENTRIES;
            for t in [&mut self.fast, &mut self.fast_w] {
                if let Some(f) = t.get_mut(slot) {
                    if f.tag == vpn {
                        *f = FastEntry::default();
                    }
                }
            }
        }
    }

    /// Host-address entries filled since the tables were last emptied (for tests).
    #[cfg(test)]
    pub(crate) fn fast_filled(&self) -> usize {
        self.fast_filled.len()
    }

    /// Empty the host-address tables.
    pub(crate) fn flush_fast(&mut self) {
        if self.fast_filled.len() >= FAST_FILLED_MAX {
            self.fast.fill(FastEntry::default());
            self.fast_w.fill(FastEntry::default());
        } else {
            for &i in &self.fast_filled {
                let i = usize::from(i);
                let (table, slot) = match i.checked_sub(2 * FAST_ENTRIES) {
                    Some(w) => (&mut self.fast_w, w),
                    None => (&mut self.fast, i),
                };
                if let Some(f) = table.get_mut(slot) {
                    *f = FastEntry::default();
                }
            }
        }
        self.fast_filled.clear();
    }

    /// The physical page `la` translates to for an access of `kind` at privilege `user`, if
    /// cached with that access allowed.
    pub(crate) fn cached(&self, la: u64, kind: AccessKind, user: bool) -> Option<u64> {
        let access = Access { kind, user };
        self.lookup(la >> 12)
            .filter(|e| e.allow & access_bit(access) != 0)
            .map(|e| e.ppage)
    }

    /// Remember that accesses of `kind` (read or write) at privilege `user` to the page of
    /// `la`, at physical page `pa_page` (cached here, see [`Tlb::cached`]), find plain RAM at
    /// host address `host`.
    pub(crate) fn fill_fast(
        &mut self,
        la: u64,
        kind: AccessKind,
        user: bool,
        pa_page: u64,
        host: u64,
    ) {
        let vpn = la >> 12;
        let slot = user as usize * FAST_ENTRIES + vpn as usize % FAST_ENTRIES;
        let (table, listed) = match kind {
            AccessKind::Write => (&mut self.fast_w, 2 * FAST_ENTRIES + slot),
            _ => (&mut self.fast, slot),
        };
        // (A slot already filled is listed already: refills of it are not listed again.)
        let was_empty = table.get(slot).is_some_and(FastEntry::is_empty);
        if was_empty && self.fast_filled.len() < FAST_FILLED_MAX {
            self.fast_filled.push(listed as u16);
        }
        if let Some(f) = table.get_mut(slot) {
            *f = FastEntry {
                tag: vpn,
                addend: host.wrapping_sub(vpn << 12),
                ppn: pa_page >> 12,
                _pad: 0,
            };
        }
    }

    fn lookup(&self, vpn: u64) -> Option<&TlbEntry> {
        let e = &self.entries[tlb_slot(vpn)];
        (e.tag == vpn.wrapping_add(1)).then_some(e)
    }

    fn insert(&mut self, vpn: u64, e: TlbEntry) {
        let slot = tlb_slot(vpn);
        // The host-address entries never outlive the translation they came from.
        let old = self.entries[slot].tag;
        if old != 0 {
            self.drop_fast(old - 1);
        }
        self.entries[slot] = TlbEntry {
            tag: vpn.wrapping_add(1),
            ..e
        };
    }
}

/// A completed page walk, before its permission check and A/D updates.
struct Walk<'a> {
    /// (guest-physical address, value) of each entry read, top level first.
    entries: &'a [(u64, u64)],
    /// Size of an entry: 8, or 4 for 32-bit paging.
    entry_bytes: usize,
    /// The permissions combined over all levels.
    writable: bool,
    user: bool,
    nx: bool,
    /// The page frame and size the leaf maps.
    page_base: u64,
    page_size: u64,
}

/// Whether `la` is canonical for 48-bit linear addresses.
pub fn is_canonical(la: u64) -> bool {
    let top = (la as i64) >> 47;
    top == 0 || top == -1
}

pub(crate) fn read_phys_u64(mem: &mut dyn GuestMemory, gpa: u64) -> Result<u64, Event> {
    let mut b = [0u8; 8];
    mem.read(gpa, &mut b)
        .map_err(|e| Event::Exit(Exit::from(e)))?;
    Ok(u64::from_le_bytes(b))
}

impl Cpu {
    /// Translate a linear address for `access`, raising #PF as the hardware would.
    #[inline]
    pub fn translate(
        &mut self,
        mem: &mut dyn GuestMemory,
        la: u64,
        access: Access,
    ) -> Result<u64, Event> {
        if self.cr0 & cr0::PG == 0 {
            return Ok(la & 0xffff_ffff);
        }
        let vpn = la >> 12;
        if let Some(e) = self.tlb.lookup(vpn) {
            if e.allow & access_bit(access) != 0 {
                return Ok(e.ppage | (la & 0xfff));
            }
        }
        if self.efer & efer::LMA == 0 {
            return self.walk_legacy(mem, la & 0xffff_ffff, access);
        }
        self.walk(mem, la, access)
    }

    /// The page walk outside long mode: PAE paging (CR4.PAE: a 4-entry PDPT, then 8-byte PD
    /// and PT entries, 2 MiB or 4 KiB pages, NX with EFER.NXE) or 32-bit paging (4-byte
    /// entries, 4 MiB pages with CR4.PSE, no NX). The PDPTEs are read at walk time rather than
    /// cached at the CR3 load, and a reserved PDPTE bit is a #PF with RSVD rather than a #GP at
    /// the MOV to CR3.
    fn walk_legacy(
        &mut self,
        mem: &mut dyn GuestMemory,
        la: u64,
        access: Access,
    ) -> Result<u64, Event> {
        let pae = self.cr4 & cr4::PAE != 0;
        let nxe = pae && self.efer & efer::NXE != 0;
        let (mut table, idx_mask, entry_bytes, top_shift) = if pae {
            let addr = (self.cr3 & 0xffff_ffe0) + ((la >> 30) & 3) * 8;
            let pdpte = read_phys_u64(mem, addr)?;
            if pdpte & PTE_P == 0 {
                return Err(self.page_fault(la, access, 0));
            }
            // Reserved in a PAE PDPTE: bits 1-2, 5-8, 63 and the bits above the address width.
            let rsvd = 0x1e6 | PTE_NX | !((1u64 << PHYS_ADDR_BITS) - 1);
            if pdpte & rsvd != 0 {
                return Err(self.page_fault(la, access, pf::PRESENT | pf::RSVD));
            }
            (pdpte & ADDR_MASK, 0x1ffu64, 8u64, 21u32)
        } else {
            (self.cr3 & 0xffff_f000, 0x3ffu64, 4u64, 22u32)
        };
        let mut rsvd_hi = if pae {
            !((1u64 << PHYS_ADDR_BITS) - 1) & !PTE_NX
        } else {
            0
        };
        if pae && !nxe {
            rsvd_hi |= PTE_NX;
        }
        let (mut writable, mut user, mut nx) = (true, true, false);
        let mut entries: [(u64, u64); 2] = [(0, 0); 2];
        let mut depth = 0;
        let mut shift = top_shift;
        let (page_base, page_size) = loop {
            let addr = table + ((la >> shift) & idx_mask) * entry_bytes;
            let pte = if pae {
                read_phys_u64(mem, addr)?
            } else {
                let mut b = [0u8; 4];
                mem.read(addr, &mut b)
                    .map_err(|e| Event::Exit(Exit::from(e)))?;
                u32::from_le_bytes(b) as u64
            };
            if pte & PTE_P == 0 {
                return Err(self.page_fault(la, access, 0));
            }
            let large = shift != 12 && pte & PTE_PS != 0 && (pae || self.cr4 & cr4::PSE != 0);
            let mut rsvd = pte & rsvd_hi != 0;
            if large {
                // Bits 13 up to the page-size bit must be 0 (no PSE-36 in the model).
                let low = ((1u64 << shift) - 1) & !0x1fff;
                rsvd |= pte & low != 0;
            }
            if rsvd {
                return Err(self.page_fault(la, access, pf::PRESENT | pf::RSVD));
            }
            writable &= pte & PTE_W != 0;
            user &= pte & PTE_U != 0;
            nx |= nxe && pte & PTE_NX != 0;
            entries[depth] = (addr, pte);
            depth += 1;
            if shift == 12 || large {
                let size = 1u64 << shift;
                let mask = if pae { ADDR_MASK } else { 0xffff_f000 };
                break ((pte & mask) & !(size - 1), size);
            }
            table = pte & if pae { ADDR_MASK } else { 0xffff_f000 };
            shift = 12;
        };
        self.finish_walk(
            mem,
            la,
            access,
            &Walk {
                entries: &entries[..depth],
                entry_bytes: entry_bytes as usize,
                writable,
                user,
                nx,
                page_base,
                page_size,
            },
        )
    }

    /// The end of a completed walk, shared by the long-mode and legacy walks: the permission
    /// check, the accessed bit on every level and the dirty bit on the leaf for a write (each
    /// set with a compare-and-exchange of the entry, so a concurrent update by another vCPU is
    /// never overwritten), and the TLB fill.
    fn finish_walk(
        &mut self,
        mem: &mut dyn GuestMemory,
        la: u64,
        access: Access,
        w: &Walk<'_>,
    ) -> Result<u64, Event> {
        if !self.permits(w.writable, w.user, w.nx, access) {
            return Err(self.page_fault(la, access, pf::PRESENT));
        }
        let is_write = access.kind == AccessKind::Write;
        let n = w.entry_bytes;
        for (i, &(addr, pte)) in w.entries.iter().enumerate() {
            let mut new = pte | PTE_A;
            if i + 1 == w.entries.len() && is_write {
                new |= PTE_D;
            }
            if new != pte {
                self.note_store(addr);
                let mut found = [0u8; 8];
                mem.compare_exchange(
                    addr,
                    &pte.to_le_bytes()[..n],
                    &new.to_le_bytes()[..n],
                    &mut found[..n],
                )
                .map_err(|e| Event::Exit(Exit::from(e)))?;
            }
        }
        let leaf_dirty = is_write || w.entries.last().is_some_and(|&(_, pte)| pte & PTE_D != 0);
        let pa = w.page_base + (la & (w.page_size - 1));
        let allow = self.allowed_accesses(w.writable, w.user, w.nx, leaf_dirty);
        self.tlb.insert(
            la >> 12,
            TlbEntry {
                tag: 0,
                ppage: pa & !0xfff,
                allow,
                span: w.page_size,
            },
        );
        Ok(pa)
    }

    /// [`TlbEntry::allow`] for a translation with these combined permissions.
    fn allowed_accesses(&self, writable: bool, user: bool, nx: bool, dirty: bool) -> u8 {
        let mut allow = 0;
        for kind in [AccessKind::Read, AccessKind::Write, AccessKind::Fetch] {
            for u in [false, true] {
                let a = Access { kind, user: u };
                if self.permits(writable, user, nx, a) && (kind != AccessKind::Write || dirty) {
                    allow |= access_bit(a);
                }
            }
        }
        allow
    }

    fn permits(&self, writable: bool, user: bool, nx: bool, a: Access) -> bool {
        if a.user && !user {
            return false;
        }
        match a.kind {
            AccessKind::Write => writable || (!a.user && self.cr0 & cr0::WP == 0),
            AccessKind::Fetch => !(nx && self.efer & efer::NXE != 0),
            AccessKind::Read => true,
        }
    }

    fn page_fault(&mut self, la: u64, access: Access, bits: u32) -> Event {
        let mut code = bits;
        if access.kind == AccessKind::Write {
            code |= pf::WRITE;
        }
        if access.user {
            code |= pf::USER;
        }
        if access.kind == AccessKind::Fetch && self.efer & efer::NXE != 0 {
            code |= pf::FETCH;
        }
        self.cr2 = la;
        Event::Exception(Exception::fault(vector::PF, Some(code)))
    }

    fn walk(&mut self, mem: &mut dyn GuestMemory, la: u64, access: Access) -> Result<u64, Event> {
        if !is_canonical(la) {
            return Err(Exception::gp(0).into());
        }
        let nxe = self.efer & efer::NXE != 0;
        let mut rsvd_hi = !((1u64 << PHYS_ADDR_BITS) - 1) & !PTE_NX;
        if !nxe {
            rsvd_hi |= PTE_NX;
        }
        let mut table = self.cr3 & ADDR_MASK;
        let (mut writable, mut user, mut nx) = (true, true, false);
        let mut entries: [(u64, u64); 4] = [(0, 0); 4];
        let mut depth = 0;
        let mut level = 4u32;
        let (page_base, page_size) = loop {
            let shift = 12 + 9 * (level - 1);
            let idx = (la >> shift) & 0x1ff;
            let addr = table + idx * 8;
            let pte = read_phys_u64(mem, addr)?;
            if pte & PTE_P == 0 {
                return Err(self.page_fault(la, access, 0));
            }
            let large = pte & PTE_PS != 0;
            // Reserved: high physical bits, NX without NXE, PS at level 4, large-page low bits.
            let mut rsvd = pte & rsvd_hi != 0 || (level == 4 && large);
            if large && (level == 3 || level == 2) {
                let low_mask = ((1u64 << shift) - 1) & !0x1fff; // bits 13..shift-1 must be 0
                rsvd |= pte & low_mask & ADDR_MASK != 0;
            }
            if rsvd {
                return Err(self.page_fault(la, access, pf::PRESENT | pf::RSVD));
            }
            writable &= pte & PTE_W != 0;
            user &= pte & PTE_U != 0;
            nx |= pte & PTE_NX != 0;
            entries[depth] = (addr, pte);
            depth += 1;
            if level == 1 || (large && level <= 3) {
                let size = 1u64 << shift;
                break ((pte & ADDR_MASK) & !(size - 1), size);
            }
            table = pte & ADDR_MASK;
            level -= 1;
        };
        self.finish_walk(
            mem,
            la,
            access,
            &Walk {
                entries: &entries[..depth],
                entry_bytes: 8,
                writable,
                user,
                nx,
                page_base,
                page_size,
            },
        )
    }

    /// Read `buf.len()` (at most 16) bytes at linear address `la`, splitting at page boundaries.
    /// Both pages are translated before anything is read.
    pub(crate) fn read_linear(
        &mut self,
        mem: &mut dyn GuestMemory,
        la: u64,
        buf: &mut [u8],
        access: Access,
    ) -> Result<(), Event> {
        let (first, second) = self.split(mem, la, buf.len(), access)?;
        let (a, b) = buf.split_at_mut(first.1);
        mem.read(first.0, a)
            .map_err(|e| Event::Exit(Exit::from(e)))?;
        if let Some(pa2) = second {
            mem.read(pa2, b).map_err(|e| Event::Exit(Exit::from(e)))?;
        }
        Ok(())
    }

    /// Write `buf` (at most 16 bytes) at linear address `la`; both pages are checked first.
    pub(crate) fn write_linear(
        &mut self,
        mem: &mut dyn GuestMemory,
        la: u64,
        buf: &[u8],
        user: bool,
    ) -> Result<(), Event> {
        let access = Access {
            kind: AccessKind::Write,
            user,
        };
        let (first, second) = self.split(mem, la, buf.len(), access)?;
        self.note_store(first.0);
        if let Some(pa2) = second {
            self.note_store(pa2);
        }
        let (a, b) = buf.split_at(first.1);
        mem.write(first.0, a)
            .map_err(|e| Event::Exit(Exit::from(e)))?;
        if let Some(pa2) = second {
            mem.write(pa2, b).map_err(|e| Event::Exit(Exit::from(e)))?;
        }
        Ok(())
    }

    /// Record a store of this CPU at guest-physical `pa`: if it hits the page of the block
    /// being run, the block stops after the current instruction (self-modifying code); if it
    /// may hit a page of a block validated in this generation, the generation ends.
    #[inline]
    pub(crate) fn note_store(&mut self, pa: u64) {
        if pa >> 12 == self.code_page || pa >> 12 == self.code_page2 {
            self.code_written = true;
        }
        if self.code_page_marked(pa) {
            self.new_code_gen();
        }
    }

    /// Translate the one or two pages an access touches: ((pa, len in first page), pa of second).
    pub(crate) fn split(
        &mut self,
        mem: &mut dyn GuestMemory,
        la: u64,
        len: usize,
        access: Access,
    ) -> Result<((u64, usize), Option<u64>), Event> {
        let in_first = (PAGE_SIZE - (la % PAGE_SIZE)) as usize;
        let pa1 = self.translate(mem, la, access)?;
        if len <= in_first {
            return Ok(((pa1, len), None));
        }
        let la2 = la.wrapping_add(in_first as u64);
        let pa2 = self.translate(mem, la2, access)?;
        Ok(((pa1, in_first), Some(pa2)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::FlatMemory;

    #[test]
    fn emptying_the_host_address_tables_clears_every_filled_slot_however_many() {
        let empty = |t: &Tlb| {
            t.fast
                .iter()
                .chain(t.fast_w.iter())
                .all(FastEntry::is_empty)
        };
        for fills in [
            0usize,
            3,
            FAST_FILLED_MAX - 1,
            FAST_FILLED_MAX,
            3 * FAST_FILLED_MAX,
        ] {
            let mut t = Tlb::default();
            for k in 0..fills as u64 {
                let kind = if k % 2 == 0 {
                    AccessKind::Read
                } else {
                    AccessKind::Write
                };
                t.fill_fast(k * 0x1000 * 7, kind, k % 3 == 0, k << 12, 0x1000);
            }
            assert_eq!(empty(&t), fills == 0, "{fills} fills");
            t.flush_fast();
            assert!(empty(&t), "{fills} fills left entries behind");
            assert!(t.fast_filled.is_empty());
        }
    }

    const R: Access = Access {
        kind: AccessKind::Read,
        user: false,
    };
    const W: Access = Access {
        kind: AccessKind::Write,
        user: false,
    };
    const UR: Access = Access {
        kind: AccessKind::Read,
        user: true,
    };
    const X: Access = Access {
        kind: AccessKind::Fetch,
        user: false,
    };

    /// PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000, PT at 0x4000 mapping VA 0x40_0000.. .
    fn setup(pte_flags: u64) -> (Cpu, FlatMemory) {
        let mut m = FlatMemory::new(0x20_0000);
        m.write_u64(0x1000, 0x2000 | 7).unwrap();
        m.write_u64(0x2000, 0x3000 | 7).unwrap();
        m.write_u64(0x3000 + 2 * 8, 0x4000 | 7).unwrap();
        m.write_u64(0x4000, 0x9000 | pte_flags).unwrap();
        // A 2 MiB page at VA 0x20_0000 -> PA 0 (supervisor only).
        m.write_u64(0x3000 + 8, PTE_PS | 3).unwrap();
        let mut c = Cpu::new();
        c.enter_long_mode_flat(0x1000);
        (c, m)
    }

    #[test]
    fn walks_four_levels_and_sets_accessed_and_dirty() {
        let (mut c, mut m) = setup(PTE_P | PTE_W);
        assert_eq!(c.translate(&mut m, 0x40_0123, R).unwrap(), 0x9123);
        assert_eq!(m.read_u64(0x4000).unwrap() & (PTE_A | PTE_D), PTE_A);
        assert_eq!(c.translate(&mut m, 0x40_0123, W).unwrap(), 0x9123);
        assert_eq!(m.read_u64(0x4000).unwrap() & (PTE_A | PTE_D), PTE_A | PTE_D);
    }

    #[test]
    fn maps_two_megabyte_pages() {
        let (mut c, mut m) = setup(PTE_P);
        assert_eq!(c.translate(&mut m, 0x2f_f00f, R).unwrap(), 0xf_f00f);
    }

    #[test]
    fn not_present_faults_with_cr2_and_code() {
        let (mut c, mut m) = setup(PTE_P);
        let e = c.translate(&mut m, 0x40_1000, W).unwrap_err();
        assert_eq!(
            e,
            Event::Exception(Exception::fault(vector::PF, Some(pf::WRITE)))
        );
        assert_eq!(c.cr2, 0x40_1000);
    }

    #[test]
    fn write_to_read_only_page_faults_only_with_wp() {
        let (mut c, mut m) = setup(PTE_P);
        let e = c.translate(&mut m, 0x40_0000, W).unwrap_err();
        assert_eq!(
            e,
            Event::Exception(Exception::fault(vector::PF, Some(pf::WRITE | pf::PRESENT)))
        );
        c.cr0 &= !cr0::WP;
        c.flush_tlb();
        assert!(c.translate(&mut m, 0x40_0000, W).is_ok());
    }

    #[test]
    fn user_access_to_supervisor_page_faults() {
        let (mut c, mut m) = setup(PTE_P);
        let e = c.translate(&mut m, 0x40_0000, UR).unwrap_err();
        assert_eq!(
            e,
            Event::Exception(Exception::fault(vector::PF, Some(pf::USER | pf::PRESENT)))
        );
    }

    #[test]
    fn fetch_from_nx_page_faults_with_fetch_bit() {
        let (mut c, mut m) = setup(PTE_P | PTE_NX);
        let e = c.translate(&mut m, 0x40_0000, X).unwrap_err();
        assert_eq!(
            e,
            Event::Exception(Exception::fault(vector::PF, Some(pf::FETCH | pf::PRESENT)))
        );
    }

    #[test]
    fn reserved_physical_bits_fault_with_rsvd() {
        let (mut c, mut m) = setup(PTE_P | (1 << 45));
        let e = c.translate(&mut m, 0x40_0000, R).unwrap_err();
        assert_eq!(
            e,
            Event::Exception(Exception::fault(vector::PF, Some(pf::RSVD | pf::PRESENT)))
        );
    }

    #[test]
    fn tlb_is_used_until_invalidated() {
        let (mut c, mut m) = setup(PTE_P | PTE_W);
        c.translate(&mut m, 0x40_0000, R).unwrap();
        m.write_u64(0x4000, 0xa000 | 3).unwrap();
        assert_eq!(c.translate(&mut m, 0x40_0000, R).unwrap(), 0x9000);
        c.tlb.flush_page(0x40_0000);
        assert_eq!(c.translate(&mut m, 0x40_0000, R).unwrap(), 0xa000);
    }

    #[test]
    fn non_canonical_address_is_gp() {
        let (mut c, mut m) = setup(PTE_P);
        let e = c.translate(&mut m, 0x8000_0000_0000, R).unwrap_err();
        assert_eq!(e, Event::Exception(Exception::gp(0)));
    }

    #[test]
    fn page_table_outside_ram_is_a_clean_exit() {
        let (mut c, mut m) = setup(PTE_P);
        c.cr3 = 0x1_0000_0000;
        c.flush_tlb();
        assert!(matches!(
            c.translate(&mut m, 0, R),
            Err(Event::Exit(Exit::PhysicalMemory(_)))
        ));
    }

    /// Protected mode with paging but not long mode.
    fn legacy(cr4_bits: u64, cr3: u64) -> (Cpu, FlatMemory) {
        let mut c = Cpu::new();
        c.cr0 = cr0::PE | cr0::PG | cr0::WP | cr0::ET;
        c.cr4 = cr4_bits;
        c.cr3 = cr3;
        (c, FlatMemory::new(0x40_0000))
    }

    #[test]
    fn pae_walk_maps_4k_and_2m_pages_and_sets_accessed_dirty() {
        // PDPT at 0x1020 (32-byte aligned), PDPTE 1 -> PD 0x2000 for 0x4000_0000..0x8000_0000.
        let (mut c, mut m) = legacy(cr4::PAE, 0x1020);
        m.write_u64(0x1020 + 8, 0x2000 | 1).unwrap();
        m.write_u64(0x2000, 0x3000 | 3).unwrap(); // PD[0] -> PT
        m.write_u64(0x3000 + 5 * 8, 0x9000 | 3).unwrap(); // PT[5] -> 0x9000
        m.write_u64(0x2000 + 8, 0x20_0000 | PTE_PS | 3).unwrap(); // PD[1]: 2 MiB at 2 MiB
        assert_eq!(c.translate(&mut m, 0x4000_5abc, W).unwrap(), 0x9abc);
        assert_eq!(
            m.read_u64(0x3000 + 5 * 8).unwrap() & (PTE_A | PTE_D),
            PTE_A | PTE_D
        );
        assert_eq!(m.read_u64(0x2000).unwrap() & PTE_A, PTE_A);
        assert_eq!(c.translate(&mut m, 0x4020_1234, R).unwrap(), 0x20_1234);
    }

    #[test]
    fn pae_nx_page_faults_on_fetch_only_with_nxe() {
        let (mut c, mut m) = legacy(cr4::PAE, 0x1000);
        m.write_u64(0x1000, 0x2000 | 1).unwrap();
        m.write_u64(0x2000, PTE_NX | PTE_PS | 3).unwrap();
        c.efer = efer::NXE;
        let e = c.translate(&mut m, 0x1000, X).unwrap_err();
        assert_eq!(
            e,
            Event::Exception(Exception::fault(vector::PF, Some(pf::FETCH | pf::PRESENT)))
        );
        c.efer = 0;
        c.flush_tlb();
        let e = c.translate(&mut m, 0x1000, R).unwrap_err();
        assert_eq!(
            e,
            Event::Exception(Exception::fault(vector::PF, Some(pf::RSVD | pf::PRESENT)))
        );
    }

    #[test]
    fn pae_reserved_pdpte_bit_faults_with_rsvd() {
        let (mut c, mut m) = legacy(cr4::PAE, 0x1000);
        m.write_u64(0x1000, 0x2000 | 1 | 2).unwrap(); // bit 1 is reserved in a PDPTE
        let e = c.translate(&mut m, 0x1000, R).unwrap_err();
        assert_eq!(
            e,
            Event::Exception(Exception::fault(vector::PF, Some(pf::RSVD | pf::PRESENT)))
        );
        assert_eq!(c.cr2, 0x1000);
    }

    #[test]
    fn thirty_two_bit_paging_uses_4_byte_entries_and_4m_pages_with_pse() {
        let (mut c, mut m) = legacy(0, 0x1000);
        // PDE 1 (4..8 MiB) -> PT at 0x2000; PTE 3 -> 0x7000. PDE 2: 4 MiB page at 0.
        m.load(0x1000 + 4, &(0x2000u32 | 7).to_le_bytes()).unwrap();
        m.load(0x2000 + 3 * 4, &(0x7000u32 | 7).to_le_bytes())
            .unwrap();
        m.load(0x1000 + 8, &(0x83u32).to_le_bytes()).unwrap();
        assert_eq!(c.translate(&mut m, 0x40_3010, UR).unwrap(), 0x7010);
        // Without CR4.PSE the PS bit is ignored: PDE 2 points at a page table at 0, whose
        // entry 0 is empty.
        assert_eq!(
            c.translate(&mut m, 0x80_0000, R).unwrap_err(),
            Event::Exception(Exception::fault(vector::PF, Some(0)))
        );
        c.cr4 = cr4::PSE;
        c.flush_tlb();
        assert_eq!(c.translate(&mut m, 0x83_4567, R).unwrap(), 0x3_4567);
        // User access to the supervisor 4 MiB page faults.
        let e = c.translate(&mut m, 0x83_4567, UR).unwrap_err();
        assert_eq!(
            e,
            Event::Exception(Exception::fault(vector::PF, Some(pf::USER | pf::PRESENT)))
        );
    }
}
