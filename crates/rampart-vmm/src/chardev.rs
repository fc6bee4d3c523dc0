//! Character-device back-ends for the serial console other than stdio: a listening UNIX
//! socket (`-serial unix:PATH,server=on[,wait=on|off]`).
//!
//! The socket file is created with mode 0600 (only the owner may connect), replaces a stale
//! socket left by an earlier run, never deletes anything that is not a socket, and is removed
//! when rampart exits. One client at a time: a new connection replaces the old one; output
//! with no client connected is dropped, as QEMU does.

use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use thiserror::Error;
use tracing::{debug, info};

#[derive(Debug, Error)]
pub enum ChardevError {
    #[error("{path}: exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A listening UNIX socket serving one client.
pub struct UnixServer {
    path: PathBuf,
    listener: UnixListener,
    client: Arc<Mutex<Option<UnixStream>>>,
}

impl UnixServer {
    /// Binds `path` (see the module docs for the rules).
    pub fn bind(path: &Path) -> Result<UnixServer, ChardevError> {
        let err = |source| ChardevError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                // A socket nobody answers on is stale; one that answers belongs to someone.
                if UnixStream::connect(path).is_ok() {
                    return Err(err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        "another process is listening on this socket",
                    )));
                }
                debug!(path = %path.display(), "replacing a stale socket");
                std::fs::remove_file(path).map_err(err)?;
            }
            Ok(_) => {
                return Err(ChardevError::NotASocket {
                    path: path.to_path_buf(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        Ok(UnixServer {
            path: path.to_path_buf(),
            listener,
            client: Arc::new(Mutex::new(None)),
        })
    }

    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// Blocks until a client connects (`wait=on`).
    pub fn wait_for_client(&self) -> Result<(), ChardevError> {
        info!(path = %self.path.display(), "waiting for a client on the serial socket (wait=on)");
        self.listener
            .set_nonblocking(false)
            .map_err(|source| ChardevError::Io {
                path: self.path.clone(),
                source,
            })?;
        let r = self.listener.accept();
        let _ = self.listener.set_nonblocking(true);
        match r {
            Ok((stream, _)) => {
                self.install(stream);
                Ok(())
            }
            Err(source) => Err(ChardevError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Accepts a pending connection, if any; returns the new client's stream for polling.
    pub fn accept(&self) -> Option<UnixStream> {
        match self.listener.accept() {
            Ok((stream, _)) => {
                let poll = stream.try_clone().ok();
                self.install(stream);
                poll
            }
            Err(_) => None,
        }
    }

    fn install(&self, stream: UnixStream) {
        let _ = stream.set_nonblocking(true);
        info!(path = %self.path.display(), "serial socket client connected");
        *self.client.lock().unwrap_or_else(|e| e.into_inner()) = Some(stream);
    }

    /// Forgets the current client (it hung up).
    pub fn disconnect(&self) {
        *self.client.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// A writer to the current client (bytes are dropped while none is connected).
    pub fn writer(&self) -> ClientWriter {
        ClientWriter(self.client.clone())
    }
}

impl Drop for UnixServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Output to the connected client; a client that cannot keep up loses bytes rather than
/// blocking the vCPU.
pub struct ClientWriter(Arc<Mutex<Option<UnixStream>>>);

impl Write for ClientWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stream) = c.as_mut() {
            match stream.write(buf) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => *c = None,
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("rampart-chardev-{}-{name}", std::process::id()))
    }

    #[test]
    fn creates_a_private_socket_and_removes_it_on_drop() {
        let p = tmp("private");
        let s = UnixServer::bind(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(s);
        assert!(!p.exists());
    }

    #[test]
    fn never_replaces_a_regular_file() {
        let p = tmp("regular");
        std::fs::write(&p, b"precious").unwrap();
        assert!(matches!(
            UnixServer::bind(&p),
            Err(ChardevError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read(&p).unwrap(), b"precious");
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn replaces_a_stale_socket_but_not_a_live_one() {
        let p = tmp("stale");
        // A socket file whose listener is gone, as a killed process leaves it.
        drop(std::os::unix::net::UnixListener::bind(&p).unwrap());
        let live = UnixServer::bind(&p).unwrap();
        assert!(UnixServer::bind(&p).is_err(), "a live socket was replaced");
        drop(live);
        assert!(!p.exists());
    }

    #[test]
    fn output_reaches_the_client_and_is_dropped_without_one() {
        let p = tmp("output");
        let s = UnixServer::bind(&p).unwrap();
        let mut w = s.writer();
        w.write_all(b"nobody hears this").unwrap();
        let mut client = UnixStream::connect(&p).unwrap();
        assert!(s.accept().is_some());
        w.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
    }
}
