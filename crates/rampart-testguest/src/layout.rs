//! Guest-physical layout shared by every test guest image.
//!
//! One loadable segment starts at [`LOAD_ADDR`]; everything the guest needs (code, GDT, page
//! tables, stack) lives inside it, so the guest touches no memory that the loader did not
//! reserve for it and runs in any guest with at least 2 MiB of RAM.
//!
//! ```text
//! 0x100000  32-bit PVH entry stub          (STUB32_ADDR, at most STUB32_MAX bytes)
//! 0x100800  GDT (4 descriptors) + GDTR     (GDT_ADDR, GDTR_ADDR)
//! 0x101000  64-bit code and its strings     (CODE64_ADDR, at most CODE64_MAX bytes)
//! 0x104000  PML4                            (zero-filled, not in the file)
//! 0x105000  PDPT (4 entries: 0-4 GiB)
//! 0x106000  4 page directories of 2 MiB pages, identity map of 0-4 GiB
//! 0x10a000  stack, grows down from STACK_TOP = 0x10c000
//! ```

/// Guest-physical address of the single loadable segment (and of the PVH entry point).
pub const LOAD_ADDR: u64 = 0x10_0000;
/// The 32-bit PVH entry point: first byte of the segment.
pub const STUB32_ADDR: u64 = LOAD_ADDR;
/// Room reserved for the 32-bit stub.
pub const STUB32_MAX: usize = 0x800;
/// The GDT: null, 64-bit code (0x08), flat data (0x10), 32-bit code (0x18).
pub const GDT_ADDR: u64 = LOAD_ADDR + 0x800;
/// Number of GDT descriptors.
pub const GDT_ENTRIES: usize = 4;
/// The 6-byte GDTR image (limit, 32-bit base) loaded by the 32-bit stub.
pub const GDTR_ADDR: u64 = GDT_ADDR + (GDT_ENTRIES as u64) * 8;
/// Selector of the 64-bit code segment.
pub const CODE64_SELECTOR: u16 = 0x08;
/// Selector of the flat data segment.
pub const DATA_SELECTOR: u16 = 0x10;
/// Start of the 64-bit code.
pub const CODE64_ADDR: u64 = LOAD_ADDR + 0x1000;
/// Room reserved for the 64-bit code and its strings.
pub const CODE64_MAX: usize = 0x3000;
/// The PML4 (one entry used).
pub const PML4_ADDR: u64 = LOAD_ADDR + 0x4000;
/// The page-directory-pointer table (four entries used).
pub const PDPT_ADDR: u64 = LOAD_ADDR + 0x5000;
/// The first of four consecutive page directories of 2 MiB pages.
pub const PD_ADDR: u64 = LOAD_ADDR + 0x6000;
/// Number of page directories (each maps 1 GiB).
pub const PD_COUNT: u64 = 4;
/// Initial stack pointer of the 64-bit code (the stack grows down from here).
pub const STACK_TOP: u64 = LOAD_ADDR + 0xc000;
/// Bytes of guest memory the segment occupies (file part plus zero-filled part).
pub const SEGMENT_MEM_SIZE: u64 = STACK_TOP - LOAD_ADDR;
/// Bytes of the segment that are stored in the file (stub, GDT and 64-bit code).
pub const SEGMENT_FILE_SIZE: u64 = PML4_ADDR - LOAD_ADDR;
/// Bytes of the page-table area the stub clears before filling it.
pub const PAGE_TABLE_BYTES: u64 = STACK_TOP - PML4_ADDR;

/// An unassigned guest-physical address in the 32-bit PCI hole, used by the `mmio` and
/// `emulation-failure` programs. Nothing is mapped here in rampart or in QEMU's microvm.
pub const UNASSIGNED_MMIO_ADDR: u64 = 0xd000_0000;

/// COM1's I/O base.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's line status register.
pub const COM1_LSR_PORT: u16 = COM1_PORT + 5;
/// The i8042 command port; writing [`I8042_RESET_CMD`] pulses the CPU reset line.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// The i8042 "pulse output line 0" command: resets the machine.
pub const I8042_RESET_CMD: u8 = 0xfe;
/// CMOS/RTC index port.
pub const CMOS_INDEX_PORT: u16 = 0x70;
/// CMOS/RTC data port.
pub const CMOS_DATA_PORT: u16 = 0x71;
/// rampart's ACPI sleep-control port.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
/// The S5 (soft-off) value for the sleep-control register: SLP_TYP=5 in bits 2-4, SLP_EN bit 5.
pub const ACPI_S5_VALUE: u8 = (5 << 2) | (1 << 5);

/// QEMU microvm's ACPI generic event device (hardware-reduced ACPI) register block: sleep
/// control at +0, reset at +2. microvm has no i8042 and no port 0x600, so the guests also use
/// these registers; in rampart (and on a PC) the addresses are unassigned and writes are dropped.
pub const MICROVM_GED_REGS_ADDR: u64 = 0xfea0_0200;
/// The GED reset register.
pub const MICROVM_GED_RESET_ADDR: u64 = MICROVM_GED_REGS_ADDR + 2;
/// The value that resets the machine when written to [`MICROVM_GED_RESET_ADDR`].
pub const MICROVM_GED_RESET_VALUE: u8 = 0x42;
