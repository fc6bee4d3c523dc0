//! Certificates made in the test (rcgen): a CA, a server certificate for localhost/127.0.0.1,
//! client certificates with chosen DNs (also expired ones, or from another CA), written in
//! QEMU's tls-creds-x509 layout; and a rustls client for the TLS monitor.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;

/// A certificate authority.
pub struct Ca {
    pub cert_pem: String,
    cert: Certificate,
    key: KeyPair,
}

/// A certificate and its key, PEM.
pub struct Cred {
    pub cert_pem: String,
    pub key_pem: String,
}

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CountryName, "GB");
    d.push(DnType::OrganizationName, "Example Org");
    d.push(DnType::CommonName, cn);
    d
}

impl Ca {
    pub fn new(cn: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name = dn(cn);
        let cert = p.self_signed(&key).unwrap();
        Ca {
            cert_pem: cert.pem(),
            cert,
            key,
        }
    }

    fn issue(&self, mut p: CertificateParams, expired: bool) -> Cred {
        let key = KeyPair::generate().unwrap();
        p.not_before = rcgen::date_time_ymd(2024, 1, 1);
        p.not_after = if expired {
            rcgen::date_time_ymd(2024, 6, 1)
        } else {
            rcgen::date_time_ymd(2099, 1, 1)
        };
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Cred {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    pub fn server(&self) -> Cred {
        let mut p =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        p.distinguished_name = dn("localhost");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(p, false)
    }

    /// A client certificate with subject `C=GB,O=Example Org,CN=cn` (QEMU shows it as
    /// `C=GB,O=Example Org,CN=cn`, in the certificate's order).
    pub fn client(&self, cn: &str) -> Cred {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = dn(cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(p, false)
    }

    /// A client certificate that expired in 2024.
    pub fn expired_client(&self, cn: &str) -> Cred {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = dn(cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(p, true)
    }

    /// Writes `dir/{ca-cert,server-cert,server-key}.pem` (QEMU's names).
    pub fn write_server_dir(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        let s = self.server();
        std::fs::write(dir.join("ca-cert.pem"), &self.cert_pem).unwrap();
        std::fs::write(dir.join("server-cert.pem"), &s.cert_pem).unwrap();
        std::fs::write(dir.join("server-key.pem"), &s.key_pem).unwrap();
    }
}

/// A blocking TLS client connection to the monitor.
pub type TlsClient = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connects to `port` over TLS trusting `ca`, presenting `client` (or no certificate).
/// The handshake is driven to completion on the client's side; with TLS 1.3 a rejected
/// client certificate shows up at the first read.
pub fn connect(port: u16, ca: &Ca, client: Option<&Cred>) -> std::io::Result<TlsClient> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some(c) => b
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    let sock = TcpStream::connect(("127.0.0.1", port))?;
    sock.set_read_timeout(Some(Duration::from_secs(15)))?;
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let mut s = rustls::StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// Reads one line (a QMP message); `Err` with what happened if the server closed or failed.
pub fn read_line<R: Read>(r: &mut BufReader<R>) -> Result<Value, String> {
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(0) => Err("closed".into()),
        Ok(_) => serde_json::from_str(&line).map_err(|e| format!("bad JSON {line:?}: {e}")),
        Err(e) => Err(format!("error: {e}")),
    }
}

/// A QMP session over TLS.
pub struct TlsQmp {
    pub r: BufReader<TlsClient>,
}

impl TlsQmp {
    /// Reads the greeting and negotiates.
    pub fn open(s: TlsClient) -> Result<TlsQmp, String> {
        let mut q = TlsQmp {
            r: BufReader::new(s),
        };
        let g = read_line(&mut q.r)?;
        if g.get("QMP").is_none() {
            return Err(format!("not a greeting: {g}"));
        }
        let r = q.cmd(r#"{"execute":"qmp_capabilities"}"#);
        assert_eq!(r["return"], serde_json::json!({}), "{r}");
        Ok(q)
    }

    pub fn cmd(&mut self, text: &str) -> Value {
        let s = self.r.get_mut();
        s.write_all(text.as_bytes()).unwrap();
        s.write_all(b"\n").unwrap();
        s.flush().unwrap();
        loop {
            let v = read_line(&mut self.r).unwrap();
            if v.get("event").is_none() {
                return v;
            }
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
