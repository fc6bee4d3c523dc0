//! The lowered forms against the generic path: random programs made of the instructions
//! `lower` handles (registers, memory operands that hit RAM, miss it or are not canonical,
//! branches, calls and returns) run once with lowering and once without; registers, RIP,
//! RFLAGS, the exception taken, the exit and memory must agree exactly.

use super::{lower, Fast};
use crate::testutil::*;
use iced_x86::{
    BlockEncoder, BlockEncoderOptions, Code, Decoder, DecoderOptions, Instruction,
    InstructionBlock, MemoryOperand, Register as R,
};

/// Registers an instruction may write: never RBX/RBP/RSI/RSP, which hold the data and stack
/// pointers the memory operands use.
const DST64: [R; 12] = [
    R::RAX,
    R::RCX,
    R::RDX,
    R::RDI,
    R::R8,
    R::R9,
    R::R10,
    R::R11,
    R::R12,
    R::R13,
    R::R14,
    R::R15,
];
const DST8_LEGACY: [R; 6] = [R::AL, R::CL, R::DL, R::AH, R::CH, R::DH];
const SRC8_LEGACY: [R; 8] = [R::AL, R::CL, R::DL, R::BL, R::AH, R::CH, R::DH, R::BH];

/// A register of `size` bytes, one an instruction may write if `dst`.
fn reg(rng: &mut Rng, size: u8, dst: bool) -> R {
    if size == 1 {
        return if dst {
            rng.pick(&DST8_LEGACY)
        } else {
            rng.pick(&SRC8_LEGACY)
        };
    }
    let full = if dst || rng.below(4) != 0 {
        rng.pick(&DST64)
    } else {
        rng.pick(&[R::RBX, R::RBP, R::RSI, R::RSP])
    };
    let n = full.number();
    match size {
        2 => R::AX.add(n),
        4 => R::EAX.add(n),
        _ => full,
    }
}

trait RegAdd {
    fn add(self, n: usize) -> R;
}

impl RegAdd for R {
    fn add(self, n: usize) -> R {
        R::values().nth(self as usize + n).unwrap_or(self)
    }
}

/// A memory operand: mostly in the data area (RBX = DATA, RBP near the stack, RSI a small
/// index), sometimes RIP-relative, through FS/GS, or from a register with a random value
/// (unmapped, outside RAM or not canonical).
fn mem(rng: &mut Rng) -> MemoryOperand {
    let disp = rng.below(0x1000) as i64 - 0x800;
    match rng.below(10) {
        0 => MemoryOperand::with_base_displ(R::R12, disp),
        1 => MemoryOperand::with_base_displ(R::RIP, CODE as i64 + 0x4000 + disp),
        2 => {
            let mut m = MemoryOperand::with_base_displ(R::RBX, disp);
            m.segment_prefix = if rng.below(2) == 0 { R::FS } else { R::GS };
            m
        }
        3 => MemoryOperand::with_base_displ(R::RBP, disp),
        4 => MemoryOperand::with_base_displ(R::RSP, -(rng.below(64) as i64) * 8),
        5 => MemoryOperand::with_base_index_scale_displ_size(
            R::None,
            R::RSI,
            1 << rng.below(4),
            DATA as i64 + disp + 0x1000,
            4,
        ),
        _ => MemoryOperand::with_base_index_scale_displ_size(
            R::RBX,
            R::RSI,
            1 << rng.below(4),
            disp,
            1,
        ),
    }
}

/// The codes lowered, by operand shape.
const RM_R: [Code; 20] = [
    Code::Mov_rm64_r64,
    Code::Mov_rm32_r32,
    Code::Mov_rm16_r16,
    Code::Mov_rm8_r8,
    Code::Add_rm64_r64,
    Code::Add_rm32_r32,
    Code::Adc_rm64_r64,
    Code::Sub_rm64_r64,
    Code::Sub_rm8_r8,
    Code::Sbb_rm32_r32,
    Code::Cmp_rm64_r64,
    Code::Cmp_rm16_r16,
    Code::And_rm64_r64,
    Code::Or_rm32_r32,
    Code::Xor_rm32_r32,
    Code::Xor_rm8_r8,
    Code::Test_rm64_r64,
    Code::Test_rm8_r8,
    Code::Adc_rm8_r8,
    Code::Sbb_rm64_r64,
];
const R_RM: [Code; 14] = [
    Code::Mov_r64_rm64,
    Code::Mov_r32_rm32,
    Code::Mov_r8_rm8,
    Code::Add_r64_rm64,
    Code::Sub_r32_rm32,
    Code::Cmp_r8_rm8,
    Code::Cmovae_r64_rm64,
    Code::Cmovne_r32_rm32,
    Code::Cmovle_r16_rm16,
    Code::Cmovb_r64_rm64,
    Code::Movzx_r32_rm8,
    Code::Movzx_r32_rm16,
    Code::Movsx_r64_rm8,
    Code::Movsxd_r64_rm32,
];
const RM_IMM: [Code; 12] = [
    Code::Add_rm64_imm8,
    Code::Add_rm32_imm8,
    Code::Sub_rm64_imm32,
    Code::Cmp_rm8_imm8,
    Code::Cmp_rm64_imm8,
    Code::And_rm32_imm8,
    Code::And_rm64_imm32,
    Code::Or_rm16_imm16,
    Code::Test_rm8_imm8,
    Code::Mov_rm64_imm32,
    Code::Mov_rm8_imm8,
    Code::Adc_rm64_imm8,
];
const SHIFT_IMUL: [Code; 12] = [
    Code::Shl_rm64_imm8,
    Code::Shr_rm64_imm8,
    Code::Sar_rm32_imm8,
    Code::Rol_rm32_imm8,
    Code::Ror_rm16_imm8,
    Code::Rcl_rm8_imm8,
    Code::Rcr_rm64_imm8,
    Code::Shl_rm8_imm8,
    Code::Imul_r64_rm64_imm32,
    Code::Imul_r32_rm32_imm8,
    Code::Imul_r16_rm16_imm16,
    Code::Sar_rm64_imm8,
];
const SHIFT_CL: [Code; 4] = [
    Code::Shl_rm64_CL,
    Code::Shr_rm32_CL,
    Code::Sar_rm8_CL,
    Code::Ror_rm64_CL,
];
const RM: [Code; 10] = [
    Code::Inc_rm64,
    Code::Inc_rm32,
    Code::Dec_rm32,
    Code::Dec_rm8,
    Code::Neg_rm64,
    Code::Neg_rm16,
    Code::Not_rm64,
    Code::Not_rm32,
    Code::Setb_rm8,
    Code::Setne_rm8,
];
const BRANCH: [Code; 6] = [
    Code::Jne_rel8_64,
    Code::Je_rel32_64,
    Code::Jb_rel8_64,
    Code::Jle_rel32_64,
    Code::Jmp_rel8_64,
    Code::Call_rel32_64,
];

/// The size in bytes of operand `op` of `code` when it is a register or memory operand.
fn size_of(code: Code, op: u32) -> u8 {
    let name = format!("{code:?}");
    let part = name.split('_').nth(op as usize + 1).unwrap_or("");
    if part.ends_with("64") {
        8
    } else if part.ends_with("32") {
        4
    } else if part.ends_with("16") {
        2
    } else {
        1
    }
}

/// A random immediate that fits `code`'s immediate operand.
fn imm_for(rng: &mut Rng, code: Code) -> i32 {
    let imm = rng.next() as i32 >> rng.below(32);
    match format!("{code:?}") {
        n if n.ends_with("imm8") => imm as i8 as i32,
        n if n.ends_with("imm16") => imm as i16 as i32,
        _ => imm,
    }
}

/// One random instruction at `ip` (branches to one of `targets`) that can be encoded (AH-DH
/// cannot meet a REX prefix).
fn one(rng: &mut Rng, ip: u64, targets: &[u64]) -> Instruction {
    loop {
        let i = candidate(rng, ip, targets);
        if i.is_call_near() || i.is_jcc_short_or_near() || i.is_jmp_short_or_near() {
            return i;
        }
        if iced_x86::Encoder::new(64).encode(&i, ip).is_ok() {
            return i;
        }
    }
}

fn candidate(rng: &mut Rng, ip: u64, targets: &[u64]) -> Instruction {
    let mut i = match rng.below(14) {
        0..=3 => {
            let code = rng.pick(&RM_R);
            let src = reg(rng, size_of(code, 1), false);
            if rng.below(2) == 0 {
                Instruction::with2(code, reg(rng, size_of(code, 0), true), src)
            } else {
                Instruction::with2(code, mem(rng), src)
            }
        }
        4..=6 => {
            let code = rng.pick(&R_RM);
            let dst = reg(rng, size_of(code, 0), true);
            if rng.below(2) == 0 {
                Instruction::with2(code, dst, reg(rng, size_of(code, 1), false))
            } else {
                Instruction::with2(code, dst, mem(rng))
            }
        }
        7 | 8 => {
            let code = rng.pick(&RM_IMM);
            let imm = imm_for(rng, code);
            if rng.below(2) == 0 {
                Instruction::with2(code, reg(rng, size_of(code, 0), true), imm)
            } else {
                Instruction::with2(code, mem(rng), imm)
            }
        }
        9 => {
            let code = rng.pick(&RM);
            if rng.below(2) == 0 {
                Instruction::with1(code, reg(rng, size_of(code, 0), true))
            } else {
                Instruction::with1(code, mem(rng))
            }
        }
        10 => match rng.below(9) {
            // Indirect branches: mostly wild targets (#GP, or a fault fetching there).
            7 if rng.below(2) == 0 => Instruction::with1(Code::Jmp_rm64, reg(rng, 8, false)),
            7 => Instruction::with1(Code::Call_rm64, reg(rng, 8, false)),
            8 if rng.below(2) == 0 => Instruction::with1(Code::Jmp_rm64, mem(rng)),
            8 => Instruction::with1(Code::Call_rm64, mem(rng)),
            0 => Instruction::with2(Code::Lea_r64_m, reg(rng, 8, true), mem(rng)),
            1 => Instruction::with2(Code::Lea_r32_m, reg(rng, 4, true), mem(rng)),
            5 => Instruction::with2(Code::Imul_r64_rm64, reg(rng, 8, true), mem(rng)),
            2 => Instruction::with1(Code::Push_r64, reg(rng, 8, false)),
            3 => Instruction::with1(Code::Pop_r64, reg(rng, 8, true)),
            4 => Ok(Instruction::with(Code::Retnq)),
            6 => Ok(Instruction::with(Code::Nopd)),
            _ => Instruction::with2(Code::Imul_r32_rm32, reg(rng, 4, true), reg(rng, 4, false)),
        },
        11 => {
            let code = rng.pick(&SHIFT_IMUL);
            let imm = imm_for(rng, code);
            let op0 = reg(rng, size_of(code, 0), true);
            let rm = if rng.below(2) == 0 {
                None
            } else {
                Some(mem(rng))
            };
            if format!("{code:?}").starts_with("Imul") {
                match rm {
                    Some(m) => Instruction::with3(code, op0, m, imm),
                    None => Instruction::with3(code, op0, reg(rng, size_of(code, 1), false), imm),
                }
            } else {
                match rm {
                    Some(m) => Instruction::with2(code, m, imm as u32 & 0xff),
                    None => Instruction::with2(code, op0, imm as u32 & 0xff),
                }
            }
        }
        12 => {
            let code = rng.pick(&SHIFT_CL);
            match rng.below(3) {
                0 => Instruction::with2(code, mem(rng), R::CL),
                _ => Instruction::with2(code, reg(rng, size_of(code, 0), true), R::CL),
            }
        }
        _ => Instruction::with_branch(rng.pick(&BRANCH), rng.pick(targets)),
    }
    .expect("valid instruction");
    i.set_ip(ip);
    i
}

/// A random program of `n` lowered instructions, encoded at [`CODE`], ending in HLT.
fn program(rng: &mut Rng, n: usize) -> Vec<u8> {
    let ips: Vec<u64> = (0..=n as u64).map(|k| CODE + k * 16).collect();
    let mut instrs: Vec<Instruction> = (0..n).map(|k| one(rng, ips[k], &ips)).collect();
    let mut hlt = Instruction::with(Code::Hlt);
    hlt.set_ip(ips[n]);
    instrs.push(hlt);
    let block = InstructionBlock::new(&instrs, CODE);
    BlockEncoder::encode(64, block, BlockEncoderOptions::NONE)
        .expect("encodes")
        .code_buffer
}

/// How a program runs in the differential tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Generic,
    Lowered,
    /// Lowered and translated at the first run of each block (`crate::jit`).
    Translated,
}

fn machine(rng: &mut Rng, code: &[u8], path: Path) -> Machine {
    let mut m = Machine::new();
    // A small block table: 9,000 machines each allocating the default 8 MiB one made this the
    // slowest test by far (a program here is a few blocks).
    m.cpu.set_block_cache_size(8);
    m.cpu.fast_ops = path != Path::Generic;
    if path == Path::Translated {
        let pool = crate::CodePool::new(1).expect("code memory");
        assert!(m.cpu.enable_jit(&pool, 1));
    }
    m.load_code(code);
    for r in m.cpu.gpr.iter_mut() {
        *r = rng.next();
    }
    m.cpu.gpr[3] = DATA + 0x8000;
    m.cpu.gpr[5] = STACK_TOP - 0x800;
    m.cpu.gpr[6] = rng.below(0x100) as u64;
    m.cpu.gpr[4] = STACK_TOP - 0x400;
    m.cpu.seg[crate::SegReg::Fs as usize].base = rng.below(0x100) as u64;
    m.cpu.seg[crate::SegReg::Gs as usize].base = rng.next() >> (rng.below(2) * 20);
    m.cpu.flags.set_bits(rng.next() & crate::flags::ARITH);
    for k in 0..0x1_0000u64 / 8 {
        m.mem.write_u64(DATA + k * 8, rng.next()).unwrap();
    }
    m
}

#[test]
fn lowered_forms_match_the_generic_path() {
    let mut seed = Rng(0x0fa5_7000_0000_0001);
    let mut lowered = 0usize;
    let mut translated = 0u64;
    for case in 0..3000 {
        let n = 2 + seed.below(24);
        let code = program(&mut seed, n);
        let state = seed.next();
        let [a, b, c] = [Path::Lowered, Path::Generic, Path::Translated].map(|path| {
            let mut rng = Rng(state);
            machine(&mut rng, &code, path).run(300)
        });
        translated += c.cpu.jit_blocks();
        let ctx = format!("case {case}: code {code:02x?}");
        same_outcome(&a, &b, &format!("{ctx} (lowered vs generic)"));
        same_outcome(&c, &b, &format!("{ctx} (translated vs generic)"));
        let mut dec = Decoder::with_ip(64, &code, CODE, DecoderOptions::NONE);
        lowered += dec.iter().filter(|i| lower(i) != Fast::Generic).count();
    }
    assert!(lowered > 30_000, "only {lowered} instructions were lowered");
    assert!(
        translated > 3_000,
        "only {translated} blocks were translated"
    );
}

/// Assert that two runs of one program ended in the same architectural state.
fn same_outcome(a: &Outcome, b: &Outcome, ctx: &str) {
    {
        assert_eq!(a.exit, b.exit, "{ctx}");
        assert_eq!(a.exception, b.exception, "{ctx}");
        assert_eq!(a.cpu.gpr, b.cpu.gpr, "{ctx}");
        assert_eq!(a.cpu.rip, b.cpu.rip, "{ctx}");
        assert_eq!(a.cpu.flags.bits(), b.cpu.flags.bits(), "{ctx}");
        assert_eq!(a.cpu.tsc, b.cpu.tsc, "{ctx}");
        let mut da = vec![0u8; 0x1_0000];
        let mut db = da.clone();
        for (o, d) in [(a, &mut da), (b, &mut db)] {
            o.mem.dump(DATA, d).unwrap();
        }
        assert!(da == db, "{ctx}: data differs");
        for (o, d) in [(a, &mut da), (b, &mut db)] {
            o.mem.dump(STACK_TOP - 0x1_0000, d).unwrap();
        }
        assert!(da == db, "{ctx}: stack differs");
    }
}

#[test]
fn locked_segment_and_32_bit_address_forms_stay_generic() {
    let generic = |bytes: &[u8]| {
        let i = Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE).decode();
        assert!(!i.is_invalid(), "{bytes:02x?}");
        lower(&i) == Fast::Generic
    };
    assert!(generic(&[0xf0, 0x48, 0x01, 0x03]), "lock add [rbx], rax");
    assert!(generic(&[0x67, 0x48, 0x8b, 0x03]), "mov rax, [ebx]");
    assert!(generic(&[0x8c, 0xd8]), "mov eax, ds");
    assert!(generic(&[0x0f, 0x20, 0xd8]), "mov rax, cr3");
    assert!(generic(&[0x48, 0x87, 0x03]), "xchg [rbx], rax");
    assert!(generic(&[0x67, 0xff, 0x23]), "jmp [ebx]");
    assert!(generic(&[0x48, 0xff, 0x2b]), "jmp far [rbx]");
    assert!(generic(&[0xc2, 0x08, 0x00]), "ret 8");
    assert!(!generic(&[0xff, 0xe0]), "jmp rax");
    assert!(!generic(&[0xff, 0x13]), "call [rbx]");
    assert!(!generic(&[0x48, 0x01, 0x03]), "add [rbx], rax");
    assert!(!generic(&[0x8a, 0x27]), "mov ah, [rdi]");
}
