//! QEMU's keyval syntax: `key=value,key=value`, `,,` for a literal comma in a value, dotted keys
//! building nested objects (`a.b=1`), and all-numeric fragments building lists
//! (`rules.0.match=*,rules.1.match=x`). Duplicate keys: the last one wins.

use std::collections::BTreeMap;

use super::{Limits, PropValue, Props, PropsError};

/// Parses keyval text into a property tree.
///
/// `implied_key` names the value of a first element written without `key=` (QEMU's "implied
/// key", e.g. `qom-type` for `-object` or `driver` for `-device`). Leaves are strings.
pub fn parse_keyval(
    input: &str,
    implied_key: Option<&str>,
    limits: &Limits,
) -> Result<Props, PropsError> {
    if input.len() > limits.max_input_len {
        return Err(PropsError::TooLong {
            len: input.len(),
            max: limits.max_input_len,
        });
    }
    let bytes = input.as_bytes();
    let mut root = Props::new();
    let mut pos = 0;
    let mut first = true;
    // Nodes of the tree built so far, counted as JSON counts them: the root, every object a
    // dotted key creates, and every leaf.
    let mut nodes = 1usize;
    let too_many = || PropsError::TooMany {
        max: limits.max_nodes,
    };
    while pos < bytes.len() {
        if nodes > limits.max_nodes {
            return Err(too_many());
        }
        let key_end = bytes[pos..]
            .iter()
            .position(|&b| b == b'=' || b == b',')
            .map_or(bytes.len(), |i| pos + i);
        let has_equals = key_end < bytes.len() && bytes[key_end] == b'=';
        if !has_equals {
            if let (true, Some(implied)) = (first, implied_key) {
                let (value, next) = read_value(input, pos);
                nodes += insert(&mut root, &[implied], value)?;
                pos = next;
                first = false;
                continue;
            }
            let key = &input[pos..key_end];
            if key.is_empty() {
                return Err(PropsError::BadKey {
                    key: String::new(),
                    reason: "empty name",
                });
            }
            return Err(PropsError::MissingEquals {
                key: key.to_string(),
            });
        }
        let key = &input[pos..key_end];
        let fragments = split_key(key, limits)?;
        let (value, next) = read_value(input, key_end + 1);
        nodes += insert(&mut root, &fragments, value)?;
        pos = next;
        first = false;
    }
    if nodes > limits.max_nodes {
        return Err(too_many());
    }
    for (name, value) in root.map_mut().iter_mut() {
        listify(value, name)?;
    }
    Ok(root)
}

/// Reads a value starting at `from` up to the next single `,`; `,,` stands for one comma.
/// Returns the value and the position after the terminating comma.
fn read_value(input: &str, from: usize) -> (String, usize) {
    let bytes = input.as_bytes();
    let mut out = String::new();
    let mut seg_start = from;
    let mut i = from;
    while i < bytes.len() {
        if bytes[i] == b',' {
            out.push_str(&input[seg_start..i]);
            if bytes.get(i + 1) == Some(&b',') {
                out.push(',');
                i += 2;
                seg_start = i;
                continue;
            }
            return (out, i + 1);
        }
        i += 1;
    }
    out.push_str(&input[seg_start..]);
    (out, bytes.len())
}

fn split_key<'a>(key: &'a str, limits: &Limits) -> Result<Vec<&'a str>, PropsError> {
    let bad = |reason| PropsError::BadKey {
        key: key.chars().take(limits.max_key_len).collect(),
        reason,
    };
    let fragments: Vec<&str> = key.split('.').collect();
    if fragments.len() > limits.max_depth {
        return Err(PropsError::TooDeep {
            max: limits.max_depth,
        });
    }
    for (i, frag) in fragments.iter().enumerate() {
        if frag.is_empty() {
            return Err(bad("empty name fragment"));
        }
        if frag.len() > limits.max_key_len {
            return Err(bad("name too long"));
        }
        if !frag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad("only letters, digits, '-' and '_' are allowed"));
        }
        if is_index(frag) {
            if i == 0 {
                return Err(bad("a top-level name cannot be an array index"));
            }
            if frag.len() > 1 && frag.starts_with('0') {
                return Err(bad("array index with a leading zero"));
            }
        }
    }
    Ok(fragments)
}

fn is_index(frag: &str) -> bool {
    !frag.is_empty() && frag.bytes().all(|b| b.is_ascii_digit())
}

/// Inserts `value` at the dotted path; returns how many nodes it created.
fn insert(root: &mut Props, fragments: &[&str], value: String) -> Result<usize, PropsError> {
    let Some((leaf, parents)) = fragments.split_last() else {
        return Ok(0);
    };
    let mut created = 0;
    let mut cur: &mut BTreeMap<String, PropValue> = root.map_mut();
    for (depth, frag) in parents.iter().enumerate() {
        let node = cur.entry((*frag).to_string()).or_insert_with(|| {
            created += 1;
            PropValue::Map(Props::new())
        });
        match node {
            PropValue::Map(m) => cur = m.map_mut(),
            _ => {
                return Err(PropsError::Inconsistent {
                    key: fragments[..=depth].join("."),
                })
            }
        }
    }
    if let Some(PropValue::Map(_)) = cur.get(*leaf) {
        return Err(PropsError::Inconsistent {
            key: fragments.join("."),
        });
    }
    if cur
        .insert((*leaf).to_string(), PropValue::Str(value))
        .is_none()
    {
        created += 1;
    }
    Ok(created)
}

/// Turns every object whose keys are all array indexes into a list (recursively).
fn listify(value: &mut PropValue, path: &str) -> Result<(), PropsError> {
    let PropValue::Map(map) = value else {
        return Ok(());
    };
    for (name, child) in map.map_mut().iter_mut() {
        listify(child, &format!("{path}.{name}"))?;
    }
    let total = map.len();
    let indexes = map.iter().filter(|(k, _)| is_index(k)).count();
    if indexes == 0 {
        return Ok(());
    }
    if indexes != total {
        return Err(PropsError::Inconsistent {
            key: path.to_string(),
        });
    }
    let mut items = Vec::with_capacity(total);
    for index in 0..total {
        match map.remove(&index.to_string()) {
            Some(v) => items.push(v),
            None => {
                return Err(PropsError::ArrayGap {
                    key: path.to_string(),
                    index,
                })
            }
        }
    }
    *value = PropValue::List(items);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(input: &str, implied: Option<&str>) -> Result<Props, PropsError> {
        parse_keyval(input, implied, &Limits::DEFAULT)
    }

    fn s(v: &str) -> PropValue {
        PropValue::Str(v.into())
    }

    #[test]
    fn parses_flat_pairs_with_implied_first_key() {
        let p = kv("virtio-blk-pci,id=d0,drive=hd", Some("driver")).unwrap();

        assert_eq!(p.get("driver"), Some(&s("virtio-blk-pci")));
        assert_eq!(p.get("id"), Some(&s("d0")));
        assert_eq!(p.get("drive"), Some(&s("hd")));
    }

    #[test]
    fn double_comma_is_a_literal_comma() {
        let p = kv("id=a,,b,,,path=/x", None).unwrap();

        assert_eq!(p.get("id"), Some(&s("a,b,")));
        assert_eq!(p.get("path"), Some(&s("/x")));
    }

    #[test]
    fn dotted_keys_build_nested_objects_and_lists() {
        let p = kv(
            "authz-list,id=a0,rules.0.match=*,rules.0.policy=allow,rules.1.match=x",
            Some("qom-type"),
        )
        .unwrap();

        let PropValue::List(rules) = p.get("rules").unwrap() else {
            panic!("rules is not a list: {p:?}");
        };
        assert_eq!(rules.len(), 2);
        let PropValue::Map(r0) = &rules[0] else {
            panic!("rule 0 is not an object");
        };
        assert_eq!(r0.get("match"), Some(&s("*")));
        assert_eq!(r0.get("policy"), Some(&s("allow")));
    }

    #[test]
    fn last_duplicate_key_wins() {
        let p = kv("id=a,id=b", None).unwrap();

        assert_eq!(p.get("id"), Some(&s("b")));
    }

    #[test]
    fn rejects_scalar_and_object_under_one_name() {
        assert!(matches!(
            kv("a=1,a.b=2", None),
            Err(PropsError::Inconsistent { .. })
        ));
        assert!(matches!(
            kv("a.b=2,a=1", None),
            Err(PropsError::Inconsistent { .. })
        ));
    }

    #[test]
    fn rejects_mixed_and_sparse_array_indexes() {
        assert!(matches!(
            kv("r.0=a,r.x=b", None),
            Err(PropsError::Inconsistent { .. })
        ));
        assert_eq!(
            kv("r.0=a,r.2=b", None),
            Err(PropsError::ArrayGap {
                key: "r".into(),
                index: 1
            })
        );
        assert!(kv("r.00=a", None).is_err());
        assert!(kv("0=a", None).is_err());
    }

    #[test]
    fn rejects_bare_key_without_equals() {
        assert_eq!(
            kv("id=a,flag", None),
            Err(PropsError::MissingEquals { key: "flag".into() })
        );
        assert!(kv("flag", None).is_err());
    }

    #[test]
    fn rejects_bad_key_characters_and_empty_fragments() {
        assert!(matches!(kv("a..b=1", None), Err(PropsError::BadKey { .. })));
        assert!(matches!(kv("a b=1", None), Err(PropsError::BadKey { .. })));
        assert!(matches!(kv("=1", None), Err(PropsError::BadKey { .. })));
    }

    #[test]
    fn rejects_nesting_deeper_than_the_limit() {
        let key = vec!["a"; Limits::DEFAULT.max_depth + 1].join(".");

        let r = kv(&format!("{key}=1"), None);

        assert!(matches!(r, Err(PropsError::TooDeep { .. })), "{r:?}");
    }

    #[test]
    fn rejects_input_longer_than_the_limit() {
        let input = format!("id={}", "x".repeat(Limits::DEFAULT.max_input_len));

        assert!(matches!(kv(&input, None), Err(PropsError::TooLong { .. })));
    }

    #[test]
    fn rejects_too_many_entries() {
        let limits = Limits {
            max_nodes: 3,
            ..Limits::DEFAULT
        };

        let r = parse_keyval("a=1,b=2,c=3,d=4", None, &limits);

        assert_eq!(r, Err(PropsError::TooMany { max: 3 }));
    }

    #[test]
    fn trailing_comma_is_accepted_and_empty_input_is_empty() {
        assert_eq!(kv("id=a,", None).unwrap().len(), 1);
        assert!(kv("", None).unwrap().is_empty());
    }

    #[test]
    fn counts_nested_nodes_against_max_nodes() {
        // Three entries, but 13 nodes (root, 3 x (3 maps + 1 leaf)): refused as JSON would be.
        let limits = Limits {
            max_nodes: 8,
            ..Limits::DEFAULT
        };
        let err = parse_keyval("a.b.c.d=1,e.f.g.h=2,i.j.k.l=3", None, &limits).unwrap_err();
        assert_eq!(err, PropsError::TooMany { max: 8 });
    }
}
