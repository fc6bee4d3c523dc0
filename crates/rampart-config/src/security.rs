//! The monitor's network security objects: TLS credentials (`tls-creds-x509`), authorization
//! (`authz-simple`, `authz-list`, `authz-listfile`) and the audit log (`-audit`), and the rule
//! that a monitor reachable over TCP needs all of them.

use std::path::PathBuf;

use crate::props::{PropValue, Props, PropsError};
use crate::{ChardevBackend, ChardevConfig, ConfigError, MonitorConfig};

/// Most rules one authz list may hold (a list file is hostile-ish input too).
pub const MAX_AUTHZ_RULES: usize = 1024;
/// Most command patterns one rule may carry.
pub const MAX_RULE_COMMANDS: usize = 256;
/// Longest pattern (identity or command) accepted.
pub const MAX_PATTERN_LEN: usize = 1024;

/// `-object tls-creds-x509,id=,dir=,endpoint=server,verify-peer=on`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsCredsConfig {
    pub id: String,
    /// Holds QEMU's file names: `ca-cert.pem`, `server-cert.pem`, `server-key.pem`.
    pub dir: PathBuf,
    /// Clients must present a certificate signed by `ca-cert.pem` (QEMU's default: on).
    pub verify_peer: bool,
}

/// What an authz rule decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthzPolicy {
    Allow,
    Deny,
}

/// How a rule's `match` compares with an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchFormat {
    Exact,
    /// fnmatch-style: `*`, `?`, `[...]`, `\` escapes.
    Glob,
}

/// One rule of an `authz-list` (or of the file of an `authz-listfile`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzRule {
    /// The identity pattern (`match`).
    pub pattern: String,
    pub policy: AuthzPolicy,
    pub format: MatchFormat,
    /// rampart's extension: the commands (exact names or globs) an `allow` rule permits;
    /// `None` permits every command.
    pub commands: Option<Vec<String>>,
}

/// An authz-list's rules and its default policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzList {
    /// Applies when no rule matches (QEMU's default: deny).
    pub policy: AuthzPolicy,
    pub rules: Vec<AuthzRule>,
}

/// The kinds of authz objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthzKind {
    /// `authz-simple,identity=NAME`: exactly one identity is allowed, every command.
    Simple { identity: String },
    /// `authz-list`: rules on the command line.
    List(AuthzList),
    /// `authz-listfile,filename=,refresh=on`: rules in a JSON file, reloaded when it changes.
    ListFile { filename: PathBuf, refresh: bool },
}

/// One `-object authz-*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzConfig {
    pub id: String,
    pub kind: AuthzKind,
}

/// `-audit file=PATH`: where monitor audit lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub file: PathBuf,
}

fn policy(key: &str, v: Option<String>) -> Result<Option<AuthzPolicy>, PropsError> {
    match v.as_deref() {
        None => Ok(None),
        Some("allow") => Ok(Some(AuthzPolicy::Allow)),
        Some("deny") => Ok(Some(AuthzPolicy::Deny)),
        Some(other) => Err(PropsError::InvalidValue {
            key: key.into(),
            value: other.chars().take(64).collect(),
            expected: "allow or deny",
        }),
    }
}

fn pattern(key: &str, s: String) -> Result<String, PropsError> {
    if s.len() > MAX_PATTERN_LEN {
        return Err(PropsError::InvalidValue {
            key: key.into(),
            value: s.chars().take(64).collect(),
            expected: "a pattern of at most 1024 bytes",
        });
    }
    Ok(s)
}

fn rule(index: usize, v: PropValue) -> Result<AuthzRule, PropsError> {
    let key = |k: &str| format!("rules.{index}.{k}");
    let PropValue::Map(mut m) = v else {
        return Err(PropsError::InvalidValue {
            key: format!("rules.{index}"),
            value: v.type_name().into(),
            expected: "an object",
        });
    };
    let pat = m
        .take_string("match")
        .map_err(|e| rekey(e, &key("match")))?
        .ok_or(PropsError::Missing { key: key("match") })?;
    let policy = policy(
        &key("policy"),
        m.take_string("policy")
            .map_err(|e| rekey(e, &key("policy")))?,
    )?
    .ok_or(PropsError::Missing { key: key("policy") })?;
    let format = match m
        .take_string("format")
        .map_err(|e| rekey(e, &key("format")))?
        .as_deref()
    {
        None | Some("exact") => MatchFormat::Exact,
        Some("glob") => MatchFormat::Glob,
        Some(other) => {
            return Err(PropsError::InvalidValue {
                key: key("format"),
                value: other.chars().take(64).collect(),
                expected: "exact or glob",
            })
        }
    };
    let commands = match m
        .take_list("commands")
        .map_err(|e| rekey(e, &key("commands")))?
    {
        None => None,
        Some(list) => {
            if list.len() > MAX_RULE_COMMANDS {
                return Err(PropsError::TooMany {
                    max: MAX_RULE_COMMANDS,
                });
            }
            let mut out = Vec::with_capacity(list.len());
            for (j, c) in list.into_iter().enumerate() {
                match c {
                    PropValue::Str(s) => out.push(pattern(&key(&format!("commands.{j}")), s)?),
                    other => {
                        return Err(PropsError::InvalidValue {
                            key: key(&format!("commands.{j}")),
                            value: other.type_name().into(),
                            expected: "a command name or glob",
                        })
                    }
                }
            }
            if policy == AuthzPolicy::Deny {
                return Err(PropsError::InvalidValue {
                    key: key("commands"),
                    value: "[...]".into(),
                    expected: "no command list on a deny rule (deny rules refuse the connection)",
                });
            }
            Some(out)
        }
    };
    if let Some(k) = m.iter().next().map(|(k, _)| k.clone()) {
        return Err(PropsError::Unknown { key: key(&k) });
    }
    Ok(AuthzRule {
        pattern: pattern(&key("match"), pat)?,
        policy,
        format,
        commands,
    })
}

fn rekey(e: PropsError, key: &str) -> PropsError {
    match e {
        PropsError::InvalidValue {
            value, expected, ..
        } => PropsError::InvalidValue {
            key: key.into(),
            value,
            expected,
        },
        other => other,
    }
}

impl AuthzList {
    /// Takes `policy` and `rules` from an authz-list's properties (or a list file's object).
    pub fn take_from(tree: &mut Props) -> Result<AuthzList, PropsError> {
        let policy = policy("policy", tree.take_string("policy")?)?.unwrap_or(AuthzPolicy::Deny);
        let list = tree.take_list("rules")?.unwrap_or_default();
        if list.len() > MAX_AUTHZ_RULES {
            return Err(PropsError::TooMany {
                max: MAX_AUTHZ_RULES,
            });
        }
        let rules = list
            .into_iter()
            .enumerate()
            .map(|(i, v)| rule(i, v))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AuthzList { policy, rules })
    }

    /// Parses an authz-listfile's contents (QEMU's format: `{"policy":…,"rules":[…]}`).
    pub fn parse_file(text: &str) -> Result<AuthzList, PropsError> {
        let mut tree = crate::props::parse_json_object(text, &LIST_FILE_LIMITS)?;
        let list = AuthzList::take_from(&mut tree)?;
        tree.deny_unknown()?;
        Ok(list)
    }
}

/// Bounds for a list file: larger than a command line, still bounded.
pub const LIST_FILE_LIMITS: crate::props::Limits = crate::props::Limits {
    max_input_len: 1 << 20,
    max_depth: 8,
    max_nodes: 64 * 1024,
    max_key_len: 128,
};

/// Checks that every monitor's chardev names existing objects, and that a monitor reachable
/// over TCP has TLS credentials that verify the client and an authz object — unless the
/// chardev says `insecure=on`.
pub fn check_monitor_security(
    chardevs: &[ChardevConfig],
    monitors: &[MonitorConfig],
    tls: &[TlsCredsConfig],
    authz: &[AuthzConfig],
) -> Result<(), ConfigError> {
    for c in chardevs {
        let creds = match &c.tls_creds {
            Some(id) => Some(tls.iter().find(|t| t.id == *id).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "-chardev {}: tls-creds '{id}' is not a tls-creds-x509 object",
                    c.id
                ))
            })?),
            None => None,
        };
        if let Some(id) = &c.tls_authz {
            if !authz.iter().any(|a| a.id == *id) {
                return Err(ConfigError::Invalid(format!(
                    "-chardev {}: tls-authz '{id}' is not an authz-simple, authz-list or \
                     authz-listfile object",
                    c.id
                )));
            }
        }
        let is_tcp = matches!(c.backend, ChardevBackend::TcpServer { .. });
        if creds.is_some() && !is_tcp {
            return Err(ConfigError::Invalid(format!(
                "-chardev {}: tls-creds applies to TCP sockets only (a UNIX socket's peers are \
                 identified by SO_PEERCRED: use tls-authz alone)",
                c.id
            )));
        }
        if !is_tcp || !monitors.iter().any(|m| m.chardev == c.id) {
            if is_tcp {
                return Err(ConfigError::Invalid(format!(
                    "-chardev {}: a TCP chardev serves only monitors in rampart (add -mon \
                     chardev={})",
                    c.id, c.id
                )));
            }
            continue;
        }
        if c.insecure {
            continue;
        }
        let why = match (creds, &c.tls_authz) {
            (None, _) => "it has no tls-creds",
            (Some(t), _) if !t.verify_peer => {
                "its tls-creds do not verify the client (verify-peer=off)"
            }
            (Some(_), None) => "it has no tls-authz",
            _ => continue,
        };
        return Err(ConfigError::Invalid(format!(
            "-chardev {} ({}): refusing a monitor on TCP because {why}. Anyone who can reach the \
             port could control the VM; give tls-creds=ID (a tls-creds-x509 object with \
             verify-peer=on) and tls-authz=ID (an authz object naming the allowed client \
             certificates) — see docs/security.md, section 4. For a throw-away test set-up \
             only, insecure=on accepts any client.",
            c.id,
            c.filename()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::props::{parse_json_object, parse_keyval, Limits};

    fn list(text: &str) -> Result<AuthzList, PropsError> {
        let mut t = if text.starts_with('{') {
            parse_json_object(text, &Limits::DEFAULT)?
        } else {
            parse_keyval(text, None, &Limits::DEFAULT)?
        };
        let l = AuthzList::take_from(&mut t)?;
        t.deny_unknown()?;
        Ok(l)
    }

    #[test]
    fn json_and_dotted_rules_give_the_same_list() {
        let a = list(
            r#"{"policy":"deny","rules":[{"match":"*CN=admin*","policy":"allow","format":"glob"},
               {"match":"CN=dash","policy":"allow","commands":["query-*","cont"]}]}"#,
        )
        .unwrap();
        let b = list(
            "policy=deny,rules.0.match=*CN=admin*,rules.0.policy=allow,rules.0.format=glob,\
             rules.1.match=CN=dash,rules.1.policy=allow,rules.1.commands.0=query-*,\
             rules.1.commands.1=cont",
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.rules[0].format, MatchFormat::Glob);
        assert_eq!(a.rules[1].format, MatchFormat::Exact);
        assert_eq!(
            a.rules[1].commands.as_deref(),
            Some(&["query-*".to_string(), "cont".to_string()][..])
        );
    }

    #[test]
    fn bad_rules_name_the_culprit() {
        let e = list(r#"{"rules":[{"match":"x","policy":"maybe"}]}"#).unwrap_err();
        assert!(e.to_string().contains("rules.0.policy"), "{e}");
        let e = list(r#"{"rules":[{"policy":"allow"}]}"#).unwrap_err();
        assert!(e.to_string().contains("rules.0.match"), "{e}");
        let e = list(r#"{"rules":[{"match":"x","policy":"allow","colour":1}]}"#).unwrap_err();
        assert!(e.to_string().contains("rules.0.colour"), "{e}");
        let e =
            list(r#"{"rules":[{"match":"x","policy":"deny","commands":["stop"]}]}"#).unwrap_err();
        assert!(e.to_string().contains("rules.0.commands"), "{e}");
        assert!(AuthzList::parse_file(r#"{"policy":"allow","extra":1}"#).is_err());
    }

    fn tcp(insecure: bool, creds: Option<&str>, authz: Option<&str>) -> ChardevConfig {
        ChardevConfig {
            id: "m".into(),
            backend: ChardevBackend::TcpServer {
                host: "127.0.0.1".into(),
                port: 4444,
                wait: false,
            },
            tls_creds: creds.map(Into::into),
            tls_authz: authz.map(Into::into),
            insecure,
        }
    }

    #[test]
    fn tcp_monitor_needs_verified_tls_and_authz_unless_insecure() {
        let mon = [MonitorConfig {
            chardev: "m".into(),
            mode: crate::MonitorMode::Control,
            pretty: false,
        }];
        let tls = [TlsCredsConfig {
            id: "t".into(),
            dir: "/d".into(),
            verify_peer: true,
        }];
        let az = [AuthzConfig {
            id: "a".into(),
            kind: AuthzKind::Simple {
                identity: "CN=x".into(),
            },
        }];
        let check =
            |c: ChardevConfig, tls: &[TlsCredsConfig]| check_monitor_security(&[c], &mon, tls, &az);
        let e = check(tcp(false, None, None), &tls).unwrap_err();
        assert!(e.to_string().contains("no tls-creds"), "{e}");
        assert!(e.to_string().contains("docs/security.md"), "{e}");
        let e = check(tcp(false, Some("t"), None), &tls).unwrap_err();
        assert!(e.to_string().contains("no tls-authz"), "{e}");
        let unverified = [TlsCredsConfig {
            verify_peer: false,
            ..tls[0].clone()
        }];
        let e = check(tcp(false, Some("t"), Some("a")), &unverified).unwrap_err();
        assert!(e.to_string().contains("verify-peer=off"), "{e}");
        let e = check(tcp(false, Some("nope"), Some("a")), &tls).unwrap_err();
        assert!(e.to_string().contains("'nope'"), "{e}");
        check(tcp(false, Some("t"), Some("a")), &tls).unwrap();
        check(tcp(true, None, None), &tls).unwrap();
    }
}
