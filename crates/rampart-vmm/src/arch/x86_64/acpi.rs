//! Hardware-reduced ACPI tables: RSDP (v2) → XSDT → FADT (→ DSDT) and MADT, built with the
//! `acpi_tables` crate and written into the ACPI area of guest memory
//! ([`ACPI_START`]..[`ACPI_END`]).
//!
//! - FADT: HW_REDUCED_ACPI; the sleep control/status registers and the reset register are the
//!   8-bit I/O port [`ACPI_PM_PORT`] (write `SLP_TYP=5 << 2 | SLP_EN` to power off, `0x01` to
//!   reset).
//! - MADT: one (x2)APIC entry per present vCPU with the [`apic_id`] of the topology, the I/O
//!   APIC, ISA overrides IRQ0 → GSI2 and IRQ9 (level, active high), LINT1 as NMI.
//! - DSDT: `\_S5_`, `\_SB.COM1` (PNP0501 with its port and IRQ), `\_SB.PWRB` (PNP0C0C), and the
//!   PCI host bridge `\_SB.PCI0` with `\_SB.MRES` (see `acpi_pci`), and the Generic Event
//!   Device that presses the power button (see `acpi_ged`).
//! - MCFG: the PCI ECAM region.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use rampart_config::SmpConfig;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::layout::{
    ACPI_END, ACPI_PM_PORT, ACPI_RESET_VALUE, ACPI_S5_SLP_TYP, ACPI_SCI_IRQ, COM1_IRQ, COM1_PORT,
    IOAPIC_START, LAPIC_START, RSDP_START,
};
use super::topology::apic_id;

pub use super::layout::ACPI_START;

/// OEM identification in every table.
pub const OEM_ID: [u8; 6] = *b"RMPART";
const OEM_REVISION: u32 = 1;

/// IAPC_BOOT_ARCH: legacy devices (COM1, CMOS) present, 8042 present, no VGA.
const IAPC_LEGACY_DEVICES: u16 = 1 << 0;
const IAPC_8042: u16 = 1 << 1;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;

/// MADT structure types.
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_INTERRUPT_OVERRIDE: u8 = 2;
const MADT_LOCAL_APIC_NMI: u8 = 4;
const MADT_LOCAL_X2APIC: u8 = 9;
const MADT_LOCAL_X2APIC_NMI: u8 = 0xa;
/// MADT local APIC flags: enabled.
const MADT_CPU_ENABLED: u32 = 1;
/// MPS INTI flags: active high (01) and edge (01 << 2) / level (11 << 2).
const INTI_HIGH_EDGE: u16 = 0x5;
const INTI_HIGH_LEVEL: u16 = 0xd;
/// Highest xAPIC ID a Processor Local APIC entry can hold (0xff means "all").
const MAX_XAPIC_ID: u32 = 0xfe;

/// Errors building or writing ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("the ACPI {table} table ({len} bytes at {addr:#x}) does not fit in the ACPI area ending at {end:#x}")]
    TooLarge {
        table: &'static str,
        addr: u64,
        len: usize,
        end: u64,
    },
    #[error("cannot write the ACPI {table} table at {addr:#x}: {source}")]
    Write {
        table: &'static str,
        addr: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("no vCPU: the MADT needs at least one processor")]
    NoCpu,
}

/// Places tables one after the other in the ACPI area, 16-byte aligned, with bounds checks.
struct Writer<'a> {
    mem: &'a GuestMemoryMmap,
    next: u64,
}

impl Writer<'_> {
    fn write(&mut self, table: &'static str, bytes: &[u8]) -> Result<u64, AcpiError> {
        let addr = self.next;
        let end = addr.saturating_add(bytes.len() as u64);
        if end > ACPI_END {
            return Err(AcpiError::TooLarge {
                table,
                addr,
                len: bytes.len(),
                end: ACPI_END,
            });
        }
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .map_err(|source| AcpiError::Write {
                table,
                addr,
                source,
            })?;
        self.next = end.div_ceil(16) * 16;
        Ok(addr)
    }
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    table.to_aml_bytes(&mut v);
    v
}

/// Builds the DSDT; `mmio64` is the 64-bit PCI window (start, size).
pub fn build_dsdt(mmio64: (u64, u64)) -> Vec<u8> {
    // Each statement serialises its whole object tree while the temporaries are alive.
    let mut body = Vec::new();
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&ACPI_S5_SLP_TYP, &ACPI_S5_SLP_TYP, &0u8, &0u8]),
    )
    .to_aml_bytes(&mut body);
    aml::Scope::new(
        "_SB_".into(),
        vec![
            &aml::Device::new(
                "COM1".into(),
                vec![
                    &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
                    &aml::Name::new("_UID".into(), &aml::ZERO),
                    &aml::Name::new(
                        "_CRS".into(),
                        &aml::ResourceTemplate::new(vec![
                            &aml::IO::new(COM1_PORT, COM1_PORT, 1, 8),
                            &aml::Interrupt::new(true, true, false, false, COM1_IRQ),
                        ]),
                    ),
                ],
            ),
            &aml::Device::new(
                "PWRB".into(),
                vec![
                    &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0C")),
                    &aml::Name::new("_UID".into(), &aml::ZERO),
                ],
            ),
        ],
    )
    .to_aml_bytes(&mut body);
    body.extend(super::acpi_pci::dsdt_aml(mmio64));
    super::acpi_ged::append_ged(&mut body);
    let mut dsdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, *b"RMPTDSDT", OEM_REVISION);
    dsdt.append_slice(&body);
    dsdt.as_slice().to_vec()
}

/// Builds the FADT pointing at the DSDT at `dsdt_addr`.
pub fn build_fadt(dsdt_addr: u64) -> Vec<u8> {
    let pm = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(ACPI_PM_PORT),
    );
    let mut fadt = FADTBuilder::new(OEM_ID, *b"RMPTFACP", OEM_REVISION).dsdt_64(dsdt_addr);
    fadt.flags = (Flags::HwReducedAcpi as u32
        | Flags::ResetRegSup as u32
        | Flags::PwrButton as u32
        | Flags::SlpButton as u32)
        .into();
    fadt.sci_int = ACPI_SCI_IRQ.into();
    fadt.iapc_boot_arch = (IAPC_LEGACY_DEVICES | IAPC_8042 | IAPC_VGA_NOT_PRESENT).into();
    fadt.reset_reg = pm;
    fadt.reset_value = ACPI_RESET_VALUE;
    fadt.sleep_control_reg = pm;
    fadt.sleep_status_reg = pm;
    to_bytes(&fadt.finalize())
}

/// Builds the MADT for the present vCPUs of `smp`.
pub fn build_madt(smp: &SmpConfig) -> Result<Vec<u8>, AcpiError> {
    if smp.cpus == 0 {
        return Err(AcpiError::NoCpu);
    }
    let mut madt = Sdt::new(*b"APIC", 44, 5, OEM_ID, *b"RMPTAPIC", OEM_REVISION);
    madt.write_u32(36, LAPIC_START as u32);
    madt.write_u32(40, 0); // flags: no PCAT_COMPAT (no 8259 PICs)
    let mut max_id = 0;
    let mut any_x2apic = false;
    for cpu in 0..smp.cpus {
        let id = apic_id(cpu, smp);
        max_id = max_id.max(id);
        if id <= MAX_XAPIC_ID && cpu <= 0xfe {
            let mut e = vec![MADT_LOCAL_APIC, 8, cpu as u8, id as u8];
            e.extend(MADT_CPU_ENABLED.to_le_bytes());
            madt.append_slice(&e);
        } else {
            any_x2apic = true;
            let mut e = vec![MADT_LOCAL_X2APIC, 16, 0, 0];
            e.extend(id.to_le_bytes());
            e.extend(MADT_CPU_ENABLED.to_le_bytes());
            e.extend(cpu.to_le_bytes());
            madt.append_slice(&e);
        }
    }
    // The I/O APIC takes the ID after the CPUs', or the first 8-bit ID no CPU uses.
    let ioapic_id = if max_id < MAX_XAPIC_ID {
        max_id + 1
    } else {
        let used: Vec<u32> = (0..smp.cpus).map(|cpu| apic_id(cpu, smp)).collect();
        (0..=MAX_XAPIC_ID)
            .find(|id| !used.contains(id))
            .unwrap_or(0)
    } as u8;
    let mut e = vec![MADT_IO_APIC, 12, ioapic_id, 0];
    e.extend((IOAPIC_START as u32).to_le_bytes());
    e.extend(0u32.to_le_bytes()); // GSI base
    madt.append_slice(&e);
    for (irq, gsi, flags) in [(0u8, 2u32, INTI_HIGH_EDGE), (9, 9, INTI_HIGH_LEVEL)] {
        let mut e = vec![MADT_INTERRUPT_OVERRIDE, 10, 0, irq];
        e.extend(gsi.to_le_bytes());
        e.extend(flags.to_le_bytes());
        madt.append_slice(&e);
    }
    // LINT1 of every processor is the NMI input.
    let mut e = vec![MADT_LOCAL_APIC_NMI, 6, 0xff];
    e.extend(0u16.to_le_bytes());
    e.push(1);
    madt.append_slice(&e);
    if any_x2apic {
        let mut e = vec![MADT_LOCAL_X2APIC_NMI, 12];
        e.extend(0u16.to_le_bytes());
        e.extend(u32::MAX.to_le_bytes());
        e.extend([1, 0, 0, 0]);
        madt.append_slice(&e);
    }
    Ok(madt.as_slice().to_vec())
}

/// Builds every table for `smp` and writes them into the ACPI area of `mem`.
/// Returns the RSDP's address (for boot_params.acpi_rsdp_addr / PVH rsdp_paddr); the RSDP is
/// at [`RSDP_START`], inside the range a guest scans (0xE0000..0xFFFFF).
pub fn create_acpi_tables(
    mem: &GuestMemoryMmap,
    smp: &SmpConfig,
) -> Result<GuestAddress, AcpiError> {
    let mut w = Writer {
        mem,
        next: (RSDP_START + Rsdp::len() as u64).div_ceil(16) * 16,
    };
    // The RAM size decides where the 64-bit PCI window starts.
    let mem_size: u64 = mem.iter().map(|r| r.len()).sum();
    let (mmio64, mmio64_size) = super::layout::mmio64_window(mem_size);
    let dsdt = w.write("DSDT", &build_dsdt((mmio64.0, mmio64_size)))?;
    let fadt = w.write("FADT", &build_fadt(dsdt))?;
    let madt = w.write("MADT", &build_madt(smp)?)?;
    let mcfg = w.write("MCFG", &super::acpi_pci::build_mcfg(OEM_ID, OEM_REVISION))?;
    let mut xsdt = XSDT::new(OEM_ID, *b"RMPTXSDT", OEM_REVISION);
    xsdt.add_entry(fadt);
    xsdt.add_entry(madt);
    xsdt.add_entry(mcfg);
    let xsdt = w.write("XSDT", &to_bytes(&xsdt))?;
    let rsdp = Rsdp::new(OEM_ID, xsdt);
    mem.write_slice(&to_bytes(&rsdp), GuestAddress(RSDP_START))
        .map_err(|source| AcpiError::Write {
            table: "RSDP",
            addr: RSDP_START,
            source,
        })?;
    tracing::debug!(
        rsdp = RSDP_START,
        xsdt,
        fadt,
        madt,
        dsdt,
        "ACPI tables written"
    );
    Ok(GuestAddress(RSDP_START))
}

#[cfg(test)]
#[path = "acpi_tests.rs"]
mod tests;
