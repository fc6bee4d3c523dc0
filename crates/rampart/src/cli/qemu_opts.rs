//! QEMU's classic option syntax (QemuOpts): `key=value,key=value`, where
//! - `,,` is a literal comma inside a value;
//! - the first element may omit `key=` when the option has an implied key (`-m 512`);
//! - a later element written as a bare `key` means `key=on`, and `nokey` means `key=off`
//!   (QEMU still accepts this deprecated short form, with a warning; so does rampart);
//! - a key given twice keeps the last value.
//!
//! Values are bytes (an `OsString`), so paths need not be UTF-8. Every key is checked against
//! the option's own property list.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use rampart_config::props::parse_bool;

use super::argv::shown;
use super::CliError;

/// Longest option argument accepted.
pub(crate) const MAX_ARG_LEN: usize = 64 * 1024;
/// Most `key=value` elements in one argument.
const MAX_ELEMENTS: usize = 64;

/// The syntax of one option.
pub(crate) struct OptSpec {
    pub option: &'static str,
    pub implied: Option<&'static str>,
    /// Properties rampart understands.
    pub known: &'static [&'static str],
    /// Properties QEMU has that rampart deliberately does not implement.
    pub unsupported: &'static [&'static str],
    /// Why the `unsupported` ones are refused.
    pub reason: &'static str,
}

/// Parsed `key=value` pairs of one option (or of several merged occurrences).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Opts {
    pub option: &'static str,
    values: Vec<(&'static str, OsString)>,
}

impl Opts {
    pub fn new(option: &'static str) -> Opts {
        Opts {
            option,
            values: Vec::new(),
        }
    }

    pub fn set(&mut self, key: &'static str, value: OsString) {
        match self.values.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.values.push((key, value)),
        }
    }

    /// Merges a later occurrence of the same option: its keys win (QEMU's `merge_lists`).
    pub fn merge(&mut self, later: Opts) {
        for (k, v) in later.values {
            self.set(k, v);
        }
    }

    pub fn os(&self, key: &str) -> Option<&OsStr> {
        self.values
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_os_str())
    }

    /// A value that must be UTF-8 text.
    pub fn str(&self, key: &'static str) -> Result<Option<&str>, CliError> {
        match self.os(key) {
            None => Ok(None),
            Some(v) => v
                .to_str()
                .map(Some)
                .ok_or_else(|| self.invalid(key, v, "not valid UTF-8")),
        }
    }

    pub fn bool(&self, key: &'static str) -> Result<Option<bool>, CliError> {
        match self.str(key)? {
            None => Ok(None),
            Some(v) => parse_bool(v).map(Some).ok_or_else(|| {
                self.invalid(key, OsStr::new(v), "expected on|off|yes|no|true|false")
            }),
        }
    }

    /// An unsigned number (decimal, or hexadecimal with `0x`) that fits `u32`.
    pub fn u32(&self, key: &'static str) -> Result<Option<u32>, CliError> {
        let Some(v) = self.str(key)? else {
            return Ok(None);
        };
        let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
            Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                u64::from_str_radix(hex, 16).ok()
            }
            Some(_) => None,
            None if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => v.parse().ok(),
            None => None,
        };
        match parsed {
            Some(n) => u32::try_from(n)
                .map(Some)
                .map_err(|_| self.invalid(key, OsStr::new(v), "number too large")),
            None => Err(self.invalid(key, OsStr::new(v), "expected a number")),
        }
    }

    pub fn invalid(&self, key: &str, value: &OsStr, reason: &str) -> CliError {
        CliError::InvalidValue {
            option: self.option,
            property: key.to_string(),
            value: shown(value),
            reason: reason.to_string(),
        }
    }
}

/// Parses one option argument according to `spec`.
pub(crate) fn parse(spec: &OptSpec, arg: &OsStr) -> Result<Opts, CliError> {
    let bytes = arg.as_bytes();
    if bytes.len() > MAX_ARG_LEN {
        return Err(CliError::TooLong {
            option: spec.option,
            len: bytes.len(),
            max: MAX_ARG_LEN,
        });
    }
    let mut opts = Opts::new(spec.option);
    let mut pos = 0;
    let mut count = 0;
    while pos < bytes.len() {
        count += 1;
        if count > MAX_ELEMENTS {
            return Err(CliError::Invalid {
                option: spec.option,
                message: format!("more than {MAX_ELEMENTS} properties"),
            });
        }
        let key_end = bytes[pos..]
            .iter()
            .position(|&b| b == b'=' || b == b',')
            .map_or(bytes.len(), |i| pos + i);
        if key_end < bytes.len() && bytes[key_end] == b'=' {
            let key = lookup_key(spec, &bytes[pos..key_end])?;
            let (value, next) = read_value(bytes, key_end + 1);
            opts.set(key, value);
            pos = next;
        } else if let (0, Some(implied)) = (pos, spec.implied) {
            let (value, next) = read_value(bytes, pos);
            let key = lookup_key(spec, implied.as_bytes())?;
            opts.set(key, value);
            pos = next;
        } else {
            let name = &bytes[pos..key_end];
            let (name, value) = match name.strip_prefix(b"no") {
                Some(rest) if !rest.is_empty() => (rest, "off"),
                _ => (name, "on"),
            };
            let key = lookup_key(spec, name)?;
            tracing::warn!(
                "{}: short-form boolean '{}' is deprecated, write '{key}={value}'",
                spec.option,
                String::from_utf8_lossy(&bytes[pos..key_end])
            );
            opts.set(key, OsString::from(value));
            pos = (key_end + 1).min(bytes.len());
        }
    }
    Ok(opts)
}

fn lookup_key(spec: &OptSpec, key: &[u8]) -> Result<&'static str, CliError> {
    let text = String::from_utf8_lossy(key);
    if text.is_empty() {
        return Err(CliError::Invalid {
            option: spec.option,
            message: "empty property name".into(),
        });
    }
    if let Some(k) = spec.known.iter().find(|k| k.as_bytes() == key) {
        return Ok(k);
    }
    let property: String = text.chars().take(80).collect();
    if spec.unsupported.iter().any(|k| k.as_bytes() == key) {
        return Err(CliError::UnsupportedProperty {
            option: spec.option,
            property,
            reason: spec.reason,
        });
    }
    Err(CliError::UnknownProperty {
        option: spec.option,
        property,
    })
}

/// Reads a value from `from` up to the next single `,` (`,,` is one comma); returns it and the
/// position after that comma.
fn read_value(bytes: &[u8], from: usize) -> (OsString, usize) {
    let mut out = Vec::new();
    let mut i = from;
    while i < bytes.len() {
        if bytes[i] == b',' {
            if bytes.get(i + 1) == Some(&b',') {
                out.push(b',');
                i += 2;
                continue;
            }
            return (OsString::from_vec(out), i + 1);
        }
        out.push(bytes[i]);
        i += 1;
    }
    (OsString::from_vec(out), bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: OptSpec = OptSpec {
        option: "-test",
        implied: Some("path"),
        known: &["path", "server", "wait", "n"],
        unsupported: &["tls-creds"],
        reason: "TLS is not supported",
    };

    fn p(arg: &str) -> Result<Opts, CliError> {
        parse(&SPEC, OsStr::new(arg))
    }

    #[test]
    fn implied_key_takes_a_first_value_without_equals() {
        let o = p("/tmp/s,server=on").unwrap();

        assert_eq!(o.os("path"), Some(OsStr::new("/tmp/s")));
        assert_eq!(o.bool("server").unwrap(), Some(true));
    }

    #[test]
    fn double_comma_escapes_a_comma_in_values() {
        let o = p("/tmp/a,,b,wait=off").unwrap();

        assert_eq!(o.os("path"), Some(OsStr::new("/tmp/a,b")));
        assert_eq!(o.bool("wait").unwrap(), Some(false));
    }

    #[test]
    fn bare_flags_mean_on_and_no_prefix_means_off() {
        let o = p("/s,server,nowait").unwrap();

        assert_eq!(o.bool("server").unwrap(), Some(true));
        assert_eq!(o.bool("wait").unwrap(), Some(false));
    }

    #[test]
    fn accepts_every_qemu_boolean_spelling() {
        for (word, expected) in [
            ("on", true),
            ("yes", true),
            ("true", true),
            ("off", false),
            ("no", false),
            ("false", false),
        ] {
            let o = p(&format!("server={word}")).unwrap();
            assert_eq!(o.bool("server").unwrap(), Some(expected), "{word}");
        }
    }

    #[test]
    fn rejects_bad_boolean_naming_option_property_and_value() {
        let err = p("server=maybe").unwrap().bool("server").unwrap_err();

        let msg = err.to_string();
        assert!(
            msg.contains("-test") && msg.contains("server") && msg.contains("maybe"),
            "{msg}"
        );
    }

    #[test]
    fn last_duplicate_wins_and_merge_overrides() {
        let mut o = p("path=/a,path=/b").unwrap();
        assert_eq!(o.os("path"), Some(OsStr::new("/b")));

        o.merge(p("path=/c").unwrap());

        assert_eq!(o.os("path"), Some(OsStr::new("/c")));
    }

    #[test]
    fn unknown_property_is_named() {
        let err = p("/s,colour=red").unwrap_err();

        assert_eq!(err.to_string(), "-test: unknown property 'colour'");
    }

    #[test]
    fn unsupported_property_gives_the_reason() {
        let err = p("/s,tls-creds=t0").unwrap_err();

        assert!(err.to_string().contains("TLS is not supported"), "{err}");
    }

    #[test]
    fn numbers_are_decimal_or_hex_and_bounded() {
        assert_eq!(p("n=12").unwrap().u32("n").unwrap(), Some(12));
        assert_eq!(p("n=0x10").unwrap().u32("n").unwrap(), Some(16));
        assert!(p("n=4294967296").unwrap().u32("n").is_err());
        assert!(p("n=-1").unwrap().u32("n").is_err());
        assert!(p("n=").unwrap().u32("n").is_err());
    }

    #[test]
    fn non_utf8_values_survive_as_bytes() {
        let arg = OsStr::from_bytes(b"/tmp/\xff,server=on");

        let o = parse(&SPEC, arg).unwrap();

        assert_eq!(o.os("path").unwrap().as_bytes(), b"/tmp/\xff");
        assert!(o.str("path").is_err());
    }

    #[test]
    fn rejects_overlong_argument_and_too_many_elements() {
        let long = "x".repeat(MAX_ARG_LEN + 1);
        assert!(matches!(p(&long), Err(CliError::TooLong { .. })));

        let many = vec!["n=1"; MAX_ELEMENTS + 1].join(",");
        assert!(p(&many).is_err());
    }
}
