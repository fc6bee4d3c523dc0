//! Raw images against the real QEMU tools: QEMU sees rampart's locks, and data written
//! through rampart's block layer is what `qemu-img compare` expects.

use std::path::{Path, PathBuf};
use std::process::Command;

use rampart_block::open;
use rampart_config::{BlockFormat, BlockNodeConfig, CacheConfig};

fn scratch(tag: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("qemu-raw-{tag}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is installed")
}

fn create_raw(p: &Path, size: &str) {
    let out = qemu_img(&["create", "-f", "raw", p.to_str().unwrap(), size]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn qemu_io_cannot_write_an_image_rampart_has_open_read_write() {
    let d = scratch("lock");
    let img = d.join("disk.img");
    create_raw(&img, "1M");
    let disk = open(&BlockNodeConfig::new("d0", BlockFormat::Raw, img.clone())).unwrap();

    let qemu_write = || {
        Command::new("qemu-io")
            .args(["-f", "raw", "-c", "write 0 512", img.to_str().unwrap()])
            .output()
            .expect("qemu-io is installed")
    };

    let out = qemu_write();
    drop(disk);
    let after = qemu_write();

    assert!(!out.status.success(), "qemu-io ignored the lock: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lock"),
        "{out:?}"
    );
    assert!(after.status.success(), "lock not released: {after:?}");
}

#[test]
fn direct_io_writes_match_what_qemu_img_compare_expects() {
    let d = scratch("compare");
    let img = d.join("disk.img");
    create_raw(&img, "4M");
    let mut expected = vec![0u8; 4 << 20];
    let mut node = BlockNodeConfig::new("d0", BlockFormat::Raw, img.clone());
    node.cache = CacheConfig::from_mode("none").unwrap();
    let disk = open(&node).unwrap();
    for (i, (off, len)) in [
        (0u64, 4096usize),
        (511, 3000),
        (1 << 20, 65536),
        (4194000, 304),
    ]
    .into_iter()
    .enumerate()
    {
        let data: Vec<u8> = (0..len).map(|j| (j as u8) ^ (i as u8 + 1)).collect();
        disk.write_at(off, &data).unwrap();
        expected[off as usize..off as usize + len].copy_from_slice(&data);
    }
    disk.flush().unwrap();
    drop(disk);
    let want = d.join("expected.img");
    std::fs::write(&want, &expected).unwrap();

    let out = qemu_img(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        img.to_str().unwrap(),
        want.to_str().unwrap(),
    ]);

    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 4 << 20);
}
