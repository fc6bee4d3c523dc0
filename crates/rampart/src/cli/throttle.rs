//! Block I/O limits: `-drive throttling.*` and `-object throttle-group` (QEMU's names: `bps`
//! and `iops`, each `-total`, `-read` or `-write`, with `-max` bursts and `-max-length`).

use std::ffi::OsStr;

use rampart_config::props::Props;
use rampart_config::{parse_size, BlockLimits, DriveThrottle, RateLimit, ThrottleGroupConfig};

use super::qemu_opts::Opts;
use super::CliError;

/// The limit names, in [`BlockLimits`] field order.
const NAMES: [&str; 6] = [
    "bps-total",
    "bps-read",
    "bps-write",
    "iops-total",
    "iops-read",
    "iops-write",
];

fn assemble(
    mut get: impl FnMut(&str) -> Result<Option<u64>, CliError>,
) -> Result<BlockLimits, CliError> {
    let mut one = |name: &str| -> Result<RateLimit, CliError> {
        Ok(RateLimit {
            avg: get(name)?.unwrap_or(0),
            max: get(&format!("{name}-max"))?.unwrap_or(0),
            max_length: get(&format!("{name}-max-length"))?.unwrap_or(0),
        })
    };
    Ok(BlockLimits {
        bps_total: one(NAMES[0])?,
        bps_read: one(NAMES[1])?,
        bps_write: one(NAMES[2])?,
        iops_total: one(NAMES[3])?,
        iops_read: one(NAMES[4])?,
        iops_write: one(NAMES[5])?,
    })
}

/// `-drive`'s `throttling.*`.
pub(crate) fn drive(opts: &Opts) -> Result<DriveThrottle, CliError> {
    let limits = assemble(|name| {
        // The `'static` key as `-drive`'s spec (which lists every key it takes) spells it.
        let Some(key) = super::block::DRIVE
            .known
            .iter()
            .find(|k| **k == format!("throttling.{name}"))
        else {
            return Ok(None);
        };
        match opts.str(key)? {
            None => Ok(None),
            Some(v) => parse_size("throttling", v, 1)
                .map(Some)
                .map_err(|e| opts.invalid(key, OsStr::new(v), &e.to_string())),
        }
    })?;
    limits.validate().map_err(|e| CliError::Invalid {
        option: "-drive",
        message: format!("throttling.{e}"),
    })?;
    let group = opts.str("throttling.group")?.map(str::to_owned);
    if let Some(g) = &group {
        if g.is_empty() || g.len() > 63 {
            return Err(opts.invalid("throttling.group", OsStr::new(g), "expected a group name"));
        }
    }
    Ok(DriveThrottle { limits, group })
}

/// `-object throttle-group,id=G,limits.bps-total=N,...` (or QEMU's `x-bps-total=N` form).
pub(crate) fn group(mut tree: Props) -> Result<ThrottleGroupConfig, CliError> {
    let err = |e| CliError::Props {
        option: "-object",
        source: e,
    };
    let id = tree
        .take_string("id")
        .map_err(err)?
        .ok_or_else(|| CliError::Invalid {
            option: "-object",
            message: "throttle-group: parameter 'id' is missing".into(),
        })?;
    let mut nested = tree.take_map("limits").map_err(err)?;
    let limits = assemble(|name| {
        let x = tree.take_size(&format!("x-{name}")).map_err(err)?;
        let l = match nested.as_mut() {
            Some(n) => n.take_size(name).map_err(err)?,
            None => None,
        };
        if x.is_some() && l.is_some() {
            return Err(CliError::Conflict(format!(
                "-object throttle-group: x-{name} and limits.{name} both given"
            )));
        }
        Ok(x.or(l))
    })?;
    if let Some(n) = &nested {
        n.deny_unknown().map_err(err)?;
    }
    tree.deny_unknown().map_err(err)?;
    limits.validate().map_err(|e| CliError::Invalid {
        option: "-object",
        message: format!("throttle-group {id}: {e}"),
    })?;
    Ok(ThrottleGroupConfig { id, limits })
}
