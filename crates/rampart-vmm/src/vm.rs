//! Building and running one VM: guest memory, devices, vCPU threads and the VMM event loop.
//!
//! [`run`] builds the VM from a validated configuration and the host resources opened before
//! (kernel, initrd, console), runs it until the guest powers off, resets, fails, or a
//! termination signal or the console's quit key arrives, then tears it down and reports why.
//! A reset is a fresh VM built from the same configuration by the caller.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
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
use tracing::{debug, error, info, warn};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::accel::kvm::KvmAccel;
use crate::accel::AccelError;
use crate::boot;
use crate::console::{ConsoleAction, EscapeFilter, HELP};
use crate::io::Buses;
use crate::signals::TerminationSignals;
use crate::vcpu::{EventSender, VcpuError, VcpuHandle, VmEvent};

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
}

/// Where the serial console's bytes come from and go to, opened before the VM is built.
pub enum ConsoleIo {
    /// No serial port.
    None,
    /// Output only (null sink or a file).
    Output(SharedSink),
    /// Terminal/stdio: input read from `input`, output to `output`; Ctrl-A escapes apply.
    Stdio { input: File, output: SharedSink },
}

/// Host resources opened before the VM is built (and before any sandbox closes the doors).
pub struct HostResources {
    pub kernel: File,
    pub initrd: Option<File>,
    pub console: ConsoleIo,
    pub signals: TerminationSignals,
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
    let candidates: Vec<Accel> = if wanted.is_empty() {
        if kvm_ok && !pvm {
            info!("accelerator: kvm (hardware virtualization is available)");
            return Ok(Accel::Kvm);
        }
        if pvm {
            info!("/dev/kvm is kvm-pvm, which cannot run stock kernels: choosing tcg");
        }
        vec![Accel::Tcg]
    } else {
        wanted.to_vec()
    };
    let mut reasons = Vec::new();
    for accel in candidates {
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
            Accel::Kvm => reasons.push("kvm: /dev/kvm cannot be opened".to_string()),
            Accel::Tcg => reasons
                .push("tcg: rampart's software CPU is not part of this build yet".to_string()),
        }
    }
    Err(VmError::AccelUnavailable("requested", reasons.join("; ")))
}

fn create_memory(size: u64) -> Result<GuestMemoryMmap, VmError> {
    let regions = crate::arch::x86_64::layout::ram_regions(size);
    GuestMemoryMmap::from_ranges(&regions).map_err(|e| VmError::Memory {
        size,
        reason: e.to_string(),
    })
}

/// Epoll tokens of the event loop.
const TOKEN_VM_EVENT: u64 = 1;
const TOKEN_RESET: u64 = 2;
const TOKEN_POWEROFF: u64 = 3;
const TOKEN_SIGNAL: u64 = 4;
const TOKEN_STDIN: u64 = 5;

fn epoll_add(epoll: &Epoll, fd: RawFd, token: u64) -> Result<(), VmError> {
    epoll
        .ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )
        .map_err(VmError::EventLoop)
}

fn new_eventfd() -> Result<EventFd, VmError> {
    EventFd::new(EFD_NONBLOCK).map_err(VmError::EventLoop)
}

/// Builds the VM described by `config` and runs it until it ends.
pub fn run(config: &VmConfig, accel: Accel, res: &mut HostResources) -> Result<Outcome, VmError> {
    if accel != Accel::Kvm {
        return Err(VmError::AccelUnavailable(
            accel.name(),
            "rampart's software CPU is not part of this build yet".into(),
        ));
    }
    let mem = create_memory(config.memory_bytes)?;
    let kvm = KvmAccel::open()?;
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
    let vm = kvm.create_vm(&mem)?;
    let bsp_state = boot::prepare(&mem, config, &mut res.kernel, res.initrd.as_mut())?;

    // Devices.
    let buses = Arc::new(Buses::default());
    let reset_evt = new_eventfd()?;
    let poweroff_evt = new_eventfd()?;
    let clone = |e: &EventFd| e.try_clone().map_err(VmError::EventLoop);
    let dev_err = |e: rampart_devices::BusError| VmError::Device(e.to_string());

    let sink_holder: Option<SharedSink> = match &res.console {
        ConsoleIo::None => None,
        ConsoleIo::Output(w) => Some(w.clone()),
        ConsoleIo::Stdio { output, .. } => Some(output.clone()),
    };
    let serial_dev = match &sink_holder {
        Some(sink) => {
            let irq = new_eventfd()?;
            vm.register_irqfd(&irq, COM1_IRQ)?;
            let line: Arc<dyn InterruptLine> = Arc::new(irq);
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

    // vCPUs.
    let (tx, rx) = mpsc::channel();
    let wake = Arc::new(new_eventfd()?);
    let events = EventSender {
        tx,
        wake: wake.clone(),
    };
    let base_cpuid = kvm.supported_cpuid()?;
    let mut vcpus = Vec::new();
    crate::vcpu::install_kick_handler()?;
    let result = (|| -> Result<Outcome, VmError> {
        for index in 0..config.smp.cpus {
            let entries = crate::accel::kvm::vcpu_cpuid(&base_cpuid, index, config)?;
            let mut vcpu = vm.create_vcpu(index, &entries)?;
            if index == 0 {
                crate::accel::VcpuBackend::set_state(&mut vcpu, &bsp_state)?;
            }
            let io: Arc<dyn crate::accel::IoHandler + Send> = buses.clone();
            vcpus.push(VcpuHandle::spawn(
                index,
                vcpu,
                io,
                events.clone(),
                config.lifecycle.start_paused,
            )?);
        }
        if config.lifecycle.start_paused {
            info!("-S: the VM is created paused (no monitor can resume it yet; stop with SIGTERM)");
        }
        event_loop(
            config,
            res,
            &rx,
            &wake,
            &reset_evt,
            &poweroff_evt,
            serial_dev.as_ref(),
            &mut vcpus,
        )
    })();
    for v in vcpus.drain(..) {
        v.stop();
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn event_loop(
    config: &VmConfig,
    res: &mut HostResources,
    rx: &mpsc::Receiver<VmEvent>,
    wake: &EventFd,
    reset_evt: &EventFd,
    poweroff_evt: &EventFd,
    serial: Option<&Arc<Mutex<SerialDevice>>>,
    vcpus: &mut Vec<VcpuHandle>,
) -> Result<Outcome, VmError> {
    let epoll = Epoll::new().map_err(VmError::EventLoop)?;
    epoll_add(&epoll, wake.as_raw_fd(), TOKEN_VM_EVENT)?;
    epoll_add(&epoll, reset_evt.as_raw_fd(), TOKEN_RESET)?;
    epoll_add(&epoll, poweroff_evt.as_raw_fd(), TOKEN_POWEROFF)?;
    epoll_add(&epoll, res.signals.as_raw_fd(), TOKEN_SIGNAL)?;
    let stdin_fd = match &res.console {
        ConsoleIo::Stdio { input, .. } if serial.is_some() => Some(input.as_raw_fd()),
        _ => None,
    };
    let mut stdin_polled = false;
    let mut stdin_eof = false;
    if let Some(fd) = stdin_fd {
        match epoll_add(&epoll, fd, TOKEN_STDIN) {
            Ok(()) => stdin_polled = true,
            // Regular files and /dev/null cannot be polled: there is no console input then.
            Err(VmError::EventLoop(e)) if e.raw_os_error() == Some(libc::EPERM) => {
                debug!("console input is not pollable (a file or /dev/null): ignored");
                stdin_eof = true;
            }
            Err(e) => return Err(e),
        }
    }
    let mut filter = EscapeFilter::default();
    let mut pending: VecDeque<u8> = VecDeque::new();
    let mut powered_off = false;
    let mut events = vec![EpollEvent::default(); 8];
    loop {
        // Input the serial FIFO could not take yet: retry soon, without reading more.
        let timeout = if pending.is_empty() { -1 } else { 5 };
        let n = match epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(VmError::EventLoop(e)),
        };
        if let Some(serial) = serial {
            if !pending.is_empty() {
                let mut dev = serial.lock().unwrap_or_else(|e| e.into_inner());
                let (a, _) = pending.as_slices();
                let taken = dev.enqueue_input(a);
                pending.drain(..taken);
            }
        }
        if let Some(fd) = stdin_fd {
            if pending.is_empty() && !stdin_polled && !stdin_eof {
                epoll_add(&epoll, fd, TOKEN_STDIN)?;
                stdin_polled = true;
            }
        }
        for ev in &events[..n] {
            match ev.data() {
                TOKEN_VM_EVENT => {
                    let _ = wake.read();
                    while let Ok(event) = rx.try_recv() {
                        match event {
                            VmEvent::Reset { cpu } => {
                                info!(cpu, "guest reset");
                                return Ok(Outcome::Reset);
                            }
                            VmEvent::PowerOff { cpu } => {
                                info!(cpu, "guest power-off");
                                if !powered_off {
                                    powered_off = true;
                                    if !config.lifecycle.no_shutdown {
                                        return Ok(Outcome::PowerOff);
                                    }
                                    stop_all(vcpus);
                                }
                            }
                            VmEvent::Failure { cpu, message } => {
                                error!(cpu, "{message}");
                                return Ok(Outcome::Failure(message));
                            }
                        }
                    }
                }
                TOKEN_RESET => {
                    let _ = reset_evt.read();
                    if !powered_off {
                        info!("guest reset (reset line)");
                        return Ok(Outcome::Reset);
                    }
                }
                TOKEN_POWEROFF => {
                    let _ = poweroff_evt.read();
                    if !powered_off {
                        info!("guest power-off (ACPI S5)");
                        powered_off = true;
                        if !config.lifecycle.no_shutdown {
                            return Ok(Outcome::PowerOff);
                        }
                        stop_all(vcpus);
                        info!(
                            "-no-shutdown: the VM is stopped; rampart keeps running until SIGTERM"
                        );
                    }
                }
                TOKEN_SIGNAL => {
                    if let Some(sig) = res.signals.read() {
                        info!(signal = sig, "termination signal");
                        return Ok(Outcome::Signal(sig));
                    }
                }
                TOKEN_STDIN => {
                    let ConsoleIo::Stdio { input, output } = &mut res.console else {
                        continue;
                    };
                    let mut buf = [0u8; 256];
                    let got = match input.read(&mut buf) {
                        Ok(0) => {
                            // End of input: keep the guest running, stop polling.
                            let _ = epoll.ctl(
                                ControlOperation::Delete,
                                input.as_raw_fd(),
                                EpollEvent::default(),
                            );
                            stdin_polled = false;
                            stdin_eof = true;
                            info!("console input closed");
                            continue;
                        }
                        Ok(n) => n,
                        Err(e)
                            if e.kind() == std::io::ErrorKind::Interrupted
                                || e.kind() == std::io::ErrorKind::WouldBlock =>
                        {
                            continue
                        }
                        Err(e) => return Err(VmError::EventLoop(e)),
                    };
                    let mut to_guest = Vec::with_capacity(got);
                    match filter.feed(&buf[..got], &mut to_guest) {
                        Some(ConsoleAction::Quit) => return Ok(Outcome::ConsoleQuit),
                        Some(ConsoleAction::Help) => {
                            let _ = output.write_all(HELP.as_bytes());
                        }
                        None => {}
                    }
                    if let Some(serial) = serial {
                        let mut dev = serial.lock().unwrap_or_else(|e| e.into_inner());
                        let taken = dev.enqueue_input(&to_guest);
                        pending.extend(&to_guest[taken..]);
                    }
                    if !pending.is_empty() {
                        let _ = epoll.ctl(
                            ControlOperation::Delete,
                            input.as_raw_fd(),
                            EpollEvent::default(),
                        );
                        stdin_polled = false;
                    }
                }
                _ => {}
            }
        }
    }
}

fn stop_all(vcpus: &mut Vec<VcpuHandle>) {
    for v in vcpus.drain(..) {
        v.stop();
    }
}
