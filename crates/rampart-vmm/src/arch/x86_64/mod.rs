//! x86-64 machine model: memory layout, e820, kernel loading, boot parameters, ACPI, CPUID.

pub mod acpi;
pub mod acpi_ged;
pub mod acpi_pci;
pub mod bootparams;
pub mod bzimage;
pub mod cpu;
pub mod cpuid;
pub mod decompress;
pub mod layout;
pub mod loader;
pub mod regs;
pub mod topology;
