//! The monitor over the network, end to end on a kvm test guest: TLS with certificates made in
//! the test, QEMU's authz objects and rampart's per-command roles, peers of UNIX sockets
//! matched by SO_PEERCRED, the audit log, and the refusal to start an unprotected TCP monitor.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::pki::{connect, free_port, read_line, Ca, TlsQmp};
use common::qmp::{Hmp, Qmp};
use common::*;
use rampart_testguest::Program;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(30);

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
    /// Starts the spinning guest with `extra` (`{dir}` is the scratch dir) and waits until
    /// the log says `ready` (e.g. the TCP monitor listens).
    fn start(dir: Scratch, extra: &[String], ready: &str) -> Vm {
        require_kvm();
        let kernel = test_guest(&dir, Program::Spin);
        let root = dir.0.display().to_string();
        let log = std::fs::File::create(dir.path("stderr.log")).unwrap();
        let child = rampart()
            .args(["-accel", "kvm", "-m", "64", "-serial", "none", "-kernel"])
            .arg(&kernel)
            .args(extra.iter().map(|a| a.replace("{dir}", &root)))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn rampart");
        let vm = Vm { child, dir };
        let start = Instant::now();
        while !vm.log().contains(ready) {
            assert!(
                start.elapsed() < LIMIT,
                "rampart never logged {ready:?}:\n{}",
                vm.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        vm
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path("stderr.log")).unwrap_or_default()
    }

    fn wait_exit(&mut self) {
        let start = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(start.elapsed() < LIMIT, "rampart did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    }
}

const ADMIN: &str = "C=GB,O=Example Org,CN=admin";
const DASHBOARD: &str = "C=GB,O=Example Org,CN=dashboard";

/// Starts a VM with a TLS QMP monitor on a fresh port: `admin` may do everything,
/// `dashboard` only `query-*`, everyone else is denied; audit log in `{dir}/audit.jsonl`.
fn tls_vm(tag: &str, ca: &Ca) -> (Vm, u16) {
    let dir = Scratch::new(tag);
    ca.write_server_dir(&dir.path("pki"));
    let port = free_port();
    let authz = json!({
        "qom-type": "authz-list", "id": "auth0", "policy": "deny",
        "rules": [
            {"match": ADMIN, "policy": "allow"},
            {"match": "*,CN=dashboard", "policy": "allow", "format": "glob",
             "commands": ["query-*"]},
        ]
    });
    let args = vec![
        "-object".into(),
        "tls-creds-x509,id=tls0,dir={dir}/pki,endpoint=server,verify-peer=on".into(),
        "-object".into(),
        authz.to_string(),
        "-qmp".into(),
        format!("tcp:127.0.0.1:{port},server=on,wait=off,tls-creds=tls0,tls-authz=auth0"),
        "-audit".into(),
        "file={dir}/audit.jsonl".into(),
    ];
    (Vm::start(dir, &args, "monitor listening on TCP"), port)
}

/// What a refused client gets: it must never see the greeting (or any QMP byte).
fn assert_refused(what: &str, port: u16, ca: &Ca, cred: Option<&common::pki::Cred>) {
    let Ok(s) = connect(port, ca, cred) else {
        return; // refused during the handshake
    };
    let mut r = BufReader::new(s);
    match read_line(&mut r) {
        Ok(v) => panic!("{what}: got {v}"),
        Err(e) => assert!(e == "closed" || e.starts_with("error"), "{what}: {e}"),
    }
}

#[test]
fn tls_monitor_admits_allowed_certificates_and_refuses_others_before_the_greeting() {
    let ca = Ca::new("Test CA");
    let (mut vm, port) = tls_vm("tls-main", &ca);

    // The administrator's certificate: every command.
    let mut admin = TlsQmp::open(connect(port, &ca, Some(&ca.client("admin"))).unwrap()).unwrap();
    assert_eq!(
        admin.cmd(r#"{"execute":"query-status"}"#)["return"]["status"],
        "running"
    );
    assert_eq!(admin.cmd(r#"{"execute":"stop"}"#)["return"], json!({}));
    assert_eq!(
        admin.cmd(r#"{"execute":"query-status"}"#)["return"]["status"],
        "paused"
    );
    assert_eq!(admin.cmd(r#"{"execute":"cont"}"#)["return"], json!({}));
    drop(admin);

    // The read-only role: queries yes, stop no (its own error class), and nothing changes;
    // HMP through QMP runs as the QMP command it maps to.
    let mut dash =
        TlsQmp::open(connect(port, &ca, Some(&ca.client("dashboard"))).unwrap()).unwrap();
    assert_eq!(
        dash.cmd(r#"{"execute":"query-status"}"#)["return"]["status"],
        "running"
    );
    let r = dash.cmd(r#"{"execute":"stop","id":7}"#);
    assert_eq!(r["error"]["class"], "PermissionDenied", "{r}");
    assert_eq!(r["id"], 7);
    assert_eq!(
        dash.cmd(r#"{"execute":"query-status"}"#)["return"]["status"],
        "running"
    );
    let r = dash.cmd(r#"{"execute":"human-monitor-command","arguments":{"command-line":"stop"}}"#);
    assert_eq!(r["error"]["class"], "PermissionDenied", "{r}");
    drop(dash);

    // Refused before the greeting: a DN not in the list, a certificate of another CA, an
    // expired certificate, no certificate, and a client that does not speak TLS.
    assert_refused("denied DN", port, &ca, Some(&ca.client("eve")));
    let other = Ca::new("Other CA");
    assert_refused("unknown CA", port, &ca, Some(&other.client("admin")));
    assert_refused("expired", port, &ca, Some(&ca.expired_client("admin")));
    assert_refused("no client certificate", port, &ca, None);
    let mut plain = TcpStream::connect(("127.0.0.1", port)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    plain
        .write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(
        !String::from_utf8_lossy(&got).contains("QMP"),
        "plain TCP client got {got:?}"
    );
    drop(plain);

    // The administrator is still served after all that, and ends the VM.
    let mut admin = TlsQmp::open(connect(port, &ca, Some(&ca.client("admin"))).unwrap()).unwrap();
    assert_eq!(admin.cmd(r#"{"execute":"quit"}"#)["return"], json!({}));
    vm.wait_exit();

    // Every attempt is in the audit log, with the right identity.
    let audit = vm.audit();
    let find = |pred: &dyn Fn(&Value) -> bool| audit.iter().filter(|l| pred(l)).count();
    let connects = |peer: &str, decision: &str| {
        find(&|l| l["event"] == "connect" && l["peer"] == peer && l["decision"] == decision)
    };
    assert_eq!(connects(ADMIN, "allowed"), 2, "{audit:#?}");
    assert_eq!(connects(DASHBOARD, "allowed"), 1, "{audit:#?}");
    assert_eq!(
        connects("C=GB,O=Example Org,CN=eve", "denied"),
        1,
        "{audit:#?}"
    );
    // Unknown CA, expired, no certificate, plain TCP: refused in the handshake.
    let handshakes = find(&|l| {
        l["event"] == "connect"
            && l["decision"] == "denied"
            && l["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("TLS handshake"))
    });
    assert_eq!(handshakes, 4, "{audit:#?}");
    let cmd = |peer: &str, c: &str, decision: &str, result: &str| {
        find(&|l| {
            l["event"] == "command"
                && l["peer"] == peer
                && l["command"] == c
                && l["decision"] == decision
                && l["result"] == result
        })
    };
    assert_eq!(cmd(ADMIN, "stop", "allowed", "ok"), 1, "{audit:#?}");
    assert_eq!(cmd(ADMIN, "quit", "allowed", "ok"), 1, "{audit:#?}");
    assert_eq!(
        cmd(DASHBOARD, "stop", "denied", "PermissionDenied"),
        1,
        "{audit:#?}"
    );
    assert_eq!(
        cmd(DASHBOARD, "query-status", "allowed", "ok"),
        2,
        "{audit:#?}"
    );
    let line = audit
        .iter()
        .find(|l| l["command"] == "human-monitor-command")
        .unwrap();
    assert_eq!(line["arguments"]["command-line"], "stop");
    assert_eq!(line["transport"], "tls");
    assert_eq!(line["monitor"], "compat_monitor0");
    assert!(line["address"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(line["duration-us"].is_u64());
}

#[test]
fn a_client_stalled_in_the_handshake_does_not_block_other_monitors() {
    let ca = Ca::new("Test CA");
    let dir = Scratch::new("tls-stall");
    ca.write_server_dir(&dir.path("pki"));
    let port = free_port();
    let args: Vec<String> = vec![
        "-object".into(),
        "tls-creds-x509,id=tls0,dir={dir}/pki,verify-peer=on".into(),
        "-object".into(),
        json!({"qom-type": "authz-simple", "id": "a0", "identity": ADMIN}).to_string(),
        "-qmp".into(),
        format!("tcp:127.0.0.1:{port},server=on,wait=off,tls-creds=tls0,tls-authz=a0"),
        "-qmp".into(),
        "unix:{dir}/q.sock,server=on,wait=off".into(),
    ];
    let vm = Vm::start(dir, &args, "monitor listening on TCP");
    // Half a ClientHello, then silence.
    let mut stalled = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut q = Qmp::connect(&vm.dir.path("q.sock"));
    assert_eq!(q.exec("query-status")["status"], "running");
    // The stalled client is dropped at the handshake deadline.
    stalled
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut got = Vec::new();
    let start = Instant::now();
    let _ = stalled.read_to_end(&mut got);
    assert!(start.elapsed() < Duration::from_secs(25), "never dropped");
    assert!(!String::from_utf8_lossy(&got).contains("QMP"));
    assert!(vm.log().contains("TLS handshake timed out"), "{}", vm.log());
}

#[test]
fn unix_monitor_peers_are_authorized_by_uid_and_hmp_maps_to_qmp_commands() {
    // SAFETY: getuid() has no preconditions.
    let uid = unsafe { libc::getuid() };
    let dir = Scratch::new("tls-unix");
    let args: Vec<String> = vec![
        "-object".into(),
        format!(
            "authz-list,id=ro,policy=deny,rules.0.match=uid:{uid},rules.0.policy=allow,\
             rules.0.commands.0=query-*"
        ),
        "-object".into(),
        "authz-simple,id=nobody,identity=uid:4294967294".into(),
        "-qmp".into(),
        "unix:{dir}/q.sock,server=on,wait=off,tls-authz=ro".into(),
        "-monitor".into(),
        "unix:{dir}/h.sock,server=on,wait=off,tls-authz=ro".into(),
        "-chardev".into(),
        "socket,id=locked,path={dir}/o.sock,server=on,wait=off,tls-authz=nobody".into(),
        "-mon".into(),
        "chardev=locked,mode=control".into(),
    ];
    // The sockets are bound before the kernel is loaded; connecting retries meanwhile.
    let vm = Vm::start(dir, &args, "loaded ELF kernel");
    let mut q = Qmp::connect(&vm.dir.path("q.sock"));
    assert_eq!(q.exec("query-status")["status"], "running");
    let r = q.cmd(r#"{"execute":"stop"}"#);
    assert_eq!(r["error"]["class"], "PermissionDenied", "{r}");
    assert_eq!(q.exec("query-status")["status"], "running");

    let (mut h, _) = Hmp::connect(&vm.dir.path("h.sock"));
    assert!(h.run("info status").contains("VM status: running"));
    let out = h.run("stop");
    assert!(out.contains("Command 'stop' is not permitted"), "{out}");
    assert!(h.run("info status").contains("VM status: running"));

    // A monitor whose authz names another uid: closed before the greeting.
    let mut s = common::qmp::connect(&vm.dir.path("o.sock"), LIMIT);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
}

#[test]
fn tcp_monitor_without_tls_and_authz_refuses_to_start() {
    let port = free_port();
    let out = run_to_end(
        {
            let mut c = rampart();
            c.args(["-m", "64", "-kernel", "/nonexistent", "-qmp"]);
            c.arg(format!("tcp:127.0.0.1:{port},server=on,wait=off"));
            c
        },
        LIMIT,
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("refusing a monitor on TCP"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("docs/security.md"), "{}", out.stderr);
    // Nothing listens.
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn insecure_tcp_monitor_starts_only_when_asked_and_says_so() {
    let port = free_port();
    let args: Vec<String> = vec![
        "-qmp".into(),
        format!("tcp:127.0.0.1:{port},server=on,wait=off,insecure=on"),
    ];
    let vm = Vm::start(
        Scratch::new("tls-insecure"),
        &args,
        "monitor listening on TCP",
    );
    assert!(vm.log().contains("INSECURE"), "{}", vm.log());
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let mut r = BufReader::new(s);
    let g = read_line(&mut r).unwrap();
    assert!(g.get("QMP").is_some(), "{g}");
}

/// The directory layout QEMU documents is what rampart reads.
#[test]
fn missing_credential_files_are_named_at_start_up() {
    let dir = Scratch::new("tls-missing");
    std::fs::create_dir_all(dir.path("pki")).unwrap();
    let port = free_port();
    let out = run_to_end(
        {
            let mut c = rampart();
            c.args(["-accel", "kvm", "-m", "64", "-serial", "none", "-kernel"]);
            c.arg(test_guest(&dir, Program::Spin));
            c.arg("-object").arg(format!(
                "tls-creds-x509,id=t0,dir={},verify-peer=on",
                dir.path("pki").display()
            ));
            c.args(["-object", "authz-simple,id=a0,identity=CN=x", "-qmp"]);
            c.arg(format!(
                "tcp:127.0.0.1:{port},server=on,wait=off,tls-creds=t0,tls-authz=a0"
            ));
            c
        },
        LIMIT,
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("server-cert.pem"), "{}", out.stderr);
}

#[test]
fn hmp_over_tls_shows_its_banner_only_after_authorization_and_keeps_the_role() {
    let ca = Ca::new("Test CA");
    let dir = Scratch::new("tls-hmp");
    ca.write_server_dir(&dir.path("pki"));
    let port = free_port();
    let authz = json!({
        "qom-type": "authz-list", "id": "a0", "policy": "deny",
        "rules": [{"match": DASHBOARD, "policy": "allow", "commands": ["query-*"]}]
    });
    let args: Vec<String> = vec![
        "-object".into(),
        "tls-creds-x509,id=tls0,dir={dir}/pki,verify-peer=on".into(),
        "-object".into(),
        authz.to_string(),
        "-monitor".into(),
        format!("tcp:127.0.0.1:{port},server=on,wait=off,tls-creds=tls0,tls-authz=a0"),
    ];
    let _vm = Vm::start(dir, &args, "monitor listening on TCP");

    // A refused certificate gets no banner.
    assert_refused("denied DN", port, &ca, Some(&ca.client("admin")));

    let mut s = connect(port, &ca, Some(&ca.client("dashboard"))).unwrap();
    let until_prompt = |s: &mut common::pki::TlsClient| {
        let mut acc = Vec::new();
        let mut b = [0u8; 1];
        while !acc.ends_with(b"(qemu) ") {
            let n = s.read(&mut b).expect("read from HMP");
            assert!(n > 0, "HMP closed: {:?}", String::from_utf8_lossy(&acc));
            acc.push(b[0]);
        }
        String::from_utf8_lossy(&acc).into_owned()
    };
    assert!(until_prompt(&mut s).contains("monitor"));
    s.write_all(b"info status\n").unwrap();
    assert!(until_prompt(&mut s).contains("VM status: running"));
    s.write_all(b"stop\n").unwrap();
    let out = until_prompt(&mut s);
    assert!(out.contains("Command 'stop' is not permitted"), "{out}");
    s.write_all(b"info status\n").unwrap();
    assert!(until_prompt(&mut s).contains("VM status: running"));
}
