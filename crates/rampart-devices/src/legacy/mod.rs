//! Legacy PC devices: 16550A UART, i8042 (reset line), CMOS RTC, ACPI power management port,
//! and the tiny ports Linux touches on a PC.
//!
//! All of them sit on the port-I/O bus; every access arrives from a vCPU thread with a
//! guest-chosen offset and size. The devices answer only byte-wide accesses at their own
//! registers: other writes are ignored and other reads return all-ones (0xff), except where a
//! device's documentation says otherwise. Nothing a guest does can make them panic, block
//! on an unbounded buffer, or stop the guest when the host side (a sink, an event) fails;
//! failures are counted and logged once.
//!
//! | device | ports (bus base, length) | interrupt / event |
//! |---|---|---|
//! | [`SerialDevice`] (COM1) | [`COM1_PORT`], [`SERIAL_PORT_LEN`] | [`COM1_IRQ`], an [`InterruptLine`](crate::irq::InterruptLine) |
//! | [`I8042DataPort`] | [`I8042_DATA_PORT`], 1 | — |
//! | [`SystemControlPortB`] | [`PORT_B`], 1 | — |
//! | [`I8042CommandPort`] | [`I8042_COMMAND_PORT`], 1 | reset `EventFd` |
//! | [`Cmos`] | [`CMOS_PORT`], [`CMOS_PORT_LEN`] | none (no IRQ 8, see [`cmos`]) |
//! | [`PostCodePort`] | [`POST_CODE_PORT`], 1 | — |
//! | [`AcpiPmPort`] | [`ACPI_PM_PORT`], [`ACPI_PM_PORT_LEN`] | power-off and reset `EventFd`s |
//!
//! Under `kvm` with an in-kernel PIT, the kernel claims port 0x61 (and the PIT and PICs'
//! ports) before any exit reaches user space; [`SystemControlPortB`] is there for `tcg` and
//! for a VM without an in-kernel PIT.

mod calendar;
pub mod cmos;
pub mod i8042;
pub mod pm;
pub mod ports;
pub mod serial;

use thiserror::Error;

pub use cmos::{host_unix_time, Cmos, CmosState, HostClock, CMOS_PORT_LEN, CMOS_SIZE};
pub use i8042::{I8042CommandPort, I8042DataPort};
pub use pm::{AcpiPmPort, ACPI_PM_PORT, ACPI_PM_PORT_LEN, ACPI_RESET_VALUE, ACPI_SLEEP_TYPE_S5};
pub use ports::{PitChannel2, PostCodePort, SystemControlPortB};
pub use serial::{SerialDevice, SerialSink, SERIAL_PORT_LEN};
pub use vm_superio::serial::SerialState;

/// First UART: base port and ISA interrupt.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
/// Second UART: base port and ISA interrupt.
pub const COM2_PORT: u16 = 0x2f8;
pub const COM2_IRQ: u32 = 3;
/// i8042 keyboard controller: data port and command/status port (one byte each).
pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_COMMAND_PORT: u16 = 0x64;
pub const I8042_PORT_LEN: u64 = 1;
/// System control port B (speaker, PIT channel 2 gate and output, NMI status).
pub const PORT_B: u16 = 0x61;
pub const PORT_B_LEN: u64 = 1;
/// CMOS index port (data port is the next one).
pub const CMOS_PORT: u16 = 0x70;
/// The RTC's ISA interrupt (not raised by [`Cmos`]; for the ACPI tables and future use).
pub const RTC_IRQ: u32 = 8;
/// POST code / I/O delay port.
pub const POST_CODE_PORT: u16 = 0x80;
pub const POST_CODE_PORT_LEN: u64 = 1;

/// Errors building legacy devices.
#[derive(Debug, Error)]
pub enum LegacyError {
    #[error("invalid saved UART state: {reason}")]
    SerialState { reason: String },
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::bus::{Bus, BusDevice};
    use crate::irq::test_util::{eventfd_pair, CountingLine};

    type Shared = Arc<Mutex<dyn BusDevice>>;

    fn dev(d: impl BusDevice + 'static) -> Shared {
        Arc::new(Mutex::new(d))
    }

    #[test]
    fn standard_pc_layout_fits_on_one_bus_and_routes_by_port() {
        // Arrange
        let bus = Bus::new();
        let (reset, reset_seen) = eventfd_pair();
        let (pm_reset, pm_reset_seen) = eventfd_pair();
        let (poweroff, poweroff_seen) = eventfd_pair();
        let line = Arc::new(CountingLine::default());
        let layout: Vec<(Shared, u16, u64)> = vec![
            (
                dev(SerialDevice::new(line, Box::new(io::sink()))),
                COM1_PORT,
                SERIAL_PORT_LEN,
            ),
            (dev(I8042DataPort::new()), I8042_DATA_PORT, I8042_PORT_LEN),
            (dev(SystemControlPortB::new()), PORT_B, PORT_B_LEN),
            (
                dev(I8042CommandPort::new(reset)),
                I8042_COMMAND_PORT,
                I8042_PORT_LEN,
            ),
            (dev(Cmos::new(1 << 30, 0)), CMOS_PORT, CMOS_PORT_LEN),
            (dev(PostCodePort::new()), POST_CODE_PORT, POST_CODE_PORT_LEN),
            (
                dev(AcpiPmPort::new(poweroff, pm_reset)),
                ACPI_PM_PORT,
                ACPI_PM_PORT_LEN,
            ),
        ];
        for (d, port, len) in layout {
            bus.insert(d, u64::from(port), len).unwrap();
        }
        let mut status_d = [0u8];
        // Act
        bus.write(0x64, &[0xfe]);
        bus.write(0x600, &[0x34]);
        bus.write(0x600, &[ACPI_RESET_VALUE]);
        bus.write(0x70, &[0x8d]);
        bus.read(0x71, &mut status_d);
        let wide_reaches_nothing = bus.read(0x60, &mut [0u8; 2]);
        // Assert
        assert_eq!(reset_seen.read().unwrap(), 1);
        assert_eq!(poweroff_seen.read().unwrap(), 1);
        assert_eq!(pm_reset_seen.read().unwrap(), 1);
        assert_eq!(status_d, [0x80]);
        assert!(!wide_reaches_nothing, "a 2-byte access straddles 0x60/0x61");
    }
}
