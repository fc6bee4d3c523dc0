//! The direct 64-bit effective-address computation against iced's generic evaluator.

use crate::cpu::{Cpu, SegReg};
use iced_x86::{Decoder, DecoderOptions, OpKind};

#[test]
fn direct_address_matches_iced_for_random_memory_operands() {
    let mut rng = crate::testutil::Rng(0x0add_7e55);
    let mut cpu = Cpu::new();
    cpu.enter_long_mode_flat(0x1000);
    let mut checked = 0;
    for _ in 0..200_000 {
        for r in cpu.gpr.iter_mut() {
            *r = rng.next();
        }
        cpu.seg[SegReg::Fs as usize].base = rng.next();
        cpu.seg[SegReg::Gs as usize].base = rng.next();
        let bytes: Vec<u8> = (0..15).map(|_| rng.next() as u8).collect();
        let ip = rng.next();
        let instr = Decoder::with_ip(64, &bytes, ip, DecoderOptions::NONE).decode();
        if instr.is_invalid() {
            continue;
        }
        for op in 0..instr.op_count() {
            if instr.op_kind(op) != OpKind::Memory {
                continue;
            }
            let want = instr.virtual_address(op, 0, |r, _, _| {
                Some(if r.is_segment_register() {
                    cpu.seg_base(r)
                } else {
                    cpu.reg(r)
                })
            });
            if let Some(got) = cpu.la64(&instr, op) {
                assert_eq!(
                    Some(got),
                    want,
                    "{:?} {bytes:02x?} base {:?} index {:?} seg {:?} disp {:#x} dsize {}",
                    instr.code(),
                    instr.memory_base(),
                    instr.memory_index(),
                    instr.memory_segment(),
                    instr.memory_displacement64(),
                    instr.memory_displ_size()
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked > 10_000,
        "only {checked} operands took the direct path"
    );
}
