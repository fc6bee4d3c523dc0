//! `-device`: the device types rampart implements and their properties.

use rampart_config::props::Props;
use rampart_config::{DeviceConfig, BLK_SERIAL_MAX};

use super::CliError;

/// Device types, with a one-line description for `-device help`.
pub(crate) const DEVICES: &[(&str, &str)] = &[
    (
        "virtio-blk-pci",
        "virtio block device (drive=ID of a -drive or node-name of a -blockdev, serial=STR)",
    ),
    (
        "virtio-net-pci",
        "virtio network device (netdev=ID of a -netdev tap, mac=aa:bb:cc:dd:ee:ff)",
    ),
    (
        "virtio-rng-pci",
        "virtio entropy device fed from the host's getrandom",
    ),
];

/// The text of `-device help`.
pub(crate) fn help() -> String {
    let mut s = String::from("Devices rampart implements:\n");
    for (name, what) in DEVICES {
        s.push_str(&format!("  {name:<16} {what}\n"));
    }
    s
}

fn props_err(driver: &str, e: rampart_config::props::PropsError) -> CliError {
    CliError::Invalid {
        option: "-device",
        message: format!("{driver}: {e}"),
    }
}

/// Turns `-device DRIVER,...` (type already taken from `tree`) into a device, or `None` if
/// rampart does not implement `driver`.
pub(crate) fn parse(driver: &str, mut tree: Props) -> Result<Option<DeviceConfig>, CliError> {
    let err = |e| props_err(driver, e);
    let id = tree.take_string("id").map_err(err)?;
    let dev = match driver {
        "virtio-rng-pci" => DeviceConfig::VirtioRng { id },
        "virtio-blk-pci" => {
            let drive =
                tree.take_string("drive")
                    .map_err(err)?
                    .ok_or_else(|| CliError::Invalid {
                        option: "-device",
                        message: "virtio-blk-pci: parameter 'drive' is missing".into(),
                    })?;
            let serial = tree.take_string("serial").map_err(err)?;
            if let Some(s) = &serial {
                if s.len() > BLK_SERIAL_MAX {
                    return Err(CliError::Invalid {
                        option: "-device",
                        message: format!(
                            "virtio-blk-pci: serial '{s}' is longer than {BLK_SERIAL_MAX} bytes"
                        ),
                    });
                }
            }
            DeviceConfig::VirtioBlk { id, drive, serial }
        }
        "virtio-net-pci" => {
            let netdev =
                tree.take_string("netdev")
                    .map_err(err)?
                    .ok_or_else(|| CliError::Invalid {
                        option: "-device",
                        message: "virtio-net-pci: parameter 'netdev' is missing".into(),
                    })?;
            let mac = match tree.take_string("mac").map_err(err)? {
                Some(m) => {
                    Some(
                        rampart_config::parse_mac(&m).ok_or_else(|| CliError::Invalid {
                            option: "-device",
                            message: format!("virtio-net-pci: mac '{m}' is not aa:bb:cc:dd:ee:ff"),
                        })?,
                    )
                }
                None => None,
            };
            DeviceConfig::VirtioNet { id, netdev, mac }
        }
        _ => return Ok(None),
    };
    tree.deny_unknown().map_err(err)?;
    Ok(Some(dev))
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::super::argv::Opt;
    use super::super::objects::{request, Request};
    use super::*;

    fn device(arg: &str) -> Result<DeviceConfig, String> {
        match request(Opt::Device, OsStr::new(arg)) {
            Ok(Request::Device(d)) => Ok(d),
            Ok(other) => Err(format!("{other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn virtio_rng_parses_in_both_syntaxes() {
        assert_eq!(
            device("virtio-rng-pci,id=rng0").unwrap(),
            DeviceConfig::VirtioRng {
                id: Some("rng0".into())
            }
        );
        assert_eq!(
            device(r#"{"driver":"virtio-rng-pci"}"#).unwrap(),
            DeviceConfig::VirtioRng { id: None }
        );
    }

    #[test]
    fn virtio_blk_takes_drive_and_serial() {
        assert_eq!(
            device("virtio-blk-pci,drive=d1,serial=RO1").unwrap(),
            DeviceConfig::VirtioBlk {
                id: None,
                drive: "d1".into(),
                serial: Some("RO1".into())
            }
        );
    }

    #[test]
    fn virtio_blk_without_drive_or_with_long_serial_is_refused() {
        let e = device("virtio-blk-pci").unwrap_err();
        assert!(e.contains("'drive' is missing"), "{e}");
        let e = device("virtio-blk-pci,drive=d,serial=123456789012345678901").unwrap_err();
        assert!(e.contains("longer than 20"), "{e}");
    }

    #[test]
    fn unknown_device_property_is_named() {
        let e = device("virtio-rng-pci,max-bytes=1024").unwrap_err();
        assert!(
            e.contains("virtio-rng-pci") && e.contains("max-bytes"),
            "{e}"
        );
    }

    #[test]
    fn device_help_lists_the_implemented_devices() {
        match request(Opt::Device, OsStr::new("help")).unwrap() {
            Request::Help(text) => {
                assert!(text.contains("virtio-blk-pci") && text.contains("virtio-rng-pci"))
            }
            other => panic!("{other:?}"),
        }
    }
}
