//! Packed integer SSE2 and MMX instructions: PADD*/PSUB* (wrapping and saturating), PCMPEQ*/
//! PCMPGT*, PMINUB/PMAXUB/PMINSW/PMAXSW, PAVGB/PAVGW, PMULLW/PMULHW/PMULHUW/PMULUDQ/PMADDWD,
//! PSADBW, PSLL*/PSRL*/PSRA* (immediate and register counts), PSLLDQ/PSRLDQ, PACKSSWB/PACKSSDW/
//! PACKUSWB. The same code serves 64-bit MM and 128-bit XMM operands.

use super::sse::{vreg, VReg};
use crate::cpu::Cpu;
use crate::exception::Res;
use crate::memory::GuestMemory;
use iced_x86::{Instruction, Mnemonic as M, OpKind};

pub(crate) fn handles(m: M) -> bool {
    matches!(
        m,
        M::Paddb
            | M::Paddw
            | M::Paddd
            | M::Paddq
            | M::Paddsb
            | M::Paddsw
            | M::Paddusb
            | M::Paddusw
            | M::Psubb
            | M::Psubw
            | M::Psubd
            | M::Psubq
            | M::Psubsb
            | M::Psubsw
            | M::Psubusb
            | M::Psubusw
            | M::Pcmpeqb
            | M::Pcmpeqw
            | M::Pcmpeqd
            | M::Pcmpgtb
            | M::Pcmpgtw
            | M::Pcmpgtd
            | M::Pminub
            | M::Pmaxub
            | M::Pminsw
            | M::Pmaxsw
            | M::Pavgb
            | M::Pavgw
            | M::Pmullw
            | M::Pmulhw
            | M::Pmulhuw
            | M::Pmuludq
            | M::Pmaddwd
            | M::Psadbw
            | M::Psllw
            | M::Pslld
            | M::Psllq
            | M::Psrlw
            | M::Psrld
            | M::Psrlq
            | M::Psraw
            | M::Psrad
            | M::Pslldq
            | M::Psrldq
            | M::Packsswb
            | M::Packssdw
            | M::Packuswb
    )
}

fn mask(bytes: usize) -> u64 {
    if bytes >= 8 {
        u64::MAX
    } else {
        (1u64 << (bytes * 8)) - 1
    }
}

fn get(v: u128, bytes: usize, n: usize) -> u64 {
    (v >> (n * bytes * 8)) as u64 & mask(bytes)
}

fn sx(v: u64, bytes: usize) -> i64 {
    let sh = 64 - bytes * 8;
    ((v << sh) as i64) >> sh
}

/// Apply `f` lane by lane over the low `width` bytes.
fn map2(a: u128, b: u128, bytes: usize, width: usize, f: impl Fn(u64, u64) -> u64) -> u128 {
    let mut r = 0u128;
    for n in 0..width / bytes {
        let v = f(get(a, bytes, n), get(b, bytes, n)) & mask(bytes);
        r |= (v as u128) << (n * bytes * 8);
    }
    r
}

fn sat_signed(v: i64, bytes: usize) -> u64 {
    let max = (1i64 << (bytes * 8 - 1)) - 1;
    let min = -(1i64 << (bytes * 8 - 1));
    v.clamp(min, max) as u64
}

fn sat_unsigned(v: i64, bytes: usize) -> u64 {
    v.clamp(0, mask(bytes) as i64) as u64
}

/// Pack the lanes of `a` then `b` (each `from` bytes) into lanes of `from / 2` bytes.
fn pack(a: u128, b: u128, from: usize, width: usize, signed_out: bool) -> u128 {
    let to = from / 2;
    let lanes = width / from;
    let mut r = 0u128;
    for (k, src) in [a, b].iter().enumerate() {
        for n in 0..lanes {
            let v = sx(get(*src, from, n), from);
            let s = if signed_out {
                sat_signed(v, to)
            } else {
                sat_unsigned(v, to)
            } & mask(to);
            r |= (s as u128) << ((k * lanes + n) * to * 8);
        }
    }
    r
}

/// Shift every lane by `count` (a count at or past the lane width clears, or fills with the
/// sign for arithmetic shifts).
fn shift(a: u128, bytes: usize, width: usize, count: u64, kind: M) -> u128 {
    let bits = bytes as u64 * 8;
    map2(a, 0, bytes, width, |x, _| match kind {
        M::Psllw | M::Pslld | M::Psllq => {
            if count >= bits {
                0
            } else {
                x << count
            }
        }
        M::Psrlw | M::Psrld | M::Psrlq => {
            if count >= bits {
                0
            } else {
                x >> count
            }
        }
        _ => (sx(x, bytes) >> count.min(bits - 1)) as u64,
    })
}

pub(crate) fn exec(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let m = i.mnemonic();
    let x = vreg(i.op0_register()).unwrap_or(VReg::Xmm(0));
    let width = if matches!(x, VReg::Mm(_)) { 8 } else { 16 };
    let a = cpu.vget(x);
    let b = if i.op1_kind() == OpKind::Immediate8 {
        i.immediate8() as u128
    } else {
        cpu.vsrc(mem, i, 1)?
    };
    let lane_bytes = |m: M| -> usize {
        match m {
            M::Paddb | M::Psubb | M::Paddsb | M::Paddusb | M::Psubsb | M::Psubusb => 1,
            M::Pcmpeqb | M::Pcmpgtb | M::Pminub | M::Pmaxub | M::Pavgb => 1,
            M::Paddd | M::Psubd | M::Pcmpeqd | M::Pcmpgtd | M::Pslld | M::Psrld | M::Psrad => 4,
            M::Paddq | M::Psubq | M::Psllq | M::Psrlq => 8,
            _ => 2,
        }
    };
    let n = lane_bytes(m);
    let r = match m {
        M::Paddb | M::Paddw | M::Paddd | M::Paddq => map2(a, b, n, width, u64::wrapping_add),
        M::Psubb | M::Psubw | M::Psubd | M::Psubq => map2(a, b, n, width, u64::wrapping_sub),
        M::Paddsb | M::Paddsw => map2(a, b, n, width, |x, y| sat_signed(sx(x, n) + sx(y, n), n)),
        M::Psubsb | M::Psubsw => map2(a, b, n, width, |x, y| sat_signed(sx(x, n) - sx(y, n), n)),
        M::Paddusb | M::Paddusw => {
            map2(a, b, n, width, |x, y| sat_unsigned(x as i64 + y as i64, n))
        }
        M::Psubusb | M::Psubusw => {
            map2(a, b, n, width, |x, y| sat_unsigned(x as i64 - y as i64, n))
        }
        M::Pcmpeqb | M::Pcmpeqw | M::Pcmpeqd => {
            map2(a, b, n, width, |x, y| if x == y { u64::MAX } else { 0 })
        }
        M::Pcmpgtb | M::Pcmpgtw | M::Pcmpgtd => map2(a, b, n, width, |x, y| {
            if sx(x, n) > sx(y, n) {
                u64::MAX
            } else {
                0
            }
        }),
        M::Pminub => map2(a, b, 1, width, |x, y| x.min(y)),
        M::Pmaxub => map2(a, b, 1, width, |x, y| x.max(y)),
        M::Pminsw => map2(a, b, 2, width, |x, y| sx(x, 2).min(sx(y, 2)) as u64),
        M::Pmaxsw => map2(a, b, 2, width, |x, y| sx(x, 2).max(sx(y, 2)) as u64),
        M::Pavgb | M::Pavgw => map2(a, b, n, width, |x, y| (x + y + 1) >> 1),
        M::Pmullw => map2(a, b, 2, width, |x, y| x.wrapping_mul(y)),
        M::Pmulhw => map2(a, b, 2, width, |x, y| ((sx(x, 2) * sx(y, 2)) >> 16) as u64),
        M::Pmulhuw => map2(a, b, 2, width, |x, y| (x * y) >> 16),
        M::Pmuludq => map2(a, b, 8, width, |x, y| (x & 0xffff_ffff) * (y & 0xffff_ffff)),
        M::Pmaddwd => map2(a, b, 4, width, |x, y| {
            let lo = sx(x & 0xffff, 2) * sx(y & 0xffff, 2);
            let hi = sx(x >> 16, 2) * sx(y >> 16, 2);
            (lo + hi) as u64
        }),
        M::Psadbw => map2(a, b, 8, width, |x, y| {
            (0..8)
                .map(|k| ((x >> (8 * k)) & 0xff).abs_diff((y >> (8 * k)) & 0xff))
                .sum()
        }),
        M::Psllw | M::Pslld | M::Psllq | M::Psrlw | M::Psrld | M::Psrlq | M::Psraw | M::Psrad => {
            // Register/memory counts use the whole low 64 bits.
            let count = b as u64;
            shift(a, n, width, count, m)
        }
        M::Pslldq | M::Psrldq => {
            let bytes = (b as u32).min(16);
            if bytes >= 16 {
                0
            } else if m == M::Pslldq {
                a << (bytes * 8)
            } else {
                a >> (bytes * 8)
            }
        }
        M::Packsswb => pack(a, b, 2, width, true),
        M::Packssdw => pack(a, b, 4, width, true),
        _ => pack(a, b, 2, width, false), // Packuswb
    };
    cpu.vset(x, r);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::sse::tests::run_sse;
    use iced_x86::code_asm::*;

    #[test]
    fn saturating_adds_clamp() {
        let r = map2(0x7f80, 0x0101, 1, 2, |x, y| {
            sat_signed(sx(x, 1) + sx(y, 1), 1)
        });
        assert_eq!(r, 0x7f81);
        let r = map2(0xfff0, 0x0020, 1, 2, |x, y| {
            sat_unsigned(x as i64 + y as i64, 1)
        });
        assert_eq!(r, 0xffff);
    }

    #[test]
    fn packs_saturate_per_lane() {
        assert_eq!(pack(0x0100_ff80, 0, 2, 4, false), 0xff00);
        assert_eq!(pack(0x8000_7fff, 0, 2, 4, true), 0x807f);
    }

    #[test]
    fn shifts_past_width_clear_or_fill_sign() {
        assert_eq!(shift(0x8000_0001, 4, 8, 32, M::Pslld), 0);
        assert_eq!(shift(0x8000_0001, 4, 4, 40, M::Psrad), 0xffff_ffff);
        assert_eq!(shift(0x8000_0001, 4, 4, 1, M::Psrld), 0x4000_0000);
    }

    #[test]
    fn pcmpeqb_psubb_and_byte_shifts_on_xmm() {
        let t = run_sse(|a| {
            a.pcmpeqb(xmm1, xmm1)?; // all ones
            a.pxor(xmm0, xmm0)?;
            a.psubb(xmm0, xmm1)?; // 0 - (-1) = 1 per byte
            a.psrldq(xmm0, 15)?;
            a.pslldq(xmm1, 11)?;
            Ok(())
        });
        assert_eq!(t.cpu.xmm[0], 1);
        assert_eq!(t.cpu.xmm[1], u128::MAX << 88);
    }

    #[test]
    fn pminub_with_memory_operand_requires_alignment() {
        let t = run_sse(|a| {
            a.mov(rax, crate::testutil::DATA + 8)?;
            a.pminub(xmm0, xmmword_ptr(rax))?;
            Ok(())
        });
        assert_eq!(t.exception, Some(13));
    }

    #[test]
    fn mmx_paddd_wraps_in_64_bits() {
        let t = run_sse(|a| {
            a.mov(rax, 0xffff_ffff_0000_0001u64)?;
            a.movq(mm0, rax)?;
            a.paddd(mm0, mm0)?;
            a.movq(rbx, mm0)?;
            a.emms()?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[3], 0xffff_fffe_0000_0002);
    }
}
