//! 16550A UART (e.g. COM1 at 0x3f8, IRQ 4) on top of `vm_superio::Serial`.
//!
//! vm-superio models the registers, a 64-byte receive FIFO and the interrupt logic; this
//! wrapper adds the bus adapter (hostile access sizes and offsets), an output sink whose
//! failures never reach the guest, and bounded input.

use std::io::{self, Write};
use std::sync::Arc;

use tracing::{debug, warn};
use vm_superio::serial::{Error as SerialError, NoEvents, SerialState};
use vm_superio::Serial;

use super::LegacyError;
use crate::bus::BusDevice;
use crate::irq::{InterruptLine, LineTrigger};

/// Number of registers (and bus length) of one UART.
pub const SERIAL_PORT_LEN: u64 = 8;

/// The byte sink a UART writes the guest's output to.
pub type SerialSink = Box<dyn Write + Send>;

/// A 16550A UART as a bus device.
pub struct SerialDevice {
    serial: Serial<LineTrigger, NoEvents, SerialSink>,
    /// Output bytes dropped because the sink failed.
    output_errors: u64,
    /// Interrupts that could not be delivered.
    irq_errors: u64,
    /// The guest's UART is in loopback mode (MCR bit 4), tracked from its MCR writes.
    loopback: bool,
}

impl SerialDevice {
    /// A UART in its power-on state that raises `irq` and writes the guest's output to `out`.
    ///
    /// `out` is written one byte at a time from a vCPU thread, so it should not block for
    /// long (a buffered or non-blocking sink); its errors are counted and the bytes dropped.
    pub fn new(irq: Arc<dyn InterruptLine>, out: SerialSink) -> Self {
        Self {
            serial: Serial::new(LineTrigger(irq), out),
            output_errors: 0,
            irq_errors: 0,
            loopback: false,
        }
    }

    /// A UART restored from a saved state (e.g. a snapshot), which is validated.
    pub fn from_state(
        state: &SerialState,
        irq: Arc<dyn InterruptLine>,
        out: SerialSink,
    ) -> Result<Self, LegacyError> {
        let serial = Serial::from_state(state, LineTrigger(irq), NoEvents, out).map_err(|e| {
            LegacyError::SerialState {
                reason: e.to_string(),
            }
        })?;
        Ok(Self {
            serial,
            output_errors: 0,
            irq_errors: 0,
            loopback: state.modem_control & MCR_LOOP != 0,
        })
    }

    /// The registers and receive FIFO, for saving.
    pub fn state(&self) -> SerialState {
        self.serial.state()
    }

    /// Free bytes in the receive FIFO: how many [`Self::enqueue_input`] would take now.
    pub fn input_space(&self) -> usize {
        if self.loopback {
            0
        } else {
            self.serial.fifo_capacity()
        }
    }

    /// Queues host input for the guest. Takes only what fits the receive FIFO and returns how
    /// many bytes of `bytes` were taken; the caller keeps the rest and retries once the guest
    /// has read (see [`Self::input_space`]). Nothing is taken while the guest has the UART in
    /// loopback mode.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let space = self.input_space();
        if bytes.is_empty() || space == 0 {
            return 0;
        }
        let take = space.min(bytes.len());
        match self.serial.enqueue_raw_bytes(&bytes[..take]) {
            Ok(n) => n,
            // The bytes are in the FIFO before the interrupt is raised; only the pulse failed.
            Err(SerialError::Trigger(e)) => {
                self.note_irq_error(&e);
                take
            }
            Err(e) => {
                debug!(error = %e, "serial: input not queued");
                0
            }
        }
    }

    /// Output bytes dropped so far because the sink failed.
    pub fn output_errors(&self) -> u64 {
        self.output_errors
    }

    /// Interrupt pulses that failed so far.
    pub fn irq_errors(&self) -> u64 {
        self.irq_errors
    }

    fn note_output_error(&mut self, e: &io::Error) {
        self.output_errors = self.output_errors.saturating_add(1);
        if self.output_errors == 1 {
            warn!(error = %e, "serial: output sink failed; dropping guest output from now on while it fails");
        }
    }

    fn note_irq_error(&mut self, e: &io::Error) {
        self.irq_errors = self.irq_errors.saturating_add(1);
        if self.irq_errors == 1 {
            warn!(error = %e, "serial: cannot raise the interrupt");
        }
    }
}

/// Modem control register offset and its loopback bit.
const MCR: u8 = 4;
const MCR_LOOP: u8 = 0x10;

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(reg @ 0..=7), [byte]) => *byte = self.serial.read(reg),
            (_, data) => {
                debug!(offset, len = data.len(), "serial: ignoring odd read");
                data.fill(0xff);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (reg, value) = match (u8::try_from(offset), data) {
            (Ok(reg @ 0..=7), [value]) => (reg, *value),
            _ => {
                debug!(offset, len = data.len(), "serial: ignoring odd write");
                return;
            }
        };
        if reg == MCR {
            self.loopback = value & MCR_LOOP != 0;
        }
        match self.serial.write(reg, value) {
            Ok(()) => {}
            Err(SerialError::IOError(e)) => self.note_output_error(&e),
            Err(SerialError::Trigger(e)) => self.note_irq_error(&e),
            Err(e) => debug!(error = %e, "serial: write failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::irq::test_util::{BrokenLine, CountingLine};

    const THR: u64 = 0;
    const RBR: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LCR: u64 = 3;
    const MCR: u64 = 4;
    const LSR: u64 = 5;
    const SCR: u64 = 7;
    const FIFO: usize = 64;

    /// A sink whose bytes the test can still see after handing it to the device.
    #[derive(Clone, Default)]
    struct SharedSink(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedSink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
    }

    fn uart() -> (SerialDevice, SharedSink, Arc<CountingLine>) {
        let sink = SharedSink::default();
        let line = Arc::new(CountingLine::default());
        let dev = SerialDevice::new(line.clone(), Box::new(sink.clone()));
        (dev, sink, line)
    }

    fn read_reg(dev: &mut SerialDevice, offset: u64) -> u8 {
        let mut b = [0u8];
        dev.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn transmits_bytes_written_to_thr_to_the_sink() {
        // Arrange
        let (mut dev, sink, _) = uart();
        // Act
        for &b in b"hi\n" {
            dev.write(THR, &[b]);
        }
        // Assert
        assert_eq!(*sink.0.lock().unwrap(), b"hi\n");
    }

    #[test]
    fn raises_interrupt_when_ier_enables_thr_empty() {
        // Arrange
        let (mut dev, _, line) = uart();
        // Act
        dev.write(IER, &[0x02]);
        // Assert
        assert_eq!(line.count(), 1);
        assert_eq!(read_reg(&mut dev, IIR) & 0x0f, 0x02, "THR empty pending");
        assert_eq!(
            read_reg(&mut dev, IIR) & 0x0f,
            0x01,
            "cleared by reading IIR"
        );
    }

    #[test]
    fn raises_interrupt_after_each_transmitted_byte_once_acknowledged() {
        // Arrange
        let (mut dev, _, line) = uart();
        dev.write(IER, &[0x02]);
        read_reg(&mut dev, IIR);
        // Act
        dev.write(THR, b"x");
        // Assert
        assert_eq!(line.count(), 2);
    }

    #[test]
    fn receives_input_and_raises_data_available() {
        // Arrange
        let (mut dev, _, line) = uart();
        dev.write(IER, &[0x01]);
        // Act
        let taken = dev.enqueue_input(b"ok");
        // Assert
        assert_eq!(taken, 2);
        assert_eq!(line.count(), 1);
        assert_eq!(read_reg(&mut dev, LSR) & 0x01, 0x01, "data ready");
        assert_eq!(read_reg(&mut dev, RBR), b'o');
        assert_eq!(read_reg(&mut dev, RBR), b'k');
        assert_eq!(read_reg(&mut dev, LSR) & 0x01, 0, "fifo drained");
    }

    #[test]
    fn enqueue_more_than_fifo_returns_accepted_count() {
        // Arrange
        let (mut dev, _, _) = uart();
        let input = [b'a'; FIFO + 10];
        // Act
        let first = dev.enqueue_input(&input);
        let second = dev.enqueue_input(&input[first..]);
        // Assert
        assert_eq!(first, FIFO);
        assert_eq!(second, 0);
        assert_eq!(dev.input_space(), 0);
    }

    #[test]
    fn input_space_recovers_as_the_guest_reads() {
        // Arrange
        let (mut dev, _, _) = uart();
        dev.enqueue_input(&[b'a'; FIFO]);
        // Act
        read_reg(&mut dev, RBR);
        read_reg(&mut dev, RBR);
        // Assert
        assert_eq!(dev.input_space(), 2);
        assert_eq!(dev.enqueue_input(b"xyz"), 2);
    }

    #[test]
    fn takes_no_input_in_loopback_mode() {
        // Arrange
        let (mut dev, _, _) = uart();
        dev.write(MCR, &[0x10]);
        // Act
        let taken = dev.enqueue_input(b"abc");
        // Assert
        assert_eq!(taken, 0);
        assert_eq!(dev.input_space(), 0);
    }

    #[test]
    fn closed_sink_drops_output_and_counts_errors() {
        // Arrange
        let line = Arc::new(CountingLine::default());
        let mut dev = SerialDevice::new(line, Box::new(ClosedPipe));
        // Act
        dev.write(THR, b"a");
        dev.write(THR, b"b");
        dev.write(SCR, &[0x5a]);
        // Assert
        assert_eq!(dev.output_errors(), 2);
        assert_eq!(read_reg(&mut dev, SCR), 0x5a, "device still works");
    }

    #[test]
    fn failing_interrupt_line_does_not_lose_input() {
        // Arrange
        let mut dev = SerialDevice::new(Arc::new(BrokenLine), Box::new(io::sink()));
        dev.write(IER, &[0x01]);
        // Act
        let taken = dev.enqueue_input(b"abc");
        // Assert
        assert_eq!(taken, 3);
        assert!(dev.irq_errors() >= 1);
        assert_eq!(read_reg(&mut dev, RBR), b'a');
    }

    #[test]
    fn hostile_accesses_do_not_panic() {
        // Arrange
        let (mut dev, sink, _) = uart();
        let mut wide = [0u8; 8];
        let mut empty: [u8; 0] = [];
        // Act
        dev.write(100, &[1]);
        dev.write(u64::MAX, &[1]);
        dev.write(THR, &[1, 2, 3, 4, 5, 6, 7, 8]);
        dev.write(THR, &[]);
        dev.read(100, &mut wide[..1]);
        dev.read(LSR, &mut wide);
        dev.read(LSR, &mut empty);
        // Assert
        assert_eq!(wide, [0xff; 8]);
        assert!(sink.0.lock().unwrap().is_empty(), "nothing transmitted");
    }

    #[test]
    fn divisor_latch_is_reachable_through_dlab() {
        // Arrange
        let (mut dev, sink, _) = uart();
        // Act
        dev.write(LCR, &[0x83]);
        dev.write(0, &[0x01]);
        dev.write(LCR, &[0x03]);
        // Assert
        assert!(
            sink.0.lock().unwrap().is_empty(),
            "divisor write is not data"
        );
        assert_eq!(read_reg(&mut dev, LCR), 0x03);
    }

    #[test]
    fn state_round_trips_through_from_state() {
        // Arrange
        let (mut dev, _, _) = uart();
        dev.write(SCR, &[0x42]);
        dev.enqueue_input(b"q");
        let state = dev.state();
        // Act
        let mut restored = SerialDevice::from_state(
            &state,
            Arc::new(CountingLine::default()),
            Box::new(io::sink()),
        )
        .unwrap();
        // Assert
        assert_eq!(read_reg(&mut restored, SCR), 0x42);
        assert_eq!(read_reg(&mut restored, RBR), b'q');
    }

    #[test]
    fn rejects_saved_state_with_oversized_fifo() {
        // Arrange
        let state = SerialState {
            in_buffer: vec![0; FIFO + 1],
            ..SerialState::default()
        };
        // Act
        let res = SerialDevice::from_state(
            &state,
            Arc::new(CountingLine::default()),
            Box::new(io::sink()),
        );
        // Assert
        assert!(matches!(res, Err(LegacyError::SerialState { .. })));
    }
}
