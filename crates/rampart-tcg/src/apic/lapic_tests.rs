//! Unit tests of the local APIC: registers, priorities, EOI, timer, IPIs, destination
//! matching (kept apart from `lapic.rs` for size; MSR, x2APIC and hostile-input tests are in
//! `lapic_msr_tests.rs`).

use super::lapic::*;
use super::*;

pub(super) fn w(apic: &mut LocalApic, reg: u32, value: u32, now: u64) -> Option<ApicMessage> {
    apic.mmio_write(u64::from(reg), &value.to_le_bytes(), now)
}

pub(super) fn r(apic: &mut LocalApic, reg: u32, now: u64) -> u32 {
    let mut b = [0u8; 4];
    apic.mmio_read(u64::from(reg), &mut b, now);
    u32::from_le_bytes(b)
}

/// A software-enabled xAPIC with spurious vector 0xff.
pub(super) fn enabled(id: u32) -> LocalApic {
    let mut apic = LocalApic::new(id, id == 0);
    w(&mut apic, REG_SVR, 0x1ff, 0);
    apic
}

pub(super) fn x2(id: u32) -> LocalApic {
    let mut apic = enabled(id);
    apic.write_msr(0x1b, APIC_BASE_ADDR | (1 << 11) | (1 << 10), 0)
        .expect("xAPIC to x2APIC");
    apic
}

pub(super) fn fixed(vector: u8, level: bool) -> ApicMessage {
    ApicMessage {
        dest: Destination::Broadcast,
        vector,
        mode: DeliveryMode::Fixed,
        level_triggered: level,
        source_apic_id: 99,
    }
}

pub(super) const LVT_MASK: u32 = 1 << 16;
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

#[test]
fn cr8_view_of_the_task_priority() {
    let mut apic = enabled(0);
    apic.set_task_priority(0x50);
    assert_eq!(r(&mut apic, REG_TPR, 0), 0x50);
    w(&mut apic, REG_TPR, 0x6a, 0);
    assert_eq!(apic.task_priority(), 0x6a);
}
