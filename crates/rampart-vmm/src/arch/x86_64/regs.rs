//! Accelerator-independent x86-64 register state, used to describe the boot CPU state and to
//! move state between the machine model and an accelerator (`kvm` or `tcg`).

/// A segment register with its hidden descriptor cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    pub base: u64,
    pub limit: u32,
    pub selector: u16,
    /// Descriptor type field (4 bits).
    pub type_: u8,
    pub present: bool,
    pub dpl: u8,
    /// Default operation size (D/B bit).
    pub db: bool,
    /// Code/data (true) or system (false) descriptor (S bit).
    pub s: bool,
    /// 64-bit code segment (L bit).
    pub l: bool,
    /// Granularity (limit in 4 KiB units).
    pub g: bool,
    pub avl: bool,
    pub unusable: bool,
}

/// GDTR / IDTR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DescriptorTable {
    pub base: u64,
    pub limit: u16,
}

/// General-purpose registers, RIP and RFLAGS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GeneralRegs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

/// Segment, descriptor-table and control registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpecialRegs {
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub tr: Segment,
    pub ldt: Segment,
    pub gdt: DescriptorTable,
    pub idt: DescriptorTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub apic_base: u64,
}

/// One model-specific register and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsrEntry {
    pub index: u32,
    pub data: u64,
}

/// The complete state a vCPU starts from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuState {
    pub regs: GeneralRegs,
    pub sregs: SpecialRegs,
    pub msrs: Vec<MsrEntry>,
}
