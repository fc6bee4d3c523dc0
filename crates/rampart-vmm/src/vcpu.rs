//! vCPU threads and their state machine.
//!
//! Each vCPU runs on its own thread: `Created → Running ⇄ Paused → Exiting`. Requests come
//! from the VMM thread through a mutex/condvar pair; a vCPU inside the accelerator is kicked out
//! with a real-time signal (its handler tells the accelerator to leave guest mode at once).

use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use thiserror::Error;
use tracing::{debug, error};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::accel::{kvm, IoHandler, VcpuBackend, VcpuEvent};

/// The signal that kicks a vCPU thread out of guest mode.
pub fn kick_signal() -> i32 {
    SIGRTMIN() + 1
}

#[derive(Debug, Error)]
pub enum VcpuError {
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    #[error("cannot start vCPU thread {index}: {source}")]
    Spawn {
        index: u32,
        #[source]
        source: std::io::Error,
    },
}

/// The lifecycle of a vCPU thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuRunState {
    /// Created, has not run guest code yet.
    Created,
    Running,
    Paused,
    Exiting,
}

/// What a vCPU reports to the VMM thread.
#[derive(Debug)]
pub enum VmEvent {
    Reset { cpu: u32 },
    PowerOff { cpu: u32 },
    Failure { cpu: u32, message: String },
}

struct Control {
    requested: Mutex<VcpuRunState>,
    cv: Condvar,
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    kvm::on_kick_signal();
    crate::accel::tcg::on_kick_signal();
}

/// Installs the kick signal handler (once per process).
pub fn install_kick_handler() -> Result<(), VcpuError> {
    register_signal_handler(kick_signal(), handle_kick).map_err(VcpuError::Signal)
}

/// A running vCPU thread seen from the VMM thread.
pub struct VcpuHandle {
    index: u32,
    control: Arc<Control>,
    thread: Option<JoinHandle<()>>,
}

/// The channel on which vCPUs report [`VmEvent`]s; `wake` is written after each send so the
/// VMM's event loop notices.
#[derive(Clone)]
pub struct EventSender {
    pub tx: mpsc::Sender<VmEvent>,
    pub wake: Arc<EventFd>,
}

impl EventSender {
    fn send(&self, ev: VmEvent) {
        // The receiver only goes away when the VMM is tearing down: nothing left to tell.
        if self.tx.send(ev).is_ok() {
            if let Err(e) = self.wake.write(1) {
                error!("cannot wake the VMM thread: {e}");
            }
        }
    }
}

impl VcpuHandle {
    /// Starts the thread of vCPU `index`, `Running` unless `start_paused`.
    pub fn spawn(
        index: u32,
        mut backend: Box<dyn VcpuBackend>,
        io: Arc<dyn IoHandler + Send>,
        events: EventSender,
        start_paused: bool,
    ) -> Result<VcpuHandle, VcpuError> {
        let initial = if start_paused {
            VcpuRunState::Paused
        } else {
            VcpuRunState::Running
        };
        let control = Arc::new(Control {
            requested: Mutex::new(initial),
            cv: Condvar::new(),
        });
        let ctl = control.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || vcpu_loop(index, &mut *backend, &*io, &ctl, &events))
            .map_err(|source| VcpuError::Spawn { index, source })?;
        Ok(VcpuHandle {
            index,
            control,
            thread: Some(thread),
        })
    }

    fn request(&self, state: VcpuRunState) {
        let mut req = self
            .control
            .requested
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *req == VcpuRunState::Exiting {
            return;
        }
        *req = state;
        self.control.cv.notify_all();
        drop(req);
        self.kick();
    }

    fn kick(&self) {
        if let Some(t) = &self.thread {
            // The thread may have finished already; a failed kill then is harmless.
            let _ = t.kill(kick_signal());
        }
    }

    pub fn pause(&self) {
        self.request(VcpuRunState::Paused);
    }

    pub fn resume(&self) {
        self.request(VcpuRunState::Running);
    }

    /// Asks the thread to exit and waits for it.
    pub fn stop(mut self) {
        self.request(VcpuRunState::Exiting);
        if let Some(t) = self.thread.take() {
            // Kick repeatedly until the thread leaves guest mode: a signal sent just before
            // the thread entered KVM_RUN is remembered by immediate_exit, so one suffices,
            // but keep it robust against a thread that was between checks.
            while !t.is_finished() {
                let _ = t.kill(kick_signal());
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            if t.join().is_err() {
                error!("vCPU {} thread panicked", self.index);
            }
        }
    }
}

/// Blocks while paused; returns the state to act on (Running or Exiting).
fn wait_runnable(ctl: &Control) -> VcpuRunState {
    let mut req = ctl.requested.lock().unwrap_or_else(|e| e.into_inner());
    while *req == VcpuRunState::Paused || *req == VcpuRunState::Created {
        req = ctl.cv.wait(req).unwrap_or_else(|e| e.into_inner());
    }
    *req
}

/// Parks the vCPU until it is told to exit (after it reported a VM-wide event).
fn park_until_exit(ctl: &Control) {
    let mut req = ctl.requested.lock().unwrap_or_else(|e| e.into_inner());
    while *req != VcpuRunState::Exiting {
        req = ctl.cv.wait(req).unwrap_or_else(|e| e.into_inner());
    }
}

fn vcpu_loop(
    index: u32,
    backend: &mut dyn VcpuBackend,
    io: &dyn IoHandler,
    ctl: &Control,
    events: &EventSender,
) {
    loop {
        if wait_runnable(ctl) == VcpuRunState::Exiting {
            match backend.state() {
                Ok(s) => debug!(
                    cpu = index,
                    rip = format_args!("{:#x}", s.regs.rip),
                    "vCPU exiting"
                ),
                Err(_) => debug!(cpu = index, "vCPU exiting"),
            }
            return;
        }
        let event = match backend.run(io) {
            Ok(VcpuEvent::Kicked) => continue,
            Ok(VcpuEvent::Halted) => {
                // Only without an in-kernel irqchip: nothing can wake this vCPU but a request.
                debug!(cpu = index, "vCPU halted");
                let mut req = ctl.requested.lock().unwrap_or_else(|e| e.into_inner());
                *req = VcpuRunState::Paused;
                continue;
            }
            Ok(VcpuEvent::Reset) => VmEvent::Reset { cpu: index },
            Ok(VcpuEvent::PowerOff) => VmEvent::PowerOff { cpu: index },
            Err(e) => VmEvent::Failure {
                cpu: index,
                message: e.to_string(),
            },
        };
        events.send(event);
        park_until_exit(ctl);
        return;
    }
}
