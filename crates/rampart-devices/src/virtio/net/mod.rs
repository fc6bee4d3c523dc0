//! virtio-net (network device, ID 1) over a [`crate::net::tap::NetBackend`] (a tap): one
//! receive/transmit queue pair and a control queue.

mod ctrl;
mod device;
mod handle;
mod handler;
pub mod header;
mod tx;

pub use ctrl::{run as run_ctrl_command, MAC_TABLE_ENTRIES};
pub use device::{tun_offloads, Net, OFFERED, PCI_CLASS};
pub use handle::{FilterListener, NetHandle};
pub use handler::BUDGET;

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;
