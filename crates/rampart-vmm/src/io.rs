//! The two device buses of the machine, as seen by a vCPU.

use rampart_devices::Bus;
use tracing::trace;

use crate::accel::IoHandler;

/// Port-I/O and MMIO buses. Accesses no device claims behave as on a PC: reads return all
/// ones, writes are dropped.
#[derive(Default)]
pub struct Buses {
    pub pio: Bus,
    /// Shared so the PCI root bus can move BAR ranges on it.
    pub mmio: std::sync::Arc<Bus>,
}

impl IoHandler for Buses {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        if !self.pio.read(u64::from(port), data) {
            trace!(port, len = data.len(), "read from unassigned port");
            data.fill(0xff);
        }
    }

    fn pio_write(&self, port: u16, data: &[u8]) {
        if !self.pio.write(u64::from(port), data) {
            trace!(port, len = data.len(), "write to unassigned port dropped");
        }
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if !self.mmio.read(addr, data) {
            trace!(addr, len = data.len(), "read from unassigned MMIO");
            data.fill(0xff);
        }
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) {
        if !self.mmio.write(addr, data) {
            trace!(addr, len = data.len(), "write to unassigned MMIO dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unassigned_reads_return_all_ones() {
        let buses = Buses::default();
        let mut b = [0u8; 4];
        buses.pio_read(0x1234, &mut b);
        assert_eq!(b, [0xff; 4]);
        let mut b = [0u8; 8];
        buses.mmio_read(0xd000_0000, &mut b);
        assert_eq!(b, [0xff; 8]);
        buses.mmio_write(0xd000_0000, &[1, 2, 3, 4]);
    }
}
