use std::path::PathBuf;

use crate::ConfigError;

/// Largest vCPU count rampart accepts (bounded by the MADT/APIC-ID layout it builds).
pub const MAX_VCPUS: u32 = 254;
/// Largest kernel command line, matching the x86-64 kernel's COMMAND_LINE_SIZE.
pub const MAX_CMDLINE_LEN: usize = 2047;
/// Smallest guest RAM rampart accepts.
pub const MIN_MEMORY_BYTES: u64 = 16 << 20;
/// Default guest RAM when `-m` is absent (QEMU's default is 128 MiB).
pub const DEFAULT_MEMORY_BYTES: u64 = 128 << 20;

/// The machine types rampart accepts: all are names for its one x86-64 machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MachineType {
    #[default]
    Q35,
    Pc,
    Microvm,
}

/// An accelerator (`-accel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The CPU model (`-cpu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuModel {
    /// Pass through what the accelerator supports (`kvm` only in QEMU; rampart treats it as `max`
    /// under `tcg`).
    Host,
    /// Everything the accelerator can offer.
    #[default]
    Max,
    /// The x86-64 baseline.
    Qemu64,
}

/// CPU topology (`-smp`), already resolved: `cpus == sockets * cores * threads` is not required
/// (QEMU allows fewer present CPUs than `maxcpus`), but `maxcpus == sockets * cores * threads`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmpConfig {
    pub cpus: u32,
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
    pub maxcpus: u32,
}

impl Default for SmpConfig {
    fn default() -> Self {
        SmpConfig {
            cpus: 1,
            sockets: 1,
            cores: 1,
            threads: 1,
            maxcpus: 1,
        }
    }
}

impl SmpConfig {
    /// Resolves QEMU's `-smp` properties the way QEMU (6.2 and later) does, and validates the
    /// result.
    ///
    /// Rules, as in QEMU's generic `-smp` parser:
    /// - every given value must be at least 1;
    /// - with neither `cpus` nor `maxcpus`, omitted topology values are 1;
    /// - otherwise `maxcpus` defaults to `cpus`, and omitted values are computed from it with
    ///   integer division, preferring **cores** over sockets (QEMU's rule since 6.2; older
    ///   versioned machine types preferred sockets, rampart always uses the current rule), and
    ///   threads last;
    /// - `sockets * cores * threads` must equal `maxcpus`, and `cpus <= maxcpus`;
    /// - rampart's own limit: at most [`MAX_VCPUS`].
    pub fn resolve(
        cpus: Option<u32>,
        sockets: Option<u32>,
        cores: Option<u32>,
        threads: Option<u32>,
        maxcpus: Option<u32>,
    ) -> Result<SmpConfig, ConfigError> {
        for (name, v) in [
            ("cpus", cpus),
            ("sockets", sockets),
            ("cores", cores),
            ("threads", threads),
            ("maxcpus", maxcpus),
        ] {
            if v == Some(0) {
                return Err(ConfigError::Smp(format!("{name}=0: must be at least 1")));
            }
        }
        // u128 arithmetic: three u32 factors cannot overflow it.
        let (mut s, mut c, mut t) = (
            sockets.map(u128::from),
            cores.map(u128::from),
            threads.map(u128::from),
        );
        if cpus.is_none() && maxcpus.is_none() {
            s = s.or(Some(1));
            c = c.or(Some(1));
            t = t.or(Some(1));
        } else {
            let max = u128::from(maxcpus.or(cpus).unwrap_or(1));
            match (s, c) {
                (_, None) => {
                    let sv = s.unwrap_or(1);
                    let tv = t.unwrap_or(1);
                    s = Some(sv);
                    t = Some(tv);
                    c = Some(max / (sv * tv));
                }
                (None, Some(cv)) => {
                    let tv = t.unwrap_or(1);
                    t = Some(tv);
                    s = Some(max / (cv * tv));
                }
                (Some(_), Some(_)) => {}
            }
            if t.is_none() {
                let per = s.unwrap_or(1) * c.unwrap_or(1);
                t = Some(max.checked_div(per).unwrap_or(0));
            }
        }
        let (s, c, t) = (s.unwrap_or(1), c.unwrap_or(1), t.unwrap_or(1));
        let total = s * c * t;
        let maxcpus_v = maxcpus.or(cpus).map(u128::from).unwrap_or(total);
        let cpus_v = cpus.map(u128::from).unwrap_or(maxcpus_v);
        if total != maxcpus_v {
            return Err(ConfigError::Smp(format!(
                "sockets ({s}) * cores ({c}) * threads ({t}) = {total} \
                 does not match maxcpus ({maxcpus_v})"
            )));
        }
        if cpus_v > maxcpus_v {
            return Err(ConfigError::Smp(format!(
                "cpus ({cpus_v}) is more than maxcpus ({maxcpus_v})"
            )));
        }
        if maxcpus_v > u128::from(MAX_VCPUS) {
            return Err(ConfigError::Smp(format!(
                "{maxcpus_v} CPUs requested, rampart supports at most {MAX_VCPUS}"
            )));
        }
        // All values are now <= MAX_VCPUS, so they fit in u32.
        let narrow = |v: u128| u32::try_from(v).unwrap_or(u32::MAX);
        Ok(SmpConfig {
            cpus: narrow(cpus_v),
            sockets: narrow(s),
            cores: narrow(c),
            threads: narrow(t),
            maxcpus: narrow(maxcpus_v),
        })
    }
}

/// Where the guest's first serial port goes (`-serial`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SerialBackend {
    /// The terminal (raw mode on a TTY; Ctrl-A x quits).
    #[default]
    Stdio,
    /// No serial port at all.
    None,
    /// A serial port whose output is discarded.
    Null,
    /// Output appended to a file.
    File(PathBuf),
    /// A listening UNIX socket; `wait` blocks start-up until a client connects.
    UnixServer { path: PathBuf, wait: bool },
}

/// What the guest kernel is and how it is started.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootConfig {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
}

/// What happens at guest power-off, reboot, and start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LifecycleConfig {
    /// `-no-reboot`: a guest reboot exits rampart (status 0).
    pub no_reboot: bool,
    /// `-no-shutdown`: a guest power-off stops the VM but keeps the process.
    pub no_shutdown: bool,
    /// `-S`: create the VM paused.
    pub start_paused: bool,
}

/// Limits of the host that validation checks against (gathered by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// Physical RAM of the host in bytes.
    pub host_memory_bytes: u64,
}

/// The whole, validated configuration of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub name: Option<String>,
    pub uuid: Option<[u8; 16]>,
    pub machine: MachineType,
    /// Accelerators in fallback order; empty means "choose" (hardware KVM if usable, else tcg).
    pub accel: Vec<Accel>,
    /// `-accel tcg,jit=on|off`: translate hot code blocks to host code (default on; off:
    /// interpret only).
    pub tcg_jit: bool,
    pub cpu: CpuModel,
    pub memory_bytes: u64,
    pub smp: SmpConfig,
    pub boot: BootConfig,
    pub serial: SerialBackend,
    pub lifecycle: LifecycleConfig,
    /// `-nodefaults`: no default devices (no serial port unless `-serial` is given).
    pub nodefaults: bool,
    /// `-drive` and `-blockdev`, in command-line order.
    pub drives: Vec<crate::DriveConfig>,
    /// PCI devices, in slot order.
    pub devices: Vec<crate::DeviceConfig>,
    /// Character devices for monitors (`-chardev`, and those `-qmp`/`-monitor` create).
    pub chardevs: Vec<crate::ChardevConfig>,
    /// Monitors (`-mon`, `-qmp`, `-monitor`).
    pub monitors: Vec<crate::MonitorConfig>,
    /// `-run-with` (and `-runas`, `-chroot`): user, root change, jail, cgroup limits, rlimits.
    pub run_with: crate::RunWithConfig,
    /// `-object tls-creds-x509`.
    pub tls_creds: Vec<crate::TlsCredsConfig>,
    /// `-object authz-simple|authz-list|authz-listfile`.
    pub authz: Vec<crate::AuthzConfig>,
    /// `-audit`.
    pub audit: Option<crate::AuditConfig>,
    /// Network back ends (`-netdev`, and those `-nic` creates).
    pub netdevs: Vec<crate::NetdevConfig>,
    /// `-object throttle-group`.
    pub throttle_groups: Vec<crate::ThrottleGroupConfig>,
    /// `-sandbox` (on, strictest, by default).
    pub sandbox: crate::SandboxConfig,
    /// `-add-fd`: inherited descriptors for fd sets, in command-line order.
    pub add_fds: Vec<crate::AddFdConfig>,
    /// `-monitor-path-allow`: directories monitor commands may open files under.
    pub monitor_paths: Vec<crate::PathAllowConfig>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            name: None,
            uuid: None,
            machine: MachineType::default(),
            accel: Vec::new(),
            tcg_jit: true,
            cpu: CpuModel::default(),
            memory_bytes: DEFAULT_MEMORY_BYTES,
            smp: SmpConfig::default(),
            boot: BootConfig::default(),
            serial: SerialBackend::default(),
            lifecycle: LifecycleConfig::default(),
            nodefaults: false,
            drives: Vec::new(),
            devices: Vec::new(),
            chardevs: Vec::new(),
            tls_creds: Vec::new(),
            authz: Vec::new(),
            audit: None,
            monitors: Vec::new(),
            run_with: crate::RunWithConfig::default(),
            netdevs: Vec::new(),
            throttle_groups: Vec::new(),
            sandbox: crate::SandboxConfig::default(),
            add_fds: Vec::new(),
            monitor_paths: Vec::new(),
        }
    }
}

impl VmConfig {
    /// Checks every rule that spans fields or depends on the host.
    pub fn validate(&self, host: &HostLimits) -> Result<(), ConfigError> {
        let mib = self.memory_bytes >> 20;
        if self.memory_bytes < MIN_MEMORY_BYTES {
            return Err(ConfigError::Memory {
                requested_mib: mib,
                reason: format!("at least {} MiB are needed", MIN_MEMORY_BYTES >> 20),
            });
        }
        if self.memory_bytes % (1 << 20) != 0 {
            return Err(ConfigError::Memory {
                requested_mib: mib,
                reason: "must be a whole number of MiB".into(),
            });
        }
        crate::validate_drives(&self.drives)?;
        self.run_with.validate()?;
        crate::validate_devices(&self.devices, &self.drives)?;
        crate::validate_netdevs(&self.netdevs, &self.devices, &self.sandbox)?;
        crate::validate_throttling(&self.drives, &self.throttle_groups)?;
        if self.memory_bytes > host.host_memory_bytes {
            return Err(ConfigError::Memory {
                requested_mib: mib,
                reason: format!(
                    "more than the host's {} MiB of RAM",
                    host.host_memory_bytes >> 20
                ),
            });
        }
        if self.boot.cmdline.len() > MAX_CMDLINE_LEN {
            return Err(ConfigError::CmdlineTooLong {
                len: self.boot.cmdline.len(),
                max: MAX_CMDLINE_LEN,
            });
        }
        if self.boot.cmdline.contains('\0') {
            return Err(ConfigError::CmdlineNul);
        }
        if self.boot.kernel.is_none() {
            if self.boot.initrd.is_some() {
                return Err(ConfigError::NeedsKernel { option: "-initrd" });
            }
            if !self.boot.cmdline.is_empty() {
                return Err(ConfigError::NeedsKernel { option: "-append" });
            }
            return Err(ConfigError::NoKernel);
        }
        if let Some(name) = &self.name {
            if name.is_empty() || name.len() > 256 || name.chars().any(|c| c.is_control()) {
                return Err(ConfigError::Invalid(
                    "-name: must be 1 to 256 printable characters".into(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostLimits {
        HostLimits {
            host_memory_bytes: 8 << 30,
        }
    }

    fn with_kernel() -> VmConfig {
        VmConfig {
            boot: BootConfig {
                kernel: Some("/k".into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn smp(
        cpus: Option<u32>,
        sockets: Option<u32>,
        cores: Option<u32>,
        threads: Option<u32>,
        maxcpus: Option<u32>,
    ) -> (u32, u32, u32, u32, u32) {
        let s = SmpConfig::resolve(cpus, sockets, cores, threads, maxcpus).unwrap();
        (s.cpus, s.sockets, s.cores, s.threads, s.maxcpus)
    }

    #[test]
    fn smp_plain_count_becomes_cores_as_in_qemu_6_2() {
        assert_eq!(smp(Some(4), None, None, None, None), (4, 1, 4, 1, 4));
    }

    #[test]
    fn smp_topology_fills_missing_values() {
        assert_eq!(smp(Some(8), Some(2), None, Some(2), None), (8, 2, 2, 2, 8));
        assert_eq!(smp(Some(8), None, Some(2), None, None), (8, 4, 2, 1, 8));
        assert_eq!(smp(Some(8), Some(2), Some(2), None, None), (8, 2, 2, 2, 8));
        assert_eq!(smp(Some(2), None, None, None, Some(4)), (2, 1, 4, 1, 4));
    }

    #[test]
    fn smp_topology_alone_defaults_the_rest_to_one() {
        assert_eq!(smp(None, Some(2), None, None, None), (2, 2, 1, 1, 2));
        assert_eq!(smp(None, None, Some(2), Some(2), None), (4, 1, 2, 2, 4));
    }

    #[test]
    fn smp_full_topology_must_multiply_to_cpus() {
        let err = SmpConfig::resolve(Some(4), Some(1), Some(1), Some(1), None).unwrap_err();

        assert!(
            err.to_string().contains("does not match maxcpus (4)"),
            "{err}"
        );
    }

    #[test]
    fn smp_uses_integer_division_like_qemu() {
        // 5 CPUs over 2 sockets: 2 cores each, 4 != 5.
        assert!(SmpConfig::resolve(Some(5), Some(2), None, None, None).is_err());
    }

    #[test]
    fn smp_rejects_zero_mismatch_and_too_many() {
        assert!(SmpConfig::resolve(Some(0), None, None, None, None).is_err());
        assert!(SmpConfig::resolve(Some(1000), None, None, None, None).is_err());
        assert!(SmpConfig::resolve(Some(4), Some(1), Some(1), Some(1), None).is_err());
        assert!(SmpConfig::resolve(Some(4), None, None, None, Some(2)).is_err());
        assert!(
            SmpConfig::resolve(None, Some(u32::MAX), Some(u32::MAX), Some(u32::MAX), None).is_err()
        );
        assert!(SmpConfig::resolve(Some(2), Some(4), None, None, None).is_err());
    }

    #[test]
    fn rejects_memory_out_of_range() {
        let mut c = with_kernel();
        c.memory_bytes = 0;
        assert!(c.validate(&host()).is_err());
        c.memory_bytes = 16 << 30;
        assert!(c.validate(&host()).is_err());
        c.memory_bytes = 512 << 20;
        assert!(c.validate(&host()).is_ok());
    }

    #[test]
    fn rejects_long_cmdline_and_missing_kernel() {
        let mut c = with_kernel();
        c.boot.cmdline = "x".repeat(MAX_CMDLINE_LEN + 1);
        assert!(matches!(
            c.validate(&host()),
            Err(ConfigError::CmdlineTooLong { .. })
        ));
        let c = VmConfig::default();
        assert_eq!(c.validate(&host()), Err(ConfigError::NoKernel));
    }
}
