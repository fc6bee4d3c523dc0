//! Tiny PC ports: the POST code port (0x80) and system control port B (0x61).

use std::sync::Arc;

use tracing::{debug, trace};

use crate::bus::BusDevice;

/// Port 0x80: BIOS POST codes, and Linux's classic I/O delay (`outb(0, 0x80)`).
///
/// Writes are remembered (the last code is handy when a firmware hangs) and otherwise
/// ignored; reads return the last code written.
#[derive(Debug, Default)]
pub struct PostCodePort {
    last: u8,
}

impl PostCodePort {
    pub fn new() -> Self {
        Self::default()
    }

    /// The last POST code the guest wrote.
    pub fn last_code(&self) -> u8 {
        self.last
    }
}

impl BusDevice for PostCodePort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == 0 && data.len() == 1 {
            data[0] = self.last;
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Some firmware writes 16 bits; keep the low byte, never more than the access carries.
        if let (0, Some(&code)) = (offset, data.first()) {
            trace!(code, "POST code");
            self.last = code;
        }
    }
}

/// PIT channel 2, as seen by port 0x61: its gate input and its output.
///
/// The `tcg` accelerator's user-space PIT implements this; under `kvm` the in-kernel PIT
/// (when created) claims port 0x61 itself and this device is never reached.
pub trait PitChannel2: Send + Sync {
    /// Sets the channel 2 gate (port 0x61 bit 0).
    fn set_gate(&self, high: bool);
    /// The channel 2 output (port 0x61 bit 5).
    fn output(&self) -> bool;
}

/// Port 0x61, system control port B (speaker and PIT channel 2 gate, NMI status).
///
/// Reads: bits 0-3 are what the guest wrote (channel 2 gate, speaker data, parity and
/// channel-check NMI disables), bit 4 (memory refresh) toggles on every read, bit 5 is the
/// PIT channel 2 output, bits 6-7 (I/O channel check, parity error) are always clear, so
/// Linux's NMI handler never sees a spurious hardware error.
///
/// Without a [`PitChannel2`] the channel 2 output follows the gate. Linux's slow PIT
/// calibration loop (`while (!(inb(0x61) & 0x20))`) then ends at once, sees too few
/// iterations and falls back to another clock source instead of hanging.
#[derive(Default)]
pub struct SystemControlPortB {
    control: u8,
    refresh: bool,
    pit: Option<Arc<dyn PitChannel2>>,
}

const CONTROL_BITS: u8 = 0x0f;
const GATE2: u8 = 0x01;
const REFRESH: u8 = 0x10;
const OUT2: u8 = 0x20;

impl SystemControlPortB {
    /// Port B without a PIT behind it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Port B wired to a PIT's channel 2.
    pub fn with_pit(pit: Arc<dyn PitChannel2>) -> Self {
        Self {
            pit: Some(pit),
            ..Self::default()
        }
    }

    fn value(&mut self) -> u8 {
        self.refresh = !self.refresh;
        let gate = self.control & GATE2 != 0;
        let out = match &self.pit {
            Some(pit) => pit.output(),
            None => gate,
        };
        let mut v = self.control & CONTROL_BITS;
        if self.refresh {
            v |= REFRESH;
        }
        if out {
            v |= OUT2;
        }
        v
    }
}

impl BusDevice for SystemControlPortB {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == 0 && data.len() == 1 {
            data[0] = self.value();
        } else {
            debug!(offset, len = data.len(), "port 0x61: ignoring odd read");
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let value = match (offset, data) {
            (0, [value]) => *value,
            _ => {
                debug!(offset, len = data.len(), "port 0x61: ignoring odd write");
                return;
            }
        };
        self.control = value & CONTROL_BITS;
        if let Some(pit) = &self.pit {
            pit.set_gate(value & GATE2 != 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn read(dev: &mut dyn BusDevice) -> u8 {
        let mut b = [0u8];
        dev.read(0, &mut b);
        b[0]
    }

    #[test]
    fn post_code_port_remembers_the_last_code() {
        // Arrange
        let mut port = PostCodePort::new();
        // Act
        port.write(0, &[0x00]);
        port.write(0, &[0x55]);
        // Assert
        assert_eq!(port.last_code(), 0x55);
        assert_eq!(read(&mut port), 0x55);
    }

    #[test]
    fn post_code_port_survives_hostile_accesses() {
        // Arrange
        let mut port = PostCodePort::new();
        let mut wide = [0u8; 8];
        // Act
        port.write(0, &[]);
        port.write(9, &[1]);
        port.write(0, &[0x12, 0x34, 0x56, 0x78]);
        port.read(0, &mut wide);
        // Assert
        assert_eq!(port.last_code(), 0x12);
        assert_eq!(wide, [0xff; 8]);
    }

    #[test]
    fn port_b_reports_no_nmi_errors_and_toggles_refresh() {
        // Arrange
        let mut port = SystemControlPortB::new();
        port.write(0, &[0xff]);
        // Act
        let a = read(&mut port);
        let b = read(&mut port);
        // Assert
        assert_eq!(a & 0xc0, 0, "no parity or I/O channel check error");
        assert_eq!(a & 0x0f, 0x0f, "control bits read back");
        assert_ne!(a & REFRESH, b & REFRESH, "refresh toggles");
    }

    #[test]
    fn port_b_output_follows_gate_without_a_pit() {
        // Arrange
        let mut port = SystemControlPortB::new();
        // Act
        port.write(0, &[0x00]);
        let low = read(&mut port);
        port.write(0, &[0x01]);
        let high = read(&mut port);
        // Assert
        assert_eq!(low & OUT2, 0);
        assert_eq!(high & OUT2, OUT2);
    }

    #[derive(Default)]
    struct FakePit {
        gate: AtomicBool,
        out: AtomicBool,
    }

    impl PitChannel2 for FakePit {
        fn set_gate(&self, high: bool) {
            self.gate.store(high, Ordering::SeqCst);
        }
        fn output(&self) -> bool {
            self.out.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn port_b_drives_the_pit_gate_and_reads_its_output() {
        // Arrange
        let pit = Arc::new(FakePit::default());
        let mut port = SystemControlPortB::with_pit(pit.clone());
        // Act
        port.write(0, &[0x03]);
        let before = read(&mut port);
        pit.out.store(true, Ordering::SeqCst);
        let after = read(&mut port);
        // Assert
        assert!(pit.gate.load(Ordering::SeqCst));
        assert_eq!(before & OUT2, 0);
        assert_eq!(after & OUT2, OUT2);
    }

    #[test]
    fn port_b_ignores_hostile_accesses() {
        // Arrange
        let mut port = SystemControlPortB::new();
        let mut wide = [0u8; 4];
        // Act
        port.write(0, &[0x01, 0x01]);
        port.write(3, &[0x01]);
        port.read(0, &mut wide);
        // Assert
        assert_eq!(read(&mut port) & 0x0f, 0);
        assert_eq!(wide, [0xff; 4]);
    }
}
