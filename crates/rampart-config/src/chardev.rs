//! Character devices (`-chardev`) and monitors (`-mon`, `-qmp`, `-monitor`).

use std::path::PathBuf;

/// Where a character device's bytes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChardevBackend {
    /// A listening UNIX socket; `wait` blocks start-up until a client connects.
    UnixServer { path: PathBuf, wait: bool },
    /// A listening TCP socket on `host:port`; `wait` blocks start-up until a client connects.
    TcpServer { host: String, port: u16, wait: bool },
    /// The process's standard input and output.
    Stdio,
}

/// One character device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChardevConfig {
    pub id: String,
    pub backend: ChardevBackend,
    /// `tls-creds=ID`: the TLS credentials a TCP socket serves with.
    pub tls_creds: Option<String>,
    /// `tls-authz=ID`: the authz object that checks a client's identity (its certificate's
    /// distinguished name on TLS, `uid:N`/`gid:N` from SO_PEERCRED on a UNIX socket).
    pub tls_authz: Option<String>,
    /// `insecure=on`: a monitor on TCP without TLS or authorization (test set-ups only).
    pub insecure: bool,
}

impl ChardevConfig {
    /// The `filename` QEMU's `query-chardev` reports for it.
    pub fn filename(&self) -> String {
        match &self.backend {
            ChardevBackend::UnixServer { path, .. } => {
                format!("unix:{},server=on", path.display())
            }
            ChardevBackend::TcpServer { host, port, .. } => {
                format!("tcp:{host}:{port},server=on")
            }
            ChardevBackend::Stdio => "stdio".into(),
        }
    }
}

/// The protocol a monitor speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonitorMode {
    /// QMP (`mode=control`).
    Control,
    /// HMP (`mode=readline`).
    Readline,
}

/// One monitor on a character device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorConfig {
    /// The `id` of the [`ChardevConfig`] it uses.
    pub chardev: String,
    pub mode: MonitorMode,
    /// `pretty=on`: QMP replies are indented.
    pub pretty: bool,
}
