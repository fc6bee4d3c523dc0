//! fnmatch(3)-style pattern matching (flags 0, as QEMU's authz-list uses it): `*` matches any
//! run of characters, `?` one character, `[...]` a set (`[!...]`/`[^...]` its complement, `a-z`
//! ranges), `\` quotes the next character. Iterative with one backtracking point, so the cost is
//! bounded by `pattern.len() * text.len()` whatever the input.

/// True if `text` matches `pattern`.
pub fn matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Where to resume after the last `*`: (pattern index after it, text index it now covers).
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi + 1, ti));
                pi += 1;
                continue;
            }
            Some('?') => Some(pi + 1),
            Some('[') => match class(&p, pi, t[ti]) {
                Some((true, next)) => Some(next),
                Some((false, _)) => None,
                // An unterminated `[` is an ordinary character.
                None => (t[ti] == '[').then_some(pi + 1),
            },
            Some('\\') if pi + 1 < p.len() => (p[pi + 1] == t[ti]).then_some(pi + 2),
            Some(&c) => (c == t[ti]).then_some(pi + 1),
            None => None,
        };
        match step {
            Some(next) => {
                pi = next;
                ti += 1;
            }
            None => match star {
                Some((sp, st)) => {
                    star = Some((sp, st + 1));
                    pi = sp;
                    ti = st + 1;
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Matches `c` against the set starting at `p[start] == '['`: `Some((matched, index after
/// the set))`, or `None` if the set is not terminated.
fn class(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let mut lo = *p.get(i)?;
        if lo == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if lo == '\\' {
            i += 1;
            lo = *p.get(i)?;
        }
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|&h| h != ']') {
            let mut j = i + 2;
            let mut hi = p[j];
            if hi == '\\' {
                j += 1;
                hi = *p.get(j)?;
            }
            matched |= lo <= c && c <= hi;
            i = j + 1;
        } else {
            matched |= lo == c;
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn stars_and_question_marks_match_like_fnmatch() {
        assert!(matches("*CN=admin*", "C=GB,O=Example,CN=admin"));
        assert!(matches("*CN=admin*", "O=x,CN=admin"));
        assert!(!matches("*CN=admin*", "CN=adm,O=x"));
        assert!(matches("query-*", "query-status"));
        assert!(!matches("query-*", "stop"));
        assert!(matches("st?p", "stop"));
        assert!(!matches("st?p", "stoop"));
        assert!(matches("*", ""));
        assert!(!matches("", "x"));
        assert!(matches("a*b*c", "aXXbYYbc"));
    }

    #[test]
    fn sets_ranges_and_escapes() {
        assert!(matches("uid:[0-9]*", "uid:1000"));
        assert!(!matches("uid:[!0-9]*", "uid:1000"));
        assert!(matches("[]x]", "]"));
        assert!(matches("a\\*", "a*"));
        assert!(!matches("a\\*", "ab"));
        assert!(matches("[", "["));
    }

    #[test]
    fn hostile_inputs_stay_cheap() {
        let p = "*a".repeat(200);
        let t = "a".repeat(2000) + "b";
        assert!(!matches(&p, &t));
    }
}
