//! A generic property tree: the shape QEMU's `-object`/`-device`/`-blockdev` arguments and QMP
//! command arguments share, whether they arrive as dotted keyval text
//! (`id=a0,rules.0.match=*`) or as JSON (`{"id":"a0","rules":[{"match":"*"}]}`).
//!
//! Both parsers ([`parse_keyval`], [`parse_json_object`]) are bounded by [`Limits`]: input
//! length, nesting depth, node count and key length, because their input is hostile.
//!
//! Consumers read a [`Props`] with the `take_*` methods, which accept both the JSON types and
//! the keyval strings (QEMU's keyval visitor does the same), then call [`Props::deny_unknown`] so
//! that any property nobody consumed is an error naming it.

mod json;
mod keyval;
mod value;

pub use json::{from_json_value, parse_json_object};
pub use keyval::parse_keyval;
pub use value::{parse_bool, PropValue, Props};

use thiserror::Error;

/// Bounds on the size of one property tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest accepted input text, in bytes.
    pub max_input_len: usize,
    /// Deepest accepted nesting (a flat `key=value` list has depth 1).
    pub max_depth: usize,
    /// Most nodes (scalars, lists and objects) in one tree.
    pub max_nodes: usize,
    /// Longest accepted key (one dotted fragment or one JSON member name).
    pub max_key_len: usize,
}

impl Limits {
    /// The limits used for command-line options and QMP arguments.
    pub const DEFAULT: Limits = Limits {
        max_input_len: 64 * 1024,
        max_depth: 16,
        max_nodes: 4096,
        max_key_len: 128,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Why a property text or tree was refused. Every variant names the culprit.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PropsError {
    #[error("input is {len} bytes, the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("nesting deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("more than {max} properties and values")]
    TooMany { max: usize },
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("expected a JSON object, found {found}")]
    NotAnObject { found: &'static str },
    #[error("invalid parameter name '{key}': {reason}")]
    BadKey { key: String, reason: &'static str },
    #[error("expected '=' after parameter '{key}'")]
    MissingEquals { key: String },
    #[error("parameters '{key}.*' used inconsistently")]
    Inconsistent { key: String },
    #[error("parameter '{key}': array indexes must be contiguous from 0 (index {index} missing)")]
    ArrayGap { key: String, index: usize },
    #[error("parameter '{key}' is missing")]
    Missing { key: String },
    #[error("parameter '{key}' expects {expected}, got '{value}'")]
    InvalidValue {
        key: String,
        value: String,
        expected: &'static str,
    },
    #[error("unknown parameter '{key}'")]
    Unknown { key: String },
}
