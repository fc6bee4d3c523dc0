//! MOV (GPR, memory, immediate; segment and control registers are routed to `system`), MOVZX,
//! MOVSX, MOVSXD, LEA, XCHG, CMOVcc, SETcc, CBW/CWDE/CDQE, CWD/CDQ/CQO, prefetch hints.

use super::{op_size, sext, system};
use crate::cpu::Cpu;
use crate::exception::{Exception, Res};
use crate::flags::size_mask;
use crate::memory::GuestMemory;
use iced_x86::{ConditionCode, Instruction, Mnemonic as M, OpKind, Register};

/// Condition number (0..16, the low opcode nibble) of a Jcc/SETcc/CMOVcc instruction.
pub(crate) fn cc(i: &Instruction) -> Option<u8> {
    match i.condition_code() {
        ConditionCode::None => None,
        c => Some(c as u8 - 1),
    }
}

pub(crate) fn is_cmov(m: M) -> bool {
    matches!(
        m,
        M::Cmovo
            | M::Cmovno
            | M::Cmovb
            | M::Cmovae
            | M::Cmove
            | M::Cmovne
            | M::Cmovbe
            | M::Cmova
            | M::Cmovs
            | M::Cmovns
            | M::Cmovp
            | M::Cmovnp
            | M::Cmovl
            | M::Cmovge
            | M::Cmovle
            | M::Cmovg
    )
}

pub(crate) fn is_setcc(m: M) -> bool {
    matches!(
        m,
        M::Seto
            | M::Setno
            | M::Setb
            | M::Setae
            | M::Sete
            | M::Setne
            | M::Setbe
            | M::Seta
            | M::Sets
            | M::Setns
            | M::Setp
            | M::Setnp
            | M::Setl
            | M::Setge
            | M::Setle
            | M::Setg
    )
}

fn is_plain_gpr_or_mem(i: &Instruction, op: u32) -> bool {
    match i.op_kind(op) {
        OpKind::Register => i.op_register(op).is_gpr(),
        _ => true,
    }
}

/// MOV between GPRs, memory and immediates.
pub(crate) fn mov(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    if !is_plain_gpr_or_mem(i, 0) || !is_plain_gpr_or_mem(i, 1) {
        return system::mov_special(cpu, mem, i);
    }
    let size = op_size(i, 0);
    let v = cpu.read_op(mem, i, 1)?;
    let dst = cpu.loc(i, 0)?;
    cpu.write_loc(mem, dst, size, v & size_mask(size))
}

/// MOVZX, MOVSX, MOVSXD.
pub(crate) fn extend(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let dsize = op_size(i, 0);
    let ssize = op_size(i, 1);
    let v = cpu.read_op(mem, i, 1)?;
    let v = match i.mnemonic() {
        M::Movzx => v,
        _ => sext(v, ssize),
    };
    cpu.set_reg(i.op0_register(), v & size_mask(dsize));
    Ok(())
}

/// LEA: the effective address, without segment base, truncated to the operand size.
pub(crate) fn lea(cpu: &mut Cpu, i: &Instruction) -> Res<()> {
    if i.op1_kind() != OpKind::Memory {
        return Err(Exception::ud().into());
    }
    let ea = i
        .virtual_address(1, 0, |r, _, _| {
            Some(if r.is_segment_register() {
                0
            } else {
                cpu.reg(r)
            })
        })
        .unwrap_or(0);
    let size = op_size(i, 0);
    cpu.set_reg(i.op0_register(), ea & size_mask(size));
    Ok(())
}

/// XCHG (with a memory operand it is implicitly locked; see `arith` for the SMP note).
pub(crate) fn xchg(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let size = op_size(i, 0);
    let a_loc = cpu.loc(i, 0)?;
    let b_loc = cpu.loc(i, 1)?;
    let a = cpu.read_loc(mem, a_loc, size)?;
    let b = cpu.read_loc(mem, b_loc, size)?;
    // Memory (if any) is written first so a fault leaves the registers untouched.
    if let super::Loc::Mem(_) = b_loc {
        cpu.write_loc(mem, b_loc, size, a)?;
        cpu.write_loc(mem, a_loc, size, b)
    } else {
        cpu.write_loc(mem, a_loc, size, b)?;
        cpu.write_loc(mem, b_loc, size, a)
    }
}

/// CBW/CWDE/CDQE and CWD/CDQ/CQO.
pub(crate) fn convert(cpu: &mut Cpu, i: &Instruction) -> Res<()> {
    let rax = cpu.gpr[0];
    match i.mnemonic() {
        M::Cbw => cpu.set_reg(Register::AX, sext(rax, 1)),
        M::Cwde => cpu.set_reg(Register::EAX, sext(rax, 2)),
        M::Cdqe => cpu.set_reg(Register::RAX, sext(rax, 4)),
        M::Cwd => cpu.set_reg(Register::DX, if rax & 0x8000 != 0 { 0xffff } else { 0 }),
        M::Cdq => cpu.set_reg(
            Register::EDX,
            if rax & 0x8000_0000 != 0 {
                0xffff_ffff
            } else {
                0
            },
        ),
        _ => cpu.set_reg(Register::RDX, if rax >> 63 != 0 { u64::MAX } else { 0 }),
    }
    Ok(())
}

/// CMOVcc: the source is always read (and may fault); a 32-bit destination is zero-extended
/// even when the condition is false.
pub(crate) fn cmov(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let size = op_size(i, 0);
    let v = cpu.read_op(mem, i, 1)?;
    let dst = i.op0_register();
    let c = cc(i).unwrap_or(0);
    let new = if cpu.flags.condition(c) {
        v
    } else {
        cpu.reg(dst)
    };
    cpu.set_reg(dst, new & size_mask(size));
    Ok(())
}

/// SETcc r/m8.
pub(crate) fn setcc(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let c = cc(i).unwrap_or(0);
    let v = cpu.flags.condition(c) as u64;
    let dst = cpu.loc(i, 0)?;
    cpu.write_loc(mem, dst, 1, v)
}

/// Prefetch hints and CLFLUSH: no architectural effect (the address is not even translated:
/// prefetches never fault; CLFLUSH faults are not modelled).
pub(crate) fn touch_only(_cpu: &mut Cpu, _i: &Instruction) -> Res<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::testutil::*;
    use iced_x86::code_asm::*;

    #[test]
    fn rip_relative_load_and_store() {
        let t = run_asm(|a| {
            let mut l = a.create_label();
            a.mov(rax, 0x55u64)?;
            a.mov(qword_ptr(l), rax)?;
            a.mov(rbx, qword_ptr(l))?;
            a.hlt()?;
            a.set_label(&mut l)?;
            a.dq(&[0])?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[3], 0x55);
    }

    #[test]
    fn movzx_movsx_movsxd_extend() {
        let t = run_asm(|a| {
            a.mov(ecx, 0x80)?;
            a.movzx(eax, cl)?;
            a.movsx(rbx, cl)?;
            a.mov(edx, 0x8000_0000u32)?;
            a.movsxd(rsi, edx)?;
            a.movsx(di, cl)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[0], 0x80);
        assert_eq!(t.cpu.gpr[3], 0xffff_ffff_ffff_ff80);
        assert_eq!(t.cpu.gpr[6], 0xffff_ffff_8000_0000);
        assert_eq!(t.cpu.gpr[7] & 0xffff, 0xff80);
    }

    #[test]
    fn lea_computes_sib_address_and_truncates() {
        let t = run_asm(|a| {
            a.mov(rsp, 0x1000u64)?;
            a.mov(ebx, 0x20)?;
            a.lea(edx, ptr(rsp + rbx * 4 + 3))?;
            a.mov(rax, -1i64)?;
            a.lea(rcx, ptr(rax + 2))?;
            a.mov(rsp, STACK_TOP)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[2], 0x1083);
        assert_eq!(t.cpu.gpr[1], 1);
    }

    #[test]
    fn fs_and_gs_overrides_add_segment_base() {
        let mut m = Machine::new();
        m.cpu.seg[crate::SegReg::Gs as usize].base = DATA;
        m.mem.write_u64(DATA + 0x18, 0xabcd).unwrap();
        m.load_code(&assemble(|a| {
            a.mov(rax, qword_ptr(0x18).gs())?;
            Ok(())
        }));
        let t = m.run(10);
        assert_eq!(t.cpu.gpr[0], 0xabcd);
    }

    #[test]
    fn cmov_false_still_zero_extends_32_bit_destination() {
        let t = run_asm(|a| {
            a.mov(rax, -1i64)?;
            a.xor(ecx, ecx)?;
            a.cmovne(eax, ecx)?;
            a.sete(bl)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[0], 0xffff_ffff);
        assert_eq!(t.cpu.gpr[3], 1);
    }

    #[test]
    fn xchg_swaps_register_and_memory() {
        let t = run_asm(|a| {
            a.mov(rbx, DATA)?;
            a.mov(qword_ptr(rbx), 1)?;
            a.mov(eax, 2)?;
            a.xchg(qword_ptr(rbx), rax)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[0], 1);
        assert_eq!(t.mem_u64(DATA), 2);
    }

    #[test]
    fn sign_conversions() {
        let t = run_asm(|a| {
            a.mov(eax, 0x8000_0000u32)?;
            a.cdqe()?;
            a.cqo()?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[0], 0xffff_ffff_8000_0000);
        assert_eq!(t.cpu.gpr[2], u64::MAX);
    }
}
