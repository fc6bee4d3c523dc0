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
