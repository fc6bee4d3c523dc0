//! SSE/SSE2, MMX-free x87 and FXSAVE families.
//!
//! Every body is wrapped so that the vector state goes through the compared scratch memory:
//! XMM0-15 and MXCSR are loaded from `[rsi + IN]`, the instruction under test runs, XMM0-15
//! and MXCSR are stored to `[rsi + OUT]` and MXCSR is reset to 0x1f80. RSI (set by
//! [`Case::mem`]) is never a destination. MXCSR inputs have every exception masked, a random
//! rounding mode, random DAZ/FTZ and random sticky flags; lanes are drawn from edge values
//! (zeros, infinities, quiet and signalling NaNs, denormals, integer-conversion limits,
//! overflow/underflow provokers) and random bits. x87 bodies also store FSW with FNSTSW.

use super::gen::{Rng, ARITH};
use super::layout::SCRATCH_OFF;
use super::Case;
use iced_x86::code_asm::*;

const XMM: [AsmRegisterXmm; 16] = [
    xmm0, xmm1, xmm2, xmm3, xmm4, xmm5, xmm6, xmm7, xmm8, xmm9, xmm10, xmm11, xmm12, xmm13, xmm14,
    xmm15,
];
/// GPRs an instruction may write (not RSP, not RSI).
const G64: [AsmRegister64; 14] = [
    rax, rcx, rdx, rbx, rbp, rdi, r8, r9, r10, r11, r12, r13, r14, r15,
];
const G32: [AsmRegister32; 14] = [
    eax, ecx, edx, ebx, ebp, edi, r8d, r9d, r10d, r11d, r12d, r13d, r14d, r15d,
];

/// Offsets from RSI (= scratch + 0x800).
const IN: i32 = -0x800;
const MXCSR_IN: i32 = -0x700;
const OUT: i32 = -0x600;
const MXCSR_OUT: i32 = -0x500;
const MXCSR_DEFAULT: i32 = -0x4f0;
/// Memory operands live at [rsi + 0 .. 0x400); FXSAVE areas at [rsi + 0x400 ..).
const FXAREA: i32 = 0x400;

type Asm = Result<(), IcedError>;

fn wrap(f: impl FnOnce(&mut CodeAssembler) -> Asm) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).expect("assembler");
    let go = || -> Asm {
        for (n, x) in XMM.iter().enumerate() {
            a.movdqu(*x, xmmword_ptr(rsi + IN + 16 * n as i32))?;
        }
        a.ldmxcsr(dword_ptr(rsi + MXCSR_IN))?;
        f(&mut a)?;
        a.stmxcsr(dword_ptr(rsi + MXCSR_OUT))?;
        for (n, x) in XMM.iter().enumerate() {
            a.movdqu(xmmword_ptr(rsi + OUT + 16 * n as i32), *x)?;
        }
        a.ldmxcsr(dword_ptr(rsi + MXCSR_DEFAULT))
    };
    go().expect("asm");
    a.assemble(0).expect("assemble")
}

/// Double-precision lane values worth testing.
fn f64_edge(rng: &mut Rng) -> u64 {
    const E: [u64; 26] = [
        0,
        0x8000_0000_0000_0000,
        0x3ff0_0000_0000_0000, // 1
        0xbff0_0000_0000_0000, // -1
        0x4004_0000_0000_0000, // 2.5
        0xc004_0000_0000_0000, // -2.5
        0x7ff0_0000_0000_0000, // inf
        0xfff0_0000_0000_0000, // -inf
        0x7ff8_0000_0000_0000, // qnan
        0xfff8_0000_0000_1234, // -qnan payload
        0x7ff4_0000_0000_0001, // snan
        1,                     // min denormal
        0x000f_ffff_ffff_ffff, // max denormal
        0x0010_0000_0000_0000, // min normal
        0x7fef_ffff_ffff_ffff, // max
        0x41e0_0000_0000_0000, // 2^31
        0x41df_ffff_ffe0_0000, // 2^31 - 0.5
        0xc1e0_0000_0010_0000, // -2^31 - 0.5
        0x43e0_0000_0000_0000, // 2^63
        0xc3e0_0000_0000_0000, // -2^63
        0x47ef_ffff_f000_0000, // just above f32 max
        0x36a0_0000_0000_0000, // f32 denormal range
        0x3810_0000_0000_0000, // near f32 min normal
        0x2000_0000_0000_0001, // small: products underflow
        0x5ff0_0000_0000_0001, // large: products overflow
        0x3fb9_9999_9999_999a, // 0.1
    ];
    match rng.below(3) {
        0 => E[rng.below(E.len() as u64) as usize],
        1 => rng.next(),
        _ => {
            // A normal number of moderate magnitude.
            let exp = 1023 - 40 + rng.below(80);
            (rng.next() & 0x800f_ffff_ffff_ffff) | (exp << 52)
        }
    }
}

fn f32_edge(rng: &mut Rng) -> u32 {
    const E: [u32; 22] = [
        0,
        0x8000_0000,
        0x3f80_0000,
        0xbf80_0000,
        0x4020_0000,
        0xc020_0000,
        0x7f80_0000,
        0xff80_0000,
        0x7fc0_0000,
        0xffc0_1234,
        0x7fa0_0001,
        1,
        0x007f_ffff,
        0x0080_0000,
        0x7f7f_ffff,
        0x4f00_0000, // 2^31
        0xcf00_0000, // -2^31
        0x5f00_0000, // 2^63
        0xdf00_0001,
        0x1000_0001,
        0x7000_0001,
        0x3dcc_cccd,
    ];
    match rng.below(3) {
        0 => E[rng.below(E.len() as u64) as usize],
        1 => rng.next() as u32,
        _ => {
            let exp = 127 - 20 + rng.below(40) as u32;
            (rng.next() as u32 & 0x807f_ffff) | (exp << 23)
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Lanes {
    Int,
    F32,
    F64,
}

fn lanes_value(rng: &mut Rng, kind: Lanes) -> u128 {
    match kind {
        Lanes::Int => match rng.below(4) {
            0 => (rng.next() as u128 & 0x8080_8080_8080_8080) * 0x1_0000_0000_0000_0001,
            1 => (rng.next() % 300) as u128,
            _ => (rng.next() as u128) << 64 | rng.next() as u128,
        },
        Lanes::F32 => (0..4).fold(0u128, |v, n| v | (f32_edge(rng) as u128) << (32 * n)),
        Lanes::F64 => f64_edge(rng) as u128 | (f64_edge(rng) as u128) << 64,
    }
}

fn put(data: &mut [u8], off: i32, bytes: &[u8]) {
    let at = (SCRATCH_OFF as i32 + 0x800 + off) as usize;
    data[at..at + bytes.len()].copy_from_slice(bytes);
}

/// A case whose vector inputs and memory operands are drawn as `kind`.
fn case(rng: &mut Rng, name: String, kind: Lanes, body: Vec<u8>) -> Case {
    let mut c = Case::new(name, body, rng).mem();
    for n in 0..16 {
        let v = lanes_value(rng, kind);
        put(&mut c.data, IN + 16 * n, &v.to_le_bytes());
    }
    // Sometimes make two registers equal so compares see equality.
    if rng.below(3) == 0 {
        let (s, d) = (rng.below(16) as i32, rng.below(16) as i32);
        let at = (SCRATCH_OFF as i32 + 0x800 + IN) as usize;
        let src: Vec<u8> = c.data[at + 16 * s as usize..at + 16 * s as usize + 16].to_vec();
        put(&mut c.data, IN + 16 * d, &src);
    }
    for k in 0..0x40 {
        let v = lanes_value(rng, kind);
        put(&mut c.data, 16 * k, &v.to_le_bytes());
    }
    let rc = rng.below(4) as u32;
    let mxcsr = 0x1f80
        | (rc << 13)
        | if rng.below(4) == 0 { 0x40 } else { 0 }
        | if rng.below(4) == 0 { 0x8000 } else { 0 }
        | (rng.next() as u32 & 0x3f & if rng.below(2) == 0 { 0 } else { 0x3f });
    put(&mut c.data, MXCSR_IN, &mxcsr.to_le_bytes());
    put(&mut c.data, MXCSR_DEFAULT, &0x1f80u32.to_le_bytes());
    c
}

fn x(rng: &mut Rng) -> AsmRegisterXmm {
    XMM[rng.below(16) as usize]
}

fn mem16(rng: &mut Rng) -> AsmMemoryOperand {
    xmmword_ptr(rsi + 16 * rng.below(0x40) as i32)
}

macro_rules! ops2 {
    ($rng:expr, $out:expr, $kind:expr, $n:expr, [$($op:ident),* $(,)?]) => {
        $(
            for k in 0..$n {
                let (d, s) = (x($rng), x($rng));
                let m = mem16($rng);
                let body = if k % 3 == 2 {
                    wrap(|a| a.$op(d, m))
                } else {
                    wrap(|a| a.$op(d, s))
                };
                let c = case($rng, format!("{} {}", stringify!($op), k), $kind, body);
                $out.push(c);
            }
        )*
    };
}

/// Packed integer, logic, shuffle and unpack instructions.
pub fn sse_int(rng: &mut Rng, n: usize) -> Vec<Case> {
    let mut out = Vec::new();
    ops2!(
        rng,
        out,
        Lanes::Int,
        n,
        [
            pxor, por, pand, pandn, paddb, paddw, paddd, paddq, psubb, psubw, psubd, psubq, paddsb,
            paddsw, paddusb, paddusw, psubsb, psubsw, psubusb, psubusw, pcmpeqb, pcmpeqw, pcmpeqd,
            pcmpgtb, pcmpgtw, pcmpgtd, pminub, pmaxub, pminsw, pmaxsw, pavgb, pavgw, pmullw,
            pmulhw, pmulhuw, pmuludq, pmaddwd, psadbw, packsswb, packssdw, packuswb, punpcklbw,
            punpcklwd, punpckldq, punpcklqdq, punpckhbw, punpckhwd, punpckhdq, punpckhqdq, psllw,
            pslld, psllq, psrlw, psrld, psrlq, psraw, psrad, andps, andnps, orps, xorps, andpd,
            xorpd, unpcklps, unpckhps, unpcklpd, unpckhpd,
        ]
    );
    for k in 0..n * 4 {
        let (d, s) = (x(rng), x(rng));
        let imm = (rng.below(if k % 2 == 0 { 20 } else { 256 })) as u32;
        let body = match k % 9 {
            0 => wrap(|a| a.psllw(d, imm)),
            1 => wrap(|a| a.pslld(d, imm)),
            2 => wrap(|a| a.psrlq(d, imm)),
            3 => wrap(|a| a.psrad(d, imm)),
            4 => wrap(|a| a.pslldq(d, imm)),
            5 => wrap(|a| a.psrldq(d, imm)),
            6 => wrap(|a| a.pshufd(d, s, imm)),
            7 => wrap(|a| a.pshuflw(d, s, imm)),
            _ => wrap(|a| a.shufps(d, s, imm)),
        };
        out.push(case(rng, format!("imm form {k}"), Lanes::Int, body));
    }
    for k in 0..n {
        let (d, s) = (x(rng), x(rng));
        let imm = rng.below(256) as u32;
        let body = match k % 3 {
            0 => wrap(|a| a.pshufhw(d, s, imm)),
            1 => wrap(|a| a.shufpd(d, s, imm)),
            _ => wrap(|a| a.pinsrw(d, G32[(imm % 14) as usize], imm)),
        };
        out.push(case(rng, format!("imm form b {k}"), Lanes::Int, body));
    }
    out
}

/// Moves between XMM registers, GPRs and memory; mask extraction.
pub fn sse_move(rng: &mut Rng, n: usize) -> Vec<Case> {
    let mut out = Vec::new();
    for k in 0..n * 30 {
        let (d, s) = (x(rng), x(rng));
        let m = mem16(rng);
        let off = rng.below(0x3f0) as i32;
        let (g64, g32) = (G64[rng.below(14) as usize], G32[rng.below(14) as usize]);
        let imm = rng.below(8) as u32;
        let body = match k % 30 {
            0 => wrap(|a| a.movaps(d, s)),
            1 => wrap(|a| a.movaps(m, s)),
            2 => wrap(|a| a.movdqa(d, m)),
            3 => wrap(|a| a.movdqu(d, xmmword_ptr(rsi + off))),
            4 => wrap(|a| a.movups(xmmword_ptr(rsi + off), s)),
            5 => wrap(|a| a.movd(d, g32)),
            6 => wrap(|a| a.movd(g32, s)),
            7 => wrap(|a| a.movq(d, g64)),
            8 => wrap(|a| a.movq(g64, s)),
            9 => wrap(|a| a.movq(d, s)),
            10 => wrap(|a| a.movq(qword_ptr(rsi + off), s)),
            11 => wrap(|a| a.movq(d, qword_ptr(rsi + off))),
            12 => wrap(|a| a.movd(d, dword_ptr(rsi + off))),
            13 => wrap(|a| a.movss(d, s)),
            14 => wrap(|a| a.movss(d, dword_ptr(rsi + off))),
            15 => wrap(|a| a.movsd_2(d, s)),
            16 => wrap(|a| a.movsd_2(qword_ptr(rsi + off), s)),
            17 => wrap(|a| a.movsd_2(d, qword_ptr(rsi + off))),
            18 => wrap(|a| a.movlps(d, qword_ptr(rsi + off))),
            19 => wrap(|a| a.movhps(qword_ptr(rsi + off), s)),
            20 => wrap(|a| a.movhpd(d, qword_ptr(rsi + off))),
            21 => wrap(|a| a.movlpd(qword_ptr(rsi + off), s)),
            22 => wrap(|a| a.movhlps(d, s)),
            23 => wrap(|a| a.movlhps(d, s)),
            24 => wrap(|a| a.movmskps(g32, s)),
            25 => wrap(|a| a.movmskpd(g32, s)),
            26 => wrap(|a| a.pmovmskb(g32, s)),
            27 => wrap(|a| a.pextrw(g32, s, imm)),
            28 => wrap(|a| a.movntdq(m, s)),
            _ => wrap(|a| a.movss(dword_ptr(rsi + off), s)),
        };
        out.push(case(rng, format!("move form {}", k % 30), Lanes::Int, body));
    }
    out
}

/// Scalar and packed floating-point arithmetic and compares.
pub fn sse_fp(rng: &mut Rng, n: usize) -> Vec<Case> {
    let mut out = Vec::new();
    ops2!(
        rng,
        out,
        Lanes::F64,
        n,
        [
            addsd, subsd, mulsd, divsd, minsd, maxsd, sqrtsd, addpd, subpd, mulpd, divpd, minpd,
            maxpd, sqrtpd,
        ]
    );
    ops2!(
        rng,
        out,
        Lanes::F32,
        n,
        [
            addss, subss, mulss, divss, minss, maxss, sqrtss, addps, subps, mulps, divps, minps,
            maxps, sqrtps,
        ]
    );
    for k in 0..n * 8 {
        let (d, s) = (x(rng), x(rng));
        let p = (k % 8) as u32;
        let (body, kind) = match (k / 8) % 4 {
            0 => (wrap(|a| a.cmpsd_3(d, s, p)), Lanes::F64),
            1 => (wrap(|a| a.cmppd(d, s, p)), Lanes::F64),
            2 => (wrap(|a| a.cmpss(d, s, p)), Lanes::F32),
            _ => (wrap(|a| a.cmpps(d, s, p)), Lanes::F32),
        };
        out.push(case(
            rng,
            format!("cmp{p} form {}", (k / 8) % 4),
            kind,
            body,
        ));
    }
    for k in 0..n * 4 {
        let (d, s) = (x(rng), x(rng));
        let (body, kind) = match k % 4 {
            0 => (wrap(|a| a.comisd(d, s)), Lanes::F64),
            1 => (wrap(|a| a.ucomisd(d, s)), Lanes::F64),
            2 => (wrap(|a| a.comiss(d, s)), Lanes::F32),
            _ => (
                wrap(|a| a.ucomiss(d, qword_ptr(rsi + 16 * (k as i32 % 64)))),
                Lanes::F32,
            ),
        };
        out.push(case(rng, format!("comis form {}", k % 4), kind, body).mask(ARITH));
    }
    out
}

/// Conversions.
pub fn sse_cvt(rng: &mut Rng, n: usize) -> Vec<Case> {
    let mut out = Vec::new();
    for k in 0..n * 20 {
        let (d, s) = (x(rng), x(rng));
        let (g64, g32) = (G64[rng.below(14) as usize], G32[rng.below(14) as usize]);
        let off = 8 * rng.below(0x70) as i32;
        let (body, kind) = match k % 20 {
            0 => (wrap(|a| a.cvttsd2si(g64, s)), Lanes::F64),
            1 => (wrap(|a| a.cvttsd2si(g32, s)), Lanes::F64),
            2 => (wrap(|a| a.cvtsd2si(g64, s)), Lanes::F64),
            3 => (wrap(|a| a.cvtsd2si(g32, qword_ptr(rsi + off))), Lanes::F64),
            4 => (wrap(|a| a.cvttss2si(g64, s)), Lanes::F32),
            5 => (wrap(|a| a.cvtss2si(g32, s)), Lanes::F32),
            6 => (wrap(|a| a.cvtsi2sd(d, g32)), Lanes::F64),
            7 => (wrap(|a| a.cvtsi2sd(d, g64)), Lanes::F64),
            8 => (wrap(|a| a.cvtsi2sd(d, dword_ptr(rsi + off))), Lanes::Int),
            9 => (wrap(|a| a.cvtsi2ss(d, g64)), Lanes::F32),
            10 => (wrap(|a| a.cvtsi2ss(d, qword_ptr(rsi + off))), Lanes::Int),
            11 => (wrap(|a| a.cvtss2sd(d, s)), Lanes::F32),
            12 => (wrap(|a| a.cvtsd2ss(d, s)), Lanes::F64),
            13 => (wrap(|a| a.cvtps2pd(d, s)), Lanes::F32),
            14 => (wrap(|a| a.cvtpd2ps(d, s)), Lanes::F64),
            15 => (wrap(|a| a.cvtdq2ps(d, s)), Lanes::Int),
            16 => (wrap(|a| a.cvtps2dq(d, s)), Lanes::F32),
            17 => (wrap(|a| a.cvttps2dq(d, s)), Lanes::F32),
            18 => (wrap(|a| a.cvtdq2pd(d, s)), Lanes::Int),
            _ => (
                if k % 40 < 20 {
                    wrap(|a| a.cvtpd2dq(d, s))
                } else {
                    wrap(|a| a.cvttpd2dq(d, s))
                },
                Lanes::F64,
            ),
        };
        let mut c = case(rng, format!("cvt form {}", k % 20), kind, body);
        // Integer sources in GPRs: edge values.
        for g in c.gpr.iter_mut() {
            if rng.below(2) == 0 {
                *g = [
                    0,
                    1,
                    u64::MAX,
                    1 << 63,
                    (1 << 53) + 1,
                    0x7fff_ffff,
                    0x8000_0001,
                ][rng.below(7) as usize];
            }
        }
        c.gpr[6] = super::layout::SCRATCH_VA + 0x800;
        out.push(c);
    }
    out
}

/// Zero the FXSAVE register slots from ST(`from`) on (stale contents of empty registers).
fn clear_slots(a: &mut CodeAssembler, area: i32, from: i32) -> Asm {
    for k in from..8 {
        a.mov(qword_ptr(rsi + area + 32 + 16 * k), 0)?;
        a.mov(qword_ptr(rsi + area + 40 + 16 * k), 0)?;
    }
    Ok(())
}

/// Zero the last instruction and data pointers (FIP, FDP) of the FXSAVE image at `area`:
/// whether a CPU updates them at every x87 instruction or only at unmasked exceptions is a
/// property of its model (CPUID.(EAX=7):EBX[6], and AMD's behaviour), not of the state, so no
/// host is the oracle for them.
fn clear_pointers(a: &mut CodeAssembler, area: i32) -> Result<(), IcedError> {
    a.mov(qword_ptr(rsi + area + 8), 0)?;
    a.mov(qword_ptr(rsi + area + 16), 0)
}

/// x87 loads, arithmetic, stores and compares, with FSW stored; FXSAVE/FXRSTOR images.
pub fn x87_fxsave(rng: &mut Rng, n: usize) -> Vec<Case> {
    let mut out = Vec::new();
    for k in 0..n * 12 {
        let rc = rng.below(4) as i32;
        let (o1, o2) = (8 * rng.below(0x40) as i32, 8 * rng.below(0x40) as i32);
        let form = k % 12;
        let body = wrap(|a| {
            a.fninit()?;
            a.mov(word_ptr(rsi + 0x3f0), 0x37f | (rc << 10))?;
            a.fldcw(word_ptr(rsi + 0x3f0))?;
            match form {
                0 => {
                    a.fild(dword_ptr(rsi + o1))?;
                    a.fild(dword_ptr(rsi + o2))?;
                    a.fadd_2(st0, st1)?;
                }
                1 => {
                    a.fld(qword_ptr(rsi + o1))?;
                    a.fld(qword_ptr(rsi + o2))?;
                    a.fsubp(st1, st0)?;
                }
                2 => {
                    a.fld(qword_ptr(rsi + o1))?;
                    a.fmul(qword_ptr(rsi + o2))?;
                }
                3 => {
                    a.fld(qword_ptr(rsi + o1))?;
                    a.fdiv(qword_ptr(rsi + o2))?;
                }
                4 => {
                    a.fld(dword_ptr(rsi + o1))?;
                    a.fld(qword_ptr(rsi + o2))?;
                    a.fdivrp(st1, st0)?;
                }
                5 => {
                    a.fild(qword_ptr(rsi + o1))?;
                    a.fld(qword_ptr(rsi + o2))?;
                    a.fcomi(st0, st1)?;
                }
                6 => {
                    a.fld(qword_ptr(rsi + o1))?;
                    a.fld(qword_ptr(rsi + o2))?;
                    a.fucomip(st0, st1)?;
                }
                7 => {
                    a.fld(qword_ptr(rsi + o1))?;
                    a.fistp(qword_ptr(rsi + 0x3c0))?;
                }
                8 => {
                    a.fld(qword_ptr(rsi + o1))?;
                    a.fist(dword_ptr(rsi + 0x3c0))?;
                    a.fst(dword_ptr(rsi + 0x3c8))?;
                }
                9 => {
                    a.fld1()?;
                    a.fldz()?;
                    a.fxch(st0, st1)?;
                    a.fchs()?;
                    a.fld(qword_ptr(rsi + o1))?;
                    a.fabs()?;
                    a.faddp(st1, st0)?;
                }
                10 => {
                    // FXSAVE (both layouts) of a small x87 stack and the loaded XMM state.
                    a.fld(qword_ptr(rsi + o1))?;
                    a.fild(word_ptr(rsi + o2))?;
                    if rc & 1 == 0 {
                        a.fxsave64(ptr(rsi + FXAREA))?;
                    } else {
                        a.fxsave(ptr(rsi + FXAREA))?;
                    }
                    // MXCSR_MASK is a property of the CPU model, not of the state; empty
                    // registers keep stale host contents.
                    a.mov(dword_ptr(rsi + FXAREA + 28), 0)?;
                    clear_pointers(a, FXAREA)?;
                    clear_slots(a, FXAREA, 2)?;
                }
                _ => {
                    // FXRSTOR an image built by FXSAVE and edited, then FXSAVE it again.
                    a.fld(qword_ptr(rsi + o1))?;
                    a.fxsave64(ptr(rsi + FXAREA))?;
                    clear_slots(a, FXAREA, 1)?;
                    a.mov(dword_ptr(rsi + FXAREA + 160), 0x1234_5678)?;
                    a.mov(word_ptr(rsi + FXAREA), 0x27f)?;
                    a.fninit()?;
                    a.fxrstor64(ptr(rsi + FXAREA))?;
                    a.fxsave64(ptr(rsi + FXAREA + 0x200))?;
                    a.mov(dword_ptr(rsi + FXAREA + 28), 0)?;
                    a.mov(dword_ptr(rsi + FXAREA + 0x200 + 28), 0)?;
                    clear_pointers(a, FXAREA)?;
                    clear_pointers(a, FXAREA + 0x200)?;
                }
            }
            if form < 10 {
                a.fnstsw(word_ptr(rsi + 0x3e0))?;
                a.fstp(tword_ptr(rsi + 0x3d0))?;
                a.fnstsw(word_ptr(rsi + 0x3e8))?;
            }
            a.fninit()
        });
        let kind = if form == 0 { Lanes::Int } else { Lanes::F64 };
        out.push(case(rng, format!("x87 form {form}"), kind, body).mask(ARITH));
    }
    out
}
