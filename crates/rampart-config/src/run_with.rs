//! How the rampart process runs: the user it switches to, the directory it changes root or
//! pivots into, the jail's namespaces, its cgroup limits and its rlimits (`-run-with`, and the
//! older `-runas` / `-chroot`). Plain values; `rampart-sandbox` applies them.

use std::path::PathBuf;

use crate::ConfigError;

/// The user to switch to after start-up (`-run-with user=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAsUser {
    /// A user name, looked up in the password database at start (before any root change); the
    /// gid is the user's primary group.
    Name(String),
    /// A numeric `UID:GID` pair (no lookup).
    Ids { uid: u32, gid: u32 },
}

/// The jail (`-run-with jail=DIR`): new mount, PID, IPC and UTS namespaces (and optionally a
/// network namespace), with `DIR` as the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailConfig {
    /// The per-VM directory the process pivots into (must exist; rampart mounts an empty,
    /// read-only tmpfs on it inside its own mount namespace).
    pub dir: PathBuf,
    /// A new, empty network namespace too (`netns=on`).
    pub netns: bool,
}

/// A CPU bandwidth limit: at most `quota_us` of CPU time per `period_us` (cgroup v2 `cpu.max`,
/// v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuMax {
    pub quota_us: u64,
    pub period_us: u64,
}

/// The default CFS period (the kernel's), in microseconds.
pub const DEFAULT_CPU_PERIOD_US: u64 = 100_000;

/// Throttling of one block device (cgroup v2 `io.max`, v1 `blkio.throttle.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IoMax {
    /// The device's `major:minor`.
    pub major: u32,
    pub minor: u32,
    pub rbps: Option<u64>,
    pub wbps: Option<u64>,
    pub riops: Option<u64>,
    pub wiops: Option<u64>,
}

/// The per-VM cgroup's limits; `None` leaves a controller alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CgroupLimits {
    pub cpu: Option<CpuMax>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    pub io: Option<IoMax>,
}

impl CgroupLimits {
    /// Whether any limit is set (and so a per-VM cgroup is needed).
    pub fn any(&self) -> bool {
        self.cpu.is_some()
            || self.memory_bytes.is_some()
            || self.pids.is_some()
            || self.io.is_some()
    }
}

/// A resource limit rampart can set (`-run-with rlimit-NAME=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rlimit {
    /// RLIMIT_NOFILE: open descriptors.
    Nofile,
    /// RLIMIT_FSIZE: largest file the process may write (bytes).
    Fsize,
    /// RLIMIT_CORE: core dump size (bytes).
    Core,
    /// RLIMIT_NPROC: processes/threads of the (real) user.
    Nproc,
    /// RLIMIT_MEMLOCK: locked memory (bytes).
    Memlock,
    /// RLIMIT_AS: address space (bytes).
    As,
}

impl Rlimit {
    /// Every limit, in a stable order.
    pub const ALL: [Rlimit; 6] = [
        Rlimit::Nofile,
        Rlimit::Fsize,
        Rlimit::Core,
        Rlimit::Nproc,
        Rlimit::Memlock,
        Rlimit::As,
    ];

    /// The `-run-with` key (`rlimit-nofile`, ...).
    pub fn key(self) -> &'static str {
        match self {
            Rlimit::Nofile => "rlimit-nofile",
            Rlimit::Fsize => "rlimit-fsize",
            Rlimit::Core => "rlimit-core",
            Rlimit::Nproc => "rlimit-nproc",
            Rlimit::Memlock => "rlimit-memlock",
            Rlimit::As => "rlimit-as",
        }
    }

    /// Whether the value is a size in bytes (accepts K/M/G suffixes) rather than a count.
    pub fn is_size(self) -> bool {
        matches!(
            self,
            Rlimit::Fsize | Rlimit::Core | Rlimit::Memlock | Rlimit::As
        )
    }
}

/// Everything `-run-with` (and `-runas`, `-chroot`) configures.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunWithConfig {
    pub user: Option<RunAsUser>,
    /// `chroot=DIR`: chroot(2) into DIR after opening every host resource.
    pub chroot: Option<PathBuf>,
    pub jail: Option<JailConfig>,
    pub cgroup: CgroupLimits,
    /// Limits set as both soft and hard limit, in command-line order.
    pub rlimits: Vec<(Rlimit, u64)>,
}

impl RunWithConfig {
    /// Whether rampart runs the VM in a supervised child process (the jail's PID namespace
    /// needs one, and the per-VM cgroup is removed by the parent once the child has exited).
    pub fn supervised(&self) -> bool {
        self.jail.is_some() || self.cgroup.any()
    }

    /// Checks the rules between the keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(format!("-run-with: {m}")));
        if self.chroot.is_some() && self.jail.is_some() {
            return bad("chroot= and jail= cannot be combined (the jail pivots into its own root)");
        }
        if let Some(c) = self.cgroup.cpu {
            if !(1_000..=1_000_000).contains(&c.period_us) {
                return bad("cpu-max: the period must be 1000 to 1000000 microseconds");
            }
            if c.quota_us < 1_000 {
                return bad("cpu-max: the quota must be at least 1000 microseconds");
            }
        }
        if let Some(m) = self.cgroup.memory_bytes {
            if m < (4 << 20) {
                return bad("memory-max must be at least 4M");
            }
        }
        if self.cgroup.pids == Some(0) {
            return bad("pids-max must be at least 1");
        }
        if let Some(io) = self.cgroup.io {
            if io.rbps.is_none() && io.wbps.is_none() && io.riops.is_none() && io.wiops.is_none() {
                return bad(
                    "io-device= needs at least one of io-rbps, io-wbps, io-riops, io-wiops",
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chroot_and_jail_are_exclusive() {
        let c = RunWithConfig {
            chroot: Some("/a".into()),
            jail: Some(JailConfig {
                dir: "/b".into(),
                netns: false,
            }),
            ..Default::default()
        };

        let err = c.validate().unwrap_err();

        assert!(err.to_string().contains("chroot= and jail="), "{err}");
    }

    #[test]
    fn cgroup_limits_or_a_jail_make_rampart_supervised() {
        let mut c = RunWithConfig {
            user: Some(RunAsUser::Name("nobody".into())),
            ..Default::default()
        };
        assert!(!c.supervised());

        c.cgroup.pids = Some(8);

        assert!(c.supervised());
    }

    #[test]
    fn limits_out_of_range_are_named() {
        let mut c = RunWithConfig::default();
        c.cgroup.memory_bytes = Some(1024);
        assert!(c.validate().unwrap_err().to_string().contains("memory-max"));

        c.cgroup.memory_bytes = None;
        c.cgroup.cpu = Some(CpuMax {
            quota_us: 10,
            period_us: DEFAULT_CPU_PERIOD_US,
        });
        assert!(c.validate().unwrap_err().to_string().contains("cpu-max"));

        c.cgroup.cpu = None;
        c.cgroup.io = Some(IoMax {
            major: 8,
            minor: 0,
            ..Default::default()
        });
        assert!(c.validate().unwrap_err().to_string().contains("io-device"));
    }
}
