//! Linux-level test of virtio-net on taps: Debian's kernel under rampart's software CPU talks
//! to the host through two NICs in a network namespace of the test's own (addresses exist only
//! there). One boot checks everything — boots under the interpreter cost about a minute:
//! ping both ways, TCP both ways (checksummed), `set_link` down and up, the receive filter the
//! guest sets (query-rx-filter, NIC_RX_FILTER_CHANGED), a transmit rate limit (then lowered
//! and lifted at run time), a tap passed as a descriptor, and a throttled disk.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::linux::*;
use common::netns::NetNs;
use common::qmp::Qmp;
use common::*;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(600);
const MIB: usize = 1 << 20;
/// eth1's transmit limit (bytes per second, Ethernet frames with headers).
const TX_RATE: u64 = 256 * 1024;
/// Bytes the guest sends through eth1 (about 5 s at the limit).
const RATE_BYTES: usize = 1_310_720;
/// eth1's transmit limit after it is lowered at run time, and the bytes sent under it (5 s).
const TX_LOWERED: u64 = 128 * 1024;
const LOWERED_BYTES: usize = 655_360;
/// Bytes sent through eth1 once its limit is lifted (the guest's /tmp/out again).
const LIFTED_BYTES: usize = 4 * MIB;
/// The disk's read limit, and its size (5 s at the limit).
const BLK_RATE: u64 = 1 << 20;
const BLK_BYTES: usize = 5 * MIB;

/// Accepts one connection on `listener` and returns what it sent and how long it took from
/// the connection to its end.
fn receive_all(listener: TcpListener) -> (Vec<u8>, Duration) {
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let deadline = Instant::now() + LIMIT;
    let mut s = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("no connection from the guest on {listener:?}: {e}"),
        }
    };
    s.set_nonblocking(false).expect("blocking stream");
    let start = Instant::now();
    let mut data = Vec::new();
    s.read_to_end(&mut data).expect("read");
    (data, start.elapsed())
}

/// Waits for the guest's `net-step: NAME` line.
fn step(lines: &mpsc::Receiver<String>, name: &str, seen: &mut String) {
    let want = format!("net-step: {name}");
    let deadline = Instant::now() + LIMIT;
    while Instant::now() < deadline {
        match lines.recv_timeout(Duration::from_secs(1)) {
            Ok(l) => {
                seen.push_str(&l);
                seen.push('\n');
                if l.trim_end() == want {
                    return;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    panic!("the guest never reached '{want}':\n{seen}");
}

fn ping(ns: &NetNs, addr: &str, count: &str) -> bool {
    ns.command("ping".as_ref())
        .args(["-c", count, "-W", "3", addr])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run ping")
        .success()
}

#[test]
fn linux_uses_virtio_net_on_taps() {
    // Arrange: the namespace, its two taps (tap0 handed over as a descriptor, tap1 opened by
    // name), a disk, and the host's listeners.
    let ns = NetNs::new("net");
    ns.tap("tap0", "10.0.2.1/24");
    ns.tap("tap1", "10.0.3.1/24");
    let tap_fd = ns.open_tap_fd("tap0");
    let dir = Scratch::new("linux-net");
    let disk = dir.file("disk.img", &vec![0x5a; BLK_BYTES]);
    let sock = dir.path("qmp.sock");
    let l_tx = ns
        .spawn(|| TcpListener::bind("10.0.2.1:5001").unwrap())
        .join()
        .unwrap();
    let l_rate = ns
        .spawn(|| TcpListener::bind("10.0.3.1:5003").unwrap())
        .join()
        .unwrap();
    let from_guest = std::thread::spawn(move || receive_all(l_tx));
    let rate = std::thread::spawn(move || receive_all(l_rate));
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let to_guest: Vec<u8> = (0..4 * MIB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let to_guest_file = dir.file("to-guest", &to_guest);

    let base = guest_cmd("net", "virtio_net,virtio_blk");
    let mut cmd = ns.command(base.get_program());
    cmd.args(base.get_args())
        .env("RAMPART_LOG", "info")
        .stdin(Stdio::null())
        .arg("-netdev")
        .arg(format!("tap,id=n0,fd={}", tap_fd.as_raw_fd()))
        .args(["-device", "virtio-net-pci,netdev=n0,id=nic0"])
        .arg("-netdev")
        .arg(format!(
            "tap,id=n1,ifname=tap1,script=no,downscript=no,throttling.tx-bps={TX_RATE}"
        ))
        .args(["-device", "virtio-net-pci,netdev=n1,mac=52:54:00:00:00:02"])
        .args(["-object", "throttle-group,id=tg0,x-bps-total=8388608"])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio,readonly=on,throttling.group=tg0",
            disk.display()
        ))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());

    // Act: boot, and play the host's part at each step the guest announces.
    let mut child = cmd.spawn().expect("spawn rampart");
    drop(tap_fd);
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let (tx, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        let mut line = Vec::new();
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            for &b in &buf[..n] {
                if b == b'\n' {
                    let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
                    line.clear();
                } else {
                    line.push(b);
                }
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    let mut seen = String::new();
    let mut qmp = Qmp::connect(&sock);

    step(&lines, "send", &mut seen);
    let host_pings_guest = ping(&ns, "10.0.2.15", "3");
    step(&lines, "receive", &mut seen);
    let sender = ns.spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut s = loop {
            match TcpStream::connect("10.0.2.15:5002") {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => panic!("connect to the guest: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        s.write_all(&to_guest).expect("send to the guest");
    });
    sender.join().expect("host -> guest transfer");
    step(&lines, "link-down", &mut seen);
    let filter = qmp.cmd(r#"{"execute":"query-rx-filter","arguments":{"name":"nic0"}}"#);
    let down = qmp.cmd(r#"{"execute":"set_link","arguments":{"name":"nic0","up":false}}"#);
    let bad = qmp.cmd(r#"{"execute":"set_link","arguments":{"name":"nope","up":false}}"#);
    std::thread::sleep(Duration::from_secs(1));
    let host_pings_down = ping(&ns, "10.0.2.15", "2");
    step(&lines, "link-up", &mut seen);
    let up = qmp.cmd(r#"{"execute":"set_link","arguments":{"name":"n0","up":true}}"#);
    // The disk's group limit (8 MiB/s) becomes 1 MiB/s while the guest runs.
    let throttle = qmp.cmd(&format!(
        r#"{{"execute":"block_set_io_throttle","arguments":{{"device":"virtio0","bps":{BLK_RATE},
            "bps_rd":0,"bps_wr":0,"iops":0,"iops_rd":0,"iops_wr":0}}}}"#
    ));
    let block = qmp.exec("query-block");
    // eth1's limit is lowered while the guest runs (rampart's own QMP command), checked, and
    // then lifted through HMP; the guest sends once the host listens after each change.
    step(&lines, "rate-lowered", &mut seen);
    let lower = qmp.cmd(&format!(
        r#"{{"execute":"__rampart_netdev-set-throttle","arguments":{{"id":"n1",
            "rx-bps":0,"rx-pps":0,"tx-bps":{TX_LOWERED},"tx-pps":0}}}}"#
    ));
    let bad_burst = qmp.cmd(&format!(
        r#"{{"execute":"__rampart_netdev-set-throttle","arguments":{{"id":"n1",
            "rx-bps":0,"rx-pps":0,"tx-bps":{TX_LOWERED},"tx-pps":0,"tx-bps-max":1000}}}}"#
    ));
    let bad_id = qmp.cmd(
        r#"{"execute":"__rampart_netdev-set-throttle","arguments":{"id":"n9",
            "rx-bps":0,"rx-pps":0,"tx-bps":1,"tx-pps":0}}"#,
    );
    let lowered_query =
        qmp.cmd(r#"{"execute":"__rampart_query-netdev-throttle","arguments":{"id":"n1"}}"#);
    let l_lowered = ns
        .spawn(|| TcpListener::bind("10.0.3.1:5004").unwrap())
        .join()
        .unwrap();
    let lowered = receive_all(l_lowered);
    step(&lines, "rate-lifted", &mut seen);
    let lift = qmp.cmd(
        r#"{"execute":"human-monitor-command",
            "arguments":{"command-line":"netdev_set_throttle n1 0 0 0 0"}}"#,
    );
    let lifted_info = qmp.cmd(
        r#"{"execute":"human-monitor-command",
            "arguments":{"command-line":"info netdev_throttle"}}"#,
    );
    let l_lifted = ns
        .spawn(|| TcpListener::bind("10.0.3.1:5005").unwrap())
        .join()
        .unwrap();
    let lifted = receive_all(l_lifted);
    step(&lines, "blk-start", &mut seen);
    let blk_start = Instant::now();
    step(&lines, "blk-end", &mut seen);
    let blk_time = blk_start.elapsed();
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let r = Finished {
        code: status.code(),
        signal: std::os::unix::process::ExitStatusExt::signal(&status),
        stdout: reader.join().unwrap(),
        stderr: errors.join().unwrap(),
    };
    let (got, tx_time) = from_guest.join().unwrap();
    eprintln!(
        "guest -> host: {} bytes in {tx_time:?} ({:.0} B/s)",
        got.len(),
        got.len() as f64 / tx_time.as_secs_f64()
    );
    let (rate_got, rate_time) = rate.join().unwrap();

    // Assert
    assert_eq!(r.code, Some(0), "{r:?}");
    let out = test_output(&r, "net");
    // Both NICs, with their MACs, link up, offloads and mergeable buffers negotiated.
    assert_eq!(value(&out, "net_mac0"), "52:54:00:12:34:56", "{out}");
    assert_eq!(value(&out, "net_mac1"), "52:54:00:00:00:02", "{out}");
    assert_eq!(value(&out, "net_carrier0"), "1", "{out}");
    let features = value(&out, "net_features0").as_bytes();
    for bit in [0, 1, 5, 7, 8, 11, 12, 15, 16, 17, 18] {
        assert_eq!(features.get(bit), Some(&b'1'), "feature bit {bit}: {out}");
    }
    // Ping both ways.
    assert_eq!(value(&out, "ping_host"), "ok", "{out}");
    assert!(host_pings_guest, "the host could not ping the guest");
    // TCP both ways, intact.
    assert_eq!(value(&out, "tx_done"), "ok", "{out}");
    let got_file = dir.file("from-guest", &got);
    assert_eq!(got.len(), 4 * MIB);
    assert_eq!(sha256_file(&got_file), value(&out, "tx_sha256"), "{out}");
    assert_eq!(value(&out, "rx_bytes"), (4 * MIB).to_string(), "{out}");
    assert_eq!(
        value(&out, "rx_sha256"),
        sha256_file(&to_guest_file),
        "{out}"
    );
    // The receive filter the guest set, and the event that said so.
    let f = &filter["return"][0];
    assert_eq!(f["name"], "nic0", "{filter}");
    assert_eq!(f["main-mac"], "52:54:00:12:34:56", "{filter}");
    assert_eq!(f["promiscuous"], false, "{filter}");
    assert!(
        qmp.events
            .iter()
            .any(|e| e["event"] == "NIC_RX_FILTER_CHANGED"
                && e["data"]["name"] == "nic0"
                && e["data"]["path"] == "/machine/peripheral/nic0/virtio-backend"),
        "{:?}",
        qmp.events
    );
    // set_link: down stops traffic both ways, up restores it.
    assert_eq!(down["return"], json!({}), "{down}");
    assert_eq!(bad["error"]["class"], "DeviceNotFound", "{bad}");
    assert_eq!(up["return"], json!({}), "{up}");
    assert_eq!(value(&out, "carrier_down"), "0", "{out}");
    assert_eq!(value(&out, "link_down_ping"), "fail", "{out}");
    assert!(
        !host_pings_down,
        "the host pinged the guest through a down link"
    );
    assert_eq!(value(&out, "carrier_up"), "1", "{out}");
    assert_eq!(value(&out, "link_up_ping"), "ok", "{out}");
    // The rate limit: all bytes arrive, no faster than the limit allows (+10%).
    assert_eq!(value(&out, "rate_done"), "ok", "{out}");
    assert_eq!(rate_got.len(), RATE_BYTES);
    let rate = rate_got.len() as f64 / rate_time.as_secs_f64();
    assert!(
        rate <= TX_RATE as f64 * 1.1,
        "{rate:.0} B/s through a {TX_RATE} B/s limit ({rate_time:?})"
    );
    // The limit changed at run time: lowered, the new bound holds (+10%); errors name the
    // culprit; lifted, the NIC runs faster than any limit it had.
    assert_eq!(lower["return"], json!({}), "{lower}");
    assert_eq!(
        bad_burst["error"]["desc"], "tx-bps-max cannot be lower than tx-bps",
        "{bad_burst}"
    );
    assert_eq!(bad_id["error"]["class"], "DeviceNotFound", "{bad_id}");
    let q = &lowered_query["return"][0];
    assert_eq!(q["id"], "n1", "{lowered_query}");
    assert_eq!(q["tx-bps"], TX_LOWERED, "{lowered_query}");
    assert_eq!(value(&out, "rate_lowered_done"), "ok", "{out}");
    assert_eq!(lowered.0.len(), LOWERED_BYTES);
    let lowered_rate = LOWERED_BYTES as f64 / lowered.1.as_secs_f64();
    assert!(
        lowered_rate <= TX_LOWERED as f64 * 1.1,
        "{lowered_rate:.0} B/s through a limit lowered to {TX_LOWERED} B/s ({:?})",
        lowered.1
    );
    assert_eq!(lift["return"], "", "{lift}");
    let info = lifted_info["return"].as_str().unwrap_or_default();
    assert!(
        info.contains("n1 (NIC ") && info.contains("): no limits"),
        "{info}"
    );
    assert_eq!(value(&out, "rate_lifted_done"), "ok", "{out}");
    assert_eq!(lifted.0.len(), LIFTED_BYTES);
    let lifted_rate = LIFTED_BYTES as f64 / lifted.1.as_secs_f64();
    eprintln!(
        "eth1: {rate:.0} B/s at first, {lowered_rate:.0} B/s lowered, {lifted_rate:.0} B/s lifted"
    );
    assert!(
        lifted_rate > TX_RATE as f64 * 1.1,
        "{lifted_rate:.0} B/s after the limit was lifted: no faster than the first limit"
    );
    // The throttled disk: its limit changed at run time, read whole, no faster than the new
    // limit (+10%).
    assert_eq!(throttle["return"], json!({}), "{throttle}");
    assert_eq!(block[0]["inserted"]["bps"], BLK_RATE, "{block}");
    assert_eq!(block[0]["inserted"]["group"], "tg0", "{block}");
    assert_eq!(value(&out, "blk_read"), "ok", "{out}");
    let blk_rate = BLK_BYTES as f64 / blk_time.as_secs_f64();
    assert!(
        blk_rate <= BLK_RATE as f64 * 1.1,
        "{blk_rate:.0} B/s through a {BLK_RATE} B/s limit ({blk_time:?})"
    );
    drop(ns);
}
