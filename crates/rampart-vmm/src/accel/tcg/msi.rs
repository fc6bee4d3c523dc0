//! MSI under `tcg`: an MSI-X vector's message becomes an APIC-bus message routed to the
//! emulated local APICs (which wakes a vCPU sleeping in `hlt`).

use std::io;
use std::sync::{Arc, Weak};

use rampart_devices::pci::{MsiController, MsiMessage, MsiVector};
use rampart_tcg::apic::ApicMessage;
use tracing::debug;

use super::Machine;

/// Creates vectors that deliver into `machine`.
pub struct TcgMsi {
    pub(super) machine: Weak<Machine>,
}

struct TcgVector {
    machine: Weak<Machine>,
}

impl MsiVector for TcgVector {
    fn configure(&self, _msg: Option<MsiMessage>) -> io::Result<()> {
        Ok(())
    }

    fn trigger(&self, msg: MsiMessage) -> io::Result<()> {
        let Some(machine) = self.machine.upgrade() else {
            return Ok(());
        };
        match ApicMessage::from_msi(msg.address, msg.data) {
            Some(m) => machine.route(&m),
            // A message the guest programmed outside the APIC range goes nowhere (as a write
            // to unclaimed memory would).
            None => debug!(
                address = msg.address,
                data = msg.data,
                "MSI with no APIC destination dropped"
            ),
        }
        Ok(())
    }
}

impl MsiController for TcgMsi {
    fn vectors(&self, count: u16) -> io::Result<Vec<Box<dyn MsiVector>>> {
        Ok((0..count)
            .map(|_| {
                Box::new(TcgVector {
                    machine: self.machine.clone(),
                }) as Box<dyn MsiVector>
            })
            .collect())
    }
}

impl Machine {
    /// The MSI controller of this machine.
    pub fn msi_controller(self: &Arc<Self>) -> Arc<dyn MsiController> {
        Arc::new(TcgMsi {
            machine: Arc::downgrade(self),
        })
    }
}
