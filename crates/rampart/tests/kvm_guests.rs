//! The `rampart` binary with `-accel kvm` and the assembled test guests: console output,
//! CMOS clock, unassigned MMIO, reset and power-off, signals, emulation failures.
//!
//! These need /dev/kvm (hardware KVM or kvm-pvm: the guests need no interrupts) and fail loudly
//! without it.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use rampart_testguest::{Program, HELLO_LINE, MMIO_UNASSIGNED_LINE, POWEROFF_LINE, SPIN_LINE};

const LIMIT: Duration = Duration::from_secs(30);

fn kvm_cmd(kernel: &std::path::Path) -> std::process::Command {
    require_kvm();
    let mut c = rampart();
    c.args(["-accel", "kvm", "-m", "64", "-nographic", "-kernel"]);
    c.arg(kernel);
    c
}

#[test]
fn hello_reaches_stdout_and_reset_exits_zero_with_no_reboot() {
    let dir = Scratch::new("hello");
    let mut cmd = kvm_cmd(&test_guest(&dir, Program::Hello));
    cmd.arg("-no-reboot");
    let r = run_to_end(cmd, LIMIT);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(r.stdout.matches(HELLO_LINE).count(), 1, "{r:?}");
    assert!(r.stderr.contains("-no-reboot"), "{r:?}");
}

#[test]
fn reset_without_no_reboot_boots_the_guest_again() {
    let dir = Scratch::new("reboot");
    let mut child = kvm_cmd(&test_guest(&dir, Program::Hello))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = read_until(&mut child, &HELLO_LINE.repeat(3), LIMIT);
    signal(&child, libc::SIGTERM);
    let r = wait_with_limit(child, LIMIT);
    assert!(seen.matches(HELLO_LINE).count() >= 3, "{seen}");
    assert_eq!(r.code, Some(0), "{r:?}");
}

#[test]
fn cmos_clock_shows_the_host_date() {
    let dir = Scratch::new("cmos");
    let mut cmd = kvm_cmd(&test_guest(&dir, Program::Cmos));
    cmd.arg("-no-reboot");
    let r = run_to_end(cmd, LIMIT);
    assert_eq!(r.code, Some(0), "{r:?}");
    let line = r
        .stdout
        .lines()
        .find(|l| l.contains("cmos "))
        .unwrap_or_else(|| panic!("no cmos line: {r:?}"));
    // The guest prints the BCD registers as-is: YYYY-MM-DD HH:MM:SS (UTC).
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let today = format!("{y:04}-{m:02}-{d:02}");
    let yesterday = {
        let (y, m, d) = civil_from_days(days - 1);
        format!("{y:04}-{m:02}-{d:02}")
    };
    assert!(
        line.contains(&today) || line.contains(&yesterday),
        "guest date in {line:?}, host {today}"
    );
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[test]
fn unassigned_mmio_reads_all_ones() {
    let dir = Scratch::new("mmio");
    let mut cmd = kvm_cmd(&test_guest(&dir, Program::Mmio));
    cmd.arg("-no-reboot");
    let r = run_to_end(cmd, LIMIT);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains(MMIO_UNASSIGNED_LINE), "{r:?}");
}

#[test]
fn acpi_poweroff_exits_zero_even_without_no_reboot() {
    let dir = Scratch::new("poweroff");
    let r = run_to_end(kvm_cmd(&test_guest(&dir, Program::Poweroff)), LIMIT);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains(POWEROFF_LINE), "{r:?}");
    assert!(r.stderr.contains("powered off"), "{r:?}");
}

#[test]
fn no_shutdown_keeps_the_process_after_poweroff_until_sigterm() {
    let dir = Scratch::new("noshutdown");
    let mut child = kvm_cmd(&test_guest(&dir, Program::Poweroff))
        .arg("-no-shutdown")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    read_until(&mut child, POWEROFF_LINE, LIMIT);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "rampart exited despite -no-shutdown"
    );
    signal(&child, libc::SIGTERM);
    let r = wait_with_limit(child, LIMIT);
    assert_eq!(r.code, Some(0), "{r:?}");
}

#[test]
fn sigterm_and_sigint_stop_a_running_guest_with_status_zero() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let dir = Scratch::new("spin");
        let mut child = kvm_cmd(&test_guest(&dir, Program::Spin))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let seen = read_until(&mut child, SPIN_LINE, LIMIT);
        assert!(seen.contains(SPIN_LINE), "{seen}");
        signal(&child, sig);
        let r = wait_with_limit(child, LIMIT);
        assert_eq!(r.code, Some(0), "signal {sig}: {r:?}");
    }
}

#[test]
fn start_paused_runs_no_guest_code() {
    let dir = Scratch::new("paused");
    let mut child = kvm_cmd(&test_guest(&dir, Program::Hello))
        .arg("-S")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none());
    signal(&child, libc::SIGTERM);
    let r = wait_with_limit(child, LIMIT);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(!r.stdout.contains(HELLO_LINE), "{r:?}");
}

#[test]
fn emulation_failure_stops_with_registers_and_status_one() {
    let dir = Scratch::new("emufail");
    let r = run_to_end(kvm_cmd(&test_guest(&dir, Program::EmulationFailure)), LIMIT);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("RIP="), "{r:?}");
}

#[test]
fn serial_to_file_and_null() {
    let dir = Scratch::new("serialfile");
    let log = dir.path("console.log");
    let mut cmd = kvm_cmd(&test_guest(&dir, Program::Hello));
    cmd.arg("-no-reboot")
        .arg("-serial")
        .arg(format!("file:{}", log.display()));
    let r = run_to_end(cmd, LIMIT);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(!r.stdout.contains(HELLO_LINE), "{r:?}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), HELLO_LINE);

    let mut cmd = kvm_cmd(&test_guest(&dir, Program::Hello));
    cmd.args(["-no-reboot", "-serial", "null"]);
    let r = run_to_end(cmd, LIMIT);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(!r.stdout.contains(HELLO_LINE), "{r:?}");
}

#[test]
fn smp_guest_boots_with_application_processors_waiting() {
    let dir = Scratch::new("smp");
    let mut cmd = kvm_cmd(&test_guest(&dir, Program::Hello));
    cmd.args(["-no-reboot", "-smp", "4"]);
    let r = run_to_end(cmd, LIMIT);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains(HELLO_LINE), "{r:?}");
}
