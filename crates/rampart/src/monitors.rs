//! Opening the monitors' transports and starting the monitor thread.

use std::os::unix::net::UnixListener;

use anyhow::{Context, Result};
use rampart_config::control::LifecycleEvent;
use rampart_config::{Accel, ChardevBackend, SerialBackend, VmConfig, MAX_VCPUS};
use rampart_monitor::{
    AllowAll, ChardevInfo, Dispatcher, EventSink, MachineInfo, MonitorServer, MonitorSpec,
    Transport, VmInfo,
};
use rampart_vmm::chardev::UnixServer;
use rampart_vmm::control::ControlClient;

/// The running monitors; dropping this flushes them and removes their socket files.
pub struct Monitors {
    server: Option<MonitorServer>,
    /// The bound sockets (removed from the filesystem when dropped).
    _sockets: Vec<UnixServer>,
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

/// The static facts the monitor reports.
fn vm_info(config: &VmConfig, accel: Accel) -> VmInfo {
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
        kvm_present: rampart_vmm::accel::kvm::is_available(),
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
    }
}

/// Binds every monitor's socket (waiting for a client where `wait=on`) and starts the monitor
/// thread; returns it and the publisher the VMM sends lifecycle events to.
pub fn start(
    config: &VmConfig,
    accel: Accel,
    client: ControlClient,
) -> Result<Option<(Monitors, EventSink)>> {
    if config.monitors.is_empty() {
        return Ok(None);
    }
    let mut sockets = Vec::new();
    let mut specs = Vec::new();
    for m in &config.monitors {
        let chardev = config
            .chardevs
            .iter()
            .find(|c| c.id == m.chardev)
            .context("monitor chardev vanished")?;
        let transport = match &chardev.backend {
            ChardevBackend::Stdio => Transport::Stdio,
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
        specs.push(MonitorSpec {
            id: chardev.id.clone(),
            mode: m.mode,
            pretty: m.pretty,
            transport,
        });
    }
    let backend = Box::new(move |req| client.call(req));
    let dispatcher = Dispatcher::new(vm_info(config, accel), backend, Box::new(AllowAll));
    let (server, events) = MonitorServer::start(specs, dispatcher)?;
    Ok(Some((
        Monitors {
            server: Some(server),
            _sockets: sockets,
        },
        events,
    )))
}

/// The VMM's publisher for `sink`.
pub fn publisher(sink: EventSink) -> Box<dyn Fn(LifecycleEvent) + Send> {
    Box::new(move |ev| sink.send(ev))
}
