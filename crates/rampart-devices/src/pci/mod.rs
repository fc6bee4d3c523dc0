//! PCI: configuration space, the root bus with its host bridge and configuration access
//! mechanisms (0xCF8/0xCFC and ECAM), BAR placement, and MSI-X.

pub mod config;
pub mod msix;
pub mod root;

pub use config::{BarKind, BarSpec, PciConfig, PciIds};
pub use msix::{MsiController, MsiMessage, MsiVector, Msix};
pub use root::{BarAllocator, ConfigIo, Ecam, PciDevice, PciError, PciRoot, Window};
