//! SSE/SSE2 conversions between integers, singles and doubles (see `sse_fp` for the list).
//! Float-to-integer conversions round with MXCSR.RC (the CVTT forms truncate) and store the
//! integer indefinite (only the sign bit set) with IE for NaN, infinity and out-of-range
//! values; inexact conversions raise PE. Float-to-float narrowing raises IE/DE/OE/UE/PE.

use super::sse::{vreg, VReg};
use super::sse_float::{self as sf, Class, Fmt, Round, F32, F64};
use super::sse_fp::Ctx;
use crate::cpu::Cpu;
use crate::exception::Res;
use crate::memory::GuestMemory;
use iced_x86::{Instruction, Mnemonic as M, OpKind};

const LO64: u128 = u64::MAX as u128;

/// Float lane to a signed integer of `bits` (32 or 64).
fn f2i(ctx: &mut Ctx, f: Fmt, v: u128, bits: u32, trunc: bool) -> u64 {
    let u = ctx.src(f, v);
    let rc = if trunc { Round::Zero } else { ctx.rc };
    let indefinite = 1u64 << (bits - 1);
    match sf::to_int(u, bits, rc) {
        Some((x, inexact)) => {
            if inexact {
                ctx.post |= sf::PE;
            }
            if bits == 32 {
                x as u32 as u64
            } else {
                x as u64
            }
        }
        None => {
            ctx.pre |= sf::IE;
            indefinite
        }
    }
}

fn i2f(ctx: &mut Ctx, f: Fmt, v: i64) -> u128 {
    let (r, fl) = sf::from_int(f, v, ctx.rc);
    ctx.post |= fl & 0x3f;
    r
}

/// Float to float (widening is exact; narrowing rounds).
fn f2f(ctx: &mut Ctx, from: Fmt, to: Fmt, v: u128) -> u128 {
    let u = ctx.src(from, v);
    match u.class {
        Class::SNan => {
            ctx.pre |= sf::IE;
            sf::convert_nan(from, to, v)
        }
        Class::QNan => sf::convert_nan(from, to, v),
        Class::Inf => to.inf(u.sign),
        Class::Zero => to.zero(u.sign),
        Class::Denormal | Class::Normal => {
            if u.class == Class::Denormal {
                ctx.pre |= sf::DE;
            }
            let (r, fl) = sf::round_pack(to, u.sign, u.exp, u.sig, false, ctx.rc, ctx.ftz);
            ctx.post |= fl;
            r
        }
    }
}

fn lane(v: u128, bits: usize, n: usize) -> u128 {
    (v >> (n * bits)) & ((1u128 << bits) - 1)
}

pub(crate) fn convert(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let m = i.mnemonic();
    let src = cpu.vsrc(mem, i, 1)?;
    let mut ctx = Ctx::new(cpu);
    let dst_reg = i.op0_register();
    let old = vreg(dst_reg).map(|x| cpu.vget(x)).unwrap_or(0);
    // The width of an integer source: a 32-bit GPR or a 4-byte memory operand.
    let src32 = match i.op1_kind() {
        OpKind::Register => i.op1_register().is_gpr32(),
        _ => i.memory_size().size() == 4,
    };
    let int_src = |v: u128| -> i64 {
        if src32 {
            v as u32 as i32 as i64
        } else {
            v as u64 as i64
        }
    };
    let trunc = matches!(
        m,
        M::Cvttss2si | M::Cvttsd2si | M::Cvttps2dq | M::Cvttpd2dq | M::Cvttps2pi | M::Cvttpd2pi
    );
    enum Out {
        Vec(u128),
        Gpr(u64),
    }
    let out = match m {
        M::Cvtsi2ss => Out::Vec((old & !0xffff_ffff) | i2f(&mut ctx, F32, int_src(src))),
        M::Cvtsi2sd => Out::Vec((old & !LO64) | i2f(&mut ctx, F64, int_src(src))),
        M::Cvtss2si | M::Cvttss2si | M::Cvtsd2si | M::Cvttsd2si => {
            let f = if matches!(m, M::Cvtss2si | M::Cvttss2si) {
                F32
            } else {
                F64
            };
            let bits = if dst_reg.is_gpr32() { 32 } else { 64 };
            Out::Gpr(f2i(&mut ctx, f, src & f.mask(), bits, trunc))
        }
        M::Cvtss2sd => Out::Vec((old & !LO64) | f2f(&mut ctx, F32, F64, src & 0xffff_ffff)),
        M::Cvtsd2ss => Out::Vec((old & !0xffff_ffff) | f2f(&mut ctx, F64, F32, src & LO64)),
        M::Cvtps2pd => {
            let lo = f2f(&mut ctx, F32, F64, lane(src, 32, 0));
            let hi = f2f(&mut ctx, F32, F64, lane(src, 32, 1));
            Out::Vec(lo | (hi << 64))
        }
        M::Cvtpd2ps => {
            let lo = f2f(&mut ctx, F64, F32, lane(src, 64, 0));
            let hi = f2f(&mut ctx, F64, F32, lane(src, 64, 1));
            Out::Vec(lo | (hi << 32))
        }
        M::Cvtdq2ps => {
            let mut r = 0u128;
            for n in 0..4 {
                r |= i2f(&mut ctx, F32, lane(src, 32, n) as u32 as i32 as i64) << (32 * n);
            }
            Out::Vec(r)
        }
        M::Cvtps2dq | M::Cvttps2dq => {
            let mut r = 0u128;
            for n in 0..4 {
                r |= (f2i(&mut ctx, F32, lane(src, 32, n), 32, trunc) as u128) << (32 * n);
            }
            Out::Vec(r)
        }
        M::Cvtdq2pd | M::Cvtpi2pd => {
            let lo = i2f(&mut ctx, F64, lane(src, 32, 0) as u32 as i32 as i64);
            let hi = i2f(&mut ctx, F64, lane(src, 32, 1) as u32 as i32 as i64);
            Out::Vec(lo | (hi << 64))
        }
        M::Cvtpd2dq | M::Cvttpd2dq | M::Cvtpd2pi | M::Cvttpd2pi => {
            let lo = f2i(&mut ctx, F64, lane(src, 64, 0), 32, trunc) as u128;
            let hi = f2i(&mut ctx, F64, lane(src, 64, 1), 32, trunc) as u128;
            Out::Vec(lo | (hi << 32))
        }
        M::Cvtpi2ps => {
            let lo = i2f(&mut ctx, F32, lane(src, 32, 0) as u32 as i32 as i64);
            let hi = i2f(&mut ctx, F32, lane(src, 32, 1) as u32 as i32 as i64);
            Out::Vec((old & !LO64) | lo | (hi << 32))
        }
        _ => {
            // Cvtps2pi / Cvttps2pi
            let lo = f2i(&mut ctx, F32, lane(src, 32, 0), 32, trunc) as u128;
            let hi = f2i(&mut ctx, F32, lane(src, 32, 1), 32, trunc) as u128;
            Out::Vec(lo | (hi << 32))
        }
    };
    cpu.sse_raise(ctx.pre, ctx.post)?;
    match out {
        Out::Gpr(v) => cpu.set_reg(dst_reg, v),
        Out::Vec(v) => {
            if let Some(x) = vreg(dst_reg) {
                cpu.vset(x, v);
            }
        }
    }
    let _ = VReg::Xmm(0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::exec::sse::tests::run_sse;
    use crate::testutil::*;
    use iced_x86::code_asm::*;

    #[test]
    fn cvttsd2si_truncates_and_nan_gives_integer_indefinite() {
        let t = run_sse(|a| {
            a.mov(rax, (-2.75f64).to_bits())?;
            a.movq(xmm0, rax)?;
            a.cvttsd2si(r9, xmm0)?;
            a.mov(rax, f64::NAN.to_bits())?;
            a.movq(xmm1, rax)?;
            a.cvttsd2si(r10d, xmm1)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[9] as i64, -2);
        assert_eq!(t.cpu.gpr[10], 0x8000_0000);
        assert_eq!(t.cpu.mxcsr & 0x3f, 0x21);
    }

    #[test]
    fn cvtsd2si_uses_mxcsr_rounding() {
        let t = run_sse(|a| {
            a.mov(dword_ptr(DATA), 0x1f80 | (1 << 13))?; // round down
            a.ldmxcsr(dword_ptr(DATA))?;
            a.mov(rax, 2.5f64.to_bits())?;
            a.movq(xmm0, rax)?;
            a.cvtsd2si(rcx, xmm0)?;
            a.mov(dword_ptr(DATA), 0x1f80)?;
            a.ldmxcsr(dword_ptr(DATA))?;
            a.cvtsd2si(rdx, xmm0)?; // nearest even
            Ok(())
        });
        assert_eq!(t.cpu.gpr[1], 2);
        assert_eq!(t.cpu.gpr[2], 2);
    }

    #[test]
    fn cvtsi2sd_from_memory_dword_and_qword_register() {
        let t = run_sse(|a| {
            a.mov(dword_ptr(DATA), -7)?;
            a.cvtsi2sd(xmm0, dword_ptr(DATA))?;
            a.mov(r9, i64::MAX)?;
            a.cvtsi2sd(xmm1, r9)?;
            Ok(())
        });
        assert_eq!(t.cpu.xmm[0] as u64, (-7.0f64).to_bits());
        assert_eq!(t.cpu.xmm[1] as u64, (i64::MAX as f64).to_bits());
        assert_eq!(t.cpu.mxcsr & 0x3f, 0x20);
    }

    #[test]
    fn cvtsd2ss_overflow_raises_oe_and_pe() {
        let t = run_sse(|a| {
            a.mov(rax, 1e300f64.to_bits())?;
            a.movq(xmm0, rax)?;
            a.cvtsd2ss(xmm1, xmm0)?;
            Ok(())
        });
        assert_eq!(t.cpu.xmm[1] as u32, f32::INFINITY.to_bits());
        assert_eq!(t.cpu.mxcsr & 0x3f, 0x28);
    }
}
