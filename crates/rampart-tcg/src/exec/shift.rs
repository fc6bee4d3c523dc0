//! SHL/SAL, SHR, SAR, ROL, ROR, RCL, RCR, SHLD, SHRD.
//!
//! Flags follow the SDM; where it leaves a flag undefined (AF for non-zero counts, OF for counts
//! other than 1) this computes the count-1 formula for every count, and the differential tests mask
//! those flags.

use super::op_size;
use crate::cpu::Cpu;
use crate::exception::Res;
use crate::flags::{pzs, sign_bit, size_mask, ARITH, CF, OF};
use crate::memory::GuestMemory;
use iced_x86::{Instruction, Mnemonic as M};

/// The count mask of a shift of `size` bytes (the count is taken modulo 32, or 64).
pub(crate) fn count_mask(size: u8) -> u64 {
    if size == 8 {
        0x3f
    } else {
        0x1f
    }
}

/// Write the destination, then commit the flags in `mask` (the others are untouched).
fn commit(
    cpu: &mut Cpu,
    mem: &mut dyn GuestMemory,
    i: &Instruction,
    size: u8,
    res: u64,
    mask: u64,
    f: u64,
) -> Res<()> {
    let dst = cpu.loc(i, 0)?;
    cpu.write_loc(mem, dst, size, res)?;
    if mask != 0 {
        cpu.flags.set_arith(mask, f);
    }
    Ok(())
}

/// The single-operand-count shifts and rotates (count is 1, an immediate or CL).
pub(crate) fn shift(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let size = op_size(i, 0);
    let dst = cpu.loc(i, 0)?;
    let a = cpu.read_loc(mem, dst, size)? & size_mask(size);
    let c = cpu.read_op(mem, i, 1)? & count_mask(size);
    if c == 0 {
        // No flags change, but the destination is still written (32-bit registers zero-extend).
        return commit(cpu, mem, i, size, a, 0, 0);
    }
    let Some((res, mask_f, f)) = shift_result(i.mnemonic(), size, a, c, cpu.flags.get(CF)) else {
        return Err(cpu.unimplemented(i));
    };
    commit(cpu, mem, i, size, res, mask_f, f)
}

/// Shift or rotate `a` (`size` bytes, masked) by `c` (masked, non-zero) with carry-in `cf_in`:
/// (result, the arithmetic flags it writes, their values); `None` if `m` is not a shift.
pub(crate) fn shift_result(m: M, size: u8, a: u64, c: u64, cf_in: bool) -> Option<(u64, u64, u64)> {
    let bits = size as u64 * 8;
    let mask = size_mask(size);
    let sb = sign_bit(size);
    Some(match m {
        M::Shl | M::Sal => {
            let res = if c >= 64 { 0 } else { (a << c) & mask };
            let cf = c <= bits && (a >> (bits - c)) & 1 != 0;
            let of = (res & sb != 0) != cf;
            (res, ARITH, pzs(res, size) | flag(cf, CF) | flag(of, OF))
        }
        M::Shr => {
            let res = if c >= 64 { 0 } else { a >> c };
            let cf = c <= 64 && (a >> (c - 1)) & 1 != 0;
            let of = a & sb != 0;
            (res, ARITH, pzs(res, size) | flag(cf, CF) | flag(of, OF))
        }
        M::Sar => {
            let s = super::sext(a, size) as i64;
            let res = (s >> c.min(63)) as u64 & mask;
            let cf = (s >> (c - 1).min(63)) & 1 != 0;
            (res, ARITH, pzs(res, size) | flag(cf, CF))
        }
        M::Rol => {
            let r = c % bits;
            let res = if r == 0 {
                a
            } else {
                ((a << r) | (a >> (bits - r))) & mask
            };
            let cf = res & 1 != 0;
            let of = (res & sb != 0) != cf;
            (res, CF | OF, flag(cf, CF) | flag(of, OF))
        }
        M::Ror => {
            let r = c % bits;
            let res = if r == 0 {
                a
            } else {
                ((a >> r) | (a << (bits - r))) & mask
            };
            let cf = res & sb != 0;
            let of = cf != (res & (sb >> 1) != 0);
            (res, CF | OF, flag(cf, CF) | flag(of, OF))
        }
        M::Rcl | M::Rcr => {
            let r = if size <= 2 { c % (bits + 1) } else { c };
            let (mut v, mut cf) = (a, cf_in);
            for _ in 0..r {
                if m == M::Rcl {
                    let out = v & sb != 0;
                    v = ((v << 1) | cf as u64) & mask;
                    cf = out;
                } else {
                    let out = v & 1 != 0;
                    v = (v >> 1) | if cf { sb } else { 0 };
                    cf = out;
                }
            }
            let of = if m == M::Rcl {
                (v & sb != 0) != cf
            } else {
                (v & sb != 0) != (v & (sb >> 1) != 0)
            };
            (v, CF | OF, flag(cf, CF) | flag(of, OF))
        }
        _ => return None,
    })
}

fn flag(on: bool, f: u64) -> u64 {
    if on {
        f
    } else {
        0
    }
}

/// SHLD/SHRD dst, src, count.
pub(crate) fn double(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let size = op_size(i, 0);
    let bits = size as u64 * 8;
    let mask = size_mask(size);
    let sb = sign_bit(size);
    let dst = cpu.loc(i, 0)?;
    let a = cpu.read_loc(mem, dst, size)? & mask;
    let b = cpu.reg(i.op1_register()) & mask;
    let c = cpu.read_op(mem, i, 2)? & count_mask(size);
    if c == 0 {
        return commit(cpu, mem, i, size, a, 0, 0);
    }
    // 16-bit operands with counts above 16 are undefined (the result is whatever falls out here).
    let (res, cf) = if i.mnemonic() == M::Shld {
        let w: u128 = ((a as u128) << bits) | b as u128;
        let res = ((w << c) >> bits) as u64 & mask;
        let cf = (w >> (2 * bits - c)) & 1 != 0;
        (res, cf)
    } else {
        let w: u128 = ((b as u128) << bits) | a as u128;
        let res = (w >> c) as u64 & mask;
        let cf = (w >> (c - 1)) & 1 != 0;
        (res, cf)
    };
    let of = (res & sb) != (a & sb);
    commit(
        cpu,
        mem,
        i,
        size,
        res,
        ARITH,
        pzs(res, size) | flag(cf, CF) | flag(of, OF),
    )
}

#[cfg(test)]
mod tests {
    use crate::flags::{CF, OF, PF, SF, ZF};
    use crate::testutil::*;
    use iced_x86::code_asm::*;

    #[test]
    fn shl_by_32_on_64_bits_moves_low_half_up() {
        let t = run_asm(|a| {
            a.mov(edi, 0x8000_0001u32)?;
            a.shl(rdi, 32)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[7], 0x8000_0001_0000_0000);
        assert_eq!(t.arith_flags() & (CF | ZF | SF), SF);
    }

    #[test]
    fn shift_count_zero_changes_no_flags() {
        let t = run_asm(|a| {
            a.stc()?;
            a.xor(ecx, ecx)?; // ZF=1, CF=0
            a.stc()?;
            a.mov(eax, 5)?;
            a.shl(eax, cl)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[0], 5);
        assert_eq!(t.arith_flags(), CF | ZF | PF);
    }

    #[test]
    fn sar_fills_with_sign_and_sets_cf_from_last_bit() {
        let t = run_asm(|a| {
            a.mov(al, 0x85u32)?;
            a.sar(al, 1)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[0] & 0xff, 0xc2);
        assert_eq!(t.arith_flags() & (CF | SF | OF), CF | SF);
    }

    #[test]
    fn ror_by_12_rotates_dword() {
        let t = run_asm(|a| {
            a.mov(esi, 0x1234_5678)?;
            a.ror(esi, 12)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[6], 0x6781_2345);
    }

    #[test]
    fn rcl_rotates_through_carry() {
        let t = run_asm(|a| {
            a.stc()?;
            a.mov(bl, 0x80u32)?;
            a.rcl(bl, 1)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[3] & 0xff, 1);
        assert_eq!(t.arith_flags() & (CF | OF), CF | OF);
    }

    #[test]
    fn shrd_shifts_in_source_bits() {
        let t = run_asm(|a| {
            a.mov(rax, 0x0000_0000_0000_00ffu64)?;
            a.mov(rdx, 0x1u64)?;
            a.shrd(rax, rdx, 4)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[0], 0x1000_0000_0000_000f);
        assert_ne!(t.arith_flags() & CF, 0);
    }

    #[test]
    fn shld_shifts_in_source_bits() {
        let t = run_asm(|a| {
            a.mov(eax, 0x8000_0001u32)?;
            a.mov(edx, 0xf000_0000u32)?;
            a.shld(eax, edx, 4)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[0], 0x0000_001f);
        assert_eq!(t.arith_flags() & CF, 0);
    }
}
