//! The monitor against a Linux guest under `-accel tcg` (one boot pair for all checks, since
//! every boot takes about a minute): `stop` freezes the guest (its once-a-second ticks on the
//! serial console stop) and `cont` resumes it; `system_reset` reboots it; `system_powerdown`
//! presses the ACPI power button, which the kernel's button driver reports and busybox `acpid`
//! answers by powering off (guest-init/tests/monitor). The guest also has a disk, which the
//! kernel's virtio_blk driver reads (its partition table) when it loads: `query-blockstats`
//! shows those reads. Every thread runs under its seccomp filter, before and after the reset.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::linux::*;
use common::qmp::Qmp;
use common::*;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(600);

#[test]
fn monitor_stops_resumes_resets_and_powers_down_a_linux_guest() {
    let dir = Scratch::new("linux-monitor");
    let sock = dir.path("qmp.sock");
    let disk = dir.file("disk.raw", &vec![0u8; 1 << 20]);
    let log = std::fs::File::create(dir.path("stderr.log")).unwrap();
    let mut child = rampart()
        .args(["-accel", "tcg", "-m", "256", "-nographic", "-kernel"])
        .arg(guest_file("vmlinuz"))
        .arg("-initrd")
        .arg(guest_file("initrd.img"))
        .args([
            "-append",
            "console=ttyS0 cryptomgr.notests rampart.modules=button,evdev,virtio_blk \
             rampart.test=monitor",
        ])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio,id=d0",
            disk.display()
        ))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn rampart");
    let stderr = || std::fs::read_to_string(dir.path("stderr.log")).unwrap_or_default();
    let mut q = Qmp::connect(&sock);

    // First boot: the power button device is there and acpid runs.
    let boot = read_until(&mut child, "rampart-test: tick 1", LIMIT);
    assert!(
        boot.contains("rampart-test: acpid ready"),
        "{boot}\n{}",
        stderr()
    );
    assert!(boot.contains("rampart-test: input: Power Button"), "{boot}");
    // Every thread (VMM, tcg vCPU, virtio I/O, monitor) runs under its seccomp filter.
    assert_every_thread_filtered(child.id(), &["rampart", "vcpu0", "virtio0", "monitor"]);

    // The driver's reads are counted where they completed.
    let stats = q.exec("query-blockstats");
    let s = &stats[0]["stats"];
    assert_eq!(stats[0]["device"], "d0", "{stats}");
    assert!(s["rd_operations"].as_u64().unwrap() > 0, "{s}");
    assert!(s["rd_bytes"].as_u64().unwrap() >= 512, "{s}");
    assert!(s["rd_total_time_ns"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["failed_rd_operations"], 0, "{s}");
    assert!(s.get("idle_time_ns").is_some(), "{s}");

    // stop: the ticks stop.
    assert_eq!(q.exec("stop"), json!({}));
    q.event("STOP");
    let _in_flight = read_until(&mut child, "\u{0}never", Duration::from_millis(500));
    let quiet = read_until(&mut child, "rampart-test: tick", Duration::from_secs(4));
    assert!(
        !quiet.contains("tick"),
        "the guest ran while stopped: {quiet}"
    );
    assert_eq!(q.exec("query-status")["status"], "paused");
    // cont: they go on.
    assert_eq!(q.exec("cont"), json!({}));
    q.event("RESUME");
    let more = read_until(&mut child, "rampart-test: tick", Duration::from_secs(60));
    assert!(
        more.contains("rampart-test: tick"),
        "no ticks after cont: {more}"
    );

    // system_reset: the guest boots again.
    assert_eq!(q.exec("system_reset"), json!({}));
    let reset = q.event("RESET");
    assert_eq!(
        reset["data"],
        json!({"guest": false, "reason": "host-qmp-system-reset"})
    );
    let again = read_until(&mut child, "rampart-test: acpid ready", LIMIT);
    assert!(
        again.contains("rampart-init: start"),
        "no second boot: {again}\n{}",
        stderr()
    );
    assert!(
        again.contains("rampart-test: acpid ready"),
        "{again}\n{}",
        stderr()
    );
    // The rebuilt VM's new vCPU and I/O threads are filtered too.
    assert_every_thread_filtered(child.id(), &["rampart", "vcpu0", "virtio0", "monitor"]);

    // system_powerdown: acpid powers the guest off.
    assert_eq!(q.exec("system_powerdown"), json!({}));
    q.event("POWERDOWN");
    let rest = read_until(&mut child, "reboot: Power down", LIMIT);
    assert!(
        rest.contains("rampart-test: power button pressed"),
        "{rest}\n{}",
        stderr()
    );
    let shutdown = q.event("SHUTDOWN");
    assert_eq!(
        shutdown["data"],
        json!({"guest": true, "reason": "guest-shutdown"})
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", stderr());
}
