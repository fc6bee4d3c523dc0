//! Building and running one VM: guest memory, devices, vCPU threads and the VMM event loop.
//!
//! [`run`] builds the VM from a validated configuration and the host resources opened before
//! (kernel, initrd, console), runs it until the guest powers off, resets, fails, or a
//! termination signal or the console's quit key arrives, then tears it down and reports why.
//! A reset is a fresh VM built from the same configuration by the caller.

use std::fs::File;
use std::io::Write;
use std::sync::{mpsc, Arc, Mutex};

use rampart_config::{Accel, VmConfig};
use rampart_devices::irq::InterruptLine;
use rampart_devices::legacy::{
    AcpiPmPort, Cmos, I8042CommandPort, I8042DataPort, PostCodePort, SerialDevice,
    SystemControlPortB, ACPI_PM_PORT, ACPI_PM_PORT_LEN, CMOS_PORT, CMOS_PORT_LEN, COM1_IRQ,
    COM1_PORT, I8042_COMMAND_PORT, I8042_DATA_PORT, I8042_PORT_LEN, PORT_B, PORT_B_LEN,
    POST_CODE_PORT, POST_CODE_PORT_LEN, SERIAL_PORT_LEN,
};
use rampart_devices::BusDevice;
use thiserror::Error;
use tracing::{info, warn};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::accel::kvm::{KvmAccel, KvmVm};
use crate::accel::AccelError;
use crate::boot;
use crate::io::Buses;
use crate::signals::TerminationSignals;
use crate::vcpu::{EventSender, VcpuError, VcpuHandle};

#[derive(Debug, Error)]
pub enum VmError {
    #[error("guest memory of {size} bytes: {reason}")]
    Memory { size: u64, reason: String },
    #[error(transparent)]
    Accel(#[from] AccelError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("device set-up: {0}")]
    Device(String),
    #[error("event loop: {0}")]
    EventLoop(std::io::Error),
    #[error("the {0} accelerator is not available: {1}")]
    AccelUnavailable(&'static str, String),
}

/// A device as the buses hold it.
type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// How a VM run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest powered off.
    PowerOff,
    /// The guest asked for a reset (reboot).
    Reset,
    /// A termination signal arrived.
    Signal(i32),
    /// The user pressed Ctrl-A x on the console.
    ConsoleQuit,
    /// The guest did something the VMM cannot continue from.
    Failure(String),
    /// A monitor asked to quit.
    Quit,
}

/// Where the serial console's bytes come from and go to, opened before the VM is built.
pub enum ConsoleIo {
    /// No serial port.
    None,
    /// Output only (null sink or a file).
    Output(SharedSink),
    /// Terminal/stdio: input read from `input`, output to `output`; Ctrl-A escapes apply.
    Stdio { input: File, output: SharedSink },
    /// A listening UNIX socket: input from and output to its client.
    Socket {
        server: crate::chardev::UnixServer,
        output: SharedSink,
    },
}

/// An opened block back end: its node name (or drive id), the back end, and the I/O
/// accounting of the device that serves it (kept across resets, as QEMU's).
pub type OpenDisk = (
    String,
    Arc<dyn rampart_block::BlockBackend>,
    Arc<rampart_block::stats::BlockStats>,
);

/// A drive's throttle (its own or its group's), by node name / drive id, kept across resets.
pub type DriveThrottle = (String, Arc<rampart_block::throttle::ThrottleHandle>);

/// An opened NIC back end: the tap and the NIC's shared handle (link, filter, limits), kept
/// across resets.
pub struct OpenNic {
    /// The `-netdev` id it serves.
    pub netdev: String,
    pub tap: rampart_devices::net::tap::Tap,
    pub handle: Arc<rampart_devices::virtio::net::NetHandle>,
}

/// Host resources opened before the VM is built (and before any sandbox closes the doors).
pub struct HostResources {
    /// `/dev/kvm`, opened once at start under `kvm` (a reset creates the new VM from it: after
    /// a privilege drop or inside a jail it could not be opened again, and the VMM thread's
    /// seccomp filter allows no open).
    pub kvm: Option<KvmAccel>,
    pub kernel: File,
    pub initrd: Option<File>,
    pub console: ConsoleIo,
    pub signals: TerminationSignals,
    /// Opened (and locked) block back ends by node name / drive id, kept across resets.
    pub disks: Vec<OpenDisk>,
    /// Opened taps, one per virtio-net-pci, kept across resets.
    pub nics: Vec<OpenNic>,
    /// Throttles of the drives that have limits.
    pub throttles: Vec<DriveThrottle>,
    /// Requests from the monitor, and the run state they act on (kept across resets).
    pub control: crate::control::ControlPort,
    /// Code memory for `tcg`'s block translators, mapped at start (the filters forbid
    /// executable mappings later) and kept across resets; `None` interprets.
    pub code: Option<crate::accel::tcg::CodePool>,
}

/// A console writer shared between the serial device and the VMM (which prints escape help
/// on it), kept across resets. Every write is flushed: the guest's partial lines (prompts)
/// must appear at once.
#[derive(Clone)]
pub struct SharedSink(Arc<Mutex<Box<dyn Write + Send>>>);

impl SharedSink {
    pub fn new(w: Box<dyn Write + Send>) -> Self {
        SharedSink(Arc::new(Mutex::new(w)))
    }
}

impl Write for SharedSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = w.write(buf)?;
        w.flush()?;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

/// Chooses the accelerator: the first of `wanted` that works here, or (when none is named)
/// hardware KVM if present, else tcg. Logs the choice and the reason.
pub fn choose_accel(wanted: &[Accel]) -> Result<Accel, VmError> {
    let pvm = crate::accel::kvm::host_is_pvm();
    let kvm_ok = crate::accel::kvm::is_available();
    if wanted.is_empty() {
        if kvm_ok && !pvm {
            info!("accelerator: kvm (hardware virtualization is available)");
            return Ok(Accel::Kvm);
        }
        if pvm {
            info!("accelerator: tcg (/dev/kvm is kvm-pvm, which cannot run stock kernels)");
        } else {
            info!("accelerator: tcg (/dev/kvm is not available)");
        }
        return Ok(Accel::Tcg);
    }
    for accel in wanted {
        match accel {
            Accel::Kvm if kvm_ok => {
                if pvm {
                    warn!(
                        "/dev/kvm on this host is kvm-pvm: it runs only guest kernels built for \
                         PVM; a stock kernel cannot boot with -accel kvm here (use -accel tcg)"
                    );
                }
                info!("accelerator: kvm");
                return Ok(Accel::Kvm);
            }
            Accel::Kvm => info!("kvm: /dev/kvm cannot be opened, trying the next accelerator"),
            Accel::Tcg => {
                info!("accelerator: tcg");
                return Ok(Accel::Tcg);
            }
        }
    }
    Err(VmError::AccelUnavailable(
        "kvm",
        "/dev/kvm cannot be opened (is the kvm module loaded, and may this user open it?)".into(),
    ))
}

/// The accelerator of one VM: what differs between `kvm` and `tcg` when building it.
enum Accelerator {
    Kvm {
        vm: KvmVm,
        cpuid: kvm_bindings::CpuId,
    },
    Tcg(Arc<crate::accel::tcg::Machine>),
}

impl Accelerator {
    fn new(
        accel: Accel,
        mem: &GuestMemoryMmap,
        config: &VmConfig,
        kvm: Option<&KvmAccel>,
        code: Option<&crate::accel::tcg::CodePool>,
    ) -> Result<Self, VmError> {
        match accel {
            Accel::Kvm => {
                let kvm = kvm.ok_or_else(|| {
                    VmError::AccelUnavailable("kvm", "/dev/kvm was not opened at start".into())
                })?;
                if config.smp.maxcpus as usize > kvm.max_vcpus() {
                    return Err(VmError::AccelUnavailable(
                        "kvm",
                        format!(
                            "{} vCPUs requested, this host's KVM supports {}",
                            config.smp.maxcpus,
                            kvm.max_vcpus()
                        ),
                    ));
                }
                let vm = kvm.create_vm(mem)?;
                let cpuid = kvm.supported_cpuid()?;
                Ok(Accelerator::Kvm { vm, cpuid })
            }
            Accel::Tcg => Ok(Accelerator::Tcg(crate::accel::tcg::Machine::new(
                mem, config, code,
            ))),
        }
    }

    /// An edge-triggered line into interrupt controller pin `gsi`.
    fn irq_line(&self, gsi: u32) -> Result<Arc<dyn InterruptLine>, VmError> {
        match self {
            Accelerator::Kvm { vm, .. } => {
                let irq = new_eventfd()?;
                vm.register_irqfd(&irq, gsi)?;
                Ok(Arc::new(irq))
            }
            Accelerator::Tcg(m) => Ok(m.irq_line(gsi)),
        }
    }

    fn create_vcpu(
        &self,
        index: u32,
        config: &VmConfig,
    ) -> Result<Box<dyn crate::accel::VcpuBackend>, VmError> {
        match self {
            Accelerator::Kvm { vm, cpuid } => {
                let entries = crate::accel::kvm::vcpu_cpuid(cpuid, index, config)?;
                Ok(Box::new(vm.create_vcpu(index, &entries)?))
            }
            Accelerator::Tcg(m) => Ok(Box::new(m.create_vcpu(index, config))),
        }
    }

    /// MSI delivery and notification registration for PCI devices.
    fn pci_host(&self) -> crate::pci::PciHost {
        match self {
            Accelerator::Kvm { vm, .. } => {
                let msi = vm.msi();
                crate::pci::PciHost {
                    msi: msi.clone(),
                    registrar: Some(msi),
                    guest_writes: None,
                }
            }
            Accelerator::Tcg(m) => crate::pci::PciHost {
                msi: m.msi_controller(),
                registrar: None,
                guest_writes: Some(m.guest_write_hook()),
            },
        }
    }
}

fn create_memory(size: u64) -> Result<GuestMemoryMmap, VmError> {
    let regions = crate::arch::x86_64::layout::ram_regions(size);
    GuestMemoryMmap::from_ranges(&regions).map_err(|e| VmError::Memory {
        size,
        reason: e.to_string(),
    })
}

fn new_eventfd() -> Result<EventFd, VmError> {
    EventFd::new(EFD_NONBLOCK).map_err(VmError::EventLoop)
}

/// Builds the VM described by `config` and runs it until it ends.
pub fn run(config: &VmConfig, accel: Accel, res: &mut HostResources) -> Result<Outcome, VmError> {
    let mem = create_memory(config.memory_bytes)?;
    // Load the guest first: the software CPU's clock (and so its TSC) starts with the
    // accelerator, not before the kernel is decompressed.
    let bsp_state = boot::prepare(&mem, config, &mut res.kernel, res.initrd.as_mut())?;
    let machine = Accelerator::new(accel, &mem, config, res.kvm.as_ref(), res.code.as_ref())?;

    // Devices.
    let buses = Arc::new(Buses::default());
    let reset_evt = new_eventfd()?;
    let poweroff_evt = new_eventfd()?;
    let clone = |e: &EventFd| e.try_clone().map_err(VmError::EventLoop);
    let dev_err = |e: rampart_devices::BusError| VmError::Device(e.to_string());

    let sink_holder: Option<SharedSink> = match &res.console {
        ConsoleIo::None => None,
        ConsoleIo::Output(w) => Some(w.clone()),
        ConsoleIo::Stdio { output, .. } | ConsoleIo::Socket { output, .. } => Some(output.clone()),
    };
    let serial_dev = match &sink_holder {
        Some(sink) => {
            let line = machine.irq_line(COM1_IRQ)?;
            Some(Arc::new(Mutex::new(SerialDevice::new(
                line,
                Box::new(sink.clone()),
            ))))
        }
        None => None,
    };
    let below_4g = crate::arch::x86_64::layout::low_ram_end(config.memory_bytes);
    let above_4g = config.memory_bytes - below_4g;
    let mut pio: Vec<(SharedDevice, u16, u64)> = vec![
        (
            Arc::new(Mutex::new(I8042DataPort::new())),
            I8042_DATA_PORT,
            I8042_PORT_LEN,
        ),
        (
            Arc::new(Mutex::new(SystemControlPortB::new())),
            PORT_B,
            PORT_B_LEN,
        ),
        (
            Arc::new(Mutex::new(I8042CommandPort::new(clone(&reset_evt)?))),
            I8042_COMMAND_PORT,
            I8042_PORT_LEN,
        ),
        (
            Arc::new(Mutex::new(Cmos::new(below_4g, above_4g))),
            CMOS_PORT,
            CMOS_PORT_LEN,
        ),
        (
            Arc::new(Mutex::new(PostCodePort::new())),
            POST_CODE_PORT,
            POST_CODE_PORT_LEN,
        ),
        (
            Arc::new(Mutex::new(AcpiPmPort::new(
                clone(&poweroff_evt)?,
                clone(&reset_evt)?,
            ))),
            ACPI_PM_PORT,
            ACPI_PM_PORT_LEN,
        ),
    ];
    if let Some(dev) = &serial_dev {
        pio.push((dev.clone(), COM1_PORT, SERIAL_PORT_LEN));
    }
    for (dev, port, len) in pio {
        buses
            .pio
            .insert(dev, u64::from(port), len)
            .map_err(dev_err)?;
    }

    // PCI devices (their I/O threads stop when `_pci` is dropped, after the vCPUs).
    let _pci = crate::pci::build(
        config,
        &mem,
        &buses,
        &machine.pci_host(),
        &res.disks,
        &res.nics,
        &res.throttles,
    )?;
    // The ACPI power button (system_powerdown): a pulse on the Generic Event Device's line.
    let ged_line = machine.irq_line(crate::arch::x86_64::acpi_ged::GED_GSI)?;
    let press_power_button = move || {
        if let Err(e) = ged_line.trigger() {
            warn!("cannot signal the ACPI power button: {e}");
        }
    };

    // vCPUs.
    let (tx, rx) = mpsc::channel();
    let wake = Arc::new(new_eventfd()?);
    let events = EventSender {
        tx,
        wake: wake.clone(),
    };
    let mut vcpus = Vec::new();
    crate::vcpu::install_kick_handler()?;
    let result = (|| -> Result<Outcome, VmError> {
        for index in 0..config.smp.cpus {
            let mut vcpu = machine.create_vcpu(index, config)?;
            if index == 0 {
                vcpu.set_state(&bsp_state)?;
            }
            let io: Arc<dyn crate::accel::IoHandler + Send> = buses.clone();
            // Every vCPU starts paused: none runs guest code until all exist (a thread that
            // cannot be created then fails start-up before the guest has done anything).
            vcpus.push(VcpuHandle::spawn(
                index,
                vcpu,
                io,
                events.clone(),
                true,
                match accel {
                    Accel::Kvm => rampart_sandbox::seccomp::Role::VcpuKvm,
                    Accel::Tcg => rampart_sandbox::seccomp::Role::VcpuTcg,
                },
            )?);
        }
        if res.control.state.is_running() {
            for v in &vcpus {
                v.resume();
            }
        } else {
            info!(
                state = res.control.state.name(),
                "the VM is created paused (a monitor's cont starts it)"
            );
        }
        crate::event_loop::run(
            config,
            res,
            crate::event_loop::Sources {
                rx: &rx,
                wake: &wake,
                reset_evt: &reset_evt,
                poweroff_evt: &poweroff_evt,
                power_button: Some(&press_power_button),
                memory: &mem,
            },
            serial_dev.as_ref(),
            &mut vcpus,
        )
    })();
    for v in vcpus.drain(..) {
        v.stop();
    }
    result
}
