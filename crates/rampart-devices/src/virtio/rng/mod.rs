//! virtio-rng (entropy device, ID 4): one queue of device-writable buffers, filled from the
//! host's `getrandom`.

mod device;
mod handler;

pub use device::{Rng, PCI_CLASS};
pub use handler::{fill_requests, EntropySource, HostRandom};
