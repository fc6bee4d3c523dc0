//! `rampart`: a secure virtual machine monitor with QEMU's command line.

mod cli;
mod confine;
mod host;
mod monitors;
mod nodes;
mod terminal;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use rampart_config::{HostLimits, SerialBackend, VmConfig};
use rampart_vmm::signals::TerminationSignals;
use rampart_vmm::vm::{self, ConsoleIo, HostResources, Outcome, SharedSink};
use tracing::{info, warn};

/// Writes straight to a descriptor, unbuffered: the guest's console output must appear at once.
struct FdWriter(File);

impl Write for FdWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn dup_file(fd: std::os::fd::BorrowedFd<'_>) -> Result<File> {
    let owned: OwnedFd = fd
        .try_clone_to_owned()
        .context("duplicating a standard stream")?;
    Ok(File::from(owned))
}

fn host_memory_bytes() -> u64 {
    // SAFETY: sysinfo is plain data that the call fills in.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid sysinfo struct.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return u64::MAX;
    }
    info.totalram.saturating_mul(u64::from(info.mem_unit))
}

fn open_console(config: &VmConfig) -> Result<ConsoleIo> {
    Ok(match &config.serial {
        SerialBackend::None => ConsoleIo::None,
        SerialBackend::Null => ConsoleIo::Output(SharedSink::new(Box::new(std::io::sink()))),
        SerialBackend::File(path) => {
            let f = OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .with_context(|| format!("-serial file:{}", path.display()))?;
            ConsoleIo::Output(SharedSink::new(Box::new(FdWriter(f))))
        }
        SerialBackend::Stdio => ConsoleIo::Stdio {
            input: dup_file(std::io::stdin().as_fd())?,
            output: SharedSink::new(Box::new(FdWriter(dup_file(std::io::stdout().as_fd())?))),
        },
        SerialBackend::UnixServer { path, wait } => {
            let server = rampart_vmm::chardev::UnixServer::bind(path)
                .with_context(|| format!("-serial unix:{}", path.display()))?;
            if *wait {
                server.wait_for_client()?;
            }
            let output = SharedSink::new(Box::new(server.writer()));
            ConsoleIo::Socket { server, output }
        }
    })
}

/// Opens (and locks) every `-drive`/`-blockdev` image, by node name; also returns, for each,
/// the images its chain opened (for the monitor).
#[allow(clippy::type_complexity)]
fn open_drives(
    config: &VmConfig,
    opener: &dyn rampart_block::Opener,
) -> Result<(
    Vec<rampart_vmm::vm::OpenDisk>,
    Vec<Vec<rampart_block::ChainImage>>,
)> {
    let mut out = Vec::new();
    let mut chains = Vec::new();
    for d in &config.drives {
        let (disk, chain) = rampart_block::open_with_chain_via(&d.node, opener)
            .with_context(|| format!("block node '{}'", d.node.node_name))?;
        info!(
            "block node '{}': '{}', {} bytes{}",
            d.node.node_name,
            d.node.filename.display(),
            disk.size(),
            if disk.read_only() { ", read-only" } else { "" }
        );
        let stats = std::sync::Arc::new(rampart_block::stats::BlockStats::new());
        out.push((d.node.node_name.clone(), disk, stats));
        chains.push(chain);
    }
    Ok((out, chains))
}

/// Opens the tap of every virtio-net-pci (or takes its passed descriptor), in device order,
/// with the NIC's MAC (QEMU's default sequence when `mac=` is absent) and limits.
fn open_nics(config: &VmConfig) -> Result<Vec<rampart_vmm::vm::OpenNic>> {
    use rampart_config::{default_mac, DeviceConfig, TapSource};
    use rampart_devices::net::tap::Tap;
    let mut out = Vec::new();
    for (index, (netdev, mac)) in config
        .devices
        .iter()
        .filter_map(|d| match d {
            DeviceConfig::VirtioNet { netdev, mac, .. } => Some((netdev, mac)),
            _ => None,
        })
        .enumerate()
    {
        let nd = config
            .netdevs
            .iter()
            .find(|n| n.id == *netdev)
            .with_context(|| format!("-netdev '{netdev}' vanished"))?;
        let tap = match &nd.tap {
            TapSource::Ifname(name) => Tap::open(name.as_deref()),
            TapSource::Fd(fd) => Tap::from_fd(*fd),
        }
        .with_context(|| format!("-netdev tap,id={}", nd.id))?;
        let mac = mac.unwrap_or_else(|| default_mac(index));
        info!(
            "netdev '{}': tap '{}', mac {}",
            nd.id,
            tap.name(),
            rampart_config::control::mac_text(&mac)
        );
        let handle =
            rampart_devices::virtio::net::NetHandle::new(mac, nd.limits).context("NIC handle")?;
        out.push(rampart_vmm::vm::OpenNic {
            netdev: nd.id.clone(),
            tap,
            handle,
        });
    }
    for nd in &config.netdevs {
        if !out.iter().any(|n| n.netdev == nd.id) {
            tracing::warn!("netdev '{}' has no NIC: it is not opened", nd.id);
        }
    }
    Ok(out)
}

/// One throttle per drive (without limits until `block_set_io_throttle` sets some), shared by the drives of a group (whose limits come from
/// its `-object throttle-group`, else from its first drive with limits).
fn drive_throttles(config: &VmConfig) -> Vec<rampart_vmm::vm::DriveThrottle> {
    use rampart_block::throttle::ThrottleHandle;
    let mut groups: Vec<(String, std::sync::Arc<ThrottleHandle>)> = config
        .throttle_groups
        .iter()
        .map(|g| {
            (
                g.id.clone(),
                ThrottleHandle::new(g.limits, Some(g.id.clone())),
            )
        })
        .collect();
    let mut out = Vec::new();
    for d in &config.drives {
        let t = &d.throttle;
        let handle = match &t.group {
            Some(g) => match groups.iter().find(|(id, _)| id == g) {
                Some((_, h)) => {
                    if t.limits.any() && !h.limits().any() {
                        h.set_limits(t.limits);
                    }
                    h.clone()
                }
                None => {
                    let h = ThrottleHandle::new(t.limits, Some(g.clone()));
                    groups.push((g.clone(), h.clone()));
                    h
                }
            },
            None => ThrottleHandle::new(t.limits, None),
        };
        out.push((d.node.node_name.clone(), handle));
    }
    out
}

fn run(config: VmConfig) -> Result<ExitCode> {
    if config.sandbox.enabled {
        // Before anything large is allocated and freed (see warm_up_libc).
        rampart_sandbox::seccomp::warm_up_libc().context("-sandbox: glibc warm-up thread")?;
    }
    config
        .validate(&HostLimits {
            host_memory_bytes: host_memory_bytes(),
        })
        .context("invalid configuration")?;
    // Passed descriptors first: nothing rampart opens may take their numbers before they are
    // checked and moved into their sets.
    let fdsets = host::take_fdsets(&config)?;
    let opener = host::StartupOpener(fdsets.clone());
    // The user is looked up and the directories checked before anything is opened.
    let plan = confine::plan(&config)?;
    if !config.sandbox.enabled {
        warn!("-sandbox off: no seccomp filters; a guest that escapes into rampart can make any system call rampart's user can");
    }
    // Host resources are opened once, before the VM is built; a reset reuses them.
    let kernel_path = config.boot.kernel.as_deref().context("no -kernel")?;
    let kernel = host::open_regular(&opener, "-kernel", kernel_path)?;
    let initrd = match &config.boot.initrd {
        Some(p) => Some(host::open_regular(&opener, "-initrd", p)?),
        None => None,
    };
    let console = open_console(&config)?;
    let (disks, chains) = open_drives(&config, &opener)?;
    let nics = open_nics(&config)?;
    let throttles = drive_throttles(&config);
    let monitor_opener = host::MonitorOpener {
        sets: fdsets,
        policy: host::monitor_policy(&config)?,
    };
    let accel = vm::choose_accel(&config.accel)?;
    let kvm = match accel {
        rampart_config::Accel::Kvm => Some(rampart_vmm::accel::kvm::KvmAccel::open()?),
        rampart_config::Accel::Tcg => None,
    };
    // The translator's code memory: executable mappings are only possible before the filters.
    let code = match accel {
        rampart_config::Accel::Tcg if config.tcg_jit => {
            match rampart_vmm::accel::tcg::CodePool::new(config.smp.cpus as usize) {
                Ok(pool) => Some(pool),
                Err(e) => {
                    warn!(error = %e, "no code memory for tcg's block translator: interpreting");
                    None
                }
            }
        }
        _ => None,
    };
    let open_monitors = monitors::open(&config)?;
    let signals = TerminationSignals::new()?;
    // Everything is open and no thread runs yet: confine the process (cgroup, supervised
    // child, jail, rlimits, root change, privilege drop).
    confine::enter(plan)?;
    // Before the first other thread starts (each installs its role's filter from these), and
    // after anything that changes our pid (the supervised child: the filters let signals
    // reach this process only).
    let needs = rampart_sandbox::seccomp::Needs {
        monitor_opens_paths: !config.monitor_paths.is_empty(),
    };
    rampart_sandbox::seccomp::prepare_with(&config.sandbox, &needs).context("-sandbox")?;
    let (client, mut control) =
        rampart_vmm::control::channel(config.lifecycle.start_paused).context("control channel")?;
    let monitors = match open_monitors {
        Some(open) => {
            let (m, events) = monitors::start(
                open,
                &config,
                accel,
                client,
                monitors::Opened {
                    disks: &disks,
                    chains: &chains,
                    nics: &nics,
                    throttles: &throttles,
                },
                monitor_opener,
            )?;
            monitors::connect_nic_events(&config, &nics, &events);
            control.set_publisher(monitors::publisher(events));
            Some(m)
        }
        None => None,
    };
    let res = HostResources {
        kvm,
        kernel,
        initrd,
        console,
        signals,
        disks,
        nics,
        throttles,
        control,
        code,
    };
    let code = run_vm(&config, accel, res);
    if let Some(m) = monitors {
        m.shutdown();
    }
    code
}

fn run_vm(
    config: &VmConfig,
    accel: rampart_config::Accel,
    mut res: HostResources,
) -> Result<ExitCode> {
    let _raw = match &res.console {
        ConsoleIo::Stdio { .. } => Some(terminal::RawTerminal::enter(libc::STDIN_FILENO)?),
        _ => None,
    };
    // Start-up is over: every host resource is open. From here the VMM thread (and the vCPU
    // and I/O threads it starts, at once and after each reset) runs under its filter.
    // (The vCPU kick handler is process-wide: installed once, before the filter.)
    rampart_vmm::vcpu::install_kick_handler()?;
    rampart_sandbox::seccomp::enter(rampart_sandbox::seccomp::Role::Vmm);
    loop {
        match vm::run(config, accel, &mut res)? {
            Outcome::PowerOff => {
                info!("guest powered off");
                return Ok(ExitCode::SUCCESS);
            }
            Outcome::Reset if config.lifecycle.no_reboot => {
                info!("guest reset with -no-reboot: exiting");
                return Ok(ExitCode::SUCCESS);
            }
            Outcome::Reset => {
                info!("guest reset: rebooting");
            }
            Outcome::Signal(sig) => {
                info!("terminating on signal {sig}");
                return Ok(ExitCode::SUCCESS);
            }
            Outcome::ConsoleQuit => {
                info!("quit from the console (Ctrl-A x)");
                return Ok(ExitCode::SUCCESS);
            }
            Outcome::Quit => {
                info!("quit from the monitor");
                return Ok(ExitCode::SUCCESS);
            }
            Outcome::Failure(message) => {
                bail!("the VM stopped on a fatal error: {message}");
            }
        }
    }
}

/// The error and its causes on one line, skipping causes whose text a message already includes
/// (some errors print their source themselves).
fn error_message(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if msg.contains(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
    }
    msg
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RAMPART_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // SAFETY: isatty only inspects the descriptor.
        .with_ansi(unsafe { libc::isatty(libc::STDERR_FILENO) } == 1)
        .with_target(false)
        .without_time()
        .init();
}

fn main() -> ExitCode {
    // Logging first: the parser warns about deprecated forms.
    init_logging();
    let parsed = cli::parse(std::env::args_os().skip(1));
    let config = match parsed {
        Ok(cli::Cli::Run(config)) => *config,
        Ok(cli::Cli::Help) => {
            print!("{}", cli::help_text());
            return ExitCode::SUCCESS;
        }
        Ok(cli::Cli::Info(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Ok(cli::Cli::Version) => {
            print!("{}", cli::version_text());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("rampart: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(config) {
        Ok(code) => code,
        Err(e) => {
            terminal::restore();
            eprintln!("rampart: {}", error_message(&e));
            ExitCode::FAILURE
        }
    }
}
