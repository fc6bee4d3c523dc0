//! `-chardev`, `-mon`, `-qmp` and `-monitor`: character devices and the monitors on them.
//!
//! - `-chardev socket,id=ID,path=PATH,server=on[,wait=on|off]` and `-chardev stdio,id=ID`;
//! - `-mon chardev=ID[,mode=control|readline][,pretty=on|off]` (QEMU's default mode is
//!   `readline`);
//! - `-qmp unix:PATH,server=on[,wait=off]` / `-qmp stdio`: a QMP monitor on a new chardev named
//!   `compat_monitorN`, as QEMU names it; `-monitor` the same for the human monitor
//!   (`-monitor none` adds none).
//!
//! As with `-serial`, rampart only listens: a UNIX socket without `server=on` is refused.
//! `wait` defaults to `on` as in QEMU.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use rampart_config::{ChardevBackend, ChardevConfig, MonitorConfig, MonitorMode};

use super::argv::shown;
use super::qemu_opts::{self, OptSpec};
use super::CliError;

const SOCKET_UNSUPPORTED: &[&str] = &[
    "host",
    "port",
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
    "tls-creds",
    "tls-authz",
    "mux",
    "logfile",
    "logappend",
    "nodelay",
    "fd",
];

const CHARDEV: OptSpec = OptSpec {
    option: "-chardev",
    implied: Some("backend"),
    known: &["backend", "id", "path", "server", "wait", "signal"],
    unsupported: SOCKET_UNSUPPORTED,
    reason: "rampart's chardevs are UNIX server sockets (path, server, wait) and stdio",
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
        known: &["path", "server", "wait"],
        unsupported: SOCKET_UNSUPPORTED,
        reason: "rampart's unix: monitor back-end takes only path, server and wait",
    }
}

const QMP: OptSpec = legacy("-qmp");
const MONITOR: OptSpec = legacy("-monitor");

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
    let backend = match opts.str("backend")? {
        Some("socket") => {
            if opts.os("signal").is_some() {
                return Err(unknown_for("socket", "signal"));
            }
            socket_backend("-chardev", &opts)?
        }
        Some("stdio") => {
            for key in ["path", "server", "wait", "signal"] {
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
    Ok(ChardevConfig { id, backend })
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
    let backend = match bytes {
        b"none" => return Ok(None),
        b"stdio" => ChardevBackend::Stdio,
        _ => match bytes.strip_prefix(b"unix:") {
            Some(rest) => {
                let spec = match mode {
                    MonitorMode::Control => &QMP,
                    MonitorMode::Readline => &MONITOR,
                };
                socket_backend(option, &qemu_opts::parse(spec, OsStr::from_bytes(rest))?)?
            }
            None => {
                return Err(CliError::InvalidValue {
                    option,
                    property: "backend".into(),
                    value: shown(arg),
                    reason: "rampart's monitor back-ends are unix:PATH,server=on, stdio and none"
                        .into(),
                })
            }
        },
    };
    let id = format!("compat_monitor{index}");
    Ok(Some((
        ChardevConfig {
            id: id.clone(),
            backend,
        },
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
        assert!(e.to_string().contains("tcp:localhost:4444"), "{e}");
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
