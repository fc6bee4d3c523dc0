//! QEMU-syntax command line → a typed [`VmConfig`].
//!
//! [`parse`] works in two passes, as QEMU does: the first recognises every option and its
//! argument (so an unknown option or a missing argument anywhere is reported before anything
//! else); the second acts on the options in order (`-h` and `-version` stop it at once) and
//! builds the configuration. It checks syntax and per-option values only: host-dependent and
//! cross-field rules are [`VmConfig::validate`]'s job, and nothing here touches the filesystem.
//!
//! Known differences from QEMU, on purpose:
//! - `-m 0` is kept as 0 bytes (QEMU silently substitutes its default); validation rejects it.
//! - `-smp` always uses QEMU 6.2+'s rule (cores before sockets), even for old versioned
//!   machine names.
//! - `-device` uses the keyval syntax (dotted keys, no bare flags) like `-object`.
//! - `--opt=value` is refused with a hint (QEMU reports it as an unknown option).
//! - `-drive` without `if=` is a virtio disk (QEMU's default, IDE, does not exist in rampart),
//!   and a writable `-drive` without `format=` is refused rather than probed.

mod argv;
mod block;
mod devices;
mod help;
mod host;
mod monitor;
mod net;
mod objects;
mod options;
mod qemu_opts;
mod run_with;
mod sandbox;
mod security;
mod serial;
#[cfg(test)]
mod tests;
mod throttle;

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use rampart_config::props::PropsError;
use rampart_config::{Accel, BootConfig, ConfigError, LifecycleConfig, SerialBackend, VmConfig};

use argv::{Item, Opt};
pub use help::{help_text, version_text};
use qemu_opts::Opts;

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cli {
    /// Run a VM with this configuration (still to be validated against the host).
    Run(Box<VmConfig>),
    /// Print [`help_text`] and exit 0.
    Help,
    /// Print [`version_text`] and exit 0.
    Version,
    /// Print this text (a `help` list such as `-machine help`) and exit 0.
    Info(String),
}

/// A command line rampart refuses. Every message names the option, property or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("unsupported option '{0}' (see --help)")]
    UnsupportedOption(String),
    #[error("option '{0}' requires an argument")]
    MissingArgument(&'static str),
    #[error("'{given}': an option's argument is the next word, write '{option} {value}'")]
    EqualsForm {
        given: String,
        option: &'static str,
        value: String,
    },
    #[error("unexpected argument '{0}': rampart takes no positional (disk image) arguments")]
    Positional(String),
    #[error("{option}: argument is {len} bytes, the limit is {max}")]
    TooLong {
        option: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{option}: unknown property '{property}'")]
    UnknownProperty {
        option: &'static str,
        property: String,
    },
    #[error("{option}: property '{property}' is not supported: {reason}")]
    UnsupportedProperty {
        option: &'static str,
        property: String,
        reason: &'static str,
    },
    #[error("{option}: invalid value '{value}' for '{property}': {reason}")]
    InvalidValue {
        option: &'static str,
        property: String,
        value: String,
        reason: String,
    },
    #[error("{option}: {message}")]
    Invalid {
        option: &'static str,
        message: String,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("{option}: {source}")]
    Props {
        option: &'static str,
        #[source]
        source: PropsError,
    },
    #[error("{option} {name}: unknown {noun} '{name}'")]
    UnknownType {
        option: &'static str,
        noun: &'static str,
        name: String,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// A block node from `blockdev-add`'s arguments (JSON text): the same rules as `-blockdev`'s
/// JSON form. The message of an error does not name `-blockdev`.
pub fn blockdev_json(json: &str) -> Result<rampart_config::DriveConfig, String> {
    let strip = |e: CliError| {
        let text = e.to_string();
        text.strip_prefix("-blockdev: ")
            .map(str::to_owned)
            .unwrap_or(text)
    };
    match block::blockdev(OsStr::new(json)).map_err(strip)? {
        block::BlockRequest::Node(d) => Ok(*d),
        block::BlockRequest::Help => Err("driver=help is a command-line request".into()),
    }
}

/// Parses the command line (without argv\[0\]).
pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Cli, CliError> {
    let items = argv::tokenize(args)?;
    let mut b = Builder::default();
    for item in items {
        if let Some(done) = b.apply(item)? {
            return Ok(done);
        }
    }
    b.finish().map(|c| Cli::Run(Box::new(c)))
}

/// Options gathered so far, interpreted at the end (merged options: last value wins).
#[derive(Default)]
struct Builder {
    machine: Option<Opts>,
    accels: Vec<Accel>,
    accel_given: bool,
    /// `-accel tcg,jit=` (the last one given).
    tcg_jit: Option<bool>,
    cpu: Option<rampart_config::CpuModel>,
    memory: Option<Opts>,
    smp: Option<Opts>,
    name: Option<Opts>,
    uuid: Option<[u8; 16]>,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    append: Option<String>,
    serial: Option<SerialBackend>,
    lifecycle: LifecycleConfig,
    nodefaults: bool,
    drives: Vec<rampart_config::DriveConfig>,
    devices: Vec<rampart_config::DeviceConfig>,
    chardevs: Vec<rampart_config::ChardevConfig>,
    monitors: Vec<rampart_config::MonitorConfig>,
    tls_creds: Vec<rampart_config::TlsCredsConfig>,
    authz: Vec<rampart_config::AuthzConfig>,
    audit: Option<rampart_config::AuditConfig>,
    netdevs: Vec<rampart_config::NetdevConfig>,
    throttle_groups: Vec<rampart_config::ThrottleGroupConfig>,
    /// `-nic` occurrences so far (their back ends are `__org.qemu.nicN`).
    nics: usize,
    /// `-qmp`/`-monitor` occurrences so far (they name their chardevs `compat_monitorN`).
    legacy_monitors: usize,
    /// `-run-with`, `-runas` and `-chroot`, merged in order (a later key wins).
    run_with: Option<Opts>,
    sandbox: Option<Opts>,
    add_fds: Vec<rampart_config::AddFdConfig>,
    monitor_paths: Vec<rampart_config::PathAllowConfig>,
}

fn merge(slot: &mut Option<Opts>, new: Opts) {
    match slot {
        Some(old) => old.merge(new),
        None => *slot = Some(new),
    }
}

fn utf8<'a>(option: &'static str, arg: &'a OsStr) -> Result<&'a str, CliError> {
    arg.to_str().ok_or(CliError::Invalid {
        option,
        message: "argument is not valid UTF-8".into(),
    })
}

fn path(option: &'static str, arg: &OsStr) -> Result<PathBuf, CliError> {
    if arg.is_empty() {
        return Err(CliError::Invalid {
            option,
            message: "empty path".into(),
        });
    }
    Ok(PathBuf::from(arg))
}

/// The implied (first) value of an option argument, if it asks for help.
fn asks_help(opts: &Opts, implied: &'static str) -> bool {
    opts.os(implied)
        .and_then(OsStr::to_str)
        .is_some_and(options::is_help)
}

impl Builder {
    /// Acts on one option; returns `Some` when the command line is complete (help, version).
    fn apply(&mut self, item: Item) -> Result<Option<Cli>, CliError> {
        let arg = item.arg.unwrap_or_default();
        let arg = arg.as_os_str();
        match item.opt {
            Opt::Help => return Ok(Some(Cli::Help)),
            Opt::Version => return Ok(Some(Cli::Version)),
            Opt::Machine => {
                let opts = qemu_opts::parse(&options::MACHINE, arg)?;
                if asks_help(&opts, "type") {
                    return Ok(Some(Cli::Info(help::machine_list())));
                }
                merge(&mut self.machine, opts);
            }
            Opt::Accel => {
                let opts = qemu_opts::parse(&options::ACCEL, arg)?;
                if asks_help(&opts, "accel") {
                    return Ok(Some(Cli::Info(help::accel_list())));
                }
                let (accel, jit) = options::accel(&opts)?;
                self.add_accel(accel);
                if jit.is_some() {
                    self.tcg_jit = jit;
                }
            }
            Opt::EnableKvm => self.add_accel(Accel::Kvm),
            Opt::Cpu => match options::cpu(utf8(item.name, arg)?)? {
                Some(model) => self.cpu = Some(model),
                None => return Ok(Some(Cli::Info(help::cpu_list()))),
            },
            Opt::Memory => merge(&mut self.memory, qemu_opts::parse(&options::MEMORY, arg)?),
            Opt::Smp => merge(&mut self.smp, qemu_opts::parse(&options::SMP, arg)?),
            Opt::Name => merge(&mut self.name, qemu_opts::parse(&options::NAME, arg)?),
            Opt::Uuid => self.uuid = Some(options::uuid(utf8(item.name, arg)?)?),
            Opt::Kernel => self.kernel = Some(path(item.name, arg)?),
            Opt::Initrd => self.initrd = Some(path(item.name, arg)?),
            Opt::Append => self.append = Some(utf8(item.name, arg)?.to_owned()),
            Opt::Nographic => {}
            Opt::Display => options::display(&qemu_opts::parse(&options::DISPLAY, arg)?)?,
            Opt::Serial => {
                let backend = serial::parse(arg)?;
                if self.serial.is_some() {
                    return Err(CliError::Conflict(format!(
                        "-serial {}: only one serial port (COM1) exists, -serial was already given",
                        argv::shown(arg)
                    )));
                }
                self.serial = Some(backend);
            }
            Opt::NoReboot => self.lifecycle.no_reboot = true,
            Opt::NoShutdown => self.lifecycle.no_shutdown = true,
            Opt::StartPaused => self.lifecycle.start_paused = true,
            Opt::Nodefaults => self.nodefaults = true,
            Opt::Drive => match block::drive(arg, &self.drives)? {
                block::BlockRequest::Help => return Ok(Some(Cli::Info(block::driver_list()))),
                block::BlockRequest::Node(d) => self.drives.push(*d),
            },
            Opt::Blockdev => match block::blockdev(arg)? {
                block::BlockRequest::Help => return Ok(Some(Cli::Info(block::driver_list()))),
                block::BlockRequest::Node(d) => self.drives.push(*d),
            },
            Opt::Chardev => self.chardevs.push(monitor::chardev(arg)?),
            Opt::Mon => self.monitors.push(monitor::mon(arg)?),
            Opt::Qmp | Opt::Monitor => {
                let mode = if item.opt == Opt::Qmp {
                    rampart_config::MonitorMode::Control
                } else {
                    rampart_config::MonitorMode::Readline
                };
                if let Some((c, m)) = monitor::legacy_monitor(mode, self.legacy_monitors, arg)? {
                    self.legacy_monitors += 1;
                    self.chardevs.push(c);
                    self.monitors.push(m);
                }
            }
            Opt::RunWith => merge(
                &mut self.run_with,
                qemu_opts::parse(&run_with::RUN_WITH, arg)?,
            ),
            Opt::Runas => merge(&mut self.run_with, run_with::runas(arg)),
            Opt::Chroot => merge(&mut self.run_with, run_with::chroot(arg)),
            Opt::Netdev | Opt::Nic => match net::parse(item.opt == Opt::Nic, arg, self.nics)? {
                net::NetRequest::Help => return Ok(Some(Cli::Info(net::help()))),
                net::NetRequest::Netdev(n) => self.netdevs.push(n),
                net::NetRequest::Nic(n, mac) => {
                    self.nics += 1;
                    self.devices.push(rampart_config::DeviceConfig::VirtioNet {
                        id: None,
                        netdev: n.id.clone(),
                        mac,
                    });
                    self.netdevs.push(n);
                }
            },
            Opt::Sandbox => merge(&mut self.sandbox, qemu_opts::parse(&sandbox::SANDBOX, arg)?),
            Opt::AddFd => self.add_fds.push(host::add_fd(arg)?),
            Opt::MonitorPathAllow => self.monitor_paths.push(host::path_allow(arg)?),
            Opt::Object | Opt::Device => match objects::request(item.opt, arg)? {
                objects::Request::Help(text) => return Ok(Some(Cli::Info(text))),
                objects::Request::Device(dev) => self.devices.push(dev),
                objects::Request::Security(obj) => self.add_object(obj)?,
                objects::Request::ThrottleGroup(g) => self.throttle_groups.push(g),
            },
            Opt::Audit => {
                if self.audit.is_some() {
                    return Err(CliError::Conflict("-audit was given twice".into()));
                }
                self.audit = Some(security::audit(arg)?);
            }
        }
        Ok(None)
    }

    fn add_object(&mut self, obj: security::SecurityObject) -> Result<(), CliError> {
        let id = match &obj {
            security::SecurityObject::TlsCreds(t) => &t.id,
            security::SecurityObject::Authz(a) => &a.id,
        };
        if self.tls_creds.iter().any(|t| t.id == *id) || self.authz.iter().any(|a| a.id == *id) {
            return Err(CliError::Conflict(format!(
                "-object: duplicate object id '{id}'"
            )));
        }
        match obj {
            security::SecurityObject::TlsCreds(t) => self.tls_creds.push(t),
            security::SecurityObject::Authz(a) => self.authz.push(a),
        }
        Ok(())
    }

    fn add_accel(&mut self, accel: Accel) {
        self.accel_given = true;
        if !self.accels.contains(&accel) {
            self.accels.push(accel);
        }
    }

    fn finish(self) -> Result<VmConfig, CliError> {
        let mut config = VmConfig::default();
        if let Some(m) = &self.machine {
            let (machine, machine_accel) = options::machine(m)?;
            config.machine = machine;
            if let Some(list) = machine_accel {
                if self.accel_given {
                    return Err(CliError::Conflict(
                        "-accel (or -enable-kvm) and -machine accel= cannot be used together"
                            .into(),
                    ));
                }
                config.accel = list;
            }
        }
        if self.accel_given {
            config.accel = self.accels;
        }
        if let Some(jit) = self.tcg_jit {
            config.tcg_jit = jit;
        }
        if let Some(cpu) = self.cpu {
            config.cpu = cpu;
        }
        if let Some(m) = &self.memory {
            if let Some(bytes) = options::memory(m)? {
                config.memory_bytes = bytes;
            }
        }
        if let Some(s) = &self.sandbox {
            config.sandbox = sandbox::sandbox(s)?;
        }
        if let Some(s) = &self.smp {
            config.smp = options::smp(s)?;
        }
        if let Some(n) = &self.name {
            config.name = options::name(n)?;
        }
        config.uuid = self.uuid;
        config.boot = BootConfig {
            kernel: self.kernel,
            initrd: self.initrd,
            cmdline: self.append.unwrap_or_default(),
        };
        config.serial = match self.serial {
            Some(s) => s,
            None if self.nodefaults => SerialBackend::None,
            None => SerialBackend::Stdio,
        };
        config.lifecycle = self.lifecycle;
        config.nodefaults = self.nodefaults;
        config.drives = self.drives;
        config.devices = self.devices;
        config.netdevs = self.netdevs;
        config.throttle_groups = self.throttle_groups;
        monitor::check(
            &self.chardevs,
            &self.monitors,
            config.serial == SerialBackend::Stdio,
        )?;
        rampart_config::check_monitor_security(
            &self.chardevs,
            &self.monitors,
            &self.tls_creds,
            &self.authz,
        )?;
        config.chardevs = self.chardevs;
        config.monitors = self.monitors;
        config.run_with = run_with::parse(self.run_with.as_ref())?;
        config.tls_creds = self.tls_creds;
        config.authz = self.authz;
        config.audit = self.audit;
        config.add_fds = self.add_fds;
        config.monitor_paths = self.monitor_paths;
        Ok(config)
    }
}
