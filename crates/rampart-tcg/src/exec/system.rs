//! System and miscellaneous instructions: CPUID, RDMSR/WRMSR, RDTSC, MOV to/from CR and DR,
//! CLI/STI, HLT, IN/OUT (run-loop exits), CLC/STC/CMC/CLD/STD, LAHF/SAHF, INVLPG, WBINVD, CLTS,
//! minimal x87 control (FNINIT, FNSTCW, FLDCW, FNSTSW, FNCLEX, FWAIT, EMMS), and the routing of
//! segment/descriptor instructions to `segment`.

use super::segment;
use crate::cpu::{cr0, cr4, efer, Cpu, PendingIn};
use crate::exception::{vector, Event, Exception, Res};
use crate::flags;
use crate::memory::GuestMemory;
use crate::Exit;
use iced_x86::{Instruction, Mnemonic as M, OpKind, Register};

pub use super::msr::{baseline_cpuid, MsrFile};

fn require_cpl0(cpu: &Cpu) -> Res<()> {
    if cpu.cpl() != 0 {
        return Err(Exception::gp(0).into());
    }
    Ok(())
}

fn iopl_ok(cpu: &Cpu) -> bool {
    let iopl = ((cpu.flags.bits() & flags::IOPL) >> 12) as u8;
    cpu.cpl() <= iopl
}

pub(crate) fn exec(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    match i.mnemonic() {
        M::Cpuid => {
            let (leaf, sub) = (cpu.gpr[0] as u32, cpu.gpr[1] as u32);
            let r = (cpu.cpuid)(leaf, sub);
            for (reg, v) in [Register::EAX, Register::EBX, Register::ECX, Register::EDX]
                .into_iter()
                .zip(r)
            {
                cpu.set_reg(reg, v as u64);
            }
            Ok(())
        }
        M::Rdmsr => {
            require_cpl0(cpu)?;
            let v = cpu.read_msr(cpu.gpr[1] as u32)?;
            cpu.set_reg(Register::EAX, v & 0xffff_ffff);
            cpu.set_reg(Register::EDX, v >> 32);
            Ok(())
        }
        M::Wrmsr => {
            require_cpl0(cpu)?;
            let v = ((cpu.gpr[2] & 0xffff_ffff) << 32) | (cpu.gpr[0] & 0xffff_ffff);
            cpu.write_msr(cpu.gpr[1] as u32, v)
        }
        M::Rdtsc => {
            if cpu.cr4 & cr4::TSD != 0 && cpu.cpl() != 0 {
                return Err(Exception::gp(0).into());
            }
            let tsc = cpu.read_tsc();
            cpu.set_reg(Register::EAX, tsc & 0xffff_ffff);
            cpu.set_reg(Register::EDX, tsc >> 32);
            Ok(())
        }
        M::Cli | M::Sti => {
            if !iopl_ok(cpu) {
                return Err(Exception::gp(0).into());
            }
            let was = cpu.flags.get(flags::IF);
            let on = i.mnemonic() == M::Sti;
            cpu.flags.set(flags::IF, on);
            if on && !was {
                cpu.interrupt_shadow = true;
            }
            Ok(())
        }
        M::Hlt => {
            require_cpl0(cpu)?;
            cpu.halted = true;
            cpu.rip = cpu.next_rip;
            Err(Event::Exit(Exit::Halt))
        }
        M::In | M::Out => port_io(cpu, i),
        M::Clc => set_flag(cpu, flags::CF, false),
        M::Stc => set_flag(cpu, flags::CF, true),
        M::Cmc => {
            let cf = cpu.flags.get(flags::CF);
            set_flag(cpu, flags::CF, !cf)
        }
        M::Cld => set_flag(cpu, flags::DF, false),
        M::Std => set_flag(cpu, flags::DF, true),
        // The baseline model does not advertise LAHF_LM: both are #UD in 64-bit mode.
        M::Lahf | M::Sahf => Err(Exception::ud().into()),
        M::Invlpg => {
            require_cpl0(cpu)?;
            let la = cpu.mem_la(i, 0)?;
            cpu.tlb.flush_page(la);
            Ok(())
        }
        M::Wbinvd | M::Invd => require_cpl0(cpu),
        M::Clts => {
            require_cpl0(cpu)?;
            cpu.cr0 &= !cr0::TS;
            Ok(())
        }
        M::Lgdt | M::Lidt | M::Sgdt | M::Sidt | M::Ltr | M::Lldt | M::Str | M::Sldt => {
            segment::tables(cpu, mem, i)
        }
        M::Swapgs | M::Syscall | M::Sysret | M::Sysretq => segment::fast_system_call(cpu, i),
        M::Rdfsbase | M::Rdgsbase | M::Wrfsbase | M::Wrgsbase => fs_gs_base(cpu, i),
        M::Fninit | M::Fnstcw | M::Fldcw | M::Fnstsw | M::Fnclex | M::Wait | M::Emms => {
            x87_control(cpu, mem, i)
        }
        _ => Err(cpu.unimplemented(i)),
    }
}

/// RDFSBASE, RDGSBASE, WRFSBASE, WRGSBASE (any privilege level): #UD outside 64-bit mode or
/// without CR4.FSGSBASE; the 32-bit forms read the low half of the base and write a
/// zero-extended one; a non-canonical 64-bit base is #GP(0). Not serializing: a kernel uses
/// them on every context switch instead of WRMSR to FS_BASE, which is.
fn fs_gs_base(cpu: &mut Cpu, i: &Instruction) -> Res<()> {
    if cpu.cr4 & cr4::FSGSBASE == 0 || !cpu.in_64bit_mode() {
        return Err(Exception::ud().into());
    }
    let seg = match i.mnemonic() {
        M::Rdfsbase | M::Wrfsbase => crate::SegReg::Fs,
        _ => crate::SegReg::Gs,
    } as usize;
    let r = i.op0_register();
    match i.mnemonic() {
        M::Rdfsbase | M::Rdgsbase => cpu.set_reg(r, cpu.seg[seg].base),
        _ => {
            let v = cpu.reg(r);
            if r.is_gpr64() && !crate::mmu::is_canonical(v) {
                return Err(Exception::gp(0).into());
            }
            cpu.seg[seg].base = v;
        }
    }
    Ok(())
}

fn set_flag(cpu: &mut Cpu, f: u64, on: bool) -> Res<()> {
    cpu.flags.set(f, on);
    Ok(())
}

/// IN/OUT: the CPU side of port I/O. Permission is CPL <= IOPL (the TSS I/O bitmap is not
/// consulted yet, so CPL-3 port access without IOPL 3 is always #GP).
fn port_io(cpu: &mut Cpu, i: &Instruction) -> Res<()> {
    if !iopl_ok(cpu) {
        return Err(Exception::gp(0).into());
    }
    let (port_op, data_op) = if i.mnemonic() == M::In {
        (1, 0)
    } else {
        (0, 1)
    };
    let port = match i.op_kind(port_op) {
        OpKind::Immediate8 => i.immediate8() as u16,
        _ => cpu.reg(Register::DX) as u16,
    };
    let size = i.op_register(data_op).size() as u8;
    cpu.rip = cpu.next_rip;
    if i.mnemonic() == M::In {
        cpu.pending_in = Some(PendingIn { port, size });
        Err(Event::Exit(Exit::IoIn { port, size }))
    } else {
        let value = cpu.reg(i.op_register(data_op)) as u32;
        Err(Event::Exit(Exit::IoOut { port, size, value }))
    }
}

fn x87_control(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let m = i.mnemonic();
    let ts = cpu.cr0 & cr0::TS != 0;
    let em = cpu.cr0 & cr0::EM != 0;
    let nm = if m == M::Wait {
        ts && cpu.cr0 & cr0::MP != 0
    } else {
        ts || em
    };
    if nm {
        return Err(Exception::fault(vector::NM, None).into());
    }
    match m {
        M::Fninit => {
            cpu.fpu.fcw = 0x37f;
            cpu.fpu.fsw = 0;
            cpu.fpu.ftw = 0;
        }
        M::Fnstcw => {
            let la = cpu.mem_la(i, 0)?;
            cpu.write_mem(mem, la, 2, cpu.fpu.fcw as u64)?;
        }
        M::Fldcw => {
            let v = cpu.read_op(mem, i, 0)?;
            cpu.fpu.fcw = v as u16;
        }
        M::Fnstsw => {
            let v = cpu.fpu.fsw as u64;
            match i.op0_kind() {
                OpKind::Register => cpu.set_reg(Register::AX, v),
                _ => {
                    let la = cpu.mem_la(i, 0)?;
                    cpu.write_mem(mem, la, 2, v)?;
                }
            }
        }
        M::Fnclex => cpu.fpu.fsw &= 0x7f00,
        M::Emms => cpu.fpu.ftw = 0,
        _ => {}
    }
    Ok(())
}

/// MOV involving a control, debug or segment register.
pub(crate) fn mov_special(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let (r0, r1) = (i.op0_register(), i.op1_register());
    let op0_reg = i.op0_kind() == OpKind::Register;
    if (op0_reg && r0.is_segment_register())
        || (i.op1_kind() == OpKind::Register && r1.is_segment_register())
    {
        return segment::mov_sreg(cpu, mem, i);
    }
    if r0.is_cr() || r1.is_cr() || r0.is_dr() || r1.is_dr() {
        require_cpl0(cpu)?;
        if r0.is_cr() || r0.is_dr() {
            // MOV to CR/DR is serializing (see `Cpu::code_gen`).
            cpu.catch_up_with_writers(mem);
        }
        if r1.is_cr() {
            let v = read_cr(cpu, r1)?;
            cpu.set_reg(r0, v);
        } else if r0.is_cr() {
            write_cr(cpu, r0, cpu.reg(r1))?;
        } else if r1.is_dr() {
            let n = r1.number();
            if cpu.cr4 & cr4::DE != 0 && (n == 4 || n == 5) {
                return Err(Exception::ud().into());
            }
            let idx = if n == 4 || n == 5 { n + 2 } else { n };
            let v = cpu.dr.get(idx).copied().ok_or(Exception::ud())?;
            cpu.set_reg(r0, v);
        } else {
            let n = r0.number();
            if cpu.cr4 & cr4::DE != 0 && (n == 4 || n == 5) {
                return Err(Exception::ud().into());
            }
            let v = cpu.reg(r1);
            let idx = if n == 4 || n == 5 { n + 2 } else { n };
            if idx >= 6 && v >> 32 != 0 {
                return Err(Exception::gp(0).into());
            }
            let slot = cpu.dr.get_mut(idx).ok_or(Exception::ud())?;
            *slot = match idx {
                6 => (v & 0x0000_e00f) | 0xffff_0ff0,
                7 => (v & 0xffff_2bff) | 0x400,
                _ => v,
            };
        }
        return Ok(());
    }
    Err(cpu.unimplemented(i))
}

fn read_cr(cpu: &Cpu, r: Register) -> Res<u64> {
    Ok(match r {
        Register::CR0 => cpu.cr0,
        Register::CR2 => cpu.cr2,
        Register::CR3 => cpu.cr3,
        Register::CR4 => cpu.cr4,
        Register::CR8 => cpu.cr8,
        _ => return Err(Exception::ud().into()),
    })
}

/// MOV to CRn with the architectural checks (64-bit mode).
pub(crate) fn write_cr(cpu: &mut Cpu, r: Register, v: u64) -> Res<()> {
    let gp = || -> Event { Exception::gp(0).into() };
    match r {
        Register::CR0 => {
            if v >> 32 != 0 {
                return Err(gp());
            }
            let v = v | cr0::ET;
            if (v & cr0::PG != 0 && v & cr0::PE == 0) || (v & cr0::NW != 0 && v & cr0::CD == 0) {
                return Err(gp());
            }
            // In 64-bit mode paging and protection cannot be switched off.
            if cpu.in_64bit_mode() && v & cr0::PG == 0 {
                return Err(gp());
            }
            if v & cr0::PG != 0 && cpu.cr0 & cr0::PG == 0 && cpu.efer & efer::LME != 0 {
                if cpu.cr4 & cr4::PAE == 0 {
                    return Err(gp());
                }
                cpu.efer |= efer::LMA;
            }
            if v & cr0::PG == 0 {
                cpu.efer &= !efer::LMA;
            }
            if (cpu.cr0 ^ v) & (cr0::PG | cr0::WP | cr0::PE) != 0 {
                cpu.tlb.flush_all();
            }
            cpu.cr0 = v;
        }
        Register::CR2 => cpu.cr2 = v,
        Register::CR3 => {
            if v >> 52 != 0 {
                return Err(gp());
            }
            cpu.cr3 = v;
            cpu.tlb.flush_all();
        }
        Register::CR4 => {
            if v & !cr4::SUPPORTED != 0 || (cpu.efer & efer::LMA != 0 && v & cr4::PAE == 0) {
                return Err(gp());
            }
            if (cpu.cr4 ^ v) & (cr4::PGE | cr4::PAE | cr4::PSE) != 0 {
                cpu.tlb.flush_all();
            }
            cpu.cr4 = v;
        }
        Register::CR8 => {
            if v & !0xf != 0 {
                return Err(gp());
            }
            cpu.cr8 = v;
        }
        _ => return Err(Exception::ud().into()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::cpu::cr4;
    use crate::testutil::*;
    use crate::Exit;
    use iced_x86::code_asm::*;

    #[test]
    fn cpuid_reports_baseline_features() {
        let t = run_asm(|a| {
            a.mov(eax, 1)?;
            a.cpuid()?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[2] & 0x700_8161, 0x700_8161);
        assert_eq!(t.cpu.gpr[1], 0);
    }

    #[test]
    fn out_and_in_exit_and_complete() {
        let mut m = Machine::new();
        m.load_code(&assemble(|a| {
            a.mov(al, 0x41u32)?;
            a.out(0x80, al)?;
            a.mov(dx, 0x3f8u32)?;
            a.in_(eax, dx)?;
            Ok(())
        }));
        assert_eq!(
            m.cpu.run(&mut m.mem, 100),
            Exit::IoOut {
                port: 0x80,
                size: 1,
                value: 0x41
            }
        );
        assert_eq!(
            m.cpu.run(&mut m.mem, 100),
            Exit::IoIn {
                port: 0x3f8,
                size: 4
            }
        );
        m.cpu.complete_io_in(0xdead_beef);
        assert_eq!(m.cpu.run(&mut m.mem, 100), Exit::Halt);
        assert_eq!(m.cpu.gpr[0], 0xdead_beef);
    }

    #[test]
    fn wrmsr_rdmsr_round_trip_and_unknown_msr_is_gp() {
        let t = run_asm(|a| {
            a.mov(ecx, 0xc000_0082u32)?;
            a.mov(eax, 0x1234)?;
            a.mov(edx, 0xffff_ffffu32)?;
            a.wrmsr()?;
            a.xor(eax, eax)?;
            a.rdmsr()?;
            a.mov(ecx, 0x1234_5678)?;
            a.rdmsr()?;
            Ok(())
        });
        assert_eq!(t.exception, Some(13));
        assert_eq!(t.cpu.msr.get(0xc000_0082), Some(0xffff_ffff_0000_1234));
    }

    #[test]
    fn writing_unsupported_cr4_bits_is_gp() {
        let t = run_asm(|a| {
            a.mov(rax, cr4)?;
            a.or(eax, 1 << 20)?; // SMEP: not in the baseline model
            a.mov(cr4, rax)?;
            Ok(())
        });
        assert_eq!(t.exception, Some(13));
        assert_eq!(t.cpu.cr4 & (1 << 20), 0);
        assert_ne!(t.cpu.cr4 & cr4::PAE, 0);
    }

    /// Set CR4.FSGSBASE (clobbers RAX).
    fn enable_fsgsbase(a: &mut CodeAssembler) -> Result<(), IcedError> {
        a.mov(rax, cr4)?;
        a.or(eax, cr4::FSGSBASE as i32)?;
        a.mov(cr4, rax)
    }

    #[test]
    fn fs_gs_base_instructions_need_cr4_fsgsbase() {
        // Without CR4.FSGSBASE: #UD, nothing changed.
        let t = run_asm(|a| {
            a.mov(rax, 0x1234u64)?;
            a.wrfsbase(rax)?;
            Ok(())
        });
        assert_eq!(t.exception, Some(6));
        assert_eq!(t.cpu.seg[crate::SegReg::Fs as usize].base, 0);
        // With it: 64- and 32-bit forms, both registers, read back.
        let t = run_asm(|a| {
            enable_fsgsbase(a)?;
            a.mov(rax, 0xffff_8000_1234_5678u64)?;
            a.wrfsbase(rax)?;
            a.mov(ecx, 0xdead_beefu32)?;
            a.wrgsbase(ecx)?;
            a.rdfsbase(rdx)?;
            a.mov(rsi, u64::MAX)?;
            a.rdfsbase(esi)?;
            a.rdgsbase(rdi)?;
            Ok(())
        });
        assert_eq!(t.exception, None);
        assert_eq!(
            t.cpu.seg[crate::SegReg::Fs as usize].base,
            0xffff_8000_1234_5678
        );
        assert_eq!(t.cpu.seg[crate::SegReg::Gs as usize].base, 0xdead_beef);
        assert_eq!(t.cpu.gpr[2], 0xffff_8000_1234_5678);
        assert_eq!(
            t.cpu.gpr[6], 0x1234_5678,
            "32-bit read: low half, zero-extended"
        );
        assert_eq!(t.cpu.gpr[7], 0xdead_beef);
    }

    #[test]
    fn wrfsbase_of_a_non_canonical_base_is_gp() {
        let t = run_asm(|a| {
            enable_fsgsbase(a)?;
            a.mov(rax, 0x0000_8000_0000_0000u64)?;
            a.wrfsbase(rax)?;
            Ok(())
        });
        assert_eq!(t.exception, Some(13));
        assert_eq!(t.cpu.seg[crate::SegReg::Fs as usize].base, 0);
    }

    #[test]
    fn cpuid_leaf_7_reports_fsgsbase_and_erms_in_subleaf_0_only() {
        assert_eq!(crate::baseline_cpuid(7, 0), [0, 1 | (1 << 9), 0, 0]);
        assert_eq!(crate::baseline_cpuid(7, 1), [0; 4]);
    }

    #[test]
    fn cr3_write_flushes_tlb() {
        let mut m = Machine::new();
        m.load_code(&assemble(|a| {
            a.mov(rax, qword_ptr(DATA))?;
            a.mov(rbx, cr3)?;
            a.mov(rcx, 0x3008u64)?; // PD entry 1: remap 2 MiB..4 MiB onto 0..2 MiB
            a.mov(qword_ptr(rcx), 0x87)?;
            a.mov(cr3, rbx)?;
            a.mov(rdx, qword_ptr(DATA))?;
            Ok(())
        }));
        m.mem.write_u64(DATA, 1).unwrap();
        m.mem.write_u64(DATA - 0x20_0000, 2).unwrap();
        let t = m.run(100);
        assert_eq!(t.cpu.gpr[0], 1);
        assert_eq!(t.cpu.gpr[2], 2);
    }

    #[test]
    fn hlt_in_user_mode_is_gp_and_cli_needs_iopl() {
        let mut m = Machine::new();
        m.cpu.seg[crate::SegReg::Cs as usize].selector = USER_CS;
        m.cpu.seg[crate::SegReg::Ss as usize].selector = USER_DS;
        m.load_code(&[0xfa]); // cli
        let t = m.run(10);
        assert_eq!(t.exception, Some(13));
    }

    #[test]
    fn sti_blocks_interrupts_for_one_instruction() {
        let mut m = Machine::new();
        m.load_code(&assemble(|a| {
            a.sti()?;
            a.nop()?;
            a.nop()?;
            Ok(())
        }));
        assert_eq!(m.cpu.run(&mut m.mem, 1), Exit::InstructionLimit);
        assert!(!m.cpu.inject_external_interrupt(&mut m.mem, 0x20));
        assert_eq!(m.cpu.run(&mut m.mem, 1), Exit::InstructionLimit);
        assert!(m.cpu.inject_external_interrupt(&mut m.mem, 0x1f));
        assert_eq!(m.cpu.rip, HANDLERS + 0x1f * 16);
    }
}
