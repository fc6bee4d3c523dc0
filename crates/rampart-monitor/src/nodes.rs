//! Block nodes the monitor opens: `blockdev-add`, `blockdev-del`, and
//! `query-named-block-nodes` (which lists the command line's nodes too).
//!
//! `blockdev-add` makes rampart open host files, so it is where the monitor's host-path policy
//! bites: the binary's [`BlockNodes`] opens every file — the image and each backing file —
//! through an opener that accepts only `/dev/fdset/N` or a file beneath a directory allowed
//! with `-monitor-path-allow`. A node added here is opened and locked like a command-line one
//! and held until `blockdev-del`; attaching a device to it (hot-plug) is not implemented.

use serde_json::{json, Map, Value};

use crate::block::{inserted, BlockDeviceInfo, BLOCK_DEVICE_INFO};
use crate::dispatch::VmInfo;
use crate::error::QmpError;
use crate::schema::{opt, req, EnumDef, Ty};

/// Most nodes `blockdev-add` may hold at once.
pub const MAX_ADDED_NODES: usize = 32;

/// Opens and closes the nodes `blockdev-add` names (implemented by the binary over
/// `rampart-block`, behind the monitor's path policy).
pub trait BlockNodes: Send {
    /// Opens (and locks) the node `blockdev-add`'s validated arguments describe.
    fn add(&mut self, args: &Map<String, Value>) -> Result<BlockDeviceInfo, String>;
    /// Closes a node `add` opened (releasing its locks).
    fn del(&mut self, node_name: &str) -> Result<(), String>;
}

const BLOCKDEV_DRIVER: EnumDef = EnumDef {
    values: &["file", "qcow2", "raw"],
};
const DISCARD: EnumDef = EnumDef {
    values: &["ignore", "unmap"],
};
const ON_OFF_AUTO: EnumDef = EnumDef {
    values: &["auto", "on", "off"],
};
const DETECT_ZEROES: EnumDef = EnumDef {
    values: &["off", "on", "unmap"],
};
const AIO: EnumDef = EnumDef {
    values: &["threads", "native", "io_uring"],
};

/// `blockdev-add`'s arguments: QEMU's `BlockdevOptions` for the drivers rampart has, flattened
/// (one object type with the members of `file`, `raw` and `qcow2`; which apply is checked per
/// driver, with the same rules as `-blockdev`). `file` and `backing` are nested definitions
/// (`{"driver":"file","filename":...}`; `backing` may be `null`); references to other nodes by
/// name are refused.
pub const BLOCKDEV_ADD_ARGS: &[crate::schema::Member] = &[
    req("driver", Ty::Enum(&BLOCKDEV_DRIVER)),
    opt("node-name", Ty::Str),
    opt("read-only", Ty::Bool),
    opt("auto-read-only", Ty::Bool),
    opt("force-share", Ty::Bool),
    opt("discard", Ty::Enum(&DISCARD)),
    opt(
        "cache",
        Ty::Object(&[opt("direct", Ty::Bool), opt("no-flush", Ty::Bool)]),
    ),
    opt("detect-zeroes", Ty::Enum(&DETECT_ZEROES)),
    opt("filename", Ty::Str),
    opt("locking", Ty::Enum(&ON_OFF_AUTO)),
    opt("aio", Ty::Enum(&AIO)),
    opt("file", Ty::Any),
    opt("backing", Ty::Any),
];

/// `query-named-block-nodes`' answer.
pub const NAMED_BLOCK_NODES: Ty = Ty::Array(&BLOCK_DEVICE_INFO);

/// The nodes added through the monitor.
#[derive(Default)]
pub struct NodeState {
    pub(crate) backend: Option<Box<dyn BlockNodes>>,
    added: Vec<BlockDeviceInfo>,
}

impl NodeState {
    /// Runs one of the node commands, or returns `None` if `name` is not one.
    pub(crate) fn run(
        &mut self,
        info: &VmInfo,
        name: &str,
        args: &Map<String, Value>,
    ) -> Option<Result<Value, QmpError>> {
        Some(match name {
            "blockdev-add" => self.add(info, args),
            "blockdev-del" => self.del(
                info,
                args.get("node-name")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
            ),
            "query-named-block-nodes" => Ok(Value::Array(
                info.blocks
                    .iter()
                    .chain(&self.added)
                    .map(inserted)
                    .collect(),
            )),
            _ => return None,
        })
    }

    fn add(&mut self, info: &VmInfo, args: &Map<String, Value>) -> Result<Value, QmpError> {
        let Some(node) = args.get("node-name").and_then(Value::as_str) else {
            return Err(QmpError::generic(
                "'node-name' must be specified for the root node",
            ));
        };
        let taken = info
            .blocks
            .iter()
            .chain(&self.added)
            .any(|b| b.node_name == node || (!b.device.is_empty() && b.device == node));
        if taken {
            return Err(QmpError::generic(format!(
                "Duplicate nodes with node-name='{node}'"
            )));
        }
        if self.added.len() >= MAX_ADDED_NODES {
            return Err(QmpError::generic(format!(
                "too many nodes added through the monitor (the limit is {MAX_ADDED_NODES})"
            )));
        }
        let Some(backend) = self.backend.as_mut() else {
            return Err(QmpError::generic(
                "blockdev-add is not available on this monitor",
            ));
        };
        let added = backend.add(args).map_err(QmpError::generic)?;
        self.added.push(added);
        Ok(json!({}))
    }

    fn del(&mut self, info: &VmInfo, node: &str) -> Result<Value, QmpError> {
        if let Some(i) = self.added.iter().position(|b| b.node_name == node) {
            if let Some(backend) = self.backend.as_mut() {
                backend.del(node).map_err(QmpError::generic)?;
            }
            self.added.remove(i);
            return Ok(json!({}));
        }
        if info.blocks.iter().any(|b| b.node_name == node) {
            return Err(QmpError::generic(format!(
                "Node '{node}' is not owned by the monitor (it was created on the command line)"
            )));
        }
        Err(QmpError::generic(format!(
            "Failed to find node with node-name='{node}'"
        )))
    }
}
