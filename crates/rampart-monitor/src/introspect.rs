//! `query-qmp-schema`: QEMU's introspection format, generated from [`crate::schema`].
//!
//! As QEMU does, non-builtin types get opaque names (numbers, arrays `[N]`), structurally equal
//! types share one entry, and the list holds every command, event and type they use.

use serde_json::{json, Value};

use crate::schema::{Ty, COMMANDS, EVENTS};

struct Builder {
    /// Types already named: (the type, its name).
    named: Vec<(Ty, String)>,
    types: Vec<Value>,
    next: usize,
}

fn builtin(ty: Ty) -> Option<(&'static str, &'static str)> {
    match ty {
        Ty::Str => Some(("str", "string")),
        Ty::Int => Some(("int", "int")),
        Ty::Bool => Some(("bool", "boolean")),
        Ty::Any => Some(("any", "value")),
        _ => None,
    }
}

impl Builder {
    fn name(&mut self, ty: Ty) -> String {
        if let Some((_, n)) = self.named.iter().find(|(t, _)| *t == ty) {
            return n.clone();
        }
        let (name, entry) = if let Some((name, json_type)) = builtin(ty) {
            (
                name.to_string(),
                json!({"name": name, "meta-type": "builtin", "json-type": json_type}),
            )
        } else {
            match ty {
                Ty::Array(elem) => {
                    let e = self.name(*elem);
                    let name = format!("[{e}]");
                    (
                        name.clone(),
                        json!({"name": name, "meta-type": "array", "element-type": e}),
                    )
                }
                Ty::Enum(def) => {
                    let name = self.fresh();
                    let members: Vec<Value> =
                        def.values.iter().map(|v| json!({"name": v})).collect();
                    (
                        name.clone(),
                        json!({"name": name, "meta-type": "enum",
                               "members": members, "values": def.values}),
                    )
                }
                Ty::Object(members) => {
                    let name = self.fresh();
                    let members: Vec<Value> = members
                        .iter()
                        .map(|m| {
                            let t = self.name(m.ty);
                            if m.optional {
                                json!({"name": m.name, "default": null, "type": t})
                            } else {
                                json!({"name": m.name, "type": t})
                            }
                        })
                        .collect();
                    (
                        name.clone(),
                        json!({"name": name, "meta-type": "object", "members": members}),
                    )
                }
                _ => unreachable!("builtins are handled above"),
            }
        };
        self.named.push((ty, name.clone()));
        self.types.push(entry);
        name
    }

    fn fresh(&mut self) -> String {
        let n = self.next;
        self.next += 1;
        n.to_string()
    }
}

/// The `query-qmp-schema` return value.
pub fn schema() -> Value {
    let mut b = Builder {
        named: Vec::new(),
        types: Vec::new(),
        next: 0,
    };
    let mut entries = Vec::new();
    for c in COMMANDS {
        let arg = b.name(Ty::Object(c.args));
        let ret = b.name(c.ret);
        entries.push(json!({"name": c.name, "meta-type": "command",
                            "arg-type": arg, "ret-type": ret}));
    }
    for e in EVENTS {
        let arg = b.name(Ty::Object(e.data));
        entries.push(json!({"name": e.name, "meta-type": "event", "arg-type": arg}));
    }
    entries.extend(b.types);
    Value::Array(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(schema: &'a Value, name: &str) -> &'a Value {
        schema
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from the schema"))
    }

    #[test]
    fn every_command_and_event_is_introspectable() {
        let s = schema();
        for c in COMMANDS {
            assert_eq!(find(&s, c.name)["meta-type"], "command");
        }
        for e in EVENTS {
            assert_eq!(find(&s, e.name)["meta-type"], "event");
        }
    }

    #[test]
    fn every_referenced_type_is_defined_once() {
        let s = schema();
        let entries = s.as_array().unwrap();
        let names: Vec<&str> = entries
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        for (i, n) in names.iter().enumerate() {
            assert!(!names[i + 1..].contains(n), "{n} defined twice");
        }
        let mut refs = Vec::new();
        for e in entries {
            for key in ["arg-type", "ret-type", "element-type"] {
                if let Some(t) = e[key].as_str() {
                    refs.push(t.to_string());
                }
            }
            if let Some(members) = e["members"].as_array() {
                for m in members {
                    if let Some(t) = m["type"].as_str() {
                        refs.push(t.to_string());
                    }
                }
            }
        }
        for r in refs {
            assert!(
                names.contains(&r.as_str()),
                "type {r} is referenced but not defined"
            );
        }
    }

    #[test]
    fn human_monitor_command_arguments_match_qemu() {
        let s = schema();
        let arg = find(&s, "human-monitor-command")["arg-type"]
            .as_str()
            .unwrap()
            .to_string();
        let members = &find(&s, &arg)["members"];
        assert_eq!(members[0], json!({"name": "command-line", "type": "str"}));
        assert_eq!(
            members[1],
            json!({"name": "cpu-index", "default": null, "type": "int"})
        );
        assert_eq!(find(&s, "human-monitor-command")["ret-type"], "str");
    }

    #[test]
    fn shutdown_event_carries_guest_and_reason() {
        let s = schema();
        let arg = find(&s, "SHUTDOWN")["arg-type"]
            .as_str()
            .unwrap()
            .to_string();
        let members = find(&s, &arg)["members"].as_array().unwrap().clone();
        let names: Vec<&str> = members
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["guest", "reason"]);
        let reason_ty = members[1]["type"].as_str().unwrap();
        let values = &find(&s, reason_ty)["values"];
        assert!(values.as_array().unwrap().contains(&json!("host-qmp-quit")));
    }
}
