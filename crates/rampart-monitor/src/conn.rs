//! One monitor connection: its transport (UNIX, TCP, TLS over TCP, stdio), its phase (TLS
//! handshake, then open), its session and its bounded output.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vmm_sys_util::epoll::EventSet;

use crate::dispatch::Peer;
use crate::fds::MAX_FDS_PER_MESSAGE;
use crate::framing::Splitter;
use crate::qmp::QmpSession;
use crate::readline::LineEditor;
use crate::tls::TlsStream;

/// Where a connection's bytes go.
pub(crate) enum ConnIo {
    Unix(UnixStream),
    /// TCP without TLS (`insecure=on`).
    Tcp(TcpStream),
    Tls(Box<TlsStream>),
    Stdio,
}

impl ConnIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ConnIo::Unix(s) => s.read(buf),
            ConnIo::Tcp(s) => s.read(buf),
            ConnIo::Tls(s) => s.read(buf),
            ConnIo::Stdio => io::stdin().lock().read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ConnIo::Unix(s) => s.write(buf),
            ConnIo::Tcp(s) => s.write(buf),
            ConnIo::Tls(s) => s.write(buf),
            ConnIo::Stdio => io::stdout().write(buf),
        }
    }
}

/// Where a connection is in its life.
pub(crate) enum Phase {
    /// TLS handshake under way; the connection is dropped if it is not done by `deadline`.
    /// The greeting waits in `Conn::greeting` until the peer is authenticated and admitted.
    Handshake {
        deadline: Instant,
    },
    Open,
}

pub(crate) enum Session {
    Qmp(QmpSession, Splitter),
    Hmp {
        line: Vec<u8>,
        overflow: bool,
        editor: Option<LineEditor>,
    },
}

pub(crate) struct Conn {
    pub io: ConnIo,
    pub phase: Phase,
    pub session: Session,
    /// The greeting, held back until the TLS handshake and authorization are done.
    pub greeting: Vec<u8>,
    pub out: Vec<u8>,
    pub peer: Peer,
    pub reading: bool,
    /// No more input will come (end of stdin, or stdin cannot be polled).
    pub eof: bool,
    /// The fd registered with epoll and the interest set it has.
    pub registered: Option<EventSet>,
    /// Descriptors received (SCM_RIGHTS, UNIX sockets only) for the next command; closed
    /// after it.
    pub pending_fds: Vec<OwnedFd>,
}

impl Conn {
    pub fn read_fd(&self) -> RawFd {
        match &self.io {
            ConnIo::Unix(s) => s.as_raw_fd(),
            ConnIo::Tcp(s) => s.as_raw_fd(),
            ConnIo::Tls(s) => s.sock.as_raw_fd(),
            ConnIo::Stdio => libc::STDIN_FILENO,
        }
    }

    pub fn wanted(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.reading || matches!(self.phase, Phase::Handshake { .. }) {
            set |= EventSet::IN;
        }
        let tls_pending = matches!(&self.io, ConnIo::Tls(t) if t.wants_write());
        if (!self.out.is_empty() && !matches!(self.io, ConnIo::Stdio)) || tls_pending {
            set |= EventSet::OUT;
        }
        set
    }

    /// Decrypted input waits in the TLS layer (the socket itself may have nothing left).
    pub fn buffered_input(&self) -> bool {
        self.reading
            && matches!(self.phase, Phase::Open)
            && matches!(&self.io, ConnIo::Tls(t) if t.has_buffered_input())
    }

    /// Reads input; on a UNIX socket the descriptors that come with it (SCM_RIGHTS) replace
    /// any still pending. Descriptors are accepted on no other transport.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let ConnIo::Unix(s) = &self.io else {
            return self.io.read(buf);
        };
        let mut fds = Vec::new();
        let n = recv_with_fds(s, buf, &mut fds)?;
        if !fds.is_empty() {
            if !self.pending_fds.is_empty() {
                tracing::debug!(peer = %self.peer, "new descriptors replace {} unused ones",
                    self.pending_fds.len());
            }
            tracing::debug!(peer = %self.peer, "received {} descriptor(s)", fds.len());
            self.pending_fds = fds;
        }
        Ok(n)
    }

    /// Writes what the peer takes now; false if the connection is broken.
    pub fn flush(&mut self) -> bool {
        while !self.out.is_empty() {
            match self.io.write(&self.out) {
                Ok(0) => return false,
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        match &mut self.io {
            ConnIo::Stdio => {
                let _ = io::stdout().flush();
                true
            }
            ConnIo::Tls(t) => t.push().is_ok(),
            _ => true,
        }
    }

    pub fn event(&mut self, ev: &serde_json::Value) {
        if !matches!(self.phase, Phase::Open) {
            return;
        }
        if let Session::Qmp(s, _) = &self.session {
            if let Some(bytes) = s.event(ev) {
                self.out.extend_from_slice(&bytes);
            }
        }
    }

    /// Makes the socket blocking with a write timeout, to deliver the last bytes at exit.
    pub fn set_final_flush_mode(&mut self) {
        let timeout = Some(std::time::Duration::from_secs(1));
        match &self.io {
            ConnIo::Unix(s) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_write_timeout(timeout);
            }
            ConnIo::Tcp(s) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_write_timeout(timeout);
            }
            ConnIo::Tls(t) => {
                let _ = t.sock.set_nonblocking(false);
                let _ = t.sock.set_write_timeout(timeout);
            }
            ConnIo::Stdio => {}
        }
    }
}

/// The peer's credentials (SO_PEERCRED).
pub(crate) fn peer_cred(s: &UnixStream) -> Option<libc::ucred> {
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

/// Reads from a UNIX-socket client, collecting the descriptors (`SCM_RIGHTS`) that come with
/// the bytes into `fds` (close-on-exec). At most [`MAX_FDS_PER_MESSAGE`] are accepted per
/// read: the kernel closes those that do not fit the ancillary buffer.
fn recv_with_fds(s: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    const FD_SIZE: u32 = std::mem::size_of::<libc::c_int>() as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(FD_SIZE * MAX_FDS_PER_MESSAGE as u32) } as usize;
    // u64 elements keep the buffer aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; zeroed is a valid empty header, filled in below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() * 8;
    // SAFETY: `msg` points at `iov` (over `buf`) and `control`, both valid for writes of the
    // lengths given, and all outlive the call.
    let n = unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `msg` was filled by recvmsg; CMSG_FIRSTHDR/NXTHDR stay inside msg_control.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` is a header inside `control` that the kernel wrote.
        let hdr = unsafe { &*cmsg };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN only computes a size.
            let header = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = (hdr.cmsg_len as usize).saturating_sub(header) / FD_SIZE as usize;
            // SAFETY: CMSG_DATA points at the header's payload, inside `control`.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<libc::c_int>();
            for i in 0..count {
                // SAFETY: the payload holds `count` ints (cmsg_len says so), maybe unaligned.
                let fd = unsafe { std::ptr::read_unaligned(data.add(i)) };
                // SAFETY: the kernel installed this descriptor for us; nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: as above; returns null after the last header.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        tracing::warn!(
            "a monitor client sent more than {MAX_FDS_PER_MESSAGE} descriptors in one message; \
             the kernel closed the excess"
        );
    }
    Ok(n as usize)
}
