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
mod host;
mod machine;
mod net;
mod run_with;
mod sandbox;
mod security;
mod size;
mod throttle;

pub use block::*;
pub use chardev::{ChardevBackend, ChardevConfig, MonitorConfig, MonitorMode};
pub use devices::{validate_devices, DeviceConfig, BLK_SERIAL_MAX};
pub use error::ConfigError;
pub use host::{AddFdConfig, PathAllowConfig};
pub use machine::*;
pub use net::{default_mac, parse_mac, validate_netdevs, NetdevConfig, TapSource, MAX_NETDEVS};
pub use run_with::*;
pub use sandbox::{ElevatePrivileges, SandboxConfig, SandboxPermission};
pub use security::*;
pub use size::parse_size;
pub use throttle::{BlockLimits, NetLimits, RateLimit, MAX_BURST_SECONDS, THROTTLE_VALUE_MAX};

pub mod props;
