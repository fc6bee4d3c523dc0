//! The guest-physical memory layout of rampart's x86-64 machine, shared by both accelerators.
//!
//! ```text
//! 0x0000_0000 ┬ real-mode IVT / BDA (left zero)
//! 0x0000_1000 │ boot GDT (BOOT_GDT_START), boot IDT (BOOT_IDT_START)
//! 0x0000_6000 │ PVH hvm_start_info, module list, memory map
//! 0x0000_7000 │ zero page (Linux boot_params)
//! 0x0000_8000 │ boot stack (grows down from BOOT_STACK_POINTER)
//! 0x0000_9000 │ boot page tables: PML4, PDPT, 4 page directories (identity map of 4 GiB)
//! 0x0002_0000 │ kernel command line (CMDLINE_MAX_SIZE)
//! 0x0009_fc00 ┼ EBDA .. BIOS area: reserved in e820
//! 0x000e_0000 │ ACPI tables (RSDP first, so a guest scanning 0xE0000..0xFFFFF finds it)
//! 0x0010_0000 ┼ high memory: kernel (usually at 16 MiB), initrd at the top of low RAM
//!             │ RAM up to min(size, 3 GiB)
//! 0xc000_0000 ┼ 32-bit MMIO hole: device window, PCI ECAM, I/O APIC, local APICs
//! 0x1_0000_0000 RAM above 3 GiB continues here; after it, the 64-bit MMIO window
//! ```

use vm_memory::GuestAddress;

/// 1 KiB, 1 MiB, 1 GiB.
pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// Where the boot GDT is written.
pub const BOOT_GDT_START: u64 = 0x1000;
/// Where the (empty) boot IDT is written.
pub const BOOT_IDT_START: u64 = 0x1100;

/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (one entry per module: the initrd).
pub const PVH_MODLIST_START: u64 = 0x6100;
/// PVH memory map (`hvm_memmap_table_entry` array) and its capacity in bytes.
pub const PVH_MEMMAP_START: u64 = 0x6200;
pub const PVH_MEMMAP_MAX_SIZE: u64 = 0x7000 - PVH_MEMMAP_START;

/// The Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot CPU (the stack occupies 0x8000..0x9000).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;

/// Boot page tables: one PML4, one PDPT and four page directories of 2 MiB pages.
pub const PML4_START: u64 = 0x9000;
pub const PDPT_START: u64 = 0xa000;
pub const PD_START: u64 = 0xb000;
/// Number of page directories (each maps 1 GiB).
pub const PD_COUNT: u64 = 4;

/// The kernel command line and the room reserved for it (including the NUL).
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: u64 = 0x10000;

/// Start of the Extended BIOS Data Area; from here to 1 MiB is reserved in e820.
pub const EBDA_START: u64 = 0x9fc00;
/// The ACPI table area (inside the reserved BIOS area). The RSDP is written first, at the start.
pub const ACPI_START: u64 = 0xe0000;
pub const ACPI_END: u64 = 0x100000;
/// Where the RSDP lives (16-byte aligned, inside the BIOS scan range 0xE0000..0xFFFFF).
pub const RSDP_START: u64 = ACPI_START;

/// Start of high memory: kernels are loaded at or above this address.
pub const HIMEM_START: u64 = 0x100000;

/// The 32-bit MMIO hole [3 GiB, 4 GiB): no RAM here.
pub const MMIO32_HOLE_START: u64 = 3 * GIB;
pub const MMIO32_HOLE_END: u64 = 4 * GIB;
/// A window for device MMIO below 4 GiB (PCI BARs): [3 GiB, 3.5 GiB).
pub const MMIO32_DEVICES_START: u64 = MMIO32_HOLE_START;
pub const MMIO32_DEVICES_SIZE: u64 = 512 * MIB;
/// The 32-bit PCI BAR window: the device window.
pub const PCI_MMIO32_START: u64 = MMIO32_DEVICES_START;
pub const PCI_MMIO32_SIZE: u64 = MMIO32_DEVICES_SIZE;
/// PCI Express ECAM (256 buses × 1 MiB) of the PCI host bridge; reserved in e820.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
pub const PCI_ECAM_SIZE: u64 = 256 * MIB;
/// The I/O APIC (24 pins, GSI base 0).
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const IOAPIC_SIZE: u64 = 0x1000;
pub const IOAPIC_PINS: u32 = 24;
/// The local APICs.
pub const LAPIC_START: u64 = 0xfee0_0000;
pub const LAPIC_SIZE: u64 = MIB;
/// Size of the 64-bit MMIO window placed after the last byte of RAM (see [`mmio64_window`]).
pub const MMIO64_SIZE: u64 = 64 * GIB;

/// Legacy I/O ports and IRQs of the machine.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_COMMAND_PORT: u16 = 0x64;
pub const CMOS_PORT: u16 = 0x70;
/// The ACPI power-management port: FADT sleep control/status register and reset register.
pub const ACPI_PM_PORT: u16 = 0x600;
/// Value written to [`ACPI_PM_PORT`] to reset the machine.
pub const ACPI_RESET_VALUE: u8 = 0x01;
/// SLP_TYP value of the `\_S5_` (soft-off) state.
pub const ACPI_S5_SLP_TYP: u8 = 5;
/// SLP_EN bit in the sleep control register.
pub const ACPI_SLP_EN: u8 = 1 << 5;
/// SCI interrupt number given in the FADT (unused in hardware-reduced mode, but conventional).
pub const ACPI_SCI_IRQ: u16 = 9;

// The boot structures must not overlap each other or the reserved area.
const _: () = assert!(PD_START + PD_COUNT * 0x1000 <= CMDLINE_START);
const _: () = assert!(CMDLINE_START + CMDLINE_MAX_SIZE <= EBDA_START);
const _: () = assert!(PVH_MEMMAP_START + PVH_MEMMAP_MAX_SIZE <= ZERO_PAGE_START);
const _: () = assert!(BOOT_IDT_START + 8 <= PVH_INFO_START);
const _: () = assert!(EBDA_START <= ACPI_START && ACPI_END <= HIMEM_START);

/// e820 memory types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Type {
    Ram = 1,
    Reserved = 2,
    Acpi = 3,
}

/// One entry of the e820 memory map (also used for the PVH memory map).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub type_: E820Type,
}

impl E820Entry {
    /// One past the last byte of the entry (saturating).
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.size)
    }
}

/// The guest RAM regions for `mem_size` bytes of RAM: `[0, min(size, 3 GiB))`, and the rest
/// from 4 GiB. Suitable for `GuestMemoryMmap::from_ranges`. A zero size gives no region.
pub fn ram_regions(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    let low = mem_size.min(MMIO32_HOLE_START);
    let high = mem_size - low;
    let mut regions = Vec::with_capacity(2);
    if low > 0 {
        regions.push((GuestAddress(0), to_usize(low)));
    }
    if high > 0 {
        regions.push((GuestAddress(MMIO32_HOLE_END), to_usize(high)));
    }
    regions
}

/// One past the last byte of RAM below the 32-bit MMIO hole.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO32_HOLE_START)
}

/// One past the last byte of guest RAM (above 4 GiB when RAM crosses the hole).
pub fn ram_end(mem_size: u64) -> u64 {
    if mem_size > MMIO32_HOLE_START {
        MMIO32_HOLE_END.saturating_add(mem_size - MMIO32_HOLE_START)
    } else {
        mem_size
    }
}

/// The 64-bit MMIO window: starts at the first 1 GiB boundary at or after both 4 GiB and the
/// end of RAM, [`MMIO64_SIZE`] bytes long.
pub fn mmio64_window(mem_size: u64) -> (GuestAddress, u64) {
    let start = ram_end(mem_size).max(MMIO32_HOLE_END);
    let start = start.div_ceil(GIB).saturating_mul(GIB);
    (GuestAddress(start), MMIO64_SIZE)
}

/// The e820 map for `mem_size` bytes of RAM: conventional memory below the EBDA as RAM, the
/// EBDA/BIOS area (which holds the ACPI tables) reserved, RAM from 1 MiB to the hole, the PCI
/// ECAM reserved (Linux checks this before trusting the MCFG table), and RAM from 4 GiB. Entries are sorted, non-overlapping and non-empty.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = Vec::with_capacity(5);
    let low_end = low_ram_end(mem_size);
    let mut push = |addr: u64, end: u64, type_: E820Type| {
        if end > addr {
            map.push(E820Entry {
                addr,
                size: end - addr,
                type_,
            });
        }
    };
    push(0, low_end.min(EBDA_START), E820Type::Ram);
    if low_end > EBDA_START {
        push(EBDA_START, HIMEM_START, E820Type::Reserved);
    }
    push(HIMEM_START, low_end, E820Type::Ram);
    push(
        PCI_ECAM_START,
        PCI_ECAM_START + PCI_ECAM_SIZE,
        E820Type::Reserved,
    );
    if mem_size > MMIO32_HOLE_START {
        push(MMIO32_HOLE_END, ram_end(mem_size), E820Type::Ram);
    }
    map
}

fn to_usize(v: u64) -> usize {
    // rampart is x86-64 only: usize is 64 bits wide.
    usize::try_from(v).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_below_hole_is_one_region() {
        // Arrange / Act
        let regions = ram_regions(512 * MIB);
        // Assert
        assert_eq!(regions, vec![(GuestAddress(0), (512 * MIB) as usize)]);
    }

    #[test]
    fn ram_above_three_gib_continues_at_four_gib() {
        let regions = ram_regions(5 * GIB);
        assert_eq!(
            regions,
            vec![
                (GuestAddress(0), (3 * GIB) as usize),
                (GuestAddress(4 * GIB), (2 * GIB) as usize)
            ]
        );
        assert_eq!(ram_end(5 * GIB), 6 * GIB);
    }

    #[test]
    fn ram_of_exactly_three_gib_has_no_high_region() {
        assert_eq!(ram_regions(3 * GIB).len(), 1);
        assert!(ram_regions(0).is_empty());
    }

    #[test]
    fn e820_reserves_bios_area_and_covers_ram() {
        let map = e820_map(256 * MIB);
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: EBDA_START,
                    type_: E820Type::Ram
                },
                E820Entry {
                    addr: EBDA_START,
                    size: HIMEM_START - EBDA_START,
                    type_: E820Type::Reserved
                },
                E820Entry {
                    addr: HIMEM_START,
                    size: 256 * MIB - HIMEM_START,
                    type_: E820Type::Ram
                },
                E820Entry {
                    addr: PCI_ECAM_START,
                    size: PCI_ECAM_SIZE,
                    type_: E820Type::Reserved
                },
            ]
        );
    }

    #[test]
    fn e820_for_ram_above_hole_has_high_entry_and_no_ram_in_hole() {
        let map = e820_map(4 * GIB);
        let last = map.last().copied().unwrap();
        assert_eq!(
            last,
            E820Entry {
                addr: 4 * GIB,
                size: GIB,
                type_: E820Type::Ram
            }
        );
        for e in map.iter().filter(|e| e.type_ == E820Type::Ram) {
            assert!(
                e.end() <= MMIO32_HOLE_START || e.addr >= MMIO32_HOLE_END,
                "{e:?}"
            );
        }
        let ram: u64 = map
            .iter()
            .filter(|e| e.type_ == E820Type::Ram)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, 4 * GIB - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn e820_entries_are_sorted_and_disjoint() {
        for size in [MIB / 2, 2 * MIB, GIB, 3 * GIB, 3 * GIB + 1, 64 * GIB] {
            let map = e820_map(size);
            for pair in map.windows(2) {
                assert!(pair[0].end() <= pair[1].addr, "{size:#x}: {map:?}");
            }
            assert!(map.iter().all(|e| e.size > 0));
        }
    }

    #[test]
    fn acpi_area_is_reserved_and_boot_structures_fit_below_it() {
        let map = e820_map(GIB);
        let reserved = map.iter().find(|e| e.type_ == E820Type::Reserved).unwrap();
        assert!(reserved.addr <= ACPI_START && ACPI_END <= reserved.end());
    }

    #[test]
    fn mmio64_window_starts_after_ram_on_a_gib_boundary() {
        assert_eq!(mmio64_window(GIB).0, GuestAddress(4 * GIB));
        assert_eq!(mmio64_window(5 * GIB + 1).0, GuestAddress(7 * GIB));
    }
}
