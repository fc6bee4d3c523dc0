//! Plain, typed configuration of one rampart VM.
//!
//! The command line (and later QMP and snapshots) produce a [`VmConfig`]; [`VmConfig::validate`]
//! checks every cross-field rule. Nothing here performs I/O: host limits (such as the host's RAM)
//! are passed in by the caller through [`HostLimits`].

mod block;
mod chardev;
pub mod control;
mod devices;
mod error;
mod machine;
mod run_with;
mod security;
mod size;

pub use block::*;
pub use chardev::{ChardevBackend, ChardevConfig, MonitorConfig, MonitorMode};
pub use devices::{validate_devices, DeviceConfig, BLK_SERIAL_MAX};
pub use error::ConfigError;
pub use machine::*;
pub use run_with::*;
pub use security::*;
pub use size::parse_size;

pub mod props;
