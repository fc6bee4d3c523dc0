//! SSE/SSE2 data movement and bitwise instructions: MOVAPS/MOVUPS/MOVAPD/MOVUPD/MOVDQA/MOVDQU,
//! the non-temporal stores, MOVD/MOVQ (all forms, MMX included), MOVQ2DQ/MOVDQ2Q, MOVSS/MOVSD,
//! MOVLPS/MOVLPD/MOVHPS/MOVHPD/MOVHLPS/MOVLHPS, MOVMSKPS/MOVMSKPD/PMOVMSKB, ANDPS/ANDNPS/ORPS/
//! XORPS and their PD twins, PAND/PANDN/POR/PXOR, SHUFPS/SHUFPD/PSHUFD/PSHUFLW/PSHUFHW/PSHUFW,
//! UNPCKLPS/UNPCKHPS/UNPCKLPD/UNPCKHPD, PUNPCKL*/PUNPCKH*, PEXTRW/PINSRW.
//!
//! None of these raise SIMD floating-point exceptions.

use crate::cpu::Cpu;
use crate::exception::Res;
use crate::memory::GuestMemory;
use iced_x86::{Instruction, Mnemonic as M, OpKind};

use super::sse::{vreg, VReg};

pub(crate) fn handles(m: M) -> bool {
    matches!(
        m,
        M::Movaps
            | M::Movups
            | M::Movapd
            | M::Movupd
            | M::Movdqa
            | M::Movdqu
            | M::Movntps
            | M::Movntpd
            | M::Movntdq
            | M::Movnti
            | M::Movntq
            | M::Movd
            | M::Movq
            | M::Movq2dq
            | M::Movdq2q
            | M::Movss
            | M::Movsd
            | M::Movlps
            | M::Movlpd
            | M::Movhps
            | M::Movhpd
            | M::Movhlps
            | M::Movlhps
            | M::Movmskps
            | M::Movmskpd
            | M::Pmovmskb
            | M::Andps
            | M::Andpd
            | M::Andnps
            | M::Andnpd
            | M::Orps
            | M::Orpd
            | M::Xorps
            | M::Xorpd
            | M::Pand
            | M::Pandn
            | M::Por
            | M::Pxor
            | M::Shufps
            | M::Shufpd
            | M::Pshufd
            | M::Pshuflw
            | M::Pshufhw
            | M::Pshufw
            | M::Unpcklps
            | M::Unpckhps
            | M::Unpcklpd
            | M::Unpckhpd
            | M::Punpcklbw
            | M::Punpcklwd
            | M::Punpckldq
            | M::Punpcklqdq
            | M::Punpckhbw
            | M::Punpckhwd
            | M::Punpckhdq
            | M::Punpckhqdq
            | M::Pextrw
            | M::Pinsrw
    )
}

const LO64: u128 = u64::MAX as u128;

/// Width in bytes of the vector operand 0 (8 for MMX, else 16).
fn vwidth(i: &Instruction) -> usize {
    match vreg(i.op0_register()) {
        Some(VReg::Mm(_)) => 8,
        _ => 16,
    }
}

fn lane(v: u128, bytes: usize, n: usize) -> u128 {
    let bits = bytes * 8;
    let mask = if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    (v >> (n * bits)) & mask
}

/// Interleave the low (or high) halves of `a` and `b` in lanes of `bytes`, over `width` bytes.
pub(crate) fn unpack(a: u128, b: u128, bytes: usize, width: usize, high: bool) -> u128 {
    let lanes = width / bytes / 2;
    let base = if high { lanes } else { 0 };
    let mut r = 0u128;
    for k in 0..lanes {
        let sh = 2 * k * bytes * 8;
        r |= lane(a, bytes, base + k) << sh;
        r |= lane(b, bytes, base + k) << (sh + bytes * 8);
    }
    r
}

/// Sign bits of each `bytes`-wide lane of the low `width` bytes.
fn movmsk(v: u128, bytes: usize, width: usize) -> u64 {
    let mut m = 0u64;
    for k in 0..width / bytes {
        let top = (v >> ((k + 1) * bytes * 8 - 1)) & 1;
        m |= (top as u64) << k;
    }
    m
}

fn shuffle32(src: u128, imm: u8) -> u128 {
    let mut r = 0u128;
    for k in 0..4 {
        r |= lane(src, 4, ((imm >> (2 * k)) & 3) as usize) << (32 * k);
    }
    r
}

fn shuffle16x4(src: u64, imm: u8) -> u64 {
    let mut r = 0u64;
    for k in 0..4 {
        let s = ((imm >> (2 * k)) & 3) as u32;
        r |= ((src >> (16 * s)) & 0xffff) << (16 * k);
    }
    r
}

pub(crate) fn exec(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let m = i.mnemonic();
    let op0_mem = i.op0_kind() == OpKind::Memory;
    match m {
        M::Movaps
        | M::Movups
        | M::Movapd
        | M::Movupd
        | M::Movdqa
        | M::Movdqu
        | M::Movntps
        | M::Movntpd
        | M::Movntdq
        | M::Movnti
        | M::Movntq => {
            let v = cpu.vsrc(mem, i, 1)?;
            cpu.vdst(mem, i, 0, v)
        }
        M::Movd | M::Movq => {
            let v = cpu.vsrc(mem, i, 1)?;
            let size = match (i.op_kind(1), i.op_kind(0)) {
                (OpKind::Memory, _) | (_, OpKind::Memory) => i.memory_size().size(),
                _ => {
                    let r0 = i.op0_register();
                    let r1 = i.op1_register();
                    if r0.is_gpr32() || r1.is_gpr32() {
                        4
                    } else {
                        8
                    }
                }
            };
            let v = if size == 4 { v & 0xffff_ffff } else { v & LO64 };
            if op0_mem {
                return cpu.vdst(mem, i, 0, v);
            }
            let r0 = i.op0_register();
            if r0.is_gpr() {
                cpu.set_reg(r0, v as u64);
            } else if let Some(x) = vreg(r0) {
                cpu.vset(x, v); // XMM destinations are zero-extended
            }
            Ok(())
        }
        M::Movq2dq | M::Movdq2q => {
            let v = cpu.vsrc(mem, i, 1)? & LO64;
            cpu.vdst(mem, i, 0, v)
        }
        M::Movss | M::Movsd => {
            let (bytes, mask) = if m == M::Movss {
                (4, 0xffff_ffffu128)
            } else {
                (8, LO64)
            };
            let v = cpu.vsrc(mem, i, 1)? & mask;
            if op0_mem {
                return cpu.vdst(mem, i, 0, v);
            }
            let x = vreg(i.op0_register()).unwrap_or(VReg::Xmm(0));
            let old = cpu.vget(x);
            // Register to register merges; a load zeroes the rest.
            let merged = if i.op1_kind() == OpKind::Memory {
                v
            } else {
                (old & !mask) | v
            };
            let _ = bytes;
            cpu.vset(x, merged);
            Ok(())
        }
        M::Movlps | M::Movlpd | M::Movhps | M::Movhpd | M::Movhlps | M::Movlhps => {
            let high = matches!(m, M::Movhps | M::Movhpd);
            if op0_mem {
                let v = cpu.vsrc(mem, i, 1)?;
                let v = if high { v >> 64 } else { v & LO64 };
                return cpu.vdst(mem, i, 0, v);
            }
            let x = vreg(i.op0_register()).unwrap_or(VReg::Xmm(0));
            let old = cpu.vget(x);
            let src = cpu.vsrc(mem, i, 1)?;
            let new = match m {
                M::Movhlps => (old & !LO64) | (src >> 64),
                M::Movlhps => (old & LO64) | (src << 64),
                _ if high => (old & LO64) | ((src & LO64) << 64),
                _ => (old & !LO64) | (src & LO64),
            };
            cpu.vset(x, new);
            Ok(())
        }
        M::Movmskps | M::Movmskpd | M::Pmovmskb => {
            let src = cpu.vsrc(mem, i, 1)?;
            let width = match vreg(i.op1_register()) {
                Some(VReg::Mm(_)) => 8,
                _ => 16,
            };
            let bytes = match m {
                M::Movmskps => 4,
                M::Movmskpd => 8,
                _ => 1,
            };
            cpu.set_reg(i.op0_register(), movmsk(src, bytes, width));
            Ok(())
        }
        M::Pextrw => {
            let src = cpu.vsrc(mem, i, 1)?;
            let lanes = if vwidth_of_op(i, 1) == 8 { 4 } else { 8 };
            let n = (i.immediate8() as usize) % lanes;
            cpu.set_reg(i.op0_register(), lane(src, 2, n) as u64);
            Ok(())
        }
        M::Pinsrw => {
            let x = vreg(i.op0_register()).unwrap_or(VReg::Xmm(0));
            let w = cpu.vsrc(mem, i, 1)? & 0xffff;
            let lanes = vwidth(i) / 2;
            let n = (i.immediate8() as usize) % lanes;
            let old = cpu.vget(x);
            cpu.vset(x, (old & !(0xffffu128 << (16 * n))) | (w << (16 * n)));
            Ok(())
        }
        _ => two_operand(cpu, mem, i),
    }
}

fn vwidth_of_op(i: &Instruction, op: u32) -> usize {
    match vreg(i.op_register(op)) {
        Some(VReg::Mm(_)) => 8,
        _ => 16,
    }
}

/// `dst = f(dst, src)` bitwise, shuffle and unpack forms.
fn two_operand(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let m = i.mnemonic();
    let x = vreg(i.op0_register()).unwrap_or(VReg::Xmm(0));
    let width = vwidth(i);
    let a = cpu.vget(x);
    let b = cpu.vsrc(mem, i, 1)?;
    let imm = if i.op_count() > 2 { i.immediate8() } else { 0 };
    let r = match m {
        M::Andps | M::Andpd | M::Pand => a & b,
        M::Andnps | M::Andnpd | M::Pandn => !a & b,
        M::Orps | M::Orpd | M::Por => a | b,
        M::Xorps | M::Xorpd | M::Pxor => a ^ b,
        M::Shufps => {
            let lo = shuffle32(a, imm) & LO64;
            let hi = shuffle32(b, imm) & !LO64;
            lo | hi
        }
        M::Shufpd => {
            let lo = if imm & 1 != 0 { a >> 64 } else { a & LO64 };
            let hi = if imm & 2 != 0 { b >> 64 } else { b & LO64 };
            lo | (hi << 64)
        }
        M::Pshufd => shuffle32(b, imm),
        M::Pshufw => shuffle16x4(b as u64, imm) as u128,
        M::Pshuflw => (b & !LO64) | shuffle16x4(b as u64, imm) as u128,
        M::Pshufhw => (b & LO64) | ((shuffle16x4((b >> 64) as u64, imm) as u128) << 64),
        M::Unpcklps => unpack(a, b, 4, 16, false),
        M::Unpckhps => unpack(a, b, 4, 16, true),
        M::Unpcklpd | M::Punpcklqdq => unpack(a, b, 8, 16, false),
        M::Unpckhpd | M::Punpckhqdq => unpack(a, b, 8, 16, true),
        M::Punpcklbw => unpack(a, b, 1, width, false),
        M::Punpcklwd => unpack(a, b, 2, width, false),
        M::Punpckldq => unpack(a, b, 4, width, false),
        M::Punpckhbw => unpack(a, b, 1, width, true),
        M::Punpckhwd => unpack(a, b, 2, width, true),
        _ => unpack(a, b, 4, width, true), // Punpckhdq
    };
    cpu.vset(x, r);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::sse::tests::run_sse;
    use crate::testutil::*;
    use iced_x86::code_asm::*;

    #[test]
    fn unpack_interleaves_low_bytes() {
        let a = 0x0f0e_0d0c_0b0a_0908_0706_0504_0302_0100u128;
        let b = 0x1f1e_1d1c_1b1a_1918_1716_1514_1312_1110u128;
        assert_eq!(
            unpack(a, b, 1, 16, false),
            0x1707_1606_1505_1404_1303_1202_1101_1000
        );
        assert_eq!(unpack(a, b, 8, 16, true), (b & !LO64) | (a >> 64));
    }

    #[test]
    fn movd_from_gpr_zero_extends_and_movq_to_memory_stores_8_bytes() {
        let t = run_sse(|a| {
            a.pcmpeqd(xmm0, xmm0)?;
            a.mov(r8d, 0x1234_5678)?;
            a.movd(xmm0, r8d)?;
            a.movq(qword_ptr(DATA), xmm0)?;
            Ok(())
        });
        assert_eq!(t.exception, None);
        assert_eq!(t.cpu.xmm[0], 0x1234_5678);
        assert_eq!(t.mem_u64(DATA), 0x1234_5678);
    }

    #[test]
    fn movsd_load_zeroes_upper_but_register_move_merges() {
        let t = run_sse(|a| {
            a.pcmpeqd(xmm0, xmm0)?;
            a.pcmpeqd(xmm1, xmm1)?;
            a.mov(qword_ptr(DATA), 7)?;
            a.movsd_2(xmm0, qword_ptr(DATA))?;
            a.pxor(xmm2, xmm2)?;
            a.movsd_2(xmm1, xmm2)?;
            Ok(())
        });
        assert_eq!(t.cpu.xmm[0], 7);
        assert_eq!(t.cpu.xmm[1], !LO64);
    }

    #[test]
    fn movhpd_loads_high_and_movlpd_loads_low_qword() {
        let t = run_sse(|a| {
            a.mov(qword_ptr(DATA), 0x11)?;
            a.mov(qword_ptr(DATA + 8), 0x22)?;
            a.movlpd(xmm1, qword_ptr(DATA))?;
            a.movhpd(xmm1, qword_ptr(DATA + 8))?;
            a.movhps(qword_ptr(DATA + 16), xmm1)?;
            Ok(())
        });
        assert_eq!(t.cpu.xmm[1], (0x22u128 << 64) | 0x11);
        assert_eq!(t.mem_u64(DATA + 16), 0x22);
    }

    #[test]
    fn pmovmskb_collects_byte_sign_bits() {
        let t = run_sse(|a| {
            a.mov(rax, 0x8000_0000_0000_0080u64)?;
            a.movq(xmm4, rax)?;
            a.pmovmskb(edx, xmm4)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[2], 0x81);
    }

    #[test]
    fn pshufd_broadcasts_dword_zero() {
        let t = run_sse(|a| {
            a.mov(eax, 0xabcd)?;
            a.movd(xmm0, eax)?;
            a.pshufd(xmm0, xmm0, 0)?;
            Ok(())
        });
        assert_eq!(t.cpu.xmm[0], 0x0000abcd_0000abcd_0000abcd_0000abcd);
    }

    #[test]
    fn movaps_store_then_pxor_clears() {
        let t = run_sse(|a| {
            a.pcmpeqb(xmm3, xmm3)?;
            a.mov(rax, DATA)?;
            a.movaps(xmmword_ptr(rax), xmm3)?;
            a.pxor(xmm3, xmm3)?;
            Ok(())
        });
        assert_eq!(t.mem_u64(DATA), u64::MAX);
        assert_eq!(t.mem_u64(DATA + 8), u64::MAX);
        assert_eq!(t.cpu.xmm[3], 0);
    }
}
