//! The monitor thread: accepts connections on every monitor's transport, runs their sessions,
//! and broadcasts events. One epoll loop, non-blocking sockets, bounded buffers: a client that
//! floods is read no faster than it reads its replies, and one that stops reading is
//! disconnected once its backlog passes a limit — neither stalls the VM or other clients.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use rampart_config::control::LifecycleEvent;
use rampart_config::MonitorMode;
use tracing::{debug, info, warn};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::conn::{peer_cred, Conn, ConnIo, Phase, Session};
use crate::dispatch::{Dispatcher, Peer};
use crate::framing::Splitter;
use crate::hmp;
use crate::qmp::{event_json, QmpSession};
use crate::readline::LineEditor;
use crate::tls::{Handshake, TlsStream};

/// Stop reading a client whose unsent output passes this many bytes...
const HIGH_WATER: usize = 256 * 1024;
/// ...and disconnect it when events alone push it past this many.
const HARD_LIMIT: usize = 4 * 1024 * 1024;
/// Bytes read from one client per wake-up (level-triggered epoll gives others their turn).
const READ_CHUNK: usize = 4096;
/// A TLS client that has not completed its handshake by then is dropped (it holds the
/// monitor's single client slot meanwhile, as a connected client does).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// A listening TCP socket; `tls` is absent only with `insecure=on` (the binary enforces
    /// that); `initial` is a client already accepted (`wait=on`).
    Tcp {
        listener: TcpListener,
        initial: Option<TcpStream>,
        tls: Option<Arc<rustls::ServerConfig>>,
    },
    /// Standard input and output.
    Stdio,
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    fn fd(&self) -> RawFd {
        match self {
            Listener::Unix(l) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        }
    }
}

/// A freshly accepted client, before its session starts.
enum Accepted {
    Unix(UnixStream),
    Tcp(TcpStream),
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
        let wake2 = wake.clone();
        let thread = std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || {
                rampart_sandbox::seccomp::enter(rampart_sandbox::seccomp::Role::Monitor);
                state.run(&stop2, &wake2)
            })
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

struct Mon {
    id: String,
    mode: MonitorMode,
    pretty: bool,
    line_editing: bool,
    listener: Option<Listener>,
    tls: Option<Arc<rustls::ServerConfig>>,
    stdio: bool,
    conn: Option<Conn>,
}

struct State {
    epoll: Epoll,
    mons: Vec<Mon>,
    events: mpsc::Receiver<(LifecycleEvent, SystemTime)>,
    dispatcher: Dispatcher,
}

impl State {
    fn add_monitor(&mut self, i: usize, spec: MonitorSpec) -> io::Result<()> {
        let mut mon = Mon {
            id: spec.id,
            mode: spec.mode,
            pretty: spec.pretty,
            line_editing: spec.line_editing,
            listener: None,
            tls: None,
            stdio: false,
            conn: None,
        };
        let initial = match spec.transport {
            Transport::Unix { listener, initial } => {
                listener.set_nonblocking(true)?;
                mon.listener = Some(Listener::Unix(listener));
                initial.map(Accepted::Unix)
            }
            Transport::Tcp {
                listener,
                initial,
                tls,
            } => {
                listener.set_nonblocking(true)?;
                mon.listener = Some(Listener::Tcp(listener));
                mon.tls = tls;
                initial.map(Accepted::Tcp)
            }
            Transport::Stdio => {
                mon.stdio = true;
                Some(Accepted::Stdio)
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
            if let Err(e) = add(&self.epoll, l.fd(), listener_token(i), EventSet::IN) {
                warn!(monitor = %self.mons[i].id, "cannot poll the monitor socket: {e}");
            }
        }
    }

    fn connect(&mut self, i: usize, accepted: Accepted) {
        let mon = &self.mons[i];
        let mut peer = Peer {
            monitor: mon.id.clone(),
            transport: "stdio",
            ..Peer::default()
        };
        let mut phase = Phase::Open;
        let io = match accepted {
            Accepted::Stdio => ConnIo::Stdio,
            Accepted::Unix(s) => {
                let _ = s.set_nonblocking(true);
                peer.transport = "unix";
                if let Some(c) = peer_cred(&s) {
                    peer.pid = Some(c.pid);
                    peer.uid = Some(c.uid);
                    peer.gid = Some(c.gid);
                }
                ConnIo::Unix(s)
            }
            Accepted::Tcp(s) => {
                let _ = s.set_nonblocking(true);
                // Replies are small and interactive: do not wait to coalesce them.
                let _ = s.set_nodelay(true);
                peer.address = s.peer_addr().ok().map(|a| a.to_string());
                match &mon.tls {
                    Some(config) => {
                        peer.transport = "tls";
                        match TlsStream::new(config.clone(), s) {
                            Ok(t) => {
                                phase = Phase::Handshake {
                                    deadline: Instant::now() + HANDSHAKE_TIMEOUT,
                                };
                                ConnIo::Tls(Box::new(t))
                            }
                            Err(e) => {
                                warn!(peer = %peer, "TLS session: {e}");
                                self.listen(i);
                                return;
                            }
                        }
                    }
                    None => {
                        peer.transport = "tcp";
                        warn!(peer = %peer, "INSECURE monitor client on TCP without TLS or authorization (insecure=on)");
                        ConnIo::Tcp(s)
                    }
                }
            }
        };
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
            phase,
            session,
            greeting,
            out: Vec::new(),
            peer,
            pending_fds: Vec::new(),
            reading: true,
            eof: false,
            registered: None,
        };
        if matches!(conn.phase, Phase::Open) {
            // No TLS: the peer is as identified as it will ever be.
            if self.dispatcher.admit(&conn.peer).is_err() {
                self.listen(i);
                return;
            }
            conn.out = std::mem::take(&mut conn.greeting);
            if !conn.flush() {
                info!(monitor = %self.mons[i].id, "monitor client left before the greeting");
                self.listen(i);
                return;
            }
        }
        self.mons[i].conn = Some(conn);
        self.update(i);
    }

    /// Advances connection `i`'s TLS handshake; once done, identifies and admits the peer
    /// and sends the greeting — or drops a peer that fails, having told it nothing.
    fn handshake(&mut self, i: usize) {
        let Some(conn) = self.mons[i].conn.as_mut() else {
            return;
        };
        let ConnIo::Tls(tls) = &mut conn.io else {
            return;
        };
        match tls.handshake() {
            Ok(Handshake::InProgress) => {
                self.update(i);
                return;
            }
            Ok(Handshake::Done) => {}
            Err(e) => {
                let why = format!("TLS handshake failed: {e}");
                info!(peer = %conn.peer, "monitor client refused: {why}");
                let peer = conn.peer.clone();
                self.dispatcher.audit_connection(&peer, Some(&why));
                self.disconnect(i);
                return;
            }
        }
        let identity = tls.peer_certificate().map(crate::dn::subject_dn);
        let protocol = tls.protocol();
        match identity {
            Some(Ok(dn)) => conn.peer.identity = Some(dn),
            Some(Err(e)) => {
                let why = format!("client certificate: {e}");
                let peer = conn.peer.clone();
                self.dispatcher.audit_connection(&peer, Some(&why));
                self.disconnect(i);
                return;
            }
            None => {}
        }
        debug!(peer = %conn.peer, protocol, "TLS handshake complete");
        let peer = conn.peer.clone();
        if self.dispatcher.admit(&peer).is_err() {
            if let Some(Conn {
                io: ConnIo::Tls(t), ..
            }) = self.mons[i].conn.as_mut()
            {
                t.close();
            }
            self.disconnect(i);
            return;
        }
        let conn = self.mons[i].conn.as_mut().expect("checked above");
        conn.phase = Phase::Open;
        conn.out = std::mem::take(&mut conn.greeting);
        // Input the client sent right behind its handshake is processed now.
        self.after_output(i);
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
            if matches!(conn.phase, Phase::Open) {
                info!(peer = %conn.peer, "monitor client disconnected");
            }
        }
        self.listen(i);
    }

    fn accept(&mut self, i: usize) {
        let accepted = match &self.mons[i].listener {
            Some(Listener::Unix(l)) => l.accept().map(|(s, _)| Accepted::Unix(s)),
            Some(Listener::Tcp(l)) => l.accept().map(|(s, _)| Accepted::Tcp(s)),
            None => return,
        };
        match accepted {
            Ok(stream) => {
                if let Some(l) = &self.mons[i].listener {
                    // One client at a time, as QEMU: others wait in the backlog.
                    del(&self.epoll, l.fd());
                }
                self.connect(i, stream);
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
        if matches!(
            self.mons[i].conn.as_ref().map(|c| &c.phase),
            Some(Phase::Handshake { .. })
        ) {
            self.handshake(i);
            return;
        }
        let Some(mut conn) = self.mons[i].conn.take() else {
            return;
        };
        let mut buf = [0u8; READ_CHUNK];
        let r = conn.read(&mut buf);
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
                    self.dispatcher
                        .pass_fds(std::mem::take(&mut conn.pending_fds));
                    let reply = session.handle(frame, &mut self.dispatcher, &conn.peer);
                    self.dispatcher.close_passed(&conn.peer);
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
                    self.dispatcher
                        .pass_fds(std::mem::take(&mut conn.pending_fds));
                    let out = hmp::run_line(&mut self.dispatcher, &conn.peer, &text);
                    self.dispatcher.close_passed(&conn.peer);
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
                                self.dispatcher
                                    .pass_fds(std::mem::take(&mut conn.pending_fds));
                                let out = hmp::run_line(&mut self.dispatcher, &conn.peer, &text);
                                self.dispatcher.close_passed(&conn.peer);
                                out
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
        if let (Phase::Handshake { .. }, ConnIo::Tls(t)) = (&conn.phase, &mut conn.io) {
            if t.push().is_err() {
                self.disconnect(i);
            } else {
                self.update(i);
            }
            return;
        }
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

    fn run(mut self, stop: &EventFd, wake: &EventFd) {
        let mut events = vec![EpollEvent::default(); 16];
        loop {
            let n = match self.epoll.wait(self.wait_timeout_ms(), &mut events) {
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
                        // Level-triggered: consume the wake-up, or epoll reports it forever.
                        let _ = wake.read();
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
            self.expire_handshakes();
            for i in 0..self.mons.len() {
                if self.mons[i].conn.as_ref().is_some_and(Conn::buffered_input) {
                    self.readable(i);
                }
            }
        }
    }

    /// How long epoll may sleep: not past a handshake deadline, not at all while decrypted
    /// input waits in a TLS connection.
    fn wait_timeout_ms(&self) -> i32 {
        let now = Instant::now();
        let mut timeout: Option<Duration> = None;
        for c in self.mons.iter().filter_map(|m| m.conn.as_ref()) {
            let t = match c.phase {
                _ if c.buffered_input() => Duration::ZERO,
                Phase::Handshake { deadline } => deadline.saturating_duration_since(now),
                Phase::Open => continue,
            };
            timeout = Some(timeout.map_or(t, |old| old.min(t)));
        }
        match timeout {
            None => -1,
            Some(t) => i32::try_from(t.as_millis() + 1).unwrap_or(i32::MAX),
        }
    }

    /// Drops clients whose TLS handshake has not completed in time.
    fn expire_handshakes(&mut self) {
        let now = Instant::now();
        for i in 0..self.mons.len() {
            let expired = matches!(
                self.mons[i].conn.as_ref().map(|c| &c.phase),
                Some(Phase::Handshake { deadline }) if *deadline <= now
            );
            if expired {
                let peer = self.mons[i].conn.as_ref().map(|c| c.peer.clone());
                if let Some(peer) = peer {
                    info!(peer = %peer, "monitor client refused: TLS handshake timed out");
                    self.dispatcher
                        .audit_connection(&peer, Some("TLS handshake timed out"));
                }
                self.disconnect(i);
            }
        }
    }

    /// Delivers the last events and replies before the process exits.
    fn finish(&mut self) {
        self.broadcast(None);
        for m in &mut self.mons {
            if let Some(c) = m.conn.as_mut() {
                c.set_final_flush_mode();
                let _ = c.flush();
                if let ConnIo::Tls(t) = &mut c.io {
                    t.close();
                }
            }
        }
    }
}
