//! `-netdev tap` and `-nic tap`: the tap back end (an interface name or a passed descriptor)
//! and the NIC's rate limits (`throttling.{rx,tx}-{bps,pps}[-max[-length]]`, rampart's own
//! options in the style of QEMU's block `throttling.*`).
//!
//! `script=` and `downscript=` other than `no` would start a process: validation refuses them
//! (naming `-sandbox spawn=deny`, the default, when that is the reason; rampart runs no tap
//! script even with `spawn=allow`). Without them, rampart runs no script (QEMU would run
//! `/etc/qemu-ifup`).

use std::ffi::OsStr;

use rampart_config::{parse_mac, parse_size, NetLimits, NetdevConfig, RateLimit, TapSource};

use super::qemu_opts::{self, OptSpec, Opts};
use super::CliError;

/// The rate-limit keys, in the order [`limits`] reads them.
const LIMIT_KEYS: [&str; 4] = ["rx-bps", "rx-pps", "tx-bps", "tx-pps"];

macro_rules! tap_keys {
    ($($extra:literal),*) => {
        &[
            "type", "id", "ifname", "fd", "script", "downscript", "vnet_hdr", "vhost", "queues",
            "throttling.rx-bps", "throttling.rx-bps-max", "throttling.rx-bps-max-length",
            "throttling.rx-pps", "throttling.rx-pps-max", "throttling.rx-pps-max-length",
            "throttling.tx-bps", "throttling.tx-bps-max", "throttling.tx-bps-max-length",
            "throttling.tx-pps", "throttling.tx-pps-max", "throttling.tx-pps-max-length",
            $($extra),*
        ]
    };
}

const UNSUPPORTED: &[&str] = &[
    "br",
    "helper",
    "fds",
    "vhostfd",
    "vhostfds",
    "vhostforce",
    "sndbuf",
    "poll-us",
];
const REASON: &str =
    "rampart's tap back end takes ifname= or fd= only (no helper, no vhost, one queue)";

pub(crate) const NETDEV: OptSpec = OptSpec {
    option: "-netdev",
    implied: Some("type"),
    known: tap_keys!(),
    unsupported: UNSUPPORTED,
    reason: REASON,
};

pub(crate) const NIC: OptSpec = OptSpec {
    option: "-nic",
    implied: Some("type"),
    known: tap_keys!("model", "mac"),
    unsupported: UNSUPPORTED,
    reason: REASON,
};

/// What a `-netdev`/`-nic` asks for.
pub(crate) enum NetRequest {
    Help,
    Netdev(NetdevConfig),
    /// `-nic`: a back end and the NIC on it.
    Nic(NetdevConfig, Option<[u8; 6]>),
}

fn invalid(option: &'static str, message: String) -> CliError {
    CliError::Invalid { option, message }
}

fn number(o: &Opts, key: &'static str) -> Result<u64, CliError> {
    let v = o.str(key)?.unwrap_or_default();
    parse_size("throttling", v, 1).map_err(|e| o.invalid(key, OsStr::new(v), &e.to_string()))
}

fn limit(o: &Opts, name: &str) -> Result<RateLimit, CliError> {
    let key = |suffix: &str| -> Option<&'static str> {
        let want = format!("throttling.{name}{suffix}");
        NIC.known.iter().copied().find(|k| *k == want)
    };
    let mut l = RateLimit::default();
    for (suffix, slot) in [
        ("", &mut l.avg),
        ("-max", &mut l.max),
        ("-max-length", &mut l.max_length),
    ] {
        if let Some(k) = key(suffix) {
            if o.os(k).is_some() {
                *slot = number(o, k)?;
            }
        }
    }
    Ok(l)
}

fn limits(o: &Opts) -> Result<NetLimits, CliError> {
    let l = NetLimits {
        rx_bps: limit(o, LIMIT_KEYS[0])?,
        rx_pps: limit(o, LIMIT_KEYS[1])?,
        tx_bps: limit(o, LIMIT_KEYS[2])?,
        tx_pps: limit(o, LIMIT_KEYS[3])?,
    };
    l.validate()
        .map_err(|e| invalid(o.option, format!("throttling.{e}")))?;
    Ok(l)
}

/// The tap part shared by `-netdev` and `-nic`.
fn tap(o: &Opts, id: String) -> Result<NetdevConfig, CliError> {
    let option = o.option;
    // Refused at validation, which knows the sandbox's spawn= (rampart runs no script).
    let mut scripts = Vec::new();
    for key in ["script", "downscript"] {
        if let Some(v) = o.str(key)? {
            if v != "no" {
                scripts.push((key.to_string(), v.to_string()));
            }
        }
    }
    if o.bool("vnet_hdr")? == Some(false) {
        return Err(invalid(
            option,
            "vnet_hdr=off: rampart needs the virtio-net header on the tap".into(),
        ));
    }
    if o.bool("vhost")? == Some(true) {
        return Err(CliError::UnsupportedProperty {
            option,
            property: "vhost".into(),
            reason: "rampart has no vhost-net: the I/O thread moves the frames",
        });
    }
    if let Some(q) = o.u32("queues")? {
        if q != 1 {
            return Err(invalid(
                option,
                format!("queues={q}: rampart's NIC has one queue pair"),
            ));
        }
    }
    let ifname = o.str("ifname")?.map(str::to_owned);
    let source = match o.str("fd")? {
        Some(v) => {
            if ifname.is_some() || o.os("script").is_some() || o.os("downscript").is_some() {
                return Err(invalid(
                    option,
                    "ifname=, script= and downscript= are invalid with fd=".into(),
                ));
            }
            let fd: i32 = v.parse().ok().filter(|fd| *fd > 2).ok_or_else(|| {
                o.invalid("fd", OsStr::new(v), "expected a descriptor number above 2")
            })?;
            TapSource::Fd(fd)
        }
        None => {
            if let Some(n) = &ifname {
                if !rampart_devices::net::tap::valid_ifname(n) {
                    return Err(o.invalid("ifname", OsStr::new(n), "not a valid interface name"));
                }
            }
            TapSource::Ifname(ifname)
        }
    };
    Ok(NetdevConfig {
        id,
        tap: source,
        limits: limits(o)?,
        scripts,
    })
}

fn check_type(o: &Opts) -> Result<Option<()>, CliError> {
    match o.str("type")? {
        Some(t) if super::options::is_help(t) => Ok(None),
        Some("tap") => Ok(Some(())),
        Some(other) => Err(CliError::UnknownType {
            option: o.option,
            noun: "network back end",
            name: other.chars().take(80).collect(),
        }),
        None => Err(invalid(o.option, "parameter 'type' is missing".into())),
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && id.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
}

/// Parses `-netdev` (`nics_so_far` numbers `-nic` back ends, as QEMU's `__org.qemu.nicN`).
pub(crate) fn parse(nic: bool, arg: &OsStr, nics_so_far: usize) -> Result<NetRequest, CliError> {
    let o = qemu_opts::parse(if nic { &NIC } else { &NETDEV }, arg)?;
    if check_type(&o)?.is_none() {
        return Ok(NetRequest::Help);
    }
    let id = match o.str("id")? {
        Some(id) if valid_id(id) => id.to_owned(),
        Some(id) => {
            return Err(o.invalid(
                "id",
                OsStr::new(id),
                "expected a letter followed by letters, digits, '-', '.', '_'",
            ))
        }
        None if nic => format!("__org.qemu.nic{nics_so_far}"),
        None => return Err(invalid(o.option, "parameter 'id' is missing".into())),
    };
    let cfg = tap(&o, id)?;
    if !nic {
        return Ok(NetRequest::Netdev(cfg));
    }
    if let Some(m) = o.str("model")? {
        if super::options::is_help(m) {
            return Err(invalid("-nic", "the only model is virtio-net-pci".into()));
        }
        if m != "virtio-net-pci" && m != "virtio" {
            return Err(o.invalid(
                "model",
                OsStr::new(m),
                "the only NIC model is virtio-net-pci",
            ));
        }
    }
    let mac = match o.str("mac")? {
        Some(m) => Some(
            parse_mac(m)
                .ok_or_else(|| o.invalid("mac", OsStr::new(m), "expected aa:bb:cc:dd:ee:ff"))?,
        ),
        None => None,
    };
    Ok(NetRequest::Nic(cfg, mac))
}

/// The text of `-netdev help`.
pub(crate) fn help() -> String {
    "Available netdev backend types:\n  tap (ifname=NAME or fd=N, script=no, downscript=no,\n       throttling.{rx,tx}-{bps,pps}[-max[-length]]=N)\n".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn netdev(arg: &str) -> Result<NetdevConfig, String> {
        match parse(false, OsStr::new(arg), 0) {
            Ok(NetRequest::Netdev(n)) => Ok(n),
            Ok(_) => Err("not a netdev".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn tap_with_ifname_or_fd() {
        let n = netdev("tap,id=n0,ifname=tap0,script=no,downscript=no").unwrap();
        assert_eq!(n.tap, TapSource::Ifname(Some("tap0".into())));
        let n = netdev("tap,id=n1,fd=5").unwrap();
        assert_eq!(n.tap, TapSource::Fd(5));
        let e = netdev("tap,id=n1,fd=5,ifname=tap0").unwrap_err();
        assert!(e.contains("invalid with fd="), "{e}");
        let e = netdev("tap,id=n1,fd=1").unwrap_err();
        assert!(e.contains("above 2"), "{e}");
    }

    #[test]
    fn scripts_are_kept_for_validation_and_no_means_none() {
        let n = netdev("tap,id=n0,ifname=tap0,script=/etc/qemu-ifup,downscript=no").unwrap();
        assert_eq!(n.scripts, vec![("script".into(), "/etc/qemu-ifup".into())]);
        let n = netdev("tap,id=n0,ifname=tap0,script=no,downscript=no").unwrap();
        assert!(n.scripts.is_empty());
    }

    #[test]
    fn unknown_and_unsupported_keys_are_named() {
        let e = netdev("tap,id=n0,colour=red").unwrap_err();
        assert!(e.contains("colour"), "{e}");
        let e = netdev("tap,id=n0,helper=/usr/lib/qemu/qemu-bridge-helper").unwrap_err();
        assert!(e.contains("helper") && e.contains("not supported"), "{e}");
        let e = netdev("tap,id=n0,vhost=on").unwrap_err();
        assert!(e.contains("vhost"), "{e}");
        let e = netdev("user,id=n0").unwrap_err();
        assert!(e.contains("user"), "{e}");
        let e = netdev("tap,ifname=tap0").unwrap_err();
        assert!(e.contains("'id' is missing"), "{e}");
    }

    #[test]
    fn throttling_options_parse_and_validate() {
        let n = netdev("tap,id=n0,throttling.rx-bps=1M,throttling.tx-pps=1000,throttling.tx-pps-max=2000,throttling.tx-pps-max-length=3").unwrap();
        assert_eq!(n.limits.rx_bps.avg, 1 << 20);
        assert_eq!(
            n.limits.tx_pps,
            RateLimit {
                avg: 1000,
                max: 2000,
                max_length: 3
            }
        );
        let e = netdev("tap,id=n0,throttling.rx-bps-max=5").unwrap_err();
        assert!(e.contains("rx-bps-max requires rx-bps"), "{e}");
    }

    #[test]
    fn nic_creates_a_backend_and_checks_model_and_mac() {
        match parse(true, OsStr::new("tap,ifname=tap0,script=no,downscript=no,model=virtio-net-pci,mac=52:54:00:aa:bb:cc"), 2).unwrap() {
            NetRequest::Nic(n, mac) => {
                assert_eq!(n.id, "__org.qemu.nic2");
                assert_eq!(mac, Some([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]));
            }
            _ => panic!("not a nic"),
        }
        assert!(parse(true, OsStr::new("tap,model=e1000"), 0).is_err());
        assert!(parse(true, OsStr::new("tap,mac=zz"), 0).is_err());
    }
}
