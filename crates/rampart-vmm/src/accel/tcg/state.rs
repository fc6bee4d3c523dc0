//! Register state between the machine model's [`CpuState`] and the software CPU.

use rampart_tcg::cpu::{attr, DescriptorTable as TcgTable};
use rampart_tcg::flags::Flags;
use rampart_tcg::{Cpu, SegReg, Segment as TcgSegment};

use crate::arch::x86_64::regs::{CpuState, DescriptorTable, GeneralRegs, Segment, SpecialRegs};

fn to_tcg_segment(s: &Segment) -> TcgSegment {
    let mut a = u16::from(s.type_ & 0xf);
    if s.s {
        a |= attr::S;
    }
    a |= u16::from(s.dpl & 3) << attr::DPL_SHIFT;
    if s.present && !s.unusable {
        a |= attr::P;
    }
    if s.avl {
        a |= attr::AVL;
    }
    if s.l {
        a |= attr::L;
    }
    if s.db {
        a |= attr::DB;
    }
    if s.g {
        a |= attr::G;
    }
    TcgSegment {
        selector: s.selector,
        base: s.base,
        limit: s.limit,
        attr: a,
    }
}

fn from_tcg_segment(s: &TcgSegment) -> Segment {
    Segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: (s.attr & 0xf) as u8,
        present: s.attr & attr::P != 0,
        dpl: s.dpl(),
        db: s.attr & attr::DB != 0,
        s: s.attr & attr::S != 0,
        l: s.attr & attr::L != 0,
        g: s.attr & attr::G != 0,
        avl: s.attr & attr::AVL != 0,
        unusable: s.attr & attr::P == 0,
    }
}

/// Loads general and special registers (not MSRs) into `cpu`.
pub fn load(cpu: &mut Cpu, state: &CpuState) {
    let r = &state.regs;
    cpu.gpr = [
        r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15,
    ];
    cpu.rip = r.rip;
    cpu.flags = Flags::from_bits(r.rflags);
    let s = &state.sregs;
    cpu.seg[SegReg::Es as usize] = to_tcg_segment(&s.es);
    cpu.seg[SegReg::Cs as usize] = to_tcg_segment(&s.cs);
    cpu.seg[SegReg::Ss as usize] = to_tcg_segment(&s.ss);
    cpu.seg[SegReg::Ds as usize] = to_tcg_segment(&s.ds);
    cpu.seg[SegReg::Fs as usize] = to_tcg_segment(&s.fs);
    cpu.seg[SegReg::Gs as usize] = to_tcg_segment(&s.gs);
    cpu.tr = to_tcg_segment(&s.tr);
    cpu.ldtr = to_tcg_segment(&s.ldt);
    cpu.gdtr = TcgTable {
        base: s.gdt.base,
        limit: s.gdt.limit,
    };
    cpu.idtr = TcgTable {
        base: s.idt.base,
        limit: s.idt.limit,
    };
    cpu.cr0 = s.cr0;
    cpu.cr2 = s.cr2;
    cpu.cr3 = s.cr3;
    cpu.cr4 = s.cr4;
    cpu.cr8 = s.cr8;
    cpu.efer = s.efer;
    cpu.flush_tlb();
}

/// Reads general and special registers from `cpu`.
pub fn save(cpu: &Cpu) -> CpuState {
    let g = &cpu.gpr;
    CpuState {
        regs: GeneralRegs {
            rax: g[0],
            rcx: g[1],
            rdx: g[2],
            rbx: g[3],
            rsp: g[4],
            rbp: g[5],
            rsi: g[6],
            rdi: g[7],
            r8: g[8],
            r9: g[9],
            r10: g[10],
            r11: g[11],
            r12: g[12],
            r13: g[13],
            r14: g[14],
            r15: g[15],
            rip: cpu.rip,
            rflags: cpu.flags.bits(),
        },
        sregs: SpecialRegs {
            es: from_tcg_segment(&cpu.seg[SegReg::Es as usize]),
            cs: from_tcg_segment(&cpu.seg[SegReg::Cs as usize]),
            ss: from_tcg_segment(&cpu.seg[SegReg::Ss as usize]),
            ds: from_tcg_segment(&cpu.seg[SegReg::Ds as usize]),
            fs: from_tcg_segment(&cpu.seg[SegReg::Fs as usize]),
            gs: from_tcg_segment(&cpu.seg[SegReg::Gs as usize]),
            tr: from_tcg_segment(&cpu.tr),
            ldt: from_tcg_segment(&cpu.ldtr),
            gdt: DescriptorTable {
                base: cpu.gdtr.base,
                limit: cpu.gdtr.limit,
            },
            idt: DescriptorTable {
                base: cpu.idtr.base,
                limit: cpu.idtr.limit,
            },
            cr0: cpu.cr0,
            cr2: cpu.cr2,
            cr3: cpu.cr3,
            cr4: cpu.cr4,
            cr8: cpu.cr8,
            efer: cpu.efer,
            apic_base: 0,
        },
        msrs: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::cpu::linux64_boot_state;
    use vm_memory::GuestAddress;

    #[test]
    fn boot_state_round_trips_through_the_software_cpu() {
        let state = linux64_boot_state(GuestAddress(0x100_0000), 0x9000);
        let mut cpu = Cpu::new();
        load(&mut cpu, &state);
        assert!(cpu.in_64bit_mode());
        let back = save(&cpu);
        assert_eq!(back.regs, state.regs);
        assert_eq!(back.sregs.cs, state.sregs.cs);
        assert_eq!(back.sregs.cr0, state.sregs.cr0);
        assert_eq!(back.sregs.efer, state.sregs.efer);
    }
}
