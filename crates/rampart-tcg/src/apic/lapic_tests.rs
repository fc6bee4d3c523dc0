//! Unit tests of the local APIC (kept apart from `lapic.rs` for size).

use super::lapic::*;
use super::*;

fn w(apic: &mut LocalApic, reg: u32, value: u32, now: u64) -> Option<ApicMessage> {
    apic.mmio_write(u64::from(reg), &value.to_le_bytes(), now)
}

fn r(apic: &mut LocalApic, reg: u32, now: u64) -> u32 {
    let mut b = [0u8; 4];
    apic.mmio_read(u64::from(reg), &mut b, now);
    u32::from_le_bytes(b)
}

/// A software-enabled xAPIC with spurious vector 0xff.
fn enabled(id: u32) -> LocalApic {
    let mut apic = LocalApic::new(id, id == 0);
    w(&mut apic, REG_SVR, 0x1ff, 0);
    apic
}

fn x2(id: u32) -> LocalApic {
    let mut apic = enabled(id);
    apic.write_msr(0x1b, APIC_BASE_ADDR | (1 << 11) | (1 << 10), 0)
        .expect("xAPIC to x2APIC");
    apic
}

fn fixed(vector: u8, level: bool) -> ApicMessage {
    ApicMessage {
        dest: Destination::Broadcast,
        vector,
        mode: DeliveryMode::Fixed,
        level_triggered: level,
        source_apic_id: 99,
    }
}

const LVT_MASK: u32 = 1 << 16;
const PERIODIC: u32 = 1 << 17;
const TSC_DEADLINE: u32 = 2 << 17;

// ---- registers ----------------------------------------------------------------------------

#[test]
fn power_on_register_values() {
    let mut apic = LocalApic::new(3, false);
    assert_eq!(apic.mode(), ApicMode::XApic);
    assert_eq!(r(&mut apic, REG_ID, 0), 3 << 24);
    assert_eq!(r(&mut apic, REG_VERSION, 0), 0x0005_0014);
    assert_eq!(r(&mut apic, REG_TPR, 0), 0);
    assert_eq!(r(&mut apic, REG_DFR, 0), u32::MAX);
    assert_eq!(r(&mut apic, REG_SVR, 0), 0xff);
    for lvt in (0x320..=0x370).step_by(16) {
        assert_eq!(r(&mut apic, lvt, 0), LVT_MASK, "LVT {lvt:#x}");
    }
    assert_eq!(apic.read_msr(0x1b, 0), Some(0xfee0_0800));
    assert_eq!(LocalApic::new(0, true).read_msr(0x1b, 0), Some(0xfee0_0900));
}

#[test]
fn xapic_id_is_writable_and_used_for_matching() {
    let mut apic = enabled(1);
    w(&mut apic, REG_ID, 0x0700_0000, 0);
    assert_eq!(apic.apic_id(), 7);
    assert!(apic.accepts(&Destination::Physical(7)));
    assert!(!apic.accepts(&Destination::Physical(1)));
}

#[test]
fn read_only_registers_ignore_writes() {
    let mut apic = enabled(0);
    apic.deliver(&fixed(0x40, false));
    for reg in [
        REG_VERSION,
        REG_PPR,
        REG_APR,
        0x200 + 0x20,
        REG_TIMER_CURRENT,
    ] {
        let before = r(&mut apic, reg, 0);
        w(&mut apic, reg, 0xdead_beef, 0);
        assert_eq!(r(&mut apic, reg, 0), before, "register {reg:#x}");
    }
}

#[test]
fn writable_registers_keep_only_their_bits() {
    let mut apic = enabled(0);
    w(&mut apic, REG_TPR, 0xffff_ffff, 0);
    assert_eq!(r(&mut apic, REG_TPR, 0), 0xff);
    w(&mut apic, REG_LDR, 0xffff_ffff, 0);
    assert_eq!(r(&mut apic, REG_LDR, 0), 0xff00_0000);
    w(&mut apic, REG_DFR, 0, 0);
    assert_eq!(r(&mut apic, REG_DFR, 0), 0x0fff_ffff);
    w(&mut apic, REG_SVR, 0xffff_ffff, 0);
    assert_eq!(r(&mut apic, REG_SVR, 0), 0x3ff);
    w(&mut apic, REG_ICR_HIGH, 0xffff_ffff, 0);
    assert_eq!(r(&mut apic, REG_ICR_HIGH, 0), 0xff00_0000);
    w(&mut apic, REG_LVT_TIMER, 0xffff_ffff, 0);
    assert_eq!(r(&mut apic, REG_LVT_TIMER, 0), 0x0007_00ff);
    w(&mut apic, REG_LVT_ERROR, 0xffff_ffff, 0);
    assert_eq!(r(&mut apic, REG_LVT_ERROR, 0), 0x0001_00ff);
    w(&mut apic, REG_TIMER_DIVIDE, 0xffff_ffff, 0);
    assert_eq!(r(&mut apic, REG_TIMER_DIVIDE, 0), 0xb);
}

#[test]
fn icr_delivery_status_always_reads_idle() {
    let mut apic = enabled(0);
    w(&mut apic, REG_ICR_HIGH, 1 << 24, 0);
    w(&mut apic, REG_ICR_LOW, 0x0000_10f0 | (1 << 12), 0);
    assert_eq!(r(&mut apic, REG_ICR_LOW, 0) & (1 << 12), 0);
    assert_eq!(r(&mut apic, REG_ICR_LOW, 0) & 0xff, 0xf0);
}

#[test]
fn software_disable_masks_lvts_and_keeps_them_masked() {
    let mut apic = enabled(0);
    w(&mut apic, REG_LVT_TIMER, 0xec, 0);
    assert_eq!(r(&mut apic, REG_LVT_TIMER, 0), 0xec);
    w(&mut apic, REG_SVR, 0xff, 0);
    assert_eq!(r(&mut apic, REG_LVT_TIMER, 0), 0xec | LVT_MASK);
    w(&mut apic, REG_LVT_TIMER, 0xec, 0);
    assert_eq!(r(&mut apic, REG_LVT_TIMER, 0), 0xec | LVT_MASK);
}

#[test]
fn software_disabled_apic_drops_fixed_but_takes_nmi_init_sipi() {
    let mut apic = LocalApic::new(0, true);
    assert_eq!(apic.deliver(&fixed(0x40, false)), Delivered::Ignored);
    assert_eq!(apic.interrupt_pending(), None);
    let mut nmi = fixed(0, false);
    nmi.mode = DeliveryMode::Nmi;
    assert_eq!(apic.deliver(&nmi), Delivered::Nmi);
    nmi.mode = DeliveryMode::StartUp(0x9a);
    assert_eq!(apic.deliver(&nmi), Delivered::Sipi(0x9a));
    nmi.mode = DeliveryMode::Init;
    assert_eq!(apic.deliver(&nmi), Delivered::Init);
}

// ---- priorities, IRR/ISR/TMR, EOI ----------------------------------------------------------

#[test]
fn fixed_interrupt_sets_irr_and_ack_moves_it_to_isr() {
    let mut apic = enabled(0);
    assert_eq!(apic.deliver(&fixed(0x41, false)), Delivered::Accepted);
    assert_eq!(r(&mut apic, 0x220, 0), 1 << 1);
    assert_eq!(apic.interrupt_pending(), Some(0x41));
    assert_eq!(apic.acknowledge(), Some(0x41));
    assert_eq!(r(&mut apic, 0x220, 0), 0);
    assert_eq!(r(&mut apic, 0x120, 0), 1 << 1);
    assert_eq!(r(&mut apic, REG_PPR, 0), 0x40);
    assert_eq!(apic.acknowledge(), None);
}

#[test]
fn level_triggered_interrupt_sets_tmr() {
    let mut apic = enabled(0);
    apic.deliver(&fixed(0x61, true));
    assert_eq!(r(&mut apic, 0x180 + 0x30, 0), 1 << 1);
    apic.deliver(&fixed(0x62, false));
    assert_eq!(r(&mut apic, 0x180 + 0x30, 0), 1 << 1);
}

#[test]
fn higher_class_preempts_same_class_waits() {
    let mut apic = enabled(0);
    apic.deliver(&fixed(0x51, false));
    assert_eq!(apic.acknowledge(), Some(0x51));
    apic.deliver(&fixed(0x5f, false));
    assert_eq!(apic.interrupt_pending(), None, "same class as in-service");
    apic.deliver(&fixed(0x60, false));
    assert_eq!(apic.interrupt_pending(), Some(0x60));
    assert_eq!(apic.acknowledge(), Some(0x60));
    w(&mut apic, REG_EOI, 0, 0);
    w(&mut apic, REG_EOI, 0, 0);
    assert_eq!(apic.interrupt_pending(), Some(0x5f));
}

#[test]
fn tpr_blocks_classes_at_or_below_it() {
    let mut apic = enabled(0);
    w(&mut apic, REG_TPR, 0x50, 0);
    apic.deliver(&fixed(0x5a, false));
    assert_eq!(apic.interrupt_pending(), None);
    assert_eq!(r(&mut apic, REG_PPR, 0), 0x50);
    w(&mut apic, REG_TPR, 0x4f, 0);
    assert_eq!(apic.interrupt_pending(), Some(0x5a));
}

#[test]
fn ppr_is_isr_class_when_above_tpr() {
    let mut apic = enabled(0);
    w(&mut apic, REG_TPR, 0x23, 0);
    apic.deliver(&fixed(0x87, false));
    apic.acknowledge();
    assert_eq!(r(&mut apic, REG_PPR, 0), 0x80);
    w(&mut apic, REG_TPR, 0x93, 0);
    assert_eq!(r(&mut apic, REG_PPR, 0), 0x93);
}

#[test]
fn arbitration_priority_follows_tpr_isr_irr() {
    let mut apic = enabled(0);
    w(&mut apic, REG_TPR, 0x30, 0);
    assert_eq!(r(&mut apic, REG_APR, 0), 0x30);
    apic.deliver(&fixed(0x70, false));
    assert_eq!(r(&mut apic, REG_APR, 0), 0x70);
}

#[test]
fn eoi_clears_highest_isr_bit() {
    let mut apic = enabled(0);
    apic.deliver(&fixed(0x30, false));
    apic.acknowledge();
    apic.deliver(&fixed(0xe0, false));
    apic.acknowledge();
    w(&mut apic, REG_EOI, 0, 0);
    assert_eq!(r(&mut apic, 0x100 + 0x70, 0), 0);
    assert_eq!(r(&mut apic, 0x100 + 0x10, 0), 1 << 16);
    assert_eq!(apic.take_eoi_broadcast(), None, "edge: no EOI broadcast");
}

#[test]
fn eoi_of_level_interrupt_is_broadcast_once() {
    let mut apic = enabled(0);
    apic.deliver(&fixed(0x33, true));
    apic.acknowledge();
    w(&mut apic, REG_EOI, 0, 0);
    assert_eq!(apic.take_eoi_broadcast(), Some(0x33));
    assert_eq!(apic.take_eoi_broadcast(), None);
    w(&mut apic, REG_EOI, 0, 0);
    assert_eq!(apic.take_eoi_broadcast(), None);
}

#[test]
fn illegal_vector_is_refused_and_reported_in_esr() {
    let mut apic = enabled(0);
    w(&mut apic, REG_LVT_ERROR, 0xfe, 0);
    assert_eq!(apic.deliver(&fixed(0x0f, false)), Delivered::Ignored);
    assert_eq!(r(&mut apic, REG_ESR, 0), 0, "ESR latches only on write");
    w(&mut apic, REG_ESR, 0, 0);
    assert_eq!(r(&mut apic, REG_ESR, 0), 1 << 6);
    assert_eq!(apic.interrupt_pending(), Some(0xfe), "error LVT fired");
    w(&mut apic, REG_ESR, 0, 0);
    assert_eq!(r(&mut apic, REG_ESR, 0), 0);
}

#[test]
fn sending_illegal_vector_sets_esr_and_sends_nothing() {
    let mut apic = enabled(0);
    assert_eq!(w(&mut apic, REG_ICR_LOW, 0x0000_0005, 0), None);
    w(&mut apic, REG_ESR, 0, 0);
    assert_eq!(r(&mut apic, REG_ESR, 0), 1 << 5);
}

// ---- timer -------------------------------------------------------------------------------------

#[test]
fn one_shot_timer_fires_once_at_its_deadline() {
    let mut apic = enabled(0);
    w(&mut apic, REG_TIMER_DIVIDE, 0b0011, 0); // divide by 16
    w(&mut apic, REG_LVT_TIMER, 0xec, 0);
    w(&mut apic, REG_TIMER_INITIAL, 1000, 100);
    assert_eq!(apic.next_deadline_ns(), Some(100 + 16_000));
    assert_eq!(r(&mut apic, REG_TIMER_CURRENT, 100 + 160), 990);
    apic.tick(16_099);
    assert_eq!(apic.interrupt_pending(), None);
    apic.tick(16_100);
    assert_eq!(apic.interrupt_pending(), Some(0xec));
    assert_eq!(apic.next_deadline_ns(), None);
    assert_eq!(r(&mut apic, REG_TIMER_CURRENT, 20_000), 0);
    assert_eq!(r(&mut apic, REG_TIMER_INITIAL, 20_000), 1000);
}

#[test]
fn periodic_timer_reloads() {
    let mut apic = enabled(0);
    w(&mut apic, REG_TIMER_DIVIDE, 0b1011, 0); // divide by 1
    w(&mut apic, REG_LVT_TIMER, 0xec | PERIODIC, 0);
    w(&mut apic, REG_TIMER_INITIAL, 500, 0);
    apic.tick(500);
    assert_eq!(apic.acknowledge(), Some(0xec));
    w(&mut apic, REG_EOI, 0, 500);
    assert_eq!(apic.next_deadline_ns(), Some(1000));
    assert_eq!(r(&mut apic, REG_TIMER_CURRENT, 600), 400);
    apic.tick(1000);
    assert_eq!(apic.interrupt_pending(), Some(0xec));
}

#[test]
fn initial_count_zero_stops_the_timer() {
    let mut apic = enabled(0);
    w(&mut apic, REG_LVT_TIMER, 0xec | PERIODIC, 0);
    w(&mut apic, REG_TIMER_INITIAL, 500, 0);
    w(&mut apic, REG_TIMER_INITIAL, 0, 10);
    assert_eq!(apic.next_deadline_ns(), None);
    apic.tick(1_000_000);
    assert_eq!(apic.interrupt_pending(), None);
}

#[test]
fn masked_timer_counts_but_does_not_fire_even_after_unmask() {
    let mut apic = enabled(0);
    w(&mut apic, REG_TIMER_DIVIDE, 0b1011, 0);
    w(&mut apic, REG_LVT_TIMER, 0xec | LVT_MASK, 0);
    w(&mut apic, REG_TIMER_INITIAL, 100, 0);
    assert_eq!(apic.next_deadline_ns(), None);
    assert_eq!(r(&mut apic, REG_TIMER_CURRENT, 40), 60);
    w(&mut apic, REG_LVT_TIMER, 0xec, 200); // unmasked after it expired
    apic.tick(300);
    assert_eq!(apic.interrupt_pending(), None);
}

#[test]
fn tsc_deadline_timer_fires_and_clears_the_msr() {
    let mut apic = enabled(0);
    w(&mut apic, REG_LVT_TIMER, 0xec | TSC_DEADLINE, 0);
    apic.write_msr(0x6e0, tsc_from_ns(5_000), 0).unwrap();
    assert_eq!(apic.read_msr(0x6e0, 0), Some(tsc_from_ns(5_000)));
    assert_eq!(apic.next_deadline_ns(), Some(5_000));
    apic.tick(4_999);
    assert_eq!(apic.interrupt_pending(), None);
    apic.tick(5_000);
    assert_eq!(apic.interrupt_pending(), Some(0xec));
    assert_eq!(apic.read_msr(0x6e0, 5_000), Some(0));
    assert_eq!(apic.next_deadline_ns(), None);
}

#[test]
fn tsc_deadline_in_the_past_fires_at_the_next_tick() {
    let mut apic = enabled(0);
    w(&mut apic, REG_LVT_TIMER, 0xec | TSC_DEADLINE, 0);
    apic.write_msr(0x6e0, 1, 1_000).unwrap();
    assert!(apic.next_deadline_ns().unwrap() <= 1_000);
    apic.tick(1_000);
    assert_eq!(apic.interrupt_pending(), Some(0xec));
}

#[test]
fn tsc_deadline_writes_ignored_outside_deadline_mode_and_mode_switch_disarms() {
    let mut apic = enabled(0);
    w(&mut apic, REG_LVT_TIMER, 0xec, 0);
    apic.write_msr(0x6e0, 1000, 0).unwrap();
    assert_eq!(apic.read_msr(0x6e0, 0), Some(0));
    w(&mut apic, REG_LVT_TIMER, 0xec | TSC_DEADLINE, 0);
    w(&mut apic, REG_TIMER_INITIAL, 1000, 0);
    assert_eq!(
        r(&mut apic, REG_TIMER_INITIAL, 0),
        0,
        "initial count ignored in deadline mode"
    );
    apic.write_msr(0x6e0, 1000, 0).unwrap();
    w(&mut apic, REG_LVT_TIMER, 0xec, 10);
    assert_eq!(apic.next_deadline_ns(), None);
    w(&mut apic, REG_LVT_TIMER, 0xec | TSC_DEADLINE, 10);
    assert_eq!(apic.read_msr(0x6e0, 10), Some(0));
}

#[test]
fn timer_with_illegal_vector_raises_an_error_instead() {
    let mut apic = enabled(0);
    w(&mut apic, REG_LVT_ERROR, 0xfe, 0);
    w(&mut apic, REG_LVT_TIMER, 0x05, 0);
    w(&mut apic, REG_TIMER_INITIAL, 1, 0);
    apic.tick(1_000);
    assert_eq!(apic.interrupt_pending(), Some(0xfe));
}

// ---- IPIs -------------------------------------------------------------------------------------

#[test]
fn icr_write_sends_fixed_ipi_to_physical_destination() {
    let mut apic = enabled(2);
    w(&mut apic, REG_ICR_HIGH, 5 << 24, 0);
    let msg = w(&mut apic, REG_ICR_LOW, 0xfd, 0).expect("IPI");
    assert_eq!(
        msg,
        ApicMessage {
            dest: Destination::Physical(5),
            vector: 0xfd,
            mode: DeliveryMode::Fixed,
            level_triggered: false,
            source_apic_id: 2,
        }
    );
}

#[test]
fn icr_shorthands_and_physical_broadcast() {
    let mut apic = enabled(2);
    let send = |apic: &mut LocalApic, low: u32| w(apic, REG_ICR_LOW, low, 0).unwrap().dest;
    assert_eq!(send(&mut apic, 0xfb | (1 << 18)), Destination::SelfOnly);
    assert_eq!(send(&mut apic, 0xfb | (2 << 18)), Destination::Broadcast);
    assert_eq!(
        send(&mut apic, 0xfb | (3 << 18)),
        Destination::AllExcludingSelf
    );
    w(&mut apic, REG_ICR_HIGH, 0xff << 24, 0);
    assert_eq!(send(&mut apic, 0xfb), Destination::Broadcast);
    assert_eq!(
        send(&mut apic, 0xfb | (1 << 11)),
        Destination::Logical(0xff)
    );
}

#[test]
fn shorthands_are_decided_against_the_sender() {
    let mut sender = enabled(2);
    let other = enabled(3);
    let self_ipi = w(&mut sender, REG_ICR_LOW, 0xf8 | (1 << 18), 0).unwrap();
    let all_but = w(&mut sender, REG_ICR_LOW, 0xf8 | (3 << 18), 0).unwrap();
    assert!(sender.accepts_message(&self_ipi));
    assert!(!other.accepts_message(&self_ipi));
    assert!(!sender.accepts_message(&all_but));
    assert!(other.accepts_message(&all_but));
    assert!(!other.accepts(&Destination::SelfOnly));
    assert_eq!(sender.deliver(&self_ipi), Delivered::Accepted);
    assert_eq!(sender.interrupt_pending(), Some(0xf8));
}

#[test]
fn init_sipi_sequence() {
    let mut bsp = enabled(0);
    let mut ap = enabled(1);
    w(&mut ap, REG_TPR, 0x20, 0);
    w(&mut bsp, REG_ICR_HIGH, 1 << 24, 0);
    // INIT assert (level, assert), then INIT de-assert (level, no assert), then two SIPIs.
    let init = w(&mut bsp, REG_ICR_LOW, 0x0000_c500, 0).expect("INIT");
    assert_eq!(init.mode, DeliveryMode::Init);
    assert_eq!(
        w(&mut bsp, REG_ICR_LOW, 0x0000_8500, 0),
        None,
        "de-assert sends nothing"
    );
    let sipi = w(&mut bsp, REG_ICR_LOW, 0x0000_069a, 0).expect("SIPI");
    assert_eq!(sipi.mode, DeliveryMode::StartUp(0x9a));
    assert!(ap.accepts_message(&init));
    assert_eq!(ap.deliver(&init), Delivered::Init);
    assert_eq!(r(&mut ap, REG_TPR, 0), 0, "INIT reset the APIC");
    assert_eq!(ap.apic_id(), 1);
    assert_eq!(ap.deliver(&sipi), Delivered::Sipi(0x9a));
}

#[test]
fn nmi_ipi() {
    let mut apic = enabled(0);
    let msg = w(&mut apic, REG_ICR_LOW, 0x400 | (3 << 18), 0).unwrap();
    assert_eq!(msg.mode, DeliveryMode::Nmi);
    assert_eq!(enabled(1).deliver(&msg), Delivered::Nmi);
}

#[test]
fn reserved_icr_delivery_modes_send_nothing() {
    let mut apic = enabled(0);
    assert_eq!(w(&mut apic, REG_ICR_LOW, 0x3f0, 0), None);
    assert_eq!(w(&mut apic, REG_ICR_LOW, 0x7f0, 0), None);
}

#[test]
fn lowest_priority_picks_the_least_busy_apic() {
    let mut a = enabled(0);
    let mut b = enabled(1);
    let c = enabled(2);
    w(&mut a, REG_TPR, 0x40, 0);
    w(&mut b, REG_TPR, 0x10, 0);
    w(&mut b, REG_LDR, 0x0200_0000, 0);
    let mut msg = fixed(0x30, false);
    msg.mode = DeliveryMode::LowestPriority;
    msg.dest = Destination::Physical(0xff);
    assert_eq!(
        lowest_priority_target(&msg, [(0, &a), (1, &b), (2, &c)]),
        Some(2)
    );
    msg.dest = Destination::Logical(0x03);
    assert_eq!(
        lowest_priority_target(&msg, [(0, &a), (1, &b), (2, &c)]),
        Some(1)
    );
    msg.dest = Destination::Physical(9);
    assert_eq!(lowest_priority_target(&msg, [(0, &a), (1, &b)]), None);
}

// ---- destination matching ------------------------------------------------------------------

#[test]
fn logical_flat_model_matches_any_common_bit() {
    let mut apic = enabled(0);
    w(&mut apic, REG_LDR, 0x0400_0000, 0);
    assert!(apic.accepts(&Destination::Logical(0x04)));
    assert!(apic.accepts(&Destination::Logical(0x0c)));
    assert!(!apic.accepts(&Destination::Logical(0x03)));
    assert!(apic.accepts(&Destination::Logical(0xff)));
}

#[test]
fn logical_cluster_model_matches_cluster_and_member() {
    let mut apic = enabled(0);
    w(&mut apic, REG_DFR, 0x0fff_ffff, 0);
    w(&mut apic, REG_LDR, 0x3200_0000, 0); // cluster 3, member bit 1
    assert!(apic.accepts(&Destination::Logical(0x32)));
    assert!(apic.accepts(&Destination::Logical(0x36)));
    assert!(!apic.accepts(&Destination::Logical(0x22)));
    assert!(!apic.accepts(&Destination::Logical(0x31)));
    assert!(
        apic.accepts(&Destination::Logical(0xf2)),
        "cluster 15: all clusters"
    );
}

#[test]
fn physical_matching_and_broadcast() {
    let apic = enabled(4);
    assert!(apic.accepts(&Destination::Physical(4)));
    assert!(!apic.accepts(&Destination::Physical(5)));
    assert!(apic.accepts(&Destination::Physical(0xff)));
    assert!(apic.accepts(&Destination::Broadcast));
}

#[test]
fn x2apic_logical_id_is_derived_from_the_apic_id() {
    let mut apic = x2(0x23); // cluster 2, member 3
    assert_eq!(apic.read_msr(0x80d, 0), Some((2 << 16) | (1 << 3)));
    assert!(apic.accepts(&Destination::Logical((2 << 16) | (1 << 3))));
    assert!(apic.accepts(&Destination::Logical((2 << 16) | 0xffff)));
    assert!(!apic.accepts(&Destination::Logical((1 << 16) | (1 << 3))));
    assert!(apic.accepts(&Destination::Logical(u32::MAX)));
    assert!(apic.accepts(&Destination::Physical(0x23)));
    assert!(apic.accepts(&Destination::Physical(u32::MAX)));
    assert!(!apic.accepts(&Destination::Physical(0x123)));
}

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

/// xorshift64*: a small deterministic generator for the property test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

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
