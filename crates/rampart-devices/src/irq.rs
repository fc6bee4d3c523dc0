//! Interrupt lines: how a device signals the interrupt controller (or the VMM).
//!
//! Under `kvm` the interrupt controllers live in the kernel and a line is an [`EventFd`]
//! registered as an irqfd; under `tcg` the user-space controller provides its own
//! [`InterruptLine`]. Devices only ever see the trait.
//!
//! Lines are edge-style: [`InterruptLine::trigger`] is one pulse. The same trait serves the
//! VMM's own events (reset, power-off): the VMM polls the `EventFd` it handed out.

use std::io;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// One interrupt (or event) line that a device pulses.
pub trait InterruptLine: Send + Sync {
    /// Signals one edge on the line.
    fn trigger(&self) -> io::Result<()>;
}

impl InterruptLine for EventFd {
    fn trigger(&self) -> io::Result<()> {
        self.write(1)
    }
}

/// Adapts an [`InterruptLine`] to `vm_superio::Trigger`, the interface vm-superio's devices
/// call to raise their interrupt or event.
#[derive(Clone)]
pub struct LineTrigger(pub Arc<dyn InterruptLine>);

impl LineTrigger {
    /// Wraps an `EventFd`, the usual line under `kvm` and for VMM events.
    pub fn from_eventfd(evt: EventFd) -> Self {
        Self(Arc::new(evt))
    }
}

impl vm_superio::Trigger for LineTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.trigger()
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// A line that counts its pulses.
    #[derive(Default)]
    pub struct CountingLine(AtomicU64);

    impl CountingLine {
        pub fn count(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl InterruptLine for CountingLine {
        fn trigger(&self) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    /// A line whose every pulse fails, as a closed irqfd would.
    pub struct BrokenLine;

    impl InterruptLine for BrokenLine {
        fn trigger(&self) -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
    }

    /// A non-blocking `EventFd` and a second handle on it.
    pub fn eventfd_pair() -> (EventFd, EventFd) {
        let evt = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let other = evt.try_clone().expect("eventfd clone");
        (evt, other)
    }
}

#[cfg(test)]
mod tests {
    use vm_superio::Trigger;

    use super::test_util::eventfd_pair;
    use super::*;

    #[test]
    fn eventfd_line_adds_one_per_trigger() {
        // Arrange
        let (evt, observer) = eventfd_pair();
        // Act
        InterruptLine::trigger(&evt).unwrap();
        InterruptLine::trigger(&evt).unwrap();
        // Assert
        assert_eq!(observer.read().unwrap(), 2);
    }

    #[test]
    fn line_trigger_forwards_to_the_line() {
        // Arrange
        let (evt, observer) = eventfd_pair();
        let trigger = LineTrigger::from_eventfd(evt);
        // Act
        Trigger::trigger(&trigger).unwrap();
        // Assert
        assert_eq!(observer.read().unwrap(), 1);
    }
}
