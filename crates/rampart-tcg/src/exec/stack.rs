//! PUSH, POP, PUSHF(Q), POPF(Q), LEAVE, ENTER and the stack helpers other families use.

use super::op_size;
use crate::cpu::{Cpu, SegReg};
use crate::exception::{Exception, Res};
use crate::flags::{self, size_mask};
use crate::memory::GuestMemory;
use iced_x86::{Code, Instruction, Mnemonic as M, OpKind, Register};

impl Cpu {
    /// Linear address of `size` bytes at stack pointer value `sp`: flat and canonical in
    /// 64-bit mode, `SS:(sp & SP mask)` with the SS checks otherwise.
    pub(crate) fn stack_la(&self, sp: u64, size: u8) -> Res<u64> {
        if self.in_64bit_mode() {
            self.check_canonical(sp, true)?;
            Ok(sp)
        } else {
            self.seg_la(SegReg::Ss, sp & self.sp_mask(), size as u64)
        }
    }

    /// Read `size` bytes of the stack at stack pointer value `sp` (#SS on a bad address).
    pub(crate) fn read_stack(&mut self, mem: &mut dyn GuestMemory, sp: u64, size: u8) -> Res<u64> {
        let la = self.stack_la(sp, size)?;
        self.read_data(mem, la, size)
    }

    /// Push `size` bytes; the stack pointer changes only if the write succeeds.
    pub(crate) fn push(&mut self, mem: &mut dyn GuestMemory, v: u64, size: u8) -> Res<()> {
        let sp = self.gpr[4].wrapping_sub(size as u64) & self.sp_mask();
        let la = self.stack_la(sp, size)?;
        self.write_mem(mem, la, size, v)?;
        self.set_sp(sp);
        Ok(())
    }

    /// Pop `size` bytes.
    pub(crate) fn pop(&mut self, mem: &mut dyn GuestMemory, size: u8) -> Res<u64> {
        let v = self.read_stack(mem, self.gpr[4], size)?;
        self.set_sp(self.gpr[4].wrapping_add(size as u64));
        Ok(v)
    }
}

/// Bytes moved by a push/pop of this instruction (64-bit mode: 8, or 2 with a 66 prefix).
fn stack_size(i: &Instruction) -> u8 {
    match i.code() {
        Code::Enterw_imm16_imm8 | Code::Leavew => 2,
        Code::Enterd_imm16_imm8 | Code::Leaved => 4,
        Code::Enterq_imm16_imm8 | Code::Leaveq => 8,
        _ => i.stack_pointer_increment().unsigned_abs().min(8) as u8,
    }
}

pub(crate) fn exec(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    match i.mnemonic() {
        M::Push => {
            let size = stack_size(i);
            let v = match i.op0_kind() {
                OpKind::Register if i.op0_register().is_segment_register() => {
                    SegReg::from_iced(i.op0_register())
                        .map(|s| cpu.seg[s as usize].selector as u64)
                        .unwrap_or(0)
                }
                _ => cpu.read_op(mem, i, 0)?,
            };
            let v = if matches!(
                i.op0_kind(),
                OpKind::Immediate8to64 | OpKind::Immediate32to64
            ) {
                v
            } else {
                v & size_mask(size)
            };
            cpu.push(mem, v, size)
        }
        M::Pop => {
            let size = stack_size(i);
            if i.op0_kind() == OpKind::Register && i.op0_register().is_segment_register() {
                return super::segment::pop_sreg(cpu, mem, i, size);
            }
            let old = cpu.gpr[4];
            let v = cpu.pop(mem, size)?;
            let dst = match cpu.loc(i, 0) {
                Ok(d) => d,
                Err(e) => {
                    cpu.gpr[4] = old;
                    return Err(e);
                }
            };
            if let Err(e) = cpu.write_loc(mem, dst, op_size(i, 0), v) {
                cpu.gpr[4] = old;
                return Err(e);
            }
            Ok(())
        }
        M::Pushf | M::Pushfd | M::Pushfq => {
            let size = stack_size(i);
            let v = cpu.flags.bits() & !(flags::VM | flags::RF);
            cpu.push(mem, v, size)
        }
        M::Popf | M::Popfd | M::Popfq => {
            let size = stack_size(i);
            let v = cpu.pop(mem, size)?;
            let cpl = cpu.cpl();
            cpu.write_flags_privileged(v, cpl, size);
            cpu.flags.set(flags::RF, false);
            Ok(())
        }
        M::Leave => {
            let size = stack_size(i);
            let v = cpu.read_stack(mem, cpu.gpr[5], size)?;
            cpu.set_sp(cpu.gpr[5].wrapping_add(size as u64));
            let bp = match size {
                2 => Register::BP,
                4 => Register::EBP,
                _ => Register::RBP,
            };
            cpu.set_reg(bp, v);
            Ok(())
        }
        M::Enter => enter(cpu, mem, i),
        _ => Err(cpu.unimplemented(i)),
    }
}

/// PUSHA/PUSHAD (outside 64-bit mode): AX, CX, DX, BX, the original SP, BP, SI, DI.
pub(crate) fn pusha(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let size = if i.mnemonic() == M::Pushad { 4 } else { 2 };
    let old = cpu.gpr[4];
    for n in 0..8 {
        let v = if n == 4 { old } else { cpu.gpr[n] };
        if let Err(e) = cpu.push(mem, v & size_mask(size), size) {
            cpu.gpr[4] = old;
            return Err(e);
        }
    }
    Ok(())
}

/// POPA/POPAD (outside 64-bit mode): the reverse of PUSHA; the saved SP is skipped.
pub(crate) fn popa(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let size: u8 = if i.mnemonic() == M::Popad { 4 } else { 2 };
    let mut vals = [0u64; 8];
    let mut sp = cpu.gpr[4];
    for v in vals.iter_mut() {
        *v = cpu.read_stack(mem, sp, size)?;
        sp = sp.wrapping_add(size as u64);
    }
    let regs: [Register; 8] = if size == 4 {
        [
            Register::EDI,
            Register::ESI,
            Register::EBP,
            Register::None,
            Register::EBX,
            Register::EDX,
            Register::ECX,
            Register::EAX,
        ]
    } else {
        [
            Register::DI,
            Register::SI,
            Register::BP,
            Register::None,
            Register::BX,
            Register::DX,
            Register::CX,
            Register::AX,
        ]
    };
    for (r, v) in regs.iter().zip(vals) {
        cpu.set_reg(*r, v);
    }
    cpu.set_sp(sp);
    Ok(())
}

/// ENTER imm16, imm8 (nesting level taken modulo 32, as the SDM specifies).
fn enter(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let size = stack_size(i);
    let alloc = i.immediate(0) & 0xffff;
    let level = i.immediate(1) & 0x1f;
    let (old_rsp, old_rbp) = (cpu.gpr[4], cpu.gpr[5]);
    let result = (|| -> Res<()> {
        cpu.push(mem, old_rbp, size)?;
        let frame = cpu.gpr[4];
        if level > 0 {
            let mut bp = old_rbp;
            for _ in 1..level {
                bp = bp.wrapping_sub(size as u64);
                let v = cpu.read_stack(mem, bp, size)?;
                cpu.push(mem, v, size)?;
            }
            cpu.push(mem, frame, size)?;
        }
        let new_rsp = cpu.gpr[4].wrapping_sub(alloc) & cpu.sp_mask();
        // The final stack pointer must be writable.
        let la = cpu.stack_la(new_rsp, 1)?;
        cpu.probe_write(mem, la, 1)?;
        match size {
            2 => cpu.set_reg(Register::BP, frame),
            4 => cpu.set_reg(Register::EBP, frame),
            _ => cpu.gpr[5] = frame,
        }
        cpu.set_sp(new_rsp);
        Ok(())
    })();
    if result.is_err() {
        cpu.gpr[4] = old_rsp;
        cpu.gpr[5] = old_rbp;
    }
    result.map_err(|e| match e {
        crate::exception::Event::Exception(x) if x.vector == crate::exception::vector::GP => {
            Exception::ss(0).into()
        }
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use crate::flags::{CF, DF};
    use crate::testutil::*;
    use iced_x86::code_asm::*;

    #[test]
    fn push_pop_round_trip_and_imm8_sign_extends() {
        let t = run_asm(|a| {
            a.push(-2)?;
            a.pop(rbx)?;
            a.mov(rax, 0x1122u64)?;
            a.push(rax)?;
            a.pop(qword_ptr(DATA))?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[3], (-2i64) as u64);
        assert_eq!(t.mem_u64(DATA), 0x1122);
        assert_eq!(t.cpu.gpr[4], STACK_TOP);
    }

    #[test]
    fn push_rsp_pushes_old_value() {
        let t = run_asm(|a| {
            a.push(rsp)?;
            a.pop(rax)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[0], STACK_TOP);
    }

    #[test]
    fn pushf_popf_round_trip_flags() {
        let t = run_asm(|a| {
            a.stc()?;
            a.std()?;
            a.pushfq()?;
            a.clc()?;
            a.cld()?;
            a.popfq()?;
            Ok(())
        });
        assert_eq!(t.cpu.flags.bits() & (CF | DF), CF | DF);
    }

    #[test]
    fn popf_in_user_mode_cannot_clear_if_or_change_iopl() {
        // Checked directly on the flag-writing helper.
        let mut m = Machine::new();
        m.cpu
            .flags
            .set_bits(crate::flags::IF | crate::flags::FIXED1);
        m.cpu.write_flags_privileged(0x3000, 3, 8);
        assert_ne!(m.cpu.flags.bits() & crate::flags::IF, 0);
        assert_eq!(m.cpu.flags.bits() & crate::flags::IOPL, 0);
    }

    #[test]
    fn enter_and_leave_build_and_drop_a_frame() {
        let t = run_asm(|a| {
            a.mov(rbp, 0x1234u64)?;
            a.enter(0x20, 0)?;
            a.mov(rsi, rsp)?;
            a.mov(rdi, rbp)?;
            a.leave()?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[7], STACK_TOP - 8);
        assert_eq!(t.cpu.gpr[6], STACK_TOP - 8 - 0x20);
        assert_eq!(t.cpu.gpr[5], 0x1234);
        assert_eq!(t.cpu.gpr[4], STACK_TOP);
    }

    #[test]
    fn push_to_unmapped_stack_page_faults_and_keeps_rsp() {
        let mut m = Machine::new();
        // Make the stack page not present: PD entry 1 (2..4 MiB).
        m.mem.write_u64(0x3000 + 8, 0).unwrap();
        m.load_code(&assemble(|a| {
            a.push(rax)?;
            Ok(())
        }));
        m.cpu.gpr[4] = 0x30_0000;
        // Deliver #PF on IST1 (a mapped stack).
        m.mem.write_u64(TSS + 0x24, RSP0).unwrap();
        let lo = m.mem.read_u64(IDT + 14 * 16).unwrap();
        m.mem.write_u64(IDT + 14 * 16, lo | (1 << 32)).unwrap();
        let t = m.run(10);
        assert_eq!(t.exception, Some(14));
        assert_eq!(t.cpu.cr2, 0x30_0000 - 8);
        assert_eq!(t.error_code(), 2); // write, not present
        assert_eq!(t.mem.read_u64(t.cpu.gpr[4] + 8 * 4).unwrap(), 0x30_0000); // saved RSP unchanged
    }
}
