//! Opening the monitors' transports and starting the monitor thread.

use std::os::unix::net::UnixListener;
use std::sync::Arc;

use anyhow::{Context, Result};
use rampart_block::ChainImage;
use rampart_config::control::LifecycleEvent;
use rampart_config::{
    Accel, ChardevBackend, DeviceConfig, DriveInterface, MonitorMode, SerialBackend, VmConfig,
    MAX_VCPUS,
};
use rampart_monitor::audit::AuditLog;
use rampart_monitor::authz::{Authz, MonitorAuthz};
use rampart_monitor::block::{BlockDeviceInfo, StatsReader};
use rampart_monitor::block_throttle::ThrottleControl;
use rampart_monitor::net::{NicControl, NicInfo};
use rampart_monitor::{
    ChardevInfo, Dispatcher, EventSink, MachineInfo, MonitorServer, MonitorSpec, Transport, VmInfo,
};
use rampart_vmm::chardev::UnixServer;
use rampart_vmm::control::ControlClient;
use rampart_vmm::vm::{DriveThrottle, OpenDisk, OpenNic};

/// The running monitors; dropping this flushes them and removes their socket files.
pub struct Monitors {
    server: Option<MonitorServer>,
    /// The bound sockets (removed from the filesystem when dropped).
    _sockets: Vec<UnixServer>,
    /// Raw mode of the terminal an HMP on stdio edits lines on (restored when dropped).
    _terminal: Option<crate::terminal::RawTerminal>,
}

impl Monitors {
    pub fn shutdown(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
}

fn version() -> (u32, u32, u32) {
    let mut parts = env!("CARGO_PKG_VERSION")
        .split('.')
        .map(|p| p.parse().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

fn serial_filename(s: &SerialBackend) -> Option<String> {
    Some(match s {
        SerialBackend::None => return None,
        SerialBackend::Stdio => "stdio".into(),
        SerialBackend::Null => "null".into(),
        SerialBackend::File(p) => format!("file:{}", p.display()),
        SerialBackend::UnixServer { path, .. } => format!("unix:{},server=on", path.display()),
    })
}

/// The QOM path of each virtio device's back end, numbered as QEMU does (`-device id=X`:
/// /machine/peripheral/X; anonymous devices, `-drive if=virtio` first:
/// /machine/peripheral-anon/device[N]), in the order the devices are created: one path per
/// `-drive if=virtio`, then one per `-device`.
fn qom_paths(config: &VmConfig) -> (Vec<String>, Vec<String>) {
    let mut anon = 0;
    let mut path = |id: Option<&str>| match id {
        Some(id) => format!("/machine/peripheral/{id}/virtio-backend"),
        None => {
            anon += 1;
            format!(
                "/machine/peripheral-anon/device[{}]/virtio-backend",
                anon - 1
            )
        }
    };
    let drives = config
        .drives
        .iter()
        .filter(|d| d.interface == DriveInterface::Virtio)
        .map(|_| path(None))
        .collect();
    let devices = config.devices.iter().map(|dev| path(dev.id())).collect();
    (drives, devices)
}

/// The QOM path of each virtio-blk device's back end, by drive name.
fn block_qdevs(config: &VmConfig) -> Vec<(String, String)> {
    let (drive_paths, device_paths) = qom_paths(config);
    let drives = config
        .drives
        .iter()
        .filter(|d| d.interface == DriveInterface::Virtio)
        .zip(drive_paths)
        .map(|(d, path)| (d.node.node_name.clone(), path));
    let devices = config
        .devices
        .iter()
        .zip(device_paths)
        .filter_map(|(dev, path)| match dev {
            DeviceConfig::VirtioBlk { drive, .. } => Some((drive.clone(), path)),
            _ => None,
        });
    drives.chain(devices).collect()
}

/// Each NIC's net client name (`id=`, or QEMU's `virtio-net-pci.N`), back end and QOM path.
fn nic_names(config: &VmConfig) -> Vec<(String, String, String)> {
    let (_, device_paths) = qom_paths(config);
    let mut auto = 0;
    let mut out = Vec::new();
    for (dev, path) in config.devices.iter().zip(device_paths) {
        if let DeviceConfig::VirtioNet { id, netdev, .. } = dev {
            let name = match id {
                Some(id) => id.clone(),
                None => {
                    auto += 1;
                    format!("virtio-net-pci.{}", auto - 1)
                }
            };
            out.push((name, netdev.clone(), path));
        }
    }
    out
}

/// A NIC's shared handle, as the monitor's [`NicControl`].
struct NicHandle(Arc<rampart_devices::virtio::net::NetHandle>);

impl NicControl for NicHandle {
    fn set_link(&self, up: bool) {
        self.0.set_link(up);
    }
    fn rx_filter(&self) -> rampart_config::control::RxFilter {
        self.0.rx_filter()
    }
    fn limits(&self) -> rampart_config::NetLimits {
        self.0.limits()
    }
    fn set_limits(&self, limits: rampart_config::NetLimits) {
        self.0.set_limits(limits);
    }
}

/// The NICs for the monitor; each NIC's receive-filter changes become NIC_RX_FILTER_CHANGED
/// events once `sink` exists (see [`connect_nic_events`]).
fn nic_infos(config: &VmConfig, nics: &[OpenNic]) -> Vec<NicInfo> {
    nic_names(config)
        .into_iter()
        .filter_map(|(name, netdev, path)| {
            let nic = nics.iter().find(|n| n.netdev == netdev)?;
            Some(NicInfo {
                name,
                netdev,
                path,
                control: Arc::new(NicHandle(nic.handle.clone())),
            })
        })
        .collect()
}

/// Sends each NIC's receive-filter changes to the monitor's clients.
pub fn connect_nic_events(config: &VmConfig, nics: &[OpenNic], sink: &EventSink) {
    for (name, netdev, path) in nic_names(config) {
        let Some(nic) = nics.iter().find(|n| n.netdev == netdev) else {
            continue;
        };
        let sink = sink.clone();
        nic.handle.set_listener(Box::new(move || {
            sink.send(LifecycleEvent::NicRxFilterChanged {
                name: Some(name.clone()),
                path: path.clone(),
            })
        }));
    }
}

/// The block devices for the monitor, in QEMU's order: every `-drive` as given, then the
/// `-blockdev` nodes in the order devices attach them. `chains[i]` is what opening
/// `disks[i]` opened (the node's image, then its backing files).
fn block_devices(
    config: &VmConfig,
    disks: &[OpenDisk],
    chains: &[Vec<ChainImage>],
    throttles: &[DriveThrottle],
) -> Vec<BlockDeviceInfo> {
    let qdevs = block_qdevs(config);
    let info = |i: usize| {
        let d = &config.drives[i];
        let (_, disk, stats) = &disks[i];
        let chain = &chains[i];
        let stats = stats.clone();
        BlockDeviceInfo {
            device: if d.from_blockdev {
                String::new()
            } else {
                d.node.node_name.clone()
            },
            qdev: qdevs
                .iter()
                .find(|(n, _)| *n == d.node.node_name)
                .map(|(_, q)| q.clone()),
            throttle: throttles
                .iter()
                .find(|(n, _)| *n == d.node.node_name)
                .map(|(_, t)| {
                    let (get, set) = (t.clone(), t.clone());
                    ThrottleControl {
                        get: Arc::new(move || get.limits()),
                        set: Arc::new(move |l| set.set_limits(l)),
                        group: t.group().map(str::to_owned),
                    }
                }),
            ..crate::nodes::node_info(
                &d.node,
                &**disk,
                chain,
                StatsReader(Arc::new(move || stats.snapshot())),
            )
        }
    };
    let n = config.drives.len().min(disks.len()).min(chains.len());
    let mut out: Vec<BlockDeviceInfo> = (0..n)
        .filter(|&i| !config.drives[i].from_blockdev)
        .map(info)
        .collect();
    for (node, _) in &qdevs {
        if let Some(i) = (0..n)
            .find(|&i| config.drives[i].from_blockdev && config.drives[i].node.node_name == *node)
        {
            out.push(info(i));
        }
    }
    out
}

fn vm_info(
    config: &VmConfig,
    accel: Accel,
    kvm_present: bool,
    disks: &[OpenDisk],
    chains: &[Vec<ChainImage>],
    nics: &[OpenNic],
    throttles: &[DriveThrottle],
) -> VmInfo {
    let mut chardevs: Vec<ChardevInfo> = Vec::new();
    if let Some(f) = serial_filename(&config.serial) {
        chardevs.push(ChardevInfo {
            label: "serial0".into(),
            filename: f,
        });
    }
    chardevs.extend(config.chardevs.iter().map(|c| ChardevInfo {
        label: c.id.clone(),
        filename: c.filename(),
    }));
    VmInfo {
        version: version(),
        package: format!("rampart {}", env!("CARGO_PKG_VERSION")),
        name: config.name.clone(),
        uuid: config.uuid.unwrap_or([0; 16]),
        kvm_enabled: accel == Accel::Kvm,
        kvm_present,
        max_cpus: MAX_VCPUS,
        cpus: config.smp.cpus,
        machines: vec![
            MachineInfo {
                name: "q35",
                alias: None,
                is_default: true,
            },
            MachineInfo {
                name: "pc",
                alias: None,
                is_default: false,
            },
            MachineInfo {
                name: "microvm",
                alias: None,
                is_default: false,
            },
        ],
        chardevs,
        blocks: block_devices(config, disks, chains, throttles),
        nics: nic_infos(config, nics),
    }
}

/// The monitors' transports, open (sockets bound, `wait=on` clients accepted) but not yet
/// served: opening happens before the privilege drop and the jail, serving (a thread) after.
pub struct OpenMonitors {
    sockets: Vec<UnixServer>,
    specs: Vec<MonitorSpec>,
    terminal: Option<crate::terminal::RawTerminal>,
    /// Whether /dev/kvm could be opened (asked now: after the drop it may not be).
    kvm_present: bool,
    /// Every monitor's authz object (list files read now: after the jail they may be
    /// reachable only through the descriptor kept open).
    authz: MonitorAuthz,
    /// The `-audit` file, opened now; its writer thread starts with the monitor thread.
    audit: Option<std::fs::File>,
}

/// Binds every monitor's socket (waiting for a client where `wait=on`).
pub fn open(config: &VmConfig) -> Result<Option<OpenMonitors>> {
    if config.monitors.is_empty() {
        return Ok(None);
    }
    let mut sockets = Vec::new();
    let mut specs = Vec::new();
    let mut terminal = None;
    for m in &config.monitors {
        let chardev = config
            .chardevs
            .iter()
            .find(|c| c.id == m.chardev)
            .context("monitor chardev vanished")?;
        let transport = match &chardev.backend {
            ChardevBackend::Stdio => Transport::Stdio,
            ChardevBackend::TcpServer { host, port, wait } => {
                tcp_transport(config, chardev, host, *port, *wait)?
            }
            ChardevBackend::UnixServer { path, wait } => {
                let server =
                    UnixServer::bind(path).with_context(|| format!("chardev '{}'", chardev.id))?;
                let listener: UnixListener = server
                    .listener()
                    .try_clone()
                    .with_context(|| format!("chardev '{}': {}", chardev.id, path.display()))?;
                let initial = if *wait {
                    tracing::info!(
                        chardev = %chardev.id,
                        path = %path.display(),
                        "waiting for a monitor client (wait=on)"
                    );
                    listener.set_nonblocking(false)?;
                    let (stream, _) = listener
                        .accept()
                        .with_context(|| format!("chardev '{}': accept", chardev.id))?;
                    listener.set_nonblocking(true)?;
                    Some(stream)
                } else {
                    None
                };
                sockets.push(server);
                Transport::Unix { listener, initial }
            }
        };
        // HMP on a terminal: raw mode (restored at exit) and the monitor's own line editor.
        let mut line_editing = false;
        if matches!(transport, Transport::Stdio) && m.mode == MonitorMode::Readline {
            let t = crate::terminal::RawTerminal::enter_keeping_signals(libc::STDIN_FILENO)
                .context("-monitor stdio: terminal raw mode")?;
            line_editing = t.is_active();
            terminal = Some(t);
        }
        specs.push(MonitorSpec {
            id: chardev.id.clone(),
            mode: m.mode,
            pretty: m.pretty,
            transport,
            line_editing,
        });
    }
    Ok(Some(OpenMonitors {
        sockets,
        specs,
        terminal,
        kvm_present: rampart_vmm::accel::kvm::is_available(),
        authz: authorizer(config)?,
        audit: config
            .audit
            .as_ref()
            .map(|a| open_audit(&a.file))
            .transpose()?,
    }))
}

/// The opened host resources the monitor reports on and acts through.
pub struct Opened<'a> {
    pub disks: &'a [OpenDisk],
    /// What opening each disk opened (its image, then its backing files).
    pub chains: &'a [Vec<ChainImage>],
    pub nics: &'a [OpenNic],
    pub throttles: &'a [DriveThrottle],
}

/// Starts the monitor thread on the opened transports; returns it and the publisher the VMM
/// sends lifecycle events to.
pub fn start(
    open: OpenMonitors,
    config: &VmConfig,
    accel: Accel,
    client: ControlClient,
    opened: Opened<'_>,
    opener: crate::host::MonitorOpener,
) -> Result<(Monitors, EventSink)> {
    let Opened {
        disks,
        chains,
        nics,
        throttles,
    } = opened;
    let OpenMonitors {
        sockets,
        specs,
        terminal,
        kvm_present,
        authz,
        audit,
    } = open;
    let backend = Box::new(move |req| client.call(req));
    let fdsets = opener.sets.clone();
    let opener = Arc::new(opener);
    let creator = opener.clone();
    let mut dispatcher = Dispatcher::new(
        vm_info(config, accel, kvm_present, disks, chains, nics, throttles),
        backend,
        Box::new(authz),
    )
    .with_fdsets(fdsets)
    .with_block_nodes(Box::new(crate::nodes::MonitorNodes::new(opener)))
    .with_file_creator(Box::new(move |path| creator.create(path)));
    if let Some(file) = audit {
        let log = AuditLog::start(
            file,
            Some(Box::new(|| {
                rampart_sandbox::seccomp::enter(rampart_sandbox::seccomp::Role::Audit)
            })),
        )
        .context("-audit: cannot start the writer thread")?;
        dispatcher = dispatcher.with_audit(log);
    }
    let (server, events) = MonitorServer::start(specs, dispatcher)?;
    Ok((
        Monitors {
            server: Some(server),
            _sockets: sockets,
            _terminal: terminal,
        },
        events,
    ))
}

/// Binds a TCP monitor socket and loads its TLS credentials.
fn tcp_transport(
    config: &VmConfig,
    chardev: &rampart_config::ChardevConfig,
    host: &str,
    port: u16,
    wait: bool,
) -> Result<Transport> {
    let tls = match &chardev.tls_creds {
        Some(id) => {
            let creds = config
                .tls_creds
                .iter()
                .find(|t| t.id == *id)
                .context("tls-creds object vanished")?;
            Some(rampart_monitor::tls::server_config(
                &creds.id,
                &creds.dir,
                creds.verify_peer,
            )?)
        }
        None => None,
    };
    if chardev.insecure {
        tracing::warn!(
            chardev = %chardev.id,
            "INSECURE: monitor on TCP {host}:{port} with insecure=on: whoever can reach it may \
             control the VM (see docs/security.md)"
        );
    }
    let listener = std::net::TcpListener::bind((host, port))
        .with_context(|| format!("chardev '{}': cannot listen on {host}:{port}", chardev.id))?;
    tracing::info!(chardev = %chardev.id, address = %listener.local_addr()?, tls = tls.is_some(), "monitor listening on TCP");
    let initial = if wait {
        tracing::info!(chardev = %chardev.id, "waiting for a monitor client (wait=on)");
        let (stream, _) = listener
            .accept()
            .with_context(|| format!("chardev '{}': accept", chardev.id))?;
        Some(stream)
    } else {
        None
    };
    Ok(Transport::Tcp {
        listener,
        initial,
        tls,
    })
}

/// Every monitor's authz object (`tls-authz=` on its chardev).
fn authorizer(config: &VmConfig) -> Result<MonitorAuthz> {
    let mut built: Vec<(String, Arc<Authz>)> = Vec::new();
    let mut table = MonitorAuthz::new();
    for c in &config.chardevs {
        let Some(id) = &c.tls_authz else { continue };
        let authz = match built.iter().find(|(b, _)| b == id) {
            Some((_, a)) => a.clone(),
            None => {
                let cfg = config
                    .authz
                    .iter()
                    .find(|a| a.id == *id)
                    .context("authz object vanished")?;
                let a = Arc::new(Authz::new(cfg).map_err(anyhow::Error::msg)?);
                built.push((id.clone(), a.clone()));
                a
            }
        };
        table.insert(c.id.clone(), authz);
    }
    Ok(table)
}

/// Opens the audit log (append, created 0600, no symlink followed).
fn open_audit(path: &std::path::Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("-audit: {}", path.display()))?;
    Ok(file)
}

/// The VMM's publisher for `sink`.
pub fn publisher(sink: EventSink) -> Box<dyn Fn(LifecycleEvent) + Send> {
    Box::new(move |ev| sink.send(ev))
}
