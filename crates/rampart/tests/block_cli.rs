//! `-drive` and `-blockdev` through the real binary: image locking between two rampart
//! processes, and the format-probing refusal.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use rampart_testguest::Program;

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn second_rampart_on_a_read_write_image_fails_with_the_locking_error() {
    let dir = Scratch::new("blocklock");
    let kernel = test_guest(&dir, Program::Hello).display().to_string();
    let image = dir.file("disk.img", &vec![0u8; 1 << 20]);
    let blockdev = format!("driver=file,filename={},node-name=n0", image.display());
    let log = dir.path("first.log");
    let mut first = rampart();
    first
        .args(["-accel", "tcg", "-S", "-nodefaults", "-kernel", &kernel])
        .args(["-blockdev", &blockdev])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut first = first.spawn().expect("spawn rampart");
    let start = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("block node 'n0'")
    {
        if let Some(st) = first.try_wait().unwrap() {
            panic!(
                "first rampart exited ({st}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            start.elapsed() < LIMIT,
            "first rampart never opened the image"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut second = rampart();
    second
        .args(["-accel", "tcg", "-S", "-nodefaults", "-kernel", &kernel])
        .args([
            "-drive",
            &format!("file={},format=raw,if=none,id=d0", image.display()),
        ]);
    let r = run_to_end(second, LIMIT);
    let mut third = rampart();
    third
        .args(["-accel", "tcg", "-S", "-nodefaults", "-kernel", &kernel])
        .args([
            "-drive",
            &format!(
                "file={},format=raw,if=none,id=d0,readonly=on",
                image.display()
            ),
        ]);
    let r_ro = run_to_end(third, LIMIT);
    signal(&first, libc::SIGTERM);
    let _ = first.wait();

    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("lock"), "{r:?}");
    assert!(r.stderr.contains(&*image.to_string_lossy()), "{r:?}");
    assert!(r.stderr.contains("file.locking=off"), "{r:?}");
    assert_eq!(
        r_ro.code,
        Some(1),
        "a reader must not join a writer: {r_ro:?}"
    );
}

#[test]
fn writable_drive_without_format_is_refused_before_anything_opens() {
    let dir = Scratch::new("blockprobe");
    let image = dir.file("disk.img", &[0u8; 4096]);
    let mut cmd = rampart();
    cmd.args([
        "-kernel",
        "/nonexistent",
        "-drive",
        &format!("file={},if=none", image.display()),
    ]);

    let r = run_to_end(cmd, LIMIT);

    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("never probes"), "{r:?}");
}

#[test]
fn bad_qcow2_image_is_refused_at_start_naming_the_file_and_the_fault() {
    let dir = Scratch::new("blockbadqcow2");
    let kernel = test_guest(&dir, Program::Hello).display().to_string();
    // A qcow2 magic and version, then nothing: a truncated header.
    let mut bytes = b"QFI\xfb\x00\x00\x00\x03".to_vec();
    bytes.resize(40, 0);
    let image = dir.file("bad.qcow2", &bytes);
    let mut cmd = rampart();
    cmd.args(["-accel", "tcg", "-S", "-nodefaults", "-kernel", &kernel])
        .args([
            "-blockdev",
            &format!(
                "driver=qcow2,node-name=q0,read-only=on,file.driver=file,file.filename={}",
                image.display()
            ),
        ]);

    let r = run_to_end(cmd, LIMIT);

    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("bad.qcow2"), "{r:?}");
    assert!(r.stderr.contains("truncated header"), "{r:?}");
    assert!(!r.stderr.contains("panicked"), "{r:?}");
}
