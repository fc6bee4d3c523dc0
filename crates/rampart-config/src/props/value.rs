use std::collections::BTreeMap;

use super::PropsError;

/// One node of a property tree.
///
/// Keyval text only produces [`PropValue::Str`] leaves (as QEMU's keyval parser); JSON produces
/// every variant. The `take_*` accessors of [`Props`] accept both spellings.
#[derive(Debug, Clone, PartialEq)]
pub enum PropValue {
    Null,
    Bool(bool),
    /// A JSON integer that fits `i64`.
    Int(i64),
    /// A JSON integer above `i64::MAX`.
    UInt(u64),
    Float(f64),
    Str(String),
    List(Vec<PropValue>),
    Map(Props),
}

impl PropValue {
    /// The JSON-ish name of this node's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            PropValue::Null => "null",
            PropValue::Bool(_) => "a boolean",
            PropValue::Int(_) | PropValue::UInt(_) => "an integer",
            PropValue::Float(_) => "a number",
            PropValue::Str(_) => "a string",
            PropValue::List(_) => "a list",
            PropValue::Map(_) => "an object",
        }
    }

    /// A short rendering of a scalar for error messages (containers are summarised).
    fn describe(&self) -> String {
        match self {
            PropValue::Null => "null".into(),
            PropValue::Bool(b) => b.to_string(),
            PropValue::Int(i) => i.to_string(),
            PropValue::UInt(u) => u.to_string(),
            PropValue::Float(f) => f.to_string(),
            PropValue::Str(s) => s.chars().take(64).collect(),
            PropValue::List(_) => "[...]".into(),
            PropValue::Map(_) => "{...}".into(),
        }
    }
}

/// An object: property names to values, sorted by name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Props {
    map: BTreeMap<String, PropValue>,
}

/// Parses a boolean the way QEMU does (`on|yes|true|y` / `off|no|false|n`).
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "on" | "yes" | "true" | "y" => Some(true),
        "off" | "no" | "false" | "n" => Some(false),
        _ => None,
    }
}

impl Props {
    pub fn new() -> Props {
        Props::default()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&PropValue> {
        self.map.get(key)
    }

    pub fn insert(&mut self, key: impl Into<String>, value: PropValue) -> Option<PropValue> {
        self.map.insert(key.into(), value)
    }

    pub fn remove(&mut self, key: &str) -> Option<PropValue> {
        self.map.remove(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &PropValue)> {
        self.map.iter()
    }

    pub(crate) fn map_mut(&mut self) -> &mut BTreeMap<String, PropValue> {
        &mut self.map
    }

    /// Peeks at a string property without consuming it.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        match self.map.get(key) {
            Some(PropValue::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// Removes and returns a string property.
    pub fn take_string(&mut self, key: &str) -> Result<Option<String>, PropsError> {
        match self.map.remove(key) {
            None => Ok(None),
            Some(PropValue::Str(s)) => Ok(Some(s)),
            Some(other) => Err(invalid(key, &other, "a string")),
        }
    }

    /// Removes and returns a boolean property (JSON `true`/`false`, or QEMU's boolean words).
    pub fn take_bool(&mut self, key: &str) -> Result<Option<bool>, PropsError> {
        match self.map.remove(key) {
            None => Ok(None),
            Some(PropValue::Bool(b)) => Ok(Some(b)),
            Some(PropValue::Str(s)) => match parse_bool(&s) {
                Some(b) => Ok(Some(b)),
                None => Err(invalid(key, &PropValue::Str(s), "on or off")),
            },
            Some(other) => Err(invalid(key, &other, "on or off")),
        }
    }

    /// Removes and returns an unsigned integer property (JSON integer, or decimal / `0x` hex
    /// text).
    pub fn take_u64(&mut self, key: &str) -> Result<Option<u64>, PropsError> {
        let v = match self.map.remove(key) {
            None => return Ok(None),
            Some(v) => v,
        };
        let n = match &v {
            PropValue::Int(i) => u64::try_from(*i).ok(),
            PropValue::UInt(u) => Some(*u),
            PropValue::Str(s) => parse_u64_text(s),
            _ => None,
        };
        n.map(Some)
            .ok_or_else(|| invalid(key, &v, "an unsigned integer"))
    }

    /// Removes and returns a size property (JSON integer bytes, or QEMU size text such as
    /// `64K`; a bare number is bytes).
    pub fn take_size(&mut self, key: &str) -> Result<Option<u64>, PropsError> {
        let v = match self.map.remove(key) {
            None => return Ok(None),
            Some(v) => v,
        };
        let n = match &v {
            PropValue::Int(i) => u64::try_from(*i).ok(),
            PropValue::UInt(u) => Some(*u),
            PropValue::Str(s) => crate::parse_size("size", s, 1).ok(),
            _ => None,
        };
        n.map(Some).ok_or_else(|| invalid(key, &v, "a size"))
    }

    /// Removes and returns a list property.
    pub fn take_list(&mut self, key: &str) -> Result<Option<Vec<PropValue>>, PropsError> {
        match self.map.remove(key) {
            None => Ok(None),
            Some(PropValue::List(l)) => Ok(Some(l)),
            Some(other) => Err(invalid(key, &other, "a list")),
        }
    }

    /// Removes and returns a nested object property.
    pub fn take_map(&mut self, key: &str) -> Result<Option<Props>, PropsError> {
        match self.map.remove(key) {
            None => Ok(None),
            Some(PropValue::Map(m)) => Ok(Some(m)),
            Some(other) => Err(invalid(key, &other, "an object")),
        }
    }

    /// Fails naming the first property nobody consumed.
    pub fn deny_unknown(&self) -> Result<(), PropsError> {
        match self.map.keys().next() {
            Some(key) => Err(PropsError::Unknown { key: key.clone() }),
            None => Ok(()),
        }
    }
}

fn invalid(key: &str, value: &PropValue, expected: &'static str) -> PropsError {
    PropsError::InvalidValue {
        key: key.to_string(),
        value: value.describe(),
        expected,
    }
}

fn parse_u64_text(s: &str) -> Option<u64> {
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        return u64::from_str_radix(hex, 16).ok();
    }
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, PropValue)]) -> Props {
        let mut p = Props::new();
        for (k, v) in pairs {
            p.insert(*k, v.clone());
        }
        p
    }

    #[test]
    fn take_bool_accepts_qemu_words_and_json_booleans() {
        let mut p = props(&[
            ("a", PropValue::Str("on".into())),
            ("b", PropValue::Str("no".into())),
            ("c", PropValue::Bool(true)),
        ]);

        assert_eq!(p.take_bool("a"), Ok(Some(true)));
        assert_eq!(p.take_bool("b"), Ok(Some(false)));
        assert_eq!(p.take_bool("c"), Ok(Some(true)));
        assert_eq!(p.take_bool("d"), Ok(None));
    }

    #[test]
    fn take_bool_rejects_other_words_naming_key_and_value() {
        let mut p = props(&[("x", PropValue::Str("maybe".into()))]);

        let err = p.take_bool("x").unwrap_err().to_string();

        assert!(err.contains("'x'") && err.contains("maybe"), "{err}");
    }

    #[test]
    fn take_u64_accepts_text_hex_and_json_numbers() {
        let mut p = props(&[
            ("a", PropValue::Str("42".into())),
            ("b", PropValue::Str("0x10".into())),
            ("c", PropValue::Int(7)),
            ("d", PropValue::Int(-1)),
            ("e", PropValue::Str("12abc".into())),
        ]);

        assert_eq!(p.take_u64("a"), Ok(Some(42)));
        assert_eq!(p.take_u64("b"), Ok(Some(16)));
        assert_eq!(p.take_u64("c"), Ok(Some(7)));
        assert!(p.take_u64("d").is_err());
        assert!(p.take_u64("e").is_err());
    }

    #[test]
    fn take_size_understands_suffixes() {
        let mut p = props(&[("s", PropValue::Str("64K".into()))]);

        assert_eq!(p.take_size("s"), Ok(Some(64 << 10)));
    }

    #[test]
    fn deny_unknown_names_the_leftover_property() {
        let mut p = props(&[
            ("id", PropValue::Str("x".into())),
            ("bogus", PropValue::Str("1".into())),
        ]);
        p.take_string("id").unwrap();

        assert_eq!(
            p.deny_unknown(),
            Err(PropsError::Unknown {
                key: "bogus".into()
            })
        );
    }
}
