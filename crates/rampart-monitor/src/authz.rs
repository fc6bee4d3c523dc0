//! Authorization: QEMU's authz objects (`authz-simple`, `authz-list`, `authz-listfile`) applied
//! to a monitor's peers, plus rampart's per-command roles.
//!
//! A peer's identities are its TLS certificate's distinguished name, or `uid:N` and `gid:N`
//! from SO_PEERCRED on a UNIX socket. The first rule whose `match` fits one of them decides;
//! no rule fitting means the list's default policy. An `allow` rule with `commands` permits
//! only those commands (exact names or globs such as `query-*`). The decision is taken again for
//! every command, so an edited list file takes effect on the next command.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rampart_config::{AuthzConfig, AuthzKind, AuthzList, AuthzPolicy, MatchFormat};
use tracing::{info, warn};

use crate::dispatch::{Authorizer, Peer};
use crate::glob;

/// Most bytes read from an authz list file.
const MAX_LIST_FILE: u64 = 1 << 20;

/// What an authz object says about a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Refused, with the reason (for the audit log, never for the peer).
    Deny(String),
    /// Allowed every command (`None`) or only those matching these patterns.
    Allow(Option<Vec<String>>),
}

/// The identities a peer presents to authz rules.
pub fn identities(peer: &Peer) -> Vec<String> {
    let mut ids = Vec::new();
    if let Some(dn) = &peer.identity {
        ids.push(dn.clone());
    }
    if let Some(uid) = peer.uid {
        ids.push(format!("uid:{uid}"));
    }
    if let Some(gid) = peer.gid {
        ids.push(format!("gid:{gid}"));
    }
    ids
}

fn rule_matches(format: MatchFormat, pattern: &str, id: &str) -> bool {
    match format {
        MatchFormat::Exact => pattern == id,
        MatchFormat::Glob => glob::matches(pattern, id),
    }
}

fn list_verdict(list: &AuthzList, ids: &[String], object: &str) -> Verdict {
    let shown = || ids.first().map_or("(none)", String::as_str).to_string();
    for (i, r) in list.rules.iter().enumerate() {
        if ids.iter().any(|id| rule_matches(r.format, &r.pattern, id)) {
            return match r.policy {
                AuthzPolicy::Allow => Verdict::Allow(r.commands.clone()),
                AuthzPolicy::Deny => Verdict::Deny(format!(
                    "identity '{}' denied by rule {i} of '{object}'",
                    shown()
                )),
            };
        }
    }
    match list.policy {
        AuthzPolicy::Allow => Verdict::Allow(None),
        AuthzPolicy::Deny => Verdict::Deny(format!(
            "identity '{}' matches no rule of '{object}' (default policy: deny)",
            shown()
        )),
    }
}

/// What identifies a version of a list file (a change to any reloads it).
type Stamp = (u64, u64, i64, i64, u64);

fn stamp_of(m: &std::fs::Metadata) -> Stamp {
    (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.len())
}

struct ListFile {
    filename: PathBuf,
    refresh: bool,
    /// The file as last opened: when its path is out of reach (inside `-run-with jail=` or a
    /// chroot) changes are followed through this descriptor (rewrites in place, not renames).
    file: Option<std::fs::File>,
    /// The rules as last loaded (`Err`: the file could not be loaded; everything is denied).
    current: Result<AuthzList, String>,
    stamp: Option<Stamp>,
}

impl ListFile {
    /// (Re)opens the file by its path and loads it.
    fn load(&mut self) {
        match std::fs::File::open(&self.filename) {
            Ok(f) => {
                self.file = Some(f);
                self.read_open_file();
            }
            Err(e) => {
                self.stamp = None;
                self.set(Err(format!("cannot read {}: {e}", self.filename.display())));
            }
        }
    }

    /// Reads the open file from its start.
    fn read_open_file(&mut self) {
        use std::io::{Read, Seek};
        let Some(f) = self.file.as_mut() else { return };
        self.stamp = f.metadata().ok().map(|m| stamp_of(&m));
        let mut text = String::new();
        let r = f
            .rewind()
            .and_then(|()| f.take(MAX_LIST_FILE + 1).read_to_string(&mut text));
        let current = match r {
            Err(e) => Err(format!("cannot read {}: {e}", self.filename.display())),
            Ok(n) if n as u64 > MAX_LIST_FILE => Err(format!(
                "{} is larger than {MAX_LIST_FILE} bytes",
                self.filename.display()
            )),
            Ok(_) => AuthzList::parse_file(&text)
                .map_err(|e| format!("{}: {e}", self.filename.display())),
        };
        self.set(current);
    }

    fn set(&mut self, current: Result<AuthzList, String>) {
        self.current = current;
        match &self.current {
            Ok(l) => {
                info!(file = %self.filename.display(), rules = l.rules.len(), "authz list file loaded")
            }
            Err(e) => warn!("authz list file: {e}; every peer is denied until it is fixed"),
        }
    }

    fn refreshed(&mut self) -> &Result<AuthzList, String> {
        if !self.refresh {
            return &self.current;
        }
        match std::fs::metadata(&self.filename) {
            Ok(m) if Some(stamp_of(&m)) != self.stamp => self.load(),
            Ok(_) => {}
            // Out of reach (the jail) or removed: follow the file already open.
            Err(_) => {
                let now = self
                    .file
                    .as_ref()
                    .and_then(|f| f.metadata().ok())
                    .map(|m| stamp_of(&m));
                if now != self.stamp {
                    self.read_open_file();
                }
            }
        }
        &self.current
    }
}

/// One authz object, ready to decide.
pub struct Authz {
    id: String,
    kind: Kind,
}

enum Kind {
    Simple(String),
    List(AuthzList),
    File(Mutex<ListFile>),
}

impl Authz {
    /// Builds an authz object; a list file is read now (an unreadable one is an error at
    /// start-up, as in QEMU).
    pub fn new(config: &AuthzConfig) -> Result<Authz, String> {
        let kind = match &config.kind {
            AuthzKind::Simple { identity } => Kind::Simple(identity.clone()),
            AuthzKind::List(l) => Kind::List(l.clone()),
            AuthzKind::ListFile { filename, refresh } => {
                let mut f = ListFile {
                    filename: filename.clone(),
                    refresh: *refresh,
                    file: None,
                    current: Err(String::new()),
                    stamp: None,
                };
                f.load();
                if let Err(e) = &f.current {
                    return Err(format!("authz-listfile '{}': {e}", config.id));
                }
                Kind::File(Mutex::new(f))
            }
        };
        Ok(Authz {
            id: config.id.clone(),
            kind,
        })
    }

    /// The decision for a peer with these identities.
    pub fn verdict(&self, ids: &[String]) -> Verdict {
        match &self.kind {
            Kind::Simple(identity) => {
                if ids.iter().any(|i| i == identity) {
                    Verdict::Allow(None)
                } else {
                    Verdict::Deny(format!(
                        "identity '{}' is not '{}''s identity",
                        ids.first().map_or("(none)", String::as_str),
                        self.id
                    ))
                }
            }
            Kind::List(l) => list_verdict(l, ids, &self.id),
            Kind::File(f) => {
                let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
                match f.refreshed() {
                    Ok(l) => list_verdict(l, ids, &self.id),
                    Err(e) => Verdict::Deny(format!("'{}' is unusable: {e}", self.id)),
                }
            }
        }
    }
}

/// Every monitor's authz object, by monitor id; monitors without one allow every peer that
/// could connect (a UNIX socket's 0600 mode is then the access control).
#[derive(Default)]
pub struct MonitorAuthz {
    by_monitor: HashMap<String, Arc<Authz>>,
}

impl MonitorAuthz {
    pub fn new() -> MonitorAuthz {
        MonitorAuthz::default()
    }

    /// Checks the peers of monitor `monitor` with `authz`.
    pub fn insert(&mut self, monitor: impl Into<String>, authz: Arc<Authz>) {
        self.by_monitor.insert(monitor.into(), authz);
    }

    fn verdict(&self, peer: &Peer) -> Verdict {
        match self.by_monitor.get(&peer.monitor) {
            Some(a) => a.verdict(&identities(peer)),
            None => Verdict::Allow(None),
        }
    }
}

impl Authorizer for MonitorAuthz {
    fn admit(&self, peer: &Peer) -> Result<(), String> {
        match self.verdict(peer) {
            Verdict::Deny(why) => Err(why),
            Verdict::Allow(_) => Ok(()),
        }
    }

    fn authorize(&self, peer: &Peer, command: &str) -> Result<(), String> {
        match self.verdict(peer) {
            Verdict::Deny(why) => Err(why),
            Verdict::Allow(None) => Ok(()),
            Verdict::Allow(Some(cmds)) => {
                // rampart's own commands are also matched without their downstream prefix,
                // so `query-*` (a read-only role) covers `__rampart_query-netdev-throttle`.
                let bare = command.strip_prefix(crate::net_throttle::PREFIX);
                if cmds
                    .iter()
                    .any(|c| glob::matches(c, command) || bare.is_some_and(|b| glob::matches(c, b)))
                {
                    Ok(())
                } else {
                    Err("the peer's role does not include it".into())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_config::props::{parse_json_object, Limits};

    fn list_authz(json: &str) -> Authz {
        let mut t = parse_json_object(json, &Limits::DEFAULT).unwrap();
        Authz::new(&AuthzConfig {
            id: "a".into(),
            kind: AuthzKind::List(AuthzList::take_from(&mut t).unwrap()),
        })
        .unwrap()
    }

    fn tls_peer(dn: &str) -> Peer {
        Peer {
            monitor: "m".into(),
            transport: "tls",
            identity: Some(dn.into()),
            ..Peer::default()
        }
    }

    #[test]
    fn first_matching_rule_decides_and_default_policy_applies_otherwise() {
        let a = list_authz(
            r#"{"policy":"deny","rules":[{"match":"CN=eve,*","policy":"deny","format":"glob"},
                {"match":"*O=Example*","policy":"allow","format":"glob"}]}"#,
        );
        assert_eq!(
            a.verdict(&["CN=admin,O=Example".into()]),
            Verdict::Allow(None)
        );
        assert!(
            matches!(a.verdict(&["CN=eve,O=Example".into()]), Verdict::Deny(w) if w.contains("rule 0"))
        );
        assert!(
            matches!(a.verdict(&["CN=bob,O=Other".into()]), Verdict::Deny(w) if w.contains("default"))
        );
        assert!(matches!(a.verdict(&[]), Verdict::Deny(_)));
    }

    #[test]
    fn a_role_limits_the_commands_a_peer_may_run() {
        let mut m = MonitorAuthz::new();
        m.insert(
            "m",
            Arc::new(list_authz(
                r#"{"rules":[{"match":"CN=dash","policy":"allow","commands":["query-*"]},
                    {"match":"CN=admin","policy":"allow"}]}"#,
            )),
        );
        let dash = tls_peer("CN=dash");
        assert!(m.admit(&dash).is_ok());
        assert!(m.authorize(&dash, "query-status").is_ok());
        assert!(m.authorize(&dash, "stop").is_err());
        assert!(m.authorize(&tls_peer("CN=admin"), "stop").is_ok());
        // rampart's own commands: the query is in the read-only role, the change is not.
        assert!(m.authorize(&dash, crate::net_throttle::QUERY).is_ok());
        assert!(m.authorize(&dash, crate::net_throttle::SET).is_err());
        assert!(m
            .authorize(&tls_peer("CN=admin"), crate::net_throttle::SET)
            .is_ok());
        assert!(m.admit(&tls_peer("CN=mallory")).is_err());
        // Another monitor without an authz object is not affected.
        let other = Peer {
            monitor: "n".into(),
            ..tls_peer("CN=mallory")
        };
        assert!(m.authorize(&other, "stop").is_ok());
    }

    #[test]
    fn unix_peers_are_matched_by_uid_and_gid() {
        let a = Authz::new(&AuthzConfig {
            id: "a".into(),
            kind: AuthzKind::Simple {
                identity: "uid:1000".into(),
            },
        })
        .unwrap();
        let peer = Peer {
            uid: Some(1000),
            gid: Some(100),
            ..Peer::default()
        };
        assert_eq!(a.verdict(&identities(&peer)), Verdict::Allow(None));
        let peer = Peer {
            uid: Some(0),
            gid: Some(0),
            ..Peer::default()
        };
        assert!(matches!(a.verdict(&identities(&peer)), Verdict::Deny(_)));
    }

    #[test]
    fn list_file_is_reloaded_when_it_changes_and_fails_closed() {
        let dir = std::env::temp_dir().join(format!("rampart-authz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("acl.json");
        std::fs::write(
            &file,
            r#"{"policy":"deny","rules":[{"match":"CN=a","policy":"allow"}]}"#,
        )
        .unwrap();
        let a = Authz::new(&AuthzConfig {
            id: "f".into(),
            kind: AuthzKind::ListFile {
                filename: file.clone(),
                refresh: true,
            },
        })
        .unwrap();
        assert_eq!(a.verdict(&["CN=a".into()]), Verdict::Allow(None));
        // A new version (different size, so the stamp changes even within one mtime tick).
        std::fs::write(
            &file,
            r#"{"policy":"deny","rules":[{"match":"CN=bb","policy":"allow"}]}"#,
        )
        .unwrap();
        assert!(matches!(a.verdict(&["CN=a".into()]), Verdict::Deny(_)));
        assert_eq!(a.verdict(&["CN=bb".into()]), Verdict::Allow(None));
        std::fs::write(&file, "{not json").unwrap();
        assert!(matches!(a.verdict(&["CN=bb".into()]), Verdict::Deny(w) if w.contains("unusable")));
        // Fixed again, then out of reach by its path (as inside the jail): a rewrite in place
        // is still seen, through the open descriptor.
        std::fs::write(
            &file,
            r#"{"policy":"deny","rules":[{"match":"CN=c","policy":"allow"}]}"#,
        )
        .unwrap();
        assert_eq!(a.verdict(&["CN=c".into()]), Verdict::Allow(None));
        let hidden = dir.join("hidden.json");
        std::fs::rename(&file, &hidden).unwrap();
        std::fs::write(
            &hidden,
            r#"{"policy":"deny","rules":[{"match":"CN=dd","policy":"allow"}]}"#,
        )
        .unwrap();
        assert_eq!(a.verdict(&["CN=dd".into()]), Verdict::Allow(None));
        std::fs::remove_dir_all(&dir).unwrap();
        let e = Authz::new(&AuthzConfig {
            id: "f".into(),
            kind: AuthzKind::ListFile {
                filename: file,
                refresh: true,
            },
        });
        assert!(e.is_err());
    }
}
