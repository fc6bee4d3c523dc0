//! Loading the guest: kernel, initrd, command line, boot parameters, ACPI tables, and the boot
//! CPU's register state. The pieces live in `arch::x86_64`; this module puts them in order.

use std::fs::File;

use rampart_config::VmConfig;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::cpu::{self, CpuSetupError};
use crate::arch::x86_64::layout::{CMDLINE_MAX_SIZE, CMDLINE_START};
use crate::arch::x86_64::loader::{self, BootProtocol, LoaderError};
use crate::arch::x86_64::regs::CpuState;

#[derive(Debug, Error)]
pub enum BootError {
    #[error("-kernel: {0}")]
    Kernel(#[source] LoaderError),
    #[error("-initrd: {0}")]
    Initrd(#[source] LoaderError),
    #[error("-append: the command line is {len} bytes, this kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("writing the command line into guest memory: {0}")]
    Cmdline(vm_memory::GuestMemoryError),
    #[error("boot CPU set-up: {0}")]
    Cpu(#[from] CpuSetupError),
}

/// What the loaded guest looks like, for the boot-parameter and ACPI builders.
#[derive(Debug, Clone, Copy)]
pub struct LoadedGuest {
    pub kernel: loader::KernelEntry,
    pub initrd: Option<(GuestAddress, u64)>,
    pub cmdline_len: usize,
}

/// Loads everything the guest needs into `mem` and returns the boot CPU's state.
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
    let cmdline = config.boot.cmdline.as_bytes();
    let max = kernel.cmdline_limit().min(CMDLINE_MAX_SIZE as usize - 1);
    if cmdline.len() > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut with_nul = cmdline.to_vec();
    with_nul.push(0);
    mem.write_slice(&with_nul, GuestAddress(CMDLINE_START))
        .map_err(BootError::Cmdline)?;
    let guest = LoadedGuest {
        kernel,
        initrd,
        cmdline_len: cmdline.len(),
    };
    cpu::write_gdt_idt(mem)?;
    let state = match guest.kernel.protocol {
        BootProtocol::Linux64 => {
            let cr3 = cpu::write_page_tables(mem)?;
            cpu::linux64_boot_state(guest.kernel.entry, cr3)
        }
        BootProtocol::Pvh => cpu::pvh_boot_state(
            guest.kernel.entry,
            GuestAddress(crate::arch::x86_64::layout::PVH_INFO_START),
        ),
    };
    Ok(state)
}
