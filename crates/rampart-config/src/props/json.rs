//! JSON text → property tree, with the same bounds as the keyval parser.

use serde_json::Value;

use super::{Limits, PropValue, Props, PropsError};

/// Parses a JSON object (QEMU's `-object '{"qom-type":...}'` form) into a property tree.
pub fn parse_json_object(input: &str, limits: &Limits) -> Result<Props, PropsError> {
    if input.len() > limits.max_input_len {
        return Err(PropsError::TooLong {
            len: input.len(),
            max: limits.max_input_len,
        });
    }
    // serde_json itself refuses nesting beyond 128 levels, so parsing cannot exhaust the stack;
    // the tighter depth bound is enforced while converting.
    let value: Value = serde_json::from_str(input).map_err(|e| PropsError::Json(e.to_string()))?;
    match from_json_value(&value, limits)? {
        PropValue::Map(props) => Ok(props),
        other => Err(PropsError::NotAnObject {
            found: other.type_name(),
        }),
    }
}

/// Converts an already parsed JSON value (e.g. QMP `arguments`) into a property tree, enforcing
/// `limits` on depth, node count and key length.
pub fn from_json_value(value: &Value, limits: &Limits) -> Result<PropValue, PropsError> {
    let mut nodes = 0usize;
    convert(value, 1, &mut nodes, limits)
}

fn convert(
    value: &Value,
    depth: usize,
    nodes: &mut usize,
    limits: &Limits,
) -> Result<PropValue, PropsError> {
    *nodes += 1;
    if *nodes > limits.max_nodes {
        return Err(PropsError::TooMany {
            max: limits.max_nodes,
        });
    }
    let container = matches!(value, Value::Array(_) | Value::Object(_));
    if container && depth > limits.max_depth {
        return Err(PropsError::TooDeep {
            max: limits.max_depth,
        });
    }
    Ok(match value {
        Value::Null => PropValue::Null,
        Value::Bool(b) => PropValue::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                PropValue::Int(i)
            } else if let Some(u) = n.as_u64() {
                PropValue::UInt(u)
            } else {
                PropValue::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => PropValue::Str(s.clone()),
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len().min(limits.max_nodes));
            for item in items {
                out.push(convert(item, depth + 1, nodes, limits)?);
            }
            PropValue::List(out)
        }
        Value::Object(members) => {
            let mut out = Props::new();
            for (key, member) in members {
                if key.is_empty() || key.len() > limits.max_key_len {
                    return Err(PropsError::BadKey {
                        key: key.chars().take(limits.max_key_len).collect(),
                        reason: "member name is empty or too long",
                    });
                }
                out.insert(key.clone(), convert(member, depth + 1, nodes, limits)?);
            }
            PropValue::Map(out)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(input: &str) -> Result<Props, PropsError> {
        parse_json_object(input, &Limits::DEFAULT)
    }

    #[test]
    fn parses_nested_object_with_list() {
        let p = json(
            r#"{"qom-type":"authz-list","id":"a0","rules":[{"match":"*","policy":"allow"}],"n":3}"#,
        )
        .unwrap();

        assert_eq!(p.get_str("qom-type"), Some("authz-list"));
        assert_eq!(p.get("n"), Some(&PropValue::Int(3)));
        let Some(PropValue::List(rules)) = p.get("rules") else {
            panic!("no rules list");
        };
        let PropValue::Map(rule) = &rules[0] else {
            panic!("rule is not an object");
        };
        assert_eq!(rule.get_str("policy"), Some("allow"));
    }

    #[test]
    fn json_and_keyval_forms_give_the_same_tree() {
        let from_json = json(r#"{"id":"a0","rules":[{"match":"*"}]}"#).unwrap();

        let from_keyval =
            super::super::parse_keyval("id=a0,rules.0.match=*", None, &Limits::DEFAULT).unwrap();

        assert_eq!(from_json, from_keyval);
    }

    #[test]
    fn rejects_non_object_and_bad_json() {
        assert_eq!(
            json("[1,2]"),
            Err(PropsError::NotAnObject { found: "a list" })
        );
        assert!(matches!(json("{\"a\":"), Err(PropsError::Json(_))));
    }

    #[test]
    fn rejects_nesting_deeper_than_the_limit() {
        let depth = Limits::DEFAULT.max_depth + 1;
        let input = format!(
            "{}{}",
            "{\"a\":".repeat(depth),
            "1".to_string() + &"}".repeat(depth)
        );

        assert!(matches!(json(&input), Err(PropsError::TooDeep { .. })));
    }

    #[test]
    fn survives_nesting_deeper_than_serde_json_allows() {
        let input = "[".repeat(60_000);

        assert!(json(&input).is_err());
    }

    #[test]
    fn rejects_too_many_nodes() {
        let limits = Limits {
            max_nodes: 4,
            ..Limits::DEFAULT
        };

        let r = parse_json_object(r#"{"a":[1,2,3,4]}"#, &limits);

        assert_eq!(r, Err(PropsError::TooMany { max: 4 }));
    }

    #[test]
    fn rejects_overlong_member_name() {
        let input = format!("{{\"{}\":1}}", "k".repeat(Limits::DEFAULT.max_key_len + 1));

        assert!(matches!(json(&input), Err(PropsError::BadKey { .. })));
    }
}
