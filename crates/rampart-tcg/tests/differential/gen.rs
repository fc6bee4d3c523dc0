//! Case generators: raw encodings of each instruction form with random operands (fixed seeds).
//!
//! Flag masks (which flags are compared) follow the SDM's "undefined" lists:
//! - ADD/ADC/SUB/SBB/CMP/NEG/INC/DEC/XADD/CMPXCHG: all six arithmetic flags.
//! - AND/OR/XOR/TEST: AF undefined.
//! - SHL/SHR/SAR: count 0 leaves flags alone (all compared); count 1: AF undefined; count > 1:
//!   AF and OF undefined; for 8/16-bit operands a count >= the width also leaves CF undefined.
//! - ROL/ROR/RCL/RCR: only CF/OF are written; OF undefined unless the masked count is 1.
//! - SHLD/SHRD: as shifts; 16-bit with count > 16: result and flags undefined (not generated).
//! - MUL/IMUL: SF, ZF, AF, PF undefined. DIV/IDIV: all six undefined (faulting inputs skipped).
//! - BT/BTS/BTR/BTC: OF, SF, AF, PF undefined (CF and the unchanged ZF compared).
//! - BSF/BSR: CF, OF, SF, AF, PF undefined (ZF compared; a zero source leaves the destination
//!   unchanged, as AMD documents and Intel does).
//! - MOV family, CMOVcc, SETcc, BSWAP, XCHG, CBW..CQO, LEA: flags unchanged (all compared).

use super::Case;

/// CF PF AF ZF SF OF.
pub const ARITH: u64 = 0x8d5;
pub const CF: u64 = 1;
pub const AF: u64 = 0x10;
pub const ZF: u64 = 0x40;
pub const OF: u64 = 0x800;
pub const DF: u64 = 0x400;

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Interesting operand values: edges of every width and random ones.
    pub fn value(&mut self) -> u64 {
        const EDGES: [u64; 12] = [
            0,
            1,
            u64::MAX,
            0x7f,
            0x80,
            0xff,
            0x7fff,
            0x8000,
            0x7fff_ffff,
            0x8000_0000,
            0x7fff_ffff_ffff_ffff,
            0x8000_0000_0000_0000,
        ];
        match self.below(4) {
            0 => EDGES[self.below(EDGES.len() as u64) as usize],
            1 => self.below(0x100),
            _ => self.next(),
        }
    }
}

/// Encode `opcode` with a register-direct ModRM for the given operand size.
pub fn rr(size: u8, opcode: &[u8], reg: u8, rm: u8, rex8: bool) -> Vec<u8> {
    let mut v = Vec::new();
    if size == 2 {
        v.push(0x66);
    }
    let rex = 0x40 | if size == 8 { 8 } else { 0 } | ((reg >> 3) & 1) << 2 | ((rm >> 3) & 1);
    if rex != 0x40 || (size == 1 && rex8) {
        v.push(rex);
    }
    v.extend_from_slice(opcode);
    v.push(0xc0 | (reg & 7) << 3 | (rm & 7));
    v
}

/// Encode `opcode` with a `[rsi + disp32]` memory operand.
pub fn rm_mem(size: u8, opcode: &[u8], reg: u8, disp: i32) -> Vec<u8> {
    let mut v = Vec::new();
    if size == 2 {
        v.push(0x66);
    }
    let rex = 0x40 | if size == 8 { 8 } else { 0 } | ((reg >> 3) & 1) << 2;
    if rex != 0x40 {
        v.push(rex);
    }
    v.extend_from_slice(opcode);
    v.push(0x80 | (reg & 7) << 3 | 6);
    v.extend_from_slice(&disp.to_le_bytes());
    v
}

/// A register for an operand of `size`: never RSP/SPL; AH..BH only without REX.
pub fn pick(rng: &mut Rng, size: u8, rex8: bool) -> u8 {
    loop {
        let r = if size == 1 && !rex8 {
            rng.below(8)
        } else {
            rng.below(16)
        } as u8;
        if r == 4 && (size != 1 || rex8) {
            continue;
        }
        if size == 1 && !rex8 && r == 4 {
            return 4; // AH is fine
        }
        return r;
    }
}

fn imm(size: u8, v: u64) -> Vec<u8> {
    match size {
        1 => vec![v as u8],
        2 => (v as u16).to_le_bytes().to_vec(),
        _ => (v as u32).to_le_bytes().to_vec(),
    }
}

pub const SIZES: [u8; 4] = [1, 2, 4, 8];

pub fn base(size: u8, op8: u8) -> Vec<u8> {
    vec![if size == 1 { op8 } else { op8 + 1 }]
}

/// ADD OR ADC SBB AND SUB XOR CMP (r/m, r), (r, r/m) and TEST, register and memory forms.
pub fn alu(rng: &mut Rng, n: usize) -> Vec<Case> {
    let mut out = Vec::new();
    for op in 0..8u8 {
        for &size in &SIZES {
            let mask = if matches!(op, 1 | 4 | 6) {
                ARITH & !AF
            } else {
                ARITH
            };
            for k in 0..n {
                let rex8 = rng.below(2) == 0;
                let (reg, rm) = (pick(rng, size, rex8), pick(rng, size, rex8));
                let dir = (k % 2) as u8 * 2;
                let body = rr(size, &base(size, op * 8 + dir), reg, rm, rex8);
                out.push(Case::new(format!("alu{op} rr size{size}"), body, rng).mask(mask));
                // Memory forms.
                let disp = rng.below(0x700) as i32 - 0x380;
                let body = rm_mem(
                    size,
                    &base(size, op * 8 + dir),
                    pick(rng, size, false).min(7),
                    disp,
                );
                out.push(
                    Case::new(format!("alu{op} mem size{size}"), body, rng)
                        .mask(mask)
                        .mem(),
                );
            }
        }
    }
    // TEST r/m, r.
    for &size in &SIZES {
        for _ in 0..n {
            let rex8 = rng.below(2) == 0;
            let body = rr(
                size,
                &base(size, 0x84),
                pick(rng, size, rex8),
                pick(rng, size, rex8),
                rex8,
            );
            out.push(Case::new(format!("test size{size}"), body, rng).mask(ARITH & !AF));
        }
    }
    out
}

/// Group-1 immediates: 80 /op ib, 81 /op iz, 83 /op ib (sign-extended), and TEST F6/F7 /0.
pub fn alu_imm(rng: &mut Rng, n: usize) -> Vec<Case> {
    let mut out = Vec::new();
    for op in 0..8u8 {
        let mask = if matches!(op, 1 | 4 | 6) {
            ARITH & !AF
        } else {
            ARITH
        };
        for &size in &SIZES {
            for _ in 0..n {
                let rex8 = rng.below(2) == 0;
                let rm = pick(rng, size, rex8);
                let v = rng.value();
                let short = size != 1 && rng.below(2) == 0;
                let mut body = if size == 1 {
                    rr(size, &[0x80], op, rm, rex8)
                } else if short {
                    rr(size, &[0x83], op, rm, rex8)
                } else {
                    rr(size, &[0x81], op, rm, rex8)
                };
                body.extend(imm(if short { 1 } else { size }, v));
                out.push(Case::new(format!("grp1/{op} imm size{size}"), body, rng).mask(mask));
            }
        }
    }
    for &size in &SIZES {
        for _ in 0..n {
            let rex8 = rng.below(2) == 0;
            let mut body = rr(size, &base(size, 0xf6), 0, pick(rng, size, rex8), rex8);
            body.extend(imm(size, rng.value()));
            out.push(Case::new(format!("test imm size{size}"), body, rng).mask(ARITH & !AF));
        }
    }
    out
}

/// INC, DEC (FE/FF /0 /1), NOT, NEG (F6/F7 /2 /3).
pub fn unary(rng: &mut Rng, n: usize) -> Vec<Case> {
    let mut out = Vec::new();
    for (name, op, ext) in [
        ("inc", 0xfe, 0),
        ("dec", 0xfe, 1),
        ("not", 0xf6, 2),
        ("neg", 0xf6, 3),
    ] {
        for &size in &SIZES {
            for _ in 0..n {
                let rex8 = rng.below(2) == 0;
                let body = rr(size, &base(size, op), ext, pick(rng, size, rex8), rex8);
                out.push(Case::new(format!("{name} size{size}"), body, rng));
            }
        }
    }
    out
}

/// Shifts and rotates: by 1 (D0/D1), by CL (D2/D3), by imm8 (C0/C1).
pub fn shifts(rng: &mut Rng, n: usize) -> Vec<Case> {
    let mut out = Vec::new();
    for ext in [0u8, 1, 2, 3, 4, 5, 7] {
        for &size in &SIZES {
            let bits = size as u64 * 8;
            let cmask = if size == 8 { 63 } else { 31 };
            for k in 0..n {
                let rex8 = rng.below(2) == 0;
                let mut rm = pick(rng, size, rex8);
                let form = k % 3;
                let count = match form {
                    0 => 1,
                    _ => match rng.below(4) {
                        0 => rng.below(256),
                        1 => bits - 1 + rng.below(3),
                        _ => rng.below(bits + 1),
                    },
                };
                let mut body = match form {
                    0 => rr(size, &base(size, 0xd0), ext, rm, rex8),
                    1 => {
                        if rm == 1 {
                            rm = 0; // keep CL as the count
                        }
                        rr(size, &base(size, 0xd2), ext, rm, rex8)
                    }
                    _ => rr(size, &base(size, 0xc0), ext, rm, rex8),
                };
                if form == 2 {
                    body.push(count as u8);
                }
                let c = count & cmask;
                let mut mask = ARITH;
                let rotate = ext <= 3;
                if c != 0 {
                    if rotate {
                        if c != 1 {
                            mask &= !OF;
                        }
                    } else {
                        mask &= !AF;
                        if c != 1 {
                            mask &= !OF;
                        }
                        if size <= 2 && c >= bits {
                            mask &= !CF;
                        }
                    }
                }
                let mut case = Case::new(
                    format!("shift/{ext} form{form} size{size} count{count}"),
                    body,
                    rng,
                )
                .mask(mask);
                if form == 1 {
                    case.gpr[1] = (case.gpr[1] & !0xff) | count;
                }
                out.push(case);
            }
        }
    }
    out
}

/// SHLD/SHRD r/m, r, imm8 (0F A4/AC) and CL (0F A5/AD).
pub fn double_shifts(rng: &mut Rng, n: usize) -> Vec<Case> {
    let mut out = Vec::new();
    for (name, op) in [("shld", 0xa4u8), ("shrd", 0xac)] {
        for &size in &[2u8, 4, 8] {
            let cmask = if size == 8 { 63 } else { 31 };
            for k in 0..n {
                let by_cl = k % 2 == 1;
                let count = if size == 2 {
                    rng.below(17)
                } else {
                    rng.below(cmask + 1)
                };
                let reg = loop {
                    let r = pick(rng, size, false);
                    if !(by_cl && r == 1) {
                        break r;
                    }
                };
                let rm = loop {
                    let r = pick(rng, size, false);
                    if !(by_cl && r == 1) {
                        break r;
                    }
                };
                let mut body = rr(size, &[0x0f, op + by_cl as u8], reg, rm, false);
                if !by_cl {
                    body.push(count as u8);
                }
                let mut mask = ARITH;
                if count != 0 {
                    mask &= !AF;
                    if count != 1 {
                        mask &= !OF;
                    }
                }
                let mut case =
                    Case::new(format!("{name} size{size} count{count}"), body, rng).mask(mask);
                if by_cl {
                    case.gpr[1] = (case.gpr[1] & !0xff) | count;
                }
                out.push(case);
            }
        }
    }
    out
}
