//! SSE/SSE2 and MMX: the availability checks (CR0.EM/TS, CR4.OSFXSR), vector operand access
//! (XMM and MM registers, 16-byte memory operands with the legacy-SSE alignment rule), SIMD
//! floating-point exception delivery (#XM, or #UD without CR4.OSXMMEXCPT), LDMXCSR/STMXCSR and
//! the dispatch to the instruction groups:
//! - `sse_move`: MOVAPS/MOVDQA/MOVD/MOVQ/MOVSS/MOVSD/MOVLPS/MOVHPD..., MOVMSKPS, PMOVMSKB,
//!   shuffles and unpacks, logical ops.
//! - `sse_int`: packed integer arithmetic, compares, shifts, packs (XMM and MM forms).
//! - `sse_fp`: scalar and packed single/double arithmetic, compares and conversions on the exact
//!   soft-float core in `sse_float`.
//! - `sse_fxsave`: FXSAVE/FXRSTOR.
//!
//! Gaps: MMX instructions do not check for a pending x87 exception (#MF); the AC flag
//! (alignment check at CPL 3) is not modelled.

use super::{sse_float as sf, sse_fp, sse_fxsave, sse_int, sse_move};
use crate::cpu::{cr0, cr4, Cpu};
use crate::exception::{vector, Exception, Res};
use crate::memory::GuestMemory;
use crate::mmu::AccessKind;
use iced_x86::{Instruction, Mnemonic as M, OpKind, Register};

/// MXCSR bits this model implements (DAZ included); anything else written is #GP.
pub(crate) const MXCSR_MASK: u32 = 0xffff;
/// MXCSR.DAZ.
pub(crate) const DAZ: u32 = 1 << 6;
/// MXCSR.FTZ.
pub(crate) const FTZ: u32 = 1 << 15;

/// A vector register operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VReg {
    Xmm(usize),
    Mm(usize),
}

pub(crate) fn vreg(r: Register) -> Option<VReg> {
    if r.is_xmm() {
        Some(VReg::Xmm(r.number() & 15))
    } else if r.is_mm() {
        Some(VReg::Mm(r.number() & 7))
    } else {
        None
    }
}

/// Whether `m` is handled here.
pub(crate) fn handles(m: M) -> bool {
    matches!(m, M::Ldmxcsr | M::Stmxcsr)
        || sse_move::handles(m)
        || sse_int::handles(m)
        || sse_fp::handles(m)
        || sse_fxsave::handles(m)
}

/// Execute an SSE/SSE2/MMX instruction.
pub(crate) fn exec(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let m = i.mnemonic();
    if sse_fxsave::handles(m) {
        return sse_fxsave::exec(cpu, mem, i);
    }
    if uses_mmx(i) {
        check_mmx(cpu)?;
        super::x87::enter_mmx(&mut cpu.fpu);
    } else {
        check_sse(cpu)?;
    }
    match m {
        M::Ldmxcsr => {
            let la = cpu.mem_la(i, 0)?;
            let v = cpu.read_mem(mem, la, 4)? as u32;
            if v & !MXCSR_MASK != 0 {
                return Err(Exception::gp(0).into());
            }
            cpu.mxcsr = v;
            Ok(())
        }
        M::Stmxcsr => {
            let la = cpu.mem_la(i, 0)?;
            cpu.write_mem(mem, la, 4, cpu.mxcsr as u64)
        }
        m if sse_move::handles(m) => sse_move::exec(cpu, mem, i),
        m if sse_int::handles(m) => sse_int::exec(cpu, mem, i),
        _ => sse_fp::exec(cpu, mem, i),
    }
}

fn uses_mmx(i: &Instruction) -> bool {
    (0..i.op_count()).any(|n| i.op_kind(n) == OpKind::Register && i.op_register(n).is_mm())
}

/// SSE/SSE2 availability: #UD without CR4.OSFXSR or with CR0.EM, then #NM with CR0.TS.
pub(crate) fn check_sse(cpu: &Cpu) -> Res<()> {
    if cpu.cr0 & cr0::EM != 0 || cpu.cr4 & cr4::OSFXSR == 0 {
        return Err(Exception::ud().into());
    }
    if cpu.cr0 & cr0::TS != 0 {
        return Err(Exception::fault(vector::NM, None).into());
    }
    Ok(())
}

/// MMX availability: #UD with CR0.EM, #NM with CR0.TS.
pub(crate) fn check_mmx(cpu: &Cpu) -> Res<()> {
    if cpu.cr0 & cr0::EM != 0 {
        return Err(Exception::ud().into());
    }
    if cpu.cr0 & cr0::TS != 0 {
        return Err(Exception::fault(vector::NM, None).into());
    }
    Ok(())
}

impl Cpu {
    /// Value of a vector register (MM registers zero-extended).
    pub(crate) fn vget(&self, r: VReg) -> u128 {
        match r {
            VReg::Xmm(n) => self.xmm[n & 15],
            VReg::Mm(n) => super::x87::mm_get(&self.fpu, n) as u128,
        }
    }

    /// Write a vector register (MM registers take the low 64 bits).
    pub(crate) fn vset(&mut self, r: VReg, v: u128) {
        match r {
            VReg::Xmm(n) => self.xmm[n & 15] = v,
            VReg::Mm(n) => super::x87::mm_set(&mut self.fpu, n, v as u64),
        }
    }

    /// Read `size` bytes (at most 16) at linear address `la`.
    pub(crate) fn read_vec(
        &mut self,
        mem: &mut dyn GuestMemory,
        la: u64,
        size: usize,
    ) -> Res<u128> {
        let mut b = [0u8; 16];
        let n = size.min(16);
        let access = self.data_access(AccessKind::Read);
        self.read_linear(mem, la, &mut b[..n], access)?;
        Ok(u128::from_le_bytes(b))
    }

    /// Write the low `size` bytes (at most 16) of `v` at linear address `la`.
    pub(crate) fn write_vec(
        &mut self,
        mem: &mut dyn GuestMemory,
        la: u64,
        size: usize,
        v: u128,
    ) -> Res<()> {
        let n = size.min(16);
        let user = self.cpl() == 3;
        self.write_linear(mem, la, &v.to_le_bytes()[..n], user)
    }

    /// Read vector operand `op`: a vector register, a GPR (zero-extended) or memory of the
    /// instruction's memory size. Legacy-SSE 16-byte memory operands must be 16-byte aligned
    /// (#GP(0)) unless the instruction is an explicitly unaligned one.
    pub(crate) fn vsrc(
        &mut self,
        mem: &mut dyn GuestMemory,
        i: &Instruction,
        op: u32,
    ) -> Res<u128> {
        match i.op_kind(op) {
            OpKind::Register => {
                let r = i.op_register(op);
                Ok(match vreg(r) {
                    Some(v) => self.vget(v),
                    None => self.reg(r) as u128,
                })
            }
            OpKind::Memory => {
                let la = self.vec_la(i, op)?;
                let size = i.memory_size().size();
                self.read_vec(mem, la, size)
            }
            _ => Err(self.unimplemented(i)),
        }
    }

    /// Linear address of memory operand `op`, with the 16-byte alignment rule.
    pub(crate) fn vec_la(&mut self, i: &Instruction, op: u32) -> Res<u64> {
        let la = self.mem_la(i, op)?;
        let unaligned_ok = matches!(
            i.mnemonic(),
            M::Movups | M::Movupd | M::Movdqu | M::Maskmovdqu
        );
        if i.memory_size().size() == 16 && !unaligned_ok && la % 16 != 0 {
            return Err(Exception::gp(0).into());
        }
        Ok(la)
    }

    /// Write a 128-bit (or MM) result to vector operand `op` (register or memory of the
    /// instruction's memory size).
    pub(crate) fn vdst(
        &mut self,
        mem: &mut dyn GuestMemory,
        i: &Instruction,
        op: u32,
        v: u128,
    ) -> Res<()> {
        match i.op_kind(op) {
            OpKind::Register => {
                let r = i.op_register(op);
                match vreg(r) {
                    Some(x) => self.vset(x, v),
                    None => self.set_reg(r, v as u64),
                }
                Ok(())
            }
            _ => {
                let la = self.vec_la(i, op)?;
                let size = i.memory_size().size();
                self.write_vec(mem, la, size, v)
            }
        }
    }

    /// Rounding mode, FTZ (effective only with UM masked) and DAZ from MXCSR.
    pub(crate) fn sse_mode(&self) -> (sf::Round, bool, bool) {
        let m = self.mxcsr;
        (
            sf::Round::from_rc(m >> 13),
            m & FTZ != 0 && m & (sf::UE << 7) != 0,
            m & DAZ != 0,
        )
    }

    /// Merge the exception flags `raised` of an SSE operation into MXCSR. If any of them is
    /// unmasked, raise #XM (#UD when CR4.OSXMMEXCPT is clear) and tell the caller not to write
    /// its result. Pre-computation flags (IE, DE, ZE) that are unmasked suppress the
    /// post-computation ones, as the SDM describes.
    pub(crate) fn sse_raise(&mut self, pre: u32, post: u32) -> Res<()> {
        let masked = (self.mxcsr >> 7) & 0x3f;
        let pre = pre & 0x3f;
        let unmasked_pre = pre & !masked;
        let mut flags = pre;
        if unmasked_pre == 0 {
            let tiny = post & sf::TINY != 0;
            let mut p = post & 0x3f;
            if tiny && masked & sf::UE == 0 {
                p |= sf::UE; // unmasked underflow: tininess alone signals
            }
            flags |= p;
        }
        self.mxcsr |= flags;
        if flags & !masked != 0 {
            return Err(if self.cr4 & cr4::OSXMMEXCPT != 0 {
                Exception::fault(vector::XM, None).into()
            } else {
                Exception::ud().into()
            });
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::cpu::{cr0, cr4};
    use crate::testutil::*;
    use iced_x86::code_asm::*;

    /// A machine with CR4.OSFXSR|OSXMMEXCPT set (as Linux runs), code assembled by `f`.
    pub(crate) fn sse_machine(
        f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
    ) -> Machine {
        let mut m = Machine::new();
        m.cpu.cr4 |= cr4::OSFXSR | cr4::OSXMMEXCPT;
        m.load_code(&assemble(f));
        m
    }

    pub(crate) fn run_sse(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Outcome {
        sse_machine(f).run(100_000)
    }

    #[test]
    fn random_sse_x87_and_mmx_encodings_never_panic() {
        let mut seed = 0x55e_f00du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        const PREFIXES: [&[u8]; 6] = [
            &[0x0f],
            &[0x66, 0x0f],
            &[0xf3, 0x0f],
            &[0xf2, 0x0f],
            &[0x66, 0x48, 0x0f],
            &[],
        ];
        for _ in 0..4000 {
            let mut code = PREFIXES[(next() % 6) as usize].to_vec();
            if code.is_empty() {
                code.push(0xd8 + (next() % 8) as u8); // x87 escape
            }
            code.extend((0..6).map(|_| next() as u8));
            let mut m = Machine::new();
            m.cpu.cr4 |= cr4::OSFXSR | cr4::OSXMMEXCPT;
            m.cpu.mxcsr = 0x1f80 | (next() as u32 & 0xe07f);
            for r in m.cpu.xmm.iter_mut() {
                *r = ((next() as u128) << 64) | next() as u128;
            }
            for (n, r) in m.cpu.gpr.iter_mut().enumerate() {
                *r = if n == 4 {
                    STACK_TOP
                } else {
                    DATA + (next() % 0x1000)
                };
            }
            m.load_code(&code);
            let _ = m.run(4);
        }
    }

    #[test]
    fn sse_without_osfxsr_is_ud() {
        let mut m = Machine::new();
        m.load_code(&assemble(|a| a.pxor(xmm0, xmm1)));
        let t = m.run(10);
        assert_eq!(t.exception, Some(6));
    }

    #[test]
    fn sse_with_cr0_ts_is_nm_and_with_em_is_ud() {
        let mut m = sse_machine(|a| a.movaps(xmm0, xmm1));
        m.cpu.cr0 |= cr0::TS;
        assert_eq!(m.run(10).exception, Some(7));
        let mut m = sse_machine(|a| a.movaps(xmm0, xmm1));
        m.cpu.cr0 |= cr0::EM | cr0::TS;
        assert_eq!(m.run(10).exception, Some(6));
    }

    #[test]
    fn mmx_ignores_osfxsr_but_not_ts() {
        let mut m = Machine::new();
        m.load_code(&assemble(|a| a.pxor(mm0, mm1)));
        assert_eq!(m.run(10).exception, None);
        let mut m = Machine::new();
        m.cpu.cr0 |= cr0::TS;
        m.load_code(&assemble(|a| a.pxor(mm0, mm1)));
        assert_eq!(m.run(10).exception, Some(7));
    }

    #[test]
    fn ldmxcsr_with_reserved_bits_is_gp_and_keeps_mxcsr() {
        let t = run_sse(|a| {
            a.mov(dword_ptr(DATA), 0x1_1f80)?;
            a.ldmxcsr(dword_ptr(DATA))?;
            Ok(())
        });
        assert_eq!(t.exception, Some(13));
        assert_eq!(t.cpu.mxcsr, 0x1f80);
    }

    #[test]
    fn ldmxcsr_stmxcsr_round_trip() {
        let t = run_sse(|a| {
            a.mov(dword_ptr(DATA), 0xffc0)?;
            a.ldmxcsr(dword_ptr(DATA))?;
            a.stmxcsr(dword_ptr(DATA + 8))?;
            Ok(())
        });
        assert_eq!(t.exception, None);
        assert_eq!(t.mem_u64(DATA + 8), 0xffc0);
    }

    #[test]
    fn misaligned_movdqa_is_gp_but_movdqu_is_fine() {
        let t = run_sse(|a| {
            a.movdqu(xmm1, xmmword_ptr(DATA + 4))?;
            a.movdqa(xmm0, xmmword_ptr(DATA + 8))?;
            Ok(())
        });
        assert_eq!(t.exception, Some(13));
    }

    #[test]
    fn unmasked_simd_exception_is_xm_or_ud_without_osxmmexcpt() {
        let prog = |a: &mut CodeAssembler| {
            a.mov(dword_ptr(DATA), 0x1f80 & !0x200)?; // unmask ZE
            a.ldmxcsr(dword_ptr(DATA))?;
            a.xorpd(xmm1, xmm1)?;
            a.mov(rax, 1.0f64.to_bits())?;
            a.movq(xmm0, rax)?;
            a.divsd(xmm0, xmm1)?;
            Ok(())
        };
        let t = run_sse(prog);
        assert_eq!(t.exception, Some(19));
        assert_eq!(t.cpu.xmm[0] as u64, 1.0f64.to_bits());
        assert_eq!(t.cpu.mxcsr & 0x3f, 0x4);
        let mut m = sse_machine(prog);
        m.cpu.cr4 &= !cr4::OSXMMEXCPT;
        assert_eq!(m.run(100).exception, Some(6));
    }
}
