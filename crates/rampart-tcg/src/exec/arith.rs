//! ADD, ADC, SUB, SBB, CMP, INC, DEC, NEG, XADD, CMPXCHG, CMPXCHG8B.
//!
//! `lock`-prefixed forms run as plain read-modify-write: exact on one vCPU. For SMP the memory
//! operand of a locked instruction must go through `GuestMemory::compare_exchange` in a retry loop.

use super::{op_size, Loc};
use crate::cpu::Cpu;
use crate::exception::{Exception, Res};
use crate::flags::{size_mask, LazyOp, CF, ZF};
use crate::memory::GuestMemory;
use iced_x86::{Instruction, Mnemonic as M, OpKind, Register};

/// `lock` is only legal on a read-modify-write instruction with a memory destination.
pub(crate) fn check_lock(i: &Instruction) -> Res<()> {
    if i.has_lock_prefix() && i.op0_kind() != OpKind::Memory {
        return Err(Exception::ud().into());
    }
    Ok(())
}

/// Compute `a op b` for ADD/ADC/SUB/SBB/CMP and record the flags; returns the result.
pub(crate) fn add_sub(cpu: &mut Cpu, m: M, size: u8, a: u64, b: u64) -> u64 {
    let mask = size_mask(size);
    let carry = match m {
        M::Adc | M::Sbb => cpu.flags.get(CF),
        _ => false,
    };
    let (res, op) = match m {
        M::Add | M::Adc => (a.wrapping_add(b).wrapping_add(carry as u64), LazyOp::Add),
        _ => (a.wrapping_sub(b).wrapping_sub(carry as u64), LazyOp::Sub),
    };
    let res = res & mask;
    cpu.flags.record(op, size, a, b, res, carry);
    res
}

/// Two-operand arithmetic.
pub(crate) fn alu2(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let m = i.mnemonic();
    if m == M::Cmp && i.has_lock_prefix() {
        return Err(Exception::ud().into());
    }
    check_lock(i)?;
    let size = op_size(i, 0);
    let dst = cpu.loc(i, 0)?;
    let a = cpu.read_loc(mem, dst, size)?;
    let b = cpu.read_op(mem, i, 1)? & size_mask(size);
    let saved = cpu.flags;
    let res = add_sub(cpu, m, size, a, b);
    if m != M::Cmp {
        if let Err(e) = cpu.write_loc(mem, dst, size, res) {
            cpu.flags = saved;
            return Err(e);
        }
    }
    Ok(())
}

/// INC, DEC, NEG.
pub(crate) fn unary(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    check_lock(i)?;
    let size = op_size(i, 0);
    let dst = cpu.loc(i, 0)?;
    let a = cpu.read_loc(mem, dst, size)?;
    let mask = size_mask(size);
    let (res, op, x, y) = match i.mnemonic() {
        M::Inc => (a.wrapping_add(1) & mask, LazyOp::Inc, a, 1),
        M::Dec => (a.wrapping_sub(1) & mask, LazyOp::Dec, a, 1),
        _ => (a.wrapping_neg() & mask, LazyOp::Sub, 0, a),
    };
    cpu.write_loc(mem, dst, size, res)?;
    cpu.flags.record(op, size, x, y, res, false);
    Ok(())
}

/// XADD: dst = dst + src, src = old dst.
pub(crate) fn xadd(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    check_lock(i)?;
    let size = op_size(i, 0);
    let dst = cpu.loc(i, 0)?;
    let src = i.op1_register();
    let a = cpu.read_loc(mem, dst, size)?;
    let b = cpu.reg(src);
    let saved = cpu.flags;
    let res = add_sub(cpu, M::Add, size, a, b);
    if let Err(e) = cpu.write_loc(mem, dst, size, res) {
        cpu.flags = saved;
        return Err(e);
    }
    cpu.set_reg(src, a);
    if let Loc::Reg(r) = dst {
        // xadd r, r with the same register: the sum wins.
        if r == src {
            cpu.set_reg(r, res);
        }
    }
    Ok(())
}

fn accumulator(size: u8) -> Register {
    match size {
        1 => Register::AL,
        2 => Register::AX,
        4 => Register::EAX,
        _ => Register::RAX,
    }
}

/// CMPXCHG: compare the accumulator with dst; equal: dst = src, else accumulator = dst.
pub(crate) fn cmpxchg(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    check_lock(i)?;
    let size = op_size(i, 0);
    let dst = cpu.loc(i, 0)?;
    let acc = accumulator(size);
    let old = cpu.read_loc(mem, dst, size)?;
    let a = cpu.reg(acc);
    let saved = cpu.flags;
    add_sub(cpu, M::Cmp, size, a, old);
    let r = if a == old {
        cpu.write_loc(mem, dst, size, cpu.reg(i.op1_register()))
    } else {
        // The processor always writes the destination (with its old value) for memory operands.
        match dst {
            Loc::Mem(_) => cpu.write_loc(mem, dst, size, old),
            Loc::Reg(_) => Ok(()),
        }
    };
    if let Err(e) = r {
        cpu.flags = saved;
        return Err(e);
    }
    if a != old {
        cpu.set_reg(acc, old);
    }
    Ok(())
}

/// CMPXCHG8B m64: compare EDX:EAX with m64; equal: m64 = ECX:EBX and ZF=1, else EDX:EAX = m64.
pub(crate) fn cmpxchg8b(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let la = match cpu.loc(i, 0)? {
        Loc::Mem(la) => la,
        Loc::Reg(_) => return Err(Exception::ud().into()),
    };
    let old = cpu.read_mem(mem, la, 8)?;
    let expect = (cpu.reg(Register::EDX) << 32) | cpu.reg(Register::EAX);
    if old == expect {
        let new = (cpu.reg(Register::ECX) << 32) | cpu.reg(Register::EBX);
        cpu.write_mem(mem, la, 8, new)?;
        cpu.flags.set(ZF, true);
    } else {
        cpu.write_mem(mem, la, 8, old)?;
        cpu.flags.set(ZF, false);
        cpu.set_reg(Register::EAX, old & 0xffff_ffff);
        cpu.set_reg(Register::EDX, old >> 32);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::flags::{AF, CF, OF, PF, SF, ZF};
    use crate::testutil::*;
    use iced_x86::code_asm::*;

    #[test]
    fn add_sets_carry_and_zero_on_wrap() {
        let t = run_asm(|a| {
            a.mov(rax, -1i64)?;
            a.add(rax, 1)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[0], 0);
        assert_eq!(t.arith_flags(), CF | ZF | PF | AF);
    }

    #[test]
    fn adc_adds_carry_in() {
        let t = run_asm(|a| {
            a.stc()?;
            a.mov(eax, 5)?;
            a.adc(eax, 7)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[0], 13);
    }

    #[test]
    fn sbb_to_memory_subtracts_borrow() {
        let t = run_asm(|a| {
            a.mov(qword_ptr(DATA), 10)?;
            a.stc()?;
            a.mov(rbx, DATA)?;
            a.sbb(dword_ptr(rbx), 3)?;
            a.mov(rcx, qword_ptr(rbx))?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[1], 6);
    }

    #[test]
    fn cmp_leaves_destination_and_sets_sign_overflow() {
        let t = run_asm(|a| {
            a.mov(al, 0x80u32)?;
            a.cmp(al, 1)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[0] & 0xff, 0x80);
        assert_eq!(t.arith_flags(), OF | AF);
    }

    #[test]
    fn inc_keeps_carry_dec_sets_zero() {
        let t = run_asm(|a| {
            a.stc()?;
            a.mov(ecx, 1)?;
            a.dec(ecx)?;
            Ok(())
        });
        assert_eq!(t.arith_flags(), CF | ZF | PF);
    }

    #[test]
    fn neg_of_zero_clears_carry() {
        let t = run_asm(|a| {
            a.xor(edx, edx)?;
            a.neg(rdx)?;
            a.mov(ebx, 1)?;
            a.neg(bx)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[3], 0xffff);
        assert_eq!(t.arith_flags(), CF | SF | PF | AF);
    }

    #[test]
    fn xadd_exchanges_and_adds() {
        let t = run_asm(|a| {
            a.mov(rbx, DATA)?;
            a.mov(qword_ptr(rbx), 40)?;
            a.mov(eax, 2)?;
            a.lock().xadd(qword_ptr(rbx), rax)?;
            a.mov(rcx, qword_ptr(rbx))?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[0], 40);
        assert_eq!(t.cpu.gpr[1], 42);
    }

    #[test]
    fn cmpxchg_swaps_on_match_and_loads_on_mismatch() {
        let t = run_asm(|a| {
            a.mov(rbx, DATA)?;
            a.mov(qword_ptr(rbx), 7)?;
            a.mov(eax, 7)?;
            a.mov(ecx, 9)?;
            a.lock().cmpxchg(qword_ptr(rbx), rcx)?;
            a.setz(dl)?;
            a.mov(eax, 1)?;
            a.cmpxchg(qword_ptr(rbx), rcx)?;
            Ok(())
        });
        assert_eq!(t.mem_u64(DATA), 9);
        assert_eq!(t.cpu.gpr[2], 1);
        assert_eq!(t.cpu.gpr[0], 9);
        assert_eq!(t.arith_flags() & ZF, 0);
    }

    #[test]
    fn cmpxchg8b_compares_edx_eax() {
        let t = run_asm(|a| {
            a.mov(rsi, DATA)?;
            a.mov(rax, 0x1111_2222_3333_4444u64)?;
            a.mov(qword_ptr(rsi), rax)?;
            a.mov(edx, 0x1111_2222)?;
            a.mov(eax, 0x3333_4444)?;
            a.mov(ecx, 5)?;
            a.mov(ebx, 6)?;
            a.cmpxchg8b(qword_ptr(rsi))?;
            Ok(())
        });
        assert_eq!(t.mem_u64(DATA), 0x5_0000_0006);
        assert_ne!(t.arith_flags() & ZF, 0);
    }

    #[test]
    fn lock_on_register_destination_is_ud() {
        let t = run_bytes(&[0xf0, 0x01, 0xc0]); // lock add eax, eax
        assert_eq!(t.exception, Some(6));
    }
}
