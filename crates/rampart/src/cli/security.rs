//! `-object tls-creds-x509|tls-creds-psk|authz-simple|authz-list|authz-listfile` and `-audit`:
//! the monitor's network security objects (typed in `rampart_config::security`).

use std::ffi::OsStr;
use std::path::PathBuf;

use rampart_config::props::{Props, PropsError};
use rampart_config::{AuditConfig, AuthzConfig, AuthzKind, AuthzList, TlsCredsConfig};
use tracing::info;

use super::qemu_opts::{self, OptSpec};
use super::CliError;

/// The security objects `-object` creates.
#[derive(Debug, PartialEq)]
pub(crate) enum SecurityObject {
    TlsCreds(TlsCredsConfig),
    Authz(AuthzConfig),
}

fn err(qom_type: &str, e: PropsError) -> CliError {
    CliError::Invalid {
        option: "-object",
        message: format!("{qom_type}: {e}"),
    }
}

fn invalid(qom_type: &str, message: impl std::fmt::Display) -> CliError {
    CliError::Invalid {
        option: "-object",
        message: format!("{qom_type}: {message}"),
    }
}

fn dir(qom_type: &str, tree: &mut Props) -> Result<PathBuf, CliError> {
    match tree.take_string("dir").map_err(|e| err(qom_type, e))? {
        Some(d) if !d.is_empty() => Ok(PathBuf::from(d)),
        _ => Err(invalid(qom_type, "parameter 'dir' is missing")),
    }
}

/// Turns `-object TYPE,...` (type already taken from `tree`) into a security object, or `None`
/// if `qom_type` is not one.
pub(crate) fn parse(qom_type: &str, mut tree: Props) -> Result<Option<SecurityObject>, CliError> {
    let e = |x| err(qom_type, x);
    let obj = match qom_type {
        "tls-creds-x509" | "tls-creds-psk" | "authz-simple" | "authz-list" | "authz-listfile" => {
            let id = tree
                .take_string("id")
                .map_err(e)?
                .ok_or_else(|| invalid(qom_type, "parameter 'id' is missing"))?;
            match qom_type {
                "tls-creds-psk" => {
                    return Err(invalid(
                        qom_type,
                        "rustls, rampart's TLS library, does not support pre-shared keys; use \
                         tls-creds-x509 with client certificates",
                    ))
                }
                "tls-creds-x509" => tls_creds(id, tree)?,
                _ => authz(qom_type, id, tree)?,
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(obj))
}

fn tls_creds(id: String, mut tree: Props) -> Result<SecurityObject, CliError> {
    const T: &str = "tls-creds-x509";
    let e = |x| err(T, x);
    let dir = dir(T, &mut tree)?;
    match tree.take_string("endpoint").map_err(e)?.as_deref() {
        None | Some("server") => {}
        Some(other) => {
            return Err(CliError::InvalidValue {
                option: "-object",
                property: "endpoint".into(),
                value: other.into(),
                reason: "rampart's monitors only listen: the endpoint is 'server'".into(),
            })
        }
    }
    let verify_peer = tree.take_bool("verify-peer").map_err(e)?.unwrap_or(true);
    if tree.remove("priority").is_some() {
        return Err(invalid(
            T,
            "property 'priority' (a GnuTLS priority string) is not supported: rampart uses \
             rustls's safe defaults (TLS 1.2 and 1.3, forward-secret AEAD suites only)",
        ));
    }
    for key in ["sanity-check", "passwordid"] {
        if tree.get(key).is_some() {
            return Err(invalid(T, format!("property '{key}' is not supported")));
        }
    }
    tree.deny_unknown().map_err(e)?;
    if dir.join("dh-params.pem").exists() {
        info!(dir = %dir.display(), "tls-creds-x509: dh-params.pem is ignored (rustls uses \
            ECDHE key exchange only)");
    }
    Ok(SecurityObject::TlsCreds(TlsCredsConfig {
        id,
        dir,
        verify_peer,
    }))
}

fn authz(qom_type: &str, id: String, mut tree: Props) -> Result<SecurityObject, CliError> {
    let e = |x| err(qom_type, x);
    let kind = match qom_type {
        "authz-simple" => AuthzKind::Simple {
            identity: tree
                .take_string("identity")
                .map_err(e)?
                .ok_or_else(|| invalid(qom_type, "parameter 'identity' is missing"))?,
        },
        "authz-list" => AuthzKind::List(AuthzList::take_from(&mut tree).map_err(e)?),
        _ => AuthzKind::ListFile {
            filename: match tree.take_string("filename").map_err(e)? {
                Some(f) if !f.is_empty() => PathBuf::from(f),
                _ => return Err(invalid(qom_type, "parameter 'filename' is missing")),
            },
            refresh: tree.take_bool("refresh").map_err(e)?.unwrap_or(true),
        },
    };
    tree.deny_unknown().map_err(e)?;
    Ok(SecurityObject::Authz(AuthzConfig { id, kind }))
}

const AUDIT: OptSpec = OptSpec {
    option: "-audit",
    implied: None,
    known: &["file"],
    unsupported: &["chardev"],
    reason: "rampart's audit log goes to a file (file=PATH)",
};

/// Parses `-audit file=PATH`.
pub(crate) fn audit(arg: &OsStr) -> Result<AuditConfig, CliError> {
    let opts = qemu_opts::parse(&AUDIT, arg)?;
    match opts.os("file") {
        Some(f) if !f.is_empty() => Ok(AuditConfig {
            file: PathBuf::from(f),
        }),
        _ => Err(CliError::Invalid {
            option: "-audit",
            message: "parameter 'file' is missing".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::argv::Opt;
    use super::super::objects::{request, Request};
    use super::*;
    use rampart_config::{AuthzPolicy, MatchFormat};

    fn object(arg: &str) -> Result<SecurityObject, String> {
        match request(Opt::Object, OsStr::new(arg)) {
            Ok(Request::Security(o)) => Ok(o),
            Ok(other) => Err(format!("{other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn tls_creds_x509_takes_qemus_properties() {
        let o = object("tls-creds-x509,id=tls0,dir=/etc/pki/qemu,endpoint=server,verify-peer=on")
            .unwrap();
        assert_eq!(
            o,
            SecurityObject::TlsCreds(TlsCredsConfig {
                id: "tls0".into(),
                dir: "/etc/pki/qemu".into(),
                verify_peer: true
            })
        );
        let e = object("tls-creds-x509,id=t,dir=/d,endpoint=client").unwrap_err();
        assert!(e.contains("client"), "{e}");
        let e = object("tls-creds-x509,id=t,dir=/d,priority=NORMAL").unwrap_err();
        assert!(e.contains("priority"), "{e}");
        let e = object("tls-creds-x509,id=t").unwrap_err();
        assert!(e.contains("'dir'"), "{e}");
        let e = object("tls-creds-psk,id=t,dir=/d,endpoint=server").unwrap_err();
        assert!(e.contains("pre-shared keys"), "{e}");
    }

    #[test]
    fn authz_objects_parse_in_json_and_dotted_forms() {
        let json = object(
            r#"{"qom-type":"authz-list","id":"auth0","policy":"deny","rules":[{"match":"*CN=admin*","policy":"allow","format":"glob"}]}"#,
        )
        .unwrap();
        let dotted = object(
            "authz-list,id=auth0,policy=deny,rules.0.match=*CN=admin*,rules.0.policy=allow,\
             rules.0.format=glob",
        )
        .unwrap();
        assert_eq!(json, dotted);
        let SecurityObject::Authz(AuthzConfig {
            kind: AuthzKind::List(l),
            ..
        }) = json
        else {
            panic!("{json:?}")
        };
        assert_eq!(l.policy, AuthzPolicy::Deny);
        assert_eq!(l.rules[0].format, MatchFormat::Glob);
        assert!(matches!(
            object("authz-simple,id=a,identity=CN=admin").unwrap(),
            SecurityObject::Authz(AuthzConfig { kind: AuthzKind::Simple { ref identity }, .. })
                if identity == "CN=admin"
        ));
        assert!(matches!(
            object("authz-listfile,id=a,filename=/etc/acl.json,refresh=off").unwrap(),
            SecurityObject::Authz(AuthzConfig {
                kind: AuthzKind::ListFile { refresh: false, .. },
                ..
            })
        ));
        assert!(object("authz-simple,id=a")
            .unwrap_err()
            .contains("identity"));
        assert!(object("authz-simple,id=a,identity=x,colour=red")
            .unwrap_err()
            .contains("colour"));
    }

    #[test]
    fn audit_takes_a_file() {
        assert_eq!(
            audit(OsStr::new("file=/var/log/a.jsonl")).unwrap().file,
            PathBuf::from("/var/log/a.jsonl")
        );
        assert!(audit(OsStr::new("chardev=c")).is_err());
        assert!(audit(OsStr::new("file=")).is_err());
    }
}
