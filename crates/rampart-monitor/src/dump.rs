//! `dump-guest-memory`: guest RAM as an ELF core, written by the VMM thread (vCPUs paused) to
//! a file the monitor opens — `fd:NAME` (a descriptor passed with `getfd`) or `file:PATH`,
//! which the host-path policy confines like every file a monitor command names (`/dev/fdset/N`
//! or beneath a `-monitor-path-allow` directory that is not read-only). Only what rampart
//! implements is accepted: `paging=false`, format `elf`, the whole of RAM, no `detach`.

use std::fs::File;
use std::path::Path;

use rampart_config::control::ControlRequest;
use serde_json::{json, Map, Value};

use crate::dispatch::{Dispatcher, Peer};
use crate::error::QmpError;
use crate::schema::{opt, req, EnumDef, Member, Ty};

/// Creates (or truncates) a file a monitor command names, under the monitor's path policy.
pub type FileCreator = Box<dyn Fn(&Path) -> std::io::Result<File> + Send>;

const DUMP_FORMAT: EnumDef = EnumDef {
    values: &[
        "elf",
        "kdump-zlib",
        "kdump-lzo",
        "kdump-snappy",
        "kdump-raw-zlib",
        "kdump-raw-lzo",
        "kdump-raw-snappy",
        "win-dmp",
    ],
};

/// `dump-guest-memory`'s arguments (QEMU 10's).
pub const DUMP_ARGS: &[Member] = &[
    req("paging", Ty::Bool),
    req("protocol", Ty::Str),
    opt("detach", Ty::Bool),
    opt("begin", Ty::Int),
    opt("length", Ty::Int),
    opt("format", Ty::Enum(&DUMP_FORMAT)),
];

/// `query-dump-guest-memory-capability`'s answer.
pub const DUMP_CAPABILITY: Ty = Ty::Object(&[req("formats", Ty::Array(&Ty::Enum(&DUMP_FORMAT)))]);

fn refuse(what: &str) -> QmpError {
    QmpError::generic(format!("dump-guest-memory: {what}"))
}

/// Runs `dump-guest-memory`.
pub(crate) fn run(
    d: &mut Dispatcher,
    peer: &Peer,
    args: &Map<String, Value>,
) -> Result<Value, QmpError> {
    if args.get("paging") == Some(&Value::Bool(true)) {
        return Err(refuse(
            "paging=true is not supported: rampart dumps guest-physical memory (paging=false)",
        ));
    }
    if let Some(f) = args.get("format").and_then(Value::as_str) {
        if f != "elf" {
            return Err(refuse(&format!(
                "format '{f}' is not supported: rampart writes ELF"
            )));
        }
    }
    if args.contains_key("begin") != args.contains_key("length") {
        let missing = if args.contains_key("begin") {
            "length"
        } else {
            "begin"
        };
        return Err(QmpError::generic(format!(
            "Parameter '{missing}' is missing"
        )));
    }
    if args.contains_key("begin") {
        return Err(refuse(
            "'begin' and 'length' are not supported: rampart dumps all of guest RAM",
        ));
    }
    if args.get("detach") == Some(&Value::Bool(true)) {
        return Err(refuse(
            "detach=true is not supported: the dump completes before the reply",
        ));
    }
    let protocol = args
        .get("protocol")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let file = if let Some(name) = protocol.strip_prefix("fd:") {
        File::from(d.fds.take_named(peer, name).ok_or_else(|| {
            QmpError::generic(format!("File descriptor named '{name}' has not been found"))
        })?)
    } else if let Some(path) = protocol.strip_prefix("file:") {
        let Some(create) = d.file_creator.as_ref() else {
            return Err(refuse("files cannot be created on this monitor"));
        };
        create(Path::new(path))
            .map_err(|e| QmpError::generic(format!("Could not create '{path}': {e}")))?
    } else {
        return Err(QmpError::generic(
            "parameter 'protocol' must start with 'file:' or 'fd:'",
        ));
    };
    d.control(ControlRequest::DumpGuestMemory(file))?;
    Ok(json!({}))
}

/// `query-dump-guest-memory-capability`.
pub(crate) fn capability() -> Value {
    json!({"formats": ["elf"]})
}
