//! `-serial`: QEMU's legacy character-device syntax, reduced to the back-ends rampart has.
//!
//! - `stdio`, `null`, `none`;
//! - `file:PATH` — as in QEMU, everything after `file:` is the path, taken literally (QEMU does
//!   not apply `,,` escaping here, so `file:/tmp/a,,b` names the file `/tmp/a,,b`);
//! - `unix:PATH[,server=on|off][,wait=on|off]` — the part after `unix:` uses the key=value
//!   syntax with `path` implied (so `,,` is a literal comma in the path). As in QEMU, `server`
//!   defaults to `off` (connect as a client) and `wait` to `on`; rampart only listens, so a client
//!   socket is refused.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use rampart_config::SerialBackend;

use super::argv::shown;
use super::qemu_opts::{self, OptSpec};
use super::CliError;

const UNIX: OptSpec = OptSpec {
    option: "-serial",
    implied: Some("path"),
    known: &["path", "server", "wait"],
    unsupported: &[
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
    ],
    reason: "rampart's unix: serial back-end takes only path, server and wait",
};

fn unsupported(arg: &OsStr, why: &str) -> CliError {
    CliError::InvalidValue {
        option: "-serial",
        property: "backend".into(),
        value: shown(arg),
        reason: why.into(),
    }
}

/// Parses one `-serial` argument.
pub(crate) fn parse(arg: &OsStr) -> Result<SerialBackend, CliError> {
    let bytes = arg.as_bytes();
    if bytes.len() > qemu_opts::MAX_ARG_LEN {
        return Err(CliError::TooLong {
            option: "-serial",
            len: bytes.len(),
            max: qemu_opts::MAX_ARG_LEN,
        });
    }
    match bytes {
        b"stdio" => return Ok(SerialBackend::Stdio),
        b"null" => return Ok(SerialBackend::Null),
        b"none" => return Ok(SerialBackend::None),
        _ => {}
    }
    if let Some(path) = bytes.strip_prefix(b"file:") {
        if path.is_empty() {
            return Err(unsupported(arg, "file: needs a path"));
        }
        return Ok(SerialBackend::File(PathBuf::from(OsStr::from_bytes(path))));
    }
    if let Some(rest) = bytes.strip_prefix(b"unix:") {
        return unix(OsStr::from_bytes(rest));
    }
    Err(unsupported(
        arg,
        "unsupported serial back-end (rampart has stdio, null, none, file:PATH and unix:PATH)",
    ))
}

fn unix(rest: &OsStr) -> Result<SerialBackend, CliError> {
    let opts = qemu_opts::parse(&UNIX, rest)?;
    let path = match opts.os("path") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            return Err(CliError::Invalid {
                option: "-serial",
                message: "unix: needs a socket path".into(),
            })
        }
    };
    let server = opts.bool("server")?.unwrap_or(false);
    let wait = opts.bool("wait")?;
    if !server {
        return Err(CliError::Invalid {
            option: "-serial",
            message: format!(
                "unix:{}: connecting as a client is not supported (add server=on)",
                path.display()
            ),
        });
    }
    Ok(SerialBackend::UnixServer {
        path,
        wait: wait.unwrap_or(true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(arg: &str) -> Result<SerialBackend, CliError> {
        parse(OsStr::new(arg))
    }

    #[test]
    fn simple_backends() {
        assert_eq!(p("stdio").unwrap(), SerialBackend::Stdio);
        assert_eq!(p("null").unwrap(), SerialBackend::Null);
        assert_eq!(p("none").unwrap(), SerialBackend::None);
    }

    #[test]
    fn file_path_is_taken_literally_like_qemu() {
        assert_eq!(
            p("file:/tmp/a,,b").unwrap(),
            SerialBackend::File("/tmp/a,,b".into())
        );
        assert_eq!(
            p("file:/tmp/a,b").unwrap(),
            SerialBackend::File("/tmp/a,b".into())
        );
        assert!(p("file:").is_err());
    }

    #[test]
    fn unix_server_defaults_to_waiting() {
        assert_eq!(
            p("unix:/tmp/s,server=on").unwrap(),
            SerialBackend::UnixServer {
                path: "/tmp/s".into(),
                wait: true
            }
        );
        assert_eq!(
            p("unix:/tmp/s,server=on,wait=off").unwrap(),
            SerialBackend::UnixServer {
                path: "/tmp/s".into(),
                wait: false
            }
        );
    }

    #[test]
    fn unix_path_unescapes_double_comma() {
        assert_eq!(
            p("unix:/tmp/a,,b,server=on").unwrap(),
            SerialBackend::UnixServer {
                path: "/tmp/a,b".into(),
                wait: true
            }
        );
    }

    #[test]
    fn unix_short_form_flags_are_accepted() {
        assert_eq!(
            p("unix:/tmp/s,server,nowait").unwrap(),
            SerialBackend::UnixServer {
                path: "/tmp/s".into(),
                wait: false
            }
        );
    }

    #[test]
    fn unix_client_mode_is_refused() {
        for arg in ["unix:/tmp/s", "unix:/tmp/s,server=off"] {
            let err = p(arg).unwrap_err();
            assert!(
                err.to_string()
                    .contains("connecting as a client is not supported"),
                "{err}"
            );
        }
    }

    #[test]
    fn unix_rejects_unknown_property_and_empty_path() {
        assert!(matches!(
            p("unix:/s,server=on,colour=1"),
            Err(CliError::UnknownProperty { .. })
        ));
        assert!(p("unix:,server=on").is_err());
    }

    #[test]
    fn other_backends_are_named_in_the_error() {
        let err = p("pty").unwrap_err();

        assert!(err.to_string().contains("'pty'"), "{err}");
        assert!(p("tcp::4444,server=on").is_err());
        assert!(p("mon:stdio").is_err());
    }

    #[test]
    fn non_utf8_file_path_is_kept() {
        let arg = OsStr::from_bytes(b"file:/tmp/\xfe");

        let SerialBackend::File(path) = parse(arg).unwrap() else {
            panic!("not a file backend");
        };

        assert_eq!(path.as_os_str().as_bytes(), b"/tmp/\xfe");
    }
}
