use crate::ConfigError;

/// Parses a QEMU-style size: a number with an optional suffix `B`, `K`, `M`, `G`, `T`, `P`, `E`
/// (binary multiples, case-insensitive; `KB`/`KiB` spellings are also accepted). A bare number is multiplied by `default_unit`
/// (QEMU's `-m 512` means 512 MiB).
pub fn parse_size(what: &'static str, value: &str, default_unit: u64) -> Result<u64, ConfigError> {
    let err = |reason| ConfigError::InvalidSize {
        what,
        value: value.to_string(),
        reason,
    };
    let v = value.trim();
    if v.is_empty() {
        return Err(err("empty"));
    }
    let (digits, unit) = match v
        .char_indices()
        .find(|(_, c)| !c.is_ascii_digit() && *c != '.')
    {
        Some((i, _)) => (&v[..i], &v[i..]),
        None => (v, ""),
    };
    let mult: u64 = match unit.to_ascii_uppercase().as_str() {
        "" => default_unit,
        "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        "P" | "PB" | "PIB" => 1 << 50,
        "E" | "EB" | "EIB" => 1 << 60,
        _ => return Err(err("unknown unit suffix")),
    };
    if digits.is_empty() {
        return Err(err("no number"));
    }
    if let Some((int, frac)) = digits.split_once('.') {
        // QEMU accepts fractions such as 1.5G; keep exact integer arithmetic.
        if frac.contains('.') || int.is_empty() && frac.is_empty() {
            return Err(err("not a number"));
        }
        let int: u64 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| err("not a number"))?
        };
        let frac_digits = frac.len().min(9) as u32;
        let frac_val: u64 = if frac_digits == 0 {
            0
        } else {
            frac[..frac_digits as usize]
                .parse()
                .map_err(|_| err("not a number"))?
        };
        let whole = int.checked_mul(mult).ok_or_else(|| err("too large"))?;
        let part = (u128::from(frac_val) * u128::from(mult)) / 10u128.pow(frac_digits);
        return whole
            .checked_add(part as u64)
            .ok_or_else(|| err("too large"));
    }
    let n: u64 = digits.parse().map_err(|_| err("not a number"))?;
    n.checked_mul(mult).ok_or_else(|| err("too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_number_uses_default_unit() {
        assert_eq!(parse_size("m", "512", 1 << 20).unwrap(), 512 << 20);
    }

    #[test]
    fn suffixes_are_binary_and_case_insensitive() {
        assert_eq!(parse_size("m", "2G", 1 << 20).unwrap(), 2 << 30);
        assert_eq!(parse_size("m", "2g", 1 << 20).unwrap(), 2 << 30);
        assert_eq!(parse_size("m", "512M", 1 << 20).unwrap(), 512 << 20);
        assert_eq!(parse_size("m", "4096k", 1 << 20).unwrap(), 4 << 20);
        assert_eq!(parse_size("m", "1.5G", 1 << 20).unwrap(), 3 << 29);
        assert_eq!(parse_size("m", "1P", 1 << 20).unwrap(), 1 << 50);
        assert_eq!(parse_size("m", "2e", 1 << 20).unwrap(), 2 << 60);
    }

    #[test]
    fn rejects_garbage_and_overflow() {
        assert!(parse_size("m", "", 1).is_err());
        assert!(parse_size("m", "abc", 1).is_err());
        assert!(parse_size("m", "12X", 1).is_err());
        assert!(parse_size("m", "1.2.3", 1).is_err());
        assert!(parse_size("m", "99999999999999999999", 1).is_err());
        assert!(parse_size("m", "99999999999T", 1).is_err());
        assert!(parse_size("m", "16E", 1).is_err());
    }
}
