//! The vocabulary between the monitor and the VMM: control requests, their replies, run
//! states and lifecycle events. Plain data; the channels that carry it live elsewhere
//! (`rampart_vmm::control`), so the monitor knows nothing of VMM internals.

/// The VM's run state, named as QEMU's `RunState` enum names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Created with `-S`, never started.
    Prelaunch,
    Running,
    /// Stopped by `stop` (or a `-S` VM stopped again).
    Paused,
    /// Powered off with `-no-shutdown`: only a reset can run it again.
    Shutdown,
    /// The VM hit an error it cannot continue from.
    InternalError,
}

impl RunState {
    /// QEMU's name for the state (`query-status`'s `status`).
    pub fn name(self) -> &'static str {
        match self {
            RunState::Prelaunch => "prelaunch",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Shutdown => "shutdown",
            RunState::InternalError => "internal-error",
        }
    }

    pub fn is_running(self) -> bool {
        self == RunState::Running
    }
}

/// Every run state name, in QEMU's `RunState` order (for introspection).
pub const RUN_STATE_NAMES: &[&str] = &[
    "prelaunch",
    "running",
    "paused",
    "shutdown",
    "internal-error",
];

/// Why the VM shut down or reset (QEMU's `ShutdownCause`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownCause {
    HostQmpQuit,
    HostQmpSystemReset,
    HostSignal,
    HostUi,
    GuestShutdown,
    GuestReset,
}

impl ShutdownCause {
    pub fn name(self) -> &'static str {
        match self {
            ShutdownCause::HostQmpQuit => "host-qmp-quit",
            ShutdownCause::HostQmpSystemReset => "host-qmp-system-reset",
            ShutdownCause::HostSignal => "host-signal",
            ShutdownCause::HostUi => "host-ui",
            ShutdownCause::GuestShutdown => "guest-shutdown",
            ShutdownCause::GuestReset => "guest-reset",
        }
    }

    /// Whether the guest asked for it (QEMU's `guest` member of SHUTDOWN/RESET).
    pub fn by_guest(self) -> bool {
        matches!(
            self,
            ShutdownCause::GuestShutdown | ShutdownCause::GuestReset
        )
    }
}

/// Every shutdown cause name (for introspection).
pub const SHUTDOWN_CAUSE_NAMES: &[&str] = &[
    "host-qmp-quit",
    "host-qmp-system-reset",
    "host-signal",
    "host-ui",
    "guest-shutdown",
    "guest-reset",
];

/// What the monitor asks the VMM thread to do.
#[derive(Debug)]
pub enum ControlRequest {
    QueryStatus,
    QueryCpus,
    Stop,
    Cont,
    SystemReset,
    SystemPowerdown,
    Quit,
    /// Write guest RAM as an ELF core to this file (`dump-guest-memory`, paging=false); the
    /// vCPUs are paused while it is written.
    DumpGuestMemory(std::fs::File),
}

/// One vCPU as `query-cpus-fast` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuInfo {
    pub index: u32,
    /// The host thread id of the vCPU thread.
    pub thread_id: i64,
    pub socket: u32,
    pub core: u32,
    pub thread: u32,
}

/// The counters of one kind of block request (`query-blockstats`), as read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockKindStats {
    pub operations: u64,
    pub bytes: u64,
    pub total_time_ns: u64,
    pub failed_operations: u64,
    pub invalid_operations: u64,
}

/// A block device's I/O accounting, as read (each counter exact; read one by one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockStatsSnapshot {
    pub read: BlockKindStats,
    pub write: BlockKindStats,
    pub flush: BlockKindStats,
    pub unmap: BlockKindStats,
    /// The end of the highest byte range written (QEMU's `wr_highest_offset`).
    pub wr_highest_offset: u64,
    /// Nanoseconds since the last request completed; `None` before the first.
    pub idle_time_ns: Option<u64>,
}

/// The VMM thread's answer to a [`ControlRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlReply {
    Done,
    Status(RunState),
    Cpus(Vec<CpuInfo>),
}

/// Something that happened to the VM, broadcast to every QMP client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleEvent {
    Stop,
    Resume,
    Reset(ShutdownCause),
    Shutdown(ShutdownCause),
    Powerdown,
    /// The guest changed a NIC's receive filter (sent once until `query-rx-filter`).
    NicRxFilterChanged {
        name: Option<String>,
        path: String,
    },
}

/// A NIC's receive filter as the guest set it (QMP `query-rx-filter`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxFilter {
    pub promiscuous: bool,
    pub all_multi: bool,
    pub all_uni: bool,
    pub no_multi: bool,
    pub no_uni: bool,
    pub no_bcast: bool,
    pub main_mac: [u8; 6],
    pub unicast_table: Vec<[u8; 6]>,
    pub multicast_table: Vec<[u8; 6]>,
    pub unicast_overflow: bool,
    pub multicast_overflow: bool,
}

impl RxFilter {
    /// The state after a device reset: promiscuous (as QEMU's virtio-net), no tables.
    pub fn reset(mac: [u8; 6]) -> RxFilter {
        RxFilter {
            promiscuous: true,
            all_multi: false,
            all_uni: false,
            no_multi: false,
            no_uni: false,
            no_bcast: false,
            main_mac: mac,
            unicast_table: Vec::new(),
            multicast_table: Vec::new(),
            unicast_overflow: false,
            multicast_overflow: false,
        }
    }

    /// Whether a frame whose destination is `dst` passes the filter.
    pub fn accepts(&self, dst: &[u8; 6]) -> bool {
        if self.promiscuous {
            return true;
        }
        if dst == &[0xff; 6] {
            return !self.no_bcast;
        }
        if dst[0] & 1 != 0 {
            if self.no_multi {
                return false;
            }
            return self.all_multi || self.multicast_overflow || self.multicast_table.contains(dst);
        }
        if self.no_uni {
            return false;
        }
        self.all_uni
            || self.unicast_overflow
            || dst == &self.main_mac
            || self.unicast_table.contains(dst)
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_text(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
