//! The VMM thread's event loop: vCPU events, device reset/power-off lines, termination signals,
//! and serial console input (stdio with QEMU's Ctrl-A escapes, or a UNIX-socket client).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{mpsc, Arc, Mutex};

use rampart_config::control::{
    ControlReply, ControlRequest, CpuInfo, LifecycleEvent, RunState, ShutdownCause,
};
use rampart_config::VmConfig;
use rampart_devices::legacy::SerialDevice;
use tracing::{debug, error, info, warn};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::console::{ConsoleAction, EscapeFilter, HELP};
use crate::control::{ControlPort, Reply};
use crate::vcpu::{VcpuHandle, VmEvent};
use crate::vm::{ConsoleIo, HostResources, Outcome, VmError};

const TOKEN_VM_EVENT: u64 = 1;
const TOKEN_RESET: u64 = 2;
const TOKEN_POWEROFF: u64 = 3;
const TOKEN_SIGNAL: u64 = 4;
const TOKEN_INPUT: u64 = 5;
const TOKEN_LISTENER: u64 = 6;
const TOKEN_CONTROL: u64 = 7;

/// The event sources the VM built for the loop.
pub struct Sources<'a> {
    pub rx: &'a mpsc::Receiver<VmEvent>,
    pub wake: &'a EventFd,
    pub reset_evt: &'a EventFd,
    pub poweroff_evt: &'a EventFd,
    /// Presses the ACPI power button (`system_powerdown`), if the machine has one.
    pub power_button: Option<&'a dyn Fn()>,
    /// Guest RAM (for `dump-guest-memory`).
    pub memory: &'a vm_memory::GuestMemoryMmap,
}

fn add(epoll: &Epoll, fd: RawFd, token: u64) -> std::io::Result<()> {
    epoll.ctl(
        ControlOperation::Add,
        fd,
        EpollEvent::new(EventSet::IN, token),
    )
}

fn del(epoll: &Epoll, fd: RawFd) {
    let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
}

/// Console input: where it comes from, and the bytes the serial FIFO has not taken yet.
struct Input {
    source: Option<Box<dyn ReadFd>>,
    polled: bool,
    escapes: Option<EscapeFilter>,
    pending: VecDeque<u8>,
}

trait ReadFd: Read + AsRawFd {}
impl<T: Read + AsRawFd> ReadFd for T {}

impl Input {
    fn fd(&self) -> Option<RawFd> {
        self.source.as_ref().map(|s| s.as_raw_fd())
    }

    /// Polls the source again once the backlog is gone.
    fn resume(&mut self, epoll: &Epoll) {
        if self.pending.is_empty() && !self.polled {
            if let Some(fd) = self.fd() {
                self.polled = add(epoll, fd, TOKEN_INPUT).is_ok();
            }
        }
    }

    fn pause(&mut self, epoll: &Epoll) {
        if self.polled {
            if let Some(fd) = self.fd() {
                del(epoll, fd);
            }
            self.polled = false;
        }
    }

    fn close(&mut self, epoll: &Epoll) {
        self.pause(epoll);
        self.source = None;
    }

    fn feed_serial(&mut self, serial: Option<&Arc<Mutex<SerialDevice>>>) {
        if let Some(serial) = serial {
            if !self.pending.is_empty() {
                let mut dev = serial.lock().unwrap_or_else(|e| e.into_inner());
                let (a, _) = self.pending.as_slices();
                let taken = dev.enqueue_input(a);
                self.pending.drain(..taken);
            }
        }
    }
}

/// Runs the loop until the VM's run ends.
pub fn run(
    config: &VmConfig,
    res: &mut HostResources,
    src: Sources<'_>,
    serial: Option<&Arc<Mutex<SerialDevice>>>,
    vcpus: &mut Vec<VcpuHandle>,
) -> Result<Outcome, VmError> {
    let ev = VmError::EventLoop;
    let epoll = Epoll::new().map_err(ev)?;
    add(&epoll, src.wake.as_raw_fd(), TOKEN_VM_EVENT).map_err(ev)?;
    add(&epoll, src.reset_evt.as_raw_fd(), TOKEN_RESET).map_err(ev)?;
    add(&epoll, src.poweroff_evt.as_raw_fd(), TOKEN_POWEROFF).map_err(ev)?;
    add(&epoll, res.signals.as_raw_fd(), TOKEN_SIGNAL).map_err(ev)?;
    add(&epoll, res.control.wake_fd().as_raw_fd(), TOKEN_CONTROL).map_err(ev)?;

    let mut input = Input {
        source: None,
        polled: false,
        escapes: None,
        pending: VecDeque::new(),
    };
    match &res.console {
        ConsoleIo::Stdio { input: file, .. } if serial.is_some() => {
            let file = file.try_clone().map_err(ev)?;
            input.escapes = Some(EscapeFilter::default());
            input.source = Some(Box::new(file));
            input.resume(&epoll);
            if !input.polled {
                // Regular files and /dev/null cannot be polled: no console input then.
                debug!("console input is not pollable (a file or /dev/null): ignored");
                input.source = None;
            }
        }
        ConsoleIo::Socket { server, .. } => {
            add(&epoll, server.listener().as_raw_fd(), TOKEN_LISTENER).map_err(ev)?;
        }
        _ => {}
    }

    let mut powered_off = false;
    let mut events = vec![EpollEvent::default(); 8];
    loop {
        // Input the serial FIFO could not take yet: retry soon, without reading more.
        let timeout = if input.pending.is_empty() { -1 } else { 5 };
        let n = match epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(VmError::EventLoop(e)),
        };
        input.feed_serial(serial);
        input.resume(&epoll);
        for event in &events[..n] {
            match event.data() {
                TOKEN_VM_EVENT => {
                    let _ = src.wake.read();
                    while let Ok(event) = src.rx.try_recv() {
                        match event {
                            VmEvent::Reset { cpu } => {
                                info!(cpu, "guest reset");
                                if !powered_off {
                                    return Ok(reset(config, res, ShutdownCause::GuestReset));
                                }
                            }
                            VmEvent::PowerOff { cpu } => {
                                info!(cpu, "guest power-off");
                                if power_off(config, res, vcpus, &mut powered_off) {
                                    return Ok(Outcome::PowerOff);
                                }
                            }
                            VmEvent::Failure { cpu, message } => {
                                error!(cpu, "{message}");
                                res.control.state = RunState::InternalError;
                                return Ok(Outcome::Failure(message));
                            }
                        }
                    }
                }
                TOKEN_RESET => {
                    let _ = src.reset_evt.read();
                    if !powered_off {
                        info!("guest reset (reset line)");
                        return Ok(reset(config, res, ShutdownCause::GuestReset));
                    }
                }
                TOKEN_POWEROFF => {
                    let _ = src.poweroff_evt.read();
                    info!("guest power-off (ACPI S5)");
                    if power_off(config, res, vcpus, &mut powered_off) {
                        return Ok(Outcome::PowerOff);
                    }
                }
                TOKEN_SIGNAL => {
                    if let Some(sig) = res.signals.read() {
                        info!(signal = sig, "termination signal");
                        res.control
                            .publish(LifecycleEvent::Shutdown(ShutdownCause::HostSignal));
                        return Ok(Outcome::Signal(sig));
                    }
                }
                TOKEN_CONTROL => {
                    res.control.clear_wake();
                    while let Some(pending) = res.control.next() {
                        let (request, pending) = pending.into_parts();
                        let (reply, outcome) = control(request, config, res, &src, vcpus);
                        if outcome == Some(Outcome::Quit) {
                            // QEMU 10 emits SHUTDOWN before its reply to `quit`: publishing
                            // before answering puts the event ahead of the reply every time.
                            res.control
                                .publish(LifecycleEvent::Shutdown(ShutdownCause::HostQmpQuit));
                        }
                        pending.answer(reply);
                        if let Some(outcome) = outcome {
                            return Ok(outcome);
                        }
                    }
                }
                TOKEN_LISTENER => {
                    if let ConsoleIo::Socket { server, .. } = &res.console {
                        if let Some(stream) = server.accept() {
                            input.close(&epoll);
                            input.pending.clear();
                            input.source = Some(Box::new(stream));
                            input.resume(&epoll);
                        }
                    }
                }
                TOKEN_INPUT => {
                    if let Some(action) = read_input(&mut input, &epoll, res, serial)? {
                        match action {
                            ConsoleAction::Quit => {
                                res.control
                                    .publish(LifecycleEvent::Shutdown(ShutdownCause::HostUi));
                                return Ok(Outcome::ConsoleQuit);
                            }
                            ConsoleAction::Help => {
                                if let ConsoleIo::Stdio { output, .. } = &mut res.console {
                                    let _ = output.write_all(HELP.as_bytes());
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// Handles a guest power-off; returns whether the run ends (false with `-no-shutdown`).
fn power_off(
    config: &VmConfig,
    res: &mut HostResources,
    vcpus: &mut Vec<VcpuHandle>,
    powered_off: &mut bool,
) -> bool {
    if *powered_off {
        return false;
    }
    *powered_off = true;
    res.control
        .publish(LifecycleEvent::Shutdown(ShutdownCause::GuestShutdown));
    if !config.lifecycle.no_shutdown {
        return true;
    }
    for v in vcpus.drain(..) {
        v.stop();
    }
    let was_running = res.control.state.is_running();
    res.control.state = RunState::Shutdown;
    if was_running {
        res.control.publish(LifecycleEvent::Stop);
    }
    info!("-no-shutdown: the VM is stopped; rampart keeps running until SIGTERM, quit or system_reset");
    false
}

/// Ends the run with a reset (or, with `-no-reboot`, a shutdown), publishing the event.
fn reset(config: &VmConfig, res: &mut HostResources, cause: ShutdownCause) -> Outcome {
    if config.lifecycle.no_reboot {
        res.control.publish(LifecycleEvent::Shutdown(cause));
    } else {
        res.control.publish(LifecycleEvent::Reset(cause));
    }
    // As QEMU: a VM that was not running is in `prelaunch` after a reset (`cont` starts it).
    if !res.control.state.is_running() {
        res.control.state = RunState::Prelaunch;
    }
    Outcome::Reset
}

/// How long `stop` waits for one vCPU to leave guest mode.
const PAUSE_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Acts on one control request; returns the reply and, if the run ends, why.
fn control(
    request: ControlRequest,
    config: &VmConfig,
    res: &mut HostResources,
    src: &Sources<'_>,
    vcpus: &mut [VcpuHandle],
) -> (Reply, Option<Outcome>) {
    let power_button = src.power_button;
    let port: &mut ControlPort = &mut res.control;
    let done = Ok(ControlReply::Done);
    match request {
        ControlRequest::QueryStatus => (Ok(ControlReply::Status(port.state)), None),
        ControlRequest::QueryCpus => {
            let smp = &config.smp;
            let cpus = vcpus
                .iter()
                .map(|v| {
                    let i = v.index();
                    let threads = smp.threads.max(1);
                    let cores = smp.cores.max(1);
                    CpuInfo {
                        index: i,
                        thread_id: v.thread_id(),
                        thread: i % threads,
                        core: (i / threads) % cores,
                        socket: i / (threads * cores),
                    }
                })
                .collect();
            (Ok(ControlReply::Cpus(cpus)), None)
        }
        ControlRequest::Stop => {
            if port.state.is_running() {
                for v in vcpus.iter() {
                    if !v.pause_and_wait(PAUSE_LIMIT) {
                        warn!(cpu = v.index(), "vCPU did not pause in time");
                    }
                }
                port.state = RunState::Paused;
                info!("VM stopped (monitor)");
                port.publish(LifecycleEvent::Stop);
            }
            (done, None)
        }
        ControlRequest::Cont => match port.state {
            RunState::Running => (done, None),
            RunState::Shutdown | RunState::InternalError => (
                Err("Resetting the Virtual Machine is required".into()),
                None,
            ),
            RunState::Prelaunch | RunState::Paused => {
                for v in vcpus.iter() {
                    v.resume();
                }
                port.state = RunState::Running;
                info!("VM resumed (monitor)");
                port.publish(LifecycleEvent::Resume);
                (done, None)
            }
        },
        ControlRequest::SystemReset => {
            info!("system reset (monitor)");
            (
                done,
                Some(reset(config, res, ShutdownCause::HostQmpSystemReset)),
            )
        }
        ControlRequest::SystemPowerdown => match power_button {
            Some(press) => {
                info!("ACPI power button pressed (monitor)");
                port.publish(LifecycleEvent::Powerdown);
                press();
                (done, None)
            }
            None => (
                Err("system_powerdown: this machine has no ACPI power button".into()),
                None,
            ),
        },
        ControlRequest::Quit => {
            info!("quit (monitor)");
            (done, Some(Outcome::Quit))
        }
        ControlRequest::DumpGuestMemory(file) => {
            // The vCPUs stay out of guest mode while RAM is copied (no STOP/RESUME events:
            // the run state does not change).
            let running = port.state.is_running();
            if running {
                for v in vcpus.iter() {
                    if !v.pause_and_wait(PAUSE_LIMIT) {
                        warn!(cpu = v.index(), "vCPU did not pause in time");
                    }
                }
            }
            let r = crate::dump::write_elf_core(&file, src.memory);
            if running {
                for v in vcpus.iter() {
                    v.resume();
                }
            }
            match r {
                Ok(bytes) => {
                    info!(bytes, "guest memory dumped (monitor)");
                    (done, None)
                }
                Err(e) => (Err(format!("dump-guest-memory: {e}")), None),
            }
        }
    }
}

/// Reads available console input and passes it to the serial port.
fn read_input(
    input: &mut Input,
    epoll: &Epoll,
    res: &mut HostResources,
    serial: Option<&Arc<Mutex<SerialDevice>>>,
) -> Result<Option<ConsoleAction>, VmError> {
    let Some(source) = input.source.as_mut() else {
        return Ok(None);
    };
    let mut buf = [0u8; 256];
    let got = match source.read(&mut buf) {
        Ok(0) => {
            info!("console input closed");
            input.close(epoll);
            if let ConsoleIo::Socket { server, .. } = &res.console {
                server.disconnect();
            }
            return Ok(None);
        }
        Ok(n) => n,
        Err(e)
            if e.kind() == std::io::ErrorKind::Interrupted
                || e.kind() == std::io::ErrorKind::WouldBlock =>
        {
            return Ok(None)
        }
        Err(e) if matches!(res.console, ConsoleIo::Socket { .. }) => {
            debug!("serial socket client error: {e}");
            input.close(epoll);
            return Ok(None);
        }
        Err(e) => return Err(VmError::EventLoop(e)),
    };
    let mut to_guest = Vec::with_capacity(got);
    let action = match input.escapes.as_mut() {
        Some(filter) => filter.feed(&buf[..got], &mut to_guest),
        None => {
            to_guest.extend_from_slice(&buf[..got]);
            None
        }
    };
    input.pending.extend(to_guest);
    input.feed_serial(serial);
    if !input.pending.is_empty() {
        input.pause(epoll);
    }
    Ok(action)
}
