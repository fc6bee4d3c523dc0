//! `json_props`: the JSON object parser behind `-object '{...}'` and QMP arguments.
//!
//! The first byte picks the limits (default or tight), the rest is the text. Checks: an
//! accepted tree respects every limit exactly as [`Limits`] documents them (nodes, depth, key
//! length), and the input length limit is enforced.

use rampart_config::props::{parse_json_object, Limits, PropsError};

use crate::props_check::{shape, split_input};

pub fn run(data: &[u8]) {
    let (limits, _, text) = split_input(data);
    let result = parse_json_object(&text, &limits);
    check(&text, &limits, &result);
}

fn check(text: &str, limits: &Limits, result: &Result<rampart_config::props::Props, PropsError>) {
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
    let s = shape(props);
    assert!(s.nodes <= limits.max_nodes, "{s:?} over {limits:?}");
    assert!(s.depth <= limits.max_depth, "{s:?} over {limits:?}");
    assert!(s.longest_key <= limits.max_key_len, "{s:?} over {limits:?}");
}
