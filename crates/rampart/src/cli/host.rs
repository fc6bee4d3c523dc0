//! `-add-fd` and `-monitor-path-allow`: host resources handed over instead of named.

use std::ffi::OsStr;
use std::path::{Component, PathBuf};

use rampart_config::{AddFdConfig, PathAllowConfig};

use super::qemu_opts::{self, OptSpec};
use super::CliError;

/// Longest `opaque=` string (as the QMP `add-fd` command's).
const MAX_OPAQUE: usize = rampart_sandbox::fdset::MAX_FD_STRING;

pub(crate) const ADD_FD: OptSpec = OptSpec {
    option: "-add-fd",
    implied: None,
    known: &["fd", "set", "opaque"],
    unsupported: &[],
    reason: "",
};

pub(crate) const PATH_ALLOW: OptSpec = OptSpec {
    option: "-monitor-path-allow",
    implied: Some("path"),
    known: &["path", "readonly"],
    unsupported: &[],
    reason: "",
};

/// `-add-fd fd=N,set=M[,opaque=STR]` (the descriptor itself is checked at start-up).
pub(crate) fn add_fd(arg: &OsStr) -> Result<AddFdConfig, CliError> {
    let o = qemu_opts::parse(&ADD_FD, arg)?;
    let fd = o.u32("fd")?.ok_or(CliError::Invalid {
        option: "-add-fd",
        message: "fd option is required and must be non-negative".into(),
    })?;
    let fd = i32::try_from(fd).map_err(|_| {
        o.invalid(
            "fd",
            o.os("fd").unwrap_or_default(),
            "not a descriptor number",
        )
    })?;
    if fd <= 2 {
        return Err(CliError::Invalid {
            option: "-add-fd",
            message: format!("fd={fd}: fd cannot be a standard I/O stream"),
        });
    }
    let set = o.u32("set")?.ok_or(CliError::Invalid {
        option: "-add-fd",
        message: "set option is required and must be non-negative".into(),
    })?;
    let opaque = o.str("opaque")?.map(str::to_owned);
    if opaque.as_ref().is_some_and(|s| s.len() > MAX_OPAQUE) {
        return Err(CliError::Invalid {
            option: "-add-fd",
            message: format!("opaque is longer than {MAX_OPAQUE} bytes"),
        });
    }
    Ok(AddFdConfig {
        fd,
        set: u64::from(set),
        opaque,
    })
}

/// `-monitor-path-allow [path=]DIR[,readonly=on]`.
pub(crate) fn path_allow(arg: &OsStr) -> Result<PathAllowConfig, CliError> {
    let o = qemu_opts::parse(&PATH_ALLOW, arg)?;
    let dir = o
        .os("path")
        .filter(|p| !p.is_empty())
        .ok_or(CliError::Invalid {
            option: "-monitor-path-allow",
            message: "a directory is required (-monitor-path-allow DIR[,readonly=on])".into(),
        })?;
    let dir = PathBuf::from(dir);
    let plain = dir.is_absolute()
        && dir
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !plain {
        return Err(o.invalid(
            "path",
            dir.as_os_str(),
            "must be an absolute path without '.' or '..'",
        ));
    }
    Ok(PathAllowConfig {
        dir,
        readonly: o.bool("readonly")?.unwrap_or(false),
    })
}
