//! The i8042 keyboard controller, reduced to what a VM needs: its CPU reset line.
//!
//! `vm_superio::I8042Device` pulses its reset event when the guest writes the "pulse reset
//! line" command (0xFE) to the command port; everything else reads as 0 (no data, input
//! buffer empty, so `kb_wait`-style loops finish at once) and is otherwise ignored. Linux finds
//! no keyboard on it and moves on.
//!
//! The controller is placed on the bus as **two ranges of one port each**:
//! [`I8042DataPort`] at 0x60 and [`I8042CommandPort`] at 0x64, so that port 0x61 (system
//! control port B, [`super::SystemControlPortB`]) can sit between them.

use tracing::{debug, warn};
use vm_superio::I8042Device;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::irq::LineTrigger;

/// Offset of the command/status register in vm-superio's model, which expects one range
/// starting at 0x60.
const SUPERIO_COMMAND_OFFSET: u8 = 4;

/// The i8042 data port (0x60). Reads 0; writes (keyboard commands) are ignored.
#[derive(Debug, Default)]
pub struct I8042DataPort;

impl I8042DataPort {
    pub fn new() -> Self {
        Self
    }
}

impl BusDevice for I8042DataPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset != 0 || data.len() != 1 {
            debug!(offset, len = data.len(), "i8042 data: ignoring odd read");
            data.fill(0xff);
            return;
        }
        data[0] = 0;
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        debug!(offset, ?data, "i8042 data: write ignored");
    }
}

/// The i8042 command/status port (0x64): status reads 0, command 0xFE pulses the reset event.
pub struct I8042CommandPort {
    device: I8042Device<LineTrigger>,
    reset_errors: u64,
}

impl I8042CommandPort {
    /// A command port that signals `reset_evt` (polled by the VMM) on the reset command.
    pub fn new(reset_evt: EventFd) -> Self {
        Self::from_device(I8042Device::new(LineTrigger::from_eventfd(reset_evt)))
    }

    /// Wraps an already built vm-superio device.
    pub fn from_device(device: I8042Device<LineTrigger>) -> Self {
        Self {
            device,
            reset_errors: 0,
        }
    }
}

impl BusDevice for I8042CommandPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset != 0 || data.len() != 1 {
            debug!(offset, len = data.len(), "i8042 command: ignoring odd read");
            data.fill(0xff);
            return;
        }
        data[0] = self.device.read(SUPERIO_COMMAND_OFFSET);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let value = match (offset, data) {
            (0, [value]) => *value,
            _ => {
                debug!(
                    offset,
                    len = data.len(),
                    "i8042 command: ignoring odd write"
                );
                return;
            }
        };
        if value == CMD_PULSE_RESET {
            debug!("i8042: guest requested a CPU reset");
        }
        if let Err(e) = self.device.write(SUPERIO_COMMAND_OFFSET, value) {
            self.reset_errors = self.reset_errors.saturating_add(1);
            if self.reset_errors == 1 {
                warn!(error = %e, "i8042: cannot signal the reset event");
            }
        }
    }
}

/// The command that pulses the CPU reset line.
const CMD_PULSE_RESET: u8 = 0xfe;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::test_util::eventfd_pair;

    #[test]
    fn reset_command_signals_the_reset_event() {
        // Arrange
        let (evt, observer) = eventfd_pair();
        let mut port = I8042CommandPort::new(evt);
        // Act
        port.write(0, &[0xfe]);
        // Assert
        assert_eq!(observer.read().unwrap(), 1);
    }

    #[test]
    fn other_commands_do_not_reset() {
        // Arrange
        let (evt, observer) = eventfd_pair();
        let mut port = I8042CommandPort::new(evt);
        // Act
        port.write(0, &[0x20]);
        port.write(0, &[0xfd]);
        port.write(0, &[0xfe, 0xfe]);
        port.write(1, &[0xfe]);
        // Assert
        assert!(observer.read().is_err(), "no event pending");
    }

    #[test]
    fn status_reads_idle_controller() {
        // Arrange
        let (evt, _observer) = eventfd_pair();
        let mut port = I8042CommandPort::new(evt);
        let mut status = [0xaau8];
        // Act
        port.read(0, &mut status);
        // Assert
        assert_eq!(
            status[0] & 0x03,
            0,
            "output buffer empty, input buffer empty"
        );
    }

    #[test]
    fn data_port_reads_zero_and_ignores_writes() {
        // Arrange
        let mut port = I8042DataPort::new();
        let mut b = [0xaau8];
        // Act
        port.write(0, &[0xfe]);
        port.read(0, &mut b);
        // Assert
        assert_eq!(b[0], 0);
    }

    #[test]
    fn hostile_accesses_do_not_panic() {
        // Arrange
        let (evt, observer) = eventfd_pair();
        let mut cmd = I8042CommandPort::new(evt);
        let mut data = I8042DataPort::new();
        let mut wide = [0u8; 8];
        // Act
        cmd.read(100, &mut wide[..1]);
        cmd.read(0, &mut wide);
        cmd.write(u64::MAX, &[0xfe]);
        data.read(0, &mut wide);
        data.write(7, &[1, 2, 3]);
        // Assert
        assert_eq!(wide, [0xff; 8]);
        assert!(observer.read().is_err(), "no reset from hostile accesses");
    }
}
