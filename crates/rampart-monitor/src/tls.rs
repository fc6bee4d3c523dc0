//! TLS for TCP monitors: QEMU's `tls-creds-x509` directory loaded into a rustls server
//! configuration, and a non-blocking TLS stream the monitor's epoll loop drives (the handshake
//! is a state advanced on readiness, never a blocking call).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};

/// Why TLS credentials could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls-creds-x509 '{id}': {file}: {reason}")]
    File {
        id: String,
        file: String,
        reason: String,
    },
    #[error("tls-creds-x509 '{id}': {reason}")]
    Config { id: String, reason: String },
}

impl TlsError {
    fn config(id: &str, reason: impl std::fmt::Display) -> TlsError {
        TlsError::Config {
            id: id.into(),
            reason: reason.to_string(),
        }
    }
}

fn certs(id: &str, dir: &Path, name: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let path = dir.join(name);
    let err = |reason: String| TlsError::File {
        id: id.into(),
        file: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(&path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// Loads `dir`'s `ca-cert.pem`, `server-cert.pem` and `server-key.pem` (QEMU's names) into a
/// server configuration that, with `verify_peer`, requires a client certificate signed by the
/// CA. TLS 1.2 and 1.3 with rustls's safe defaults.
pub fn server_config(
    id: &str,
    dir: &Path,
    verify_peer: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs(id, dir, "server-cert.pem")?;
    let key_path = dir.join("server-key.pem");
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| TlsError::File {
        id: id.into(),
        file: key_path.display().to_string(),
        reason: e.to_string(),
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::config(id, e))?;
    let builder = if verify_peer {
        let mut roots = RootCertStore::empty();
        for c in certs(id, dir, "ca-cert.pem")? {
            roots
                .add(c)
                .map_err(|e| TlsError::config(id, format!("ca-cert.pem: {e}")))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| TlsError::config(id, e))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::config(id, format!("server-cert.pem / server-key.pem: {e}")))?;
    Ok(Arc::new(config))
}

/// Where a TLS connection's handshake is.
#[derive(Debug, PartialEq, Eq)]
pub enum Handshake {
    /// Waiting for the peer.
    InProgress,
    /// Complete: the peer's certificate (if any) can be read.
    Done,
}

/// Socket reads per wake-up (level-triggered epoll calls again if more is waiting).
const READS_PER_WAKE: usize = 8;

/// A server TLS connection over a non-blocking TCP socket.
pub struct TlsStream {
    conn: ServerConnection,
    pub sock: TcpStream,
    /// Decrypted bytes rustls holds that have not been read yet.
    buffered: usize,
}

fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsStream {
    pub fn new(config: Arc<ServerConfig>, sock: TcpStream) -> io::Result<TlsStream> {
        let conn = ServerConnection::new(config).map_err(tls_err)?;
        Ok(TlsStream {
            conn,
            sock,
            buffered: 0,
        })
    }

    /// Reads what the socket has into rustls and processes it (alerts are sent). `Ok(false)`:
    /// the peer closed the connection.
    fn pull(&mut self) -> io::Result<bool> {
        match self.conn.read_tls(&mut self.sock) {
            Ok(0) => return Ok(false),
            Ok(_) => {}
            Err(e) => return Err(e),
        }
        match self.conn.process_new_packets() {
            Ok(state) => {
                self.buffered = state.plaintext_bytes_to_read();
                Ok(true)
            }
            Err(e) => {
                // Tell the peer why (an alert), then give up on it.
                let _ = self.push();
                Err(tls_err(e))
            }
        }
    }

    /// Advances the handshake with what the peer sent.
    pub fn handshake(&mut self) -> io::Result<Handshake> {
        for _ in 0..READS_PER_WAKE {
            if !self.conn.is_handshaking() {
                break;
            }
            match self.pull() {
                Ok(true) => {}
                Ok(false) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed the connection during the TLS handshake",
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.push()?;
        Ok(if self.conn.is_handshaking() {
            Handshake::InProgress
        } else {
            Handshake::Done
        })
    }

    /// The peer's certificate (DER), once the handshake is done.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        self.conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref())
    }

    /// The negotiated protocol version, for the log.
    pub fn protocol(&self) -> String {
        self.conn
            .protocol_version()
            .map_or_else(|| "unknown".into(), |v| format!("{v:?}"))
    }

    /// Writes pending TLS records to the socket until it would block.
    pub fn push(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// TLS records wait for the socket to become writable.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Decrypted input is waiting in rustls (the socket may be drained: epoll will not say).
    pub fn has_buffered_input(&self) -> bool {
        self.buffered > 0
    }

    /// Sends close_notify (best effort).
    pub fn close(&mut self) {
        self.conn.send_close_notify();
        let _ = self.push();
    }
}

impl Read for TlsStream {
    /// Decrypted bytes; `Ok(0)` when the peer closed; `WouldBlock` when nothing is there yet.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        for _ in 0..READS_PER_WAKE {
            match self.conn.reader().read(buf) {
                Ok(n) => {
                    self.buffered = self.buffered.saturating_sub(n);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            self.buffered = 0;
            if !self.pull()? {
                return Ok(0);
            }
        }
        Err(io::ErrorKind::WouldBlock.into())
    }
}

impl Write for TlsStream {
    /// Encrypts what rustls's bounded buffer takes and sends what the socket takes.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.push()?;
        let n = self.conn.writer().write(buf)?;
        self.push()?;
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.push()
    }
}
