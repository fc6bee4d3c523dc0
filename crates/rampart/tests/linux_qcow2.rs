//! One Linux boot on qcow2 disks: Debian's kernel, under rampart's software CPU, writes through
//! virtio-blk into a qcow2 overlay whose backing file is another qcow2 image, and reads a
//! compressed qcow2 image; afterwards `qemu-img check` finds no errors and `qemu-img compare`
//! finds exactly the expected bytes. A second boot is killed with SIGKILL while the guest writes
//! and flushes: the image stays consistent and keeps every flushed write.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::linux::*;
use common::*;

const LIMIT: Duration = Duration::from_secs(600);
const MIB: usize = 1 << 20;

fn qemu_img(args: &[&str]) -> std::process::Output {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is installed (apt-get install qemu-utils)");
    assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `qemu-img check` finds no errors in qcow2 image `img` (leaked clusters, exit status 3, are
/// allowed: a crash may leak, never corrupt).
fn assert_check_clean(img: &Path) {
    let check = Command::new("qemu-img")
        .args(["check", "-f", "qcow2", s(img)])
        .output()
        .unwrap();
    assert!(
        matches!(check.status.code(), Some(0) | Some(3)),
        "qemu-img check: {check:?}"
    );
    assert!(
        !String::from_utf8_lossy(&check.stdout).contains("ERROR"),
        "{check:?}"
    );
}

fn sha256(bytes: &[u8], dir: &Scratch) -> String {
    sha256_file(&dir.file("sha-input", bytes))
}

#[test]
fn linux_writes_a_qcow2_overlay_and_reads_a_compressed_image() {
    // Arrange: a 64 MiB qcow2 base (made from host data), an overlay naming it by a relative
    // path, and a compressed qcow2 image.
    let dir = Scratch::new("linux-qcow2");
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut base: Vec<u8> = (0..64 * MIB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    base[48 * MIB..].fill(0);
    let base_raw = dir.file("base.raw", &base);
    qemu_img(&[
        "convert",
        "-O",
        "qcow2",
        s(&base_raw),
        s(&dir.path("base.qcow2")),
    ]);
    let overlay = dir.path("overlay.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        s(&overlay),
    ]);
    let text: Vec<u8> = (0..4 * MIB).map(|i| b"compressible "[i % 13]).collect();
    let text_raw = dir.file("text.raw", &text);
    let compressed = dir.path("text.qcow2");
    qemu_img(&["convert", "-c", "-O", "qcow2", s(&text_raw), s(&compressed)]);
    let mut cmd = guest_cmd("qcow2", "virtio_blk");
    cmd.arg("-drive")
        .arg(format!(
            "file={},format=qcow2,if=virtio,cache=none",
            overlay.display()
        ))
        .arg("-blockdev")
        .arg(format!(
            "driver=qcow2,node-name=c0,read-only=on,file.driver=file,file.filename={}",
            compressed.display()
        ))
        .args(["-device", "virtio-blk-pci,drive=c0"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());

    // Act
    let r = wait_with_limit(cmd.spawn().expect("spawn rampart"), LIMIT);

    // Assert: the guest saw the backing data and the compressed image's bytes.
    assert_eq!(r.code, Some(0), "{r:?}");
    let start = r
        .stdout
        .find("rampart-test: begin qcow2")
        .unwrap_or_else(|| panic!("the qcow2 test did not start: {r:?}"));
    let out = &r.stdout[start..];
    assert!(out.contains("rampart-test: end qcow2 status=0"), "{r:?}");
    assert!(out.contains("blk vda sectors=131072 ro=0"), "{out}");
    assert!(out.contains("blk vdb sectors=8192 ro=1"), "{out}");
    assert_eq!(
        value(out, "vda_base_sha256"),
        sha256(&base[..4 * MIB], &dir),
        "{out}"
    );
    for k in [
        "vda_direct_write",
        "vda_odd_write",
        "vda_cached_write",
        "vda_readback",
    ] {
        assert_eq!(value(out, k), "ok", "{out}");
    }
    assert_eq!(value(out, "vdb_sha256"), sha256(&text, &dir), "{out}");
    // The overlay is consistent and holds exactly base + the guest's writes.
    let p1 = repeat("rampart-qcow2\n", MIB);
    base[MIB..2 * MIB].copy_from_slice(&p1);
    base[7 * 512..10 * 512].copy_from_slice(&repeat("0123456789abcde\n", 1536));
    let at = (40 * 256 + 3) * 4096;
    base[at..at + 5 * 4096].copy_from_slice(&p1[..5 * 4096]);
    let expected = dir.file("expected.raw", &base);
    assert_check_clean(&overlay);
    qemu_img(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        s(&overlay),
        s(&expected),
    ]);
}

#[test]
fn sigkill_while_linux_writes_and_flushes_a_qcow2_disk_loses_nothing_flushed() {
    // Arrange: an empty 64 MiB qcow2 image with 4 KiB clusters (records straddle clusters
    // and need new L2 tables as they go).
    let dir = Scratch::new("linux-qcow2-crash");
    let img = dir.path("crash.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        s(&img),
        "64M",
    ]);
    let mut cmd = guest_cmd("qcow2crash", "virtio_blk");
    cmd.arg("-drive").arg(format!(
        "file={},format=qcow2,if=virtio,cache=none",
        img.display()
    ));
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn rampart");

    // Act: kill rampart once the guest has flushed 12 records.
    let seen = read_until(&mut child, "flushed 12\n", LIMIT);
    // SAFETY: kill() on our own child, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();

    // Assert: no corruption, and every record the guest saw flushed is in the image.
    assert!(
        seen.contains("flushed 12"),
        "the guest never flushed: {seen}"
    );
    let last: usize = seen
        .lines()
        .filter_map(|l| l.trim().strip_prefix("flushed "))
        .filter_map(|n| n.parse().ok())
        .max()
        .unwrap();
    assert_check_clean(&img);
    let raw = dir.path("crash.raw");
    qemu_img(&["convert", "-f", "qcow2", "-O", "raw", s(&img), s(&raw)]);
    let bytes = std::fs::read(&raw).unwrap();
    for i in 0..=last {
        let at = i * 3 * 65536;
        assert!(
            bytes[at..at + 65536] == repeat(&format!("record-{i}\n"), 65536)[..],
            "record {i} (flushed before the kill, last flushed {last}) is not in the image"
        );
    }
}
