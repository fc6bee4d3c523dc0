//! Helpers shared by the tests that run the real QEMU tools (`qemu-img`, `qemu-io`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fresh directory under the target's temporary directory, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("rampart-block-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes a raw file with `bytes` and returns its path.
    pub fn raw(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Deterministic, incompressible-enough bytes for write number `seed`.
pub fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

pub fn qemu_img(args: &[&str]) -> Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is installed (apt-get install qemu-utils)")
}

pub fn qemu_img_ok(args: &[&str]) {
    let out = qemu_img(args);
    assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
}

pub fn qemu_io_ok(img: &Path, cmd: &str) {
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", cmd, s(img)])
        .output()
        .expect("qemu-io is installed");
    assert!(out.status.success(), "qemu-io {cmd}: {out:?}");
}

/// A read-write or read-only qcow2 node named `q0` on `p`.
pub fn qcow2_node(p: &Path, read_only: bool) -> rampart_config::BlockNodeConfig {
    let mut n = rampart_config::BlockNodeConfig::new(
        "q0",
        rampart_config::BlockFormat::Qcow2,
        p.to_path_buf(),
    );
    n.read_only = read_only;
    n
}

/// The big-endian u64 at `off` of an image's bytes (qcow2 header and tables are big-endian).
pub fn be64(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(b[off..off + 8].try_into().unwrap())
}

/// Store `v` big-endian at `off`.
pub fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_be_bytes());
}

/// Store `v` big-endian at `off`.
pub fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}

/// `qemu-img check`: no errors and no corruption (exit 0, or 3 for leaked clusters only).
pub fn check_ok(img: &Path) {
    let out = qemu_img(&["check", "-f", "qcow2", s(img)]);
    let code = out.status.code();
    assert!(
        code == Some(0) || code == Some(3),
        "qemu-img check {}: {out:?}",
        img.display()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("ERROR"), "qemu-img check: {text}");
    if code == Some(3) {
        eprintln!("qemu-img check {}: leaks only: {text}", img.display());
    }
}

/// `qemu-img compare` of a qcow2 image against raw content.
pub fn compare_ok(img: &Path, raw: &Path) {
    let out = qemu_img(&["compare", "-f", "qcow2", "-F", "raw", s(img), s(raw)]);
    assert!(out.status.success(), "qemu-img compare: {out:?}");
}
