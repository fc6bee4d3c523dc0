//! Pre-decoded forms of the most executed 64-bit instructions.
//!
//! When a block is decoded (`block_cache`), each instruction is also lowered, if it can be, to a
//! compact [`Fast`] form: operands resolved once into register indices, pre-masked immediates
//! and ready-made address recipes. The run loop executes those forms directly (`exec`), without
//! asking iced's `Instruction` about operand kinds, registers and sizes on every execution; what
//! cannot be lowered runs on the generic path (`crate::exec`), unchanged.
//!
//! A lowered form has exactly the architectural effect of the generic path, faults included
//! (same checks in the same order, nothing committed before the last check): MOV, MOVZX/MOVSX/
//! MOVSXD, LEA, the two-operand ALU (ADD ADC SUB SBB CMP AND OR XOR TEST), INC DEC NEG NOT,
//! Jcc/JMP/CALL with relative targets, RET, PUSH/POP of 64-bit registers, SETcc, CMOVcc and the
//! hint instructions without effect. Everything else, and every form with a `lock` prefix, a
//! segment or control register, 32-bit addressing or a VEX/EVEX encoding, is `Fast::Generic`.
//! The differential tests against the host CPU and the unit tests run through both paths
//! (`Cpu::fast_ops` switches lowering off).

mod exec;
#[cfg(test)]
mod tests;

use iced_x86::{Code, EncodingKind, Instruction, Mnemonic as M, OpKind, Register};

use crate::exec::mov::cc;
use crate::exec::{is_locked, op_size};
use crate::flags::size_mask;

/// No register (base or index of an [`Addr`]).
pub(crate) const NONE: u8 = 0xff;

/// A general-purpose register operand: 0-15 for the register's low bytes at its width, 16-19
/// for AH, CH, DH, BH (bits 8-15 of RAX, RCX, RDX, RBX).
pub(crate) type Gpr = u8;

/// A 64-bit effective address: `disp + base + (index << shift) + segment base`. A RIP-relative
/// operand has its target already in `disp` (iced folds it in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Addr {
    pub(crate) disp: u64,
    pub(crate) base: u8,
    pub(crate) index: u8,
    pub(crate) shift: u8,
    /// 0: none (flat), 1: FS, 2: GS.
    pub(crate) seg: u8,
    /// A non-canonical address raises #SS rather than #GP (the segment is SS).
    pub(crate) stack: bool,
}

/// A source operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Src {
    Reg(Gpr),
    /// Already masked to the operand size.
    Imm(u64),
    Mem(Addr),
}

/// A destination operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dst {
    Reg(Gpr),
    Mem(Addr),
}

/// The two-operand ALU operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AluOp {
    Add,
    Adc,
    Sub,
    Sbb,
    Cmp,
    And,
    Or,
    Xor,
    Test,
}

/// The one-operand ALU operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnOp {
    Inc,
    Dec,
    Neg,
    Not,
}

/// A lowered instruction (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fast {
    /// Run on the generic path.
    Generic,
    /// No architectural effect (NOP, PAUSE, the fences, ENDBR64).
    Nop,
    Mov {
        size: u8,
        dst: Dst,
        src: Src,
    },
    /// MOVZX, MOVSX, MOVSXD.
    Extend {
        dsize: u8,
        ssize: u8,
        signed: bool,
        dst: Gpr,
        src: Src,
    },
    Lea {
        size: u8,
        dst: Gpr,
        addr: Addr,
    },
    Alu {
        op: AluOp,
        size: u8,
        dst: Dst,
        src: Src,
    },
    Unary {
        op: UnOp,
        size: u8,
        dst: Dst,
    },
    Jcc {
        cc: u8,
        target: u64,
    },
    Jmp {
        target: u64,
    },
    Call {
        target: u64,
    },
    /// JMP and CALL through a 64-bit register or memory operand.
    JmpInd {
        src: Src,
    },
    CallInd {
        src: Src,
    },
    Ret,
    Push {
        src: Gpr,
    },
    Pop {
        dst: Gpr,
    },
    Setcc {
        cc: u8,
        dst: Dst,
    },
    /// SHL/SAL, SHR, SAR, ROL, ROR, RCL, RCR by 1, an immediate or CL.
    Shift {
        op: M,
        size: u8,
        dst: Dst,
        count: Src,
    },
    /// The two- and three-operand IMUL: `dst = a * b`.
    Imul {
        size: u8,
        dst: Gpr,
        a: Src,
        b: Src,
    },
    Cmov {
        cc: u8,
        size: u8,
        dst: Gpr,
        src: Src,
    },
}

/// The [`Gpr`] of a general-purpose register, or `None` for any other register.
pub(crate) fn gpr(r: Register) -> Option<Gpr> {
    match crate::cpu::gpr_slot(r)? {
        (i, crate::cpu::Width::High8) => Some(16 + i as u8),
        (i, _) => Some(i as u8),
    }
}

/// The address recipe of memory operand `op`, for the forms the generic path computes with
/// `Cpu::la64` (64-bit addressing, legacy encoding); `None` for the rest.
pub(crate) fn addr(i: &Instruction, op: u32, segment: bool) -> Option<Addr> {
    if i.op_kind(op) != OpKind::Memory || i.encoding() != EncodingKind::Legacy {
        return None;
    }
    let (base, index) = (i.memory_base(), i.memory_index());
    let b = if base.is_gpr64() {
        base.number() as u8
    } else if base == Register::None {
        if index == Register::None && i.memory_displ_size() != 8 {
            return None;
        }
        NONE
    } else if base == Register::RIP {
        NONE
    } else {
        return None;
    };
    let x = if index == Register::None {
        NONE
    } else if index.is_gpr64() {
        index.number() as u8
    } else {
        return None;
    };
    let seg_reg = i.memory_segment();
    let seg = match seg_reg {
        _ if !segment => 0,
        Register::FS => 1,
        Register::GS => 2,
        _ => 0,
    };
    Some(Addr {
        disp: i.memory_displacement64(),
        base: b,
        index: x,
        shift: i.memory_index_scale().trailing_zeros() as u8,
        seg,
        stack: seg_reg == Register::SS,
    })
}

/// Source operand `op`: a GPR, an immediate (masked to `size`) or a memory operand.
fn src(i: &Instruction, op: u32, size: u8) -> Option<Src> {
    match i.op_kind(op) {
        OpKind::Register => gpr(i.op_register(op)).map(Src::Reg),
        OpKind::Memory => addr(i, op, true).map(Src::Mem),
        k if crate::exec::is_immediate(k) => Some(Src::Imm(i.immediate(op) & size_mask(size))),
        _ => None,
    }
}

/// Destination operand `op`: a GPR or a memory operand.
fn dst(i: &Instruction, op: u32) -> Option<Dst> {
    match i.op_kind(op) {
        OpKind::Register => gpr(i.op_register(op)).map(Dst::Reg),
        OpKind::Memory => addr(i, op, true).map(Dst::Mem),
        _ => None,
    }
}

/// Lower `i` (decoded as 64-bit code) to its fast form, or [`Fast::Generic`].
pub(crate) fn lower(i: &Instruction) -> Fast {
    lower_checked(i).unwrap_or(Fast::Generic)
}

fn lower_checked(i: &Instruction) -> Option<Fast> {
    if is_locked(i) || i.encoding() != EncodingKind::Legacy {
        return None;
    }
    let m = i.mnemonic();
    let f = match m {
        M::Nop | M::Pause | M::Lfence | M::Mfence | M::Sfence | M::Endbr64 => Fast::Nop,
        M::Mov => {
            let size = op_size(i, 0);
            Fast::Mov {
                size,
                dst: dst(i, 0)?,
                src: src(i, 1, size)?,
            }
        }
        M::Movzx | M::Movsx | M::Movsxd => {
            let src = match src(i, 1, 8)? {
                s @ (Src::Reg(_) | Src::Mem(_)) => s,
                Src::Imm(_) => return None,
            };
            Fast::Extend {
                dsize: op_size(i, 0),
                ssize: op_size(i, 1),
                signed: m != M::Movzx,
                dst: gpr(i.op0_register())?,
                src,
            }
        }
        M::Lea => Fast::Lea {
            size: op_size(i, 0),
            dst: gpr(i.op0_register())?,
            addr: addr(i, 1, false)?,
        },
        M::Add | M::Adc | M::Sub | M::Sbb | M::Cmp | M::And | M::Or | M::Xor | M::Test => {
            let size = op_size(i, 0);
            let op = match m {
                M::Add => AluOp::Add,
                M::Adc => AluOp::Adc,
                M::Sub => AluOp::Sub,
                M::Sbb => AluOp::Sbb,
                M::Cmp => AluOp::Cmp,
                M::And => AluOp::And,
                M::Or => AluOp::Or,
                M::Xor => AluOp::Xor,
                _ => AluOp::Test,
            };
            Fast::Alu {
                op,
                size,
                dst: dst(i, 0)?,
                src: src(i, 1, size)?,
            }
        }
        M::Inc | M::Dec | M::Neg | M::Not => Fast::Unary {
            op: match m {
                M::Inc => UnOp::Inc,
                M::Dec => UnOp::Dec,
                M::Neg => UnOp::Neg,
                _ => UnOp::Not,
            },
            size: op_size(i, 0),
            dst: dst(i, 0)?,
        },
        _ if i.op0_kind() == OpKind::NearBranch64 && crate::exec::control::is_jcc(m) => Fast::Jcc {
            cc: cc(i)?,
            target: i.near_branch64(),
        },
        M::Jmp if i.op0_kind() == OpKind::NearBranch64 => Fast::Jmp {
            target: i.near_branch64(),
        },
        M::Call if i.code() == Code::Call_rel32_64 => Fast::Call {
            target: i.near_branch64(),
        },
        M::Jmp if i.code() == Code::Jmp_rm64 => Fast::JmpInd { src: src(i, 0, 8)? },
        M::Call if i.code() == Code::Call_rm64 => Fast::CallInd { src: src(i, 0, 8)? },
        M::Ret if i.code() == Code::Retnq => Fast::Ret,
        M::Push if i.code() == Code::Push_r64 => Fast::Push {
            src: gpr(i.op0_register())?,
        },
        M::Pop if i.code() == Code::Pop_r64 => Fast::Pop {
            dst: gpr(i.op0_register())?,
        },
        M::Shl | M::Sal | M::Shr | M::Sar | M::Rol | M::Ror | M::Rcl | M::Rcr => Fast::Shift {
            op: m,
            size: op_size(i, 0),
            dst: dst(i, 0)?,
            count: src(i, 1, 1)?,
        },
        M::Imul if i.op_count() == 2 => {
            let size = op_size(i, 0);
            let d = gpr(i.op0_register())?;
            Fast::Imul {
                size,
                dst: d,
                a: Src::Reg(d),
                b: src(i, 1, size)?,
            }
        }
        M::Imul if i.op_count() == 3 => {
            let size = op_size(i, 0);
            Fast::Imul {
                size,
                dst: gpr(i.op0_register())?,
                a: src(i, 1, size)?,
                b: src(i, 2, size)?,
            }
        }
        _ if crate::exec::mov::is_setcc(m) => Fast::Setcc {
            cc: cc(i)?,
            dst: dst(i, 0)?,
        },
        _ if crate::exec::mov::is_cmov(m) => {
            let size = op_size(i, 0);
            Fast::Cmov {
                cc: cc(i)?,
                size,
                dst: gpr(i.op0_register())?,
                src: src(i, 1, size)?,
            }
        }
        _ => return None,
    };
    Some(f)
}
