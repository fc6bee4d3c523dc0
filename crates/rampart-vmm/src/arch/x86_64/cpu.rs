//! Boot CPU state: the GDT and identity-mapped page tables in guest memory, and the register
//! state ([`CpuState`]) for the 64-bit Linux entry, the 32-bit PVH entry and the x86 reset
//! state of application processors.
//!
//! Segment limits are byte-granular (as KVM's `kvm_segment` has them): a 4 GiB flat segment has
//! `limit = 0xffff_ffff` and `g = true`.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, GIB, LAPIC_START, PDPT_START, PD_COUNT,
    PD_START, PML4_START, ZERO_PAGE_START,
};
use super::regs::{CpuState, DescriptorTable, GeneralRegs, MsrEntry, Segment, SpecialRegs};

/// GDT selectors: null, 32-bit code (PVH), 64-bit code, flat data, TSS (16 bytes in long mode).
pub const GDT_CODE32_SELECTOR: u16 = 0x08;
pub const GDT_CODE64_SELECTOR: u16 = 0x10;
pub const GDT_DATA_SELECTOR: u16 = 0x18;
pub const GDT_TSS_SELECTOR: u16 = 0x20;
/// Size of the GDT in bytes (5 slots of 8 bytes + the upper half of the TSS descriptor).
const GDT_SIZE: u16 = 0x30;

pub const CR0_PE: u64 = 1 << 0;
pub const CR0_ET: u64 = 1 << 4;
pub const CR0_NE: u64 = 1 << 5;
pub const CR0_PG: u64 = 1 << 31;
pub const CR4_PAE: u64 = 1 << 5;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
/// IA32_APIC_BASE: enabled, and boot-processor flag.
pub const APIC_BASE_ENABLE: u64 = 1 << 11;
pub const APIC_BASE_BSP: u64 = 1 << 8;

/// MSR indexes used in the boot MSR list.
pub const MSR_IA32_TSC: u32 = 0x10;
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
pub const MSR_STAR: u32 = 0xc000_0081;
pub const MSR_LSTAR: u32 = 0xc000_0082;
pub const MSR_CSTAR: u32 = 0xc000_0083;
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// IA32_MISC_ENABLE: fast-string operations enabled.
pub const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRdefType: MTRRs enabled (bit 11), default type write-back (6).
pub const MTRR_DEF_TYPE_ENABLED_WB: u64 = 0x806;

/// Page-table entry bits.
const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_PAGE_SIZE: u64 = 1 << 7;
const PAGE_SIZE_2M: u64 = 2 << 20;

/// Errors writing boot CPU structures into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum CpuSetupError {
    #[error("cannot write the {what} at guest address {addr:#x}: {source}")]
    Write {
        what: &'static str,
        addr: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

fn write_u64s(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: u64,
    values: &[u64],
) -> Result<(), CpuSetupError> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(addr))
        .map_err(|source| CpuSetupError::Write { what, addr, source })
}

/// Encodes a segment descriptor (the 8-byte form) from its parts.
fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The boot GDT entries (flags: G/DB/L/AVL nibble in bits 12..16, access byte in bits 0..8).
fn gdt_entries() -> [u64; 6] {
    [
        0,
        gdt_entry(0xc09b, 0, 0xfffff), // 32-bit code, G=1 D=1, present, exec/read, accessed
        gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code, G=1 L=1
        gdt_entry(0xc093, 0, 0xfffff), // data, G=1 B=1, read/write, accessed
        gdt_entry(0x008b, 0, 0x67),    // busy TSS (lower half)
        0,                             // TSS upper half (base 63:32 = 0)
    ]
}

/// Writes the boot GDT and an empty IDT into guest memory.
pub fn write_gdt_idt(mem: &GuestMemoryMmap) -> Result<(), CpuSetupError> {
    write_u64s(mem, "boot GDT", BOOT_GDT_START, &gdt_entries())?;
    write_u64s(mem, "boot IDT", BOOT_IDT_START, &[0])
}

/// Writes identity-mapped page tables covering the first 4 GiB with 2 MiB pages (PML4 →
/// one PDPT → four page directories). Returns the CR3 value.
pub fn write_page_tables(mem: &GuestMemoryMmap) -> Result<u64, CpuSetupError> {
    write_u64s(
        mem,
        "boot PML4",
        PML4_START,
        &[PDPT_START | PTE_PRESENT | PTE_WRITABLE],
    )?;
    let pdpt: Vec<u64> = (0..PD_COUNT)
        .map(|i| (PD_START + i * 0x1000) | PTE_PRESENT | PTE_WRITABLE)
        .collect();
    write_u64s(mem, "boot PDPT", PDPT_START, &pdpt)?;
    for i in 0..PD_COUNT {
        let pd: Vec<u64> = (0..512)
            .map(|j| (i * GIB + j * PAGE_SIZE_2M) | PTE_PRESENT | PTE_WRITABLE | PTE_PAGE_SIZE)
            .collect();
        write_u64s(mem, "boot page directory", PD_START + i * 0x1000, &pd)?;
    }
    Ok(PML4_START)
}

fn flat_segment(selector: u16, type_: u8, db: bool, l: bool) -> Segment {
    Segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: true,
        dpl: 0,
        db,
        s: true,
        l,
        g: true,
        avl: false,
        unusable: false,
    }
}

fn boot_tss() -> Segment {
    Segment {
        base: 0,
        limit: 0x67,
        selector: GDT_TSS_SELECTOR,
        type_: 0xb,
        present: true,
        s: false,
        ..Default::default()
    }
}

fn boot_ldt() -> Segment {
    Segment {
        type_: 0x2,
        present: true,
        unusable: true,
        ..Default::default()
    }
}

fn boot_sregs(code: Segment, data: Segment) -> SpecialRegs {
    SpecialRegs {
        cs: code,
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr: boot_tss(),
        ldt: boot_ldt(),
        gdt: DescriptorTable {
            base: BOOT_GDT_START,
            limit: GDT_SIZE - 1,
        },
        idt: DescriptorTable {
            base: BOOT_IDT_START,
            limit: 7,
        },
        apic_base: LAPIC_START | APIC_BASE_ENABLE | APIC_BASE_BSP,
        ..Default::default()
    }
}

/// The MSR values the boot CPU starts with.
pub fn boot_msrs() -> Vec<MsrEntry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_DEF_TYPE_ENABLED_WB),
    ]
    .into_iter()
    .map(|(index, data)| MsrEntry { index, data })
    .collect()
}

/// Register state for the Linux 64-bit boot protocol: long mode, paging on with the tables of
/// [`write_page_tables`] (CR3 = `cr3`), CS = 64-bit code 0x10, data segments 0x18, RIP = `entry`,
/// RSI = zero page, RSP = boot stack. Call [`write_gdt_idt`] and [`write_page_tables`] too.
pub fn linux64_boot_state(entry: GuestAddress, cr3: u64) -> CpuState {
    let mut sregs = boot_sregs(
        flat_segment(GDT_CODE64_SELECTOR, 0xb, false, true),
        flat_segment(GDT_DATA_SELECTOR, 0x3, true, false),
    );
    sregs.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG;
    sregs.cr3 = cr3;
    sregs.cr4 = CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
    CpuState {
        regs: GeneralRegs {
            rip: entry.0,
            rsi: ZERO_PAGE_START,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rflags: 2,
            ..Default::default()
        },
        sregs,
        msrs: boot_msrs(),
    }
}

/// Register state for the PVH boot protocol: 32-bit flat protected mode, paging off,
/// CS = 32-bit code 0x08 (base 0, limit 4 GiB), data segments 0x18, EIP = `entry`,
/// EBX = `start_info`. Call [`write_gdt_idt`] too.
pub fn pvh_boot_state(entry: GuestAddress, start_info: GuestAddress) -> CpuState {
    let mut sregs = boot_sregs(
        flat_segment(GDT_CODE32_SELECTOR, 0xb, true, false),
        flat_segment(GDT_DATA_SELECTOR, 0x3, true, false),
    );
    sregs.cr0 = CR0_PE | CR0_ET;
    CpuState {
        regs: GeneralRegs {
            rip: entry.0,
            rbx: start_info.0,
            rflags: 2,
            ..Default::default()
        },
        sregs,
        msrs: boot_msrs(),
    }
}

/// The architectural x86 reset state, in which application processors wait for INIT/SIPI.
/// EDX holds a family-6 signature; the APIC is enabled, not the boot processor.
pub fn reset_state() -> CpuState {
    let real = |type_| Segment {
        base: 0,
        limit: 0xffff,
        selector: 0,
        type_,
        present: true,
        s: true,
        ..Default::default()
    };
    let mut cs = real(0xb);
    cs.selector = 0xf000;
    cs.base = 0xffff_0000;
    let data = real(0x3);
    let sregs = SpecialRegs {
        cs,
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr: Segment {
            limit: 0xffff,
            type_: 0xb,
            present: true,
            ..Default::default()
        },
        ldt: Segment {
            limit: 0xffff,
            type_: 0x2,
            present: true,
            ..Default::default()
        },
        gdt: DescriptorTable {
            base: 0,
            limit: 0xffff,
        },
        idt: DescriptorTable {
            base: 0,
            limit: 0xffff,
        },
        cr0: 0x6000_0010,
        apic_base: LAPIC_START | APIC_BASE_ENABLE,
        ..Default::default()
    };
    CpuState {
        regs: GeneralRegs {
            rip: 0xfff0,
            rdx: 0x600,
            rflags: 2,
            ..Default::default()
        },
        sregs,
        msrs: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::ram_regions;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&ram_regions(32 << 20)).unwrap()
    }

    fn read_u64(mem: &GuestMemoryMmap, addr: u64) -> u64 {
        mem.read_obj(GuestAddress(addr)).unwrap()
    }

    /// Walks the boot page tables like the MMU does for a 2 MiB mapping.
    fn translate(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> Option<u64> {
        let pml4e = read_u64(mem, cr3 + ((va >> 39) & 0x1ff) * 8);
        if pml4e & PTE_PRESENT == 0 {
            return None;
        }
        let pdpte = read_u64(mem, (pml4e & !0xfff) + ((va >> 30) & 0x1ff) * 8);
        if pdpte & PTE_PRESENT == 0 {
            return None;
        }
        let pde = read_u64(mem, (pdpte & !0xfff) + ((va >> 21) & 0x1ff) * 8);
        if pde & PTE_PRESENT == 0 || pde & PTE_PAGE_SIZE == 0 {
            return None;
        }
        Some((pde & !0x1f_ffff & 0x000f_ffff_ffff_f000) + (va & 0x1f_ffff))
    }

    #[test]
    fn page_tables_identity_map_first_four_gib() {
        // Arrange
        let mem = mem();
        // Act
        let cr3 = write_page_tables(&mem).unwrap();
        // Assert
        for va in [0, 0x7000, 0x100_0000, GIB + 12345, 3 * GIB, 4 * GIB - 1] {
            assert_eq!(translate(&mem, cr3, va), Some(va), "va {va:#x}");
        }
        assert_eq!(translate(&mem, cr3, 4 * GIB), None);
    }

    #[test]
    fn gdt_descriptors_decode_to_the_boot_segments() {
        let mem = mem();
        write_gdt_idt(&mem).unwrap();
        let code64 = read_u64(&mem, BOOT_GDT_START + u64::from(GDT_CODE64_SELECTOR));
        let code32 = read_u64(&mem, BOOT_GDT_START + u64::from(GDT_CODE32_SELECTOR));
        let data = read_u64(&mem, BOOT_GDT_START + u64::from(GDT_DATA_SELECTOR));
        // L bit (53) on the 64-bit code segment only; D bit (54) on 32-bit code and data.
        assert_eq!((code64 >> 53) & 3, 0b01);
        assert_eq!((code32 >> 53) & 3, 0b10);
        assert_eq!((data >> 53) & 3, 0b10);
        // Present, code/data, types 0xb and 0x3, G=1, limit 0xfffff, base 0.
        assert_eq!((code64 >> 40) & 0xff, 0x9b);
        assert_eq!((data >> 40) & 0xff, 0x93);
        assert_eq!(code64 & 0xffff, 0xffff);
        assert_eq!((code64 >> 48) & 0xf, 0xf);
        assert_eq!((code64 >> 55) & 1, 1);
    }

    #[test]
    fn linux64_state_is_long_mode_with_zero_page_in_rsi() {
        let s = linux64_boot_state(GuestAddress(0x100_0200), PML4_START);
        assert_eq!(s.regs.rip, 0x100_0200);
        assert_eq!(s.regs.rsi, ZERO_PAGE_START);
        assert_eq!(s.regs.rflags, 2);
        assert_eq!(s.sregs.efer, EFER_LME | EFER_LMA);
        assert_ne!(s.sregs.cr0 & CR0_PG, 0);
        assert_ne!(s.sregs.cr4 & CR4_PAE, 0);
        assert!(s.sregs.cs.l && !s.sregs.cs.db);
        assert_eq!(s.sregs.cs.selector, 0x10);
        assert_eq!(s.sregs.ds.selector, 0x18);
        assert!(s
            .msrs
            .iter()
            .any(|m| m.index == MSR_MTRR_DEF_TYPE && m.data == 0x806));
    }

    #[test]
    fn pvh_state_is_flat_protected_mode_without_paging() {
        let s = pvh_boot_state(GuestAddress(0x10_0000), GuestAddress(0x6000));
        assert_eq!(s.regs.rbx, 0x6000);
        assert_eq!(s.sregs.cr0 & (CR0_PG | CR0_PE), CR0_PE);
        assert_eq!(s.sregs.efer, 0);
        assert!(s.sregs.cs.db && !s.sregs.cs.l);
        assert_eq!((s.sregs.cs.base, s.sregs.cs.limit), (0, 0xffff_ffff));
    }

    #[test]
    fn reset_state_has_architectural_values() {
        let s = reset_state();
        assert_eq!(s.regs.rip, 0xfff0);
        assert_eq!(s.sregs.cs.selector, 0xf000);
        assert_eq!(s.sregs.cs.base, 0xffff_0000);
        assert_eq!(s.sregs.cr0, 0x6000_0010);
        assert_eq!(s.regs.rflags, 2);
        assert_eq!(s.sregs.apic_base & APIC_BASE_BSP, 0);
    }
}
