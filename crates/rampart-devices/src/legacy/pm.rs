//! The ACPI power-management port of a hardware-reduced ACPI machine.
//!
//! One 8-bit I/O port, [`ACPI_PM_PORT`], serves as both FADT registers a hardware-reduced
//! platform needs:
//! - the **sleep control register**: writing `SLP_EN | SLP_TYP << 2` with
//!   `SLP_TYP == ACPI_SLEEP_TYPE_S5` powers the machine off (the DSDT's `_S5` package must
//!   carry [`ACPI_SLEEP_TYPE_S5`]);
//! - the **reset register**: writing [`ACPI_RESET_VALUE`] resets the machine.
//!
//! It also stands for the sleep status register: reads return 0 (WAK_STS is never needed as
//! no sleep state but S5 is offered). Other values, e.g. the WAK_STS clear that precedes a
//! sleep, are ignored.

use tracing::{debug, info, warn};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::irq::InterruptLine;

/// The I/O port of the sleep control, sleep status and reset registers.
pub const ACPI_PM_PORT: u16 = 0x600;
/// Length of the register (and of its bus range), in bytes.
pub const ACPI_PM_PORT_LEN: u64 = 1;
/// The sleep type value of S5 (soft off) in the sleep control register and in `_S5`.
pub const ACPI_SLEEP_TYPE_S5: u8 = 5;
/// The value the FADT tells the guest to write to the reset register.
pub const ACPI_RESET_VALUE: u8 = 0x01;

/// Sleep control register: SLP_EN (bit 5) and SLP_TYP (bits 2..=4).
const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;

/// What a write to the port asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PmRequest {
    PowerOff,
    Reset,
    Ignored,
}

fn decode(value: u8) -> PmRequest {
    let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
    if value & SLP_EN != 0 && sleep_type == ACPI_SLEEP_TYPE_S5 {
        PmRequest::PowerOff
    } else if value == ACPI_RESET_VALUE {
        PmRequest::Reset
    } else {
        PmRequest::Ignored
    }
}

/// The ACPI power-management port: signals the VMM's power-off and reset events.
pub struct AcpiPmPort {
    poweroff_evt: EventFd,
    reset_evt: EventFd,
    signal_errors: u64,
}

impl AcpiPmPort {
    /// A port that signals `poweroff_evt` on S5 and `reset_evt` on the reset value; the VMM
    /// polls both.
    pub fn new(poweroff_evt: EventFd, reset_evt: EventFd) -> Self {
        Self {
            poweroff_evt,
            reset_evt,
            signal_errors: 0,
        }
    }
}

/// Pulses `evt`, logging only the first failure (`errors` counts them all).
fn signal(what: &str, evt: &EventFd, errors: &mut u64) {
    if let Err(e) = InterruptLine::trigger(evt) {
        *errors = errors.saturating_add(1);
        if *errors == 1 {
            warn!(error = %e, what, "ACPI PM: cannot signal the VMM");
        }
    }
}

impl BusDevice for AcpiPmPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset != 0 || data.len() != 1 {
            debug!(offset, len = data.len(), "ACPI PM: odd read");
        }
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let value = match (offset, data) {
            (0, [value]) => *value,
            _ => {
                debug!(offset, len = data.len(), "ACPI PM: ignoring odd write");
                return;
            }
        };
        match decode(value) {
            PmRequest::PowerOff => {
                info!("ACPI PM: guest requested power-off (S5)");
                signal("power-off", &self.poweroff_evt, &mut self.signal_errors);
            }
            PmRequest::Reset => {
                info!("ACPI PM: guest requested a reset");
                signal("reset", &self.reset_evt, &mut self.signal_errors);
            }
            PmRequest::Ignored => debug!(value, "ACPI PM: ignoring write"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::test_util::eventfd_pair;

    struct Harness {
        port: AcpiPmPort,
        poweroff: EventFd,
        reset: EventFd,
    }

    fn harness() -> Harness {
        let (p, poweroff) = eventfd_pair();
        let (r, reset) = eventfd_pair();
        Harness {
            port: AcpiPmPort::new(p, r),
            poweroff,
            reset,
        }
    }

    #[test]
    fn s5_sleep_signals_poweroff() {
        // Arrange
        let mut h = harness();
        let value = SLP_EN | (ACPI_SLEEP_TYPE_S5 << SLP_TYP_SHIFT);
        // Act
        h.port.write(0, &[value]);
        // Assert
        assert_eq!(value, 0x34);
        assert_eq!(h.poweroff.read().unwrap(), 1);
        assert!(h.reset.read().is_err());
    }

    #[test]
    fn reset_value_signals_reset() {
        // Arrange
        let mut h = harness();
        // Act
        h.port.write(0, &[ACPI_RESET_VALUE]);
        // Assert
        assert_eq!(h.reset.read().unwrap(), 1);
        assert!(h.poweroff.read().is_err());
    }

    #[test]
    fn garbage_and_other_sleep_states_are_ignored() {
        // Arrange
        let mut h = harness();
        // Act
        for value in [
            0x00,
            0x80,
            0x14,
            0x20 | (3 << 2),
            ACPI_SLEEP_TYPE_S5 << 2,
            !SLP_EN,
        ] {
            h.port.write(0, &[value]);
        }
        h.port.write(0, &[0x34, 0x00]);
        h.port.write(1, &[0x34]);
        h.port.write(0, &[]);
        // Assert
        assert!(h.poweroff.read().is_err());
        assert!(h.reset.read().is_err());
    }

    #[test]
    fn reads_return_zero() {
        // Arrange
        let mut h = harness();
        let mut b = [0xaau8];
        let mut wide = [0xaau8; 8];
        // Act
        h.port.read(0, &mut b);
        h.port.read(5, &mut wide);
        // Assert
        assert_eq!(b, [0]);
        assert_eq!(wide, [0; 8]);
    }

    #[test]
    fn exported_constants_match_the_register_layout() {
        assert_eq!(ACPI_PM_PORT, 0x600);
        assert_eq!(ACPI_RESET_VALUE, 0x01);
        assert_eq!(decode(ACPI_RESET_VALUE), PmRequest::Reset);
        assert_eq!(
            decode(0x20 | (ACPI_SLEEP_TYPE_S5 << 2)),
            PmRequest::PowerOff
        );
    }
}
