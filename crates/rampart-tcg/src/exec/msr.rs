//! Model-specific registers (an allow-list: anything else is #GP) and the baseline CPUID model.

use crate::cpu::{efer, Cpu, SegReg};
use crate::exception::{Exception, Res};
use crate::mmu::{is_canonical, PHYS_ADDR_BITS};

/// MSR indices the model knows.
pub mod index {
    /// Time-stamp counter.
    pub const TSC: u32 = 0x10;
    /// Local APIC base.
    pub const APIC_BASE: u32 = 0x1b;
    /// Microcode revision (reads as 0).
    pub const BIOS_SIGN_ID: u32 = 0x8b;
    /// MTRR capabilities (read-only).
    pub const MTRRCAP: u32 = 0xfe;
    /// SYSENTER CS.
    pub const SYSENTER_CS: u32 = 0x174;
    /// SYSENTER ESP.
    pub const SYSENTER_ESP: u32 = 0x175;
    /// SYSENTER EIP.
    pub const SYSENTER_EIP: u32 = 0x176;
    /// Page attribute table.
    pub const PAT: u32 = 0x277;
    /// MTRR default type.
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    /// EFER.
    pub const EFER: u32 = 0xc000_0080;
    /// SYSCALL target selectors.
    pub const STAR: u32 = 0xc000_0081;
    /// SYSCALL 64-bit target.
    pub const LSTAR: u32 = 0xc000_0082;
    /// SYSCALL compat target.
    pub const CSTAR: u32 = 0xc000_0083;
    /// SYSCALL RFLAGS mask.
    pub const SFMASK: u32 = 0xc000_0084;
    /// FS base.
    pub const FS_BASE: u32 = 0xc000_0100;
    /// GS base.
    pub const GS_BASE: u32 = 0xc000_0101;
    /// SWAPGS shadow.
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
}

/// Plain storage MSRs: (index, reset value).
const STORED: &[(u32, u64)] = &[
    (index::APIC_BASE, 0xfee0_0900),
    (index::SYSENTER_CS, 0),
    (index::SYSENTER_ESP, 0),
    (index::SYSENTER_EIP, 0),
    (index::PAT, 0x0007_0406_0007_0406),
    (index::MTRR_DEF_TYPE, 0),
    (0x200, 0),
    (0x201, 0),
    (0x202, 0),
    (0x203, 0),
    (0x204, 0),
    (0x205, 0),
    (0x206, 0),
    (0x207, 0),
    (0x208, 0),
    (0x209, 0),
    (0x20a, 0),
    (0x20b, 0),
    (0x20c, 0),
    (0x20d, 0),
    (0x20e, 0),
    (0x20f, 0),
    (0x250, 0),
    (0x258, 0),
    (0x259, 0),
    (0x268, 0),
    (0x269, 0),
    (0x26a, 0),
    (0x26b, 0),
    (0x26c, 0),
    (0x26d, 0),
    (0x26e, 0),
    (0x26f, 0),
    (index::STAR, 0),
    (index::LSTAR, 0),
    (index::CSTAR, 0),
    (index::SFMASK, 0),
    (index::KERNEL_GS_BASE, 0),
];

/// Values of the allow-listed storage MSRs (fixed size: a guest cannot grow it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsrFile {
    values: [u64; STORED.len()],
}

impl Default for MsrFile {
    fn default() -> Self {
        let mut values = [0u64; STORED.len()];
        for (v, (_, reset)) in values.iter_mut().zip(STORED) {
            *v = *reset;
        }
        Self { values }
    }
}

impl MsrFile {
    fn slot(idx: u32) -> Option<usize> {
        STORED.iter().position(|(i, _)| *i == idx)
    }

    /// Value of a storage MSR.
    pub fn get(&self, idx: u32) -> Option<u64> {
        Self::slot(idx).map(|s| self.values[s])
    }

    /// Set a storage MSR; false if the index is not one of them.
    pub fn set(&mut self, idx: u32, v: u64) -> bool {
        match Self::slot(idx) {
            Some(s) => {
                self.values[s] = v;
                true
            }
            None => false,
        }
    }
}

impl Cpu {
    /// The time-stamp counter as the guest sees it.
    pub fn read_tsc(&mut self) -> u64 {
        match self.tsc_source.as_mut() {
            Some(source) => source().wrapping_add(self.tsc_offset),
            None => self.tsc,
        }
    }

    /// A guest write to the time-stamp counter.
    pub fn write_tsc(&mut self, v: u64) {
        match self.tsc_source.as_mut() {
            Some(source) => self.tsc_offset = v.wrapping_sub(source()),
            None => self.tsc = v,
        }
    }
}

/// MSRs the embedder implements (local APIC, kvmclock, ...): consulted before the CPU's own.
pub trait MsrHook: Send {
    /// `None`: not an MSR of the hook; `Some(Err(()))`: #GP.
    fn read(&mut self, idx: u32) -> Option<Result<u64, ()>>;
    /// `None`: not an MSR of the hook; `Some(Err(()))`: #GP.
    fn write(&mut self, idx: u32, value: u64) -> Option<Result<(), ()>>;
}

impl Cpu {
    /// RDMSR semantics (without the CPL check).
    pub fn read_msr(&mut self, idx: u32) -> Res<u64> {
        if let Some(hook) = self.msr_hook.as_mut() {
            if let Some(r) = hook.read(idx) {
                return r.map_err(|()| Exception::gp(0).into());
            }
        }
        Ok(match idx {
            index::TSC => self.read_tsc(),
            index::BIOS_SIGN_ID => 0,
            index::MTRRCAP => 0x508,
            index::EFER => self.efer,
            index::FS_BASE => self.seg[SegReg::Fs as usize].base,
            index::GS_BASE => self.seg[SegReg::Gs as usize].base,
            _ => self.msr.get(idx).ok_or(Exception::gp(0))?,
        })
    }

    /// WRMSR semantics (without the CPL check): reserved bits and non-canonical addresses #GP.
    pub fn write_msr(&mut self, idx: u32, v: u64) -> Res<()> {
        if let Some(hook) = self.msr_hook.as_mut() {
            if let Some(r) = hook.write(idx, v) {
                return r.map_err(|()| Exception::gp(0).into());
            }
        }
        let canonical_needed = matches!(
            idx,
            index::FS_BASE
                | index::GS_BASE
                | index::KERNEL_GS_BASE
                | index::LSTAR
                | index::CSTAR
                | index::SYSENTER_ESP
                | index::SYSENTER_EIP
        );
        if canonical_needed && !is_canonical(v) {
            return Err(Exception::gp(0).into());
        }
        match idx {
            index::TSC => self.write_tsc(v),
            index::BIOS_SIGN_ID => {}
            index::MTRRCAP => return Err(Exception::gp(0).into()),
            index::EFER => {
                if v & !(efer::WRITABLE | efer::LMA) != 0 {
                    return Err(Exception::gp(0).into());
                }
                let paging = self.cr0 & crate::cpu::cr0::PG != 0;
                if paging && (v ^ self.efer) & efer::LME != 0 {
                    return Err(Exception::gp(0).into());
                }
                // LMA is read-only: it follows CR0.PG && EFER.LME.
                self.efer = (v & efer::WRITABLE) | (self.efer & efer::LMA);
                self.tlb.flush_all();
            }
            index::FS_BASE => self.seg[SegReg::Fs as usize].base = v,
            index::GS_BASE => self.seg[SegReg::Gs as usize].base = v,
            index::APIC_BASE => {
                let reserved = !((1u64 << PHYS_ADDR_BITS) - 1) | 0x2ff;
                if v & reserved != 0 {
                    return Err(Exception::gp(0).into());
                }
                self.msr.set(idx, v);
            }
            index::SFMASK => {
                self.msr.set(idx, v & 0xffff_ffff);
            }
            _ => {
                if !self.msr.set(idx, v) {
                    return Err(Exception::gp(0).into());
                }
            }
        }
        Ok(())
    }
}

/// CPUID of the baseline model the test guest was censused with (`qemu64` minus SSE3, CX16,
/// LAHF_LM, SVM, x2APIC, hypervisor, ABM, SSE4A, POPCNT): FPU, TSC, MSR, PAE, CX8, APIC, SEP, MTRR,
/// PGE, CMOV, PAT, CLFLUSH, MMX, FXSR, SSE, SSE2, SYSCALL, NX, LM. APIC ID 0; an embedder with
/// several CPUs wraps this and patches EBX[31:24] of leaf 1. Beyond qemu64, in leaf 7: FSGSBASE,
/// and ERMS, which tells a kernel that `rep movsb`/`rep stosb` is its fastest copy and fill --
/// true here, where they move a page at a time (`Cpu::bulk`) while an unrolled loop of MOVs runs
/// instruction by instruction.
pub fn baseline_cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    const EDX1: u32 = (1 << 0) // FPU
        | (1 << 4) // TSC
        | (1 << 5) // MSR
        | (1 << 6) // PAE
        | (1 << 8) // CX8
        | (1 << 9) // APIC
        | (1 << 11) // SEP
        | (1 << 12) // MTRR
        | (1 << 13) // PGE
        | (1 << 15) // CMOV
        | (1 << 16) // PAT
        | (1 << 19) // CLFLUSH
        | (1 << 23) // MMX
        | (1 << 24) // FXSR
        | (1 << 25) // SSE
        | (1 << 26); // SSE2
    let text = |s: &[u8; 16]| -> [u32; 4] {
        let w = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
        [w(0), w(4), w(8), w(12)]
    };
    match leaf {
        // "AuthenticAMD" as qemu64 reports it (EBX, EDX, ECX order).
        0 => [7, 0x6874_7541, 0x444d_4163, 0x6974_6e65],
        1 => [0x000f_06b1, (1 << 16) | (8 << 8), 0, EDX1],
        // Subleaf 0 (the only one, EAX = 0): EBX bit 0, FSGSBASE; bit 9, ERMS.
        7 if subleaf == 0 => [0, 1 | (1 << 9), 0, 0],
        0x8000_0000 => [0x8000_0008, 0x6874_7541, 0x444d_4163, 0x6974_6e65],
        0x8000_0001 => [
            0x000f_06b1,
            0,
            0,
            (1 << 11) | (1 << 20) | (1 << 29) | (EDX1 & 0x0183_f3ff),
        ],
        0x8000_0002 => text(b"rampart software"),
        0x8000_0003 => text(b" x86-64 CPU\0\0\0\0\0"),
        0x8000_0004 => [0; 4],
        0x8000_0008 => [(48 << 8) | PHYS_ADDR_BITS, 0, 0, 0],
        _ => [0; 4],
    }
}
