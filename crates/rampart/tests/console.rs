//! The serial console's host side: Ctrl-A x on a terminal (raw mode, restored at exit), and the
//! serial port on a UNIX socket; and the HMP's line editing on a terminal (`-monitor stdio`).

mod common;

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use rampart_testguest::{Program, SPIN_LINE};

const LIMIT: Duration = Duration::from_secs(30);

/// A pseudo-terminal pair (master, slave).
fn openpty() -> (std::fs::File, OwnedFd) {
    let mut master = -1;
    let mut slave = -1;
    // SAFETY: openpty fills two descriptors we then own; null name/termios/winsize are allowed.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are fresh and owned by nobody else.
    unsafe {
        (
            std::fs::File::from_raw_fd(master),
            OwnedFd::from_raw_fd(slave),
        )
    }
}

fn termios_of(fd: &OwnedFd) -> libc::termios {
    use std::os::fd::AsRawFd;
    // SAFETY: termios is plain data filled by tcgetattr on a descriptor we own.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) }, 0);
    t
}

#[test]
fn ctrl_a_x_on_a_terminal_quits_and_restores_the_terminal() {
    require_kvm();
    let dir = Scratch::new("ctrlax");
    let (mut master, slave) = openpty();
    let before = termios_of(&slave);
    let mut child = rampart()
        .args(["-accel", "kvm", "-m", "64", "-nographic", "-kernel"])
        .arg(test_guest(&dir, Program::Spin))
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the guest's line on the terminal, then type Ctrl-A x.
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains(SPIN_LINE.trim_end()) {
        assert!(
            start.elapsed() < LIMIT,
            "no guest output: {:?}",
            String::from_utf8_lossy(&seen)
        );
        let n = master.read(&mut buf).unwrap();
        seen.extend_from_slice(&buf[..n]);
    }
    let raw = termios_of(&slave);
    assert_eq!(
        raw.c_lflag & libc::ICANON,
        0,
        "the terminal is not in raw mode"
    );
    master.write_all(b"\x01x").unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < LIMIT, "rampart did not quit on Ctrl-A x");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
    let after = termios_of(&slave);
    assert_eq!(
        after.c_lflag, before.c_lflag,
        "terminal local modes not restored"
    );
    assert_eq!(
        after.c_iflag, before.c_iflag,
        "terminal input modes not restored"
    );
}

#[test]
fn serial_on_a_unix_socket_reaches_the_client_and_the_socket_is_removed() {
    require_kvm();
    let dir = Scratch::new("serialsock");
    let sock = dir.path("serial.sock");
    let child = rampart()
        .args(["-accel", "kvm", "-m", "64", "-nographic", "-kernel"])
        .arg(test_guest(&dir, Program::Spin))
        .arg("-serial")
        .arg(format!("unix:{},server=on,wait=on", sock.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // wait=on: the guest does not start before a client connects.
    let start = Instant::now();
    let mut client = loop {
        if let Ok(c) = UnixStream::connect(&sock) {
            break c;
        }
        assert!(start.elapsed() < LIMIT, "the serial socket never appeared");
        std::thread::sleep(Duration::from_millis(10));
    };
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    client.set_read_timeout(Some(LIMIT)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&got).contains(SPIN_LINE) {
        let n = client.read(&mut buf).unwrap();
        assert!(n > 0, "socket closed early");
        got.extend_from_slice(&buf[..n]);
    }
    signal(&child, libc::SIGTERM);
    let r = wait_with_limit(child, LIMIT);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(!sock.exists(), "the socket file was left behind");
}

#[test]
fn serial_socket_refuses_to_replace_a_regular_file() {
    let dir = Scratch::new("serialfile2");
    let precious = dir.file("precious", b"keep me");
    let mut cmd = rampart();
    cmd.args(["-accel", "kvm", "-m", "64", "-nographic", "-kernel"])
        .arg(test_guest(&dir, Program::Hello))
        .arg("-serial")
        .arg(format!("unix:{},server=on,wait=off", precious.display()));
    let r = run_to_end(cmd, LIMIT);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("not a socket"), "{r:?}");
    assert_eq!(std::fs::read(&precious).unwrap(), b"keep me");
}

/// Reads from `master` until `needle` appears (or panics after [`LIMIT`]); returns all read.
fn read_pty_until(master: &mut std::fs::File, needle: &str, seen: &mut Vec<u8>) -> String {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(seen).contains(needle) {
        assert!(
            start.elapsed() < LIMIT,
            "waiting for {needle:?}: {:?}",
            String::from_utf8_lossy(seen)
        );
        let n = master.read(&mut buf).unwrap();
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(seen).into_owned();
    seen.clear();
    text
}

#[test]
fn hmp_on_a_terminal_edits_lines_with_history_and_restores_the_terminal() {
    require_kvm();
    let dir = Scratch::new("hmp-tty");
    let (mut master, slave) = openpty();
    let before = termios_of(&slave);
    let mut child = rampart()
        .args([
            "-accel", "kvm", "-m", "64", "-serial", "null", "-monitor", "stdio",
        ])
        .arg("-kernel")
        .arg(test_guest(&dir, Program::Spin))
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    read_pty_until(&mut master, "(qemu) ", &mut seen);
    let raw = termios_of(&slave);
    assert_eq!(
        raw.c_lflag & (libc::ICANON | libc::ECHO),
        0,
        "not in raw mode"
    );
    assert_ne!(raw.c_lflag & libc::ISIG, 0, "^C must still signal rampart");

    // Each edit redraws the line as "\r(qemu) ...": a command's fresh prompt is the one that
    // follows a newline.
    // "nfo status", Ctrl-A, "i": the insert lands at the start of the line.
    master.write_all(b"nfo status\x01i\r").unwrap();
    let out = read_pty_until(&mut master, "\n(qemu) ", &mut seen);
    assert!(out.contains("VM status: running"), "{out:?}");
    // A typo fixed with Left and Backspace; End; Enter.
    master.write_all(b"stpx\x7f\x1b[Do\x05\r").unwrap();
    let out = read_pty_until(&mut master, "\n(qemu) ", &mut seen);
    assert!(!out.contains("unknown command"), "{out:?}");
    // Up twice recalls "info status"; the VM is now paused.
    master.write_all(b"\x1b[A\x1b[A\r").unwrap();
    let out = read_pty_until(&mut master, "\n(qemu) ", &mut seen);
    assert!(out.contains("VM status: paused"), "{out:?}");
    // Ctrl-U drops a half-typed line.
    master.write_all(b"garbage\x15quit\r").unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < LIMIT, "rampart did not quit");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
    let after = termios_of(&slave);
    assert_eq!(after.c_lflag, before.c_lflag, "local modes not restored");
    assert_eq!(after.c_iflag, before.c_iflag, "input modes not restored");
}
