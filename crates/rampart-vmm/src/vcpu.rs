//! vCPU threads and their state machine.
//!
//! Each vCPU runs on its own thread: `Created → Running ⇄ Paused → Exiting`. Requests come
//! from the VMM thread through a mutex/condvar pair; a vCPU inside the accelerator is kicked out
//! with a real-time signal (its handler tells the accelerator to leave guest mode at once).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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

/// What the VMM thread asked for and what the vCPU thread is doing.
struct States {
    requested: VcpuRunState,
    /// The state the thread is actually in (`Paused` once it waits, not when asked).
    current: VcpuRunState,
}

struct Control {
    states: Mutex<States>,
    cv: Condvar,
    /// The vCPU thread's host thread id (0 until it starts).
    tid: AtomicI64,
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    kvm::on_kick_signal();
    crate::accel::tcg::on_kick_signal();
}

/// Installs the kick signal handler (once per process: a reset does not ask again, so the
/// VMM thread's seccomp filter need not allow `rt_sigaction`).
pub fn install_kick_handler() -> Result<(), VcpuError> {
    static INSTALLED: std::sync::OnceLock<Result<(), i32>> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| register_signal_handler(kick_signal(), handle_kick).map_err(|e| e.errno()))
        .map_err(|errno| VcpuError::Signal(vmm_sys_util::errno::Error::new(errno)))
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
        role: rampart_sandbox::seccomp::Role,
    ) -> Result<VcpuHandle, VcpuError> {
        let initial = if start_paused {
            VcpuRunState::Paused
        } else {
            VcpuRunState::Running
        };
        let control = Arc::new(Control {
            states: Mutex::new(States {
                requested: initial,
                current: VcpuRunState::Created,
            }),
            cv: Condvar::new(),
            tid: AtomicI64::new(0),
        });
        let ctl = control.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                // The filter goes on before the guest runs its first instruction.
                rampart_sandbox::seccomp::enter(role);
                vcpu_loop(index, &mut *backend, &*io, &ctl, &events)
            })
            .map_err(|source| VcpuError::Spawn { index, source })?;
        // Wait (briefly) for the thread to report its id, so queries never see 0.
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut st = control.states.lock().unwrap_or_else(|e| e.into_inner());
        while control.tid.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            st = control
                .cv
                .wait_timeout(st, Duration::from_millis(10))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(st);
        Ok(VcpuHandle {
            index,
            control,
            thread: Some(thread),
        })
    }

    fn request(&self, state: VcpuRunState) {
        let mut st = self
            .control
            .states
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if st.requested == VcpuRunState::Exiting {
            return;
        }
        st.requested = state;
        self.control.cv.notify_all();
        drop(st);
        self.kick();
    }

    /// The vCPU thread's host thread id (0 if it has not started yet).
    pub fn thread_id(&self) -> i64 {
        self.control.tid.load(Ordering::Relaxed)
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    /// Asks the vCPU to pause and waits until it has left guest mode (kicking it again every
    /// few milliseconds); gives up after `limit` and reports whether it paused.
    pub fn pause_and_wait(&self, limit: Duration) -> bool {
        self.pause();
        let deadline = Instant::now() + limit;
        let mut st = self
            .control
            .states
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        loop {
            if st.current != VcpuRunState::Running || st.requested != VcpuRunState::Paused {
                return true;
            }
            if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let wait = (deadline - now).min(Duration::from_millis(5));
            st = self
                .control
                .cv
                .wait_timeout(st, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if st.current == VcpuRunState::Running {
                self.kick();
            }
        }
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
    let mut st = ctl.states.lock().unwrap_or_else(|e| e.into_inner());
    while st.requested == VcpuRunState::Paused || st.requested == VcpuRunState::Created {
        if st.current != VcpuRunState::Paused {
            st.current = VcpuRunState::Paused;
            ctl.cv.notify_all();
        }
        st = ctl.cv.wait(st).unwrap_or_else(|e| e.into_inner());
    }
    st.current = st.requested;
    st.current
}

/// Parks the vCPU until it is told to exit (after it reported a VM-wide event).
fn park_until_exit(ctl: &Control) {
    let mut st = ctl.states.lock().unwrap_or_else(|e| e.into_inner());
    st.current = VcpuRunState::Paused;
    ctl.cv.notify_all();
    while st.requested != VcpuRunState::Exiting {
        st = ctl.cv.wait(st).unwrap_or_else(|e| e.into_inner());
    }
}

fn vcpu_loop(
    index: u32,
    backend: &mut dyn VcpuBackend,
    io: &dyn IoHandler,
    ctl: &Control,
    events: &EventSender,
) {
    // SAFETY: gettid takes no arguments and only returns the calling thread's id.
    let tid = unsafe { libc::gettid() };
    ctl.tid.store(i64::from(tid), Ordering::Relaxed);
    {
        let _st = ctl.states.lock().unwrap_or_else(|e| e.into_inner());
        ctl.cv.notify_all();
    }
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
                let mut st = ctl.states.lock().unwrap_or_else(|e| e.into_inner());
                if st.requested == VcpuRunState::Running {
                    st.requested = VcpuRunState::Paused;
                }
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
