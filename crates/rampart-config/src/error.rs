use thiserror::Error;

/// A configuration value that is not acceptable. Every variant names the culprit.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid size '{value}' for {what}: {reason}")]
    InvalidSize {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("-m {requested_mib}M: {reason}")]
    Memory { requested_mib: u64, reason: String },
    #[error("-smp: {0}")]
    Smp(String),
    #[error("-append: kernel command line is {len} bytes, the limit is {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("-append: kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("{option} requires -kernel")]
    NeedsKernel { option: &'static str },
    #[error("no -kernel given: rampart boots a kernel directly (there is no firmware)")]
    NoKernel,
    #[error("{0}")]
    Invalid(String),
}
