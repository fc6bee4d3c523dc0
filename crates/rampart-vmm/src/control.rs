//! Control requests from the monitor to the VMM thread: an mpsc queue plus an eventfd the
//! event loop polls, each request carrying its own reply channel. The port and its run state
//! outlive a single VM run, so a reset keeps the monitor connected and the state (paused or
//! running) carries over.

use std::sync::{mpsc, Arc};
use std::time::Duration;

use rampart_config::control::{ControlReply, ControlRequest, LifecycleEvent, RunState};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// How long a monitor waits for the VMM thread (a reset rebuilding the VM answers late).
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// A reply: the result, or an error message for the client.
pub type Reply = Result<ControlReply, String>;

struct Envelope {
    request: ControlRequest,
    reply: mpsc::SyncSender<Reply>,
}

/// The monitor's end: sends a request and waits for the answer.
#[derive(Clone)]
pub struct ControlClient {
    tx: mpsc::Sender<Envelope>,
    wake: Arc<EventFd>,
}

impl ControlClient {
    pub fn call(&self, request: ControlRequest) -> Reply {
        let (reply, rx) = mpsc::sync_channel(1);
        self.tx
            .send(Envelope { request, reply })
            .map_err(|_| "the VM has stopped".to_string())?;
        let _ = self.wake.write(1);
        rx.recv_timeout(REPLY_TIMEOUT)
            .map_err(|_| "the VM did not answer the request".to_string())?
    }
}

/// Publishes lifecycle events (to the monitor's broadcast).
pub type EventPublisher = Box<dyn Fn(LifecycleEvent) + Send>;

/// The VMM's end, kept across resets.
pub struct ControlPort {
    rx: mpsc::Receiver<Envelope>,
    wake: Arc<EventFd>,
    /// The VM's run state.
    pub state: RunState,
    publish: Option<EventPublisher>,
}

/// A request taken from the queue, to be answered with [`PendingRequest::answer`].
pub struct PendingRequest {
    pub request: ControlRequest,
    reply: mpsc::SyncSender<Reply>,
}

/// Where the answer to a request goes.
pub struct Responder(mpsc::SyncSender<Reply>);

impl Responder {
    pub fn answer(self, reply: Reply) {
        // The client may have gone (timed out); nothing to do then.
        let _ = self.0.try_send(reply);
    }
}

impl PendingRequest {
    /// The request itself and where its answer goes.
    pub fn into_parts(self) -> (ControlRequest, Responder) {
        (self.request, Responder(self.reply))
    }

    pub fn answer(self, reply: Reply) {
        // The client may have gone (timed out); nothing to do then.
        let _ = self.reply.try_send(reply);
    }
}

/// A connected pair; `start_paused` (`-S`) makes the initial state `prelaunch`.
pub fn channel(start_paused: bool) -> std::io::Result<(ControlClient, ControlPort)> {
    let wake = Arc::new(EventFd::new(EFD_NONBLOCK)?);
    let (tx, rx) = mpsc::channel();
    Ok((
        ControlClient {
            tx,
            wake: wake.clone(),
        },
        ControlPort {
            rx,
            wake,
            state: if start_paused {
                RunState::Prelaunch
            } else {
                RunState::Running
            },
            publish: None,
        },
    ))
}

impl ControlPort {
    /// Where lifecycle events go from now on.
    pub fn set_publisher(&mut self, publish: EventPublisher) {
        self.publish = Some(publish);
    }

    pub fn publish(&self, ev: LifecycleEvent) {
        if let Some(p) = &self.publish {
            p(ev);
        }
    }

    /// The eventfd that becomes readable when requests are queued.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// Takes the next queued request.
    pub fn next(&self) -> Option<PendingRequest> {
        self.rx.try_recv().ok().map(|e| PendingRequest {
            request: e.request,
            reply: e.reply,
        })
    }

    /// Clears the wake-up counter (before draining with [`ControlPort::next`]).
    pub fn clear_wake(&self) {
        let _ = self.wake.read();
    }
}
