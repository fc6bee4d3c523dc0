//! Bad input on the command line or in the files it names gets a clear message naming the
//! culprit and exit status 1 — never a panic, never a hang.

mod common;

use std::time::Duration;

use common::*;
use rampart_testguest::Program;

const LIMIT: Duration = Duration::from_secs(30);

/// Runs rampart with `args` and asserts a clean failure whose stderr contains every `needles`.
fn assert_refused(args: &[&str], needles: &[&str]) {
    let mut cmd = rampart();
    cmd.args(args);
    let r = run_to_end(cmd, LIMIT);
    assert_eq!(r.code, Some(1), "args {args:?}: {r:?}");
    assert!(!r.stderr.contains("panicked"), "args {args:?}: {r:?}");
    for n in needles {
        assert!(
            r.stderr.to_lowercase().contains(&n.to_lowercase()),
            "args {args:?}: stderr lacks {n:?}: {r:?}"
        );
    }
}

fn valid_kernel(dir: &Scratch) -> String {
    test_guest(dir, Program::Hello).display().to_string()
}

#[test]
fn unknown_options_and_properties_are_named() {
    assert_refused(&["-frobnicate"], &["-frobnicate"]);
    assert_refused(&["-m", "size=1G,slots=2"], &["slots"]);
    assert_refused(&["-smp", "4,bogus=1"], &["bogus"]);
    assert_refused(&["-accel", "xen"], &["xen"]);
    assert_refused(&["-kernel"], &["-kernel"]);
}

#[test]
fn missing_unreadable_and_directory_kernels_are_refused() {
    let dir = Scratch::new("badkernel");
    let missing = dir.path("nope").display().to_string();
    assert_refused(
        &["-accel", "kvm", "-kernel", &missing],
        &["-kernel", "nope"],
    );
    let d = dir.0.display().to_string();
    assert_refused(
        &["-accel", "kvm", "-kernel", &d],
        &["-kernel", "not a regular file"],
    );
}

#[test]
fn garbage_truncated_and_empty_kernels_are_refused() {
    require_kvm();
    let dir = Scratch::new("garbage");
    let garbage = dir.file("garbage", &[0x5a; 8192]);
    let empty = dir.file("empty", &[]);
    let good = rampart_testguest::build(Program::Hello).unwrap();
    let truncated = dir.file("truncated.elf", &good[..good.len().min(100)]);
    // A bzImage whose header claims a payload beyond the end of the file.
    let mut bz = vec![0u8; 4096];
    bz[0x1f1] = 4; // setup_sects
    bz[0x1fe] = 0x55;
    bz[0x1ff] = 0xaa;
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    bz[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    bz[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // xloadflags: 64-bit entry
    bz[0x248..0x24c].copy_from_slice(&0x100u32.to_le_bytes()); // payload_offset
    bz[0x24c..0x250].copy_from_slice(&0x10_0000u32.to_le_bytes()); // payload_length
    let bz = dir.file("bzimage", &bz);
    for k in [&garbage, &empty, &truncated, &bz] {
        let k = k.display().to_string();
        assert_refused(&["-accel", "kvm", "-m", "64", "-kernel", &k], &["-kernel"]);
    }
}

#[test]
fn elf_segment_outside_guest_ram_is_refused() {
    require_kvm();
    let dir = Scratch::new("elfoutside");
    let k = valid_kernel(&dir);
    // 16 MiB of RAM is the minimum; the test guest loads at 1 MiB, so make RAM too small by
    // asking the loader about a guest built for a high address instead: patch p_paddr.
    let mut bytes = std::fs::read(&k).unwrap();
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap()) as usize;
    let phnum = u16::from_le_bytes(bytes[0x38..0x3a].try_into().unwrap()) as usize;
    for i in 0..phnum {
        let ph = phoff + i * 56;
        if u32::from_le_bytes(bytes[ph..ph + 4].try_into().unwrap()) == 1 {
            // PT_LOAD: move it to 2 GiB (outside 64 MiB of RAM).
            bytes[ph + 16..ph + 24].copy_from_slice(&0x8000_0000u64.to_le_bytes());
            bytes[ph + 24..ph + 32].copy_from_slice(&0x8000_0000u64.to_le_bytes());
        }
    }
    let k = dir.file("high.elf", &bytes).display().to_string();
    assert_refused(&["-accel", "kvm", "-m", "64", "-kernel", &k], &["-kernel"]);
}

#[test]
fn zero_length_and_oversized_initrds_are_refused() {
    require_kvm();
    let dir = Scratch::new("initrd");
    let k = valid_kernel(&dir);
    let empty = dir.file("empty.img", &[]).display().to_string();
    assert_refused(
        &[
            "-accel", "kvm", "-m", "64", "-kernel", &k, "-initrd", &empty,
        ],
        &["-initrd"],
    );
    let big = dir.path("big.img");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(100 << 20).unwrap(); // sparse, larger than 64 MiB of RAM
    let big = big.display().to_string();
    assert_refused(
        &["-accel", "kvm", "-m", "64", "-kernel", &k, "-initrd", &big],
        &["-initrd"],
    );
}

#[test]
fn memory_and_cpu_counts_out_of_range_are_refused() {
    let dir = Scratch::new("sizes");
    let k = valid_kernel(&dir);
    assert_refused(&["-m", "0", "-kernel", &k], &["-m"]);
    assert_refused(&["-m", "1T", "-kernel", &k], &["-m", "host"]);
    assert_refused(&["-smp", "0", "-kernel", &k], &["-smp"]);
    assert_refused(&["-smp", "1000", "-kernel", &k], &["-smp"]);
    assert_refused(&["-m", "12Q", "-kernel", &k], &["12Q"]);
}

#[test]
fn over_long_append_is_refused() {
    let dir = Scratch::new("append");
    let k = valid_kernel(&dir);
    let long = "x".repeat(5000);
    assert_refused(&["-kernel", &k, "-append", &long], &["-append"]);
}

#[test]
fn append_or_initrd_without_kernel_is_refused() {
    assert_refused(&["-append", "console=ttyS0"], &["-kernel"]);
    assert_refused(&[], &["-kernel"]);
}
