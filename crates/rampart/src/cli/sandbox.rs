//! `-sandbox on|off[,obsolete=deny|allow][,elevateprivileges=allow|deny|children]
//! [,spawn=allow|deny][,resourcecontrol=allow|deny]` → [`SandboxConfig`].
//!
//! QEMU's syntax and meaning; rampart's defaults are the strictest: a sub-option not given is
//! `deny`, also after `-sandbox on` (QEMU would allow all but `obsolete`). Sub-options with
//! `-sandbox off` are refused: without filters they would have no effect.

use std::ffi::OsStr;

use rampart_config::{ElevatePrivileges, SandboxConfig, SandboxPermission};

use super::qemu_opts::{OptSpec, Opts};
use super::CliError;

pub(crate) const SANDBOX: OptSpec = OptSpec {
    option: "-sandbox",
    implied: Some("enable"),
    known: &[
        "enable",
        "obsolete",
        "elevateprivileges",
        "spawn",
        "resourcecontrol",
    ],
    unsupported: &[],
    reason: "",
};

const SUB_OPTIONS: [&str; 4] = ["obsolete", "elevateprivileges", "spawn", "resourcecontrol"];

fn permission(opts: &Opts, key: &'static str) -> Result<SandboxPermission, CliError> {
    match opts.str(key)? {
        None | Some("deny") => Ok(SandboxPermission::Deny),
        Some("allow") => Ok(SandboxPermission::Allow),
        Some(other) => Err(opts.invalid(key, OsStr::new(other), "expected 'allow' or 'deny'")),
    }
}

/// The merged `-sandbox` options.
pub(crate) fn sandbox(opts: &Opts) -> Result<SandboxConfig, CliError> {
    let enabled = opts.bool("enable")?.ok_or_else(|| CliError::Invalid {
        option: "-sandbox",
        message: "say 'on' or 'off' first (-sandbox on,spawn=deny)".into(),
    })?;
    if !enabled {
        if let Some(key) = SUB_OPTIONS.iter().find(|k| opts.os(k).is_some()) {
            return Err(CliError::Invalid {
                option: "-sandbox",
                message: format!("'{key}' has no effect with 'off': the sandbox is disabled"),
            });
        }
        return Ok(SandboxConfig::off());
    }
    let elevate_privileges = match opts.str("elevateprivileges")? {
        None | Some("deny") => ElevatePrivileges::Deny,
        Some("allow") => ElevatePrivileges::Allow,
        Some("children") => ElevatePrivileges::Children,
        Some(other) => {
            return Err(opts.invalid(
                "elevateprivileges",
                OsStr::new(other),
                "expected 'allow', 'deny' or 'children'",
            ))
        }
    };
    Ok(SandboxConfig {
        enabled,
        obsolete: permission(opts, "obsolete")?,
        elevate_privileges,
        spawn: permission(opts, "spawn")?,
        resource_control: permission(opts, "resourcecontrol")?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::qemu_opts::parse;
    use super::*;

    fn sb(arg: &str) -> Result<SandboxConfig, CliError> {
        sandbox(&parse(&SANDBOX, OsStr::new(arg))?)
    }

    #[test]
    fn on_alone_is_the_strictest() {
        assert_eq!(sb("on").unwrap(), SandboxConfig::default());
        assert_eq!(sb("enable=on").unwrap(), SandboxConfig::default());
    }

    #[test]
    fn sub_options_take_qemu_values() {
        let s =
            sb("on,obsolete=allow,elevateprivileges=children,spawn=allow,resourcecontrol=allow")
                .unwrap();

        assert!(s.enabled);
        assert_eq!(s.obsolete, SandboxPermission::Allow);
        assert_eq!(s.elevate_privileges, ElevatePrivileges::Children);
        assert_eq!(s.spawn, SandboxPermission::Allow);
        assert_eq!(s.resource_control, SandboxPermission::Allow);
    }

    #[test]
    fn off_disables_filters_and_restricts_nothing() {
        assert_eq!(sb("off").unwrap(), SandboxConfig::off());
    }

    #[test]
    fn sub_option_with_off_is_refused_by_name() {
        let err = sb("off,spawn=deny").unwrap_err();

        assert!(err.to_string().contains("'spawn'"), "{err}");
    }

    #[test]
    fn bad_values_and_keys_are_named() {
        let err = sb("on,spawn=maybe").unwrap_err().to_string();
        assert!(err.contains("spawn") && err.contains("maybe"), "{err}");
        let err = sb("on,elevateprivileges=root").unwrap_err().to_string();
        assert!(
            err.contains("elevateprivileges") && err.contains("root"),
            "{err}"
        );
        let err = sb("sometimes").unwrap_err().to_string();
        assert!(err.contains("sometimes"), "{err}");
        let err = sb("on,fork=deny").unwrap_err().to_string();
        assert!(err.contains("unknown property 'fork'"), "{err}");
    }

    #[test]
    fn on_or_off_is_required() {
        assert!(sb("spawn=deny").is_err());
    }
}
