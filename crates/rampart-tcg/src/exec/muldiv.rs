//! MUL, IMUL (one, two and three operands), DIV, IDIV (#DE on zero divisor or quotient overflow).
//!
//! After MUL/IMUL only CF and OF are defined (set when the high half is significant); SF/ZF/PF are
//! computed from the low half of the result and AF cleared. After DIV/IDIV all six flags are
//! undefined; they are left unchanged.

use super::{op_size, sext};
use crate::cpu::Cpu;
use crate::exception::{Exception, Res};
use crate::flags::{pzs, size_mask, ARITH, CF, OF};
use crate::memory::GuestMemory;
use iced_x86::{Instruction, Mnemonic as M, Register};

fn regs(size: u8) -> (Register, Register) {
    match size {
        1 => (Register::AL, Register::AH),
        2 => (Register::AX, Register::DX),
        4 => (Register::EAX, Register::EDX),
        _ => (Register::RAX, Register::RDX),
    }
}

fn mul_flags(cpu: &mut Cpu, size: u8, low: u64, overflow: bool) {
    let cf = if overflow { CF | OF } else { 0 };
    cpu.flags.set_arith(ARITH, pzs(low, size) | cf);
}

pub(crate) fn exec(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let m = i.mnemonic();
    if m == M::Imul && i.op_count() >= 2 {
        return imul_multi(cpu, mem, i);
    }
    let size = op_size(i, 0);
    let bits = size as u32 * 8;
    let mask = size_mask(size);
    let src = cpu.read_op(mem, i, 0)? & mask;
    let (lo_r, hi_r) = regs(size);
    let acc = cpu.reg(lo_r) & mask;
    // For 8-bit forms the dividend is AX and results go to AL/AH.
    let hi_in = if size == 1 {
        (cpu.reg(Register::AX) >> 8) & 0xff
    } else {
        cpu.reg(hi_r) & mask
    };
    match m {
        M::Mul => {
            let p = acc as u128 * src as u128;
            let (lo, hi) = (p as u64 & mask, (p >> bits) as u64 & mask);
            write_pair(cpu, size, lo, hi);
            mul_flags(cpu, size, lo, hi != 0);
        }
        M::Imul => {
            let p = sext(acc, size) as i64 as i128 * sext(src, size) as i64 as i128;
            let lo = p as u64 & mask;
            let hi = (p >> bits) as u64 & mask;
            let overflow = sext(lo, size) as i64 as i128 != p;
            write_pair(cpu, size, lo, hi);
            mul_flags(cpu, size, lo, overflow);
        }
        M::Div => {
            if src == 0 {
                return Err(Exception::de().into());
            }
            let dividend = ((hi_in as u128) << bits) | acc as u128;
            let q = dividend / src as u128;
            let r = dividend % src as u128;
            if q > mask as u128 {
                return Err(Exception::de().into());
            }
            write_pair(cpu, size, q as u64, r as u64);
        }
        _ => {
            if src == 0 {
                return Err(Exception::de().into());
            }
            let dividend = (((hi_in as u128) << bits) | acc as u128) as i128;
            // Sign-extend the 2*bits-wide dividend.
            let shift = 128 - 2 * bits;
            let dividend = (dividend << shift) >> shift;
            let divisor = sext(src, size) as i64 as i128;
            let q = dividend.wrapping_div(divisor);
            let r = dividend.wrapping_rem(divisor);
            let min = -(1i128 << (bits - 1));
            let max = (1i128 << (bits - 1)) - 1;
            if q < min || q > max {
                return Err(Exception::de().into());
            }
            write_pair(cpu, size, q as u64 & mask, r as u64 & mask);
        }
    }
    Ok(())
}

/// Store a result pair: AX for 8-bit (lo in AL, hi in AH), otherwise rDX:rAX.
fn write_pair(cpu: &mut Cpu, size: u8, lo: u64, hi: u64) {
    if size == 1 {
        cpu.set_reg(Register::AX, (hi << 8) | (lo & 0xff));
    } else {
        let (lo_r, hi_r) = regs(size);
        cpu.set_reg(lo_r, lo);
        cpu.set_reg(hi_r, hi);
    }
}

/// IMUL r, r/m and IMUL r, r/m, imm: truncated product, CF=OF=significant bits lost.
fn imul_multi(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let size = op_size(i, 0);
    let (a, b) = if i.op_count() == 3 {
        (cpu.read_op(mem, i, 1)?, cpu.read_op(mem, i, 2)?)
    } else {
        (cpu.reg(i.op0_register()), cpu.read_op(mem, i, 1)?)
    };
    let lo = imul_truncated(cpu, size, a, b);
    cpu.set_reg(i.op0_register(), lo);
    Ok(())
}

/// The two- and three-operand IMUL: the product of `a` and `b` (signed, `size` bytes)
/// truncated to `size`, with the flags recorded (CF = OF = the product did not fit).
pub(crate) fn imul_truncated(cpu: &mut Cpu, size: u8, a: u64, b: u64) -> u64 {
    let p = sext(a, size) as i64 as i128 * sext(b, size) as i64 as i128;
    let lo = p as u64 & size_mask(size);
    let overflow = sext(lo, size) as i64 as i128 != p;
    mul_flags(cpu, size, lo, overflow);
    lo
}

#[cfg(test)]
mod tests {
    use crate::flags::{CF, OF};
    use crate::testutil::*;
    use iced_x86::code_asm::*;

    #[test]
    fn mul_64_produces_128_bit_result() {
        let t = run_asm(|a| {
            a.mov(rax, u64::MAX)?;
            a.mov(rcx, 2u64)?;
            a.mul(rcx)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[0], u64::MAX - 1);
        assert_eq!(t.cpu.gpr[2], 1);
        assert_eq!(t.arith_flags() & (CF | OF), CF | OF);
    }

    #[test]
    fn imul_three_operand_with_memory() {
        let t = run_asm(|a| {
            a.mov(qword_ptr(DATA), -3)?;
            a.imul_3(rax, qword_ptr(DATA), 0x3d0900)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[0] as i64, -3 * 0x3d0900);
        assert_eq!(t.arith_flags() & (CF | OF), 0);
    }

    #[test]
    fn imul_8_bit_overflow_sets_cf_of() {
        let t = run_asm(|a| {
            a.mov(al, 100u32)?;
            a.mov(cl, 2u32)?;
            a.imul(cl)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[0] & 0xffff, 200);
        assert_eq!(t.arith_flags() & (CF | OF), CF | OF);
    }

    #[test]
    fn div_splits_quotient_and_remainder() {
        let t = run_asm(|a| {
            a.xor(edx, edx)?;
            a.mov(eax, 100)?;
            a.mov(ecx, 7)?;
            a.div(ecx)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[0], 14);
        assert_eq!(t.cpu.gpr[2], 2);
    }

    #[test]
    fn idiv_negative_rounds_toward_zero() {
        let t = run_asm(|a| {
            a.mov(rax, -7i64)?;
            a.cqo()?;
            a.mov(rcx, 2u64)?;
            a.idiv(rcx)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[0] as i64, -3);
        assert_eq!(t.cpu.gpr[2] as i64, -1);
    }

    #[test]
    fn divide_by_zero_raises_de() {
        let t = run_asm(|a| {
            a.xor(ecx, ecx)?;
            a.div(ecx)?;
            Ok(())
        });
        assert_eq!(t.exception, Some(0));
    }

    #[test]
    fn quotient_overflow_raises_de() {
        let t = run_asm(|a| {
            a.mov(eax, 0x8000_0000u32)?;
            a.cdq()?;
            a.mov(ecx, -1i32)?;
            a.idiv(ecx)?;
            Ok(())
        });
        assert_eq!(t.exception, Some(0));
    }
}
