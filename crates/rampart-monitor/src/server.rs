//! The monitor thread: accepts connections on every monitor's transport, runs their sessions,
//! and broadcasts events. One epoll loop, non-blocking sockets, bounded buffers: a client that
//! floods is read no faster than it reads its replies, and one that stops reading is
//! disconnected once its backlog passes a limit — neither stalls the VM or other clients.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use rampart_config::control::LifecycleEvent;
use rampart_config::MonitorMode;
use tracing::{debug, info, warn};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::dispatch::{Dispatcher, Peer};
use crate::framing::Splitter;
use crate::hmp;
use crate::qmp::{event_json, QmpSession};
use crate::readline::LineEditor;

/// Stop reading a client whose unsent output passes this many bytes...
const HIGH_WATER: usize = 256 * 1024;
/// ...and disconnect it when events alone push it past this many.
const HARD_LIMIT: usize = 4 * 1024 * 1024;
/// Bytes read from one client per wake-up (level-triggered epoll gives others their turn).
const READ_CHUNK: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("monitor event loop: {0}")]
    Epoll(io::Error),
    #[error("cannot start the monitor thread: {0}")]
    Thread(io::Error),
}

/// Where a monitor's clients come from.
pub enum Transport {
    /// A listening UNIX socket (bound safely by the caller, which also removes it at exit);
    /// `initial` is a client already accepted (`wait=on`).
    Unix {
        listener: UnixListener,
        initial: Option<UnixStream>,
    },
    /// Standard input and output.
    Stdio,
}

/// One monitor to serve.
pub struct MonitorSpec {
    /// The chardev id (labels audit lines).
    pub id: String,
    pub mode: MonitorMode,
    pub pretty: bool,
    pub transport: Transport,
    /// HMP on a terminal in raw mode: the monitor edits the line ([`crate::readline`]).
    pub line_editing: bool,
}

/// The VMM's end of the event broadcast.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<(LifecycleEvent, SystemTime)>,
    wake: Arc<EventFd>,
}

impl EventSink {
    /// Broadcasts `ev` to every negotiated QMP client (stamped now).
    pub fn send(&self, ev: LifecycleEvent) {
        if self.tx.send((ev, SystemTime::now())).is_ok() {
            let _ = self.wake.write(1);
        }
    }
}

/// The running monitor thread.
pub struct MonitorServer {
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl MonitorServer {
    /// Starts the thread serving `specs` with `dispatcher`.
    pub fn start(
        specs: Vec<MonitorSpec>,
        dispatcher: Dispatcher,
    ) -> Result<(MonitorServer, EventSink), MonitorError> {
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(MonitorError::Epoll)?);
        let wake = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(MonitorError::Epoll)?);
        let (tx, rx) = mpsc::channel();
        let epoll = Epoll::new().map_err(MonitorError::Epoll)?;
        let mut state = State {
            epoll,
            mons: Vec::new(),
            events: rx,
            dispatcher,
        };
        add(&state.epoll, stop.as_raw_fd(), TOKEN_STOP, EventSet::IN)
            .map_err(MonitorError::Epoll)?;
        add(&state.epoll, wake.as_raw_fd(), TOKEN_EVENTS, EventSet::IN)
            .map_err(MonitorError::Epoll)?;
        for (i, spec) in specs.into_iter().enumerate() {
            state.add_monitor(i, spec).map_err(MonitorError::Epoll)?;
        }
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || state.run(&stop2))
            .map_err(MonitorError::Thread)?;
        Ok((
            MonitorServer {
                stop,
                thread: Some(thread),
            },
            EventSink { tx, wake },
        ))
    }

    /// Sends pending events and replies (waiting at most a second per client), then stops.
    pub fn shutdown(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MonitorServer {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

const TOKEN_STOP: u64 = 0;
const TOKEN_EVENTS: u64 = 1;

fn listener_token(i: usize) -> u64 {
    2 + 2 * i as u64
}

fn conn_token(i: usize) -> u64 {
    3 + 2 * i as u64
}

fn add(epoll: &Epoll, fd: RawFd, token: u64, set: EventSet) -> io::Result<()> {
    epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(set, token))
}

fn del(epoll: &Epoll, fd: RawFd) {
    let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
}

enum ConnIo {
    Unix(UnixStream),
    Stdio,
}

enum Session {
    Qmp(QmpSession, Splitter),
    Hmp {
        line: Vec<u8>,
        overflow: bool,
        editor: Option<LineEditor>,
    },
}

struct Conn {
    io: ConnIo,
    session: Session,
    out: Vec<u8>,
    peer: Peer,
    reading: bool,
    /// No more input will come (end of stdin, or stdin cannot be polled).
    eof: bool,
    /// The fd registered with epoll and the interest set it has.
    registered: Option<EventSet>,
}

impl Conn {
    fn read_fd(&self) -> RawFd {
        match &self.io {
            ConnIo::Unix(s) => s.as_raw_fd(),
            ConnIo::Stdio => libc::STDIN_FILENO,
        }
    }

    fn wanted(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.reading {
            set |= EventSet::IN;
        }
        if !self.out.is_empty() && matches!(self.io, ConnIo::Unix(_)) {
            set |= EventSet::OUT;
        }
        set
    }

    /// Writes what the peer takes now; false if the connection is broken.
    fn flush(&mut self) -> bool {
        while !self.out.is_empty() {
            let r = match &mut self.io {
                ConnIo::Unix(s) => s.write(&self.out),
                ConnIo::Stdio => io::stdout().write(&self.out),
            };
            match r {
                Ok(0) => return false,
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        if matches!(self.io, ConnIo::Stdio) {
            let _ = io::stdout().flush();
        }
        true
    }

    fn event(&mut self, ev: &serde_json::Value) {
        if let Session::Qmp(s, _) = &self.session {
            if let Some(bytes) = s.event(ev) {
                self.out.extend_from_slice(&bytes);
            }
        }
    }
}

struct Mon {
    id: String,
    mode: MonitorMode,
    pretty: bool,
    line_editing: bool,
    listener: Option<UnixListener>,
    stdio: bool,
    conn: Option<Conn>,
}

struct State {
    epoll: Epoll,
    mons: Vec<Mon>,
    events: mpsc::Receiver<(LifecycleEvent, SystemTime)>,
    dispatcher: Dispatcher,
}

/// The peer's credentials (SO_PEERCRED).
fn peer_cred(s: &UnixStream) -> Option<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes and `len` holds the buffer's size.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(cred)
}

impl State {
    fn add_monitor(&mut self, i: usize, spec: MonitorSpec) -> io::Result<()> {
        let mut mon = Mon {
            id: spec.id,
            mode: spec.mode,
            pretty: spec.pretty,
            line_editing: spec.line_editing,
            listener: None,
            stdio: false,
            conn: None,
        };
        let initial = match spec.transport {
            Transport::Unix { listener, initial } => {
                listener.set_nonblocking(true)?;
                mon.listener = Some(listener);
                initial.map(ConnIo::Unix)
            }
            Transport::Stdio => {
                mon.stdio = true;
                Some(ConnIo::Stdio)
            }
        };
        self.mons.push(mon);
        match initial {
            Some(io) => self.connect(i, io),
            None => self.listen(i),
        }
        Ok(())
    }

    fn listen(&mut self, i: usize) {
        if let Some(l) = &self.mons[i].listener {
            if let Err(e) = add(&self.epoll, l.as_raw_fd(), listener_token(i), EventSet::IN) {
                warn!(monitor = %self.mons[i].id, "cannot poll the monitor socket: {e}");
            }
        }
    }

    fn connect(&mut self, i: usize, io: ConnIo) {
        let mon = &self.mons[i];
        let mut peer = Peer {
            monitor: mon.id.clone(),
            transport: "stdio",
            pid: None,
            uid: None,
            gid: None,
        };
        if let ConnIo::Unix(s) = &io {
            let _ = s.set_nonblocking(true);
            peer.transport = "unix";
            if let Some(c) = peer_cred(s) {
                peer.pid = Some(c.pid);
                peer.uid = Some(c.uid);
                peer.gid = Some(c.gid);
            }
        }
        info!(peer = %peer, "monitor client connected");
        let (session, greeting) = match mon.mode {
            MonitorMode::Control => {
                let s = QmpSession::new(mon.pretty);
                let g = s.greeting(&self.dispatcher);
                (Session::Qmp(s, Splitter::default()), g)
            }
            MonitorMode::Readline => (
                Session::Hmp {
                    line: Vec::new(),
                    overflow: false,
                    editor: mon
                        .line_editing
                        .then(|| LineEditor::new(hmp::PROMPT, hmp::MAX_LINE)),
                },
                format!("{}{}", hmp::banner(&self.dispatcher), hmp::PROMPT).into_bytes(),
            ),
        };
        let mut conn = Conn {
            io,
            session,
            out: greeting,
            peer,
            reading: true,
            eof: false,
            registered: None,
        };
        if !conn.flush() {
            info!(monitor = %self.mons[i].id, "monitor client left before the greeting");
            self.listen(i);
            return;
        }
        self.mons[i].conn = Some(conn);
        self.update(i);
    }

    /// Re-registers connection `i` with the interest set it needs now.
    fn update(&mut self, i: usize) {
        let Mon { id, conn, .. } = &mut self.mons[i];
        let Some(conn) = conn.as_mut() else {
            return;
        };
        let want = conn.wanted();
        if conn.registered == Some(want) {
            return;
        }
        let fd = conn.read_fd();
        let ev = EpollEvent::new(want, conn_token(i));
        let r = match conn.registered {
            None => self.epoll.ctl(ControlOperation::Add, fd, ev),
            Some(_) => self.epoll.ctl(ControlOperation::Modify, fd, ev),
        };
        match r {
            Ok(()) => conn.registered = Some(want),
            Err(e) => {
                // stdin that is a file or /dev/null cannot be polled: no input then.
                debug!(monitor = %id, "monitor input is not pollable: {e}");
                conn.eof = true;
                conn.reading = false;
            }
        }
    }

    fn disconnect(&mut self, i: usize) {
        if let Some(conn) = self.mons[i].conn.take() {
            if conn.registered.is_some() {
                del(&self.epoll, conn.read_fd());
            }
            info!(peer = %conn.peer, "monitor client disconnected");
        }
        self.listen(i);
    }

    fn accept(&mut self, i: usize) {
        let accepted = match &self.mons[i].listener {
            Some(l) => l.accept(),
            None => return,
        };
        match accepted {
            Ok((stream, _)) => {
                if let Some(l) = &self.mons[i].listener {
                    // One client at a time, as QEMU: others wait in the backlog.
                    del(&self.epoll, l.as_raw_fd());
                }
                self.connect(i, ConnIo::Unix(stream));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => warn!(monitor = %self.mons[i].id, "accept: {e}"),
        }
    }

    /// Sends every pending event to every negotiated QMP client (and to `current`, a
    /// connection taken out of its slot while it runs a command).
    fn broadcast(&mut self, mut current: Option<&mut Conn>) {
        while let Ok((ev, time)) = self.events.try_recv() {
            let json = event_json(&ev, time);
            for m in &mut self.mons {
                if let Some(c) = m.conn.as_mut() {
                    c.event(&json);
                }
            }
            if let Some(c) = current.as_deref_mut() {
                c.event(&json);
            }
        }
    }

    fn readable(&mut self, i: usize) {
        let Some(mut conn) = self.mons[i].conn.take() else {
            return;
        };
        let mut buf = [0u8; READ_CHUNK];
        let r = match &mut conn.io {
            ConnIo::Unix(s) => s.read(&mut buf),
            ConnIo::Stdio => io::stdin().lock().read(&mut buf),
        };
        let n = match r {
            Ok(0) => {
                self.mons[i].conn = Some(conn);
                if self.mons[i].stdio {
                    // End of standard input: keep writing events, stop reading.
                    let c = self.mons[i].conn.as_mut().expect("just put back");
                    c.eof = true;
                    c.reading = false;
                    self.update(i);
                } else {
                    self.disconnect(i);
                }
                return;
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                self.mons[i].conn = Some(conn);
                return;
            }
            Err(e) => {
                debug!(peer = %conn.peer, "monitor read: {e}");
                self.mons[i].conn = Some(conn);
                self.disconnect(i);
                return;
            }
        };
        self.process(&mut conn, &buf[..n]);
        self.mons[i].conn = Some(conn);
        self.after_output(i);
    }

    fn process(&mut self, conn: &mut Conn, bytes: &[u8]) {
        match &mut conn.session {
            Session::Qmp(_, splitter) => {
                let mut frames = Vec::new();
                splitter.feed(bytes, &mut frames);
                for frame in frames {
                    let Session::Qmp(session, _) = &mut conn.session else {
                        unreachable!()
                    };
                    let reply = session.handle(frame, &mut self.dispatcher, &conn.peer);
                    self.broadcast(Some(conn));
                    conn.out.extend_from_slice(&reply);
                }
            }
            Session::Hmp {
                editor: Some(ed), ..
            } => {
                let (echo, lines) = ed.feed_all(bytes);
                conn.out.extend_from_slice(&echo);
                for text in lines {
                    let out = hmp::run_line(&mut self.dispatcher, &conn.peer, &text);
                    conn.out.extend_from_slice(out.as_bytes());
                    conn.out.extend_from_slice(hmp::PROMPT.as_bytes());
                }
            }
            Session::Hmp { .. } => {
                for &b in bytes {
                    let Session::Hmp { line, overflow, .. } = &mut conn.session else {
                        unreachable!()
                    };
                    match b {
                        b'\n' => {
                            let text = String::from_utf8_lossy(line).into_owned();
                            let too_long = std::mem::take(overflow);
                            line.clear();
                            let out = if too_long {
                                format!(
                                    "Error: command line longer than {} bytes\r\n",
                                    hmp::MAX_LINE
                                )
                            } else {
                                hmp::run_line(&mut self.dispatcher, &conn.peer, &text)
                            };
                            conn.out.extend_from_slice(out.as_bytes());
                            conn.out.extend_from_slice(hmp::PROMPT.as_bytes());
                        }
                        b'\r' => {}
                        0x08 | 0x7f => {
                            line.pop();
                        }
                        _ if line.len() >= hmp::MAX_LINE => *overflow = true,
                        _ => line.push(b),
                    }
                }
            }
        }
    }

    /// Writes what can be written and applies the backlog limits to connection `i`.
    fn after_output(&mut self, i: usize) {
        let Some(conn) = self.mons[i].conn.as_mut() else {
            return;
        };
        if !conn.flush() {
            self.disconnect(i);
            return;
        }
        if conn.out.len() > HARD_LIMIT {
            warn!(peer = %conn.peer, backlog = conn.out.len(), "monitor client does not read: disconnected");
            self.disconnect(i);
            return;
        }
        conn.reading = !conn.eof && conn.out.len() < HIGH_WATER;
        self.update(i);
    }

    fn run(mut self, stop: &EventFd) {
        let mut events = vec![EpollEvent::default(); 16];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("monitor event loop failed: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_STOP => {
                        let _ = stop.read();
                        self.finish();
                        return;
                    }
                    TOKEN_EVENTS => {
                        self.broadcast(None);
                        for i in 0..self.mons.len() {
                            self.after_output(i);
                        }
                    }
                    t if t % 2 == 0 => self.accept(((t - 2) / 2) as usize),
                    t => {
                        let i = ((t - 3) / 2) as usize;
                        let set = ev.event_set();
                        if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
                            self.readable(i);
                        } else {
                            self.after_output(i);
                        }
                    }
                }
            }
        }
    }

    /// Delivers the last events and replies before the process exits.
    fn finish(&mut self) {
        self.broadcast(None);
        for m in &mut self.mons {
            if let Some(c) = m.conn.as_mut() {
                if let ConnIo::Unix(s) = &c.io {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                }
                let _ = c.flush();
            }
        }
    }
}
