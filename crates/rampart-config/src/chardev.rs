//! Character devices (`-chardev`) and monitors (`-mon`, `-qmp`, `-monitor`).

use std::path::PathBuf;

/// Where a character device's bytes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChardevBackend {
    /// A listening UNIX socket; `wait` blocks start-up until a client connects.
    UnixServer { path: PathBuf, wait: bool },
    /// The process's standard input and output.
    Stdio,
}

/// One character device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChardevConfig {
    pub id: String,
    pub backend: ChardevBackend,
}

impl ChardevConfig {
    /// The `filename` QEMU's `query-chardev` reports for it.
    pub fn filename(&self) -> String {
        match &self.backend {
            ChardevBackend::UnixServer { path, .. } => {
                format!("unix:{},server=on", path.display())
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
