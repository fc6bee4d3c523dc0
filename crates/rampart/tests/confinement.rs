//! `-run-with` (and `-runas`, `-chroot`): the privilege drop, the jail's namespaces and root,
//! the per-VM cgroup's limits (seen from the host and enforced) and rlimits, with the `kvm`
//! test guests. These need root (as rampart does to switch users) and /dev/kvm.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rampart_testguest::{Program, HELLO_LINE, SPIN_LINE, TOUCH_RAM_DONE_LINE};

const LIMIT: Duration = Duration::from_secs(30);
const NOBODY: u32 = 65534;

fn require_root() {
    // SAFETY: geteuid only reads the caller's credentials.
    assert_eq!(unsafe { libc::geteuid() }, 0, "these tests need root");
}

fn kvm_cmd(kernel: &Path, mem: &str) -> std::process::Command {
    require_kvm();
    require_root();
    let mut c = rampart();
    c.args(["-accel", "kvm", "-m", mem, "-nographic", "-kernel"]);
    c.arg(kernel);
    c
}

/// Starts the spinning guest with `run_with` and waits until it runs.
fn spinning(dir: &Scratch, run_with: &[&str]) -> Child {
    let mut child = kvm_cmd(&test_guest(dir, Program::Spin), "64")
        .args(run_with)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = read_until(&mut child, SPIN_LINE, LIMIT);
    assert!(seen.contains(SPIN_LINE), "{seen}");
    child
}

fn status_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap()
}

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .trim()
}

/// The process whose parent is `parent` (the supervised VM process).
fn child_of(parent: u32) -> u32 {
    let start = Instant::now();
    while start.elapsed() < LIMIT {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                continue;
            };
            if status
                .lines()
                .any(|l| l.strip_prefix("PPid:").map(str::trim) == Some(&parent.to_string()))
            {
                return pid;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("process {parent} has no child");
}

fn assert_unprivileged(status: &str) {
    let ids = format!("{NOBODY}\t{NOBODY}\t{NOBODY}\t{NOBODY}");
    assert_eq!(field(status, "Uid"), ids, "{status}");
    assert_eq!(field(status, "Gid"), ids, "{status}");
    assert_eq!(field(status, "Groups"), "", "{status}");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(status, caps), "0000000000000000", "{caps}: {status}");
    }
    assert_eq!(field(status, "NoNewPrivs"), "1", "{status}");
}

fn stop(child: Child) -> Finished {
    signal(&child, libc::SIGTERM);
    wait_with_limit(child, LIMIT)
}

#[test]
fn run_with_user_nobody_drops_ids_groups_and_every_capability_and_sets_no_new_privs() {
    let dir = Scratch::new("runas");
    for args in [&["-run-with", "user=nobody"][..], &["-runas", "nobody"][..]] {
        let child = spinning(&dir, args);

        let status = status_of(child.id());
        let r = stop(child);

        assert_unprivileged(&status);
        assert_eq!(r.code, Some(0), "{args:?}: {r:?}");
        if args[0] == "-runas" {
            assert!(r.stderr.contains("-runas is deprecated"), "{r:?}");
        }
    }
}

#[test]
fn chroot_changes_the_root_after_the_guest_files_are_open() {
    let dir = Scratch::new("chroot");
    let root = dir.path("root");
    std::fs::create_dir(&root).unwrap();
    let spec = format!("user={NOBODY}:{NOBODY},chroot={}", root.display());
    let child = spinning(&dir, &["-run-with", &spec]);

    let seen_root = std::fs::read_link(format!("/proc/{}/root", child.id())).unwrap();
    let status = status_of(child.id());
    let r = stop(child);

    assert_eq!(seen_root, root);
    assert_unprivileged(&status);
    assert_eq!(r.code, Some(0), "{r:?}");
}

#[test]
fn errors_name_the_unknown_user_the_missing_directory_and_the_unprivileged_caller() {
    let dir = Scratch::new("runas-errors");
    let guest = test_guest(&dir, Program::Hello);
    for (run_with, expected) in [
        (
            "user=no-such-user",
            "-run-with user=no-such-user: no such user",
        ),
        ("chroot=/nonexistent/r", "-run-with chroot=/nonexistent/r: "),
        ("jail=/nonexistent/j", "-run-with jail=/nonexistent/j: "),
    ] {
        let mut cmd = kvm_cmd(&guest, "64");
        cmd.args(["-run-with", run_with]);

        let r = run_to_end(cmd, LIMIT);

        assert_eq!(r.code, Some(1), "{r:?}");
        assert!(r.stderr.contains(expected), "{run_with}: {r:?}");
    }

    // The caller is nobody: run a copy of the binary from a directory anyone may enter (the
    // build tree may be under a private home).
    let bin = dir.path("rampart");
    std::fs::copy(env!("CARGO_BIN_EXE_rampart"), &bin).unwrap();
    for p in [&dir.0, &bin] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let mut cmd = std::process::Command::new(&bin);
    cmd.stdin(Stdio::null())
        .args(["-accel", "kvm", "-m", "64", "-nographic", "-kernel"])
        .arg(&guest)
        .args(["-run-with", "user=0:0"]);
    // SAFETY: setgid/setuid only, between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::setgid(NOBODY) != 0 || libc::setuid(NOBODY) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let r = run_to_end(cmd, LIMIT);

    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stderr
            .contains("-run-with user=0:0: rampart runs as uid 65534, not root"),
        "{r:?}"
    );
}

fn ns(pid: &str, name: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{name}")).unwrap()
}

#[test]
fn jail_runs_the_vm_as_pid_1_in_new_namespaces_with_an_empty_root() {
    let dir = Scratch::new("jail");
    let jail = dir.path("jail");
    std::fs::create_dir(&jail).unwrap();
    let spec = format!("user=nobody,jail={},netns=on", jail.display());
    let child = spinning(&dir, &["-run-with", &spec]);
    let vm = child_of(child.id()).to_string();

    let namespaces: Vec<(&str, PathBuf, PathBuf)> = ["mnt", "pid", "ipc", "uts", "net"]
        .into_iter()
        .map(|n| (n, ns("self", n), ns(&vm, n)))
        .collect();
    let root_entries = std::fs::read_dir(format!("/proc/{vm}/root"))
        .unwrap()
        .count();
    let status = status_of(vm.parse().unwrap());
    let r = stop(child);

    for (name, host, jailed) in &namespaces {
        assert_ne!(host, jailed, "{name} namespace is the host's");
    }
    assert_eq!(root_entries, 0, "the jail's root is not empty");
    assert!(field(&status, "NSpid").ends_with("\t1"), "{status}");
    assert_unprivileged(&status);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(!Path::new(&format!("/proc/{vm}")).exists());
}

/// The file `v1_file` of `controller` (cgroup v1) or `v2_file` (cgroup v2) in the cgroup
/// `pid` belongs to, read from the host.
fn cgroup_file(pid: &str, controller: &str, v1_file: &str, v2_file: &str) -> (PathBuf, String) {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in cgroups.lines() {
        let mut f = line.splitn(3, ':');
        let (_, list, path) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        if list.split(',').any(|c| c == controller) {
            let dir = PathBuf::from(format!("/sys/fs/cgroup/{controller}{path}"));
            let text = std::fs::read_to_string(dir.join(v1_file)).unwrap();
            return (dir, text.trim().to_string());
        }
    }
    for base in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        let path = cgroups.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        let dir = PathBuf::from(format!("{base}{path}"));
        if let Ok(text) = std::fs::read_to_string(dir.join(v2_file)) {
            return (dir, text.trim().to_string());
        }
    }
    panic!("no {controller} cgroup for {pid}: {cgroups}");
}

/// `MAJOR:MINOR` of a whole disk of this host (the block controller throttles disks).
fn block_device() -> String {
    let mut names: Vec<String> = std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            !["loop", "ram", "zram", "nbd"]
                .iter()
                .any(|p| n.starts_with(p))
        })
        .collect();
    names.sort();
    let name = names
        .first()
        .expect("this test needs a block device (a disk in /sys/block)");
    std::fs::read_to_string(format!("/sys/block/{name}/dev"))
        .unwrap()
        .trim()
        .to_string()
}

fn limit_line<'a>(limits: &'a str, name: &str) -> Vec<&'a str> {
    limits
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in {limits}"))[name.len()..]
        .split_whitespace()
        .collect()
}

#[test]
fn cgroup_limits_and_rlimits_are_visible_from_the_host_and_the_cgroup_goes_at_exit() {
    let dir = Scratch::new("cgroup");
    let jail = dir.path("jail");
    std::fs::create_dir(&jail).unwrap();
    let disk = block_device();
    let spec = format!(
        "user=nobody,jail={},memory-max=256M,pids-max=32,cpu-max=50000/100000,\
         io-device={disk},io-wbps=1M,io-riops=100,rlimit-nofile=64,rlimit-fsize=1M",
        jail.display()
    );
    let child = spinning(&dir, &["-run-with", &spec]);
    let vm = child_of(child.id()).to_string();

    let (mem_dir, memory) = cgroup_file(&vm, "memory", "memory.limit_in_bytes", "memory.max");
    let (pids_dir, pids) = cgroup_file(&vm, "pids", "pids.max", "pids.max");
    let (cpu_dir, cpu) = cgroup_file(&vm, "cpu", "cpu.cfs_quota_us", "cpu.max");
    let (io_dir, io) = cgroup_file(&vm, "blkio", "blkio.throttle.write_bps_device", "io.max");
    let limits = std::fs::read_to_string(format!("/proc/{vm}/limits")).unwrap();
    let r = stop(child);

    assert_eq!(memory, (256u64 << 20).to_string());
    assert_eq!(pids, "32");
    assert!(cpu == "50000" || cpu == "50000 100000", "{cpu}");
    assert!(
        io == format!("{disk} 1048576")
            || io == format!("{disk} rbps=max wbps=1048576 riops=100 wiops=max"),
        "{io}"
    );
    assert_eq!(limit_line(&limits, "Max open files")[..2], ["64", "64"]);
    assert_eq!(
        limit_line(&limits, "Max file size")[..2],
        ["1048576", "1048576"]
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    for d in [mem_dir, pids_dir, cpu_dir, io_dir] {
        assert!(
            d.ends_with(format!("rampart-{}", r_pid(&r))),
            "{}",
            d.display()
        );
        assert!(!d.exists(), "{} was not removed", d.display());
    }
}

/// The supervisor's pid, from its log line naming the per-VM cgroup.
fn r_pid(r: &Finished) -> String {
    r.stderr
        .lines()
        .find_map(|l| l.split("rampart-").nth(1))
        .map(|p| p.chars().take_while(char::is_ascii_digit).collect())
        .unwrap_or_default()
}

#[test]
fn memory_max_is_enforced_a_guest_touching_more_ram_gets_rampart_oom_killed() {
    let dir = Scratch::new("oom");
    let guest = test_guest(&dir, Program::TouchRam);
    let run = |limit: &str| {
        let mut cmd = kvm_cmd(&guest, "512");
        cmd.args(["-no-reboot", "-run-with"])
            .arg(format!("user=nobody,memory-max={limit}"));
        run_to_end(cmd, LIMIT)
    };

    let capped = run("64M");
    let roomy = run("400M");

    assert_eq!(capped.signal, Some(libc::SIGKILL), "{capped:?}");
    assert!(!capped.stdout.contains(TOUCH_RAM_DONE_LINE), "{capped:?}");
    assert!(capped.stderr.contains("OOM killer"), "{capped:?}");
    assert_eq!(roomy.code, Some(0), "{roomy:?}");
    assert!(roomy.stdout.contains(TOUCH_RAM_DONE_LINE), "{roomy:?}");
}

#[test]
fn pids_max_is_enforced_rampart_cannot_start_more_threads() {
    let dir = Scratch::new("pids");
    let guest = test_guest(&dir, Program::Hello);
    let run = |limit: &str| {
        let mut cmd = kvm_cmd(&guest, "64");
        cmd.args(["-no-reboot", "-smp", "4", "-run-with"])
            .arg(format!("user=nobody,pids-max={limit}"));
        run_to_end(cmd, LIMIT)
    };

    let capped = run("3");
    let roomy = run("32");

    assert_eq!(capped.code, Some(1), "{capped:?}");
    assert!(
        capped.stderr.contains("Resource temporarily unavailable"),
        "{capped:?}"
    );
    assert!(!capped.stdout.contains(HELLO_LINE), "{capped:?}");
    assert_eq!(roomy.code, Some(0), "{roomy:?}");
    assert!(roomy.stdout.contains(HELLO_LINE), "{roomy:?}");
}

#[test]
fn a_guest_reset_inside_the_jail_reuses_the_dev_kvm_opened_before_it() {
    let dir = Scratch::new("jail-reset");
    let jail = dir.path("jail");
    std::fs::create_dir(&jail).unwrap();
    let mut child = kvm_cmd(&test_guest(&dir, Program::Hello), "64")
        .arg("-run-with")
        .arg(format!("user=nobody,jail={}", jail.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let seen = read_until(&mut child, &HELLO_LINE.repeat(3), LIMIT);
    let r = stop(child);

    assert!(seen.matches(HELLO_LINE).count() >= 3, "{seen}{r:?}");
    assert_eq!(r.code, Some(0), "{r:?}");
}

#[test]
fn killing_the_supervisor_with_sigkill_takes_the_jailed_vm_with_it() {
    let dir = Scratch::new("jail-kill");
    let jail = dir.path("jail");
    std::fs::create_dir(&jail).unwrap();
    let spec = format!("user=nobody,jail={}", jail.display());
    let child = spinning(&dir, &["-run-with", &spec]);
    let vm = child_of(child.id());

    signal(&child, libc::SIGKILL);
    let r = wait_with_limit(child, LIMIT);
    let start = Instant::now();
    while Path::new(&format!("/proc/{vm}")).exists() && start.elapsed() < LIMIT {
        std::thread::sleep(Duration::from_millis(20));
    }

    assert_eq!(r.signal, Some(libc::SIGKILL), "{r:?}");
    assert!(
        !Path::new(&format!("/proc/{vm}")).exists(),
        "the VM process {vm} outlived its supervisor"
    );
}

#[test]
fn an_unprivileged_jailed_rampart_cannot_read_a_root_only_file_through_the_monitor() {
    let dir = Scratch::new("jail-monitor");
    let jail = dir.path("jail");
    let allowed = dir.path("allowed");
    std::fs::create_dir(&jail).unwrap();
    std::fs::create_dir(&allowed).unwrap();
    let mode = |p: &Path, m| {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(m)).unwrap()
    };
    mode(&allowed, 0o755);
    let public = allowed.join("public.raw");
    let secret = allowed.join("secret.raw");
    std::fs::write(&public, vec![0u8; 1 << 20]).unwrap();
    std::fs::write(&secret, vec![7u8; 1 << 20]).unwrap();
    mode(&public, 0o644);
    mode(&secret, 0o600);
    let sock = dir.path("qmp.sock");
    let mut child = kvm_cmd(&test_guest(&dir, Program::Spin), "64")
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .arg("-monitor-path-allow")
        .arg(&allowed)
        .arg("-run-with")
        .arg(format!("user=nobody,jail={}", jail.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    read_until(&mut child, SPIN_LINE, LIMIT);
    let mut q = common::qmp::Qmp::connect(&sock);
    let add = |q: &mut common::qmp::Qmp, name: &str, file: &Path| {
        q.cmd(
            &serde_json::json!({"execute": "blockdev-add", "arguments": {
                "driver": "file", "node-name": name, "read-only": true,
                "filename": file.display().to_string()}})
            .to_string(),
        )
    };

    let public_reply = add(&mut q, "pub", &public);
    let secret_reply = add(&mut q, "sec", &secret);
    drop(q);
    let r = stop(child);

    assert_eq!(
        public_reply["return"],
        serde_json::json!({}),
        "{public_reply}"
    );
    let desc = secret_reply["error"]["desc"].as_str().unwrap_or_default();
    assert!(desc.contains("Permission denied"), "{secret_reply}");
    assert_eq!(r.code, Some(0), "{r:?}");
}
