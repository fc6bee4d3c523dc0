//! Shape checks shared by the `keyval` and `json_props` targets.

use rampart_config::props::{Limits, PropValue, Props};

/// Limits small enough that a fuzzer reaches every bound quickly.
pub(crate) const TIGHT: Limits = Limits {
    max_input_len: 512,
    max_depth: 4,
    max_nodes: 24,
    max_key_len: 12,
};

/// Picks the limits from the first input byte (even: default, odd: tight) and returns the rest
/// as text (invalid UTF-8 replaced, as the command line gives `&str` only).
pub(crate) fn split_input(data: &[u8]) -> (Limits, u8, String) {
    let (selector, rest) = data.split_first().map_or((0, data), |(s, r)| (*s, r));
    let limits = if selector & 1 == 0 {
        Limits::DEFAULT
    } else {
        TIGHT
    };
    (limits, selector, String::from_utf8_lossy(rest).into_owned())
}

/// Size of an accepted tree.
#[derive(Debug, Default)]
pub(crate) struct Shape {
    /// Nodes, the root object included.
    pub nodes: usize,
    /// Deepest container nesting (the root object is depth 1).
    pub depth: usize,
    /// Longest key.
    pub longest_key: usize,
}

pub(crate) fn shape(props: &Props) -> Shape {
    let mut s = Shape::default();
    walk_map(props, 1, &mut s);
    s
}

fn walk_map(props: &Props, depth: usize, s: &mut Shape) {
    s.nodes += 1;
    s.depth = s.depth.max(depth);
    for (key, value) in props.iter() {
        s.longest_key = s.longest_key.max(key.len());
        walk(value, depth + 1, s);
    }
}

fn walk(value: &PropValue, depth: usize, s: &mut Shape) {
    match value {
        PropValue::Map(m) => walk_map(m, depth, s),
        PropValue::List(items) => {
            s.nodes += 1;
            s.depth = s.depth.max(depth);
            for item in items {
                walk(item, depth + 1, s);
            }
        }
        _ => s.nodes += 1,
    }
}
