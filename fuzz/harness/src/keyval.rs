//! `keyval`: QEMU's dotted keyval syntax (`-object`, `-device`, `-blockdev` arguments).
//!
//! The first byte picks the limits (bit 0: default or tight) and the implied key (bits 1-2:
//! none, `qom-type`, `driver`); the rest is the text. Checks: an accepted tree has string
//! leaves only, respects the depth and key-length limits, and its node count stays within
//! [`node_bound`].

use rampart_config::props::{parse_keyval, Limits, PropValue, Props, PropsError};

use crate::props_check::{shape, split_input};

/// The most nodes an accepted keyval tree may have: [`Limits::max_nodes`], counted as
/// `parse_json_object` counts them. (`parse_keyval` once bounded entries instead —
/// `fuzz/regressions/keyval/nodes-over-max-nodes`; fixed.)
pub fn node_bound(limits: &Limits) -> usize {
    limits.max_nodes
}

pub fn run(data: &[u8]) {
    let (limits, selector, text) = split_input(data);
    let implied = match (selector >> 1) & 3 {
        1 => Some("qom-type"),
        2 => Some("driver"),
        _ => None,
    };
    let result = parse_keyval(&text, implied, &limits);
    if text.len() > limits.max_input_len {
        assert!(
            matches!(result, Err(PropsError::TooLong { .. })),
            "accepted {} bytes over the {}-byte limit",
            text.len(),
            limits.max_input_len
        );
        return;
    }
    let Ok(props) = result else { return };
    let s = shape(&props);
    assert!(s.nodes <= node_bound(&limits), "{s:?} over {limits:?}");
    assert!(s.depth <= limits.max_depth, "{s:?} over {limits:?}");
    assert!(
        s.longest_key <= limits.max_key_len.max("qom-type".len()),
        "{s:?} over {limits:?}"
    );
    assert_string_leaves(&props);
}

fn assert_string_leaves(props: &Props) {
    for (key, value) in props.iter() {
        leaf_check(key, value);
    }
}

fn leaf_check(key: &str, value: &PropValue) {
    match value {
        PropValue::Str(_) => {}
        PropValue::Map(m) => assert_string_leaves(m),
        PropValue::List(items) => items.iter().for_each(|v| leaf_check(key, v)),
        other => panic!("keyval produced a {} at '{key}'", other.type_name()),
    }
}
