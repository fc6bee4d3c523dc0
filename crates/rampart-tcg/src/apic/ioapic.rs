//! The I/O APIC, after the Intel 82093AA datasheet: IOREGSEL at offset 0x00, IOWIN at 0x10;
//! ID, version, arbitration ID and 24 redirection entries (vector, delivery mode, destination
//! mode, polarity, remote IRR, trigger mode, mask, destination).
//!
//! Pin levels given to [`IoApic::set_irq`] are logical (asserted or not): the board applies
//! polarity, so the polarity bit is stored but not interpreted. Edge interrupts arriving on a
//! masked pin are lost, as on the 82093AA; level pins are re-evaluated when unmasked.

use tracing::{debug, trace};

use super::{ApicMessage, DeliveryMode, Destination};

/// Number of redirection entries (pins).
pub const IOAPIC_PINS: usize = 24;
/// Version register: max redirection entry 23, version 0x11 (no EOI register).
pub const IOAPIC_VERSION: u32 = ((IOAPIC_PINS as u32 - 1) << 16) | 0x11;

const OFF_IOREGSEL: u64 = 0x00;
const OFF_IOWIN: u64 = 0x10;
const REG_ID: u8 = 0x00;
const REG_VERSION: u8 = 0x01;
const REG_ARB: u8 = 0x02;
const REG_REDTBL: u8 = 0x10;

const RTE_DEST_LOGICAL: u64 = 1 << 11;
const RTE_REMOTE_IRR: u64 = 1 << 14;
const RTE_LEVEL: u64 = 1 << 15;
const RTE_MASKED: u64 = 1 << 16;
/// Guest-writable bits: vector, delivery mode, destination mode, polarity, trigger, mask,
/// destination (delivery status and remote IRR are read-only).
const RTE_WRITABLE: u64 = 0xff00_0000_0001_afff;

/// The machine's I/O APIC.
#[derive(Debug, Clone)]
pub struct IoApic {
    id: u8,
    regsel: u8,
    redtbl: [u64; IOAPIC_PINS],
    /// Logical input level of each pin.
    asserted: [bool; IOAPIC_PINS],
}

impl IoApic {
    /// An I/O APIC with ID `id` (4 bits are kept), 24 pins, all masked, edge, vector 0.
    pub fn new(id: u8) -> Self {
        IoApic {
            id: id & 0xf,
            regsel: 0,
            redtbl: [RTE_MASKED; IOAPIC_PINS],
            asserted: [false; IOAPIC_PINS],
        }
    }

    /// The redirection entry of `pin` (for tests and `info` commands).
    pub fn redirection_entry(&self, pin: u32) -> Option<u64> {
        self.redtbl.get(pin as usize).copied()
    }

    fn read_register(&self, reg: u8) -> u32 {
        match reg {
            REG_ID | REG_ARB => u32::from(self.id) << 24,
            REG_VERSION => IOAPIC_VERSION,
            r if r >= REG_REDTBL && usize::from(r - REG_REDTBL) < IOAPIC_PINS * 2 => {
                let entry = self.redtbl[usize::from((r - REG_REDTBL) / 2)];
                if r & 1 == 0 {
                    entry as u32
                } else {
                    (entry >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    /// A read at `offset` in the I/O APIC page: IOREGSEL (any size up to 4, low bytes), IOWIN
    /// (32-bit only); zeros elsewhere.
    pub fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let value = match (offset, data.len()) {
            (OFF_IOREGSEL, 1..=4) => u32::from(self.regsel),
            (OFF_IOWIN, 4) => self.read_register(self.regsel),
            _ => {
                trace!(offset, len = data.len(), "ignored I/O APIC read");
                return;
            }
        };
        let n = data.len();
        data.copy_from_slice(&value.to_le_bytes()[..n]);
    }

    /// A write at `offset`: IOREGSEL takes the low byte of any write up to 4 bytes; IOWIN
    /// takes 32-bit writes to the ID or a redirection entry half. Unmasking a pending level
    /// pin delivers it.
    pub fn mmio_write(&mut self, offset: u64, data: &[u8]) -> Vec<ApicMessage> {
        match (offset, data.len()) {
            (OFF_IOREGSEL, 1..=4) => {
                self.regsel = data[0];
                Vec::new()
            }
            (OFF_IOWIN, 4) => {
                let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                self.write_register(self.regsel, value)
            }
            _ => {
                trace!(offset, len = data.len(), "ignored I/O APIC write");
                Vec::new()
            }
        }
    }

    fn write_register(&mut self, reg: u8, value: u32) -> Vec<ApicMessage> {
        match reg {
            REG_ID => self.id = ((value >> 24) & 0xf) as u8,
            r if r >= REG_REDTBL && usize::from(r - REG_REDTBL) < IOAPIC_PINS * 2 => {
                let pin = usize::from((r - REG_REDTBL) / 2);
                let old = self.redtbl[pin];
                let merged = if r & 1 == 0 {
                    (old & !0xffff_ffff) | u64::from(value)
                } else {
                    (old & 0xffff_ffff) | (u64::from(value) << 32)
                };
                let mut entry = (merged & RTE_WRITABLE) | (old & RTE_REMOTE_IRR);
                if entry & RTE_LEVEL == 0 {
                    // Switching to edge clears remote IRR (Linux's EOI for version 0x11).
                    entry &= !RTE_REMOTE_IRR;
                }
                self.redtbl[pin] = entry;
                trace!(pin, entry, "I/O APIC redirection entry");
                return self.service_level(pin).into_iter().collect();
            }
            _ => trace!(reg, value, "write to read-only I/O APIC register ignored"),
        }
        Vec::new()
    }

    /// Delivers a level pin that is asserted, unmasked and not awaiting EOI; sets remote IRR.
    fn service_level(&mut self, pin: usize) -> Option<ApicMessage> {
        let entry = self.redtbl[pin];
        if entry & RTE_LEVEL == 0
            || entry & (RTE_MASKED | RTE_REMOTE_IRR) != 0
            || !self.asserted[pin]
        {
            return None;
        }
        let msg = self.message(pin)?;
        self.redtbl[pin] |= RTE_REMOTE_IRR;
        Some(msg)
    }

    /// The bus message for `pin`'s entry; `None` for reserved delivery modes.
    fn message(&self, pin: usize) -> Option<ApicMessage> {
        let entry = self.redtbl[pin];
        let vector = entry as u8;
        let mode = match (entry >> 8) & 7 {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            7 => DeliveryMode::ExtInt,
            other => {
                debug!(
                    pin,
                    mode = other,
                    "I/O APIC pin with reserved delivery mode"
                );
                return None;
            }
        };
        let dest_field = (entry >> 56) as u32;
        let dest = if entry & RTE_DEST_LOGICAL != 0 {
            Destination::Logical(dest_field)
        } else if dest_field == 0xff {
            Destination::Broadcast
        } else {
            Destination::Physical(dest_field)
        };
        Some(ApicMessage {
            dest,
            vector,
            mode,
            level_triggered: entry & RTE_LEVEL != 0,
            source_apic_id: u32::from(self.id),
        })
    }

    /// Sets the logical level of `pin`. Edge-triggered: a rising edge on an unmasked pin
    /// delivers. Level-triggered: an asserted, unmasked pin without remote IRR delivers and
    /// sets remote IRR. Pins past 23 are ignored.
    pub fn set_irq(&mut self, pin: u32, level: bool) -> Option<ApicMessage> {
        let Some(&was) = self.asserted.get(pin as usize) else {
            debug!(pin, "interrupt on a nonexistent I/O APIC pin");
            return None;
        };
        let pin = pin as usize;
        self.asserted[pin] = level;
        let entry = self.redtbl[pin];
        if entry & RTE_LEVEL != 0 {
            return self.service_level(pin);
        }
        if level && !was && entry & RTE_MASKED == 0 {
            return self.message(pin);
        }
        None
    }

    /// An edge on `pin`: assert then de-assert.
    pub fn pulse_irq(&mut self, pin: u32) -> Option<ApicMessage> {
        let msg = self.set_irq(pin, true);
        let _ = self.set_irq(pin, false);
        msg
    }

    /// A local APIC broadcast the EOI of level-triggered `vector`: clears remote IRR of every
    /// pin with that vector and re-delivers those still asserted (and unmasked).
    pub fn eoi(&mut self, vector: u8) -> Vec<ApicMessage> {
        let mut out = Vec::new();
        for pin in 0..IOAPIC_PINS {
            let entry = self.redtbl[pin];
            if entry & RTE_REMOTE_IRR == 0 || entry as u8 != vector {
                continue;
            }
            self.redtbl[pin] &= !RTE_REMOTE_IRR;
            out.extend(self.service_level(pin));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_reg(io: &mut IoApic, reg: u8, value: u32) -> Vec<ApicMessage> {
        io.mmio_write(0, &[reg]);
        io.mmio_write(0x10, &value.to_le_bytes())
    }

    fn read_reg(io: &mut IoApic, reg: u8) -> u32 {
        io.mmio_write(0, &u32::from(reg).to_le_bytes());
        let mut b = [0u8; 4];
        io.mmio_read(0x10, &mut b);
        u32::from_le_bytes(b)
    }

    /// Programs `pin` with `low` and destination `dest`.
    fn program(io: &mut IoApic, pin: u8, low: u32, dest: u8) -> Vec<ApicMessage> {
        write_reg(io, 0x11 + pin * 2, u32::from(dest) << 24);
        write_reg(io, 0x10 + pin * 2, low)
    }

    const LEVEL: u32 = 1 << 15;
    const MASK: u32 = 1 << 16;

    #[test]
    fn identification_registers() {
        let mut io = IoApic::new(4);
        assert_eq!(read_reg(&mut io, 0), 4 << 24);
        assert_eq!(read_reg(&mut io, 1), 0x0017_0011);
        assert_eq!(read_reg(&mut io, 2), 4 << 24);
        write_reg(&mut io, 0, 0x0900_0000);
        assert_eq!(read_reg(&mut io, 0), 9 << 24);
        write_reg(&mut io, 1, 0);
        assert_eq!(read_reg(&mut io, 1), IOAPIC_VERSION);
        assert_eq!(read_reg(&mut io, 0x40), 0);
    }

    #[test]
    fn all_pins_start_masked() {
        let mut io = IoApic::new(1);
        for pin in 0..24u8 {
            assert_eq!(read_reg(&mut io, 0x10 + pin * 2), MASK);
            assert_eq!(read_reg(&mut io, 0x11 + pin * 2), 0);
        }
        assert_eq!(io.pulse_irq(4), None);
    }

    #[test]
    fn edge_pin_delivers_on_rising_edge_only() {
        let mut io = IoApic::new(1);
        program(&mut io, 4, 0x24, 0);
        let msg = io.set_irq(4, true).expect("delivered");
        assert_eq!(msg.vector, 0x24);
        assert_eq!(msg.dest, Destination::Physical(0));
        assert_eq!(msg.mode, DeliveryMode::Fixed);
        assert!(!msg.level_triggered);
        assert_eq!(io.set_irq(4, true), None);
        assert_eq!(io.set_irq(4, false), None);
        assert!(io.pulse_irq(4).is_some());
    }

    #[test]
    fn masked_edge_is_lost_not_latched() {
        let mut io = IoApic::new(1);
        program(&mut io, 4, 0x24 | MASK, 0);
        assert_eq!(io.pulse_irq(4), None);
        assert!(program(&mut io, 4, 0x24, 0).is_empty());
    }

    #[test]
    fn level_pin_waits_for_eoi_and_redelivers_while_asserted() {
        let mut io = IoApic::new(1);
        program(&mut io, 10, 0x30 | LEVEL, 1);
        let msg = io.set_irq(10, true).expect("delivered");
        assert!(msg.level_triggered);
        assert_ne!(
            read_reg(&mut io, 0x10 + 20) & (1 << 14),
            0,
            "remote IRR set"
        );
        assert_eq!(io.set_irq(10, true), None, "remote IRR blocks");
        assert_eq!(io.eoi(0x31), vec![], "other vector");
        assert_eq!(io.eoi(0x30), vec![msg], "still asserted: again");
        io.set_irq(10, false);
        assert_eq!(io.eoi(0x30), vec![]);
        assert_eq!(read_reg(&mut io, 0x10 + 20) & (1 << 14), 0);
    }

    #[test]
    fn unmasking_an_asserted_level_pin_delivers() {
        let mut io = IoApic::new(1);
        program(&mut io, 5, 0x40 | LEVEL | MASK, 0);
        assert_eq!(io.set_irq(5, true), None);
        let out = program(&mut io, 5, 0x40 | LEVEL, 0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].vector, 0x40);
    }

    #[test]
    fn remote_irr_is_read_only_and_cleared_by_switching_to_edge() {
        let mut io = IoApic::new(1);
        program(&mut io, 3, 0x50 | LEVEL, 0);
        io.set_irq(3, true);
        write_reg(&mut io, 0x16, 0x50 | LEVEL); // writing 0 to bit 14 does nothing
        assert_ne!(read_reg(&mut io, 0x16) & (1 << 14), 0);
        write_reg(&mut io, 0x16, 0x50 | MASK); // edge + masked (Linux's EOI for 0x11)
        assert_eq!(read_reg(&mut io, 0x16) & (1 << 14), 0);
        let out = write_reg(&mut io, 0x16, 0x50 | LEVEL);
        assert_eq!(
            out.len(),
            1,
            "still asserted after the remote IRR was cleared"
        );
    }

    #[test]
    fn destination_modes_and_broadcast() {
        let mut io = IoApic::new(1);
        program(&mut io, 1, 0x21 | (1 << 11), 0x03);
        assert_eq!(io.pulse_irq(1).unwrap().dest, Destination::Logical(3));
        program(&mut io, 1, 0x21, 0xff);
        assert_eq!(io.pulse_irq(1).unwrap().dest, Destination::Broadcast);
        program(&mut io, 1, 0x21 | (4 << 8), 2);
        assert_eq!(io.pulse_irq(1).unwrap().mode, DeliveryMode::Nmi);
        program(&mut io, 1, 0x21 | (1 << 8), 2);
        assert_eq!(io.pulse_irq(1).unwrap().mode, DeliveryMode::LowestPriority);
        program(&mut io, 1, 0x21 | (3 << 8), 2);
        assert_eq!(io.pulse_irq(1), None, "reserved delivery mode");
    }

    #[test]
    fn ignores_nonexistent_pins_and_registers() {
        let mut io = IoApic::new(1);
        assert_eq!(io.set_irq(24, true), None);
        assert_eq!(io.pulse_irq(u32::MAX), None);
        assert!(write_reg(&mut io, 0x10 + 48, 0).is_empty());
        assert_eq!(read_reg(&mut io, 0xff), 0);
    }

    #[test]
    fn hostile_mmio_never_panics_and_reads_zero() {
        let mut io = IoApic::new(1);
        for offset in [
            0u64,
            1,
            3,
            0xf,
            0x10,
            0x11,
            0x20,
            0x40,
            0xffc,
            0xfff,
            u64::MAX,
        ] {
            for len in [0usize, 1, 2, 3, 4, 8, 16] {
                let mut b = vec![0xaau8; len];
                io.mmio_read(offset, &mut b);
                if offset != 0 && !(offset == 0x10 && len == 4) {
                    assert!(b.iter().all(|&x| x == 0), "offset {offset:#x} len {len}");
                }
                io.mmio_write(offset, &b);
            }
        }
    }

    #[test]
    fn redirection_entry_reserved_bits_are_not_stored() {
        let mut io = IoApic::new(1);
        write_reg(&mut io, 0x10, u32::MAX);
        write_reg(&mut io, 0x11, u32::MAX);
        assert_eq!(io.redirection_entry(0), Some(RTE_WRITABLE));
        assert_eq!(io.redirection_entry(24), None);
    }
}
