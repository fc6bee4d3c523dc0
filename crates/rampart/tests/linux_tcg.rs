//! Linux-level tests: Debian's own kernel and the project's busybox initramfs (`cargo xtask
//! guest`), booted under rampart's software CPU (`-accel tcg`) with the test the kernel command
//! line names. They check what a user sees: CPU count, memory size, power-off and reboot (the
//! reboot test inside the jail, as an unprivileged user in a per-VM cgroup).
//!
//! They need `guest/vmlinuz` and `guest/initrd.img` (built by `cargo xtask guest`, which
//! `scripts/test` runs first) and fail loudly when those are missing.
//!
//! The command line adds `cryptomgr.notests`: the kernel's boot-time self-tests of its crypto
//! algorithms are pure computation that tests nothing of the machine, and under the interpreter
//! they take about as long as the rest of the boot. Benchmarks (`bench/boot`) keep them.

mod common;

use std::time::Duration;

use common::linux::*;
use common::*;

/// A boot under the interpreter takes about a minute here; allow generous time on a loaded CI
/// machine.
const LIMIT: Duration = Duration::from_secs(600);

/// Boots the test guest under tcg with `test` and returns the run.
fn boot(test: &str, cpus: u32, mem: &str, extra: &[&str]) -> Finished {
    boot_with("tcg", test, cpus, mem, extra)
}

/// Boots the test guest with `-accel ACCEL` (a tcg form) and `test`.
fn boot_with(accel: &str, test: &str, cpus: u32, mem: &str, extra: &[&str]) -> Finished {
    let mut cmd = rampart();
    cmd.env("RAMPART_LOG", "info,rampart_tcg=debug");
    cmd.args([
        "-accel",
        accel,
        "-m",
        mem,
        "-smp",
        &cpus.to_string(),
        "-nographic",
    ])
    .arg("-kernel")
    .arg(guest_file("vmlinuz"))
    .arg("-initrd")
    .arg(guest_file("initrd.img"))
    .args(["-append", &format!("{CMDLINE} rampart.test={test}")])
    .args(extra);
    run_to_end(cmd, LIMIT)
}

fn check_cpus(n: u32) {
    let r = boot("cpus", n, "512", &[]);
    assert_eq!(r.code, Some(0), "{r:?}");
    let out = test_output(&r, "cpus");
    assert!(out.contains(&format!("cpus={n}")), "{out}");
    let online = if n == 1 {
        "online=0".to_string()
    } else {
        format!("online=0-{}", n - 1)
    };
    assert!(out.contains(&online), "{out}");
}

#[test]
fn boots_to_init_with_one_cpu() {
    check_cpus(1);
}

#[test]
fn boots_to_init_with_two_cpus() {
    check_cpus(2);
}

#[test]
fn boots_to_init_with_four_cpus() {
    check_cpus(4);
}

#[test]
fn guest_sees_the_memory_size_it_was_given() {
    let r = boot("meminfo", 1, "512", &[]);
    assert_eq!(r.code, Some(0), "{r:?}");
    let out = test_output(&r, "meminfo");
    let kb: u64 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("memtotal_kb="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no memtotal_kb line: {out}"));
    // MemTotal excludes the kernel's own reservations: between 85% and 100% of 512 MiB.
    assert!(
        (445_000..=524_288).contains(&kb),
        "MemTotal {kb} kB for -m 512"
    );
}

#[test]
fn guest_poweroff_exits_zero() {
    let r = boot("poweroff", 1, "256", &[]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.contains("powered off"), "{r:?}");
}

#[test]
fn guest_reboot_with_no_reboot_exits_zero() {
    let r = boot("reboot", 1, "256", &["-no-reboot"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.contains("-no-reboot"), "{r:?}");
}

/// Also runs confined (`-run-with`: unprivileged, jailed, in a per-VM cgroup): Linux boots and
/// reboots there as anywhere, and the supervisor relays SIGTERM and the exit status.
#[test]
fn guest_reboot_without_no_reboot_boots_again() {
    let dir = Scratch::new("linux-jail");
    let jail = dir.path("jail");
    std::fs::create_dir(&jail).unwrap();
    let mut cmd = rampart();
    cmd.args(["-accel", "tcg", "-m", "256", "-nographic", "-kernel"])
        .arg(guest_file("vmlinuz"))
        .arg("-initrd")
        .arg(guest_file("initrd.img"))
        .args(["-append", &format!("{CMDLINE} rampart.test=reboot")])
        .arg("-run-with")
        .arg(format!(
            "user=nobody,jail={},netns=on,memory-max=768M,pids-max=64,rlimit-nofile=128",
            jail.display()
        ));
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let marker = "rampart-init: start";
    let seen = read_until(&mut child, marker, LIMIT);
    let more = read_until(&mut child, marker, LIMIT);
    signal(&child, libc::SIGTERM);
    let r = wait_with_limit(child, LIMIT);
    assert!(
        seen.contains(marker) && more.contains(marker),
        "{seen}{more}"
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.contains("jail: new mount, PID"), "{r:?}");
    assert!(r.stderr.contains("running as uid 65534"), "{r:?}");
}

/// Boots with `-accel ACCEL` on two vCPUs and checks what the guest computes: a shell
/// arithmetic loop and an md5sum (`guest-init/tests/mips`). Returns the run.
fn check_mips(accel: &str) -> Finished {
    let r = boot_with(accel, "mips", 2, "512", &[]);
    assert_eq!(r.code, Some(0), "{r:?}");
    let out = test_output(&r, "mips");
    assert!(out.contains("mips_loop=667472"), "{out}");
    assert!(
        out.contains("mips_md5=0337860d962f7f9e1485569a8c94ecc9"),
        "{out}"
    );
    r
}

/// What each vCPU's translator reports when it ends: blocks translated.
fn translated_blocks(r: &Finished) -> Vec<u64> {
    r.stderr
        .lines()
        .filter(|l| l.contains("block translator statistics"))
        .filter_map(|l| l.split("blocks=").nth(1)?.split(' ').next()?.parse().ok())
        .collect()
}

/// The block translator (on by default) runs Linux on two vCPUs, under the seccomp filters,
/// from code memory made at start.
#[test]
fn linux_runs_translated_on_two_cpus() {
    let r = check_mips("tcg");
    let translated = translated_blocks(&r);
    assert_eq!(translated.len(), 2, "{}", r.stderr);
    assert!(translated.iter().sum::<u64>() > 1000, "{translated:?}");
}

/// `-accel tcg,jit=off` runs the same guest on the interpreter alone.
#[test]
fn linux_runs_interpreted_with_jit_off() {
    let r = check_mips("tcg,jit=off");
    assert!(translated_blocks(&r).is_empty(), "{}", r.stderr);
}
