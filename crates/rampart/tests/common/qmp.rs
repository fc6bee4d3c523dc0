//! A minimal QMP/HMP client for tests (newline-framed, as rampart and QEMU send).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Connects to `path`, retrying until the socket exists (up to `limit`).
pub fn connect(path: &Path, limit: Duration) -> UnixStream {
    let start = Instant::now();
    loop {
        match UnixStream::connect(path) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                return s;
            }
            Err(e) if start.elapsed() > limit => panic!("connect {}: {e}", path.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

pub struct Qmp {
    pub reader: BufReader<UnixStream>,
    pub writer: UnixStream,
    /// Events read while waiting for replies.
    pub events: Vec<Value>,
}

impl Qmp {
    /// Connects and reads the greeting (returned), without negotiating.
    pub fn connect_raw(path: &Path) -> (Qmp, Value) {
        let s = connect(path, Duration::from_secs(10));
        let mut q = Qmp {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
            events: Vec::new(),
        };
        let greeting = q.read();
        (q, greeting)
    }

    /// Connects and negotiates capabilities.
    pub fn connect(path: &Path) -> Qmp {
        let (mut q, g) = Qmp::connect_raw(path);
        assert!(g.get("QMP").is_some(), "not a greeting: {g}");
        let r = q.cmd(r#"{"execute":"qmp_capabilities"}"#);
        assert_eq!(r["return"], serde_json::json!({}), "{r}");
        q
    }

    /// Reads one message.
    pub fn read(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read from QMP");
        assert!(n > 0, "QMP connection closed");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"))
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write to QMP");
    }

    /// Sends `text` and returns the reply (events met on the way are kept in `events`).
    pub fn cmd(&mut self, text: &str) -> Value {
        self.send_raw(text.as_bytes());
        self.send_raw(b"\n");
        self.reply()
    }

    /// The next reply (not an event).
    pub fn reply(&mut self) -> Value {
        loop {
            let v = self.read();
            if v.get("event").is_some() {
                self.events.push(v);
            } else {
                return v;
            }
        }
    }

    /// Runs `execute` and returns its `return` value (panics on an error reply).
    pub fn exec(&mut self, name: &str) -> Value {
        let r = self.cmd(&format!(r#"{{"execute":"{name}"}}"#));
        r.get("return")
            .unwrap_or_else(|| panic!("{name} failed: {r}"))
            .clone()
    }

    /// Waits for event `name` (already received or arriving).
    pub fn event(&mut self, name: &str) -> Value {
        if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
            return self.events.remove(i);
        }
        loop {
            let v = self.read();
            if v["event"] == name {
                return v;
            }
            if v.get("event").is_some() {
                self.events.push(v);
            }
        }
    }
}

/// An HMP connection.
pub struct Hmp {
    pub stream: UnixStream,
}

impl Hmp {
    /// Connects and returns the banner (up to and including the first prompt).
    pub fn connect(path: &Path) -> (Hmp, String) {
        let s = connect(path, Duration::from_secs(10));
        let mut h = Hmp { stream: s };
        let banner = h.until_prompt();
        (h, banner)
    }

    fn until_prompt(&mut self) -> String {
        let mut acc = Vec::new();
        let mut b = [0u8; 1];
        while !acc.ends_with(b"(qemu) ") {
            let n = self.stream.read(&mut b).expect("read from HMP");
            assert!(n > 0, "HMP closed; got {:?}", String::from_utf8_lossy(&acc));
            acc.push(b[0]);
        }
        String::from_utf8_lossy(&acc).into_owned()
    }

    /// Runs a command line; returns its output (without the next prompt).
    pub fn run(&mut self, line: &str) -> String {
        self.stream.write_all(line.as_bytes()).unwrap();
        self.stream.write_all(b"\n").unwrap();
        let out = self.until_prompt();
        out.trim_end_matches("(qemu) ").to_string()
    }
}

impl Qmp {
    /// Sends `text` (plus a newline) in one message carrying `fds` (SCM_RIGHTS) and returns
    /// the reply.
    pub fn cmd_fds(&mut self, text: &str, fds: &[std::os::fd::RawFd]) -> Value {
        send_with_fds(&self.writer, format!("{text}\n").as_bytes(), fds);
        self.reply()
    }
}

/// Sends `bytes` in one `sendmsg` with `fds` as SCM_RIGHTS ancillary data.
pub fn send_with_fds(s: &UnixStream, bytes: &[u8], fds: &[std::os::fd::RawFd]) {
    use std::os::fd::AsRawFd;
    let fd_bytes = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: plain data; filled in below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: the control buffer has room for one header with `fds`.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(fd_bytes) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(c),
                fd_bytes as usize,
            );
        }
    }
    // SAFETY: `msg` points at live buffers of the given sizes.
    let n = unsafe { libc::sendmsg(s.as_raw_fd(), &msg, 0) };
    assert_eq!(
        n,
        bytes.len() as isize,
        "sendmsg: {}",
        std::io::Error::last_os_error()
    );
}
