//! File-descriptor passing over the monitor: `getfd`, `closefd`, `add-fd`, `remove-fd` and
//! `query-fdsets`, with QEMU 10's arguments, errors and return shapes.
//!
//! Descriptors arrive as `SCM_RIGHTS` ancillary data on a UNIX-socket monitor (never on stdio
//! or TCP); the transport hands the ones that came with a command to [`PassedFds`], the
//! command that takes a descriptor takes the first, and every descriptor the command did not
//! take is closed when it returns — a client cannot park descriptors in rampart by sending
//! them with commands that do not use them.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use rampart_sandbox::fdset::{FdSetError, FdSets, NamedFds};
use serde_json::{json, Map, Value};

use crate::dispatch::Peer;
use crate::error::QmpError;
use crate::schema::{opt, req, Ty};

/// Most descriptors one message (and so one command) may carry; the transport's ancillary
/// buffer holds this many and the kernel discards the rest.
pub const MAX_FDS_PER_MESSAGE: usize = 16;

/// `add-fd`'s answer (QEMU's `AddfdInfo`).
pub const ADDFD_INFO: Ty = Ty::Object(&[req("fdset-id", Ty::Int), req("fd", Ty::Int)]);

const FDSET_FD_INFO: Ty = Ty::Object(&[req("fd", Ty::Int), opt("opaque", Ty::Str)]);

/// An element of `query-fdsets`' answer (QEMU's `FdsetInfo`).
pub const FDSET_INFO: Ty = Ty::Object(&[
    req("fdset-id", Ty::Int),
    req("fds", Ty::Array(&FDSET_FD_INFO)),
]);

/// The fd state the monitor keeps: the process's fd sets (shared with start-up, which took the
/// `-add-fd` ones) and each monitor's named descriptors.
#[derive(Debug, Default)]
pub struct FdState {
    pub(crate) sets: Arc<Mutex<FdSets>>,
    /// Named descriptors, by monitor (chardev id), as QEMU keeps them per monitor.
    named: BTreeMap<String, NamedFds>,
    /// The descriptors that came with the command being run.
    pub(crate) passed: Vec<OwnedFd>,
}

fn err(e: FdSetError) -> QmpError {
    QmpError::generic(e.to_string())
}

fn no_fd() -> QmpError {
    QmpError::generic("No file descriptor supplied via SCM_RIGHTS")
}

fn str_arg<'a>(args: &'a Map<String, Value>, name: &str) -> &'a str {
    args.get(name).and_then(Value::as_str).unwrap_or_default()
}

impl FdState {
    pub fn new(sets: Arc<Mutex<FdSets>>) -> FdState {
        FdState {
            sets,
            named: BTreeMap::new(),
            passed: Vec::new(),
        }
    }

    pub(crate) fn sets(&self) -> MutexGuard<'_, FdSets> {
        self.sets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The first descriptor that came with the command (the others are closed when the
    /// command returns).
    fn take_passed(&mut self) -> Option<OwnedFd> {
        (!self.passed.is_empty()).then(|| self.passed.remove(0))
    }

    /// Takes the descriptor monitor `peer` named `name` (a command that consumes it, as
    /// QEMU's `fd:NAME` users do).
    pub(crate) fn take_named(&mut self, peer: &Peer, name: &str) -> Option<OwnedFd> {
        self.named.get_mut(&peer.monitor)?.take(name).ok()
    }

    /// Descriptors held for monitor `id` under names.
    pub fn named_count(&self, id: &str) -> usize {
        self.named.get(id).map_or(0, NamedFds::len)
    }

    /// Runs one of the fd commands, or returns `None` if `name` is not one.
    pub(crate) fn run(
        &mut self,
        peer: &Peer,
        name: &str,
        args: &Map<String, Value>,
    ) -> Option<Result<Value, QmpError>> {
        Some(match name {
            "getfd" => self.getfd(peer, str_arg(args, "fdname")),
            "closefd" => self
                .named
                .get_mut(&peer.monitor)
                .ok_or_else(|| FdSetError::NotFound(str_arg(args, "fdname").to_string()))
                .and_then(|n| n.close(str_arg(args, "fdname")))
                .map(|()| json!({}))
                .map_err(err),
            "add-fd" => self.add_fd(args),
            "remove-fd" => self.remove_fd(args),
            "query-fdsets" => Ok(self.query_fdsets()),
            _ => return None,
        })
    }

    fn getfd(&mut self, peer: &Peer, fdname: &str) -> Result<Value, QmpError> {
        let fd = self.take_passed().ok_or_else(no_fd)?;
        self.named
            .entry(peer.monitor.clone())
            .or_default()
            .insert(fdname, fd)
            .map_err(err)?;
        Ok(json!({}))
    }

    fn add_fd(&mut self, args: &Map<String, Value>) -> Result<Value, QmpError> {
        let fd = self.take_passed().ok_or_else(no_fd)?;
        let set = match args.get("fdset-id") {
            None => None,
            Some(v) => match v.as_u64() {
                Some(id) if id <= i64::MAX as u64 => Some(id),
                _ => {
                    return Err(QmpError::generic(
                        "Parameter 'fdset-id' expects a non-negative value",
                    ))
                }
            },
        };
        let opaque = args
            .get("opaque")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let (id, raw) = self.sets().add(set, fd, opaque).map_err(err)?;
        Ok(json!({"fdset-id": id, "fd": raw}))
    }

    fn remove_fd(&mut self, args: &Map<String, Value>) -> Result<Value, QmpError> {
        let id = args.get("fdset-id").and_then(Value::as_i64).unwrap_or(-1);
        let fd = args.get("fd").and_then(Value::as_i64);
        let not_found = || {
            QmpError::generic(match fd {
                Some(fd) => format!("File descriptor named 'fdset-id:{id}, fd:{fd}' not found"),
                None => format!("File descriptor named 'fdset-id:{id}' not found"),
            })
        };
        let Ok(set) = u64::try_from(id) else {
            return Err(not_found());
        };
        let fd = match fd.map(i32::try_from) {
            None => None,
            Some(Ok(fd)) => Some(fd),
            Some(Err(_)) => return Err(not_found()),
        };
        self.sets().remove(set, fd).map_err(err)?;
        Ok(json!({}))
    }

    fn query_fdsets(&self) -> Value {
        Value::Array(
            self.sets()
                .iter()
                .map(|(id, fds)| {
                    let fds: Vec<Value> = fds
                        .iter()
                        .map(|f| {
                            let mut m = Map::new();
                            m.insert("fd".into(), json!(f.fd()));
                            if let Some(o) = f.opaque() {
                                m.insert("opaque".into(), json!(o));
                            }
                            Value::Object(m)
                        })
                        .collect();
                    json!({"fdset-id": id, "fds": fds})
                })
                .collect(),
        )
    }
}

/// Closes the descriptors in `fds` (those a command did not take), logging how many.
pub(crate) fn close_unused(peer: &Peer, command: &str, fds: &mut Vec<OwnedFd>) {
    if !fds.is_empty() {
        let numbers: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        tracing::info!(
            peer = %peer,
            command,
            "closing {} passed descriptor(s) the command did not take: {numbers:?}",
            fds.len()
        );
        fds.clear();
    }
}
