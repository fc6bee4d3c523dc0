//! A client certificate's subject distinguished name, formatted as QEMU matches it: GnuTLS's
//! `gnutls_x509_crt_get_dn`, which keeps the RDNs in the certificate's own order (not RFC
//! 4514's reversed one) and escapes values as RFC 4514 does. A certificate made with
//! `openssl req -subj "/C=GB/O=Example Org/CN=admin"` is `C=GB,O=Example Org,CN=admin` — what
//! QEMU 10's `qauthz_simple_is_allowed` trace shows for it.
//!
//! A minimal, bounded DER reader: only the path to `tbsCertificate.subject` is walked, every
//! length is checked against what remains, and anything unexpected is an error, never a panic.

/// Why a certificate's subject could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed certificate: {0}")]
pub struct DnError(&'static str);

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;

/// One DER element: its tag, its contents, and what follows it.
fn element(input: &[u8]) -> Result<(u8, &[u8], &[u8]), DnError> {
    let (&tag, rest) = input.split_first().ok_or(DnError("truncated element"))?;
    if tag & 0x1f == 0x1f {
        return Err(DnError("multi-byte tags are not used in certificates"));
    }
    let (&first, mut rest) = rest.split_first().ok_or(DnError("truncated length"))?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err(DnError("bad length"));
        }
        let mut len = 0usize;
        for &b in &rest[..n] {
            len = (len << 8) | usize::from(b);
        }
        rest = &rest[n..];
        len
    };
    if len > rest.len() {
        return Err(DnError("element longer than its container"));
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

fn expect<'a>(
    input: &'a [u8],
    tag: u8,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), DnError> {
    let (t, body, rest) = element(input)?;
    if t != tag {
        return Err(DnError(what));
    }
    Ok((body, rest))
}

/// The subject of a DER-encoded X.509 certificate, formatted as QEMU does.
pub fn subject_dn(cert_der: &[u8]) -> Result<String, DnError> {
    let (cert, _) = expect(cert_der, SEQUENCE, "certificate is not a SEQUENCE")?;
    let (tbs, _) = expect(cert, SEQUENCE, "tbsCertificate is not a SEQUENCE")?;
    let mut rest = tbs;
    // [0] EXPLICIT version, optional.
    if rest.first() == Some(&0xa0) {
        rest = element(rest)?.2;
    }
    // serialNumber, signature, issuer, validity, then subject.
    for _ in 0..4 {
        rest = element(rest)?.2;
    }
    let (name, _) = expect(rest, SEQUENCE, "subject is not a SEQUENCE")?;
    format_name(name)
}

/// The RDNs in the order they are encoded, joined with `,`; the attributes of a multi-valued
/// RDN joined with `+`.
fn format_name(mut name: &[u8]) -> Result<String, DnError> {
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let (mut set, rest) = expect(name, SET, "RDN is not a SET")?;
        name = rest;
        let mut attrs = Vec::new();
        while !set.is_empty() {
            let (atv, rest) = expect(set, SEQUENCE, "attribute is not a SEQUENCE")?;
            set = rest;
            let (oid, value) = expect(atv, OID, "attribute type is not an OID")?;
            attrs.push(format!(
                "{}={}",
                attribute_name(oid),
                attribute_value(value)?
            ));
        }
        rdns.push(attrs.join("+"));
    }
    Ok(rdns.join(","))
}

/// GnuTLS's short names for the common attribute types; others as a dotted OID.
fn attribute_name(oid: &[u8]) -> String {
    match oid {
        [0x55, 0x04, 0x03] => "CN".into(),
        [0x55, 0x04, 0x04] => "SN".into(),
        [0x55, 0x04, 0x05] => "serialNumber".into(),
        [0x55, 0x04, 0x06] => "C".into(),
        [0x55, 0x04, 0x07] => "L".into(),
        [0x55, 0x04, 0x08] => "ST".into(),
        [0x55, 0x04, 0x09] => "street".into(),
        [0x55, 0x04, 0x0a] => "O".into(),
        [0x55, 0x04, 0x0b] => "OU".into(),
        [0x55, 0x04, 0x0c] => "title".into(),
        [0x55, 0x04, 0x2a] => "givenName".into(),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC".into(),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID".into(),
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "EMAIL".into(),
        _ => dotted(oid),
    }
}

fn dotted(oid: &[u8]) -> String {
    let mut parts: Vec<u64> = Vec::new();
    let mut acc: u64 = 0;
    for &b in oid {
        acc = (acc << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if parts.is_empty() {
                let first = (acc / 40).min(2);
                parts.push(first);
                parts.push(acc - first * 40);
            } else {
                parts.push(acc);
            }
            acc = 0;
        }
        if parts.len() > 64 {
            break;
        }
    }
    parts
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// A string value escaped as RFC 4514 says; other types as `#` and the hex of their DER.
fn attribute_value(der: &[u8]) -> Result<String, DnError> {
    let (tag, body, _) = element(der)?;
    let text = match tag {
        // UTF8String, PrintableString, TeletexString (treated as Latin-1 by most), IA5String,
        // VisibleString.
        0x0c | 0x13 | 0x16 | 0x1a => String::from_utf8_lossy(body).into_owned(),
        0x14 => body.iter().map(|&b| char::from(b)).collect(),
        // BMPString: UTF-16BE.
        0x1e => {
            let units: Vec<u16> = body
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        _ => {
            let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
            return Ok(format!("#{hex}"));
        }
    };
    Ok(escape(&text))
}

fn escape(s: &str) -> String {
    let n = s.chars().count();
    let mut out = String::with_capacity(s.len());
    for (i, c) in s.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i + 1 == n => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(dn: rcgen::DistinguishedName) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = dn;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn subject_is_formatted_in_certificate_order_as_qemu_reports_it() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CountryName, "GB");
        dn.push(rcgen::DnType::StateOrProvinceName, "London");
        dn.push(rcgen::DnType::LocalityName, "London");
        dn.push(rcgen::DnType::OrganizationName, "Example Org");
        dn.push(rcgen::DnType::CommonName, "admin");
        assert_eq!(
            subject_dn(&cert_with(dn)).unwrap(),
            "C=GB,ST=London,L=London,O=Example Org,CN=admin"
        );
    }

    #[test]
    fn special_characters_are_escaped() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::OrganizationName, "Acme, Inc.");
        dn.push(rcgen::DnType::CommonName, "#ops+dev ");
        assert_eq!(
            subject_dn(&cert_with(dn)).unwrap(),
            "O=Acme\\, Inc.,CN=\\#ops\\+dev\\ "
        );
    }

    #[test]
    fn truncated_and_garbage_input_is_an_error() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, "x");
        let der = cert_with(dn);
        for len in 0..der.len() {
            // Any prefix either fails cleanly or (once the subject is complete) parses.
            let _ = subject_dn(&der[..len]);
        }
        assert!(subject_dn(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(subject_dn(b"not a certificate").is_err());
    }
}
