//! `x509_dn`: the subject distinguished name of a TLS client certificate
//! (`rampart_monitor::dn::subject_dn`), the identity authz rules match.
//!
//! The input is a whole DER certificate. Checks: no panic; an accepted name is bounded by the
//! input (each byte becomes at most 4 characters: `#`+hex, escapes, OID digits and separators),
//! and it matches itself as an exact authz identity and as a glob with every metacharacter
//! escaped (what an administrator copying it into a rule gets).

use rampart_monitor::{dn, glob};

pub fn run(data: &[u8]) {
    let Ok(name) = dn::subject_dn(data) else {
        return;
    };
    assert!(
        name.len() <= 4 * data.len() + 16,
        "a {}-byte certificate gave a {}-byte name",
        data.len(),
        name.len()
    );
    let escaped: String = name
        .chars()
        .flat_map(|c| {
            let meta = matches!(c, '*' | '?' | '[' | ']' | '\\');
            meta.then_some('\\').into_iter().chain([c])
        })
        .collect();
    assert!(
        glob::matches(&escaped, &name),
        "{name:?} does not match itself"
    );
}
