//! Address-size (0x67) and operand-size (0x66) prefix forms in 64-bit mode: 32-bit effective
//! addresses (truncated, the upper halves of the base and index ignored), ESI/EDI/ECX in string
//! instructions and LOOP/JECXZ (zero-extended writes), LEA of every address/operand size pair,
//! and 16-bit PUSH/POP. These exercise the address-size rules the interpreter shares with
//! 32-bit protected mode without leaving 64-bit mode on the host.

use super::gen::{Rng, ARITH, DF};
use super::layout::SCRATCH_VA;
use super::Case;

/// RSI with garbage in the upper half and the low half pointing into the scratch page (the
/// scratch page lies below 4 GiB).
fn esi_with_garbage(rng: &mut Rng, off: u64) -> u64 {
    (rng.next() << 32) | (SCRATCH_VA + off)
}

pub fn address_size(rng: &mut Rng, n: usize) -> Vec<Case> {
    let mut out = Vec::new();
    // [esi + ecx]: mov eax, m; add eax, m; add m, eax; mov m8, al; with an index that wraps
    // the 32-bit sum below the base.
    let forms: [(&str, &[u8], u64); 4] = [
        ("mov r32, [esi+ecx]", &[0x67, 0x8b, 0x04, 0x0e], 0),
        ("add r32, [esi+ecx]", &[0x67, 0x03, 0x04, 0x0e], ARITH),
        ("add [esi+ecx], r32", &[0x67, 0x01, 0x04, 0x0e], ARITH),
        ("mov [esi+ecx], r8", &[0x67, 0x88, 0x04, 0x0e], 0),
    ];
    for (name, body, mask) in forms {
        for _ in 0..n {
            let mut c = Case::new(name.into(), body.to_vec(), rng);
            c.gpr[6] = esi_with_garbage(rng, 0x800);
            c.gpr[1] = if rng.below(2) == 0 {
                rng.below(0x100)
            } else {
                (rng.below(0x100) as u32).wrapping_neg() as u64 | (rng.next() << 32)
            };
            out.push(c.mask(mask));
        }
    }
    // LEA: 32-bit address with 64/32/16-bit destinations, 64-bit address into 16 bits.
    let leas: [(&str, &[u8]); 4] = [
        (
            "lea rax, [esi+ecx*4+disp8]",
            &[0x67, 0x48, 0x8d, 0x44, 0x8e, 0x7f],
        ),
        ("lea eax, [esi+ecx]", &[0x67, 0x8d, 0x04, 0x0e]),
        ("lea ax, [esi+ecx]", &[0x66, 0x67, 0x8d, 0x04, 0x0e]),
        ("lea ax, [rsi+rcx]", &[0x66, 0x8d, 0x04, 0x0e]),
    ];
    for (name, body) in leas {
        for _ in 0..n {
            out.push(Case::new(name.into(), body.to_vec(), rng).mask(ARITH));
        }
    }
    // String instructions with ESI/EDI/ECX.
    let strings: [(&str, &[u8]); 4] = [
        ("movsb a32", &[0x67, 0xa4]),
        ("rep movsd a32", &[0xf3, 0x67, 0xa5]),
        ("rep stosw a32", &[0xf3, 0x66, 0x67, 0xab]),
        ("repe cmpsb a32", &[0xf3, 0x67, 0xa6]),
    ];
    for (name, body) in strings {
        for _ in 0..n {
            let mut c = Case::new(name.into(), body.to_vec(), rng);
            let down = rng.below(2) == 0;
            c.flags = (c.flags & !DF) | if down { DF } else { 0 };
            let (s, d) = (0x400 + rng.below(0x100), 0xa00 + rng.below(0x100));
            c.gpr[6] = esi_with_garbage(rng, s);
            c.gpr[7] = esi_with_garbage(rng, d);
            // A count of at least one: with ECX zero, whether the upper halves of RCX, RSI and
            // RDI are cleared differs between CPU models (cleared on an "Intel Xeon
            // Processor" host, kept on the one this test was written on), so no host is the
            // oracle for it.
            c.gpr[1] = (rng.next() << 32) | (1 + rng.below(23));
            out.push(c.mask(ARITH | DF));
        }
    }
    // LOOP / JECXZ with ECX (the branch goes to the next instruction either way).
    let loops: [(&str, &[u8]); 2] = [
        ("loop ecx", &[0x67, 0xe2, 0x00]),
        ("jecxz", &[0x67, 0xe3, 0x00]),
    ];
    for (name, body) in loops {
        for _ in 0..n {
            let mut c = Case::new(name.into(), body.to_vec(), rng);
            c.gpr[1] = (rng.next() << 32) | [0u64, 1, 2, 0xffff_ffff][rng.below(4) as usize];
            out.push(c.mask(ARITH));
        }
    }
    // 16-bit PUSH/POP (operand-size prefix): push imm8 as a word, pop into a word register.
    for _ in 0..n {
        let imm = rng.next() as u8;
        let body = vec![
            0x66, 0x6a, imm, 0x66, 0x5b, 0x66, 0x50, 0x66, 0x8f, 0x46, 0x10,
        ];
        let mut c = Case::new("push/pop word".into(), body, rng);
        c.gpr[6] = SCRATCH_VA + 0x100;
        out.push(c.mask(ARITH));
    }
    out
}
