//! SSE/SSE2 floating point: ADD/SUB/MUL/DIV/MIN/MAX/SQRT in SS/SD/PS/PD forms, CMPccSS/SD/PS/PD,
//! COMISS/COMISD/UCOMISS/UCOMISD, RCP/RSQRT, and the conversions CVTSI2SS/SD, CVT(T)SS2SI,
//! CVT(T)SD2SI, CVTSS2SD, CVTSD2SS, CVTPS2PD, CVTPD2PS, CVTDQ2PS, CVT(T)PS2DQ, CVTDQ2PD,
//! CVT(T)PD2DQ and the MMX-operand forms CVTPI2PS/CVTPI2PD/CVT(T)PS2PI/CVT(T)PD2PI.
//!
//! Every result is computed exactly and rounded once (`sse_float`), with MXCSR.RC, DAZ and FTZ,
//! and the flags the SDM lists: IE (SNaN operands, QNaN for signalling compares, MIN/MAX and
//! COMIS, invalid operations, unconvertible integers), DE (denormal operands, not for
//! conversions to integer, not when a NaN decides the result), ZE, OE, UE (tininess after
//! rounding) and PE. NaN results follow the SSE rule: the first NaN source, quieted.
//! RCPSS/RCPPS/RSQRTSS/RSQRTPS return the correctly rounded reciprocal (more precise than the
//! 12-bit approximation hardware gives, so their low bits differ from any real CPU).

use super::sse::{vreg, VReg};
use super::sse_float::{self as sf, Class, Fmt, Round, Unpacked, F32, F64};
use super::x87::total_order;
use crate::cpu::Cpu;
use crate::exception::Res;
use crate::flags;
use crate::memory::GuestMemory;
use iced_x86::{Instruction, Mnemonic as M, OpKind};
use std::cmp::Ordering;

pub(crate) fn handles(m: M) -> bool {
    shape(m).is_some()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Min,
    Max,
    Sqrt,
    Rcp,
    Rsqrt,
    Cmp,
}

/// (operation, format, scalar?) of an arithmetic mnemonic.
fn shape(m: M) -> Option<(Op, Fmt, bool)> {
    use Op::*;
    Some(match m {
        M::Addss => (Add, F32, true),
        M::Addsd => (Add, F64, true),
        M::Addps => (Add, F32, false),
        M::Addpd => (Add, F64, false),
        M::Subss => (Sub, F32, true),
        M::Subsd => (Sub, F64, true),
        M::Subps => (Sub, F32, false),
        M::Subpd => (Sub, F64, false),
        M::Mulss => (Mul, F32, true),
        M::Mulsd => (Mul, F64, true),
        M::Mulps => (Mul, F32, false),
        M::Mulpd => (Mul, F64, false),
        M::Divss => (Div, F32, true),
        M::Divsd => (Div, F64, true),
        M::Divps => (Div, F32, false),
        M::Divpd => (Div, F64, false),
        M::Minss => (Min, F32, true),
        M::Minsd => (Min, F64, true),
        M::Minps => (Min, F32, false),
        M::Minpd => (Min, F64, false),
        M::Maxss => (Max, F32, true),
        M::Maxsd => (Max, F64, true),
        M::Maxps => (Max, F32, false),
        M::Maxpd => (Max, F64, false),
        M::Sqrtss => (Sqrt, F32, true),
        M::Sqrtsd => (Sqrt, F64, true),
        M::Sqrtps => (Sqrt, F32, false),
        M::Sqrtpd => (Sqrt, F64, false),
        M::Rcpss => (Rcp, F32, true),
        M::Rcpps => (Rcp, F32, false),
        M::Rsqrtss => (Rsqrt, F32, true),
        M::Rsqrtps => (Rsqrt, F32, false),
        M::Cmpss => (Cmp, F32, true),
        M::Cmpsd => (Cmp, F64, true),
        M::Cmpps => (Cmp, F32, false),
        M::Cmppd => (Cmp, F64, false),
        M::Comiss | M::Ucomiss => (Cmp, F32, true),
        M::Comisd | M::Ucomisd => (Cmp, F64, true),
        M::Cvtsi2ss
        | M::Cvtsi2sd
        | M::Cvtss2si
        | M::Cvtsd2si
        | M::Cvttss2si
        | M::Cvttsd2si
        | M::Cvtss2sd
        | M::Cvtsd2ss
        | M::Cvtps2pd
        | M::Cvtpd2ps
        | M::Cvtdq2ps
        | M::Cvtps2dq
        | M::Cvttps2dq
        | M::Cvtdq2pd
        | M::Cvtpd2dq
        | M::Cvttpd2dq
        | M::Cvtpi2ps
        | M::Cvtpi2pd
        | M::Cvtps2pi
        | M::Cvttps2pi
        | M::Cvtpd2pi
        | M::Cvttpd2pi => (Add, F64, true), // routed to `convert`
        _ => return None,
    })
}

/// Per-instruction rounding state and accumulated flags.
pub(crate) struct Ctx {
    pub rc: Round,
    pub ftz: bool,
    pub daz: bool,
    pub pre: u32,
    pub post: u32,
}

impl Ctx {
    pub(crate) fn new(cpu: &Cpu) -> Ctx {
        let (rc, ftz, daz) = cpu.sse_mode();
        Ctx {
            rc,
            ftz,
            daz,
            pre: 0,
            post: 0,
        }
    }

    /// Unpack a source operand, applying DAZ.
    pub(crate) fn src(&self, f: Fmt, bits: u128) -> Unpacked {
        let u = sf::unpack(f, bits);
        if u.class == Class::Denormal && self.daz {
            return Unpacked {
                class: Class::Zero,
                sig: 0,
                exp: 0,
                ..u
            };
        }
        u
    }

    fn rounded(&mut self, r: (u128, u32)) -> u128 {
        self.post |= r.1;
        r.0
    }
}

fn is_den(u: &Unpacked) -> bool {
    u.class == Class::Denormal
}

/// One lane of a two-operand arithmetic operation (`b` is the source for SQRT/RCP/RSQRT).
fn arith_lane(ctx: &mut Ctx, op: Op, f: Fmt, a: u128, b: u128) -> u128 {
    let (ua, ub) = (ctx.src(f, a), ctx.src(f, b));
    let unary = matches!(op, Op::Sqrt | Op::Rcp | Op::Rsqrt);
    if matches!(op, Op::Min | Op::Max) {
        // With DAZ the flushed value is what the comparison saw and what is returned (also
        // when a NaN makes the second operand the result).
        let pick = |u: &Unpacked, raw: u128| {
            if u.class == Class::Zero {
                f.zero(u.sign)
            } else {
                raw
            }
        };
        if ua.is_nan() || ub.is_nan() {
            ctx.pre |= sf::IE;
            return pick(&ub, b);
        }
        if is_den(&ua) || is_den(&ub) {
            ctx.pre |= sf::DE;
        }
        let ord = total_order(&ua, &ub);
        let take_a = if op == Op::Min {
            ord == Ordering::Less
        } else {
            ord == Ordering::Greater
        };
        return if take_a { pick(&ua, a) } else { pick(&ub, b) };
    }
    if unary {
        if ub.is_nan() {
            if ub.class == Class::SNan && op == Op::Sqrt {
                ctx.pre |= sf::IE;
            }
            return f.quiet(b);
        }
        return match op {
            Op::Sqrt => {
                if is_den(&ub) {
                    ctx.pre |= sf::DE;
                }
                match ub.class {
                    Class::Zero => f.zero(ub.sign),
                    _ if ub.sign => {
                        ctx.pre |= sf::IE;
                        f.default_nan()
                    }
                    Class::Inf => f.inf(false),
                    _ => ctx.rounded(sf::sqrt(f, ub, ctx.rc, ctx.ftz)),
                }
            }
            _ => recip(f, ub, op == Op::Rsqrt),
        };
    }
    if ua.class == Class::SNan || ub.class == Class::SNan {
        ctx.pre |= sf::IE;
    }
    if ua.is_nan() {
        return f.quiet(a);
    }
    if ub.is_nan() {
        return f.quiet(b);
    }
    if is_den(&ua) || is_den(&ub) {
        ctx.pre |= sf::DE;
    }
    let (ia, ib) = (ua.class == Class::Inf, ub.class == Class::Inf);
    let (za, zb) = (ua.class == Class::Zero, ub.class == Class::Zero);
    let sign = ua.sign != ub.sign;
    let mut invalid = || {
        ctx.pre |= sf::IE;
        f.default_nan()
    };
    match op {
        Op::Add | Op::Sub => {
            let ub = if op == Op::Sub {
                Unpacked {
                    sign: !ub.sign,
                    ..ub
                }
            } else {
                ub
            };
            match (ia, ib) {
                (true, true) if ua.sign != ub.sign => invalid(),
                (true, _) => f.inf(ua.sign),
                (_, true) => f.inf(ub.sign),
                _ => ctx.rounded(sf::add(f, ua, ub, ctx.rc, ctx.ftz)),
            }
        }
        Op::Mul => {
            if (ia && zb) || (ib && za) {
                invalid()
            } else if ia || ib {
                f.inf(sign)
            } else {
                ctx.rounded(sf::mul(f, ua, ub, ctx.rc, ctx.ftz))
            }
        }
        _ => {
            if (ia && ib) || (za && zb) {
                invalid()
            } else if ia {
                f.inf(sign)
            } else if ib {
                f.zero(sign)
            } else if zb {
                ctx.pre |= sf::ZE;
                f.inf(sign)
            } else {
                ctx.rounded(sf::div(f, ua, ub, ctx.rc, ctx.ftz))
            }
        }
    }
}

/// 1/x or 1/sqrt(x) of a single-precision value, rounded to nearest, raising no flags
/// (RCPPS/RSQRTPS); the root is taken in double precision first.
fn recip(f: Fmt, u: Unpacked, rsqrt: bool) -> u128 {
    match u.class {
        Class::Zero => f.inf(u.sign),
        _ if rsqrt && u.sign => f.default_nan(),
        Class::Inf => f.zero(u.sign),
        _ => {
            let one = sf::unpack(F64, 1.0f64.to_bits() as u128);
            let (wide, _) = sf::round_pack(F64, u.sign, u.exp, u.sig, false, Round::Nearest, false);
            let mut d = sf::unpack(F64, wide);
            if rsqrt {
                d = sf::unpack(F64, sf::sqrt(F64, d, Round::Nearest, false).0);
            }
            let q = sf::unpack(F64, sf::div(F64, one, d, Round::Nearest, false).0);
            if q.class == Class::Zero {
                return f.zero(q.sign);
            }
            sf::round_pack(f, q.sign, q.exp, q.sig, false, Round::Nearest, false).0
        }
    }
}

/// CMPccPS predicate `p` (0..7) on one lane: all ones or zero.
fn cmp_lane(ctx: &mut Ctx, f: Fmt, a: u128, b: u128, p: u8) -> u128 {
    let (ua, ub) = (ctx.src(f, a), ctx.src(f, b));
    let signalling = matches!(p & 7, 1 | 2 | 5 | 6);
    let ord = if ua.is_nan() || ub.is_nan() {
        if signalling || ua.class == Class::SNan || ub.class == Class::SNan {
            ctx.pre |= sf::IE;
        }
        None
    } else {
        if is_den(&ua) || is_den(&ub) {
            ctx.pre |= sf::DE;
        }
        Some(total_order(&ua, &ub))
    };
    let t = match (p & 7, ord) {
        (0, o) => o == Some(Ordering::Equal),
        (1, o) => o == Some(Ordering::Less),
        (2, o) => matches!(o, Some(Ordering::Less | Ordering::Equal)),
        (3, o) => o.is_none(),
        (4, o) => o != Some(Ordering::Equal),
        (5, o) => o != Some(Ordering::Less),
        (6, o) => !matches!(o, Some(Ordering::Less | Ordering::Equal)),
        (_, o) => o.is_some(),
    };
    if t {
        f.mask()
    } else {
        0
    }
}

pub(crate) fn exec(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let m = i.mnemonic();
    let Some((op, f, scalar)) = shape(m) else {
        return Err(cpu.unimplemented(i));
    };
    if matches!(m, M::Comiss | M::Ucomiss | M::Comisd | M::Ucomisd) {
        return comis(cpu, mem, i, f);
    }
    if is_convert(m) {
        return super::sse_cvt::convert(cpu, mem, i);
    }
    let x = vreg(i.op0_register()).unwrap_or(VReg::Xmm(0));
    let a = cpu.vget(x);
    let b = cpu.vsrc(mem, i, 1)?;
    let mut ctx = Ctx::new(cpu);
    let w = f.width() as usize;
    let lanes = if scalar { 1 } else { 128 / w };
    let lmask = f.mask();
    let mut r = a;
    for n in 0..lanes {
        let sh = n * w;
        let (la, lb) = ((a >> sh) & lmask, (b >> sh) & lmask);
        let v = if op == Op::Cmp {
            cmp_lane(&mut ctx, f, la, lb, i.immediate8())
        } else {
            arith_lane(&mut ctx, op, f, la, lb)
        };
        r = (r & !(lmask << sh)) | (v << sh);
    }
    cpu.sse_raise(ctx.pre, ctx.post)?;
    cpu.vset(x, r);
    Ok(())
}

fn is_convert(m: M) -> bool {
    matches!(
        m,
        M::Cvtsi2ss
            | M::Cvtsi2sd
            | M::Cvtss2si
            | M::Cvtsd2si
            | M::Cvttss2si
            | M::Cvttsd2si
            | M::Cvtss2sd
            | M::Cvtsd2ss
            | M::Cvtps2pd
            | M::Cvtpd2ps
            | M::Cvtdq2ps
            | M::Cvtps2dq
            | M::Cvttps2dq
            | M::Cvtdq2pd
            | M::Cvtpd2dq
            | M::Cvttpd2dq
            | M::Cvtpi2ps
            | M::Cvtpi2pd
            | M::Cvtps2pi
            | M::Cvttps2pi
            | M::Cvtpd2pi
            | M::Cvttpd2pi
    )
}

/// COMISS/COMISD/UCOMISS/UCOMISD: ZF, PF, CF from the comparison; OF, SF, AF cleared.
fn comis(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction, f: Fmt) -> Res<()> {
    let x = vreg(i.op0_register()).unwrap_or(VReg::Xmm(0));
    let a = cpu.vget(x) & f.mask();
    let b = if i.op1_kind() == OpKind::Register {
        cpu.vsrc(mem, i, 1)? & f.mask()
    } else {
        cpu.vsrc(mem, i, 1)?
    };
    let mut ctx = Ctx::new(cpu);
    let (ua, ub) = (ctx.src(f, a), ctx.src(f, b));
    let quiet = matches!(i.mnemonic(), M::Ucomiss | M::Ucomisd);
    let ord = if ua.is_nan() || ub.is_nan() {
        if !quiet || ua.class == Class::SNan || ub.class == Class::SNan {
            ctx.pre |= sf::IE;
        }
        None
    } else {
        if is_den(&ua) || is_den(&ub) {
            ctx.pre |= sf::DE;
        }
        Some(total_order(&ua, &ub))
    };
    cpu.sse_raise(ctx.pre, 0)?;
    let v = match ord {
        None => flags::ZF | flags::PF | flags::CF,
        Some(Ordering::Greater) => 0,
        Some(Ordering::Less) => flags::CF,
        Some(Ordering::Equal) => flags::ZF,
    };
    cpu.flags.set_arith(flags::ARITH, v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::exec::sse::tests::run_sse;
    use crate::flags::{CF, PF, ZF};
    use crate::testutil::*;
    use iced_x86::code_asm::*;

    fn load_sd(a: &mut CodeAssembler, reg: AsmRegisterXmm, v: f64) -> Result<(), IcedError> {
        a.mov(rax, v.to_bits())?;
        a.movq(reg, rax)
    }

    #[test]
    fn addsd_mulsd_subsd_divsd_match_host_and_keep_upper_lane() {
        let t = run_sse(|a| {
            load_sd(a, xmm0, 0.1)?;
            a.movhps(xmm0, qword_ptr(DATA))?; // upper lane = 0
            load_sd(a, xmm1, 0.2)?;
            a.addsd(xmm0, xmm1)?;
            a.mulsd(xmm0, xmm1)?;
            a.subsd(xmm0, xmm1)?;
            a.divsd(xmm0, xmm1)?;
            Ok(())
        });
        let want = (((0.1f64 + 0.2) * 0.2) - 0.2) / 0.2;
        assert_eq!(t.cpu.xmm[0] as u64, want.to_bits());
        assert_eq!(t.cpu.xmm[0] >> 64, 0);
        assert_eq!(t.cpu.mxcsr & 0x3f, 0x20, "PE only");
    }

    #[test]
    fn sqrtsd_of_negative_is_default_nan_with_ie() {
        let t = run_sse(|a| {
            load_sd(a, xmm1, -4.0)?;
            a.sqrtsd(xmm0, xmm1)?;
            Ok(())
        });
        assert_eq!(t.cpu.xmm[0] as u64, 0xfff8_0000_0000_0000);
        assert_eq!(t.cpu.mxcsr & 0x3f, 0x1);
    }

    #[test]
    fn comisd_orders_and_ucomisd_with_nan_is_unordered_quietly() {
        let t = run_sse(|a| {
            load_sd(a, xmm0, 1.0)?;
            load_sd(a, xmm1, 2.0)?;
            a.comisd(xmm0, xmm1)?;
            Ok(())
        });
        assert_eq!(t.arith_flags(), CF);
        let t = run_sse(|a| {
            load_sd(a, xmm0, f64::NAN)?;
            a.ucomisd(xmm0, xmm0)?;
            Ok(())
        });
        assert_eq!(t.arith_flags(), ZF | PF | CF);
        assert_eq!(t.cpu.mxcsr & 0x3f, 0);
    }

    #[test]
    fn cmpltpd_is_lane_mask() {
        let t = run_sse(|a| {
            load_sd(a, xmm0, 1.0)?;
            load_sd(a, xmm1, 2.0)?;
            a.cmpltpd(xmm0, xmm1)?;
            Ok(())
        });
        assert_eq!(t.cpu.xmm[0], u64::MAX as u128);
    }

    #[test]
    fn minsd_with_nan_returns_second_operand_and_signals() {
        let t = run_sse(|a| {
            load_sd(a, xmm0, f64::NAN)?;
            load_sd(a, xmm1, 3.0)?;
            a.minsd(xmm0, xmm1)?;
            Ok(())
        });
        assert_eq!(t.cpu.xmm[0] as u64, 3.0f64.to_bits());
        assert_eq!(t.cpu.mxcsr & 1, 1);
    }
}
