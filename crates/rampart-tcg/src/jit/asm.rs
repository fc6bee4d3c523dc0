//! A small x86-64 assembler for the forms the translator emits.
//!
//! The translator used iced's `CodeAssembler` and `BlockEncoder`. They are general (any
//! instruction, shortest branches found by iteration) and slow for this use: they built a
//! boxed record per instruction and encoded every instruction at least twice, and a Linux
//! guest's block of ~15 instructions took 60-90 µs to compile, which made compilation a fifth
//! of the vCPU's time in the first second of a new workload and forced a high translation
//! threshold. This one writes each instruction's bytes once, straight into one buffer, with
//! every branch to a label in its 32-bit form, patched when the code is finished.
//!
//! Operands are checked at run time (sizes agree, displacements and immediates fit); a form
//! it cannot encode is an [`AsmError`], never wrong bytes. The tests check every form against
//! iced's decoder.

use std::ops::{Add, Mul, Sub};

/// Why an instruction could not be encoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum AsmError {
    #[error("{0}: operands of this kind or size cannot be encoded")]
    Form(&'static str),
    #[error("{0}: immediate {1:#x} does not fit the operand")]
    Imm(&'static str, i64),
    #[error("displacement {0:#x} does not fit in 32 bits")]
    Disp(i64),
    #[error("a label was placed twice")]
    Rebound,
    #[error("a branch goes to a label that was never placed")]
    Unbound,
    #[error("the code is larger than 2 GiB")]
    TooLarge,
}

pub(crate) type R<T> = Result<T, AsmError>;

/// No register (a memory operand without index).
const NOREG: u8 = 0xff;
/// In `Asm::op_rm`'s `reg`: the value is an opcode extension (`/n`), not a register.
const REG_IS_EXT: u8 = 0x80;

macro_rules! regs {
    ($ty:ident, $($name:ident = $n:expr),* $(,)?) => {
        $(#[allow(non_upper_case_globals, dead_code)] pub(crate) const $name: $ty = $ty($n);)*
    };
}

/// A 64-bit general register (0 = RAX … 15 = R15).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reg64(u8);
/// A 32-bit general register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reg32(u8);
/// A 16-bit general register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reg16(u8);
/// The low byte of a general register (4-7 are SPL BPL SIL DIL; AH-BH are not offered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reg8(u8);

regs!(
    Reg64,
    rax = 0,
    rcx = 1,
    rdx = 2,
    rbx = 3,
    rsp = 4,
    rbp = 5,
    rsi = 6,
    rdi = 7,
    r8 = 8,
    r9 = 9,
    r10 = 10,
    r11 = 11,
    r12 = 12,
    r13 = 13,
    r14 = 14,
    r15 = 15
);
regs!(
    Reg32,
    eax = 0,
    ecx = 1,
    edx = 2,
    ebx = 3,
    esp = 4,
    ebp = 5,
    esi = 6,
    edi = 7,
    r8d = 8,
    r9d = 9,
    r10d = 10,
    r11d = 11,
    r12d = 12,
    r13d = 13,
    r14d = 14,
    r15d = 15
);
regs!(
    Reg16,
    ax = 0,
    cx = 1,
    dx = 2,
    bx = 3,
    sp = 4,
    bp = 5,
    si = 6,
    di = 7,
    r8w = 8,
    r9w = 9,
    r10w = 10,
    r11w = 11,
    r12w = 12,
    r13w = 13,
    r14w = 14,
    r15w = 15
);
regs!(
    Reg8,
    al = 0,
    cl = 1,
    dl = 2,
    bl = 3,
    spl = 4,
    bpl = 5,
    sil = 6,
    dil = 7,
    r8b = 8,
    r9b = 9,
    r10b = 10,
    r11b = 11,
    r12b = 12,
    r13b = 13,
    r14b = 14,
    r15b = 15
);

/// `index * scale` in an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scaled {
    index: u8,
    scale: u8,
}

/// An address: `base + index * scale + disp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mem {
    base: u8,
    index: u8,
    scale: u8,
    disp: i64,
}

impl From<Reg64> for Mem {
    fn from(r: Reg64) -> Self {
        Mem {
            base: r.0,
            index: NOREG,
            scale: 1,
            disp: 0,
        }
    }
}

impl Mem {
    /// This address plus a signed displacement.
    pub(crate) fn plus(self, d: i64) -> Mem {
        Mem {
            disp: self.disp.saturating_add(d),
            ..self
        }
    }
}

impl Add<usize> for Reg64 {
    type Output = Mem;
    fn add(self, d: usize) -> Mem {
        Mem::from(self) + d
    }
}

impl Add<usize> for Mem {
    type Output = Mem;
    fn add(self, d: usize) -> Mem {
        Mem {
            // (An offset past i64 cannot be encoded anyway: `Asm` refuses it.)
            disp: self
                .disp
                .saturating_add(i64::try_from(d).unwrap_or(i64::MAX)),
            ..self
        }
    }
}

impl Sub<usize> for Reg64 {
    type Output = Mem;
    fn sub(self, d: usize) -> Mem {
        Mem {
            disp: -i64::try_from(d).unwrap_or(i64::MAX),
            ..Mem::from(self)
        }
    }
}

impl Mul<u8> for Reg64 {
    type Output = Scaled;
    fn mul(self, scale: u8) -> Scaled {
        Scaled {
            index: self.0,
            scale,
        }
    }
}

impl Add<Scaled> for Reg64 {
    type Output = Mem;
    fn add(self, s: Scaled) -> Mem {
        Mem {
            index: s.index,
            scale: s.scale,
            ..Mem::from(self)
        }
    }
}

/// A memory operand of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ptr {
    mem: Mem,
    size: u8,
}

pub(crate) fn byte_ptr(m: impl Into<Mem>) -> Ptr {
    Ptr {
        mem: m.into(),
        size: 1,
    }
}
pub(crate) fn word_ptr(m: impl Into<Mem>) -> Ptr {
    Ptr {
        mem: m.into(),
        size: 2,
    }
}
pub(crate) fn dword_ptr(m: impl Into<Mem>) -> Ptr {
    Ptr {
        mem: m.into(),
        size: 4,
    }
}
pub(crate) fn qword_ptr(m: impl Into<Mem>) -> Ptr {
    Ptr {
        mem: m.into(),
        size: 8,
    }
}

/// An operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opnd {
    /// Register number and size in bytes.
    Reg(u8, u8),
    Mem(Ptr),
    /// The value: an `i32` sign-extended, a `u32` or `u64` zero-extended.
    Imm(i64),
}

impl From<Reg64> for Opnd {
    fn from(r: Reg64) -> Self {
        Opnd::Reg(r.0, 8)
    }
}
impl From<Reg32> for Opnd {
    fn from(r: Reg32) -> Self {
        Opnd::Reg(r.0, 4)
    }
}
impl From<Reg16> for Opnd {
    fn from(r: Reg16) -> Self {
        Opnd::Reg(r.0, 2)
    }
}
impl From<Reg8> for Opnd {
    fn from(r: Reg8) -> Self {
        Opnd::Reg(r.0, 1)
    }
}
impl From<Ptr> for Opnd {
    fn from(p: Ptr) -> Self {
        Opnd::Mem(p)
    }
}
impl From<i32> for Opnd {
    fn from(v: i32) -> Self {
        Opnd::Imm(i64::from(v))
    }
}
impl From<u32> for Opnd {
    fn from(v: u32) -> Self {
        Opnd::Imm(i64::from(v))
    }
}
impl From<u64> for Opnd {
    fn from(v: u64) -> Self {
        Opnd::Imm(v as i64)
    }
}

/// A place in the code, placed once with [`Asm::set_label`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Label(u32);

/// Where a JMP goes.
pub(crate) enum Target {
    Label(Label),
    Mem(Ptr),
}
impl From<Label> for Target {
    fn from(l: Label) -> Self {
        Target::Label(l)
    }
}
impl From<Ptr> for Target {
    fn from(p: Ptr) -> Self {
        Target::Mem(p)
    }
}

/// The register-or-memory operand of a ModRM byte.
#[derive(Clone, Copy)]
enum Rm {
    Reg(u8),
    Mem(Mem),
}

/// The ALU group's operation numbers (the `/n` of opcodes 80-83, and bits 5-3 of 00-3F).
const ADD: u8 = 0;
const OR: u8 = 1;
const ADC: u8 = 2;
const AND: u8 = 4;
const SUB: u8 = 5;
const XOR: u8 = 6;
const CMP: u8 = 7;

/// The assembler: code bytes in two sections, labels and the branches still to patch.
///
/// The *hot* section is what runs every time, the *cold* one what runs rarely (exits for
/// faults, helper calls); the owner places them apart ([`Asm::link`]) so hot code lies dense.
/// Branches between them are patched when the places are known.
pub(crate) struct Asm {
    /// The hot and cold sections.
    bufs: [Vec<u8>; 2],
    /// The section written to now (0 hot, 1 cold).
    sec: usize,
    /// Section (2: an absolute address) and offset of each label, once placed.
    labels: Vec<Option<(u8, u64)>>,
    /// (section, offset of a rel32 field, its label).
    fixups: Vec<(u8, u32, Label)>,
    /// Labels placed in the hot section so far.
    hot_labels: usize,
}

impl Default for Asm {
    fn default() -> Self {
        Self::new()
    }
}

impl Asm {
    pub(crate) fn new() -> Self {
        Self {
            bufs: [Vec::with_capacity(4096), Vec::with_capacity(4096)],
            sec: 0,
            labels: Vec::with_capacity(64),
            hot_labels: 0,
            fixups: Vec::with_capacity(64),
        }
    }

    /// Write to the cold section from now on (`true`) or to the hot one.
    pub(crate) fn cold(&mut self, cold: bool) {
        self.sec = usize::from(cold);
    }

    pub(crate) fn create_label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() as u32 - 1)
    }

    /// Place `l` at the current end of the current section.
    pub(crate) fn set_label(&mut self, l: &mut Label) -> R<()> {
        let at = (self.sec as u8, u64::from(self.here()?));
        match self.labels.get_mut(l.0 as usize) {
            Some(slot @ None) => {
                *slot = Some(at);
                if self.sec == 0 {
                    self.hot_labels += 1;
                }
                Ok(())
            }
            _ => Err(AsmError::Rebound),
        }
    }

    /// A label at absolute address `addr` (code placed before, such as shared exits).
    pub(crate) fn label_at(&mut self, addr: usize) -> Label {
        self.labels.push(Some((2, addr as u64)));
        Label(self.labels.len() as u32 - 1)
    }

    /// Where `l` was placed in its section, if it was.
    pub(crate) fn label_offset(&self, l: Label) -> Option<usize> {
        self.labels
            .get(l.0 as usize)
            .copied()
            .flatten()
            .map(|(_, o)| o as usize)
    }

    /// Bytes in the hot (`cold` false) or cold section.
    /// Where the hot section stands: its length and the labels placed in it. Equal marks
    /// mean nothing was emitted, and no label placed (which other code could jump to), in
    /// between: a straight line.
    pub(crate) fn mark(&self) -> (usize, usize) {
        (self.bufs[0].len(), self.hot_labels)
    }

    pub(crate) fn len(&self, cold: bool) -> usize {
        self.bufs[usize::from(cold)].len()
    }

    /// The two sections, with every branch patched for the hot one at address `hot_at` and
    /// the cold one at `cold_at`.
    pub(crate) fn link(mut self, hot_at: usize, cold_at: usize) -> R<[Vec<u8>; 2]> {
        let base = [hot_at as i64, cold_at as i64, 0];
        for &(sec, at, l) in &self.fixups {
            let (to_sec, to) = self
                .labels
                .get(l.0 as usize)
                .copied()
                .flatten()
                .ok_or(AsmError::Unbound)?;
            let from = base[usize::from(sec)] + i64::from(at) + 4;
            let rel = base[usize::from(to_sec)] + to as i64 - from;
            let rel = i32::try_from(rel).map_err(|_| AsmError::TooLarge)?;
            let at = at as usize;
            self.bufs[usize::from(sec)]
                .get_mut(at..at + 4)
                .ok_or(AsmError::TooLarge)?
                .copy_from_slice(&rel.to_le_bytes());
        }
        Ok(self.bufs)
    }

    /// The code as one piece: the hot section, then the cold one (at the next 16 bytes).
    #[cfg(test)]
    pub(crate) fn finish(self) -> R<Vec<u8>> {
        let cold_at = self.len(false).next_multiple_of(16);
        let [mut hot, cold] = self.link(0, cold_at)?;
        if !cold.is_empty() {
            hot.resize(cold_at, 0xcc);
            hot.extend_from_slice(&cold);
        }
        Ok(hot)
    }

    fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.bufs[self.sec]
    }

    fn here(&self) -> R<u32> {
        u32::try_from(self.bufs[self.sec].len())
            .ok()
            .filter(|&n| n < 1 << 31)
            .ok_or(AsmError::TooLarge)
    }

    fn byte(&mut self, b: u8) {
        self.buf().push(b);
    }

    fn imm(&mut self, v: i64, bytes: u8) {
        self.buf()
            .extend_from_slice(&v.to_le_bytes()[..bytes as usize]);
    }

    /// Prefixes, REX, `opcode`, ModRM (with `reg` in its reg field), SIB and displacement
    /// for an operation of `size` bytes. `byte_regs`: a byte register is among the operands
    /// (SPL-DIL then need a REX prefix).
    fn op_rm(&mut self, size: u8, opcode: &[u8], reg: u8, rm: Rm, byte_regs: bool) -> R<()> {
        if size == 2 {
            self.byte(0x66);
        }
        let mut rex = 0x40u8;
        if size == 8 {
            rex |= 8;
        }
        // (`reg` is an opcode extension, not a register, for an immediate or one-operand
        // form: `REG_IS_EXT` marks those.)
        let (reg, ext) = (reg & !REG_IS_EXT, reg & REG_IS_EXT != 0);
        rex |= (reg >> 3 & 1) << 2;
        let mut force = byte_regs && !ext && (4..8).contains(&reg);
        match rm {
            Rm::Reg(r) => {
                rex |= r >> 3 & 1;
                force |= byte_regs && (4..8).contains(&r);
            }
            Rm::Mem(m) => {
                if m.index != NOREG {
                    rex |= (m.index >> 3 & 1) << 1;
                }
                rex |= m.base >> 3 & 1;
            }
        }
        if rex != 0x40 || force {
            self.byte(rex);
        }
        self.buf().extend_from_slice(opcode);
        let reg3 = (reg & 7) << 3;
        match rm {
            Rm::Reg(r) => {
                self.byte(0xc0 | reg3 | (r & 7));
                Ok(())
            }
            Rm::Mem(m) => self.mem(reg3, m),
        }
    }

    /// ModRM (reg field `reg3`, already shifted), SIB and displacement of `m`.
    fn mem(&mut self, reg3: u8, m: Mem) -> R<()> {
        let disp = i32::try_from(m.disp).map_err(|_| AsmError::Disp(m.disp))?;
        if m.base == NOREG || m.base > 15 || m.index == 4 || (m.index != NOREG && m.index > 15) {
            return Err(AsmError::Form("address"));
        }
        let base3 = m.base & 7;
        let (md, len) = if disp == 0 && base3 != 5 {
            (0u8, 0u8)
        } else if i8::try_from(disp).is_ok() {
            (1, 1)
        } else {
            (2, 4)
        };
        if m.index == NOREG && base3 != 4 {
            self.byte(md << 6 | reg3 | base3);
        } else {
            let (idx3, ss) = if m.index == NOREG {
                (4, 0)
            } else {
                let ss = match m.scale {
                    1 => 0,
                    2 => 1,
                    4 => 2,
                    8 => 3,
                    _ => return Err(AsmError::Form("scale")),
                };
                (m.index & 7, ss)
            };
            self.byte(md << 6 | reg3 | 4);
            self.byte(ss << 6 | idx3 << 3 | base3);
        }
        self.imm(i64::from(disp), len);
        Ok(())
    }

    /// An immediate of `size` bytes (at most 4, sign-extended for an 8-byte operation):
    /// whether `v` fits.
    fn fits(v: i64, size: u8) -> bool {
        match size {
            1 => (-0x80..0x100).contains(&v),
            2 => (-0x8000..0x1_0000).contains(&v),
            4 => (-0x8000_0000..0x1_0000_0000).contains(&v),
            _ => i32::try_from(v).is_ok(),
        }
    }

    /// The ALU operation `n` (ADD OR AND SUB XOR CMP).
    fn alu(&mut self, name: &'static str, n: u8, d: Opnd, s: Opnd) -> R<()> {
        match (d, s) {
            (Opnd::Reg(d, z), Opnd::Reg(s, zs)) if z == zs => {
                let op = n << 3 | u8::from(z != 1);
                self.op_rm(z, &[op], s, Rm::Reg(d), z == 1)
            }
            (Opnd::Reg(d, z), Opnd::Mem(p)) if z == p.size => {
                let op = n << 3 | 2 | u8::from(z != 1);
                self.op_rm(z, &[op], d, Rm::Mem(p.mem), z == 1)
            }
            (Opnd::Mem(p), Opnd::Reg(s, z)) if z == p.size => {
                let op = n << 3 | u8::from(z != 1);
                self.op_rm(z, &[op], s, Rm::Mem(p.mem), z == 1)
            }
            (Opnd::Reg(_, z) | Opnd::Mem(Ptr { size: z, .. }), Opnd::Imm(v)) => {
                let rm = rm_of(d).ok_or(AsmError::Form(name))?;
                if !Self::fits(v, z) {
                    return Err(AsmError::Imm(name, v));
                }
                if z == 1 {
                    self.op_rm(1, &[0x80], n | REG_IS_EXT, rm, true)?;
                    self.imm(v, 1);
                } else if i8::try_from(sext(v, z)).is_ok() {
                    self.op_rm(z, &[0x83], n, rm, false)?;
                    self.imm(v, 1);
                } else {
                    self.op_rm(z, &[0x81], n, rm, false)?;
                    self.imm(v, z.min(4));
                }
                Ok(())
            }
            _ => Err(AsmError::Form(name)),
        }
    }

    pub(crate) fn add(&mut self, d: impl Into<Opnd>, s: impl Into<Opnd>) -> R<()> {
        self.alu("add", ADD, d.into(), s.into())
    }
    pub(crate) fn adc(&mut self, d: impl Into<Opnd>, s: impl Into<Opnd>) -> R<()> {
        self.alu("adc", ADC, d.into(), s.into())
    }
    pub(crate) fn or(&mut self, d: impl Into<Opnd>, s: impl Into<Opnd>) -> R<()> {
        self.alu("or", OR, d.into(), s.into())
    }
    pub(crate) fn and(&mut self, d: impl Into<Opnd>, s: impl Into<Opnd>) -> R<()> {
        self.alu("and", AND, d.into(), s.into())
    }
    pub(crate) fn sub(&mut self, d: impl Into<Opnd>, s: impl Into<Opnd>) -> R<()> {
        self.alu("sub", SUB, d.into(), s.into())
    }
    pub(crate) fn xor(&mut self, d: impl Into<Opnd>, s: impl Into<Opnd>) -> R<()> {
        self.alu("xor", XOR, d.into(), s.into())
    }
    pub(crate) fn cmp(&mut self, d: impl Into<Opnd>, s: impl Into<Opnd>) -> R<()> {
        self.alu("cmp", CMP, d.into(), s.into())
    }

    pub(crate) fn test(&mut self, d: impl Into<Opnd>, s: impl Into<Opnd>) -> R<()> {
        let (d, s) = (d.into(), s.into());
        match (d, s) {
            (Opnd::Reg(_, z) | Opnd::Mem(Ptr { size: z, .. }), Opnd::Reg(s, zs)) if z == zs => {
                let rm = rm_of(d).ok_or(AsmError::Form("test"))?;
                self.op_rm(z, &[if z == 1 { 0x84 } else { 0x85 }], s, rm, z == 1)
            }
            (Opnd::Reg(_, z) | Opnd::Mem(Ptr { size: z, .. }), Opnd::Imm(v)) => {
                let rm = rm_of(d).ok_or(AsmError::Form("test"))?;
                if !Self::fits(v, z) {
                    return Err(AsmError::Imm("test", v));
                }
                self.op_rm(
                    z,
                    &[if z == 1 { 0xf6 } else { 0xf7 }],
                    REG_IS_EXT,
                    rm,
                    z == 1,
                )?;
                self.imm(v, z.min(4));
                Ok(())
            }
            _ => Err(AsmError::Form("test")),
        }
    }

    pub(crate) fn mov(&mut self, d: impl Into<Opnd>, s: impl Into<Opnd>) -> R<()> {
        let (d, s) = (d.into(), s.into());
        match (d, s) {
            (Opnd::Reg(_, z) | Opnd::Mem(Ptr { size: z, .. }), Opnd::Reg(s, zs)) if z == zs => {
                let rm = rm_of(d).ok_or(AsmError::Form("mov"))?;
                self.op_rm(z, &[if z == 1 { 0x88 } else { 0x89 }], s, rm, z == 1)
            }
            (Opnd::Reg(d, z), Opnd::Mem(p)) if z == p.size => self.op_rm(
                z,
                &[if z == 1 { 0x8a } else { 0x8b }],
                d,
                Rm::Mem(p.mem),
                z == 1,
            ),
            (Opnd::Reg(r, 8), Opnd::Imm(v)) => {
                if u32::try_from(v).is_ok() {
                    // MOV r32, imm32 zero-extends.
                    self.mov_imm_plus_r(r, 4, v)
                } else if i32::try_from(v).is_ok() {
                    self.op_rm(8, &[0xc7], 0, Rm::Reg(r), false)?;
                    self.imm(v, 4);
                    Ok(())
                } else {
                    self.mov_imm_plus_r(r, 8, v)
                }
            }
            (Opnd::Reg(r, z), Opnd::Imm(v)) => {
                if !Self::fits(v, z) {
                    return Err(AsmError::Imm("mov", v));
                }
                self.mov_imm_plus_r(r, z, v)
            }
            (Opnd::Mem(p), Opnd::Imm(v)) => {
                if !Self::fits(v, p.size) {
                    return Err(AsmError::Imm("mov", v));
                }
                let op = if p.size == 1 { 0xc6 } else { 0xc7 };
                self.op_rm(p.size, &[op], REG_IS_EXT, Rm::Mem(p.mem), false)?;
                self.imm(v, p.size.min(4));
                Ok(())
            }
            _ => Err(AsmError::Form("mov")),
        }
    }

    /// MOV r, imm with the register in the opcode (B0+r, B8+r): `size` 8 takes a full
    /// 64-bit immediate.
    fn mov_imm_plus_r(&mut self, r: u8, size: u8, v: i64) -> R<()> {
        if r > 15 {
            return Err(AsmError::Form("mov"));
        }
        if size == 2 {
            self.byte(0x66);
        }
        let mut rex = 0x40 | (r >> 3);
        if size == 8 {
            rex |= 8;
        }
        if rex != 0x40 || (size == 1 && (4..8).contains(&r)) {
            self.byte(rex);
        }
        self.byte(if size == 1 { 0xb0 } else { 0xb8 } | (r & 7));
        self.imm(v, size);
        Ok(())
    }

    /// MOVZX (`signed` false) or MOVSX from a byte or word source.
    fn extend(&mut self, name: &'static str, signed: bool, d: Opnd, s: Opnd) -> R<()> {
        let Opnd::Reg(d, z) = d else {
            return Err(AsmError::Form(name));
        };
        let (rm, zs) = match s {
            Opnd::Reg(r, zs) => (Rm::Reg(r), zs),
            Opnd::Mem(p) => (Rm::Mem(p.mem), p.size),
            Opnd::Imm(_) => return Err(AsmError::Form(name)),
        };
        if zs >= z || !matches!(zs, 1 | 2) {
            return Err(AsmError::Form(name));
        }
        let op = match (signed, zs) {
            (false, 1) => 0xb6,
            (false, _) => 0xb7,
            (true, 1) => 0xbe,
            (true, _) => 0xbf,
        };
        self.op_rm(z, &[0x0f, op], d, rm, zs == 1)
    }

    pub(crate) fn movzx(&mut self, d: impl Into<Opnd>, s: impl Into<Opnd>) -> R<()> {
        self.extend("movzx", false, d.into(), s.into())
    }
    pub(crate) fn movsx(&mut self, d: impl Into<Opnd>, s: impl Into<Opnd>) -> R<()> {
        self.extend("movsx", true, d.into(), s.into())
    }

    pub(crate) fn movsxd(&mut self, d: Reg64, s: impl Into<Opnd>) -> R<()> {
        let rm = match s.into() {
            Opnd::Reg(r, 4) => Rm::Reg(r),
            Opnd::Mem(p) if p.size == 4 => Rm::Mem(p.mem),
            _ => return Err(AsmError::Form("movsxd")),
        };
        self.op_rm(8, &[0x63], d.0, rm, false)
    }

    /// PREFETCHT0 m: a hint to fetch the line of `s` into every cache level.
    pub(crate) fn prefetcht0(&mut self, s: Ptr) -> R<()> {
        self.op_rm(4, &[0x0f, 0x18], 1 | REG_IS_EXT, Rm::Mem(s.mem), false)
    }

    pub(crate) fn lea(&mut self, d: Reg64, s: Ptr) -> R<()> {
        self.op_rm(8, &[0x8d], d.0, Rm::Mem(s.mem), false)
    }

    /// A one-operand instruction of group F6/F7 or FE/FF: `/n`.
    fn unary(&mut self, name: &'static str, ops: [u8; 2], n: u8, d: Opnd) -> R<()> {
        let z = match d {
            Opnd::Reg(_, z) | Opnd::Mem(Ptr { size: z, .. }) => z,
            Opnd::Imm(_) => return Err(AsmError::Form(name)),
        };
        let rm = rm_of(d).ok_or(AsmError::Form(name))?;
        self.op_rm(z, &[ops[usize::from(z != 1)]], n | REG_IS_EXT, rm, z == 1)
    }

    pub(crate) fn inc(&mut self, d: impl Into<Opnd>) -> R<()> {
        self.unary("inc", [0xfe, 0xff], 0, d.into())
    }
    pub(crate) fn not(&mut self, d: impl Into<Opnd>) -> R<()> {
        self.unary("not", [0xf6, 0xf7], 2, d.into())
    }

    /// A shift of group C0/C1 by an immediate count: `/n`.
    fn shift(&mut self, name: &'static str, n: u8, d: Opnd, c: Opnd) -> R<()> {
        let Opnd::Imm(c) = c else {
            return Err(AsmError::Form(name));
        };
        let c = u8::try_from(c).map_err(|_| AsmError::Imm(name, c))?;
        self.unary(name, [0xc0, 0xc1], n, d)?;
        self.byte(c);
        Ok(())
    }

    pub(crate) fn shl(&mut self, d: impl Into<Opnd>, c: impl Into<Opnd>) -> R<()> {
        self.shift("shl", 4, d.into(), c.into())
    }
    pub(crate) fn shr(&mut self, d: impl Into<Opnd>, c: impl Into<Opnd>) -> R<()> {
        self.shift("shr", 5, d.into(), c.into())
    }
    pub(crate) fn sar(&mut self, d: impl Into<Opnd>, c: impl Into<Opnd>) -> R<()> {
        self.shift("sar", 7, d.into(), c.into())
    }

    /// IMUL r64, r/m64.
    pub(crate) fn imul_2(&mut self, d: Reg64, s: Reg64) -> R<()> {
        self.op_rm(8, &[0x0f, 0xaf], d.0, Rm::Reg(s.0), false)
    }

    /// LOCK CMPXCHG m, r (the accumulator is RAX at the operand's size).
    pub(crate) fn lock_cmpxchg(&mut self, d: Ptr, s: impl Into<Opnd>) -> R<()> {
        let Opnd::Reg(r, z) = s.into() else {
            return Err(AsmError::Form("cmpxchg"));
        };
        if z != d.size {
            return Err(AsmError::Form("cmpxchg"));
        }
        self.byte(0xf0);
        let op = if z == 1 { 0xb0 } else { 0xb1 };
        self.op_rm(z, &[0x0f, op], r, Rm::Mem(d.mem), z == 1)
    }

    /// CMOVNE r64, r64.
    pub(crate) fn cmovne(&mut self, d: Reg64, s: Reg64) -> R<()> {
        self.op_rm(8, &[0x0f, 0x45], d.0, Rm::Reg(s.0), false)
    }

    /// SETcc AL: AL = 1 if condition `cc` (0-15, the Jcc numbering) holds, else 0.
    pub(crate) fn setcc_al(&mut self, cc: u8) -> R<()> {
        self.byte(0x0f);
        self.byte(0x90 | (cc & 15));
        self.byte(0xc0);
        Ok(())
    }

    /// PUSH or POP (`base` 0x50 or 0x58) of a 64-bit register.
    fn push_pop(&mut self, base: u8, r: Reg64) -> R<()> {
        if r.0 >= 8 {
            self.byte(0x41);
        }
        self.byte(base | (r.0 & 7));
        Ok(())
    }
    pub(crate) fn push(&mut self, r: Reg64) -> R<()> {
        self.push_pop(0x50, r)
    }
    pub(crate) fn pop(&mut self, r: Reg64) -> R<()> {
        self.push_pop(0x58, r)
    }

    pub(crate) fn pushfq(&mut self) -> R<()> {
        self.byte(0x9c);
        Ok(())
    }
    pub(crate) fn ret(&mut self) -> R<()> {
        self.byte(0xc3);
        Ok(())
    }

    /// JMP r64.
    pub(crate) fn jmp_reg(&mut self, r: Reg64) -> R<()> {
        self.op_rm(4, &[0xff], 4, Rm::Reg(r.0), false)
    }

    /// CALL to a label.
    pub(crate) fn call_label(&mut self, l: Label) -> R<()> {
        self.byte(0xe8);
        self.rel32(l)
    }

    /// CALL r64.
    pub(crate) fn call(&mut self, r: Reg64) -> R<()> {
        self.op_rm(4, &[0xff], 2, Rm::Reg(r.0), false)
    }

    /// A rel32 field to `l`, patched by [`Asm::link`].
    fn rel32(&mut self, l: Label) -> R<()> {
        let at = self.here()?;
        self.fixups.push((self.sec as u8, at, l));
        self.imm(0, 4);
        Ok(())
    }

    /// JMP to a label, or through a 64-bit pointer in memory.
    pub(crate) fn jmp(&mut self, t: impl Into<Target>) -> R<()> {
        match t.into() {
            Target::Label(l) => {
                self.byte(0xe9);
                self.rel32(l)
            }
            Target::Mem(p) if p.size == 8 => self.op_rm(4, &[0xff], 4, Rm::Mem(p.mem), false),
            Target::Mem(_) => Err(AsmError::Form("jmp")),
        }
    }

    /// CMP of a dword in memory with a 32-bit immediate, always in the 81 /7 form: the
    /// immediate is the instruction's last four bytes, a field patched later.
    pub(crate) fn cmp_imm32(&mut self, d: Ptr, v: u32) -> R<()> {
        if d.size != 4 {
            return Err(AsmError::Form("cmp"));
        }
        self.op_rm(4, &[0x81], CMP, Rm::Mem(d.mem), false)?;
        self.imm(i64::from(v), 4);
        Ok(())
    }

    /// Jcc with condition code `cc` (0 = O … 15 = G, the low nibble of 0F 8x).
    pub(crate) fn jcc(&mut self, cc: u8, l: Label) -> R<()> {
        self.byte(0x0f);
        self.byte(0x80 | (cc & 15));
        self.rel32(l)
    }

    pub(crate) fn je(&mut self, l: Label) -> R<()> {
        self.jcc(4, l)
    }
    pub(crate) fn jne(&mut self, l: Label) -> R<()> {
        self.jcc(5, l)
    }
}

/// The ModRM operand of a register or memory operand.
fn rm_of(o: Opnd) -> Option<Rm> {
    match o {
        Opnd::Reg(r, _) if r <= 15 => Some(Rm::Reg(r)),
        Opnd::Mem(p) => Some(Rm::Mem(p.mem)),
        _ => None,
    }
}

/// `v` as the operation of `size` bytes sees it, sign-extended (a `u32` 0xffff_ffff is -1 to
/// a 32-bit operation).
fn sext(v: i64, size: u8) -> i64 {
    match size {
        1 => i64::from(v as i8),
        2 => i64::from(v as i16),
        4 => i64::from(v as i32),
        _ => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::code_asm as ic;
    use iced_x86::{Decoder, DecoderOptions, Instruction, OpKind};

    fn decode(bytes: &[u8]) -> Vec<Instruction> {
        let mut d = Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE);
        let mut v = Vec::new();
        while d.can_decode() {
            let i = d.decode();
            assert!(!i.is_invalid(), "invalid encoding in {bytes:02x?}");
            v.push(i);
        }
        v
    }

    /// What an instruction does, independent of which of its encodings was chosen: the
    /// mnemonic and every operand, immediates as the value the operation sees.
    fn meaning(i: &Instruction) -> String {
        let mut s = format!("{:?}", i.mnemonic());
        for k in 0..i.op_count() {
            let part = match i.op_kind(k) {
                OpKind::Register => format!("{:?}", i.op_register(k)),
                OpKind::Memory => format!(
                    "[{:?}+{:?}*{}+{:#x}]{:?}",
                    i.memory_base(),
                    i.memory_index(),
                    i.memory_index_scale(),
                    i.memory_displacement64(),
                    i.memory_size()
                ),
                OpKind::NearBranch64 => format!("->{:#x}", i.near_branch64()),
                _ => format!("#{:#x}", i.immediate(k)),
            };
            s.push(' ');
            s.push_str(&part);
        }
        s
    }

    macro_rules! same {
        ($($op:ident($($a:expr),*) / $($b:expr),*;)*) => {{
            $(
                let mut mine = Asm::new();
                mine.$op($($a),*).unwrap();
                let code = mine.finish().unwrap();
                let mut theirs = ic::CodeAssembler::new(64).unwrap();
                theirs.$op($($b),*).unwrap();
                let want = theirs.assemble(0).unwrap();
                let (a, b) = (decode(&code), decode(&want));
                assert_eq!(a.len(), 1, "{}: {code:02x?}", stringify!($op($($a),*)));
                assert_eq!(
                    meaning(&a[0]),
                    meaning(&b[0]),
                    "{}: {code:02x?} against {want:02x?}",
                    stringify!($op($($a),*))
                );
            )*
        }};
    }

    #[test]
    fn register_and_memory_forms_match_iced() {
        same! {
            mov(rax, rcx) / ic::rax, ic::rcx;
            mov(r15, rdx) / ic::r15, ic::rdx;
            mov(r8d, eax) / ic::r8d, ic::eax;
            mov(qword_ptr(rbx + 0x10), r14) / ic::qword_ptr(ic::rbx + 0x10), ic::r14;
            mov(qword_ptr(r12 + 0x1234), rax) / ic::qword_ptr(ic::r12 + 0x1234), ic::rax;
            mov(rax, qword_ptr(r13)) / ic::rax, ic::qword_ptr(ic::r13);
            mov(rax, qword_ptr(rbp)) / ic::rax, ic::qword_ptr(ic::rbp);
            mov(rax, qword_ptr(rsp + 8)) / ic::rax, ic::qword_ptr(ic::rsp + 8);
            mov(rax, qword_ptr(r12)) / ic::rax, ic::qword_ptr(ic::r12);
            mov(byte_ptr(rax), r8b) / ic::byte_ptr(ic::rax), ic::r8b;
            mov(byte_ptr(rbx + 0x200), al) / ic::byte_ptr(ic::rbx + 0x200), ic::al;
            mov(word_ptr(rax), r8w) / ic::word_ptr(ic::rax), ic::r8w;
            mov(dword_ptr(rax), r8d) / ic::dword_ptr(ic::rax), ic::r8d;
            mov(sil, byte_ptr(rdx)) / ic::sil, ic::byte_ptr(ic::rdx);
            mov(byte_ptr(rbx + 5), 7u32) / ic::byte_ptr(ic::rbx + 5), 7u32;
            mov(qword_ptr(rbx + 5), -3) / ic::qword_ptr(ic::rbx + 5), -3;
            mov(ecx, 0x1234u32) / ic::ecx, 0x1234u32;
            mov(r9d, 0xffff_fff0u32) / ic::r9d, 0xffff_fff0u32;
            mov(rdx, 0x9e37_79b9_7f4a_7c15u64) / ic::rdx, 0x9e37_79b9_7f4a_7c15u64;
            mov(r11, 0xffff_ffff_ffff_fff0u64) / ic::r11, -16i64;
            add(rdx, qword_ptr(rbx + 0x80)) / ic::rdx, ic::qword_ptr(ic::rbx + 0x80);
            add(rcx, rbp) / ic::rcx, ic::rbp;
            add(qword_ptr(rbx + 0x20), 8) / ic::qword_ptr(ic::rbx + 0x20), 8;
            add(r14, 0x1000) / ic::r14, 0x1000;
            add(al, byte_ptr(rbx + 1)) / ic::al, ic::byte_ptr(ic::rbx + 1);
            add(ax, word_ptr(rbx + 2)) / ic::ax, ic::word_ptr(ic::rbx + 2);
            sub(rdx, 8) / ic::rdx, 8;
            adc(eax, 0) / ic::eax, 0;
            and(ecx, 0x3ffu32) / ic::ecx, 0x3ffu32;
            and(rdx, -0x8d6) / ic::rdx, -0x8d6;
            and(edx, 1) / ic::edx, 1;
            or(eax, r8d) / ic::eax, ic::r8d;
            xor(r8d, r8d) / ic::r8d, ic::r8d;
            xor(eax, eax) / ic::eax, ic::eax;
            cmp(eax, 0xfffu32) / ic::eax, 0xfffu32;
            cmp(r11w, word_ptr(r10 + r9 * 2)) / ic::r11w, ic::word_ptr(ic::r10 + ic::r9 * 2);
            cmp(byte_ptr(rbx + 0x1d52), 0) / ic::byte_ptr(ic::rbx + 0x1d52), 0;
            cmp(rax, qword_ptr(rcx + 8)) / ic::rax, ic::qword_ptr(ic::rcx + 8);
            cmp(cl, dl) / ic::cl, ic::dl;
            test(eax, eax) / ic::eax, ic::eax;
            test(cl, cl) / ic::cl, ic::cl;
            test(cx, cx) / ic::cx, ic::cx;
            test(rcx, rcx) / ic::rcx, ic::rcx;
            test(r14d, r14d) / ic::r14d, ic::r14d;
            movzx(eax, byte_ptr(rax)) / ic::eax, ic::byte_ptr(ic::rax);
            movzx(r14d, word_ptr(rbx + 0x30)) / ic::r14d, ic::word_ptr(ic::rbx + 0x30);
            movzx(r11d, word_ptr(rbx + 0x3000)) / ic::r11d, ic::word_ptr(ic::rbx + 0x3000);
            movzx(ecx, cl) / ic::ecx, ic::cl;
            movzx(eax, ax) / ic::eax, ic::ax;
            movsx(rax, al) / ic::rax, ic::al;
            movsx(r8, r8w) / ic::r8, ic::r8w;
            movsx(r8, r8b) / ic::r8, ic::r8b;
            movsxd(r8, r8d) / ic::r8, ic::r8d;
            movsxd(rax, eax) / ic::rax, ic::eax;
            lea(rdx, qword_ptr(r13 + 0x600)) / ic::rdx, ic::qword_ptr(ic::r13 + 0x600);
            inc(rax) / ic::rax;
            lea(rdx, qword_ptr(Mem::from(r13).plus(-0x48))) / ic::rdx, ic::qword_ptr(ic::r13 - 0x48);
            lea(rdx, qword_ptr(rdx + rax * 8)) / ic::rdx, ic::qword_ptr(ic::rdx + ic::rax * 8);
            lea(rdx, qword_ptr(rdx + rax * 1)) / ic::rdx, ic::qword_ptr(ic::rdx + ic::rax);
            add(rdx, -0x48) / ic::rdx, -0x48;
            prefetcht0(byte_ptr(rax)) / ic::byte_ptr(ic::rax);
            movzx(eax, byte_ptr(rax + rdx * 1)) / ic::eax, ic::byte_ptr(ic::rax + ic::rdx);
            mov(rax, qword_ptr(rax + rdx * 1)) / ic::rax, ic::qword_ptr(ic::rax + ic::rdx);
            mov(word_ptr(rax + rdx * 1), r8w) / ic::word_ptr(ic::rax + ic::rdx), ic::r8w;
            mov(byte_ptr(rax + rdx * 1), r8b) / ic::byte_ptr(ic::rax + ic::rdx), ic::r8b;
            prefetcht0(byte_ptr(r9 + 0x10)) / ic::byte_ptr(ic::r9 + 0x10);
            inc(qword_ptr(r12 + 0x40)) / ic::qword_ptr(ic::r12 + 0x40);
            not(rax) / ic::rax;
            shl(rcx, 12u32) / ic::rcx, 12u32;
            shr(rax, 12) / ic::rax, 12;
            shl(ecx, 5) / ic::ecx, 5;
            shl(r8d, 11) / ic::r8d, 11;
            sar(rdx, 63u32) / ic::rdx, 63u32;
            shr(r8, 1u32) / ic::r8, 1u32;
            imul_2(rcx, rdx) / ic::rcx, ic::rdx;
            cmovne(rax, rbp) / ic::rax, ic::rbp;
            push(rbx) / ic::rbx;
            push(r15) / ic::r15;
            pop(r12) / ic::r12;
            pop(rax) / ic::rax;
            call(rax) / ic::rax;
            jmp(qword_ptr(rax + 0x18)) / ic::qword_ptr(ic::rax + 0x18);
            jmp(qword_ptr(r9 + 0x18)) / ic::qword_ptr(ic::r9 + 0x18);
        }
        // No REX where nothing needs one (an opcode extension is not a register).
        let mut a = Asm::new();
        a.cmp(byte_ptr(rbx + 0x40), 0).unwrap();
        a.mov(byte_ptr(rbx + 0x40), 5u32).unwrap();
        a.shl(cl, 1).unwrap();
        a.test(byte_ptr(rbx), 1).unwrap();
        assert_eq!(
            a.finish().unwrap(),
            [0x80, 0x7b, 0x40, 0x00, 0xc6, 0x43, 0x40, 0x05, 0xc0, 0xe1, 0x01, 0xf6, 0x03, 0x01]
        );
        let mut a = Asm::new();
        a.jmp_reg(rcx).unwrap();
        a.jmp_reg(r9).unwrap();
        let i = decode(&a.finish().unwrap());
        assert_eq!(
            (meaning(&i[0]), meaning(&i[1])),
            ("Jmp RCX".into(), "Jmp R9".into())
        );
        let mut a = Asm::new();
        a.pushfq().unwrap();
        a.ret().unwrap();
        assert_eq!(a.finish().unwrap(), [0x9c, 0xc3]);
    }

    #[test]
    fn lock_cmpxchg_matches_iced() {
        for (mine, theirs) in [
            (qword_ptr(r8), ic::qword_ptr(ic::r8)),
            (qword_ptr(rax + 0x10), ic::qword_ptr(ic::rax + 0x10)),
        ] {
            let mut a = Asm::new();
            a.lock_cmpxchg(mine, r9).unwrap();
            let mut b = ic::CodeAssembler::new(64).unwrap();
            b.lock().cmpxchg(theirs, ic::r9).unwrap();
            let (x, y) = (a.finish().unwrap(), b.assemble(0).unwrap());
            assert!(decode(&x)[0].has_lock_prefix());
            assert_eq!(meaning(&decode(&x)[0]), meaning(&decode(&y)[0]));
        }
        let mut a = Asm::new();
        a.lock_cmpxchg(dword_ptr(r8), ecx).unwrap();
        a.lock_cmpxchg(word_ptr(r8), cx).unwrap();
        a.lock_cmpxchg(byte_ptr(r8), sil).unwrap();
        let i = decode(&a.finish().unwrap());
        assert_eq!(meaning(&i[0]), "Cmpxchg [R8+None*1+0x0]UInt32 ECX");
        assert_eq!(meaning(&i[1]), "Cmpxchg [R8+None*1+0x0]UInt16 CX");
        assert_eq!(meaning(&i[2]), "Cmpxchg [R8+None*1+0x0]UInt8 SIL");
        assert!(i.iter().all(|i| i.has_lock_prefix()));
        assert_eq!(a_err(), Err(AsmError::Form("cmpxchg")));
        fn a_err() -> R<()> {
            Asm::new().lock_cmpxchg(qword_ptr(rax), ecx)
        }
    }

    #[test]
    fn setcc_al_is_every_condition_into_al() {
        for cc in 0..16u8 {
            let mut a = Asm::new();
            a.setcc_al(cc).unwrap();
            let x = a.finish().unwrap();
            assert_eq!(x.len(), 3);
            let i = decode(&x)[0];
            assert!(format!("{:?}", i.mnemonic()).starts_with("Set"));
            assert_eq!(i.op0_register(), iced_x86::Register::AL);
            // The condition of the short Jcc with the same number.
            let j = decode(&[0x70 | cc, 0])[0];
            assert_eq!(i.condition_code(), j.condition_code(), "cc {cc}");
        }
    }

    #[test]
    fn a_patchable_compare_keeps_its_imm32_last_whatever_the_value() {
        for v in [0u32, 5, 0x7fff_ffff, u32::MAX] {
            let mut a = Asm::new();
            a.cmp_imm32(dword_ptr(r12 + 0x40), v).unwrap();
            let x = a.finish().unwrap();
            assert_eq!(x.len(), 9, "{x:02x?}");
            assert_eq!(x[5..], v.to_le_bytes());
            let i = decode(&x)[0];
            assert_eq!(i.immediate32(), v);
            assert_eq!(
                meaning(&i),
                format!("Cmp [R12+None*1+0x40]UInt32 #{v:#x}"),
                "{x:02x?}"
            );
        }
        assert!(Asm::new().cmp_imm32(qword_ptr(r12), 1).is_err());
    }

    #[test]
    fn small_64_bit_immediates_take_the_short_forms_with_the_same_value() {
        let mut a = Asm::new();
        a.mov(rax, 5u64).unwrap();
        a.mov(r12, 0xffff_ffffu64).unwrap();
        a.mov(rcx, -2).unwrap();
        let i = decode(&a.finish().unwrap());
        assert_eq!(meaning(&i[0]), "Mov EAX #0x5");
        assert_eq!(meaning(&i[1]), "Mov R12D #0xffffffff");
        assert_eq!(meaning(&i[2]), "Mov RCX #0xfffffffffffffffe");
    }

    #[test]
    fn branches_reach_their_labels_forward_and_back() {
        let mut a = Asm::new();
        let mut back = a.create_label();
        let mut fwd = a.create_label();
        a.set_label(&mut back).unwrap();
        a.pushfq().unwrap();
        a.jne(fwd).unwrap();
        a.jmp(back).unwrap();
        for cc in 0..16 {
            a.jcc(cc, fwd).unwrap();
        }
        a.set_label(&mut fwd).unwrap();
        a.ret().unwrap();
        assert_eq!(a.label_offset(fwd), Some(1 + 6 + 5 + 16 * 6));
        let i = decode(&a.finish().unwrap());
        let end = (1 + 6 + 5 + 16 * 6) as u64;
        assert_eq!(meaning(&i[1]), format!("Jne ->{end:#x}"));
        assert_eq!(meaning(&i[2]), "Jmp ->0x0");
        let cc: Vec<_> = i[3..19]
            .iter()
            .map(|i| format!("{:?}", i.mnemonic()))
            .collect();
        assert_eq!(
            cc.join(" "),
            "Jo Jno Jb Jae Je Jne Jbe Ja Js Jns Jp Jnp Jl Jge Jle Jg"
        );
        assert!(i[3..19].iter().all(|i| i.near_branch64() == end));
    }

    #[test]
    fn branches_between_the_sections_reach_their_labels_wherever_they_are_placed() {
        let mut a = Asm::new();
        let mut hot = a.create_label();
        let mut cold = a.create_label();
        a.set_label(&mut hot).unwrap();
        a.jne(cold).unwrap();
        a.ret().unwrap();
        a.cold(true);
        a.pushfq().unwrap();
        a.set_label(&mut cold).unwrap();
        a.jmp(hot).unwrap();
        assert_eq!((a.len(false), a.len(true)), (7, 6));
        let [h, c] = a.link(0x1000, 0x9000).unwrap();
        let d = |b: &[u8], ip: u64| {
            let mut d = Decoder::with_ip(64, b, ip, DecoderOptions::NONE);
            let mut v = Vec::new();
            while d.can_decode() {
                v.push(d.decode());
            }
            v
        };
        assert_eq!(d(&h, 0x1000)[0].near_branch64(), 0x9001);
        assert_eq!(d(&c, 0x9000)[1].near_branch64(), 0x1000);
    }

    #[test]
    fn operands_it_cannot_encode_are_errors() {
        let mut a = Asm::new();
        assert_eq!(a.mov(rax, ecx), Err(AsmError::Form("mov")));
        assert_eq!(
            a.add(rax, 0x8000_0000u32),
            Err(AsmError::Imm("add", 0x8000_0000))
        );
        assert_eq!(a.mov(al, 0x100u32), Err(AsmError::Imm("mov", 0x100)));
        assert_eq!(
            a.mov(byte_ptr(rax), byte_ptr(rcx)),
            Err(AsmError::Form("mov"))
        );
        assert_eq!(
            a.mov(rax, qword_ptr(rcx + (1usize << 31))),
            Err(AsmError::Disp(1 << 31))
        );
        assert_eq!(
            a.mov(rax, qword_ptr(rcx + rsp * 2)),
            Err(AsmError::Form("address"))
        );
        assert_eq!(a.shl(rax, 256), Err(AsmError::Imm("shl", 256)));
        assert_eq!(a.movzx(al, cl), Err(AsmError::Form("movzx")));
        let mut l = a.create_label();
        a.set_label(&mut l).unwrap();
        assert_eq!(a.set_label(&mut l), Err(AsmError::Rebound));
        let never = a.create_label();
        a.jmp(never).unwrap();
        assert_eq!(a.finish(), Err(AsmError::Unbound));
    }
}
