//! `-sandbox` and the per-thread seccomp filters, with the `kvm` test guests (instant to boot;
//! the Linux boot in `linux_monitor.rs` checks the `tcg` threads): every thread of a running
//! rampart is filtered, a forbidden system call ends rampart with a line naming it and the
//! thread, and `-sandbox off` leaves the threads unfiltered with a warning.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use rampart_testguest::{Program, SPIN_LINE};

const LIMIT: Duration = Duration::from_secs(30);

/// A `kvm` guest that spins, with a virtio device (an I/O thread), a QMP socket (the monitor
/// thread) and an audit log (its writer thread).
fn spinning_guest(dir: &Scratch) -> Command {
    require_kvm();
    let mut c = rampart();
    c.args([
        "-accel",
        "kvm",
        "-m",
        "64",
        "-smp",
        "2",
        "-nographic",
        "-kernel",
    ])
    .arg(test_guest(dir, Program::Spin))
    .args(["-device", "virtio-rng-pci", "-qmp"])
    .arg(format!(
        "unix:{},server=on,wait=off",
        dir.path("qmp.sock").display()
    ))
    .arg("-audit")
    .arg(format!("file={}", dir.path("audit.log").display()))
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    c
}

#[test]
fn every_thread_of_a_kvm_vm_runs_under_its_seccomp_filter() {
    let dir = Scratch::new("seccomp-kvm");
    let mut child = spinning_guest(&dir).spawn().unwrap();
    let seen = read_until(&mut child, SPIN_LINE, LIMIT);
    assert!(seen.contains(SPIN_LINE), "{seen}");

    assert_every_thread_filtered(
        child.id(),
        &["rampart", "vcpu0", "vcpu1", "virtio0", "monitor", "audit"],
    );

    signal(&child, libc::SIGTERM);
    let r = wait_with_limit(child, LIMIT);
    assert_eq!(r.code, Some(0), "{r:?}");
}

#[test]
fn sandbox_off_leaves_threads_unfiltered_and_warns() {
    let dir = Scratch::new("seccomp-off");
    let mut child = spinning_guest(&dir)
        .args(["-sandbox", "off"])
        .spawn()
        .unwrap();
    let seen = read_until(&mut child, SPIN_LINE, LIMIT);
    assert!(seen.contains(SPIN_LINE), "{seen}");

    let threads = thread_seccomp_modes(child.id());

    signal(&child, libc::SIGTERM);
    let r = wait_with_limit(child, LIMIT);
    assert!(threads.len() >= 4, "{threads:?}");
    assert!(threads.iter().all(|(_, m)| m == "0"), "{threads:?}");
    assert!(
        r.stderr.contains("-sandbox off: no seccomp filters"),
        "{r:?}"
    );
    assert_eq!(r.code, Some(0), "{r:?}");
}

#[test]
fn a_forbidden_system_call_on_any_thread_is_fatal_and_named() {
    // Debug builds only: the fault injection does not exist in release builds.
    for (role, thread) in [
        ("vcpu-kvm", "vcpu"),
        ("virtio-io", "virtio0"),
        ("monitor", "monitor"),
        ("vmm", "main"),
    ] {
        let dir = Scratch::new("seccomp-violation");
        let mut cmd = spinning_guest(&dir);
        cmd.env("RAMPART_SECCOMP_SELFTEST", role);

        let r = wait_with_limit(cmd.spawn().unwrap(), LIMIT);

        assert_eq!(r.code, Some(128 + libc::SIGSYS), "{role}: {r:?}");
        let line = r
            .stderr
            .lines()
            .find(|l| l.starts_with("rampart: seccomp: thread '"))
            .unwrap_or_else(|| panic!("{role}: no violation line: {r:?}"));
        assert!(line.contains(&format!("thread '{thread}")), "{line}");
        assert!(line.contains(&format!("(role {role})")), "{line}");
        assert!(
            line.contains("forbidden system call: 59 (execve)"),
            "{line}"
        );
    }
}

#[test]
fn sandbox_argument_errors_name_the_culprit() {
    for (arg, culprit) in [
        ("on,spawn=maybe", "'maybe'"),
        ("on,fork=deny", "'fork'"),
        ("off,spawn=deny", "'spawn'"),
        ("sometimes", "'sometimes'"),
    ] {
        let mut c = rampart();
        c.args(["-sandbox", arg, "-kernel", "/nonexistent"]);

        let r = run_to_end(c, LIMIT);

        assert_eq!(r.code, Some(1), "{arg}: {r:?}");
        assert!(
            r.stderr.contains("-sandbox") && r.stderr.contains(culprit),
            "{arg}: {r:?}"
        );
    }
}
