//! The rampart monitor: QMP and HMP.
//!
//! - [`block`]: block devices for `query-block`, `query-blockstats` and `info block`;
//! - [`dump`]: `dump-guest-memory` (ELF core of guest RAM);
//! - [`fds`]: descriptor passing (`getfd`, `add-fd`, ... with `SCM_RIGHTS`);
//! - [`net`] and [`net_throttle`]: NICs (`set_link`, `query-rx-filter`) and their rate limits
//!   (rampart's `__rampart_netdev-set-throttle`, `__rampart_query-netdev-throttle`);
//! - [`nodes`]: block nodes the monitor opens (`blockdev-add`, `blockdev-del`);
//! - [`framing`]: the bounded JSON stream splitter;
//! - [`schema`]: the one definition of every command and event, from which argument
//!   validation, `query-commands` and `query-qmp-schema` ([`introspect`]) are derived;
//! - [`dispatch`]: the command layer QMP and HMP share — authorization, audit, and the
//!   commands, which reach the VM only through typed control requests;
//! - [`qmp`] and [`hmp`]: the two protocols; [`readline`]: HMP line editing on a terminal;
//! - [`server`]: the monitor thread and its transports; [`tls`]: TLS credentials and the
//!   non-blocking TLS stream; [`dn`]: a client certificate's distinguished name;
//! - [`authz`]: QEMU's authz objects and per-command roles ([`glob`] patterns);
//! - [`audit`]: the audit log and its writer thread.
//!
//! The crate knows nothing of VMM internals: it speaks `rampart_config::control`.

pub mod audit;
pub mod authz;
pub mod block;
pub mod block_throttle;
mod conn;
pub mod dispatch;
pub mod dn;
pub mod dump;
pub mod error;
pub mod fds;
pub mod framing;
pub mod glob;
pub mod hmp;
pub mod introspect;
pub mod net;
pub mod net_throttle;
pub mod nodes;
pub mod qmp;
pub mod readline;
pub mod schema;
pub mod server;
pub mod tls;

pub use dispatch::{
    AllowAll, Authorizer, Backend, ChardevInfo, Dispatcher, MachineInfo, Peer, VmInfo,
};
pub use error::{ErrorClass, QmpError};
pub use server::{EventSink, MonitorError, MonitorServer, MonitorSpec, Transport};
