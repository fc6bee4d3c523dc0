//! The monitor, end to end: QMP protocol conformance (greeting, negotiation, id echo, every
//! error class, oversized/malformed input, several monitors, disconnects, floods), the HMP,
//! and the lifecycle commands on a running test guest (`-accel kvm`, the looping guest).

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::qmp::{Hmp, Qmp};
use common::*;
use rampart_testguest::{Program, HELLO_LINE, SPIN_LINE};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(30);

struct Vm {
    child: Option<Child>,
    dir: Scratch,
}

impl Vm {
    /// Starts the spinning guest with `extra` arguments (socket paths are relative to the
    /// scratch dir: `{dir}` is replaced).
    fn start(tag: &str, program: Program, extra: &[&str]) -> Vm {
        require_kvm();
        let dir = Scratch::new(tag);
        let kernel = test_guest(&dir, program);
        let mut c = rampart();
        c.args(["-accel", "kvm", "-m", "64", "-nographic", "-kernel"]);
        c.arg(&kernel);
        let root = dir.0.display().to_string();
        for a in extra {
            c.arg(a.replace("{dir}", &root));
        }
        // The log goes to a file: a pipe nobody reads would block rampart once full (a
        // flooding client makes an audit line per command).
        let log = std::fs::File::create(dir.path("stderr.log")).unwrap();
        let child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn rampart");
        Vm {
            child: Some(child),
            dir,
        }
    }

    fn sock(&self, name: &str) -> PathBuf {
        self.dir.path(name)
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().unwrap()
    }

    fn finish(mut self) -> Finished {
        let mut child = self.child.take().unwrap();
        let mut out = child.stdout.take().unwrap();
        let t = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = out.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        });
        let start = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if start.elapsed() > LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("rampart did not exit: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Finished {
            code: status.code(),
            signal: std::os::unix::process::ExitStatusExt::signal(&status),
            stdout: t.join().unwrap_or_default(),
            stderr: self.log(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path("stderr.log")).unwrap_or_default()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn qmp_arg(dir_sock: &str) -> String {
    format!("unix:{{dir}}/{dir_sock},server=on,wait=off")
}

/// CPU time (user + system, clock ticks) the thread `tid` of `pid` has used.
fn thread_ticks(pid: u32, tid: i64) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 of stat; `after` starts at field 3.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn greeting_negotiation_and_id_echo_follow_the_qmp_spec() {
    let q = qmp_arg("q.sock");
    let vm = Vm::start("qmp-greet", Program::Spin, &["-qmp", &q]);
    let (mut c, greeting) = Qmp::connect_raw(&vm.sock("q.sock"));

    assert_eq!(greeting["QMP"]["capabilities"], json!([]));
    assert!(
        greeting["QMP"]["version"]["qemu"]["major"].is_u64(),
        "{greeting}"
    );
    assert!(
        greeting["QMP"]["version"]["package"].is_string(),
        "{greeting}"
    );
    // Before negotiation only qmp_capabilities is accepted, with QEMU's error.
    let r = c.cmd(r#"{"execute":"query-status","id":7}"#);
    assert_eq!(r["error"]["class"], "CommandNotFound", "{r}");
    assert_eq!(
        r["error"]["desc"],
        "Expecting capabilities negotiation with 'qmp_capabilities'"
    );
    assert_eq!(r["id"], 7);
    let r = c.cmd(r#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}"#);
    assert_eq!(r["error"]["class"], "GenericError", "{r}");
    let r = c.cmd(r#"{"execute":"qmp_capabilities"}"#);
    assert_eq!(r, json!({"return": {}}));
    let r = c.cmd(r#"{"execute":"qmp_capabilities"}"#);
    assert_eq!(r["error"]["class"], "CommandNotFound", "{r}");
    // Any JSON value is a valid id, echoed as given.
    let r = c.cmd(r#"{"execute":"query-status","id":{"a":[1,"x",null]}}"#);
    assert_eq!(r["id"], json!({"a": [1, "x", null]}));
    assert_eq!(r["return"], json!({"running": true, "status": "running"}));
}

#[test]
fn every_error_class_and_argument_error_is_worded_like_qemu() {
    let q = qmp_arg("q.sock");
    let vm = Vm::start("qmp-errors", Program::Spin, &["-qmp", &q]);
    let mut c = Qmp::connect(&vm.sock("q.sock"));
    let cases = [
        (
            r#"{"execute":"frobnicate","id":1}"#,
            "CommandNotFound",
            "The command frobnicate has not been found",
        ),
        (
            r#"{"execute":"query-status","arguments":{"x":1}}"#,
            "GenericError",
            "Parameter 'x' is unexpected",
        ),
        (
            r#"{"execute":"human-monitor-command"}"#,
            "GenericError",
            "Parameter 'command-line' is missing",
        ),
        (
            r#"{"execute":"human-monitor-command","arguments":{"command-line":1}}"#,
            "GenericError",
            "Invalid parameter type for 'command-line', expected: string",
        ),
        (
            r#"{"execute":"query-status","arguments":[]}"#,
            "GenericError",
            "QMP input member 'arguments' must be an object",
        ),
        (
            r#"{"execute":3}"#,
            "GenericError",
            "QMP input member 'execute' must be a string",
        ),
        (
            r#"{"exec":"query-status"}"#,
            "GenericError",
            "QMP input member 'exec' is unexpected",
        ),
        (
            r#"{"id":1}"#,
            "GenericError",
            "QMP input lacks member 'execute'",
        ),
        ("[1,2]", "GenericError", "QMP input must be a JSON object"),
    ];
    for (input, class, desc) in cases {
        let r = c.cmd(input);
        assert_eq!(r["error"]["class"], class, "{input}: {r}");
        assert_eq!(r["error"]["desc"], desc, "{input}: {r}");
    }
    assert_eq!(c.cmd(r#"{"execute":"nope","id":"abc"}"#)["id"], "abc");
    // The connection survives all of it.
    assert_eq!(c.exec("query-status")["status"], "running");
}

#[test]
fn malformed_oversized_and_deep_input_is_answered_and_the_connection_survives() {
    let q = qmp_arg("q.sock");
    let vm = Vm::start("qmp-bad", Program::Spin, &["-qmp", &q]);
    let mut c = Qmp::connect(&vm.sock("q.sock"));

    let r = c.cmd(r#"{"execute": "query-status" ,}"#);
    assert!(
        r["error"]["desc"]
            .as_str()
            .unwrap()
            .starts_with("JSON parse error"),
        "{r}"
    );
    let r = c.cmd("}");
    assert_eq!(r["error"]["class"], "GenericError", "{r}");
    // 2 MiB in one message: refused whole without buffering it.
    let big = format!(
        r#"{{"execute":"query-status","arguments":{{"a":"{}"}}}}"#,
        "x".repeat(2 << 20)
    );
    let r = c.cmd(&big);
    assert!(
        r["error"]["desc"].as_str().unwrap().contains("size limit"),
        "{r}"
    );
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let r = c.cmd(&deep);
    assert_eq!(
        r["error"]["desc"], "JSON nesting depth limit exceeded",
        "{r}"
    );
    // Messages split across writes and several in one write both work.
    c.send_raw(br#"{"execute":"query-"#);
    std::thread::sleep(Duration::from_millis(50));
    c.send_raw(br#"status","id":1}{"execute":"query-name","id":2}"#);
    assert_eq!(c.reply()["id"], 1);
    assert_eq!(c.reply()["id"], 2);
    assert_eq!(c.exec("query-status")["running"], true);
}

#[test]
fn queries_report_the_configuration() {
    let q = qmp_arg("q.sock");
    let vm = Vm::start(
        "qmp-query",
        Program::Spin,
        &[
            "-qmp",
            &q,
            "-name",
            "vm1",
            "-uuid",
            "12345678-9abc-def0-1234-56789abcdef0",
            "-smp",
            "2",
        ],
    );
    let mut c = Qmp::connect(&vm.sock("q.sock"));

    assert_eq!(c.exec("query-name"), json!({"name": "vm1"}));
    assert_eq!(
        c.exec("query-uuid"),
        json!({"UUID": "12345678-9abc-def0-1234-56789abcdef0"})
    );
    assert_eq!(
        c.exec("query-kvm"),
        json!({"enabled": true, "present": true})
    );
    let cpus = c.exec("query-cpus-fast");
    assert_eq!(cpus.as_array().unwrap().len(), 2, "{cpus}");
    assert_eq!(cpus[1]["cpu-index"], 1);
    assert!(cpus[0]["thread-id"].as_i64().unwrap() > 0, "{cpus}");
    assert_eq!(cpus[0]["target"], "x86_64");
    let chardevs = c.exec("query-chardev");
    let labels: Vec<&str> = chardevs
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["serial0", "compat_monitor0"]);
    let machines = c.exec("query-machines");
    assert!(machines
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "q35" && m["is-default"] == true));
    let version = c.exec("query-version");
    assert!(version["qemu"]["minor"].is_u64());
    // query-commands and query-qmp-schema come from one definition.
    let commands: Vec<String> = c
        .exec("query-commands")
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    let schema = c.exec("query-qmp-schema");
    let in_schema: Vec<String> = schema
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["meta-type"] == "command")
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(commands, in_schema);
    for name in &commands {
        if name == "qmp_capabilities"
            || name == "quit"
            || name == "system_reset"
            || name == "system_powerdown"
            || name == "stop"
            || name == "cont"
        {
            continue;
        }
        let r = c.cmd(&format!(
            r#"{{"execute":"{name}","arguments":{{"command-line":"info version"}}}}"#
        ));
        if name == "human-monitor-command" {
            assert!(r["return"].is_string(), "{r}");
        } else {
            assert_eq!(
                r["error"]["class"], "GenericError",
                "{name} accepted an unknown argument: {r}"
            );
        }
    }
    for event in ["STOP", "RESUME", "RESET", "SHUTDOWN", "POWERDOWN"] {
        assert!(
            schema
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == event && e["meta-type"] == "event"),
            "{event}"
        );
    }
}

#[test]
fn stop_really_pauses_the_vcpus_and_cont_resumes_them_with_events_to_every_client() {
    let (q1, q2) = (qmp_arg("q1.sock"), qmp_arg("q2.sock"));
    let vm = Vm::start("qmp-stop", Program::Spin, &["-qmp", &q1, "-qmp", &q2]);
    let mut a = Qmp::connect(&vm.sock("q1.sock"));
    let mut b = Qmp::connect(&vm.sock("q2.sock"));
    let pid = vm.child.as_ref().unwrap().id();
    let tid = a.exec("query-cpus-fast")[0]["thread-id"].as_i64().unwrap();
    let busy = |ms| {
        let t0 = thread_ticks(pid, tid);
        std::thread::sleep(Duration::from_millis(ms));
        thread_ticks(pid, tid) - t0
    };
    let running = busy(1000);
    assert!(
        running >= 10,
        "the spinning vCPU used {running} ticks in 1 s while running"
    );

    assert_eq!(a.exec("stop"), json!({}));
    // QEMU sends STOP before the reply; rampart too.
    assert!(
        a.events.iter().any(|e| e["event"] == "STOP"),
        "{:?}",
        a.events
    );
    a.event("STOP");
    let stop = b.event("STOP");
    assert!(
        stop["timestamp"]["seconds"].as_u64().unwrap() > 1_600_000_000,
        "{stop}"
    );
    assert!(stop["timestamp"]["microseconds"].is_u64(), "{stop}");
    assert_eq!(
        a.exec("query-status"),
        json!({"running": false, "status": "paused"})
    );
    let stopped = busy(1000);
    assert!(
        stopped <= 1,
        "the vCPU used {stopped} ticks in 1 s after stop"
    );
    // stop again: no-op, no event.
    assert_eq!(a.exec("stop"), json!({}));

    assert_eq!(b.exec("cont"), json!({}));
    a.event("RESUME");
    assert_eq!(a.exec("query-status")["status"], "running");
    let resumed = busy(1000);
    assert!(
        resumed >= 10,
        "the vCPU used {resumed} ticks in 1 s after cont"
    );
    assert!(
        a.events.iter().all(|e| e["event"] != "STOP"),
        "second stop emitted an event"
    );
}

#[test]
fn start_paused_is_prelaunch_until_cont() {
    let q = qmp_arg("q.sock");
    let mut vm = Vm::start(
        "qmp-prelaunch",
        Program::Hello,
        &["-qmp", &q, "-S", "-no-reboot"],
    );
    let mut c = Qmp::connect(&vm.sock("q.sock"));
    assert_eq!(
        c.exec("query-status"),
        json!({"running": false, "status": "prelaunch"})
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.exec("cont"), json!({}));
    c.event("RESUME");
    // The hello guest prints and resets; -no-reboot turns the reset into a shutdown.
    let shutdown = c.event("SHUTDOWN");
    assert_eq!(
        shutdown["data"],
        json!({"guest": true, "reason": "guest-reset"})
    );
    let out = read_until(vm.child(), HELLO_LINE, LIMIT);
    assert!(out.contains(HELLO_LINE), "{out}");
    let r = vm.finish();
    assert_eq!(r.code, Some(0), "{r:?}");
}

#[test]
fn system_reset_reboots_the_guest_and_quit_sends_shutdown_before_its_reply_and_exits() {
    let q = qmp_arg("q.sock");
    let mut vm = Vm::start("qmp-reset", Program::Spin, &["-qmp", &q]);
    let mut c = Qmp::connect(&vm.sock("q.sock"));
    let first = read_until(vm.child(), SPIN_LINE, LIMIT);
    assert!(first.contains(SPIN_LINE), "{first}");

    assert_eq!(c.exec("system_reset"), json!({}));
    let reset = c.event("RESET");
    assert_eq!(
        reset["data"],
        json!({"guest": false, "reason": "host-qmp-system-reset"})
    );
    let again = read_until(vm.child(), SPIN_LINE, LIMIT);
    assert!(
        again.contains(SPIN_LINE),
        "the guest did not boot again: {again}"
    );
    assert_eq!(c.exec("query-status")["status"], "running");

    assert_eq!(c.exec("quit"), json!({}));
    // QEMU 10 writes SHUTDOWN before the reply to `quit` (checked against
    // qemu-system-x86_64 10.0): the event must already be there when the reply arrives.
    assert!(
        c.events.iter().any(|e| e["event"] == "SHUTDOWN"),
        "SHUTDOWN did not precede quit's reply: {:?}",
        c.events
    );
    let shutdown = c.event("SHUTDOWN");
    assert_eq!(
        shutdown["data"],
        json!({"guest": false, "reason": "host-qmp-quit"})
    );
    let sock = vm.sock("q.sock");
    let r = vm.finish();
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(!sock.exists(), "the QMP socket was left behind");
}

#[test]
fn one_client_per_socket_and_a_client_leaving_mid_command_harms_nothing() {
    let q = qmp_arg("q.sock");
    let vm = Vm::start("qmp-clients", Program::Spin, &["-qmp", &q]);
    let path = vm.sock("q.sock");
    let mut first = Qmp::connect(&path);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A second client waits (no greeting) while the first is connected, as in QEMU.
    let mut second = common::qmp::connect(&path, LIMIT);
    second
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 1];
    assert!(
        second.read(&mut b).is_err(),
        "a second client was served at once"
    );
    // The first sends stop and hangs up without reading the reply.
    first.send_raw(br#"{"execute":"stop"}"#);
    drop(first);
    second.set_read_timeout(Some(LIMIT)).unwrap();
    let mut c = Qmp {
        reader: std::io::BufReader::new(second.try_clone().unwrap()),
        writer: second,
        events: Vec::new(),
    };
    assert!(c.read().get("QMP").is_some());
    assert_eq!(c.exec_after_negotiation("query-status")["status"], "paused");
}

trait Negotiate {
    fn exec_after_negotiation(&mut self, name: &str) -> serde_json::Value;
}

impl Negotiate for Qmp {
    fn exec_after_negotiation(&mut self, name: &str) -> serde_json::Value {
        assert_eq!(self.exec("qmp_capabilities"), json!({}));
        self.exec(name)
    }
}

#[test]
fn a_flooding_client_that_never_reads_stalls_neither_the_vm_nor_other_monitors() {
    let (q1, q2) = (qmp_arg("flood.sock"), qmp_arg("q.sock"));
    let vm = Vm::start("qmp-flood", Program::Spin, &["-qmp", &q1, "-qmp", &q2]);
    let mut flood = Qmp::connect(&vm.sock("flood.sock"));
    let mut c = Qmp::connect(&vm.sock("q.sock"));
    flood.writer.set_nonblocking(true).unwrap();
    let cmd = br#"{"execute":"query-commands"}"#.repeat(1000);
    let start = Instant::now();
    let mut sent = 0usize;
    while start.elapsed() < Duration::from_secs(3) {
        match flood.writer.write(&cmd) {
            Ok(n) => sent += n,
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
        // The other monitor answers throughout.
        let t = Instant::now();
        assert_eq!(c.exec("query-status")["status"], "running");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "query-status took {:?}",
            t.elapsed()
        );
    }
    assert!(sent > 0);
    assert_eq!(c.exec("query-status")["running"], true);
}

#[test]
fn hmp_runs_commands_through_the_same_layer_and_human_monitor_command_too() {
    let (q, h) = (
        qmp_arg("q.sock"),
        "unix:{dir}/h.sock,server=on,wait=off".to_string(),
    );
    let vm = Vm::start(
        "hmp",
        Program::Spin,
        &["-qmp", &q, "-monitor", &h, "-name", "hmpvm"],
    );
    let mut c = Qmp::connect(&vm.sock("q.sock"));
    let (mut hmp, banner) = Hmp::connect(&vm.sock("h.sock"));
    assert!(
        banner.contains("monitor - type 'help' for more information"),
        "{banner}"
    );
    assert!(banner.ends_with("(qemu) "), "{banner}");

    assert_eq!(hmp.run("info status"), "VM status: running\r\n");
    assert_eq!(hmp.run("info name"), "hmpvm\r\n");
    assert!(hmp.run("info cpus").starts_with("* CPU #0: thread_id="));
    assert!(hmp
        .run("info chardev")
        .contains("compat_monitor1: filename=unix:"));
    assert!(hmp.run("info version").contains("rampart"));
    let help = hmp.run("help");
    for cmd in [
        "cont",
        "stop",
        "info",
        "quit",
        "system_reset",
        "system_powerdown",
    ] {
        assert!(help.contains(cmd), "help lacks {cmd}: {help}");
    }
    assert_eq!(hmp.run("bogus"), "unknown command: 'bogus'\r\n");
    assert_eq!(hmp.run("info bogus"), "unknown command: 'info bogus'\r\n");
    assert_eq!(hmp.run("stop"), "");
    c.event("STOP");
    assert_eq!(hmp.run("info status"), "VM status: paused\r\n");
    let r = c.cmd(r#"{"execute":"human-monitor-command","arguments":{"command-line":"cont"}}"#);
    assert_eq!(r["return"], "");
    c.event("RESUME");
    let r =
        c.cmd(r#"{"execute":"human-monitor-command","arguments":{"command-line":"info status"}}"#);
    assert_eq!(r["return"], "VM status: running\r\n");
    assert_eq!(hmp.run("quit"), "");
    let r = vm.finish();
    assert_eq!(r.code, Some(0), "{r:?}");
}

fn qemu_img(args: &[&str]) {
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is installed (apt-get install qemu-utils)");
    assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
}

#[test]
fn query_block_blockstats_and_info_block_report_the_drives_in_qemus_shapes() {
    let images = Scratch::new("qmp-block-images");
    let raw = images.path("a.raw");
    let base = images.path("base.raw");
    let top = images.path("top.qcow2");
    qemu_img(&["create", "-q", "-f", "raw", raw.to_str().unwrap(), "4M"]);
    qemu_img(&["create", "-q", "-f", "raw", base.to_str().unwrap(), "8M"]);
    let (b, t) = (base.to_str().unwrap(), top.to_str().unwrap());
    qemu_img(&["create", "-q", "-f", "qcow2", "-b", b, "-F", "raw", t]);
    let drive = format!("file={},format=raw,if=virtio,id=d0", raw.display());
    let blockdev =
        format!("driver=qcow2,node-name=n1,read-only=on,file.driver=file,file.filename={t}");
    let q = qmp_arg("q.sock");
    let vm = Vm::start(
        "qmp-block",
        Program::Spin,
        &[
            "-qmp",
            &q,
            "-drive",
            &drive,
            "-blockdev",
            &blockdev,
            "-device",
            "virtio-blk-pci,drive=n1,id=vd1",
        ],
    );
    let mut c = Qmp::connect(&vm.sock("q.sock"));

    let blocks = c.exec("query-block");
    let want = json!([
        {"device": "d0", "qdev": "/machine/peripheral-anon/device[0]/virtio-backend",
         "type": "unknown", "removable": false, "locked": false, "io-status": "ok",
         "inserted": {"file": raw.display().to_string(), "node-name": "d0", "ro": false,
            "drv": "raw", "backing_file_depth": 0, "active": true, "encrypted": false,
            "detect_zeroes": "off", "bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0,
            "iops_rd": 0, "iops_wr": 0, "write_threshold": 0,
            "image": {"filename": raw.display().to_string(), "format": "raw",
                      "virtual-size": 4 << 20},
            "cache": {"writeback": true, "direct": false, "no-flush": false}}},
        {"device": "", "qdev": "/machine/peripheral/vd1/virtio-backend",
         "type": "unknown", "removable": false, "locked": false, "io-status": "ok",
         "inserted": {"file": t, "node-name": "n1", "ro": true, "drv": "qcow2",
            "backing_file": b, "backing_file_depth": 1, "active": true, "encrypted": false,
            "detect_zeroes": "off", "bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0,
            "iops_rd": 0, "iops_wr": 0, "write_threshold": 0,
            "image": {"filename": t, "format": "qcow2", "virtual-size": 8 << 20,
                      "full-backing-filename": b, "backing-filename-format": "raw"},
            "cache": {"writeback": true, "direct": false, "no-flush": false}}},
    ]);
    assert_eq!(blocks, want);

    let stats = c.exec("query-blockstats");
    let list = stats.as_array().unwrap();
    assert_eq!(list.len(), 2, "{stats}");
    assert_eq!(list[0]["device"], "d0");
    assert_eq!(list[1]["node-name"], "n1");
    assert_eq!(list[1]["qdev"], "/machine/peripheral/vd1/virtio-backend");
    for e in list {
        let s = &e["stats"];
        // The test guest does no disk I/O: every counter is a true zero.
        for k in [
            "rd_bytes",
            "wr_bytes",
            "rd_operations",
            "wr_operations",
            "flush_operations",
            "unmap_operations",
            "failed_rd_operations",
            "invalid_wr_operations",
            "wr_highest_offset",
        ] {
            assert_eq!(s[k], 0, "{k}: {s}");
        }
        assert_eq!(s["account_failed"], true);
        assert_eq!(s["timed_stats"], json!([]));
        assert!(s.get("idle_time_ns").is_none(), "no I/O completed yet: {s}");
    }

    let info =
        c.cmd(r#"{"execute":"human-monitor-command","arguments":{"command-line":"info block"}}"#);
    assert_eq!(
        info["return"],
        format!(
            "d0 (d0): {} (raw)\r\n    Attached to:      \
             /machine/peripheral-anon/device[0]/virtio-backend\r\n    Cache mode:       \
             writeback\r\n\r\nn1: {t} (qcow2, read-only)\r\n    Attached to:      \
             /machine/peripheral/vd1/virtio-backend\r\n    Cache mode:       writeback\r\n    \
             Backing file:     {b} (chain depth: 1)\r\n",
            raw.display()
        )
    );
}

#[test]
fn chardev_and_mon_with_pretty_output_and_wait_on_blocks_start() {
    let chardev = "socket,id=mon0,path={dir}/m.sock,server=on,wait=on";
    let mut vm = Vm::start(
        "qmp-wait",
        Program::Hello,
        &[
            "-chardev",
            chardev,
            "-mon",
            "chardev=mon0,mode=control,pretty=on",
            "-S",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(vm.child().try_wait().unwrap().is_none());
    let s = common::qmp::connect(&vm.sock("m.sock"), LIMIT);
    let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
    // Pretty output spans lines: read until the closing brace at column 0.
    let mut text = String::new();
    while !text.ends_with("\n}\n") {
        std::io::BufRead::read_line(&mut reader, &mut text).unwrap();
    }
    assert!(text.lines().count() > 3, "not pretty: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(v.get("QMP").is_some());
}

#[test]
fn monitor_options_are_checked() {
    for (args, needle) in [
        (vec!["-qmp", "unix:/tmp/x.sock"], "server=on"),
        (
            vec!["-qmp", "tcp:localhost:4444,server=on"],
            "tcp:localhost:4444",
        ),
        (vec!["-mon", "chardev=nothere"], "nothere"),
        (
            vec!["-chardev", "socket,id=a,path=/tmp/a,server=on,telnet=on"],
            "telnet",
        ),
        (vec!["-monitor", "stdio", "-serial", "stdio"], "stdio"),
    ] {
        let mut c = rampart();
        c.args(["-kernel", "/nonexistent"]).args(&args);
        let r = run_to_end(c, LIMIT);
        assert_eq!(r.code, Some(1), "{args:?}: {r:?}");
        assert!(r.stderr.contains(needle), "{args:?}: {}", r.stderr);
    }
}

#[test]
fn a_stale_socket_is_replaced_and_a_regular_file_never_deleted() {
    let dir = Scratch::new("qmp-files");
    let precious = dir.file("precious", b"data");
    let kernel = test_guest(&dir, Program::Spin);
    let mut c = rampart();
    c.args(["-accel", "kvm", "-nographic", "-kernel"])
        .arg(&kernel);
    c.arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", precious.display()));
    let r = run_to_end(c, LIMIT);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("not a socket"), "{}", r.stderr);
    assert_eq!(std::fs::read(&precious).unwrap(), b"data");

    let stale = dir.path("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let q =
        "unix:{dir}/stale.sock,server=on,wait=off".replace("{dir}", &dir.0.display().to_string());
    let mut vm = Vm::start("qmp-stale", Program::Spin, &["-qmp", &q]);
    let mut c = Qmp::connect(&stale);
    assert_eq!(c.exec("query-status")["running"], true);
    drop(c);
    let _ = vm.child();
}
