//! Device buses and the devices the guest sees.
//!
//! Every device reachable from the guest is attack surface: reads and writes arrive with
//! guest-chosen offsets and sizes and must be bounded and validated.

pub mod bus;
pub mod irq;
pub mod legacy;
pub mod net;
pub mod pci;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
pub use irq::{InterruptLine, LineTrigger};
