//! Host resources handed over instead of named: passed file descriptors (`-add-fd`) and the
//! directories monitor commands may open files under (`-monitor-path-allow`).

use std::path::PathBuf;

/// `-add-fd fd=N,set=M[,opaque=STR]`: an inherited descriptor to put in fd set `set`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddFdConfig {
    pub fd: i32,
    pub set: u64,
    pub opaque: Option<String>,
}

/// `-monitor-path-allow DIR[,readonly=on]`: monitor commands may open files beneath `dir`
/// (for reading only with `readonly`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathAllowConfig {
    pub dir: PathBuf,
    pub readonly: bool,
}
