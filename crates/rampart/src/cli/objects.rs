//! `-object`, `-device` and `-blockdev`: parsed into the shared property tree (JSON when the
//! argument starts with `{`, otherwise keyval with dotted keys), then checked against the types
//! rampart implements (`-blockdev` drivers are interpreted in `block.rs`).

use std::ffi::OsStr;

use rampart_config::props::{self, Limits, Props};

use super::argv::Opt;
use super::options::is_help;
use super::CliError;

/// What one of these options asks for.
#[derive(Debug, PartialEq)]
pub(crate) enum Request {
    /// `-device help` and friends: the text to print. (Types rampart implements will add a
    /// variant carrying the typed definition.)
    Help(String),
    /// A `-device` rampart implements.
    Device(rampart_config::DeviceConfig),
    /// A TLS credentials or authz `-object`.
    Security(super::security::SecurityObject),
    /// `-object throttle-group`.
    ThrottleGroup(rampart_config::ThrottleGroupConfig),
}

struct Kind {
    option: &'static str,
    type_key: &'static str,
    noun: &'static str,
}

fn kind(opt: Opt) -> Kind {
    match opt {
        Opt::Object => Kind {
            option: "-object",
            type_key: "qom-type",
            noun: "object type",
        },
        Opt::Device => Kind {
            option: "-device",
            type_key: "driver",
            noun: "device type",
        },
        _ => Kind {
            option: "-blockdev",
            type_key: "driver",
            noun: "block driver",
        },
    }
}

/// Parses the argument of `-object`, `-device` or `-blockdev` (selected by `opt`) into a
/// property tree.
pub(crate) fn parse_tree(opt: Opt, arg: &OsStr) -> Result<Props, CliError> {
    let k = kind(opt);
    let text = arg.to_str().ok_or(CliError::Invalid {
        option: k.option,
        message: "argument is not valid UTF-8".into(),
    })?;
    let parsed = if text.starts_with('{') {
        props::parse_json_object(text, &Limits::DEFAULT)
    } else {
        props::parse_keyval(text, Some(k.type_key), &Limits::DEFAULT)
    };
    parsed.map_err(|source| CliError::Props {
        option: k.option,
        source,
    })
}

/// Parses and checks one `-object`, `-device` or `-blockdev`.
pub(crate) fn request(opt: Opt, arg: &OsStr) -> Result<Request, CliError> {
    let k = kind(opt);
    let mut tree = parse_tree(opt, arg)?;
    let type_name = tree
        .take_string(k.type_key)
        .map_err(|source| CliError::Props {
            option: k.option,
            source,
        })?
        .ok_or_else(|| CliError::Invalid {
            option: k.option,
            message: format!("parameter '{}' is missing", k.type_key),
        })?;
    if opt == Opt::Device {
        if is_help(&type_name) {
            return Ok(Request::Help(super::devices::help()));
        }
        if let Some(dev) = super::devices::parse(&type_name, tree)? {
            return Ok(Request::Device(dev));
        }
    } else if opt == Opt::Object && type_name == "throttle-group" {
        return super::throttle::group(tree).map(Request::ThrottleGroup);
    } else if is_help(&type_name) {
        return Ok(Request::Help(if opt == Opt::Object {
            "Object types rampart implements:\n  tls-creds-x509\n  authz-simple\n  \
             authz-list\n  authz-listfile\n  throttle-group\n"
                .into()
        } else {
            format!("rampart implements no {} {}s yet\n", k.option, k.noun)
        }));
    } else if opt == Opt::Object {
        if let Some(obj) = super::security::parse(&type_name, tree)? {
            return Ok(Request::Security(obj));
        }
    }
    Err(CliError::UnknownType {
        option: k.option,
        noun: k.noun,
        name: type_name.chars().take(80).collect(),
    })
}

#[cfg(test)]
mod tests {
    use rampart_config::props::{PropValue, PropsError};

    use super::*;

    #[test]
    fn json_object_parses_into_a_tree() {
        let arg = r#"{"qom-type":"authz-list","id":"a0","rules":[{"match":"*","policy":"allow"}]}"#;

        let tree = parse_tree(Opt::Object, OsStr::new(arg)).unwrap();

        assert_eq!(tree.get_str("qom-type"), Some("authz-list"));
        assert!(matches!(tree.get("rules"), Some(PropValue::List(l)) if l.len() == 1));
    }

    #[test]
    fn keyval_object_with_dotted_keys_matches_json() {
        let json =
            r#"{"qom-type":"authz-list","id":"a0","rules":[{"match":"*","policy":"allow"}]}"#;
        let keyval = "authz-list,id=a0,rules.0.match=*,rules.0.policy=allow";

        let a = parse_tree(Opt::Object, OsStr::new(json)).unwrap();
        let b = parse_tree(Opt::Object, OsStr::new(keyval)).unwrap();

        assert_eq!(a, b);
    }

    #[test]
    fn json_object_is_rejected_by_type_name() {
        let arg = r#"{"qom-type":"secret","id":"a0","data":"x"}"#;

        let err = request(Opt::Object, OsStr::new(arg)).unwrap_err();

        assert_eq!(
            err.to_string(),
            "-object secret: unknown object type 'secret'"
        );
    }

    #[test]
    fn device_is_rejected_by_driver_name() {
        let err = request(Opt::Device, OsStr::new("e1000,netdev=n0")).unwrap_err();

        assert_eq!(
            err.to_string(),
            "-device e1000: unknown device type 'e1000'"
        );
    }

    #[test]
    fn blockdev_json_and_keyval_parse_into_the_same_tree() {
        let json =
            r#"{"driver":"qcow2","node-name":"hd0","file":{"driver":"file","filename":"/x"}}"#;
        let keyval = "driver=qcow2,node-name=hd0,file.driver=file,file.filename=/x";

        let a = parse_tree(Opt::Blockdev, OsStr::new(json)).unwrap();
        let b = parse_tree(Opt::Blockdev, OsStr::new(keyval)).unwrap();

        assert_eq!(a, b);
    }

    #[test]
    fn missing_type_is_named() {
        let err = request(Opt::Object, OsStr::new("id=a0")).unwrap_err();

        assert!(err.to_string().contains("'qom-type' is missing"), "{err}");
    }

    #[test]
    fn bad_json_is_reported_against_the_option() {
        let err = request(Opt::Device, OsStr::new("{\"driver\":")).unwrap_err();

        assert!(
            matches!(
                err,
                CliError::Props {
                    option: "-device",
                    source: PropsError::Json(_)
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let depth = Limits::DEFAULT.max_depth + 1;
        let json = format!(
            "{{\"qom-type\":\"x\",\"a\":{}1{}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        );

        let err = request(Opt::Object, OsStr::new(&json)).unwrap_err();

        assert!(
            matches!(
                err,
                CliError::Props {
                    source: PropsError::TooDeep { .. },
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn help_lists_nothing_yet() {
        assert!(matches!(
            request(Opt::Device, OsStr::new("help")).unwrap(),
            Request::Help(_)
        ));
    }
}
