//! `-chardev`, `-mon`, `-qmp` and `-monitor`: character devices and the monitors on them.
//!
//! - `-chardev socket,id=ID,path=PATH,server=on[,wait=on|off]` and `-chardev stdio,id=ID`;
//! - `-mon chardev=ID[,mode=control|readline][,pretty=on|off]` (QEMU's default mode is
//!   `readline`);
//! - `-qmp unix:PATH,server=on[,wait=off]` / `-qmp stdio`: a QMP monitor on a new chardev named
//!   `compat_monitorN`, as QEMU names it; `-monitor` the same for the human monitor
//!   (`-monitor none` adds none).
//!
//! As with `-serial`, rampart only listens: a socket without `server=on` is refused.
//! `wait` defaults to `on` as in QEMU. TCP sockets (`host=,port=` / `tcp:HOST:PORT`) take
//! `tls-creds=`, `tls-authz=` and `insecure=on`; a UNIX socket takes `tls-authz=` (its peers
//! are identified by SO_PEERCRED). Whether a TCP monitor is secure enough to start is
//! `rampart_config::check_monitor_security`'s decision.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use rampart_config::{ChardevBackend, ChardevConfig, MonitorConfig, MonitorMode};

use super::argv::shown;
use super::qemu_opts::{self, OptSpec};
use super::CliError;

const SOCKET_UNSUPPORTED: &[&str] = &[
    "to",
    "ipv4",
    "ipv6",
    "abstract",
    "tight",
    "reconnect",
    "reconnect-ms",
    "telnet",
    "tn3270",
    "websocket",
    "mux",
    "logfile",
    "logappend",
    "nodelay",
    "fd",
];

const CHARDEV: OptSpec = OptSpec {
    option: "-chardev",
    implied: Some("backend"),
    known: &[
        "backend",
        "id",
        "path",
        "host",
        "port",
        "server",
        "wait",
        "signal",
        "tls-creds",
        "tls-authz",
        "insecure",
    ],
    unsupported: SOCKET_UNSUPPORTED,
    reason: "rampart's chardevs are server sockets (UNIX path or TCP host and port, server, \
             wait, tls-creds, tls-authz, insecure) and stdio",
};

const MON: OptSpec = OptSpec {
    option: "-mon",
    implied: None,
    known: &["chardev", "mode", "pretty"],
    unsupported: &["id", "default"],
    reason: "rampart's -mon takes chardev, mode and pretty",
};

const fn legacy(option: &'static str) -> OptSpec {
    OptSpec {
        option,
        implied: Some("path"),
        known: &["path", "server", "wait", "tls-authz"],
        unsupported: SOCKET_UNSUPPORTED,
        reason: "rampart's unix: monitor back-end takes only path, server, wait and tls-authz",
    }
}

const fn legacy_tcp(option: &'static str) -> OptSpec {
    OptSpec {
        option,
        implied: None,
        known: &["server", "wait", "tls-creds", "tls-authz", "insecure"],
        unsupported: SOCKET_UNSUPPORTED,
        reason: "rampart's tcp: monitor back-end takes server, wait, tls-creds, tls-authz and \
                 insecure",
    }
}

const QMP: OptSpec = legacy("-qmp");
const MONITOR: OptSpec = legacy("-monitor");
const QMP_TCP: OptSpec = legacy_tcp("-qmp");
const MONITOR_TCP: OptSpec = legacy_tcp("-monitor");

/// The security properties every socket chardev takes (none for stdio).
#[derive(Default)]
struct SocketSecurity {
    tls_creds: Option<String>,
    tls_authz: Option<String>,
    insecure: bool,
}

fn security(opts: &qemu_opts::Opts) -> Result<SocketSecurity, CliError> {
    let id = |key: &'static str| -> Result<Option<String>, CliError> {
        match opts.str(key)? {
            None => Ok(None),
            Some(v) if valid_id(v) => Ok(Some(v.to_string())),
            Some(v) => Err(CliError::InvalidValue {
                option: "-chardev",
                property: key.into(),
                value: v.into(),
                reason: "expected the id of an -object".into(),
            }),
        }
    };
    Ok(SocketSecurity {
        tls_creds: id("tls-creds")?,
        tls_authz: id("tls-authz")?,
        insecure: opts.bool("insecure")?.unwrap_or(false),
    })
}

impl SocketSecurity {
    fn chardev(self, id: String, backend: ChardevBackend) -> ChardevConfig {
        ChardevConfig {
            id,
            backend,
            tls_creds: self.tls_creds,
            tls_authz: self.tls_authz,
            insecure: self.insecure,
        }
    }
}

fn tcp_backend(
    option: &'static str,
    host: &str,
    port: &str,
    opts: &qemu_opts::Opts,
) -> Result<ChardevBackend, CliError> {
    if host.is_empty() {
        // QEMU listens on every address then; rampart wants the address said out loud.
        return Err(CliError::Invalid {
            option,
            message: "a TCP socket needs a host (e.g. 127.0.0.1, or 0.0.0.0 for every address)"
                .into(),
        });
    }
    let port = port.parse::<u16>().map_err(|_| CliError::InvalidValue {
        option,
        property: "port".into(),
        value: port.into(),
        reason: "expected a port number (0-65535)".into(),
    })?;
    if !opts.bool("server")?.unwrap_or(false) {
        return Err(CliError::Invalid {
            option,
            message: format!(
                "tcp:{host}:{port}: connecting as a client is not supported (add server=on)"
            ),
        });
    }
    Ok(ChardevBackend::TcpServer {
        host: host.to_string(),
        port,
        wait: opts.bool("wait")?.unwrap_or(true),
    })
}

fn socket_backend(
    option: &'static str,
    opts: &qemu_opts::Opts,
) -> Result<ChardevBackend, CliError> {
    let path = match opts.os("path") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            return Err(CliError::Invalid {
                option,
                message: "a UNIX socket needs a path".into(),
            })
        }
    };
    if !opts.bool("server")?.unwrap_or(false) {
        return Err(CliError::Invalid {
            option,
            message: format!(
                "unix:{}: connecting as a client is not supported (add server=on)",
                path.display()
            ),
        });
    }
    Ok(ChardevBackend::UnixServer {
        path,
        wait: opts.bool("wait")?.unwrap_or(true),
    })
}

/// Parses one `-chardev`.
pub(crate) fn chardev(arg: &OsStr) -> Result<ChardevConfig, CliError> {
    let opts = qemu_opts::parse(&CHARDEV, arg)?;
    let id = match opts.str("id")? {
        Some(id) if valid_id(id) => id.to_string(),
        Some(id) => {
            return Err(CliError::InvalidValue {
                option: "-chardev",
                property: "id".into(),
                value: id.into(),
                reason: "identifiers start with a letter and contain only letters, digits, \
                         '-', '.' and '_'"
                    .into(),
            })
        }
        None => {
            return Err(CliError::Invalid {
                option: "-chardev",
                message: "parameter 'id' is missing".into(),
            })
        }
    };
    let sec = security(&opts)?;
    let backend = match opts.str("backend")? {
        Some("socket") => {
            if opts.os("signal").is_some() {
                return Err(unknown_for("socket", "signal"));
            }
            match (opts.os("path"), opts.str("host")?, opts.str("port")?) {
                (Some(_), None, None) => {
                    if sec.insecure {
                        return Err(unknown_for("UNIX socket", "insecure"));
                    }
                    socket_backend("-chardev", &opts)?
                }
                (None, host, Some(port)) => {
                    tcp_backend("-chardev", host.unwrap_or_default(), port, &opts)?
                }
                (None, _, None) => {
                    return Err(CliError::Invalid {
                        option: "-chardev",
                        message: "a socket needs path= (UNIX) or host= and port= (TCP)".into(),
                    })
                }
                (Some(_), _, _) => {
                    return Err(CliError::Invalid {
                        option: "-chardev",
                        message: "path= (UNIX) and host=/port= (TCP) cannot be used together"
                            .into(),
                    })
                }
            }
        }
        Some("stdio") => {
            // Every key but these belongs to sockets (so `sec` is empty here).
            for &key in CHARDEV
                .known
                .iter()
                .filter(|k| !matches!(**k, "backend" | "id"))
            {
                if opts.os(key).is_some() {
                    return Err(unknown_for("stdio", key));
                }
            }
            ChardevBackend::Stdio
        }
        Some(other) => {
            return Err(CliError::InvalidValue {
                option: "-chardev",
                property: "backend".into(),
                value: other.into(),
                reason: "rampart's chardev back-ends are socket and stdio".into(),
            })
        }
        None => {
            return Err(CliError::Invalid {
                option: "-chardev",
                message: "a back-end type is missing (socket or stdio)".into(),
            })
        }
    };
    Ok(sec.chardev(id, backend))
}

fn unknown_for(backend: &str, key: &str) -> CliError {
    CliError::Invalid {
        option: "-chardev",
        message: format!("property '{key}' does not apply to the {backend} back-end"),
    }
}

fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        && id.len() <= 128
}

/// Parses one `-mon`.
pub(crate) fn mon(arg: &OsStr) -> Result<MonitorConfig, CliError> {
    let opts = qemu_opts::parse(&MON, arg)?;
    let chardev = match opts.str("chardev")? {
        Some(c) if !c.is_empty() => c.to_string(),
        _ => {
            return Err(CliError::Invalid {
                option: "-mon",
                message: "parameter 'chardev' is missing".into(),
            })
        }
    };
    let mode = match opts.str("mode")? {
        None | Some("readline") => MonitorMode::Readline,
        Some("control") => MonitorMode::Control,
        Some(other) => {
            return Err(CliError::InvalidValue {
                option: "-mon",
                property: "mode".into(),
                value: other.into(),
                reason: "expected 'readline' or 'control'".into(),
            })
        }
    };
    let pretty = opts.bool("pretty")?.unwrap_or(false);
    if pretty && mode == MonitorMode::Readline {
        return Err(CliError::Invalid {
            option: "-mon",
            message: "'pretty' is not compatible with HMP monitors".into(),
        });
    }
    Ok(MonitorConfig {
        chardev,
        mode,
        pretty,
    })
}

/// Parses `-qmp` / `-monitor` (legacy chardev syntax); `None` for `-monitor none`.
pub(crate) fn legacy_monitor(
    mode: MonitorMode,
    index: usize,
    arg: &OsStr,
) -> Result<Option<(ChardevConfig, MonitorConfig)>, CliError> {
    let option = match mode {
        MonitorMode::Control => "-qmp",
        MonitorMode::Readline => "-monitor",
    };
    let bytes = arg.as_bytes();
    if bytes.len() > qemu_opts::MAX_ARG_LEN {
        return Err(CliError::TooLong {
            option,
            len: bytes.len(),
            max: qemu_opts::MAX_ARG_LEN,
        });
    }
    let mut sec = SocketSecurity::default();
    let backend = if bytes == b"none" {
        return Ok(None);
    } else if bytes == b"stdio" {
        ChardevBackend::Stdio
    } else if let Some(rest) = bytes.strip_prefix(b"unix:") {
        let spec = match mode {
            MonitorMode::Control => &QMP,
            MonitorMode::Readline => &MONITOR,
        };
        let opts = qemu_opts::parse(spec, OsStr::from_bytes(rest))?;
        sec = security(&opts)?;
        socket_backend(option, &opts)?
    } else if let Some(rest) = bytes.strip_prefix(b"tcp:") {
        let spec = match mode {
            MonitorMode::Control => &QMP_TCP,
            MonitorMode::Readline => &MONITOR_TCP,
        };
        let rest = std::str::from_utf8(rest).map_err(|_| CliError::Invalid {
            option,
            message: "argument is not valid UTF-8".into(),
        })?;
        let (addr, props) = rest.split_once(',').unwrap_or((rest, ""));
        // HOST:PORT, the host possibly a bracketed IPv6 address.
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| CliError::InvalidValue {
                option,
                property: "backend".into(),
                value: shown(arg),
                reason: "expected tcp:HOST:PORT".into(),
            })?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let opts = qemu_opts::parse(spec, OsStr::new(props))?;
        sec = security(&opts)?;
        tcp_backend(option, host, port, &opts)?
    } else {
        return Err(CliError::InvalidValue {
            option,
            property: "backend".into(),
            value: shown(arg),
            reason: "rampart's monitor back-ends are unix:PATH,server=on, \
                     tcp:HOST:PORT,server=on, stdio and none"
                .into(),
        });
    };
    let id = format!("compat_monitor{index}");
    Ok(Some((
        sec.chardev(id.clone(), backend),
        MonitorConfig {
            chardev: id,
            mode,
            pretty: false,
        },
    )))
}

/// Cross-checks chardevs and monitors: unique ids, every monitor's chardev exists and is used
/// once, and stdio is used by one thing only.
pub(crate) fn check(
    chardevs: &[ChardevConfig],
    monitors: &[MonitorConfig],
    serial_is_stdio: bool,
) -> Result<(), CliError> {
    for (i, c) in chardevs.iter().enumerate() {
        if chardevs[..i].iter().any(|d| d.id == c.id) {
            return Err(CliError::Conflict(format!(
                "-chardev: duplicate chardev id '{}'",
                c.id
            )));
        }
    }
    for (i, m) in monitors.iter().enumerate() {
        if !chardevs.iter().any(|c| c.id == m.chardev) {
            return Err(CliError::Conflict(format!(
                "-mon: chardev '{}' not found",
                m.chardev
            )));
        }
        if monitors[..i].iter().any(|n| n.chardev == m.chardev) {
            return Err(CliError::Conflict(format!(
                "-mon: chardev '{}' is already in use by another monitor",
                m.chardev
            )));
        }
    }
    let stdio_users = chardevs
        .iter()
        .filter(|c| c.backend == ChardevBackend::Stdio)
        .count()
        + usize::from(serial_is_stdio);
    if stdio_users > 1 {
        return Err(CliError::Conflict(
            "cannot use stdio by multiple character devices (is the serial console on stdio? \
             add -serial none, -serial file:PATH or -nodefaults)"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn qmp_unix_socket_becomes_a_compat_monitor_chardev() {
        let (c, m) = legacy_monitor(
            MonitorMode::Control,
            0,
            os("unix:/tmp/q.sock,server=on,wait=off"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.id, "compat_monitor0");
        assert_eq!(
            c.backend,
            ChardevBackend::UnixServer {
                path: "/tmp/q.sock".into(),
                wait: false
            }
        );
        assert_eq!(m.mode, MonitorMode::Control);
        assert_eq!(m.chardev, "compat_monitor0");
    }

    #[test]
    fn monitor_none_adds_nothing_and_stdio_is_accepted() {
        assert!(legacy_monitor(MonitorMode::Readline, 0, os("none"))
            .unwrap()
            .is_none());
        let (c, _) = legacy_monitor(MonitorMode::Readline, 1, os("stdio"))
            .unwrap()
            .unwrap();
        assert_eq!(c.backend, ChardevBackend::Stdio);
    }

    #[test]
    fn client_sockets_and_other_backends_are_refused() {
        let e = legacy_monitor(MonitorMode::Control, 0, os("unix:/tmp/q")).unwrap_err();
        assert!(e.to_string().contains("server=on"), "{e}");
        let e = legacy_monitor(MonitorMode::Control, 0, os("tcp:localhost:4444")).unwrap_err();
        assert!(e.to_string().contains("server=on"), "{e}");
        let e = legacy_monitor(MonitorMode::Control, 0, os("udp:localhost:4444")).unwrap_err();
        assert!(e.to_string().contains("udp:localhost:4444"), "{e}");
        assert!(
            legacy_monitor(MonitorMode::Control, 0, os("unix:/q,server=on,telnet=on")).is_err()
        );
    }

    #[test]
    fn chardev_socket_and_mon_parse_like_qemu() {
        let c = chardev(os("socket,id=mon0,path=/tmp/m,server=on,wait=off")).unwrap();
        assert_eq!(c.id, "mon0");
        let m = mon(os("chardev=mon0,mode=control,pretty=on")).unwrap();
        assert_eq!(m.mode, MonitorMode::Control);
        assert!(m.pretty);
        assert_eq!(mon(os("chardev=mon0")).unwrap().mode, MonitorMode::Readline);
        check(&[c], &[m], false).unwrap();
    }

    #[test]
    fn tcp_sockets_parse_with_their_security_properties() {
        let c = chardev(os(
            "socket,id=m,host=127.0.0.1,port=4444,server=on,wait=off,tls-creds=t0,tls-authz=a0",
        ))
        .unwrap();
        assert_eq!(
            c.backend,
            ChardevBackend::TcpServer {
                host: "127.0.0.1".into(),
                port: 4444,
                wait: false
            }
        );
        assert_eq!(c.tls_creds.as_deref(), Some("t0"));
        assert_eq!(c.tls_authz.as_deref(), Some("a0"));
        assert!(!c.insecure);
        let (c, _) = legacy_monitor(
            MonitorMode::Control,
            0,
            os("tcp:[::1]:4444,server=on,wait=off,insecure=on"),
        )
        .unwrap()
        .unwrap();
        assert!(c.insecure);
        assert!(
            matches!(c.backend, ChardevBackend::TcpServer { ref host, port: 4444, .. } if host == "::1")
        );
        let c = chardev(os("socket,id=u,path=/tmp/m,server=on,tls-authz=a0")).unwrap();
        assert_eq!(c.tls_authz.as_deref(), Some("a0"));
        for bad in [
            "socket,id=m,host=h,port=99999,server=on",
            "socket,id=m,port=1,server=on",
            "socket,id=m,path=/x,port=1,server=on",
            "socket,id=m,path=/x,server=on,insecure=on",
            "socket,id=m,host=h,port=1,server=on,tls-creds=",
        ] {
            assert!(chardev(os(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn chardev_errors_name_the_culprit() {
        assert!(chardev(os("socket,path=/tmp/m,server=on"))
            .unwrap_err()
            .to_string()
            .contains("'id'"));
        assert!(chardev(os("pty,id=x"))
            .unwrap_err()
            .to_string()
            .contains("pty"));
        assert!(chardev(os("socket,id=x,path=/m,server=on,colour=red")).is_err());
        assert!(chardev(os("stdio,id=x,path=/m"))
            .unwrap_err()
            .to_string()
            .contains("path"));
        assert!(chardev(os("stdio,id=x,tls-creds=t0"))
            .unwrap_err()
            .to_string()
            .contains("tls-creds"));
        assert!(mon(os("chardev=x,mode=fancy"))
            .unwrap_err()
            .to_string()
            .contains("fancy"));
    }

    #[test]
    fn monitor_needs_an_existing_unused_chardev_and_stdio_is_shared_by_none() {
        let c = chardev(os("stdio,id=s")).unwrap();
        let m = mon(os("chardev=nope")).unwrap();
        assert!(check(std::slice::from_ref(&c), &[m], false)
            .unwrap_err()
            .to_string()
            .contains("nope"));
        let m = mon(os("chardev=s")).unwrap();
        assert!(check(std::slice::from_ref(&c), &[m.clone(), m.clone()], false).is_err());
        assert!(
            check(std::slice::from_ref(&c), std::slice::from_ref(&m), true)
                .unwrap_err()
                .to_string()
                .contains("stdio")
        );
    }
}
