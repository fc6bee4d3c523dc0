//! Segment and descriptor-table instructions: MOV/POP to segment registers (real-mode and
//! protected-mode rules), MOV from them, LDS/LES/LSS/LFS/LGS, LGDT/LIDT/SGDT/SIDT in every
//! operand size, LTR/LLDT/STR/SLDT, SWAPGS, SYSCALL, SYSRET.

use super::msr::index;
use super::op_size;
use crate::cpu::{attr, efer, Cpu, SegReg, Segment};
use crate::exception::{Event, Exception, Res};
use crate::flags;
use crate::memory::GuestMemory;
use crate::mmu::is_canonical;
use crate::Exit;
use iced_x86::{Code, Instruction, Mnemonic as M, OpKind};

fn require_cpl0(cpu: &Cpu) -> Res<()> {
    if cpu.cpl() != 0 {
        return Err(Exception::gp(0).into());
    }
    Ok(())
}

impl Cpu {
    /// Load a data/stack segment register with `sel` (64-bit mode rules; CS is never loaded here).
    pub(crate) fn load_segment(
        &mut self,
        mem: &mut dyn GuestMemory,
        s: SegReg,
        sel: u16,
    ) -> Res<()> {
        let cpl = self.cpl();
        let rpl = (sel & 3) as u8;
        let code = (sel & !3) as u32;
        if s == SegReg::Cs {
            return Err(Exception::ud().into());
        }
        if self.in_real_mode() {
            // Real mode: base = selector << 4; limit and attributes stay (as on hardware), but
            // the segment becomes usable again if protected mode had nulled it.
            let seg = &mut self.seg[s as usize];
            seg.selector = sel;
            seg.base = (sel as u64) << 4;
            seg.attr |= attr::P | attr::S;
            return Ok(());
        }
        if sel & !3 == 0 {
            // Null selector: allowed for DS/ES/FS/GS, and (64-bit mode only) for SS below CPL 3
            // with RPL == CPL.
            if s == SegReg::Ss && (cpl == 3 || rpl != cpl || !self.in_64bit_mode()) {
                return Err(Exception::gp(0).into());
            }
            let seg = &mut self.seg[s as usize];
            seg.selector = sel;
            seg.attr = if s == SegReg::Ss {
                attr::S | attr::RW | attr::DB | ((cpl as u16) << attr::DPL_SHIFT)
            } else {
                0
            };
            if !matches!(s, SegReg::Fs | SegReg::Gs) {
                seg.base = 0;
            }
            return Ok(());
        }
        let raw = self.read_descriptor(mem, sel)?;
        let mut d = Segment::from_descriptor(sel, raw);
        let is_code = d.attr & attr::CODE != 0;
        if d.attr & attr::S == 0 {
            return Err(Exception::gp(code).into());
        }
        if s == SegReg::Ss {
            if rpl != cpl || d.dpl() != cpl || is_code || d.attr & attr::RW == 0 {
                return Err(Exception::gp(code).into());
            }
            if d.attr & attr::P == 0 {
                return Err(Exception::ss(code).into());
            }
        } else {
            if is_code && d.attr & attr::RW == 0 {
                return Err(Exception::gp(code).into());
            }
            let conforming = is_code && d.attr & attr::DC != 0;
            if !conforming && d.dpl() < cpl.max(rpl) {
                return Err(Exception::gp(code).into());
            }
            if d.attr & attr::P == 0 {
                return Err(Exception::np(code).into());
            }
        }
        self.mark_accessed(mem, sel, raw)?;
        d.attr |= attr::ACCESSED;
        self.seg[s as usize] = d;
        Ok(())
    }
}

/// LDS/LES/LSS/LFS/LGS: load a far pointer (offset, then selector) from memory.
pub(crate) fn load_far_pointer(
    cpu: &mut Cpu,
    mem: &mut dyn GuestMemory,
    i: &Instruction,
) -> Res<()> {
    let s = match i.mnemonic() {
        M::Lds => SegReg::Ds,
        M::Les => SegReg::Es,
        M::Lss => SegReg::Ss,
        M::Lfs => SegReg::Fs,
        _ => SegReg::Gs,
    };
    if i.op1_kind() != OpKind::Memory {
        return Err(Exception::ud().into());
    }
    let size = op_size(i, 0);
    let la = cpu.mem_la(i, 1)?;
    let off = cpu.read_mem(mem, la, size)?;
    let mut sel_la = la.wrapping_add(size as u64);
    if !cpu.in_64bit_mode() {
        sel_la &= 0xffff_ffff;
    }
    let sel = cpu.read_mem(mem, sel_la, 2)? as u16;
    cpu.load_segment(mem, s, sel)?;
    if s == SegReg::Ss {
        cpu.interrupt_shadow = true;
    }
    cpu.set_reg(i.op0_register(), off);
    Ok(())
}

/// MOV Sreg, r/m16 and MOV r/m, Sreg.
pub(crate) fn mov_sreg(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    if i.op0_kind() == OpKind::Register && i.op0_register().is_segment_register() {
        let s = SegReg::from_iced(i.op0_register()).ok_or(Exception::ud())?;
        let sel = cpu.read_op(mem, i, 1)? as u16;
        cpu.load_segment(mem, s, sel)?;
        if s == SegReg::Ss {
            cpu.interrupt_shadow = true;
        }
        return Ok(());
    }
    let s = SegReg::from_iced(i.op1_register()).ok_or(Exception::ud())?;
    let sel = cpu.seg[s as usize].selector as u64;
    let dst = cpu.loc(i, 0)?;
    // To memory: 16 bits; to a register: zero-extended to the register size.
    let size = if i.op0_kind() == OpKind::Memory {
        2
    } else {
        op_size(i, 0)
    };
    cpu.write_loc(mem, dst, size, sel)
}

/// POP Sreg.
pub(crate) fn pop_sreg(
    cpu: &mut Cpu,
    mem: &mut dyn GuestMemory,
    i: &Instruction,
    size: u8,
) -> Res<()> {
    let s = SegReg::from_iced(i.op0_register()).ok_or(Exception::ud())?;
    let old_sp = cpu.gpr[4];
    let sel = cpu.read_stack(mem, old_sp, size)? as u16;
    // The stack pointer moves with the old stack's size.
    cpu.set_sp(old_sp.wrapping_add(size as u64));
    if let Err(e) = cpu.load_segment(mem, s, sel) {
        cpu.gpr[4] = old_sp;
        return Err(e);
    }
    if s == SegReg::Ss {
        cpu.interrupt_shadow = true;
    }
    Ok(())
}

pub(crate) fn tables(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let m = i.mnemonic();
    match m {
        M::Lgdt | M::Lidt => {
            require_cpl0(cpu)?;
            let la = cpu.mem_la(i, 0)?;
            let limit = cpu.read_mem(mem, la, 2)? as u16;
            let base = if cpu.in_64bit_mode() {
                let base = cpu.read_mem(mem, la.wrapping_add(2), 8)?;
                if !is_canonical(base) {
                    return Err(Exception::gp(0).into());
                }
                base
            } else {
                // Outside 64-bit mode: a 32-bit base, of which 24 bits with a 16-bit operand.
                let b = cpu.read_mem(mem, la.wrapping_add(2) & 0xffff_ffff, 4)?;
                if matches!(i.code(), Code::Lgdt_m1632_16 | Code::Lidt_m1632_16) {
                    b & 0xff_ffff
                } else {
                    b
                }
            };
            let t = if m == M::Lgdt {
                &mut cpu.gdtr
            } else {
                &mut cpu.idtr
            };
            t.base = base;
            t.limit = limit;
            Ok(())
        }
        M::Sgdt | M::Sidt => {
            let t = if m == M::Sgdt { cpu.gdtr } else { cpu.idtr };
            let la = cpu.mem_la(i, 0)?;
            if cpu.in_64bit_mode() {
                cpu.probe_write(mem, la, 10)?;
                cpu.write_mem(mem, la, 2, t.limit as u64)?;
                cpu.write_mem(mem, la.wrapping_add(2), 8, t.base)
            } else {
                let base = if matches!(i.code(), Code::Sgdt_m1632_16 | Code::Sidt_m1632_16) {
                    t.base & 0xff_ffff
                } else {
                    t.base & 0xffff_ffff
                };
                cpu.probe_write(mem, la, 6)?;
                cpu.write_mem(mem, la, 2, t.limit as u64)?;
                cpu.write_mem(mem, la.wrapping_add(2) & 0xffff_ffff, 4, base)
            }
        }
        M::Str | M::Sldt => {
            let sel = if m == M::Str {
                cpu.tr.selector
            } else {
                cpu.ldtr.selector
            } as u64;
            let dst = cpu.loc(i, 0)?;
            let size = if i.op0_kind() == OpKind::Memory {
                2
            } else {
                op_size(i, 0)
            };
            cpu.write_loc(mem, dst, size, sel)
        }
        M::Ltr | M::Lldt => {
            require_cpl0(cpu)?;
            let sel = cpu.read_op(mem, i, 0)? as u16;
            load_system_segment(cpu, mem, m == M::Ltr, sel)
        }
        _ => Err(cpu.unimplemented(i)),
    }
}

/// LTR/LLDT: 16-byte system descriptors from the GDT.
fn load_system_segment(cpu: &mut Cpu, mem: &mut dyn GuestMemory, is_tr: bool, sel: u16) -> Res<()> {
    let code = (sel & !3) as u32;
    if sel & !3 == 0 {
        if is_tr {
            return Err(Exception::gp(0).into());
        }
        cpu.ldtr = Segment {
            selector: sel,
            ..Segment::default()
        };
        return Ok(());
    }
    if sel & 4 != 0 {
        return Err(Exception::gp(code).into());
    }
    let lo = cpu.read_descriptor(mem, sel)?;
    let hi = cpu.read_descriptor(mem, sel.wrapping_add(8))?;
    let mut d = Segment::from_descriptor(sel, lo);
    d.base |= (hi & 0xffff_ffff) << 32;
    let ty = d.attr & 0xf;
    let want = if is_tr { 0x9 } else { 0x2 };
    if d.attr & attr::S != 0 || ty != want || !is_canonical(d.base) {
        return Err(Exception::gp(code).into());
    }
    if d.attr & attr::P == 0 {
        return Err(Exception::np(code).into());
    }
    if is_tr {
        // Mark the TSS busy in the GDT.
        let la = cpu.gdtr.base.wrapping_add((sel & !7) as u64 + 5);
        let access = cpu.read_mem(mem, la, 1)?;
        cpu.write_mem(mem, la, 1, access | 0x2)?;
        d.attr |= 0x2;
        cpu.tr = d;
    } else {
        cpu.ldtr = d;
    }
    Ok(())
}

pub(crate) fn fast_system_call(cpu: &mut Cpu, i: &Instruction) -> Res<()> {
    match i.mnemonic() {
        M::Swapgs => {
            require_cpl0(cpu)?;
            let k = cpu.msr.get(index::KERNEL_GS_BASE).unwrap_or(0);
            let g = cpu.seg[SegReg::Gs as usize].base;
            cpu.seg[SegReg::Gs as usize].base = k;
            cpu.msr.set(index::KERNEL_GS_BASE, g);
            Ok(())
        }
        M::Syscall => {
            if cpu.efer & efer::SCE == 0 {
                return Err(Exception::ud().into());
            }
            let star = cpu.msr.get(index::STAR).unwrap_or(0);
            let sel = ((star >> 32) & 0xfffc) as u16;
            cpu.gpr[1] = cpu.next_rip;
            cpu.gpr[11] = cpu.flags.bits() & !flags::RF;
            let mask = cpu.msr.get(index::SFMASK).unwrap_or(0);
            cpu.flags.set_bits(cpu.flags.bits() & !mask & !flags::RF);
            cpu.seg[SegReg::Cs as usize] = Segment {
                selector: sel,
                base: 0,
                limit: u32::MAX,
                attr: attr::P
                    | attr::S
                    | attr::CODE
                    | attr::RW
                    | attr::ACCESSED
                    | attr::L
                    | attr::G,
            };
            cpu.seg[SegReg::Ss as usize] = Segment {
                selector: sel.wrapping_add(8),
                base: 0,
                limit: u32::MAX,
                attr: attr::P | attr::S | attr::RW | attr::ACCESSED | attr::DB | attr::G,
            };
            cpu.next_rip = cpu.msr.get(index::LSTAR).unwrap_or(0);
            Ok(())
        }
        M::Sysret | M::Sysretq => {
            if cpu.efer & efer::SCE == 0 {
                return Err(Exception::ud().into());
            }
            require_cpl0(cpu)?;
            if i.mnemonic() != M::Sysretq {
                return Err(Event::Exit(Exit::Unsupported {
                    rip: cpu.rip,
                    what: "SYSRET to compatibility mode",
                }));
            }
            if !is_canonical(cpu.gpr[1]) {
                return Err(Exception::gp(0).into());
            }
            let star = cpu.msr.get(index::STAR).unwrap_or(0);
            let base = ((star >> 48) & 0xffff) as u16;
            cpu.seg[SegReg::Cs as usize] = Segment {
                selector: base.wrapping_add(16) | 3,
                base: 0,
                limit: u32::MAX,
                attr: attr::P
                    | attr::S
                    | attr::CODE
                    | attr::RW
                    | attr::ACCESSED
                    | attr::L
                    | attr::G
                    | (3 << attr::DPL_SHIFT),
            };
            cpu.seg[SegReg::Ss as usize] = Segment {
                selector: base.wrapping_add(8) | 3,
                base: 0,
                limit: u32::MAX,
                attr: attr::P
                    | attr::S
                    | attr::RW
                    | attr::ACCESSED
                    | attr::DB
                    | attr::G
                    | (3 << attr::DPL_SHIFT),
            };
            cpu.flags
                .set_bits((cpu.gpr[11] & 0x3c_7fd7) | flags::FIXED1);
            cpu.next_rip = cpu.gpr[1];
            Ok(())
        }
        _ => Err(cpu.unimplemented(i)),
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::*;
    use crate::SegReg;
    use iced_x86::code_asm::*;

    #[test]
    fn mov_ds_loads_descriptor_and_null_is_allowed() {
        let t = run_asm(|a| {
            a.xor(eax, eax)?;
            a.mov(ds, ax)?;
            a.mov(eax, KERNEL_DS as u32)?;
            a.mov(es, ax)?;
            a.mov(ebx, 0)?;
            a.mov(bx, es)?;
            Ok(())
        });
        assert_eq!(t.cpu.seg[SegReg::Ds as usize].selector, 0);
        assert_eq!(t.cpu.seg[SegReg::Es as usize].selector, KERNEL_DS);
        assert_eq!(t.cpu.gpr[3], KERNEL_DS as u64);
    }

    #[test]
    fn loading_a_selector_past_the_gdt_is_gp() {
        let t = run_asm(|a| {
            a.mov(eax, 0x80)?;
            a.mov(ds, ax)?;
            Ok(())
        });
        assert_eq!(t.exception, Some(13));
        assert_eq!(t.error_code(), 0x80);
    }

    #[test]
    fn ltr_marks_tss_busy_and_lgdt_sgdt_round_trip() {
        let t = run_asm(|a| {
            a.mov(eax, TSS_SEL as u32)?;
            a.ltr(ax)?;
            a.sgdt(ptr(DATA))?;
            a.lgdt(ptr(DATA))?;
            Ok(())
        });
        assert_eq!(t.exception, None);
        assert_eq!(t.cpu.tr.base, TSS);
        assert_eq!(t.mem_u64(GDT + 0x28) >> 40 & 0xf, 0xb);
        assert_eq!(t.mem_u64(DATA) & 0xffff, 0x37);
        assert_eq!(t.cpu.gdtr.base, GDT);
    }

    #[test]
    fn syscall_and_sysret_switch_privilege() {
        let mut m = Machine::new();
        // STAR: kernel CS 0x08, sysret base 0x10 (user CS = 0x20|3 -> our 0x1b is 0x18|3: use 0x08).
        m.cpu
            .msr
            .set(super::index::STAR, (0x08u64 << 48) | (0x08u64 << 32));
        m.cpu.msr.set(super::index::SFMASK, crate::flags::IF);
        let code = assemble(|a| {
            let mut entry = a.create_label();
            let mut user = a.create_label();
            a.lea(rcx, ptr(user))?;
            a.mov(r11d, 0x202)?;
            a.sysretq()?;
            a.set_label(&mut user)?;
            a.mov(eax, 1)?;
            a.syscall()?;
            a.set_label(&mut entry)?;
            a.mov(ebx, 2)?;
            Ok(())
        });
        m.load_code(&code);
        // LSTAR = address of the instruction after SYSCALL (the `mov ebx, 2`).
        let entry = CODE + code.len() as u64 - 6;
        m.cpu.msr.set(super::index::LSTAR, entry);
        let t = m.run(100);
        assert_eq!(t.exception, None);
        assert_eq!(t.cpu.gpr[3], 2);
        assert_eq!(t.cpu.cpl(), 0);
        assert_eq!(t.cpu.gpr[11] & 0x200, 0x200);
    }
}
