//! Unit tests of the local APIC: IA32_APIC_BASE, x2APIC MSR rules, INIT, and hostile input.

use super::lapic::*;
use super::lapic_tests::{enabled, fixed, r, w, x2};
use super::*;

// ---- x2APIC and IA32_APIC_BASE -------------------------------------------------------------

#[test]
fn x2apic_registers_through_msrs() {
    let mut apic = x2(0x1_0005);
    assert_eq!(apic.apic_id(), 0x1_0005);
    assert_eq!(apic.read_msr(0x802, 0), Some(0x1_0005));
    assert_eq!(apic.read_msr(0x803, 0), Some(0x0005_0014));
    apic.write_msr(0x808, 0x20, 0).unwrap();
    assert_eq!(apic.read_msr(0x808, 0), Some(0x20));
    assert_eq!(apic.read_msr(0x80f, 0), Some(0x1ff));
    let mut b = [0xffu8; 4];
    apic.mmio_read(0x20, &mut b, 0);
    assert_eq!(b, [0; 4], "no MMIO in x2APIC mode");
    assert_eq!(apic.mmio_base(), None);
}

#[test]
fn x2apic_icr_is_one_64bit_msr_with_32bit_destination() {
    let mut apic = x2(1);
    let msg = apic
        .write_msr(0x830, (0x1_0002u64 << 32) | 0xfd, 0)
        .unwrap()
        .unwrap();
    assert_eq!(msg.dest, Destination::Physical(0x1_0002));
    assert_eq!(apic.read_msr(0x830, 0), Some((0x1_0002u64 << 32) | 0xfd));
    let msg = apic
        .write_msr(0x830, (0xffu64 << 32) | 0xfd, 0)
        .unwrap()
        .unwrap();
    assert_eq!(
        msg.dest,
        Destination::Physical(0xff),
        "0xff is an ID in x2APIC"
    );
    let msg = apic
        .write_msr(0x830, (u64::from(u32::MAX) << 32) | 0xfd, 0)
        .unwrap()
        .unwrap();
    assert_eq!(msg.dest, Destination::Broadcast);
    assert_eq!(apic.write_msr(0x830, 1 << 13 | 0xfd, 0), Err(()));
    assert_eq!(apic.write_msr(0x830, 1 << 20 | 0xfd, 0), Err(()));
}

#[test]
fn x2apic_self_ipi_msr() {
    let mut apic = x2(7);
    let msg = apic.write_msr(0x83f, 0xf6, 0).unwrap().unwrap();
    assert_eq!(msg.dest, Destination::SelfOnly);
    assert_eq!(msg.vector, 0xf6);
    assert_eq!(msg.source_apic_id, 7);
    assert!(apic.accepts_message(&msg));
    assert_eq!(apic.read_msr(0x83f, 0), None, "write-only");
    assert_eq!(apic.write_msr(0x83f, 0x1f6, 0), Err(()));
}

#[test]
fn x2apic_access_rules_raise_gp() {
    let mut apic = x2(1);
    // write-only / absent registers
    for msr in [
        0x80b, 0x809, 0x80c, 0x80e, 0x831, 0x83f, 0x800, 0x82f, 0x8ff,
    ] {
        assert_eq!(apic.read_msr(msr, 0), None, "read {msr:#x}");
    }
    // read-only registers
    for msr in [0x802, 0x803, 0x80a, 0x80d, 0x810, 0x818, 0x820, 0x839] {
        assert_eq!(apic.write_msr(msr, 0, 0), Err(()), "write {msr:#x}");
    }
    assert_eq!(
        apic.write_msr(0x80e, u64::from(u32::MAX), 0),
        Err(()),
        "no DFR"
    );
    assert_eq!(apic.write_msr(0x80b, 1, 0), Err(()), "EOI non-zero");
    assert_eq!(apic.write_msr(0x828, 1, 0), Err(()), "ESR non-zero");
    assert_eq!(
        apic.write_msr(0x808, 1 << 32, 0),
        Err(()),
        "upper half reserved"
    );
    assert_eq!(apic.write_msr(0x80b, 0, 0), Ok(None));
    assert_eq!(apic.write_msr(0x828, 0, 0), Ok(None));
}

#[test]
fn x2apic_msrs_raise_gp_in_xapic_mode() {
    let mut apic = enabled(0);
    assert_eq!(apic.read_msr(0x802, 0), None);
    assert_eq!(apic.write_msr(0x808, 0, 0), Err(()));
    assert_eq!(apic.read_msr(0x10, 0), None, "not an APIC MSR");
    assert!(LocalApic::is_apic_msr(0x1b));
    assert!(LocalApic::is_apic_msr(0x6e0));
    assert!(LocalApic::is_apic_msr(0x8ff));
    assert!(!LocalApic::is_apic_msr(0x900));
}

#[test]
fn apic_base_rejects_reserved_bits_and_invalid_transitions() {
    let mut apic = enabled(0);
    let base = APIC_BASE_ADDR;
    assert_eq!(
        apic.write_msr(0x1b, base | (1 << 11) | 1, 0),
        Err(()),
        "bit 0"
    );
    assert_eq!(
        apic.write_msr(0x1b, base | (1 << 11) | (1 << 9), 0),
        Err(()),
        "bit 9"
    );
    assert_eq!(
        apic.write_msr(0x1b, base | (1 << 11) | (1 << 50), 0),
        Err(()),
        "beyond MAXPHYADDR"
    );
    assert_eq!(
        apic.write_msr(0x1b, base | (1 << 10), 0),
        Err(()),
        "EXTD without EN"
    );
    apic.write_msr(0x1b, base | (3 << 10), 0).unwrap();
    assert_eq!(
        apic.write_msr(0x1b, base | (1 << 11), 0),
        Err(()),
        "x2APIC to xAPIC"
    );
    apic.write_msr(0x1b, base, 0).unwrap();
    assert_eq!(apic.mode(), ApicMode::Disabled);
    assert_eq!(
        apic.write_msr(0x1b, base | (3 << 10), 0),
        Err(()),
        "disabled to x2APIC"
    );
    apic.write_msr(0x1b, base | (1 << 11), 0).unwrap();
    assert_eq!(apic.mode(), ApicMode::XApic);
}

#[test]
fn apic_base_bsp_bit_is_read_only() {
    let mut apic = LocalApic::new(1, false);
    apic.write_msr(0x1b, APIC_BASE_ADDR | (1 << 11) | (1 << 8), 0)
        .unwrap();
    assert_eq!(apic.read_msr(0x1b, 0), Some(APIC_BASE_ADDR | (1 << 11)));
}

#[test]
fn hardware_disabled_apic_accepts_nothing_and_reenables_in_power_up_state() {
    let mut apic = enabled(0);
    w(&mut apic, REG_TPR, 0x30, 0);
    apic.deliver(&fixed(0x40, false));
    apic.write_msr(0x1b, APIC_BASE_ADDR, 0).unwrap();
    assert!(!apic.accepts(&Destination::Broadcast));
    assert_eq!(apic.deliver(&fixed(0x41, false)), Delivered::Ignored);
    assert_eq!(apic.interrupt_pending(), None);
    assert_eq!(r(&mut apic, REG_VERSION, 0), 0, "no MMIO page");
    apic.write_msr(0x1b, APIC_BASE_ADDR | (1 << 11), 0).unwrap();
    assert_eq!(r(&mut apic, REG_TPR, 0), 0);
    assert_eq!(r(&mut apic, REG_SVR, 0), 0xff);
    assert_eq!(apic.interrupt_pending(), None);
}

#[test]
fn init_keeps_x2apic_mode_and_id() {
    let mut apic = x2(9);
    apic.write_msr(0x808, 0x40, 0).unwrap();
    apic.reset();
    assert_eq!(apic.mode(), ApicMode::X2Apic);
    assert_eq!(apic.read_msr(0x802, 0), Some(9));
    assert_eq!(apic.read_msr(0x808, 0), Some(0));
}

// ---- hostile input ---------------------------------------------------------------------------

#[test]
fn hostile_mmio_sizes_and_offsets_never_panic() {
    let mut apic = enabled(0);
    for offset in (0..0x1010u64).chain([0xfff, 0xffc, u64::MAX, u64::MAX - 3, 1 << 40]) {
        for len in [0usize, 1, 2, 3, 4, 8, 16] {
            let mut b = vec![0x5au8; len];
            apic.mmio_read(offset, &mut b, offset);
            if len != 4 || offset % 16 != 0 || offset >= 0x1000 {
                assert!(b.iter().all(|&x| x == 0), "offset {offset:#x} len {len}");
            }
            let _ = apic.mmio_write(offset, &[0xff; 16][..len], offset);
        }
    }
}

#[test]
fn odd_sized_writes_change_nothing() {
    let mut apic = enabled(0);
    apic.mmio_write(u64::from(REG_TPR), &[0x70], 0);
    apic.mmio_write(u64::from(REG_TPR), &[0x70, 0, 0, 0, 0, 0, 0, 0], 0);
    apic.mmio_write(u64::from(REG_TPR) + 1, &[0x70, 0, 0, 0], 0);
    assert_eq!(r(&mut apic, REG_TPR, 0), 0);
}

use crate::testutil::Rng;

#[test]
fn random_register_writes_never_panic_and_keep_invariants() {
    for seed in 1..=8u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut apic = LocalApic::new((seed as u32) % 4, seed == 1);
        let mut now = 0u64;
        for _ in 0..20_000 {
            let x = rng.next();
            let v = rng.next();
            now = now.saturating_add(x % 4096);
            match x % 11 {
                0..=3 => {
                    let off = ((x >> 8) % 0x1000) & !0xf;
                    let _ = apic.mmio_write(off, &(v as u32).to_le_bytes(), now);
                }
                4 => {
                    let msr = 0x800 + ((x >> 8) % 0x100) as u32;
                    let _ = apic.write_msr(msr, v, now);
                    let _ = apic.read_msr(msr, now);
                }
                5 => {
                    let msr = [0x1b, 0x6e0][(x >> 8) as usize % 2];
                    let _ = apic.write_msr(msr, v & 0xffff_ffff_ffff, now);
                }
                6 => {
                    let msg = ApicMessage {
                        dest: Destination::Physical((v >> 8) as u32 % 8),
                        vector: v as u8,
                        mode: [DeliveryMode::Fixed, DeliveryMode::Nmi, DeliveryMode::Init]
                            [(v >> 40) as usize % 3],
                        level_triggered: v & (1 << 20) != 0,
                        source_apic_id: 0,
                    };
                    let _ = apic.accepts_message(&msg);
                    let _ = apic.deliver(&msg);
                }
                7 => {
                    let _ = apic.acknowledge();
                }
                8 => apic.tick(now),
                9 => {
                    let mut b = [0u8; 4];
                    apic.mmio_read(((x >> 8) % 0x1000) & !0xf, &mut b, now);
                }
                _ => while apic.take_eoi_broadcast().is_some() {},
            }
            if let Some(v) = apic.interrupt_pending() {
                assert!(v & 0xf0 > apic.processor_priority() & 0xf0);
                assert!(v >= 16);
            }
            if let Some(d) = apic.next_deadline_ns() {
                let _ = d;
            }
        }
    }
}
