//! More generators: multiply/divide, bit instructions, conditional moves, data movement,
//! exchange-and-compare, string instructions. Flag masks: see `gen`.

use super::gen::*;
use super::layout::*;
use super::Case;

/// Whether DIV/IDIV of this size with these inputs raises #DE (those are not run natively).
fn div_faults(signed: bool, size: u8, rax: u64, rdx: u64, src: u64) -> bool {
    let bits = size as u32 * 8;
    let mask = if size == 8 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let s = src & mask;
    if s == 0 {
        return true;
    }
    let (lo, hi) = if size == 1 {
        (rax & 0xff, (rax >> 8) & 0xff)
    } else {
        (rax & mask, rdx & mask)
    };
    let dividend = ((hi as u128) << bits) | lo as u128;
    if !signed {
        return dividend / s as u128 > mask as u128;
    }
    let sh = 128 - 2 * bits;
    let d = ((dividend as i128) << sh) >> sh;
    let v = ((s as i128) << (128 - bits)) >> (128 - bits);
    let q = d / v;
    q < -(1i128 << (bits - 1)) || q > (1i128 << (bits - 1)) - 1
}

/// MUL, IMUL, DIV, IDIV (F6/F7 /4../7), IMUL r, r/m (0F AF), IMUL r, r/m, imm (6B/69).
pub fn muldiv(rng: &mut Rng, n: usize) -> Vec<Case> {
    let mut out = Vec::new();
    for ext in 4u8..8 {
        for &size in &SIZES {
            let mut made = 0;
            while made < n {
                let rex8 = rng.below(2) == 0;
                let rm = pick(rng, size, rex8);
                let body = rr(size, &[if size == 1 { 0xf6 } else { 0xf7 }], ext, rm, rex8);
                let mask = if ext < 6 { CF | OF } else { 0 };
                let mut case = Case::new(format!("grp3/{ext} size{size}"), body, rng).mask(mask);
                if ext >= 6 {
                    // Make non-faulting divisions likely: small high halves.
                    if rng.below(2) == 0 {
                        case.gpr[2] = if rng.below(2) == 0 { 0 } else { u64::MAX };
                    }
                    let src = reg_value(&case.gpr, size, rm, rex8);
                    if div_faults(ext == 7, size, case.gpr[0], case.gpr[2], src) {
                        continue;
                    }
                }
                out.push(case);
                made += 1;
            }
        }
    }
    for &size in &[2u8, 4, 8] {
        for k in 0..n {
            let (reg, rm) = (pick(rng, size, false), pick(rng, size, false));
            let body = match k % 3 {
                0 => rr(size, &[0x0f, 0xaf], reg, rm, false),
                1 => {
                    let mut b = rr(size, &[0x6b], reg, rm, false);
                    b.push(rng.value() as u8);
                    b
                }
                _ => {
                    let mut b = rr(size, &[0x69], reg, rm, false);
                    let v = rng.value();
                    let le = v.to_le_bytes();
                    b.extend_from_slice(if size == 2 { &le[..2] } else { &le[..4] });
                    b
                }
            };
            out.push(Case::new(format!("imul form{} size{size}", k % 3), body, rng).mask(CF | OF));
        }
    }
    out
}

/// The value an 8..64-bit register operand holds (rm encoding as `rr` emits it).
fn reg_value(gpr: &[u64; 16], size: u8, r: u8, rex8: bool) -> u64 {
    if size == 1 && !rex8 && (4..8).contains(&r) {
        return (gpr[(r - 4) as usize] >> 8) & 0xff;
    }
    let v = gpr[r as usize];
    match size {
        1 => v & 0xff,
        2 => v & 0xffff,
        4 => v & 0xffff_ffff,
        _ => v,
    }
}

/// BT/BTS/BTR/BTC (register and imm8 forms, register and memory destinations), BSF/BSR, BSWAP.
pub fn bits(rng: &mut Rng, n: usize) -> Vec<Case> {
    let mut out = Vec::new();
    let bit_mask = CF | ZF;
    for (k, op) in [0xa3u8, 0xab, 0xb3, 0xbb].iter().enumerate() {
        for &size in &[2u8, 4, 8] {
            for _ in 0..n {
                let body = rr(
                    size,
                    &[0x0f, *op],
                    pick(rng, size, false),
                    pick(rng, size, false),
                    false,
                );
                out.push(Case::new(format!("bt{k} rr size{size}"), body, rng).mask(bit_mask));
                let mut body = rr(
                    size,
                    &[0x0f, 0xba],
                    4 + k as u8,
                    pick(rng, size, false),
                    false,
                );
                body.push(rng.below(256) as u8);
                out.push(Case::new(format!("bt{k} imm size{size}"), body, rng).mask(bit_mask));
                // Memory destination with a register offset in [-2048, 2048) bits.
                let reg = loop {
                    let r = pick(rng, size, false);
                    if r != 6 {
                        break r;
                    }
                };
                let body = rm_mem(size, &[0x0f, *op], reg, 0);
                let mut case = Case::new(format!("bt{k} mem size{size}"), body, rng)
                    .mask(bit_mask)
                    .mem();
                let off = (rng.below(4096) as i64 - 2048) as u64;
                case.gpr[reg as usize] = (case.gpr[reg as usize] & !0xffff) | (off & 0xffff);
                if size != 2 {
                    case.gpr[reg as usize] = off;
                }
                out.push(case);
            }
        }
    }
    for (name, op) in [("bsf", 0xbcu8), ("bsr", 0xbd)] {
        for &size in &[2u8, 4, 8] {
            for k in 0..n {
                let (reg, rm) = (pick(rng, size, false), pick(rng, size, false));
                let body = rr(size, &[0x0f, op], reg, rm, false);
                let mut case = Case::new(format!("{name} size{size}"), body, rng).mask(ZF);
                if k % 4 == 0 {
                    case.gpr[rm as usize] = 0;
                } else if k % 4 == 1 {
                    case.gpr[rm as usize] = 1u64 << rng.below(64);
                }
                out.push(case);
            }
        }
    }
    for &size in &[4u8, 8] {
        for _ in 0..n {
            let r = pick(rng, size, false);
            let mut body = Vec::new();
            let rex = 0x40 | if size == 8 { 8 } else { 0 } | (r >> 3);
            if rex != 0x40 {
                body.push(rex);
            }
            body.extend_from_slice(&[0x0f, 0xc8 + (r & 7)]);
            out.push(Case::new(format!("bswap size{size}"), body, rng));
        }
    }
    out
}

/// CMOVcc r, r/m (0F 40+cc) and SETcc r/m8 (0F 90+cc), register and memory sources.
pub fn conditional(rng: &mut Rng, n: usize) -> Vec<Case> {
    let mut out = Vec::new();
    for cc in 0..16u8 {
        for k in 0..n {
            let size = [2u8, 4, 8][k % 3];
            let body = rr(
                size,
                &[0x0f, 0x40 + cc],
                pick(rng, size, false),
                pick(rng, size, false),
                false,
            );
            out.push(Case::new(format!("cmov{cc} size{size}"), body, rng));
            let rex8 = rng.below(2) == 0;
            let body = rr(1, &[0x0f, 0x90 + cc], 0, pick(rng, 1, rex8), rex8);
            out.push(Case::new(format!("set{cc}"), body, rng));
            if k % 4 == 0 {
                let body = rm_mem(
                    size,
                    &[0x0f, 0x40 + cc],
                    pick(rng, size, false).min(7),
                    8 * (k as i32 % 16),
                );
                out.push(Case::new(format!("cmov{cc} mem size{size}"), body, rng).mem());
            }
        }
    }
    out
}

/// MOV r/m, r and r, r/m (88/89/8A/8B), MOV r, imm (B0+r, B8+r incl. 64-bit imm), MOVZX/MOVSX,
/// MOVSXD, XCHG, LEA with SIB, CBW/CWDE/CDQE, CWD/CDQ/CQO, XADD, CMPXCHG (register and memory).
pub fn moves(rng: &mut Rng, n: usize) -> Vec<Case> {
    let mut out = Vec::new();
    for &size in &SIZES {
        for k in 0..n {
            let rex8 = rng.below(2) == 0;
            let op = if k % 2 == 0 { 0x88 } else { 0x8a };
            let body = rr(
                size,
                &base(size, op),
                pick(rng, size, rex8),
                pick(rng, size, rex8),
                rex8,
            );
            out.push(Case::new(format!("mov size{size}"), body, rng));
            let body = rm_mem(
                size,
                &base(size, op),
                pick(rng, size, false).min(7),
                16 * (k as i32 % 64) - 512,
            );
            out.push(Case::new(format!("mov mem size{size}"), body, rng).mem());
            let body = rr(
                size,
                &base(size, 0x86),
                pick(rng, size, rex8),
                pick(rng, size, rex8),
                rex8,
            );
            out.push(Case::new(format!("xchg size{size}"), body, rng));
            let body = rr(
                size,
                &[0x0f, if size == 1 { 0xc0 } else { 0xc1 }],
                pick(rng, size, rex8),
                pick(rng, size, rex8),
                rex8,
            );
            out.push(Case::new(format!("xadd size{size}"), body, rng));
            let body = rr(
                size,
                &[0x0f, if size == 1 { 0xb0 } else { 0xb1 }],
                pick(rng, size, rex8),
                pick(rng, size, rex8),
                rex8,
            );
            let mut case = Case::new(format!("cmpxchg size{size}"), body, rng);
            if k % 2 == 0 {
                case.gpr[0] = case.gpr[(body_rm(&case.body)) as usize];
            }
            out.push(case);
            let body = rm_mem(
                size,
                &[0x0f, if size == 1 { 0xb0 } else { 0xb1 }],
                pick(rng, size, false).min(7),
                8 * (k as i32 % 32),
            );
            out.push(Case::new(format!("cmpxchg mem size{size}"), body, rng).mem());
        }
    }
    for k in 0..n {
        // movzx/movsx r{16,32,64}, r/m{8,16}
        let dsize = [2u8, 4, 8][k % 3];
        for (name, op) in [
            ("movzx8", 0xb6u8),
            ("movzx16", 0xb7),
            ("movsx8", 0xbe),
            ("movsx16", 0xbf),
        ] {
            let body = rr(
                dsize,
                &[0x0f, op],
                pick(rng, dsize, false),
                pick(rng, dsize, false),
                false,
            );
            out.push(Case::new(format!("{name} dsize{dsize}"), body, rng));
        }
        let body = rr(8, &[0x63], pick(rng, 8, false), pick(rng, 8, false), false);
        out.push(Case::new("movsxd".into(), body, rng));
        let r = pick(rng, 8, false);
        let mut body = vec![0x48 | (r >> 3), 0xb8 + (r & 7)];
        body.extend_from_slice(&rng.value().to_le_bytes());
        out.push(Case::new("movabs".into(), body, rng));
        // lea r, [base + index*scale + disp8] with SIB.
        let (dst, b, idx) = (
            pick(rng, 8, false),
            pick(rng, 8, false),
            pick(rng, 8, false),
        );
        let size = [2u8, 4, 8][k % 3];
        let mut body = Vec::new();
        if size == 2 {
            body.push(0x66);
        }
        body.push(
            0x40 | if size == 8 { 8 } else { 0 } | ((dst >> 3) << 2) | ((idx >> 3) << 1) | (b >> 3),
        );
        body.extend_from_slice(&[
            0x8d,
            0x44 | ((dst & 7) << 3),
            ((k as u8 % 4) << 6) | ((idx & 7) << 3) | (b & 7),
            rng.next() as u8,
        ]);
        out.push(Case::new(format!("lea size{size}"), body, rng));
        for (name, bytes) in [
            ("cbw", &[0x66, 0x98][..]),
            ("cwde", &[0x98][..]),
            ("cdqe", &[0x48, 0x98][..]),
            ("cwd", &[0x66, 0x99][..]),
            ("cdq", &[0x99][..]),
            ("cqo", &[0x48, 0x99][..]),
        ] {
            out.push(Case::new(name.into(), bytes.to_vec(), rng));
        }
    }
    out
}

/// The rm register field of a register-direct encoding produced by `rr`.
fn body_rm(body: &[u8]) -> u8 {
    let modrm = body[body.len() - 1];
    let rex = body
        .iter()
        .find(|b| (0x40..0x50).contains(*b))
        .copied()
        .unwrap_or(0x40);
    (modrm & 7) | ((rex & 1) << 3)
}

/// MOVS/STOS/LODS/CMPS/SCAS in every size, with and without REP/REPE/REPNE, both directions.
pub fn strings(rng: &mut Rng, n: usize) -> Vec<Case> {
    let mut out = Vec::new();
    for (name, op) in [
        ("movs", 0xa4u8),
        ("cmps", 0xa6),
        ("stos", 0xaa),
        ("lods", 0xac),
        ("scas", 0xae),
    ] {
        for &size in &SIZES {
            for k in 0..n {
                let mut body = Vec::new();
                let prefix = [None, Some(0xf3u8), Some(0xf2)][k % 3];
                if let Some(p) = prefix {
                    body.push(p);
                }
                if size == 2 {
                    body.push(0x66);
                }
                if size == 8 {
                    body.push(0x48);
                }
                body.push(if size == 1 { op } else { op + 1 });
                let mut case =
                    Case::new(format!("{name} size{size} prefix{:?}", prefix), body, rng);
                let down = rng.below(2) == 0;
                case.flags = (case.flags & !DF) | if down { DF } else { 0 };
                case.gpr[1] = rng.below(40);
                case.gpr[6] = SCRATCH_VA + 0x400 + rng.below(0x200);
                case.gpr[7] = SCRATCH_VA + 0x800 + rng.below(0x200);
                if k % 2 == 0 {
                    // Make equal runs likely for REPE/REPNE.
                    let fill = rng.next() as u8;
                    let (s, d) = (
                        (case.gpr[6] - SCRATCH_VA) as usize,
                        (case.gpr[7] - SCRATCH_VA) as usize,
                    );
                    let so = SCRATCH_OFF as usize;
                    for j in 0..0x140 {
                        case.data[so + s - 0xa0 + j] = fill;
                        case.data[so + d - 0xa0 + j] = fill;
                    }
                    case.gpr[0] = u64::from_le_bytes([fill; 8]);
                }
                out.push(case.mask(ARITH | DF));
            }
        }
    }
    out
}

/// PUSH/POP of registers, immediates and memory; CALL/RET over a short distance; LEAVE;
/// PUSHF/POPF of the arithmetic flags.
pub fn stack(rng: &mut Rng, n: usize) -> Vec<Case> {
    let mut out = Vec::new();
    for _ in 0..n {
        let (a, b) = (pick(rng, 8, false), pick(rng, 8, false));
        let mut body = Vec::new();
        for r in [a, b] {
            if r >= 8 {
                body.push(0x41);
            }
            body.push(0x50 + (r & 7));
        }
        body.extend_from_slice(&[0x6a, rng.next() as u8, 0x68]);
        body.extend_from_slice(&(rng.next() as u32).to_le_bytes());
        body.extend_from_slice(&[0xff, 0xb6, 0x10, 0, 0, 0]); // push [rsi+0x10]
        body.extend_from_slice(&[0x8f, 0x86, 0x20, 0, 0, 0]); // pop [rsi+0x20]
        for r in [b, a] {
            if r >= 8 {
                body.push(0x41);
            }
            body.push(0x58 + (r & 7));
        }
        body.extend_from_slice(&[0x9c, 0x48, 0x83, 0x34, 0x24, 0x15, 0x9d]); // pushf; xor qword [rsp], 0x15; popf
        body.extend_from_slice(&[0xe8, 2, 0, 0, 0, 0xeb, 0x01, 0xc3]); // call +2; jmp +1; ret
        body.extend_from_slice(&[0x55, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xec, 0x20, 0xc9]); // push rbp; mov rbp,rsp; sub rsp,32; leave
        out.push(Case::new("stack sequence".into(), body, rng).mem());
    }
    out
}
