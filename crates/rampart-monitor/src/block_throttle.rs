//! Block I/O limits in the monitor: the limit fields of `query-block` and
//! `block_set_io_throttle` (QEMU's argument names), through each drive's [`ThrottleControl`].

use std::sync::Arc;

use rampart_config::{BlockLimits, RateLimit};
use serde_json::{json, Map, Value};

use crate::block::BlockDeviceInfo;
use crate::error::{ErrorClass, QmpError};
use crate::schema::{opt, req, Member, Ty};

/// Reads and changes a drive's limits (its own, or its throttle group's).
#[derive(Clone)]
pub struct ThrottleControl {
    pub get: Arc<dyn Fn() -> BlockLimits + Send + Sync>,
    /// Takes effect at once, for every drive of the group.
    pub set: Arc<dyn Fn(BlockLimits) + Send + Sync>,
    /// The group's name, if the drive is in one.
    pub group: Option<String>,
}

impl std::fmt::Debug for ThrottleControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThrottleControl")
            .field("group", &self.group)
            .finish()
    }
}

/// QEMU's names for the six limits, in [`BlockLimits`] order.
const NAMES: [&str; 6] = ["bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr"];

/// `block_set_io_throttle`'s arguments.
pub const ARGS: &[Member] = &[
    opt("device", Ty::Str),
    opt("id", Ty::Str),
    req("bps", Ty::Int),
    req("bps_rd", Ty::Int),
    req("bps_wr", Ty::Int),
    req("iops", Ty::Int),
    req("iops_rd", Ty::Int),
    req("iops_wr", Ty::Int),
    opt("bps_max", Ty::Int),
    opt("bps_rd_max", Ty::Int),
    opt("bps_wr_max", Ty::Int),
    opt("iops_max", Ty::Int),
    opt("iops_rd_max", Ty::Int),
    opt("iops_wr_max", Ty::Int),
    opt("bps_max_length", Ty::Int),
    opt("bps_rd_max_length", Ty::Int),
    opt("bps_wr_max_length", Ty::Int),
    opt("iops_max_length", Ty::Int),
    opt("iops_rd_max_length", Ty::Int),
    opt("iops_wr_max_length", Ty::Int),
    opt("iops_size", Ty::Int),
    opt("group", Ty::Str),
];

/// The limit members `query-block` reports for `d` (QEMU's `BlockDeviceInfo`).
pub fn insert_limits(d: &BlockDeviceInfo, m: &mut Map<String, Value>) {
    let l = d.throttle.as_ref().map(|t| (t.get)()).unwrap_or_default();
    for (name, r) in NAMES.iter().zip(l.as_array()) {
        m.insert((*name).into(), json!(r.avg));
        if r.max != 0 {
            m.insert(format!("{name}_max"), json!(r.max));
            m.insert(format!("{name}_max_length"), json!(r.max_length.max(1)));
        }
    }
    if let Some(g) = d.throttle.as_ref().and_then(|t| t.group.clone()) {
        if l.any() {
            m.insert("group".into(), json!(g));
        }
    }
}

fn num(args: &Map<String, Value>, key: &str) -> Result<u64, QmpError> {
    match args.get(key) {
        None => Ok(0),
        Some(v) => v.as_u64().ok_or_else(|| {
            QmpError::generic(format!("Parameter '{key}' expects a non-negative number"))
        }),
    }
}

/// `block_set_io_throttle`: new limits for the drive named by `device` (drive id) or `id`
/// (its device's id or QOM path), effective at once.
pub fn set_io_throttle(
    blocks: &[BlockDeviceInfo],
    args: &Map<String, Value>,
) -> Result<Value, QmpError> {
    let device = args.get("device").and_then(Value::as_str);
    let id = args.get("id").and_then(Value::as_str);
    let found = match (device, id) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(QmpError::generic("Need exactly one of 'device' and 'id'"))
        }
        (Some(dev), None) => blocks
            .iter()
            .find(|b| !b.device.is_empty() && b.device == dev),
        (None, Some(id)) => blocks.iter().find(|b| {
            b.qdev.as_deref().is_some_and(|q| {
                q == id
                    || q.strip_suffix("/virtio-backend") == Some(id)
                    || q == format!("/machine/peripheral/{id}/virtio-backend")
            })
        }),
    };
    let name = device.or(id).unwrap_or_default();
    let Some(b) = found else {
        return Err(QmpError {
            class: ErrorClass::DeviceNotFound,
            desc: format!("Device '{name}' not found"),
        });
    };
    let Some(t) = &b.throttle else {
        return Err(QmpError::generic(format!(
            "Device '{name}' has no throttling"
        )));
    };
    if num(args, "iops_size")? != 0 {
        return Err(QmpError::generic(
            "Parameter 'iops_size' is not supported: rampart counts every request as one I/O",
        ));
    }
    if let Some(g) = args.get("group").and_then(Value::as_str) {
        if t.group.as_deref() != Some(g) {
            return Err(QmpError::generic(format!(
                "Parameter 'group': moving a drive to throttle group '{g}' at run time is not supported"
            )));
        }
    }
    let mut r = [RateLimit::default(); 6];
    for (slot, name) in r.iter_mut().zip(NAMES) {
        *slot = RateLimit {
            avg: num(args, name)?,
            max: num(args, &format!("{name}_max"))?,
            max_length: num(args, &format!("{name}_max_length"))?,
        };
    }
    let limits = BlockLimits {
        bps_total: r[0],
        bps_read: r[1],
        bps_write: r[2],
        iops_total: r[3],
        iops_read: r[4],
        iops_write: r[5],
    };
    limits
        .validate()
        .map_err(|e| QmpError::generic(e.to_string()))?;
    (t.set)(limits);
    Ok(json!({}))
}
