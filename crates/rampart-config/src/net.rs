//! Network back ends (`-netdev`, and the back-end half of `-nic`) as typed values.

use crate::{ConfigError, DeviceConfig, NetLimits};

/// Most network back ends one VM may have.
pub const MAX_NETDEVS: usize = 16;

/// Where a tap comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapSource {
    /// Open `/dev/net/tun` and attach to this interface (`None`: the kernel picks `tapN`,
    /// which needs CAP_NET_ADMIN).
    Ifname(Option<String>),
    /// A tap descriptor inherited from the parent (`fd=N`).
    Fd(i32),
}

/// One `-netdev tap` (or the back end `-nic` creates).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetdevConfig {
    pub id: String,
    pub tap: TapSource,
    /// Rate limits of the NIC this back end serves (`throttling.*`).
    pub limits: NetLimits,
    /// `script=`/`downscript=` values other than `no` (key, value): programs QEMU would run.
    /// rampart runs none; validation refuses them, naming the sandbox's `spawn=` when it is the
    /// reason.
    pub scripts: Vec<(String, String)>,
}

/// QEMU's default MAC for the `n`th NIC: 52:54:00:12:34:(56 + n).
pub fn default_mac(n: usize) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x12, 0x34, 0x56u8.wrapping_add(n as u8)]
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with `-`).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut m = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return None;
        }
        m[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(m)
}

/// Checks the back ends and the NICs that use them: unique ids, every virtio-net-pci names an
/// existing back end, no back end serves two NICs, no descriptor passed twice, a unicast MAC.
pub fn validate_netdevs(
    netdevs: &[NetdevConfig],
    devices: &[DeviceConfig],
    sandbox: &crate::SandboxConfig,
) -> Result<(), ConfigError> {
    let bad = |m: String| Err(ConfigError::Invalid(m));
    for n in netdevs {
        if let Some((key, value)) = n.scripts.first() {
            return bad(if sandbox.spawn.allowed() {
                format!(
                    "-netdev tap,id={}: {key}={value}: rampart does not run tap scripts; \
                     configure the tap beforehand and use {key}=no",
                    n.id
                )
            } else {
                format!(
                    "-netdev tap,id={}: {key}={value} would start a process, which the sandbox \
                     refuses (-sandbox spawn=deny, the default); configure the tap beforehand \
                     and use {key}=no",
                    n.id
                )
            });
        }
    }
    if netdevs.len() > MAX_NETDEVS {
        return bad(format!("at most {MAX_NETDEVS} -netdev back ends"));
    }
    for (i, n) in netdevs.iter().enumerate() {
        if netdevs[..i].iter().any(|o| o.id == n.id) {
            return bad(format!("-netdev: duplicate id '{}'", n.id));
        }
        if let TapSource::Fd(fd) = n.tap {
            if netdevs[..i].iter().any(|o| o.tap == TapSource::Fd(fd)) {
                return bad(format!("-netdev {}: fd={fd} is already used", n.id));
            }
        }
        n.limits
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("-netdev {}: throttling.{e}", n.id)))?;
    }
    let mut used: Vec<&str> = Vec::new();
    for d in devices {
        let DeviceConfig::VirtioNet { netdev, mac, .. } = d else {
            continue;
        };
        if !netdevs.iter().any(|n| n.id == *netdev) {
            return bad(format!(
                "-device virtio-net-pci: no -netdev with id '{netdev}'"
            ));
        }
        if used.contains(&netdev.as_str()) {
            return bad(format!(
                "-device virtio-net-pci: netdev '{netdev}' is already in use by another NIC"
            ));
        }
        if let Some(m) = mac {
            if m[0] & 1 != 0 {
                return bad(format!(
                    "-device virtio-net-pci: mac {} is a multicast address",
                    crate::control::mac_text(m)
                ));
            }
        }
        used.push(netdev);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SB: crate::SandboxConfig = crate::SandboxConfig {
        enabled: true,
        obsolete: crate::SandboxPermission::Deny,
        elevate_privileges: crate::ElevatePrivileges::Deny,
        spawn: crate::SandboxPermission::Deny,
        resource_control: crate::SandboxPermission::Deny,
    };

    #[test]
    fn tap_scripts_are_refused_naming_the_sandbox_when_it_is_the_reason() {
        let mut n = tap("n0");
        n.scripts = vec![("script".into(), "/etc/qemu-ifup".into())];
        let e = validate_netdevs(&[n.clone()], &[], &SB)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("spawn=deny") && e.contains("script=/etc/qemu-ifup"),
            "{e}"
        );
        let allow = crate::SandboxConfig {
            spawn: crate::SandboxPermission::Allow,
            ..SB
        };
        let e = validate_netdevs(&[n], &[], &allow).unwrap_err().to_string();
        assert!(
            e.contains("does not run tap scripts") && !e.contains("spawn=deny"),
            "{e}"
        );
    }

    fn tap(id: &str) -> NetdevConfig {
        NetdevConfig {
            id: id.into(),
            tap: TapSource::Ifname(Some("tap0".into())),
            limits: NetLimits::default(),
            scripts: Vec::new(),
        }
    }

    fn nic(netdev: &str) -> DeviceConfig {
        DeviceConfig::VirtioNet {
            id: None,
            netdev: netdev.into(),
            mac: None,
        }
    }

    #[test]
    fn macs_parse_and_default_like_qemu() {
        assert_eq!(parse_mac("52:54:00:12:34:56"), Some(default_mac(0)));
        assert_eq!(parse_mac("52-54-00-12-34-57"), Some(default_mac(1)));
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:zz"), None);
        assert_eq!(parse_mac("152:54:00:12:34:56"), None);
    }

    #[test]
    fn nics_must_name_an_unused_backend() {
        assert!(validate_netdevs(&[tap("n0")], &[nic("n0")], &SB).is_ok());
        let e = validate_netdevs(&[tap("n0")], &[nic("n1")], &SB).unwrap_err();
        assert!(e.to_string().contains("'n1'"), "{e}");
        let e = validate_netdevs(&[tap("n0")], &[nic("n0"), nic("n0")], &SB).unwrap_err();
        assert!(e.to_string().contains("already in use"), "{e}");
        let e = validate_netdevs(&[tap("n0"), tap("n0")], &[], &SB).unwrap_err();
        assert!(e.to_string().contains("duplicate"), "{e}");
        let multicast = DeviceConfig::VirtioNet {
            id: None,
            netdev: "n0".into(),
            mac: Some([1, 0, 0, 0, 0, 1]),
        };
        assert!(validate_netdevs(&[tap("n0")], &[multicast], &SB).is_err());
    }
}
