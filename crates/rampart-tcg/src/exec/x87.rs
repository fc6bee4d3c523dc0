//! The x87 register stack and a subset of x87 arithmetic: FLD/FILD/FST(P)/FIST(P), FADD/FSUB/
//! FSUBR/FMUL/FDIV/FDIVR (memory, register and popping forms), FXCH, FLD1, FLDZ, FCHS, FABS,
//! FFREE, FINCSTP, FDECSTP, FCOM(P)(P)/FUCOM(P)(P)/FTST and FCOMI(P)/FUCOMI(P); plus the
//! helpers MMX and FXSAVE use. (FNINIT/FNSTCW/FLDCW/FNSTSW/FNCLEX/FWAIT/EMMS are in `system`.)
//!
//! Storage: [`FpuState::st`] holds the registers in stack order (`st[0]` is ST(0)); TOP lives in
//! FSW bits 11-13 and the abridged tag word ([`FpuState::ftw`], one bit per *physical*
//! register, 1 = valid) is kept in physical order, as FXSAVE lays them out. MMn aliases the
//! significand of physical register n.
//!
//! Arithmetic is exact IEEE on the 80-bit format through `sse_float` with FCW.RC honoured.
//! Limits (documented, not hidden): FCW.PC (precision control) is ignored — results are always
//! rounded to 64-bit significands; unmasked exceptions set FSW.ES
//! and B and are reported as #MF (with CR0.NE) by the next x87 arithmetic instruction here, not
//! by FWAIT; FIP/FDP/FOP are not recorded.

use super::sse_float::{self as sf, Class, Fmt, Round, F32, F64, F80};
use crate::cpu::{cr0, Cpu, FpuState};
use crate::exception::{vector, Exception, Res};
use crate::flags;
use crate::memory::GuestMemory;
use iced_x86::{Instruction, MemorySize, Mnemonic as M, OpKind};

/// FSW bits.
const SF: u16 = 1 << 6;
const ES: u16 = 1 << 7;
const C0: u16 = 1 << 8;
const C1: u16 = 1 << 9;
const C2: u16 = 1 << 10;
const C3: u16 = 1 << 14;
const B: u16 = 1 << 15;

pub(crate) fn top(f: &FpuState) -> usize {
    ((f.fsw >> 11) & 7) as usize
}

fn set_top(f: &mut FpuState, t: usize) {
    f.fsw = (f.fsw & !(7 << 11)) | (((t & 7) as u16) << 11);
}

fn phys(f: &FpuState, st: usize) -> usize {
    (top(f) + st) & 7
}

/// Raw 80-bit value of ST(i).
pub(crate) fn st_get(f: &FpuState, i: usize) -> u128 {
    let mut b = [0u8; 16];
    b[..10].copy_from_slice(&f.st[i & 7]);
    u128::from_le_bytes(b)
}

fn st_set(f: &mut FpuState, i: usize, v: u128) {
    f.st[i & 7].copy_from_slice(&v.to_le_bytes()[..10]);
    let p = phys(f, i);
    f.ftw |= 1 << p;
}

fn is_empty(f: &FpuState, i: usize) -> bool {
    f.ftw & (1 << phys(f, i)) == 0
}

fn push(f: &mut FpuState, v: u128) {
    f.st.rotate_right(1);
    set_top(f, top(f).wrapping_sub(1));
    st_set(f, 0, v);
}

fn pop(f: &mut FpuState) {
    let p = phys(f, 0);
    f.ftw &= !(1 << p);
    f.st.rotate_left(1);
    set_top(f, top(f) + 1);
}

/// The MMX transition: physical order, TOP = 0, all registers valid.
pub(crate) fn enter_mmx(f: &mut FpuState) {
    let t = top(f);
    f.st.rotate_right(t); // st[j] now holds physical register j
    set_top(f, 0);
    f.ftw = 0xff;
}

/// MMn (the significand of physical register n).
pub(crate) fn mm_get(f: &FpuState, n: usize) -> u64 {
    let i = (n + 8 - top(f)) & 7;
    let mut b = [0u8; 8];
    b.copy_from_slice(&f.st[i][..8]);
    u64::from_le_bytes(b)
}

/// Write MMn: the significand, with the sign/exponent bits all ones.
pub(crate) fn mm_set(f: &mut FpuState, n: usize, v: u64) {
    let i = (n + 8 - top(f)) & 7;
    f.st[i][..8].copy_from_slice(&v.to_le_bytes());
    f.st[i][8] = 0xff;
    f.st[i][9] = 0xff;
    f.ftw |= 1 << (n & 7);
}

/// Whether `m` is handled here.
pub(crate) fn handles(m: M) -> bool {
    matches!(
        m,
        M::Fld
            | M::Fild
            | M::Fst
            | M::Fstp
            | M::Fist
            | M::Fistp
            | M::Fadd
            | M::Faddp
            | M::Fsub
            | M::Fsubp
            | M::Fsubr
            | M::Fsubrp
            | M::Fmul
            | M::Fmulp
            | M::Fdiv
            | M::Fdivp
            | M::Fdivr
            | M::Fdivrp
            | M::Fxch
            | M::Fld1
            | M::Fldz
            | M::Fchs
            | M::Fabs
            | M::Ffree
            | M::Fincstp
            | M::Fdecstp
            | M::Fnop
            | M::Fcom
            | M::Fcomp
            | M::Fcompp
            | M::Fucom
            | M::Fucomp
            | M::Fucompp
            | M::Ftst
            | M::Fcomi
            | M::Fcomip
            | M::Fucomi
            | M::Fucomip
    )
}

/// Exceptions raised by one instruction, in FSW bit order (IE..PE), plus the stack fault.
struct Raised {
    flags: u32,
}

fn rc(f: &FpuState) -> Round {
    Round::from_rc((f.fcw >> 10) as u32)
}

/// Finish an instruction: merge flags, decide whether the result may be written.
/// Returns false when an unmasked pre-computation exception suppresses the result.
fn settle(f: &mut FpuState, r: Raised) -> bool {
    let flags = (r.flags & 0x7f) as u16;
    f.fsw |= flags;
    if r.flags & sf::UP != 0 {
        f.fsw |= C1;
    }
    let unmasked = flags & 0x3f & !(f.fcw & 0x3f);
    if unmasked != 0 {
        f.fsw |= ES | B;
    }
    unmasked & (sf::IE | sf::DE | sf::ZE) as u16 == 0
}

pub(crate) fn exec(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    if cpu.cr0 & (cr0::EM | cr0::TS) != 0 {
        return Err(Exception::fault(vector::NM, None).into());
    }
    if cpu.fpu.fsw & ES != 0 && cpu.cr0 & cr0::NE != 0 {
        return Err(Exception::fault(vector::MF, None).into());
    }
    let m = i.mnemonic();
    match m {
        M::Fld | M::Fild => load(cpu, mem, i),
        M::Fst | M::Fstp | M::Fist | M::Fistp => store(cpu, mem, i),
        M::Fadd
        | M::Faddp
        | M::Fsub
        | M::Fsubp
        | M::Fsubr
        | M::Fsubrp
        | M::Fmul
        | M::Fmulp
        | M::Fdiv
        | M::Fdivp
        | M::Fdivr
        | M::Fdivrp => arith(cpu, mem, i),
        M::Fcom | M::Fcomp | M::Fcompp | M::Fucom | M::Fucomp | M::Fucompp | M::Ftst => {
            compare(cpu, mem, i)
        }
        M::Fcomi | M::Fcomip | M::Fucomi | M::Fucomip => compare(cpu, mem, i),
        _ => misc(cpu, i),
    }
}

fn st_operand(i: &Instruction, op: u32) -> usize {
    i.op_register(op).number() & 7
}

fn underflow_stack(f: &mut FpuState) -> Raised {
    f.fsw &= !C1;
    Raised {
        flags: sf::IE | SF as u32,
    }
}

/// Convert a value of format `from` to the 80-bit format (exact), with IE for SNaN and DE.
fn widen(from: Fmt, bits: u128) -> (u128, u32) {
    let u = sf::unpack(from, bits);
    match u.class {
        Class::Zero => (F80.zero(u.sign), 0),
        Class::Inf => (F80.inf(u.sign), 0),
        Class::QNan => (sf::convert_nan(from, F80, bits), 0),
        Class::SNan => (sf::convert_nan(from, F80, bits), sf::IE),
        Class::Denormal | Class::Normal => {
            let de = if u.class == Class::Denormal {
                sf::DE
            } else {
                0
            };
            let (v, _) = sf::round_pack(F80, u.sign, u.exp, u.sig, false, Round::Nearest, false);
            (v, de)
        }
    }
}

fn load(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let (v, mut flags) = if i.op0_kind() == OpKind::Register {
        let s = st_operand(i, 0);
        if is_empty(&cpu.fpu, s) {
            (F80.default_nan(), underflow_stack(&mut cpu.fpu).flags)
        } else {
            (st_get(&cpu.fpu, s), 0)
        }
    } else {
        let la = cpu.mem_la(i, 0)?;
        let ms = i.memory_size();
        let raw = cpu.read_vec(mem, la, ms.size())?;
        match (i.mnemonic(), ms) {
            (M::Fild, MemorySize::Int16) => (
                sf::from_int(F80, raw as u16 as i16 as i64, Round::Nearest).0,
                0,
            ),
            (M::Fild, MemorySize::Int32) => (
                sf::from_int(F80, raw as u32 as i32 as i64, Round::Nearest).0,
                0,
            ),
            (M::Fild, _) => (sf::from_int(F80, raw as u64 as i64, Round::Nearest).0, 0),
            (_, MemorySize::Float32) => widen(F32, raw),
            (_, MemorySize::Float64) => widen(F64, raw),
            _ => (raw & F80.mask(), 0),
        }
    };
    let f = &mut cpu.fpu;
    let mut v = v;
    if !is_empty(f, 7) {
        // Stack overflow: C1 = 1, masked response pushes the indefinite.
        flags = sf::IE | SF as u32;
        f.fsw |= C1;
        v = F80.default_nan();
    } else {
        f.fsw &= !C1;
    }
    if settle(f, Raised { flags }) {
        push(f, v);
    }
    Ok(())
}

fn store(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let popping = matches!(i.mnemonic(), M::Fstp | M::Fistp);
    let empty = is_empty(&cpu.fpu, 0);
    let src = if empty {
        F80.default_nan()
    } else {
        st_get(&cpu.fpu, 0)
    };
    let mut flags: u32 = if empty { sf::IE | SF as u32 } else { 0 };
    cpu.fpu.fsw &= !C1;
    if i.op0_kind() == OpKind::Register {
        let d = st_operand(i, 0);
        if settle(&mut cpu.fpu, Raised { flags }) {
            st_set(&mut cpu.fpu, d, src);
            if popping {
                pop(&mut cpu.fpu);
            }
        }
        return Ok(());
    }
    let la = cpu.mem_la(i, 0)?;
    let ms = i.memory_size();
    let u = sf::unpack(F80, src);
    let r = rc(&cpu.fpu);
    let out: u128 = match ms {
        MemorySize::Int16 | MemorySize::Int32 | MemorySize::Int64 => {
            let bits = ms.size() as u32 * 8;
            match sf::to_int(u, bits, r) {
                Some((v, inexact)) => {
                    if inexact {
                        flags |= sf::PE;
                        let t = sf::to_int(u, bits, Round::Zero).map(|t| t.0);
                        if t != Some(v) {
                            flags |= sf::UP;
                        }
                    }
                    (v as u64 as u128) & ((1u128 << bits) - 1)
                }
                None => {
                    flags |= sf::IE;
                    1u128 << (bits - 1)
                }
            }
        }
        MemorySize::Float32 | MemorySize::Float64 => {
            let to = if ms == MemorySize::Float32 { F32 } else { F64 };
            match u.class {
                Class::Zero => to.zero(u.sign),
                Class::Inf => to.inf(u.sign),
                Class::QNan | Class::SNan => {
                    if u.class == Class::SNan {
                        flags |= sf::IE;
                    }
                    sf::convert_nan(F80, to, src)
                }
                _ => {
                    let (v, fl) = sf::round_pack(to, u.sign, u.exp, u.sig, false, r, false);
                    flags |= fl & (0x3f | sf::UP);
                    v
                }
            }
        }
        _ => src,
    };
    // Check the write first so a fault leaves the stack untouched.
    cpu.probe_write(mem, la, ms.size() as u8)?;
    if settle(&mut cpu.fpu, Raised { flags }) {
        cpu.write_vec(mem, la, ms.size(), out)?;
        if popping {
            pop(&mut cpu.fpu);
        }
    }
    Ok(())
}

/// The masked-response NaN of a two-operand operation (x87 rule: the larger significand).
fn nan_result(a: u128, ua: sf::Unpacked, b: u128, ub: sf::Unpacked) -> u128 {
    let pick = match (ua.is_nan(), ub.is_nan()) {
        (true, true) => {
            let (ma, mb) = (a & ((1 << 63) - 1), b & ((1 << 63) - 1));
            if ma >= mb {
                a
            } else {
                b
            }
        }
        (true, false) => a,
        _ => b,
    };
    F80.quiet(pick)
}

/// `a op b` in the 80-bit format. Returns (result, flags).
pub(crate) fn binop(m: M, a: u128, b: u128, r: Round) -> (u128, u32) {
    let (ua, ub) = (sf::unpack(F80, a), sf::unpack(F80, b));
    let mut flags = 0u32;
    if ua.class == Class::SNan || ub.class == Class::SNan {
        flags |= sf::IE;
    }
    if ua.is_nan() || ub.is_nan() {
        return (nan_result(a, ua, b, ub), flags);
    }
    if ua.class == Class::Denormal || ub.class == Class::Denormal {
        flags |= sf::DE;
    }
    let (ia, ib) = (ua.class == Class::Inf, ub.class == Class::Inf);
    let (za, zb) = (ua.class == Class::Zero, ub.class == Class::Zero);
    let invalid = || (F80.default_nan(), flags | sf::IE);
    let (v, fl) = match m {
        M::Fadd | M::Fsub => {
            let ub = if m == M::Fsub {
                sf::Unpacked {
                    sign: !ub.sign,
                    ..ub
                }
            } else {
                ub
            };
            match (ia, ib) {
                (true, true) if ua.sign != ub.sign => return invalid(),
                (true, _) => (F80.inf(ua.sign), 0),
                (_, true) => (F80.inf(ub.sign), 0),
                _ => sf::add(F80, ua, ub, r, false),
            }
        }
        M::Fmul => {
            let sign = ua.sign != ub.sign;
            if (ia && zb) || (ib && za) {
                return invalid();
            }
            if ia || ib {
                (F80.inf(sign), 0)
            } else {
                sf::mul(F80, ua, ub, r, false)
            }
        }
        _ => {
            let sign = ua.sign != ub.sign;
            if (ia && ib) || (za && zb) {
                return invalid();
            }
            if ia {
                (F80.inf(sign), 0)
            } else if ib {
                (F80.zero(sign), 0)
            } else if zb {
                (F80.inf(sign), sf::ZE)
            } else {
                sf::div(F80, ua, ub, r, false)
            }
        }
    };
    (v, (flags | fl) & (0x3f | sf::UP))
}

fn arith(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let m = i.mnemonic();
    let popping = matches!(
        m,
        M::Faddp | M::Fsubp | M::Fsubrp | M::Fmulp | M::Fdivp | M::Fdivrp
    );
    // (destination ST index, first operand, second operand) of the operation.
    let (dst, a, b, empty) = if i.op0_kind() == OpKind::Memory {
        let la = cpu.mem_la(i, 0)?;
        let ms = i.memory_size();
        let raw = cpu.read_vec(mem, la, ms.size())?;
        let (mv, _) = match ms {
            MemorySize::Float32 => widen(F32, raw),
            _ => widen(F64, raw),
        };
        (0, st_get(&cpu.fpu, 0), mv, is_empty(&cpu.fpu, 0))
    } else {
        let (d, s) = (st_operand(i, 0), st_operand(i, 1));
        let e = is_empty(&cpu.fpu, d) || is_empty(&cpu.fpu, s);
        (d, st_get(&cpu.fpu, d), st_get(&cpu.fpu, s), e)
    };
    let (base, reversed) = match m {
        M::Fadd | M::Faddp => (M::Fadd, false),
        M::Fsub | M::Fsubp => (M::Fsub, false),
        M::Fsubr | M::Fsubrp => (M::Fsub, true),
        M::Fmul | M::Fmulp => (M::Fmul, false),
        M::Fdiv | M::Fdivp => (M::Fdiv, false),
        _ => (M::Fdiv, true),
    };
    let (v, flags) = if empty {
        (F80.default_nan(), underflow_stack(&mut cpu.fpu).flags)
    } else if reversed {
        binop(base, b, a, rc(&cpu.fpu))
    } else {
        binop(base, a, b, rc(&cpu.fpu))
    };
    if !empty {
        cpu.fpu.fsw &= !C1;
    }
    if settle(&mut cpu.fpu, Raised { flags }) {
        st_set(&mut cpu.fpu, dst, v);
        if popping {
            pop(&mut cpu.fpu);
        }
    }
    Ok(())
}

/// Compare: Some(Ordering) or None for unordered; flags raised.
fn cmp80(a: u128, b: u128, quiet: bool) -> (Option<std::cmp::Ordering>, u32) {
    let (ua, ub) = (sf::unpack(F80, a), sf::unpack(F80, b));
    let mut flags = 0u32;
    if ua.is_nan() || ub.is_nan() {
        let signal = !quiet || ua.class == Class::SNan || ub.class == Class::SNan;
        return (None, if signal { sf::IE } else { 0 });
    }
    if ua.class == Class::Denormal || ub.class == Class::Denormal {
        flags |= sf::DE;
    }
    (Some(total_order(&ua, &ub)), flags)
}

/// Order of two non-NaN values.
pub(crate) fn total_order(a: &sf::Unpacked, b: &sf::Unpacked) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let mag = |u: &sf::Unpacked| -> (u8, i32, u128) {
        match u.class {
            Class::Zero => (0, 0, 0),
            Class::Inf => (2, 0, 0),
            _ => {
                let n = 128 - u.sig.leading_zeros() as i32;
                (1, u.exp + n, u.sig << (128 - n) as u32)
            }
        }
    };
    let (ma, mb) = (mag(a), mag(b));
    if ma.0 == 0 && mb.0 == 0 {
        return Ordering::Equal;
    }
    let sa = if ma.0 == 0 { false } else { a.sign };
    let sb = if mb.0 == 0 { false } else { b.sign };
    match (sa, sb) {
        (false, true) => Ordering::Greater,
        (true, false) => Ordering::Less,
        (false, false) => ma.cmp(&mb),
        (true, true) => mb.cmp(&ma),
    }
}

fn compare(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    use std::cmp::Ordering;
    let m = i.mnemonic();
    let quiet = matches!(
        m,
        M::Fucom | M::Fucomp | M::Fucompp | M::Fucomi | M::Fucomip
    );
    let pops = match m {
        M::Fcomp | M::Fucomp | M::Fcomip | M::Fucomip => 1,
        M::Fcompp | M::Fucompp => 2,
        _ => 0,
    };
    let (b, empty_b) = if m == M::Ftst {
        (F80.zero(false), false)
    } else if i.op_count() == 0 {
        (st_get(&cpu.fpu, 1), is_empty(&cpu.fpu, 1))
    } else {
        let last = i.op_count() - 1;
        if i.op_kind(last) == OpKind::Memory {
            let la = cpu.mem_la(i, last)?;
            let ms = i.memory_size();
            let raw = cpu.read_vec(mem, la, ms.size())?;
            let from = if ms == MemorySize::Float32 { F32 } else { F64 };
            (widen(from, raw).0, false)
        } else {
            let s = st_operand(i, last);
            (st_get(&cpu.fpu, s), is_empty(&cpu.fpu, s))
        }
    };
    let empty = empty_b || is_empty(&cpu.fpu, 0);
    let (ord, flags) = if empty {
        (None, underflow_stack(&mut cpu.fpu).flags)
    } else {
        cpu.fpu.fsw &= !C1;
        cmp80(st_get(&cpu.fpu, 0), b, quiet)
    };
    if !settle(&mut cpu.fpu, Raised { flags }) {
        return Ok(());
    }
    let (zf, pf, cf) = match ord {
        None => (true, true, true),
        Some(Ordering::Greater) => (false, false, false),
        Some(Ordering::Less) => (false, false, true),
        Some(Ordering::Equal) => (true, false, false),
    };
    if matches!(m, M::Fcomi | M::Fcomip | M::Fucomi | M::Fucomip) {
        let v = ((zf as u64) * flags::ZF) | ((pf as u64) * flags::PF) | ((cf as u64) * flags::CF);
        cpu.flags.set_arith(flags::ARITH, v);
    } else {
        let f = &mut cpu.fpu;
        f.fsw &= !(C0 | C2 | C3);
        f.fsw |= ((cf as u16) * C0) | ((pf as u16) * C2) | ((zf as u16) * C3);
    }
    for _ in 0..pops {
        pop(&mut cpu.fpu);
    }
    Ok(())
}

fn misc(cpu: &mut Cpu, i: &Instruction) -> Res<()> {
    let f = &mut cpu.fpu;
    match i.mnemonic() {
        M::Fld1 | M::Fldz => {
            let v = if i.mnemonic() == M::Fld1 {
                0x3fff_8000_0000_0000_0000u128
            } else {
                0
            };
            let overflow = !is_empty(f, 7);
            let flags = if overflow { sf::IE | SF as u32 } else { 0 };
            if overflow {
                f.fsw |= C1;
            } else {
                f.fsw &= !C1;
            }
            if settle(f, Raised { flags }) {
                push(f, if overflow { F80.default_nan() } else { v });
            }
        }
        M::Fxch => {
            let s = if i.op_count() == 0 {
                1
            } else {
                st_operand(i, i.op_count() - 1)
            };
            if is_empty(f, 0) || is_empty(f, s) {
                let r = underflow_stack(f);
                if !settle(f, r) {
                    return Ok(());
                }
                for k in [0, s] {
                    if is_empty(f, k) {
                        st_set(f, k, F80.default_nan());
                    }
                }
            }
            f.fsw &= !C1;
            let (a, b) = (st_get(f, 0), st_get(f, s));
            st_set(f, 0, b);
            st_set(f, s, a);
        }
        M::Fchs | M::Fabs => {
            if is_empty(f, 0) {
                let r = underflow_stack(f);
                if settle(f, r) {
                    st_set(f, 0, F80.default_nan());
                }
                return Ok(());
            }
            f.fsw &= !C1;
            let sign = 1u128 << 79;
            let v = st_get(f, 0);
            let v = if i.mnemonic() == M::Fchs {
                v ^ sign
            } else {
                v & !sign
            };
            st_set(f, 0, v);
        }
        M::Ffree => {
            let p = phys(f, st_operand(i, 0));
            f.ftw &= !(1 << p);
        }
        M::Fincstp | M::Fdecstp => {
            f.fsw &= !C1;
            if i.mnemonic() == M::Fincstp {
                f.st.rotate_left(1);
                set_top(f, top(f) + 1);
            } else {
                f.st.rotate_right(1);
                set_top(f, top(f).wrapping_sub(1));
            }
        }
        _ => {} // FNOP
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use iced_x86::code_asm::*;

    fn ext(x: f64) -> u128 {
        widen(F64, x.to_bits() as u128).0
    }

    #[test]
    fn fild_then_fadd_sums_in_extended_precision() {
        let t = run_asm(|a| {
            a.mov(dword_ptr(DATA), 40)?;
            a.mov(dword_ptr(DATA + 4), 2)?;
            a.fninit()?;
            a.fild(dword_ptr(DATA))?;
            a.fild(dword_ptr(DATA + 4))?;
            a.fadd_2(st0, st1)?;
            a.fistp(dword_ptr(DATA + 8))?;
            Ok(())
        });
        assert_eq!(t.exception, None);
        assert_eq!(t.mem_u64(DATA + 8) as u32, 42);
        assert_eq!(top(&t.cpu.fpu), 7);
        assert_eq!(t.cpu.fpu.ftw, 0x80);
    }

    #[test]
    fn fld_fstp_double_round_trips() {
        let t = run_asm(|a| {
            a.mov(rax, 0.1f64.to_bits())?;
            a.mov(qword_ptr(DATA), rax)?;
            a.fld(qword_ptr(DATA))?;
            a.fstp(qword_ptr(DATA + 8))?;
            Ok(())
        });
        assert_eq!(t.mem_u64(DATA + 8), 0.1f64.to_bits());
        assert_eq!(t.cpu.fpu.ftw, 0);
    }

    #[test]
    fn pop_from_empty_stack_is_masked_invalid_with_stack_fault() {
        let t = run_asm(|a| {
            a.fninit()?;
            a.fstp(qword_ptr(DATA))?;
            Ok(())
        });
        assert_eq!(t.mem_u64(DATA), 0xfff8_0000_0000_0000);
        assert_eq!(t.cpu.fpu.fsw & 0x41, 0x41);
    }

    #[test]
    fn unmasked_x87_exception_reports_mf_on_next_instruction() {
        let t = run_asm(|a| {
            a.fninit()?;
            a.mov(word_ptr(DATA), 0x37e)?; // unmask IE
            a.fldcw(word_ptr(DATA))?;
            a.fstp(qword_ptr(DATA + 8))?; // empty stack: IE, ES
            a.fld1()?; // #MF
            Ok(())
        });
        assert_eq!(t.exception, Some(16));
        assert_eq!(t.mem_u64(DATA + 8), 0, "masked response not written");
    }

    #[test]
    fn binop_divides_by_zero_to_infinity_with_ze() {
        let (v, fl) = binop(M::Fdiv, ext(1.0), ext(0.0), Round::Nearest);
        assert_eq!(v, F80.inf(false));
        assert_eq!(fl, sf::ZE);
        let (v, fl) = binop(
            M::Fsub,
            ext(f64::INFINITY),
            ext(f64::INFINITY),
            Round::Nearest,
        );
        assert_eq!(v, F80.default_nan());
        assert_eq!(fl, sf::IE);
    }

    #[test]
    fn fcomi_sets_eflags_and_fucomip_pops() {
        let t = run_asm(|a| {
            a.fninit()?;
            a.fld1()?;
            a.fldz()?;
            a.fucomip(st0, st1)?; // 0 < 1: CF
            Ok(())
        });
        assert_eq!(t.arith_flags(), crate::flags::CF);
        assert_eq!(top(&t.cpu.fpu), 7);
    }

    #[test]
    fn mmx_write_sets_exponent_ones_and_tags_valid() {
        let mut f = FpuState::default();
        set_top(&mut f, 3);
        enter_mmx(&mut f);
        mm_set(&mut f, 2, 0x1122_3344_5566_7788);
        assert_eq!(mm_get(&f, 2), 0x1122_3344_5566_7788);
        assert_eq!(st_get(&f, 2) >> 64, 0xffff);
        assert_eq!(f.ftw, 0xff);
        assert_eq!(top(&f), 0);
    }
}
