//! A small harness for tests that run the `rampart` binary.
#![allow(dead_code)]

pub mod linux;
pub mod netns;
pub mod pki;
pub mod qmp;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A scratch directory removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rampart-test-{}-{}-{}",
            tag,
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `bytes` to `name` and returns its path.
    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).expect("write scratch file");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes the assembled test guest `program` into `dir` and returns its path.
pub fn test_guest(dir: &Scratch, program: rampart_testguest::Program) -> PathBuf {
    let bytes = rampart_testguest::build(program).expect("assemble test guest");
    dir.file(&format!("{program:?}.elf"), &bytes)
}

pub fn rampart() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rampart"));
    c.stdin(Stdio::null());
    c.env("RAMPART_LOG", "info");
    c
}

/// Asserts that /dev/kvm exists: the `kvm` tests must fail loudly where it does not.
pub fn require_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "this test needs /dev/kvm (hardware KVM or kvm-pvm)"
    );
}

/// The result of a finished run.
#[derive(Debug)]
pub struct Finished {
    pub code: Option<i32>,
    /// The signal that ended the process, if one did.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion with a time limit; kills it (and fails) on timeout.
pub fn run_to_end(mut cmd: Command, limit: Duration) -> Finished {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn rampart");
    wait_with_limit(child, limit)
}

pub fn wait_with_limit(mut child: Child, limit: Duration) -> Finished {
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = t_out.join().unwrap_or_default();
            let stderr = t_err.join().unwrap_or_default();
            panic!("rampart did not finish within {limit:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Finished {
        code: status.code(),
        signal: std::os::unix::process::ExitStatusExt::signal(&status),
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// Sends `sig` to the child.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill() on the pid of our own, not yet reaped child.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0, "kill({}, {sig})", child.id());
}

/// Reads the child's stdout until `needle` appears (or the limit passes); returns what was read.
pub fn read_until(child: &mut Child, needle: &str, limit: Duration) -> String {
    let out = child.stdout.as_mut().expect("stdout piped");
    let fd = std::os::fd::AsRawFd::as_raw_fd(out);
    // SAFETY: fcntl on a descriptor we own, setting O_NONBLOCK.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    let start = Instant::now();
    let mut acc = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                acc.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&acc).contains(needle) {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("reading rampart's stdout: {e}"),
        }
    }
    String::from_utf8_lossy(&acc).into_owned()
}

/// Each thread of process `pid`: its name and its `Seccomp:` mode from
/// `/proc/PID/task/TID/status` (0 none, 2 filter).
pub fn thread_seccomp_modes(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let dir = format!("/proc/{pid}/task");
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
        let task = entry.unwrap().path();
        // A thread may end between the listing and the read: skip it.
        let (Ok(comm), Ok(status)) = (
            std::fs::read_to_string(task.join("comm")),
            std::fs::read_to_string(task.join("status")),
        ) else {
            continue;
        };
        let mode = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .map(|v| v.trim().to_string())
            .unwrap_or_default();
        out.push((comm.trim().to_string(), mode));
    }
    out.sort();
    out
}

/// Asserts that every thread of `pid` runs under a seccomp filter and that the threads named in
/// `expected` (by name prefix) exist.
pub fn assert_every_thread_filtered(pid: u32, expected: &[&str]) {
    let threads = thread_seccomp_modes(pid);
    for want in expected {
        assert!(
            threads.iter().any(|(n, _)| n.starts_with(want)),
            "no thread named {want}*: {threads:?}"
        );
    }
    assert!(
        threads.iter().all(|(_, m)| m == "2"),
        "a thread runs without its seccomp filter: {threads:?}"
    );
}

/// Makes the child inherit each descriptor as the given number (close-on-exec clear), as a
/// management tool passes descriptors for `-add-fd`.
pub fn pass_fds(cmd: &mut Command, fds: Vec<(std::os::fd::OwnedFd, i32)>) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls fcntl/dup2,
    // which are async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // First move every source above the targets, so that no dup2 overwrites a source
            // and none is a no-op (dup2(fd, fd) would leave close-on-exec set).
            let mut moved = [0i32; 16];
            for (i, (fd, _)) in fds.iter().enumerate().take(16) {
                let r = libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 1000);
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                moved[i] = r;
            }
            for (i, (_, target)) in fds.iter().enumerate().take(16) {
                if libc::dup2(moved[i], *target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// The number of open descriptors of process `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .count()
}
