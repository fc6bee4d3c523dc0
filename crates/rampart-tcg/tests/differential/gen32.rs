//! 32-bit code run in compatibility mode on the host and in the interpreter: the one-byte
//! INC/DEC forms, 32- and 16-bit ALU on registers and `[esi+disp32]`, the 32-bit stack (PUSH,
//! POP, PUSHAD/POPAD, CALL/RET, ENTER/LEAVE with ESP/EBP), LAHF/SAHF, string instructions and
//! LOOP/JECXZ with ESI/EDI/ECX, CDQ/CWDE, XCHG, BSWAP and LEA. These go through the
//! interpreter's paths for code outside 64-bit mode (decoder bitness, segment-relative
//! addresses, SS-sized stack pointer).

use super::gen::{Rng, AF, ARITH, DF};
use super::layout::SCRATCH_VA;
use super::Case;

/// ESI points into the scratch page for `[esi+disp32]` operands.
fn scratch(c: &mut Case) {
    c.gpr[6] = SCRATCH_VA + 0x800;
}

/// A register number 0..8 other than ESP (and ESI when it is the memory base).
fn reg(rng: &mut Rng, avoid_esi: bool) -> u8 {
    loop {
        let r = rng.below(8) as u8;
        if r != 4 && !(avoid_esi && r == 6) {
            return r;
        }
    }
}

fn case(rng: &mut Rng, name: &str, body: Vec<u8>, mask: u64) -> Case {
    let mut c = Case::new(name.into(), body, rng).mask(mask);
    c.compat = true;
    c
}

pub fn compat(rng: &mut Rng, n: usize) -> Vec<Case> {
    let mut out = Vec::new();
    for _ in 0..n {
        // One-byte INC/DEC (REX prefixes in 64-bit mode).
        let r = reg(rng, false);
        let op = if rng.below(2) == 0 { 0x40 } else { 0x48 };
        out.push(case(rng, "inc/dec r32 (40+r/48+r)", vec![op + r], ARITH));

        // ALU r/m32, r32 and r32, r/m32; 16-bit with 66; register and [esi+disp32].
        let alu = [0x01u8, 0x09, 0x11, 0x19, 0x21, 0x29, 0x31, 0x39][rng.below(8) as usize];
        let (dst, src) = (reg(rng, true), reg(rng, true));
        let mask = if alu == 0x09 || alu == 0x21 || alu == 0x31 {
            ARITH & !AF
        } else {
            ARITH
        };
        let mut body = Vec::new();
        if rng.below(3) == 0 {
            body.push(0x66);
        }
        body.push(alu);
        body.push(0xc0 | (src << 3) | dst);
        out.push(case(rng, "alu r/m, r", body, mask));
        let disp = (rng.below(0x100) as u32).to_le_bytes();
        let dir = if rng.below(2) == 0 { 0 } else { 2 };
        let mut body = vec![alu + dir, 0x86 | (src << 3)];
        body.extend_from_slice(&disp);
        let mut c = case(rng, "alu [esi+disp32]", body, mask);
        scratch(&mut c);
        out.push(c);

        // The 32-bit stack.
        let (a, b) = (reg(rng, false), reg(rng, false));
        let imm = rng.next() as u32;
        let mut body = vec![0x50 + a, 0x68];
        body.extend_from_slice(&imm.to_le_bytes());
        body.extend_from_slice(&[0x6a, rng.next() as u8, 0x58 + b, 0x58 + a, 0x66, 0x50 + b]);
        body.extend_from_slice(&[0x66, 0x58 + a, 0x58 + b]);
        out.push(case(rng, "push/pop r32, imm, 66", body, ARITH));
        out.push(case(rng, "pushad; popad", vec![0x60, 0x61], ARITH));
        out.push(case(
            rng,
            "pushad; pop r32 x2",
            vec![0x60, 0x58 + a, 0x58 + b],
            ARITH,
        ));
        // call next; pop eax: EAX = the 32-bit return address.
        out.push(case(
            rng,
            "call rel32; pop",
            vec![0xe8, 0, 0, 0, 0, 0x58],
            ARITH,
        ));
        // call over a 1-byte ret placed at the target: call +1; jmp +1; ret
        out.push(case(
            rng,
            "call; ret",
            vec![0xe8, 0x02, 0, 0, 0, 0xeb, 0x01, 0xc3],
            ARITH,
        ));
        let alloc = (rng.below(0x40) as u16).to_le_bytes();
        out.push(case(
            rng,
            "enter; mov; leave",
            vec![0xc8, alloc[0], alloc[1], 0, 0x89, 0xe0, 0xc9],
            ARITH,
        ));
        out.push(case(rng, "push esp; pop", vec![0x54, 0x58 + a], ARITH));

        // LAHF/SAHF (valid in compatibility mode whatever CPUID says about 64-bit mode).
        out.push(case(rng, "lahf", vec![0x9f], ARITH));
        out.push(case(rng, "sahf", vec![0x9e], ARITH));

        // Strings with ESI/EDI/ECX.
        let op = [0xa4u8, 0xa5, 0xaa, 0xab, 0xac, 0xa6, 0xae][rng.below(7) as usize];
        let rep = [None, Some(0xf3u8), Some(0xf2)][rng.below(3) as usize];
        let mut body: Vec<u8> = rep.into_iter().collect();
        body.push(op);
        let mut c = case(rng, "string a32", body, ARITH | DF);
        let down = rng.below(2) == 0;
        c.flags = (c.flags & !DF) | if down { DF } else { 0 };
        c.gpr[6] = SCRATCH_VA + 0x400 + rng.below(0x100);
        c.gpr[7] = SCRATCH_VA + 0x900 + rng.below(0x100);
        c.gpr[1] = rng.below(20);
        out.push(c);
        let mut c = case(rng, "loop/jecxz", vec![0xe2, 0x00, 0xe3, 0x00], ARITH);
        c.gpr[1] = [0u64, 1, 2, 0xffff_ffff][rng.below(4) as usize];
        out.push(c);

        // Conversions, exchange, byte swap, LEA.
        let r = reg(rng, false);
        let body = [
            vec![0x99],
            vec![0x98],
            vec![0x66, 0x98],
            vec![0x90 + r.max(1)],
            vec![0x0f, 0xc8 + r],
            vec![0x8d, 0x44, 0x8e, rng.next() as u8], // lea eax, [esi+ecx*4+disp8]
        ][rng.below(6) as usize]
            .clone();
        out.push(case(rng, "cdq/cwde/xchg/bswap/lea", body, ARITH));
    }
    out
}
