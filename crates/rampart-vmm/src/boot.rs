//! Loading the guest: kernel, initrd, command line, boot parameters, ACPI tables, and the boot
//! CPU's register state.

use std::fs::File;

use rampart_config::VmConfig;
use thiserror::Error;
use vm_memory::GuestMemoryMmap;

use crate::arch::x86_64::regs::CpuState;

#[derive(Debug, Error)]
pub enum BootError {
    #[error("{0}")]
    Loader(String),
}

/// Loads everything the guest needs into `mem` and returns the boot CPU's state.
pub fn prepare(
    _mem: &GuestMemoryMmap,
    _config: &VmConfig,
    _kernel: &mut File,
    _initrd: Option<&mut File>,
) -> Result<CpuState, BootError> {
    Err(BootError::Loader("kernel loading is not wired yet".into()))
}
