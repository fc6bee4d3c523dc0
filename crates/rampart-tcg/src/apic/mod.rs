//! The interrupt controllers and clocks that `kvm` keeps in the kernel, for the software CPU.
//!
//! Everything here is pure logic: no threads, no host clocks. Time comes in as `now_ns`,
//! nanoseconds of VM time, so every behaviour is deterministic and unit-tested.
//!
//! - [`LocalApic`] (`lapic.rs`, timer in `timer.rs`): one per vCPU. xAPIC registers through
//!   MMIO at [`APIC_BASE_ADDR`], x2APIC through MSRs 0x800..=0x8ff, `IA32_APIC_BASE` and
//!   `IA32_TSC_DEADLINE`; priorities (TPR/PPR/ISR), EOI, the timer in one-shot, periodic and
//!   TSC-deadline modes, IPIs (an ICR write yields an [`ApicMessage`] for the embedder to route).
//! - [`IoApic`] (`ioapic.rs`): the 82093AA-style I/O APIC, 24 pins, at [`IOAPIC_BASE_ADDR`].
//! - `time.rs`: the guest TSC ([`TSC_HZ`], [`tsc_from_ns`], [`ns_from_tsc`]), [`KvmClock`] and
//!   the CPUID leaves to advertise ([`paravirt_cpuid`], [`cpuid_bits`]).
//!
//! # Routing
//!
//! The embedder owns all local APICs (one per vCPU thread) and routes each [`ApicMessage`]:
//! for every local APIC with [`LocalApic::accepts_message`], call [`LocalApic::deliver`]. For
//! lowest-priority delivery it may instead pick one target with [`lowest_priority_target`].
//! [`LocalApic::accepts`] alone cannot decide the sender-relative shorthands
//! ([`Destination::SelfOnly`], [`Destination::AllExcludingSelf`]): it answers `false` for them.
//!
//! A guest controls every register value here; nothing it writes can panic or loop unbounded.

mod ioapic;
mod lapic;
mod time;
mod timer;

#[cfg(test)]
mod lapic_msr_tests;
#[cfg(test)]
mod lapic_tests;

pub use ioapic::{IoApic, IOAPIC_PINS, IOAPIC_VERSION};
pub use lapic::{ApicMode, LocalApic, APIC_VERSION};
pub use time::{
    cpuid_bits, ns_from_tsc, paravirt_cpuid, tsc_from_ns, KvmClock, KVM_CPUID_FEATURES,
    KVM_CPUID_SIGNATURE, KVM_FEATURE_CLOCKSOURCE2, KVM_FEATURE_CLOCKSOURCE_STABLE_BIT,
    MSR_KVM_SYSTEM_TIME, MSR_KVM_SYSTEM_TIME_NEW, MSR_KVM_WALL_CLOCK, MSR_KVM_WALL_CLOCK_NEW,
    PVCLOCK_TSC_STABLE_BIT, TSC_HZ,
};
pub use timer::APIC_TIMER_TICK_NS;

/// Default guest-physical base of the local APIC page (xAPIC mode).
pub const APIC_BASE_ADDR: u64 = 0xfee0_0000;
/// Guest-physical base of the I/O APIC.
pub const IOAPIC_BASE_ADDR: u64 = 0xfec0_0000;

/// Where an APIC-bus message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Destination {
    /// One APIC ID (8 bits in xAPIC format, 32 in x2APIC); 0xffff_ffff is a broadcast to all.
    Physical(u32),
    /// A logical destination mask (flat or cluster model in xAPIC, cluster in x2APIC).
    Logical(u32),
    /// All local APICs, the sender included.
    Broadcast,
    /// All local APICs but the sender ([`ApicMessage::source_apic_id`]).
    AllExcludingSelf,
    /// Only the sender ([`ApicMessage::source_apic_id`]).
    SelfOnly,
}

/// How an APIC-bus message is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryMode {
    Fixed,
    LowestPriority,
    Smi,
    Nmi,
    Init,
    /// Start-up IPI with its vector (the real-mode start page number).
    StartUp(u8),
    ExtInt,
}

/// An interrupt message on the APIC bus (from the I/O APIC, an MSI, or an IPI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApicMessage {
    pub dest: Destination,
    pub vector: u8,
    pub mode: DeliveryMode,
    pub level_triggered: bool,
    /// The sending local APIC's ID (for the shorthands); for I/O APIC messages the I/O APIC's ID.
    pub source_apic_id: u32,
}

impl ApicMessage {
    /// The message a PCI MSI/MSI-X write of `data` to `address` puts on the APIC bus:
    /// address 0xfee0_0000 | destination ID (bits 19:12) | destination mode (bit 2, logical);
    /// data = vector (7:0) | delivery mode (10:8) | trigger mode (bit 15, level). `None` when
    /// the address is not in the interrupt window or the delivery mode is reserved. Physical
    /// destination 0xff is a broadcast. The extended destination ID is not supported.
    pub fn from_msi(address: u64, data: u32) -> Option<ApicMessage> {
        if address & !0xf_ffff != APIC_BASE_ADDR {
            return None;
        }
        let vector = data as u8;
        let mode = match (data >> 8) & 7 {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            7 => DeliveryMode::ExtInt,
            _ => return None,
        };
        let dest_id = ((address >> 12) & 0xff) as u32;
        let dest = if address & (1 << 2) != 0 {
            Destination::Logical(dest_id)
        } else if dest_id == 0xff {
            Destination::Broadcast
        } else {
            Destination::Physical(dest_id)
        };
        Some(ApicMessage {
            dest,
            vector,
            mode,
            level_triggered: data & (1 << 15) != 0,
            source_apic_id: u32::MAX,
        })
    }
}

/// What a local APIC did with a message, for the vCPU that owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// A fixed (or lowest-priority) interrupt was latched in the IRR.
    Accepted,
    /// The CPU must take an NMI.
    Nmi,
    /// The CPU must go through INIT (the local APIC has already reset itself) and wait for a SIPI.
    Init,
    /// Start-up IPI with this vector (only meaningful to a CPU waiting for one).
    Sipi(u8),
    /// Dropped (APIC disabled, illegal vector, SMI or ExtINT, which this machine does not have).
    Ignored,
}

/// Picks the local APIC that takes a lowest-priority message: among `candidates` (an index of
/// the embedder's choosing and the APIC), the accepting one with the lowest arbitration
/// priority; ties go to the first. `None` if nobody accepts.
pub fn lowest_priority_target<'a, I>(msg: &ApicMessage, candidates: I) -> Option<usize>
where
    I: IntoIterator<Item = (usize, &'a LocalApic)>,
{
    candidates
        .into_iter()
        .filter(|(_, apic)| apic.accepts_message(msg))
        .min_by_key(|(_, apic)| apic.arbitration_priority())
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msi_message_decodes_destination_vector_and_mode() {
        let msg = ApicMessage::from_msi(0xfee0_3000, 0x0000_4041).expect("MSI");
        assert_eq!(msg.dest, Destination::Physical(3));
        assert_eq!(msg.vector, 0x41);
        assert_eq!(msg.mode, DeliveryMode::Fixed);
        assert!(!msg.level_triggered);
        let logical = ApicMessage::from_msi(0xfee0_5004, 0x0000_8122).expect("MSI");
        assert_eq!(logical.dest, Destination::Logical(5));
        assert_eq!(logical.mode, DeliveryMode::LowestPriority);
        assert!(logical.level_triggered);
        let all = ApicMessage::from_msi(0xfeef_f000, 0x0000_0430).expect("MSI");
        assert_eq!(all.dest, Destination::Broadcast);
        assert_eq!(all.mode, DeliveryMode::Nmi);
    }

    #[test]
    fn rejects_msi_outside_the_interrupt_window_or_with_reserved_mode() {
        assert_eq!(ApicMessage::from_msi(0xfed0_0000, 0x41), None);
        assert_eq!(ApicMessage::from_msi(0x1_fee0_0000, 0x41), None);
        assert_eq!(ApicMessage::from_msi(0xfee0_0000, 0x341), None);
        assert_eq!(
            ApicMessage::from_msi(0xfee0_0000, 0x641),
            None,
            "SIPI is not an MSI mode"
        );
    }

    /// The whole level-triggered path: I/O APIC → local APIC (TMR) → EOI broadcast → remote
    /// IRR cleared → re-delivered while the line stays asserted.
    #[test]
    fn level_interrupt_round_trip_through_eoi_broadcast() {
        let mut lapic = LocalApic::new(0, true);
        lapic.mmio_write(0xf0, &0x1ffu32.to_le_bytes(), 0);
        let mut io = IoApic::new(1);
        io.mmio_write(0, &[0x10 + 2 * 9]);
        io.mmio_write(0x10, &(0x39u32 | (1 << 15)).to_le_bytes());
        let msg = io.set_irq(9, true).expect("level pin delivers");
        assert!(lapic.accepts_message(&msg));
        assert_eq!(lapic.deliver(&msg), Delivered::Accepted);
        assert_eq!(lapic.acknowledge(), Some(0x39));
        lapic.mmio_write(0xb0, &[0; 4], 0);
        let v = lapic.take_eoi_broadcast().expect("level EOI is broadcast");
        let again = io.eoi(v);
        assert_eq!(again, vec![msg], "line still asserted");
        io.set_irq(9, false);
        lapic.deliver(&again[0]);
        lapic.acknowledge();
        lapic.mmio_write(0xb0, &[0; 4], 0);
        assert_eq!(io.eoi(lapic.take_eoi_broadcast().unwrap()), vec![]);
    }
}
