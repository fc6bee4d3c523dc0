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
    /// `virtio-net-pci`: a NIC on the `-netdev` named `netdev`.
    VirtioNet {
        id: Option<String>,
        netdev: String,
        /// `mac=`; QEMU's default (52:54:00:12:34:56 + NIC index) when absent.
        mac: Option<[u8; 6]>,
    },
}

/// Longest `serial=` virtio-blk can report (VIRTIO_BLK_ID_BYTES).
pub const BLK_SERIAL_MAX: usize = 20;

/// Checks that every virtio-blk-pci names an `if=none` drive or a `-blockdev` that exists and
/// that no back end serves two devices (`if=virtio` drives already have theirs).
pub fn validate_devices(
    devices: &[DeviceConfig],
    drives: &[crate::DriveConfig],
) -> Result<(), crate::ConfigError> {
    let mut used: Vec<&str> = Vec::new();
    for dev in devices {
        let DeviceConfig::VirtioBlk { drive, .. } = dev else {
            continue;
        };
        let Some(d) = drives.iter().find(|d| d.node.node_name == *drive) else {
            return Err(crate::ConfigError::Invalid(format!(
                "-device virtio-blk-pci: no -drive id or -blockdev node-name '{drive}'"
            )));
        };
        if d.interface != crate::DriveInterface::None || used.contains(&drive.as_str()) {
            return Err(crate::ConfigError::Invalid(format!(
                "-device virtio-blk-pci: drive '{drive}' is already in use by another device"
            )));
        }
        used.push(drive);
    }
    Ok(())
}

impl DeviceConfig {
    /// The device's `id=`, if given.
    pub fn id(&self) -> Option<&str> {
        match self {
            DeviceConfig::VirtioRng { id }
            | DeviceConfig::VirtioBlk { id, .. }
            | DeviceConfig::VirtioNet { id, .. } => id.as_deref(),
        }
    }

    /// The QEMU driver name.
    pub fn driver(&self) -> &'static str {
        match self {
            DeviceConfig::VirtioRng { .. } => "virtio-rng-pci",
            DeviceConfig::VirtioBlk { .. } => "virtio-blk-pci",
            DeviceConfig::VirtioNet { .. } => "virtio-net-pci",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BlockFormat, BlockNodeConfig, DriveConfig, DriveInterface};

    fn drive(name: &str, interface: DriveInterface) -> DriveConfig {
        DriveConfig {
            interface,
            node: BlockNodeConfig::new(name, BlockFormat::Raw, "/img".into()),
            from_blockdev: false,
            throttle: Default::default(),
        }
    }

    fn blk(drive: &str) -> DeviceConfig {
        DeviceConfig::VirtioBlk {
            id: None,
            drive: drive.into(),
            serial: None,
        }
    }

    #[test]
    fn virtio_blk_must_name_an_existing_unused_drive() {
        let drives = [
            drive("d0", DriveInterface::Virtio),
            drive("d1", DriveInterface::None),
        ];
        assert!(validate_devices(&[blk("d1")], &drives).is_ok());
        let e = validate_devices(&[blk("nope")], &drives).unwrap_err();
        assert!(e.to_string().contains("'nope'"), "{e}");
        let e = validate_devices(&[blk("d0")], &drives).unwrap_err();
        assert!(e.to_string().contains("already in use"), "{e}");
        let e = validate_devices(&[blk("d1"), blk("d1")], &drives).unwrap_err();
        assert!(e.to_string().contains("already in use"), "{e}");
        assert!(validate_devices(&[DeviceConfig::VirtioRng { id: None }], &[]).is_ok());
    }
}
