//! The rampart monitor: QMP and HMP.
//!
//! - [`block`]: block devices for `query-block`, `query-blockstats` and `info block`;
//! - [`framing`]: the bounded JSON stream splitter;
//! - [`schema`]: the one definition of every command and event, from which argument
//!   validation, `query-commands` and `query-qmp-schema` ([`introspect`]) are derived;
//! - [`dispatch`]: the command layer QMP and HMP share — authorization, audit, and the
//!   commands, which reach the VM only through typed control requests;
//! - [`qmp`] and [`hmp`]: the two protocols; [`readline`]: HMP line editing on a terminal;
//! - [`server`]: the monitor thread and its transports.
//!
//! The crate knows nothing of VMM internals: it speaks `rampart_config::control`.

pub mod block;
pub mod dispatch;
pub mod error;
pub mod framing;
pub mod hmp;
pub mod introspect;
pub mod qmp;
pub mod readline;
pub mod schema;
pub mod server;

pub use dispatch::{
    AllowAll, Authorizer, Backend, ChardevInfo, Dispatcher, MachineInfo, Peer, VmInfo,
};
pub use error::{ErrorClass, QmpError};
pub use server::{EventSink, MonitorError, MonitorServer, MonitorSpec, Transport};
