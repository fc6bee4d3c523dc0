//! Loading the guest: kernel, initrd, command line, boot parameters, ACPI tables, and the boot
//! CPU's register state. The pieces live in `arch::x86_64`; this module puts them in order.

use std::fs::File;

use rampart_config::VmConfig;
use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::acpi::{self, AcpiError};
use crate::arch::x86_64::bootparams::{self, BootInfo, BootParamsError};
use crate::arch::x86_64::cpu::{self, CpuSetupError};
use crate::arch::x86_64::layout::PVH_INFO_START;
use crate::arch::x86_64::loader::{self, BootProtocol, LoaderError};
use crate::arch::x86_64::regs::CpuState;

#[derive(Debug, Error)]
pub enum BootError {
    #[error("-kernel: {0}")]
    Kernel(LoaderError),
    #[error("-initrd: {0}")]
    Initrd(LoaderError),
    #[error("-append: {0}")]
    Cmdline(BootParamsError),
    #[error("boot parameters: {0}")]
    BootParams(BootParamsError),
    #[error("ACPI tables: {0}")]
    Acpi(#[from] AcpiError),
    #[error("boot CPU set-up: {0}")]
    Cpu(#[from] CpuSetupError),
    #[error("writing the reset vector: {0}")]
    ResetVector(vm_memory::GuestMemoryError),
}

/// Where an x86 CPU starts after reset (F000:FFF0).
pub const RESET_VECTOR: u64 = 0xf_fff0;

/// The firmware's reset vector: there is no firmware, but a guest that reboots "through the
/// BIOS" jumps here in real mode (Linux does when its other methods are not chosen: with
/// hardware-reduced ACPI and no EFI it tries EFI, then the BIOS). The code pulls the i8042
/// reset line: `mov al, 0xfe; out 0x64, al; hlt; jmp $-1`.
const RESET_STUB: [u8; 7] = [0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd];

fn write_reset_vector(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    use vm_memory::Bytes;
    mem.write_slice(&RESET_STUB, GuestAddress(RESET_VECTOR))
        .map_err(BootError::ResetVector)
}

/// Loads everything the guest needs into `mem` (kernel, initrd, command line, ACPI tables,
/// boot_params or PVH start_info, GDT, page tables) and returns the boot CPU's state.
pub fn prepare(
    mem: &GuestMemoryMmap,
    config: &VmConfig,
    kernel_file: &mut File,
    initrd_file: Option<&mut File>,
) -> Result<CpuState, BootError> {
    let kernel = loader::load_kernel(mem, kernel_file).map_err(BootError::Kernel)?;
    let initrd = match initrd_file {
        Some(f) => Some(loader::load_initrd(mem, f, &kernel).map_err(BootError::Initrd)?),
        None => None,
    };
    let cmdline_len = bootparams::write_cmdline(mem, &config.boot.cmdline, &kernel)
        .map_err(BootError::Cmdline)?;
    let rsdp = acpi::create_acpi_tables(mem, &config.smp)?;
    let info = BootInfo {
        cmdline_len,
        initrd,
        rsdp: Some(rsdp),
        mem_size: config.memory_bytes,
    };
    let start_info =
        bootparams::write_boot_info(mem, &kernel, &info).map_err(BootError::BootParams)?;
    write_reset_vector(mem)?;
    cpu::write_gdt_idt(mem)?;
    let state = match kernel.protocol {
        BootProtocol::Linux64 => {
            let cr3 = cpu::write_page_tables(mem)?;
            cpu::linux64_boot_state(kernel.entry, cr3)
        }
        BootProtocol::Pvh => cpu::pvh_boot_state(
            kernel.entry,
            start_info.unwrap_or(GuestAddress(PVH_INFO_START)),
        ),
    };
    Ok(state)
}
