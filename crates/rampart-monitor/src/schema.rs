//! The one definition of every QMP command and event rampart supports: names, argument types
//! and return types. The dispatcher validates arguments against it, `query-commands` lists it,
//! and `query-qmp-schema` is generated from it (see [`crate::introspect`]).

use rampart_config::control::{RUN_STATE_NAMES, SHUTDOWN_CAUSE_NAMES};
use serde_json::{Map, Value};

use crate::error::QmpError;

/// A named enumeration.
#[derive(Debug, PartialEq, Eq)]
pub struct EnumDef {
    pub values: &'static [&'static str],
}

/// A QAPI type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Str,
    Int,
    Bool,
    /// Any JSON value.
    Any,
    Enum(&'static EnumDef),
    Array(&'static Ty),
    Object(&'static [Member]),
}

impl Ty {
    /// QEMU's word for the expected type in "Invalid parameter type" errors.
    fn expected(self) -> &'static str {
        match self {
            Ty::Str | Ty::Enum(_) => "string",
            Ty::Int => "integer",
            Ty::Bool => "boolean",
            Ty::Any => "any",
            Ty::Array(_) => "array",
            Ty::Object(_) => "object",
        }
    }
}

/// One member of an object type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub name: &'static str,
    pub ty: Ty,
    pub optional: bool,
}

pub(crate) const fn req(name: &'static str, ty: Ty) -> Member {
    Member {
        name,
        ty,
        optional: false,
    }
}

pub(crate) const fn opt(name: &'static str, ty: Ty) -> Member {
    Member {
        name,
        ty,
        optional: true,
    }
}

/// A command: name, arguments, return type, and whether it is allowed before capabilities
/// negotiation completes.
#[derive(Debug, PartialEq, Eq)]
pub struct CommandDef {
    pub name: &'static str,
    pub args: &'static [Member],
    pub ret: Ty,
}

/// An event and its `data` members.
#[derive(Debug, PartialEq, Eq)]
pub struct EventDef {
    pub name: &'static str,
    pub data: &'static [Member],
}

const EMPTY: Ty = Ty::Object(&[]);
const QMP_CAPABILITY: EnumDef = EnumDef { values: &["oob"] };
const RUN_STATE: EnumDef = EnumDef {
    values: RUN_STATE_NAMES,
};
const SHUTDOWN_CAUSE: EnumDef = EnumDef {
    values: SHUTDOWN_CAUSE_NAMES,
};
const SYS_EMU_TARGET: EnumDef = EnumDef {
    values: &["x86_64"],
};

const VERSION_TRIPLE: Ty = Ty::Object(&[
    req("major", Ty::Int),
    req("minor", Ty::Int),
    req("micro", Ty::Int),
]);

const CPU_PROPS: Ty = Ty::Object(&[
    opt("socket-id", Ty::Int),
    opt("core-id", Ty::Int),
    opt("thread-id", Ty::Int),
]);

const CPU_INFO_FAST: Ty = Ty::Object(&[
    req("cpu-index", Ty::Int),
    req("qom-path", Ty::Str),
    req("thread-id", Ty::Int),
    opt("props", CPU_PROPS),
    req("target", Ty::Enum(&SYS_EMU_TARGET)),
]);

const MACHINE_INFO: Ty = Ty::Object(&[
    req("name", Ty::Str),
    opt("alias", Ty::Str),
    opt("is-default", Ty::Bool),
    req("cpu-max", Ty::Int),
    req("hotpluggable-cpus", Ty::Bool),
    req("numa-mem-supported", Ty::Bool),
    req("deprecated", Ty::Bool),
    opt("default-cpu-type", Ty::Str),
    opt("default-ram-id", Ty::Str),
    req("acpi", Ty::Bool),
]);

const CHARDEV_INFO: Ty = Ty::Object(&[
    req("label", Ty::Str),
    req("filename", Ty::Str),
    req("frontend-open", Ty::Bool),
]);

const SHUTDOWN_DATA: &[Member] = &[
    req("guest", Ty::Bool),
    req("reason", Ty::Enum(&SHUTDOWN_CAUSE)),
];

/// Every command, in the order `query-commands` lists them.
pub const COMMANDS: &[CommandDef] = &[
    CommandDef {
        name: "qmp_capabilities",
        args: &[opt("enable", Ty::Array(&Ty::Enum(&QMP_CAPABILITY)))],
        ret: EMPTY,
    },
    CommandDef {
        name: "query-version",
        args: &[],
        ret: Ty::Object(&[req("qemu", VERSION_TRIPLE), req("package", Ty::Str)]),
    },
    CommandDef {
        name: "query-commands",
        args: &[],
        ret: Ty::Array(&Ty::Object(&[req("name", Ty::Str)])),
    },
    CommandDef {
        name: "query-qmp-schema",
        args: &[],
        ret: Ty::Array(&Ty::Any),
    },
    CommandDef {
        name: "query-status",
        args: &[],
        ret: Ty::Object(&[
            req("running", Ty::Bool),
            req("status", Ty::Enum(&RUN_STATE)),
        ]),
    },
    CommandDef {
        name: "query-name",
        args: &[],
        ret: Ty::Object(&[opt("name", Ty::Str)]),
    },
    CommandDef {
        name: "query-uuid",
        args: &[],
        ret: Ty::Object(&[req("UUID", Ty::Str)]),
    },
    CommandDef {
        name: "query-kvm",
        args: &[],
        ret: Ty::Object(&[req("enabled", Ty::Bool), req("present", Ty::Bool)]),
    },
    CommandDef {
        name: "query-cpus-fast",
        args: &[],
        ret: Ty::Array(&CPU_INFO_FAST),
    },
    CommandDef {
        name: "query-machines",
        args: &[opt("compat-props", Ty::Bool)],
        ret: Ty::Array(&MACHINE_INFO),
    },
    CommandDef {
        name: "query-chardev",
        args: &[],
        ret: Ty::Array(&CHARDEV_INFO),
    },
    CommandDef {
        name: "query-block",
        args: &[],
        ret: Ty::Array(&crate::block::BLOCK_INFO),
    },
    CommandDef {
        name: "query-blockstats",
        args: &[],
        ret: Ty::Array(&crate::block::BLOCK_STATS),
    },
    CommandDef {
        name: "block_set_io_throttle",
        args: crate::block_throttle::ARGS,
        ret: EMPTY,
    },
    CommandDef {
        name: "stop",
        args: &[],
        ret: EMPTY,
    },
    CommandDef {
        name: "set_link",
        args: &[req("name", Ty::Str), req("up", Ty::Bool)],
        ret: EMPTY,
    },
    CommandDef {
        name: "query-rx-filter",
        args: &[opt("name", Ty::Str)],
        ret: Ty::Array(&crate::net::RX_FILTER_INFO),
    },
    CommandDef {
        name: crate::net_throttle::SET,
        args: crate::net_throttle::SET_ARGS,
        ret: EMPTY,
    },
    CommandDef {
        name: crate::net_throttle::QUERY,
        args: &[opt("id", Ty::Str)],
        ret: Ty::Array(&crate::net_throttle::NETDEV_THROTTLE),
    },
    CommandDef {
        name: "cont",
        args: &[],
        ret: EMPTY,
    },
    CommandDef {
        name: "system_reset",
        args: &[],
        ret: EMPTY,
    },
    CommandDef {
        name: "system_powerdown",
        args: &[],
        ret: EMPTY,
    },
    CommandDef {
        name: "quit",
        args: &[],
        ret: EMPTY,
    },
    CommandDef {
        name: "getfd",
        args: &[req("fdname", Ty::Str)],
        ret: EMPTY,
    },
    CommandDef {
        name: "closefd",
        args: &[req("fdname", Ty::Str)],
        ret: EMPTY,
    },
    CommandDef {
        name: "add-fd",
        args: &[opt("fdset-id", Ty::Int), opt("opaque", Ty::Str)],
        ret: crate::fds::ADDFD_INFO,
    },
    CommandDef {
        name: "remove-fd",
        args: &[req("fdset-id", Ty::Int), opt("fd", Ty::Int)],
        ret: EMPTY,
    },
    CommandDef {
        name: "query-fdsets",
        args: &[],
        ret: Ty::Array(&crate::fds::FDSET_INFO),
    },
    CommandDef {
        name: "blockdev-add",
        args: crate::nodes::BLOCKDEV_ADD_ARGS,
        ret: EMPTY,
    },
    CommandDef {
        name: "blockdev-del",
        args: &[req("node-name", Ty::Str)],
        ret: EMPTY,
    },
    CommandDef {
        name: "query-named-block-nodes",
        args: &[opt("flat", Ty::Bool)],
        ret: crate::nodes::NAMED_BLOCK_NODES,
    },
    CommandDef {
        name: "dump-guest-memory",
        args: crate::dump::DUMP_ARGS,
        ret: EMPTY,
    },
    CommandDef {
        name: "query-dump-guest-memory-capability",
        args: &[],
        ret: crate::dump::DUMP_CAPABILITY,
    },
    CommandDef {
        name: "human-monitor-command",
        args: &[req("command-line", Ty::Str), opt("cpu-index", Ty::Int)],
        ret: Ty::Str,
    },
];

/// Every event.
pub const EVENTS: &[EventDef] = &[
    EventDef {
        name: "STOP",
        data: &[],
    },
    EventDef {
        name: "RESUME",
        data: &[],
    },
    EventDef {
        name: "RESET",
        data: SHUTDOWN_DATA,
    },
    EventDef {
        name: "SHUTDOWN",
        data: SHUTDOWN_DATA,
    },
    EventDef {
        name: "POWERDOWN",
        data: &[],
    },
    EventDef {
        name: "NIC_RX_FILTER_CHANGED",
        data: &[opt("name", Ty::Str), req("path", Ty::Str)],
    },
];

/// The definition of command `name`.
pub fn command(name: &str) -> Option<&'static CommandDef> {
    COMMANDS.iter().find(|c| c.name == name)
}

/// Checks `args` (the `arguments` member, absent = no arguments) against `members`, with
/// QEMU's wording for missing, unexpected and mistyped parameters.
pub fn validate_args(
    members: &[Member],
    args: Option<&Value>,
) -> Result<Map<String, Value>, QmpError> {
    let map = match args {
        None => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => {
            return Err(QmpError::generic(
                "QMP input member 'arguments' must be an object",
            ))
        }
    };
    check_object(members, &map, "")?;
    Ok(map)
}

fn path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

fn check_object(
    members: &[Member],
    map: &Map<String, Value>,
    prefix: &str,
) -> Result<(), QmpError> {
    for m in members {
        match map.get(m.name) {
            Some(v) => check_value(m.ty, v, &path(prefix, m.name))?,
            None if m.optional => {}
            None => {
                return Err(QmpError::generic(format!(
                    "Parameter '{}' is missing",
                    path(prefix, m.name)
                )))
            }
        }
    }
    if let Some(extra) = map.keys().find(|k| !members.iter().any(|m| m.name == *k)) {
        return Err(QmpError::generic(format!(
            "Parameter '{}' is unexpected",
            path(prefix, extra)
        )));
    }
    Ok(())
}

/// Whether `value` has type `ty` (also used to check return values in tests).
pub fn check_value(ty: Ty, value: &Value, name: &str) -> Result<(), QmpError> {
    let mistyped = || {
        QmpError::generic(format!(
            "Invalid parameter type for '{name}', expected: {}",
            ty.expected()
        ))
    };
    match (ty, value) {
        (Ty::Any, _) => Ok(()),
        (Ty::Str, Value::String(_)) => Ok(()),
        (Ty::Int, Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(()),
        (Ty::Bool, Value::Bool(_)) => Ok(()),
        (Ty::Enum(e), Value::String(s)) => {
            if e.values.contains(&s.as_str()) {
                Ok(())
            } else {
                Err(QmpError::generic(format!(
                    "Parameter '{name}' does not accept value '{s}'"
                )))
            }
        }
        (Ty::Array(elem), Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                check_value(*elem, item, &format!("{name}[{i}]"))?;
            }
            Ok(())
        }
        (Ty::Object(members), Value::Object(map)) => check_object(members, map, name),
        _ => Err(mistyped()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hmp_args(v: Value) -> Result<Map<String, Value>, QmpError> {
        validate_args(command("human-monitor-command").unwrap().args, Some(&v))
    }

    #[test]
    fn missing_argument_is_named_like_qemu() {
        let e = hmp_args(json!({})).unwrap_err();
        assert_eq!(e.desc, "Parameter 'command-line' is missing");
    }

    #[test]
    fn unexpected_argument_is_named_like_qemu() {
        let e = hmp_args(json!({"command-line": "x", "colour": 1})).unwrap_err();
        assert_eq!(e.desc, "Parameter 'colour' is unexpected");
    }

    #[test]
    fn mistyped_argument_is_named_like_qemu() {
        let e = hmp_args(json!({"command-line": 1})).unwrap_err();
        assert_eq!(
            e.desc,
            "Invalid parameter type for 'command-line', expected: string"
        );
        let e = hmp_args(json!({"command-line": "x", "cpu-index": 1.5})).unwrap_err();
        assert_eq!(
            e.desc,
            "Invalid parameter type for 'cpu-index', expected: integer"
        );
    }

    #[test]
    fn enum_values_are_checked_inside_arrays() {
        let caps = command("qmp_capabilities").unwrap().args;
        assert!(validate_args(caps, Some(&json!({"enable": ["oob"]}))).is_ok());
        let e = validate_args(caps, Some(&json!({"enable": ["magic"]}))).unwrap_err();
        assert_eq!(
            e.desc,
            "Parameter 'enable[0]' does not accept value 'magic'"
        );
    }

    #[test]
    fn arguments_must_be_an_object() {
        let e = validate_args(&[], Some(&json!([]))).unwrap_err();
        assert_eq!(e.desc, "QMP input member 'arguments' must be an object");
    }

    #[test]
    fn command_names_are_unique() {
        for (i, c) in COMMANDS.iter().enumerate() {
            assert!(
                COMMANDS[i + 1..].iter().all(|d| d.name != c.name),
                "{}",
                c.name
            );
        }
    }
}
