//! File descriptors instead of paths, end to end (`-accel kvm`, the spinning test guest):
//! `-add-fd` and `/dev/fdset/N` on the command line; `getfd`, `closefd`, `add-fd`,
//! `remove-fd` and `query-fdsets` with descriptors sent as SCM_RIGHTS, counted in
//! `/proc/PID/fd` so that none leaks; and the monitor's host-path policy: `blockdev-add`
//! through an fd set or beneath a `-monitor-path-allow` directory, refused elsewhere.

mod common;

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::qmp::Qmp;
use common::*;
use rampart_testguest::Program;
use serde_json::{json, Value};

struct Vm {
    child: Child,
    dir: Scratch,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vm {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path("stderr.log")).unwrap_or_default()
    }

    fn qmp(&self) -> Qmp {
        Qmp::connect(&self.dir.path("qmp.sock"))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Starts the spinning guest with a QMP socket, `extra` arguments and `fds` passed.
fn start(dir: Scratch, extra: &[String], fds: Vec<(OwnedFd, i32)>) -> Vm {
    require_kvm();
    let kernel = test_guest(&dir, Program::Spin);
    let mut c = rampart();
    c.args(["-accel", "kvm", "-m", "64", "-nographic", "-kernel"])
        .arg(&kernel)
        .arg("-qmp")
        .arg(format!(
            "unix:{},server=on,wait=off",
            dir.path("qmp.sock").display()
        ))
        .args(extra);
    pass_fds(&mut c, fds);
    let log = File::create(dir.path("stderr.log")).unwrap();
    let child = c
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn rampart");
    Vm { child, dir }
}

fn open(p: &Path, write: bool) -> OwnedFd {
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(p)
        .unwrap()
        .into()
}

fn ret(r: &Value) -> &Value {
    r.get("return")
        .unwrap_or_else(|| panic!("error reply: {r}"))
}

fn error(r: &Value) -> &str {
    r["error"]["desc"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error: {r}"))
}

/// Waits until rampart's descriptor count settles at `want` (the monitor thread closes
/// descriptors right after it replies).
fn fd_count_is(pid: u32, want: usize) -> usize {
    let start = Instant::now();
    loop {
        let n = fd_count(pid);
        if n == want || start.elapsed() > Duration::from_secs(5) {
            if n != want {
                let list: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
                    .unwrap()
                    .filter_map(|e| e.ok())
                    .map(|e| {
                        format!(
                            "{}->{}",
                            e.file_name().to_string_lossy(),
                            std::fs::read_link(e.path()).unwrap_or_default().display()
                        )
                    })
                    .collect();
                eprintln!("fds of {pid}: {list:?}");
            }
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// rampart's descriptor count once the VM runs (the VM is built after the monitor starts).
fn settled_fd_count(q: &mut Qmp, pid: u32) -> usize {
    let start = Instant::now();
    while q.exec("query-status")["status"] != "running" {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the VM never ran"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut last = fd_count(pid);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let n = fd_count(pid);
        if n == last {
            return n;
        }
        last = n;
    }
}

#[test]
fn descriptors_pass_over_qmp_with_qemus_commands_and_none_leaks() {
    let dir = Scratch::new("fdpass-qmp");
    let img = dir.file("a.img", &[0u8; 4096]);
    let vm = start(dir, &[], Vec::new());
    let mut q = vm.qmp();
    let pid = vm.pid();
    let base = settled_fd_count(&mut q, pid);
    let ro = open(&img, false);
    let rw = open(&img, true);

    // getfd/closefd.
    let r = q.cmd(r#"{"execute":"getfd","arguments":{"fdname":"x"}}"#);
    assert_eq!(error(&r), "No file descriptor supplied via SCM_RIGHTS");
    let r = q.cmd_fds(
        r#"{"execute":"getfd","arguments":{"fdname":"1x"}}"#,
        &[ro.as_raw_fd()],
    );
    assert_eq!(
        error(&r),
        "Parameter 'fdname' expects a name not starting with a digit"
    );
    assert_eq!(
        fd_count_is(pid, base),
        base,
        "a refused descriptor is closed"
    );
    let r = q.cmd_fds(
        r#"{"execute":"getfd","arguments":{"fdname":"x"}}"#,
        &[ro.as_raw_fd()],
    );
    assert_eq!(ret(&r), &json!({}));
    assert_eq!(fd_count_is(pid, base + 1), base + 1);
    // The same name again replaces (and closes) the first.
    let r = q.cmd_fds(
        r#"{"execute":"getfd","arguments":{"fdname":"x"}}"#,
        &[rw.as_raw_fd()],
    );
    assert_eq!(ret(&r), &json!({}));
    assert_eq!(fd_count_is(pid, base + 1), base + 1);
    assert_eq!(
        ret(&q.cmd(r#"{"execute":"closefd","arguments":{"fdname":"x"}}"#)),
        &json!({})
    );
    let r = q.cmd(r#"{"execute":"closefd","arguments":{"fdname":"x"}}"#);
    assert_eq!(error(&r), "File descriptor named 'x' not found");
    assert_eq!(fd_count_is(pid, base), base);

    // add-fd / query-fdsets / remove-fd, in QEMU 10's shapes.
    let r = q.cmd(r#"{"execute":"add-fd"}"#);
    assert_eq!(error(&r), "No file descriptor supplied via SCM_RIGHTS");
    let r = q.cmd_fds(
        r#"{"execute":"add-fd","arguments":{"fdset-id":-1}}"#,
        &[ro.as_raw_fd()],
    );
    assert_eq!(
        error(&r),
        "Parameter 'fdset-id' expects a non-negative value"
    );
    let a = q.cmd_fds(
        r#"{"execute":"add-fd","arguments":{"fdset-id":2,"opaque":"ro"}}"#,
        &[ro.as_raw_fd()],
    );
    let a = ret(&a).clone();
    assert_eq!(a["fdset-id"], 2);
    // Three descriptors with one add-fd: one is taken, two are closed.
    let b = q.cmd_fds(
        r#"{"execute":"add-fd","arguments":{"fdset-id":2}}"#,
        &[rw.as_raw_fd(), ro.as_raw_fd(), rw.as_raw_fd()],
    );
    let b = ret(&b).clone();
    let c = q.cmd_fds(r#"{"execute":"add-fd"}"#, &[ro.as_raw_fd()]);
    let c = ret(&c).clone();
    assert_eq!(c["fdset-id"], 0, "the lowest free set id");
    assert_eq!(fd_count_is(pid, base + 3), base + 3);
    let sets = q.exec("query-fdsets");
    assert_eq!(
        sets,
        json!([
            {"fdset-id": 2, "fds": [{"fd": a["fd"], "opaque": "ro"}, {"fd": b["fd"]}]},
            {"fdset-id": 0, "fds": [{"fd": c["fd"]}]},
        ])
    );
    // Descriptors sent with a command that takes none are closed.
    let r = q.cmd_fds(
        r#"{"execute":"query-status"}"#,
        &[ro.as_raw_fd(), rw.as_raw_fd()],
    );
    assert_eq!(ret(&r)["status"], "running");
    assert_eq!(fd_count_is(pid, base + 3), base + 3);
    // More descriptors than one message may carry: the excess never reaches rampart.
    let many: Vec<i32> = (0..40).map(|_| ro.as_raw_fd()).collect();
    let r = q.cmd_fds(r#"{"execute":"query-status"}"#, &many);
    assert_eq!(ret(&r)["status"], "running");
    assert_eq!(fd_count_is(pid, base + 3), base + 3);

    let r = q.cmd(r#"{"execute":"remove-fd","arguments":{"fdset-id":2,"fd":9999}}"#);
    assert_eq!(
        error(&r),
        "File descriptor named 'fdset-id:2, fd:9999' not found"
    );
    let r = q.cmd(&format!(
        r#"{{"execute":"remove-fd","arguments":{{"fdset-id":2,"fd":{}}}}}"#,
        a["fd"]
    ));
    assert_eq!(ret(&r), &json!({}));
    assert_eq!(fd_count_is(pid, base + 2), base + 2);
    assert_eq!(
        ret(&q.cmd(r#"{"execute":"remove-fd","arguments":{"fdset-id":0}}"#)),
        &json!({})
    );
    let r = q.cmd(r#"{"execute":"remove-fd","arguments":{"fdset-id":0}}"#);
    assert_eq!(error(&r), "File descriptor named 'fdset-id:0' not found");
    assert_eq!(
        q.exec("query-fdsets"),
        json!([{"fdset-id": 2, "fds": [{"fd": b["fd"]}]}])
    );

    // Descriptors parked by a client that leaves without a command are closed.
    common::qmp::send_with_fds(&q.writer, b" ", &[ro.as_raw_fd(), rw.as_raw_fd()]);
    drop(q);
    let mut q = vm.qmp();
    assert_eq!(fd_count_is(pid, base + 1), base + 1, "{}", vm.log());
    // HMP's getfd through human-monitor-command.
    let r = q.cmd_fds(
        r#"{"execute":"human-monitor-command","arguments":{"command-line":"getfd h"}}"#,
        &[ro.as_raw_fd()],
    );
    assert_eq!(ret(&r), "");
    let r =
        q.cmd(r#"{"execute":"human-monitor-command","arguments":{"command-line":"closefd h"}}"#);
    assert_eq!(ret(&r), "");
    assert_eq!(fd_count_is(pid, base + 1), base + 1);
    assert!(vm.log().contains("passed_fds=1"), "{}", vm.log());
}

/// `/dev/fdset/N` names on the command line: the kernel and a disk come from passed
/// descriptors; the image is locked through them (a second opener is refused).
#[test]
fn command_line_fd_sets_serve_kernel_and_disks_and_lock_images() {
    require_kvm();
    let dir = Scratch::new("fdpass-cli");
    let kernel = test_guest(&dir, Program::Spin);
    let img = dir.file("disk.img", &[0u8; 1 << 20]);
    let kernel_fd: OwnedFd = File::open(&kernel).unwrap().into();
    let qmp_sock = dir.path("qmp.sock");
    let mut c = rampart();
    c.args(["-accel", "kvm", "-m", "64", "-nographic"])
        .args(["-kernel", "/dev/fdset/1"])
        .args(["-add-fd", "fd=200,set=1"])
        .args(["-add-fd", "fd=201,set=2,opaque=disk-ro"])
        .args(["-add-fd", "fd=202,set=2,opaque=disk-rw"])
        .args([
            "-drive",
            "file=/dev/fdset/2,format=raw,if=virtio,id=d0",
            "-qmp",
        ])
        .arg(format!("unix:{},server=on,wait=off", qmp_sock.display()));
    pass_fds(
        &mut c,
        vec![
            (kernel_fd, 200),
            (open(&img, false), 201),
            (open(&img, true), 202),
        ],
    );
    let log = File::create(dir.path("stderr.log")).unwrap();
    let child = c
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let vm = Vm { child, dir };
    let mut q = vm.qmp();

    let block = q.exec("query-block");
    assert_eq!(block[0]["inserted"]["file"], "/dev/fdset/2", "{block}");
    assert_eq!(block[0]["inserted"]["ro"], false, "{block}");
    let sets = q.exec("query-fdsets");
    assert_eq!(sets[0]["fdset-id"], 2, "{sets}");
    assert_eq!(sets[0]["fds"][0]["opaque"], "disk-ro", "{sets}");
    assert_eq!(sets[0]["fds"][1]["opaque"], "disk-rw", "{sets}");
    assert_eq!(sets[1]["fdset-id"], 1, "{sets}");
    // The inherited numbers were closed (rampart keeps duplicates).
    for n in [200, 201, 202] {
        assert!(
            !Path::new(&format!("/proc/{}/fd/{n}", vm.pid())).exists(),
            "fd {n} still open"
        );
    }
    // The image is locked through the descriptor: a second rampart opening it by path fails.
    let second = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["-accel", "kvm", "-m", "64", "-nographic", "-S", "-kernel"])
        .arg(&kernel)
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", img.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success() && err.contains("lock"), "{err}");
    drop(vm);
}

#[test]
fn add_fd_errors_name_the_culprit() {
    let dir = Scratch::new("fdpass-cli-bad");
    let kernel = test_guest(&dir, Program::Spin);
    let run = |args: &[&str], fds: Vec<(OwnedFd, i32)>| {
        let mut c = rampart();
        c.args(["-accel", "kvm", "-m", "64", "-nographic", "-kernel"])
            .arg(&kernel)
            .args(args);
        pass_fds(&mut c, fds);
        let out = c.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&["-add-fd", "fd=210,set=1"], Vec::new());
    assert!(
        e.contains("-add-fd fd=210,set=1") && e.contains("not open"),
        "{e}"
    );
    let e = run(&["-add-fd", "fd=1,set=1"], Vec::new());
    assert!(e.contains("standard I/O stream"), "{e}");
    let e = run(&["-add-fd", "set=1"], Vec::new());
    assert!(e.contains("fd option is required"), "{e}");
    let e = run(&["-add-fd", "fd=5,set=1,colour=red"], Vec::new());
    assert!(e.contains("colour"), "{e}");
    // A read-only descriptor cannot serve a read-write disk.
    let img = dir.file("d.img", &[0u8; 4096]);
    let e = run(
        &[
            "-add-fd",
            "fd=211,set=4",
            "-drive",
            "file=/dev/fdset/4,format=raw,if=virtio",
        ],
        vec![(open(&img, false), 211)],
    );
    assert!(
        e.contains("fd set 4 has no descriptor opened read-write"),
        "{e}"
    );
    let e = run(
        &["-drive", "file=/dev/fdset/9,format=raw,if=virtio"],
        Vec::new(),
    );
    assert!(e.contains("fd set 9 does not exist"), "{e}");
}

fn blockdev_add(q: &mut Qmp, args: Value) -> Value {
    q.cmd(&json!({"execute": "blockdev-add", "arguments": args}).to_string())
}

#[test]
fn blockdev_add_opens_only_fd_sets_and_allowed_directories() {
    let dir = Scratch::new("fdpass-policy");
    let allowed = dir.path("allowed");
    std::fs::create_dir(&allowed).unwrap();
    std::fs::write(allowed.join("disk.raw"), vec![0u8; 1 << 20]).unwrap();
    let secret = dir.file("secret.raw", &[7u8; 4096]);
    symlink(&secret, allowed.join("abs-link.raw")).unwrap();
    symlink("../secret.raw", allowed.join("rel-link.raw")).unwrap();
    // A qcow2 inside whose header names a backing file outside.
    let overlay = allowed.join("overlay.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&secret)
        .arg(&overlay)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let outside = dir.file("outside.raw", &[0u8; 4096]);
    let allow = ["-monitor-path-allow".into(), allowed.display().to_string()];
    let vm = start(dir, &allow, Vec::new());
    let mut q = vm.qmp();

    // Beneath the allowed directory: opened, locked, listed, released by blockdev-del.
    let disk = allowed.join("disk.raw");
    let add = json!({"driver": "raw", "node-name": "n0",
                     "file": {"driver": "file", "filename": disk.display().to_string()}});
    assert_eq!(ret(&blockdev_add(&mut q, add.clone())), &json!({}));
    let nodes = q.exec("query-named-block-nodes");
    assert_eq!(nodes[0]["node-name"], "n0", "{nodes}");
    assert_eq!(nodes[0]["image"]["virtual-size"], 1 << 20, "{nodes}");
    let twin = json!({"driver": "file", "node-name": "n1",
                      "filename": disk.display().to_string()});
    let r = blockdev_add(&mut q, twin.clone());
    assert!(error(&r).contains("lock"), "{r}");
    assert_eq!(
        ret(&q.cmd(r#"{"execute":"blockdev-del","arguments":{"node-name":"n0"}}"#)),
        &json!({})
    );
    assert_eq!(
        ret(&blockdev_add(&mut q, twin)),
        &json!({}),
        "lock released"
    );

    // Outside: refused with the policy and the option named.
    let r = blockdev_add(
        &mut q,
        json!({"driver": "file", "node-name": "x", "filename": outside.display().to_string()}),
    );
    assert!(
        error(&r).contains("-monitor-path-allow") && error(&r).contains("/dev/fdset/N"),
        "{r}"
    );
    // Escapes through symbolic links and '..'.
    for name in ["abs-link.raw", "rel-link.raw", "../secret.raw"] {
        let p = allowed.join(name);
        let r = blockdev_add(
            &mut q,
            json!({"driver": "file", "node-name": "x", "read-only": true,
                   "filename": p.display().to_string()}),
        );
        assert!(
            error(&r).contains("leaves the allowed directory"),
            "{name}: {r}"
        );
    }
    // A backing file named by an image is held to the same policy.
    let r = blockdev_add(
        &mut q,
        json!({"driver": "qcow2", "node-name": "x", "read-only": true,
               "file": {"driver": "file", "filename": overlay.display().to_string()}}),
    );
    assert!(error(&r).contains("-monitor-path-allow"), "{r}");

    // Through an fd set: a read-write descriptor added over QMP.
    let fd = open(&outside, true);
    let r = q.cmd_fds(
        r#"{"execute":"add-fd","arguments":{"fdset-id":7}}"#,
        &[fd.as_raw_fd()],
    );
    ret(&r);
    let r = blockdev_add(
        &mut q,
        json!({"driver": "raw", "node-name": "fdnode",
               "file": {"driver": "file", "filename": "/dev/fdset/7"}}),
    );
    assert_eq!(ret(&r), &json!({}));
    let r = blockdev_add(
        &mut q,
        json!({"driver": "raw", "node-name": "y",
               "file": {"driver": "file", "filename": "/dev/fdset/8"}}),
    );
    assert!(error(&r).contains("fd set 8 does not exist"), "{r}");
    let nodes = q.exec("query-named-block-nodes");
    let names: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node-name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["n1", "fdnode"], "{nodes}");
    assert!(secret.exists() && std::fs::read(&secret).unwrap() == [7u8; 4096]);
}

#[test]
fn without_allowed_directories_the_monitor_opens_no_path() {
    let dir = Scratch::new("fdpass-nopaths");
    let img = dir.file("d.raw", &[0u8; 4096]);
    let vm = start(dir, &[], Vec::new());
    let mut q = vm.qmp();
    let r = blockdev_add(
        &mut q,
        json!({"driver": "file", "node-name": "x", "read-only": true,
               "filename": img.display().to_string()}),
    );
    assert!(
        error(&r).contains("no directory is allowed")
            && error(&r).contains("-monitor-path-allow DIR"),
        "{r}"
    );
}

/// The PT_LOAD segments of an ELF64 file: (file offset, physical address, file size).
fn load_segments(elf: &[u8]) -> Vec<(u64, u64, u64)> {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
    let (phoff, phentsize, phnum) = (u64_at(32) as usize, u16_at(54) as usize, u16_at(56));
    (0..phnum as usize)
        .map(|i| phoff + i * phentsize)
        .filter(|&p| u32::from_le_bytes(elf[p..p + 4].try_into().unwrap()) == 1)
        .map(|p| (u64_at(p + 8), u64_at(p + 24), u64_at(p + 32)))
        .collect()
}

/// The bytes of guest-physical range [addr, addr+len) in a core file.
fn core_bytes(core: &[u8], addr: u64, len: u64) -> &[u8] {
    let (off, start, _) = load_segments(core)
        .into_iter()
        .find(|&(_, start, size)| start <= addr && addr + len <= start + size)
        .unwrap_or_else(|| panic!("no segment holds {addr:#x}"));
    let at = (off + addr - start) as usize;
    &core[at..at + len as usize]
}

#[test]
fn dump_guest_memory_writes_an_elf_core_to_a_passed_fd_or_an_allowed_file() {
    let dir = Scratch::new("fdpass-dump");
    let allowed = dir.path("dumps");
    std::fs::create_dir(&allowed).unwrap();
    let by_fd = dir.path("by-fd.elf");
    let outside = dir.path("outside.elf");
    let allow = ["-monitor-path-allow".into(), allowed.display().to_string()];
    let vm = start(dir, &allow, Vec::new());
    let mut q = vm.qmp();
    let guest = std::fs::read(vm.dir.path("Spin.elf")).unwrap();

    // fd:NAME, a descriptor passed with getfd (and consumed by the dump).
    let f = File::create(&by_fd).unwrap();
    let r = q.cmd_fds(
        r#"{"execute":"getfd","arguments":{"fdname":"core"}}"#,
        &[f.as_raw_fd()],
    );
    ret(&r);
    drop(f);
    let r = q.cmd(
        r#"{"execute":"dump-guest-memory","arguments":{"paging":false,"protocol":"fd:core"}}"#,
    );
    assert_eq!(ret(&r), &json!({}));
    let r = q.cmd(r#"{"execute":"closefd","arguments":{"fdname":"core"}}"#);
    assert!(
        error(&r).contains("not found"),
        "the dump took the descriptor: {r}"
    );
    // file:PATH beneath the allowed directory: created 0600.
    let in_dir = allowed.join("core.elf");
    let r = q.cmd(
        &json!({"execute": "dump-guest-memory",
                "arguments": {"paging": false, "protocol": format!("file:{}", in_dir.display())}})
        .to_string(),
    );
    assert_eq!(ret(&r), &json!({}));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&in_dir).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The guest keeps running.
    assert_eq!(q.exec("query-status")["status"], "running");

    // Both cores hold 64 MiB of RAM and the test guest's code where it was loaded.
    for core in [&by_fd, &in_dir] {
        let bytes = std::fs::read(core).unwrap();
        let ram: u64 = load_segments(&bytes).iter().map(|s| s.2).sum();
        assert_eq!(ram, 64 << 20, "{}", core.display());
        let (off, paddr, size) = load_segments(&guest)[0];
        let code = &guest[off as usize..(off + size.min(64)) as usize];
        assert_eq!(core_bytes(&bytes, paddr, code.len() as u64), code);
    }

    // Refusals: outside the allowed directory, unsupported options, bad protocols.
    let r = q.cmd(
        &json!({"execute": "dump-guest-memory",
                "arguments": {"paging": false, "protocol": format!("file:{}", outside.display())}})
        .to_string(),
    );
    assert!(error(&r).contains("-monitor-path-allow"), "{r}");
    assert!(!outside.exists());
    for (args, want) in [
        (
            json!({"paging": true, "protocol": "fd:x"}),
            "paging=true is not supported",
        ),
        (
            json!({"paging": false, "protocol": "fd:x", "format": "win-dmp"}),
            "format 'win-dmp'",
        ),
        (
            json!({"paging": false, "protocol": "fd:x", "begin": 0}),
            "Parameter 'length' is missing",
        ),
        (
            json!({"paging": false, "protocol": "tcp:x"}),
            "must start with 'file:' or 'fd:'",
        ),
        (
            json!({"paging": false, "protocol": "fd:nosuch"}),
            "File descriptor named 'nosuch' has not been found",
        ),
    ] {
        let r = q.cmd(&json!({"execute": "dump-guest-memory", "arguments": args}).to_string());
        assert!(error(&r).contains(want), "{args}: {r}");
    }
    assert_eq!(
        q.exec("query-dump-guest-memory-capability"),
        json!({"formats": ["elf"]})
    );
}

/// In the jail, as `nobody`, with an empty root: allowed directories still work (they were
/// opened as `O_PATH` descriptors before the jail), and a descriptor passed over QMP gives
/// read-write access to an image `nobody` could never open by name.
#[test]
fn the_path_policy_and_fd_sets_work_inside_the_jail_as_nobody() {
    // SAFETY: geteuid only reads the caller's credentials.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
    let dir = Scratch::new("fdpass-jail");
    let jail = dir.path("jail");
    let allowed = dir.path("allowed");
    std::fs::create_dir(&jail).unwrap();
    std::fs::create_dir(&allowed).unwrap();
    let ro_img = allowed.join("ro.raw");
    std::fs::write(&ro_img, vec![1u8; 65536]).unwrap();
    // Root's own image, mode 0600: out of nobody's reach by name.
    let private = dir.file("private.raw", &[2u8; 65536]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    let args = [
        "-run-with".to_string(),
        format!("user=nobody,jail={}", jail.display()),
        "-monitor-path-allow".into(),
        allowed.display().to_string(),
    ];
    let vm = start(dir, &args, Vec::new());
    let mut q = vm.qmp();

    let r = blockdev_add(
        &mut q,
        json!({"driver": "raw", "node-name": "ro", "read-only": true,
               "file": {"driver": "file", "filename": ro_img.display().to_string()}}),
    );
    assert_eq!(ret(&r), &json!({}), "{}", vm.log());
    let r = blockdev_add(
        &mut q,
        json!({"driver": "raw", "node-name": "byname", "read-only": true,
               "file": {"driver": "file", "filename": private.display().to_string()}}),
    );
    assert!(error(&r).contains("-monitor-path-allow"), "{r}");
    let fd = open(&private, true);
    let r = q.cmd_fds(
        r#"{"execute":"add-fd","arguments":{"fdset-id":1}}"#,
        &[fd.as_raw_fd()],
    );
    ret(&r);
    let r = blockdev_add(
        &mut q,
        json!({"driver": "raw", "node-name": "passed",
               "file": {"driver": "file", "filename": "/dev/fdset/1"}}),
    );
    assert_eq!(ret(&r), &json!({}), "{}", vm.log());
    let nodes = q.exec("query-named-block-nodes");
    assert_eq!(nodes[1]["node-name"], "passed", "{nodes}");
    assert_eq!(nodes[1]["ro"], false, "{nodes}");
}

#[test]
fn blockdev_add_repairs_a_dirty_qcow2_image_under_the_monitor_filter() {
    // A dirty (lazy-refcount) image is repaired by the writable open, which for blockdev-add
    // runs on the monitor thread under its seccomp filter: with O_DIRECT and 512-byte
    // clusters too, the repair must need no call that filter lacks (ftruncate, say).
    let dir = Scratch::new("fdpass-dirty");
    let allowed = dir.path("allowed");
    std::fs::create_dir(&allowed).unwrap();
    let img = allowed.join("dirty.qcow2");
    let out = Command::new("qemu-img")
        .args([
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=512,lazy_refcounts=on",
        ])
        .arg(&img)
        .arg("64K")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x3c 0 6k", "-c", "flush"])
        .args(["-c", "sigraise 9"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(!out.status.success(), "qemu-io was not killed: {out:?}");
    let dirty = |p: &Path| std::fs::read(p).unwrap()[79] & 1 != 0;
    assert!(dirty(&img), "qemu-io left the image clean");
    let allow = ["-monitor-path-allow".into(), allowed.display().to_string()];
    let vm = start(dir, &allow, Vec::new());
    let mut q = vm.qmp();

    let r = blockdev_add(
        &mut q,
        json!({"driver": "qcow2", "node-name": "d0", "cache": {"direct": true},
               "file": {"driver": "file", "filename": img.display().to_string()}}),
    );

    assert_eq!(ret(&r), &json!({}), "{}", vm.log());
    assert!(!dirty(&img), "blockdev-add did not repair the image");
    assert_eq!(
        ret(&q.cmd(r#"{"execute":"blockdev-del","arguments":{"node-name":"d0"}}"#)),
        &json!({})
    );
    assert_eq!(q.exec("query-status")["status"], "running", "{}", vm.log());
    let out = Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success(), "qemu-img check: {out:?}");
}
