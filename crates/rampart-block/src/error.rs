use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Why a block operation or an image open failed. Every variant names the image or request at
/// fault.
#[derive(Debug, Error)]
pub enum BlockError {
    #[error("could not open '{path}': {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("'{path}' is not a regular file or block device")]
    NotAFile { path: PathBuf },
    #[error(
        "failed to get \"{perm}\" lock on '{path}': is another process using the image? \
         (file.locking=off opts out)"
    )]
    Locked { path: PathBuf, perm: &'static str },
    #[error("locking '{path}': {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("'{path}': {op} at offset {offset}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("request at offset {offset}, length {len} is outside the {size}-byte disk")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("the disk is read-only")]
    ReadOnly,
    #[error("'{path}': {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("'{path}' is not a valid {format} image: {reason}")]
    Invalid {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
    #[error("'{path}': the {format} image is corrupt: {reason}")]
    Corrupt {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
    #[error("'{path}': {reason}")]
    Backing { path: PathBuf, reason: String },
}

impl BlockError {
    /// The `errno` that best describes this error to a guest-facing protocol, if it came from
    /// the host.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            BlockError::Open { source, .. }
            | BlockError::Lock { source, .. }
            | BlockError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// True when the host file system or device does not support the operation (for example,
    /// punching holes).
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self.raw_os_error(),
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
        )
    }
}
