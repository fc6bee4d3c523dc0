//! AND, OR, XOR, TEST, NOT.

use super::arith::check_lock;
use super::op_size;
use crate::cpu::Cpu;
use crate::exception::{Exception, Res};
use crate::flags::{size_mask, LazyOp};
use crate::memory::GuestMemory;
use iced_x86::{Instruction, Mnemonic as M};

/// AND, OR, XOR, TEST: CF=OF=0, SF/ZF/PF from the result, AF cleared (undefined in the SDM).
pub(crate) fn alu2(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let m = i.mnemonic();
    if m == M::Test && i.has_lock_prefix() {
        return Err(Exception::ud().into());
    }
    check_lock(i)?;
    let size = op_size(i, 0);
    let dst = cpu.loc(i, 0)?;
    let a = cpu.read_loc(mem, dst, size)?;
    let b = cpu.read_op(mem, i, 1)? & size_mask(size);
    let res = match m {
        M::And | M::Test => a & b,
        M::Or => a | b,
        _ => a ^ b,
    };
    if m != M::Test {
        cpu.write_loc(mem, dst, size, res)?;
    }
    cpu.flags.record(LazyOp::Logic, size, a, b, res, false);
    Ok(())
}

/// NOT: no flags.
pub(crate) fn not(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    check_lock(i)?;
    let size = op_size(i, 0);
    let dst = cpu.loc(i, 0)?;
    let a = cpu.read_loc(mem, dst, size)?;
    cpu.write_loc(mem, dst, size, !a & size_mask(size))
}

#[cfg(test)]
mod tests {
    use crate::flags::{PF, ZF};
    use crate::testutil::*;
    use iced_x86::code_asm::*;

    #[test]
    fn xor_self_zeroes_and_sets_zf_pf() {
        let t = run_asm(|a| {
            a.mov(rax, -1i64)?;
            a.stc()?;
            a.xor(eax, eax)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[0], 0);
        assert_eq!(t.arith_flags(), ZF | PF);
    }

    #[test]
    fn and_with_sign_extended_imm8_on_64_bits() {
        let t = run_asm(|a| {
            a.mov(rsi, 0x1234_5678_9abc_def0u64)?;
            a.and(rsi, -16)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[6], 0x1234_5678_9abc_def0);
        assert_eq!(t.arith_flags(), PF);
    }

    #[test]
    fn or_byte_to_memory_with_sib() {
        let t = run_asm(|a| {
            a.mov(rsp, DATA + 0x100)?;
            a.mov(eax, 3)?;
            a.mov(dl, 0x40u32)?;
            a.mov(byte_ptr(rsp + rax + 2), 1u32)?;
            a.or(byte_ptr(rsp + rax + 2), dl)?;
            a.mov(rsp, STACK_TOP)?;
            Ok(())
        });
        assert_eq!(t.mem_u64(DATA + 0x105) & 0xff, 0x41);
    }

    #[test]
    fn test_does_not_write_and_not_keeps_flags() {
        let t = run_asm(|a| {
            a.mov(ecx, 0xf0)?;
            a.test(cl, 0x0f)?;
            a.not(rcx)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[1], !0xf0u64);
        assert_eq!(t.arith_flags(), ZF | PF);
    }
}
