//! Devices added with `-device` (and implied by `-drive if=virtio`).

/// One PCI device of the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceConfig {
    /// `virtio-rng-pci`: an entropy device fed from the host's getrandom.
    VirtioRng { id: Option<String> },
    /// `virtio-blk-pci`: a disk serving the block node or drive named `drive`.
    VirtioBlk {
        id: Option<String>,
        drive: String,
        /// `serial=`: what VIRTIO_BLK_T_GET_ID answers (at most 20 bytes).
        serial: Option<String>,
    },
}

/// Longest `serial=` virtio-blk can report (VIRTIO_BLK_ID_BYTES).
pub const BLK_SERIAL_MAX: usize = 20;

impl DeviceConfig {
    /// The QEMU driver name.
    pub fn driver(&self) -> &'static str {
        match self {
            DeviceConfig::VirtioRng { .. } => "virtio-rng-pci",
            DeviceConfig::VirtioBlk { .. } => "virtio-blk-pci",
        }
    }
}
