//! Far JMP, CALL and RET in every mode: real mode (CS = selector << 4), protected mode and
//! long mode (descriptor checks, including the jump from 32-bit code into a 64-bit segment that
//! completes the switch to long mode).
//!
//! Transfers through call gates, task gates or TSS selectors are not implemented: they end the
//! run loop with [`Exit::Unsupported`] naming what happened.

use crate::cpu::{attr, efer, Cpu, SegReg, Segment};
use crate::exception::{Event, Exception, Res};
use crate::memory::GuestMemory;
use crate::Exit;
use iced_x86::{Code, Instruction, Mnemonic as M, OpKind};

/// Truncate an offset to the operand size of the transfer.
fn ip_of(offset: u64, size: u8) -> u64 {
    match size {
        2 => offset & 0xffff,
        4 => offset & 0xffff_ffff,
        _ => offset,
    }
}

/// JMP/CALL ptr16:16, ptr16:32 and m16:16, m16:32, m16:64.
pub(crate) fn far_jmp_call(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let (sel, offset, size) = match i.op0_kind() {
        OpKind::FarBranch16 => (i.far_branch_selector(), i.far_branch16() as u64, 2u8),
        OpKind::FarBranch32 => (i.far_branch_selector(), i.far_branch32() as u64, 4u8),
        OpKind::Memory => {
            let size: u8 = match i.code() {
                Code::Jmp_m1616 | Code::Call_m1616 => 2,
                Code::Jmp_m1632 | Code::Call_m1632 => 4,
                _ => 8,
            };
            let la = cpu.mem_la(i, 0)?;
            let off = cpu.read_mem(mem, la, size)?;
            let mut sel_la = la.wrapping_add(size as u64);
            if !cpu.in_64bit_mode() {
                sel_la &= 0xffff_ffff;
            }
            let sel = cpu.read_mem(mem, sel_la, 2)? as u16;
            (sel, off, size)
        }
        _ => return Err(cpu.unimplemented(i)),
    };
    let load = match cpu.check_code_segment(mem, sel, false)? {
        Some(l) => l,
        None => {
            return Err(Event::Exit(Exit::Unsupported {
                rip: cpu.rip,
                what: "far JMP/CALL through a call gate, task gate or TSS",
            }))
        }
    };
    let cs = cpu.cs_after(&load, sel);
    let ip = ip_of(offset, size);
    if !cpu.ip_fits(&cs, ip) {
        return Err(Exception::gp(0).into());
    }
    if i.mnemonic() == M::Call {
        let old_sp = cpu.gpr[4];
        let old_cs = cpu.seg[SegReg::Cs as usize].selector as u64;
        let ret = cpu.next_rip;
        let pushed = cpu
            .push(mem, old_cs, size)
            .and_then(|_| cpu.push(mem, ret, size));
        if let Err(e) = pushed {
            cpu.gpr[4] = old_sp;
            return Err(e);
        }
    }
    cpu.install_cs(load, sel);
    cpu.next_rip = ip;
    Ok(())
}

/// RETF / RETF imm16 with 16-, 32- or 64-bit operand size: to the same privilege, or to an
/// outer ring (then SS:SP are popped too and data segments the new CPL may not use are nulled).
pub(crate) fn far_return(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let size: u8 = match i.code() {
        Code::Retfw | Code::Retfw_imm16 => 2,
        Code::Retfd | Code::Retfd_imm16 => 4,
        Code::Retfq | Code::Retfq_imm16 => 8,
        _ => return Err(cpu.unimplemented(i)),
    };
    let extra = if i.op_count() == 1 {
        i.immediate(0) & 0xffff
    } else {
        0
    };
    let sp = cpu.gpr[4];
    let sz = size as u64;
    let new_ip = ip_of(cpu.read_stack(mem, sp, size)?, size);
    let sel = cpu.read_stack(mem, sp.wrapping_add(sz), size)? as u16;
    let load = cpu
        .check_code_segment(mem, sel, true)?
        .ok_or(Exception::gp((sel & !3) as u32))?;
    let cs = cpu.cs_after(&load, sel);
    let outer = !cpu.in_real_mode() && (sel & 3) as u8 > cpu.cpl();
    let after = sp.wrapping_add(2 * sz).wrapping_add(extra);
    let new_stack = if outer {
        let new_sp = cpu.read_stack(mem, after, size)?;
        let ss_sel = cpu.read_stack(mem, after.wrapping_add(sz), size)? as u16;
        let target_64 = cpu.efer & efer::LMA != 0 && cs.attr & attr::L != 0;
        let ss = cpu.check_stack_segment(mem, ss_sel, (sel & 3) as u8, target_64)?;
        Some((ss, new_sp.wrapping_add(extra)))
    } else {
        None
    };
    if !cpu.ip_fits(&cs, new_ip) {
        return Err(Exception::gp(0).into());
    }
    match new_stack {
        None => {
            cpu.set_sp(after);
            cpu.install_cs(load, sel);
        }
        Some((ss, new_sp)) => {
            cpu.install_cs(load, sel);
            cpu.seg[SegReg::Ss as usize] = ss;
            cpu.gpr[4] = new_sp;
            cpu.set_sp(new_sp);
            cpu.null_inaccessible_data_segments();
        }
    }
    cpu.next_rip = new_ip;
    Ok(())
}

impl Cpu {
    /// Check the SS selector popped by RETF/IRET to privilege `new_cpl` and return the
    /// descriptor cache to install. A null SS is allowed only when returning to 64-bit code
    /// below CPL 3.
    pub(crate) fn check_stack_segment(
        &mut self,
        mem: &mut dyn GuestMemory,
        sel: u16,
        new_cpl: u8,
        target_64: bool,
    ) -> Res<Segment> {
        if sel & !3 == 0 {
            if target_64 && new_cpl < 3 {
                return Ok(Segment {
                    selector: sel,
                    base: 0,
                    limit: 0,
                    attr: attr::S | attr::RW | attr::DB | ((new_cpl as u16) << attr::DPL_SHIFT),
                });
            }
            return Err(Exception::gp(0).into());
        }
        let code = (sel & !3) as u32;
        let raw = self.read_descriptor(mem, sel)?;
        let s = Segment::from_descriptor(sel, raw);
        let writable_data =
            s.attr & attr::S != 0 && s.attr & attr::CODE == 0 && s.attr & attr::RW != 0;
        if (sel & 3) as u8 != new_cpl || s.dpl() != new_cpl || !writable_data {
            return Err(Exception::gp(code).into());
        }
        if s.attr & attr::P == 0 {
            return Err(Exception::ss(code).into());
        }
        self.mark_accessed(mem, sel, raw)?;
        Ok(Segment {
            attr: s.attr | attr::ACCESSED,
            ..s
        })
    }

    /// After a return to an outer ring: data (and non-conforming code) segments whose DPL is
    /// below the new CPL become unusable.
    pub(crate) fn null_inaccessible_data_segments(&mut self) {
        let cpl = self.cpl();
        for s in [SegReg::Es, SegReg::Ds, SegReg::Fs, SegReg::Gs] {
            let seg = &mut self.seg[s as usize];
            let data_or_nc = seg.attr & attr::CODE == 0 || seg.attr & attr::DC == 0;
            if data_or_nc && seg.dpl() < cpl {
                seg.selector = 0;
                seg.attr = 0;
            }
        }
    }
}
