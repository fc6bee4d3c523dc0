//! x86-64 machine model: memory layout, e820, kernel loading, boot parameters, ACPI, CPUID.

pub mod regs;
