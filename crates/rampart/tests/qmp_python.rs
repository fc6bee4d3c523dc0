//! QEMU's own QMP clients against rampart: `qemu.qmp`'s `QMPClient` (the library management
//! tools build on) and its `qmp-shell`, from PyPI in a virtual environment.
//!
//! The environment is `$RAMPART_QMP_VENV` or `target/qmp-venv`; `.ci/run` creates it, and this
//! test creates it when it is missing (`python3 -m venv`, `pip install qemu.qmp`: needs PyPI).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use common::*;
use rampart_testguest::Program;

const LIMIT: Duration = Duration::from_secs(60);

fn venv() -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::var_os("RAMPART_QMP_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/qmp-venv"));
    if dir.join("bin/qmp-shell").exists() {
        return dir;
    }
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 -m venv {} failed (Debian: apt-get install python3-venv)",
        dir.display()
    );
    let ok = Command::new(dir.join("bin/pip"))
        .args(["install", "-q", "qemu.qmp"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "pip install qemu.qmp into {} failed (is PyPI reachable?)",
        dir.display()
    );
    dir
}

struct Guest {
    child: std::process::Child,
    _dir: Scratch,
    sock: PathBuf,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(tag: &str) -> Guest {
    require_kvm();
    let dir = Scratch::new(tag);
    let kernel = test_guest(&dir, Program::Spin);
    let sock = dir.path("qmp.sock");
    let child = rampart()
        .args(["-accel", "kvm", "-m", "64", "-serial", "none", "-kernel"])
        .arg(&kernel)
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn rampart");
    // Wait for the socket.
    drop(common::qmp::connect(&sock, LIMIT));
    Guest {
        child,
        _dir: dir,
        sock,
    }
}

fn run(cmd: &mut Command, input: &str) -> (bool, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn script() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/qmp_client.py"
    ))
}

#[test]
fn qemu_qmp_client_negotiates_executes_gets_errors_and_events_and_quits() {
    let venv = venv();
    let mut g = start("pyqmp");
    let (ok, out) = run(
        Command::new(venv.join("bin/python3"))
            .arg(script())
            .arg(&g.sock),
        "",
    );
    assert!(ok && out.contains("qmp_client: ok"), "{out}");
    // quit ended rampart with status 0.
    let status = g.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn qmp_shell_runs_qmp_and_hmp_commands() {
    let venv = venv();
    let g = start("qmpshell");
    let (ok, out) = run(
        Command::new(venv.join("bin/qmp-shell")).arg(&g.sock),
        "query-status\nstop\nquery-status\nbogus\n",
    );
    assert!(ok, "{out}");
    assert!(
        out.contains(r#"{"return": {"running": true, "status": "running"}}"#),
        "{out}"
    );
    assert!(
        out.contains(r#"{"return": {"running": false, "status": "paused"}}"#),
        "{out}"
    );
    assert!(out.contains(r#""class": "CommandNotFound""#), "{out}");
    let (ok, out) = run(
        Command::new(venv.join("bin/qmp-shell"))
            .arg("-H")
            .arg(&g.sock),
        "cont\ninfo status\n",
    );
    assert!(ok, "{out}");
    assert!(out.contains("VM status: running"), "{out}");
}

#[test]
fn qemu_qmp_client_speaks_to_the_tls_monitor_with_client_certificates() {
    use common::pki::{free_port, Ca};
    let venv = venv();
    require_kvm();
    let dir = Scratch::new("pytls");
    let ca = Ca::new("Test CA");
    ca.write_server_dir(&dir.path("pki"));
    for cn in ["admin", "dashboard", "eve"] {
        let c = ca.client(cn);
        dir.file(&format!("{cn}-cert.pem"), c.cert_pem.as_bytes());
        dir.file(&format!("{cn}-key.pem"), c.key_pem.as_bytes());
    }
    let port = free_port();
    let authz = serde_json::json!({
        "qom-type": "authz-list", "id": "a0", "policy": "deny",
        "rules": [
            {"match": "C=GB,O=Example Org,CN=admin", "policy": "allow"},
            {"match": "*,CN=dashboard", "policy": "allow", "format": "glob",
             "commands": ["query-*"]},
        ]
    });
    let log = dir.path("stderr.log");
    let mut child = rampart()
        .args(["-accel", "kvm", "-m", "64", "-serial", "none", "-kernel"])
        .arg(test_guest(&dir, Program::Spin))
        .arg("-object")
        .arg(format!(
            "tls-creds-x509,id=t0,dir={},endpoint=server,verify-peer=on",
            dir.path("pki").display()
        ))
        .arg("-object")
        .arg(authz.to_string())
        .arg("-qmp")
        .arg(format!(
            "tcp:127.0.0.1:{port},server=on,wait=off,tls-creds=t0,tls-authz=a0"
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .expect("spawn rampart");
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("monitor listening on TCP")
    {
        assert!(start.elapsed() < LIMIT, "rampart did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let script = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/qmp_tls_client.py"
    ));
    let mut results = Vec::new();
    for (role, cn) in [
        ("admin", "admin"),
        ("dashboard", "dashboard"),
        ("denied", "eve"),
    ] {
        let mut cmd = Command::new(venv.join("bin/python3"));
        cmd.arg(script)
            .arg(role)
            .arg(port.to_string())
            .arg(dir.path("pki/ca-cert.pem"))
            .arg(dir.path(&format!("{cn}-cert.pem")))
            .arg(dir.path(&format!("{cn}-key.pem")));
        results.push((role, run(&mut cmd, "")));
    }
    let _ = child.kill();
    let _ = child.wait();
    for (role, (ok, out)) in results {
        assert!(ok && out.contains("qmp_tls_client: ok"), "{role}: {out}");
    }
}

#[test]
fn qemu_qmp_client_passes_descriptors_for_getfd_add_fd_and_blockdev_add() {
    let venv = venv();
    let g = start("pyfd");
    let image = g._dir.file("py.img", &[0u8; 65536]);
    let script = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/fd_client.py"
    ));
    let (ok, out) = run(
        Command::new(venv.join("bin/python3"))
            .arg(script)
            .arg(&g.sock)
            .arg(&image),
        "",
    );
    assert!(ok && out.contains("fd_client: ok"), "{out}");
}
