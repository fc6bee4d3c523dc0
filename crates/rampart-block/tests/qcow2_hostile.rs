//! Hand-crafted bad qcow2 images, each with the error rampart must answer it with — never a
//! panic, a hang, a huge allocation or an access outside the image.

mod qemu;

use qemu::*;
use rampart_block::{open, BlockError, GuestBuf};

/// A 1 MiB, 64 KiB-cluster v3 image with its first 4 KiB written (so it has an L2 table and a
/// data cluster), as bytes.
fn template(d: &Scratch) -> Vec<u8> {
    let img = d.path("template.qcow2");
    qemu_img_ok(&["create", "-f", "qcow2", s(&img), "1M"]);
    qemu_io_ok(&img, "write -P 0x5a 0 4k");
    std::fs::read(&img).unwrap()
}

fn l2_offset(img: &[u8]) -> usize {
    let l1 = be64(img, 40) as usize;
    (be64(img, l1) & 0x00ff_ffff_ffff_fe00) as usize
}

/// Opens `bytes` written as an image, read-only, and reads the first 64 KiB, straight into
/// guest buffers (which must not succeed: an error or "cannot") and then through the copy
/// path; returns the error text.
fn open_and_read_err(d: &Scratch, name: &str, bytes: &[u8]) -> String {
    let p = d.raw(name, bytes);
    match open(&qcow2_node(&p, true)) {
        Err(e) => e.to_string(),
        Ok(disk) => {
            let mut ram = vec![0u8; 65536 + 4096];
            let at = ram.as_ptr().align_offset(4096);
            // SAFETY: 64 KiB inside `ram`, which outlives the call.
            let bufs = [unsafe { GuestBuf::new(ram.as_mut_ptr().add(at), 65536) }];
            if let Ok(true) = disk.read_guest_at(0, &bufs) {
                panic!("{name} was read straight into guest buffers");
            }
            let mut buf = vec![0u8; 65536];
            match disk.read_at(0, &mut buf) {
                Err(e) => e.to_string(),
                Ok(()) => panic!("{name} was accepted"),
            }
        }
    }
}

fn assert_err(d: &Scratch, name: &str, bytes: &[u8], needles: &[&str]) {
    let e = open_and_read_err(d, name, bytes);
    for n in needles {
        assert!(e.contains(n), "{name}: error lacks {n:?}: {e}");
    }
    assert!(
        e.contains(name),
        "{name}: error does not name the file: {e}"
    );
}

#[test]
fn truncated_header() {
    let d = Scratch::new("h-trunc");
    let img = template(&d);

    assert_err(&d, "trunc.qcow2", &img[..40], &["truncated header"]);
}

#[test]
fn l1_table_past_end_of_file() {
    let d = Scratch::new("h-l1eof");
    let mut img = template(&d);
    put64(&mut img, 40, 1 << 40);

    assert_err(&d, "l1eof.qcow2", &img, &["L1 table", "past the end"]);
}

#[test]
fn l1_table_bigger_than_the_memory_limit() {
    let d = Scratch::new("h-l1huge");
    let mut img = template(&d);
    put32(&mut img, 36, u32::MAX);

    assert_err(&d, "l1huge.qcow2", &img, &["L1 table", "limit"]);
}

#[test]
fn l2_entry_pointing_into_the_header() {
    let d = Scratch::new("h-l2hdr");
    let mut img = template(&d);
    let l2 = l2_offset(&img);
    // Data cluster at 0x200: inside the header cluster (and not aligned).
    put64(&mut img, l2, (1 << 63) | 0x200);

    let e = open_and_read_err(&d, "l2hdr.qcow2", &img);

    assert!(e.contains("data cluster offset 0x200"), "{e}");
}

#[test]
fn compressed_entry_pointing_into_the_header() {
    let d = Scratch::new("h-comphdr");
    let mut img = template(&d);
    let l2 = l2_offset(&img);
    put64(&mut img, l2, (1 << 62) | 0x100);

    assert_err(&d, "comphdr.qcow2", &img, &["points into the header"]);
}

#[test]
fn l2_table_past_end_of_file() {
    let d = Scratch::new("h-l2eof");
    let mut img = template(&d);
    let l1 = be64(&img, 40) as usize;
    put64(&mut img, l1, (1 << 63) | (1 << 40));

    assert_err(&d, "l2eof.qcow2", &img, &["L2 table", "past the end"]);
}

#[test]
fn l2_table_overlapping_the_l1_table() {
    let d = Scratch::new("h-l2l1");
    let mut img = template(&d);
    let l1 = be64(&img, 40) as usize;
    put64(&mut img, l1, (1 << 63) | l1 as u64);

    assert_err(&d, "l2l1.qcow2", &img, &["overlaps"]);
}

#[test]
fn refcount_table_size_overflow() {
    let d = Scratch::new("h-rtover");
    let mut img = template(&d);
    put32(&mut img, 56, u32::MAX);

    assert_err(&d, "rtover.qcow2", &img, &["refcount table", "limit"]);
}

#[test]
fn refcount_underflow_on_write_is_corruption_not_a_panic() {
    // Every refcount zeroed: the first allocating write must not trust them blindly.
    let d = Scratch::new("h-rc0");
    let mut img = template(&d);
    let rt = be64(&img, 48) as usize;
    let rb = be64(&img, rt) as usize;
    img[rb..rb + 65536].fill(0);
    let p = d.raw("rc0.qcow2", &img);
    let disk = open(&qcow2_node(&p, false)).unwrap();

    // Allocation skips the header, L1 and refcount tables even though their refcounts say 0;
    // it may reuse the unreferenced-looking L2 or data clusters, which only harms this image.
    let r = disk.write_at(1 << 19, &[1u8; 4096]);
    let r2 = disk.flush();

    assert!(
        r.is_ok() || matches!(r, Err(BlockError::Corrupt { .. })),
        "{r:?}"
    );
    let _ = r2;
    assert!(std::fs::metadata(&p).unwrap().len() < 16 << 20);
}

#[test]
fn unknown_incompatible_feature_bits_are_named() {
    let d = Scratch::new("h-incompat");
    let mut img = template(&d);
    put64(&mut img, 72, (1 << 9) | (1 << 33));

    assert_err(&d, "incompat.qcow2", &img, &["bit 9", "bit 33"]);
}

#[test]
fn refcount_width_other_than_16_bits() {
    let d = Scratch::new("h-rcw");
    let img = d.path("rcw.qcow2");
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "refcount_bits=64",
        s(&img),
        "1M",
    ]);

    let e = open(&qcow2_node(&img, true)).err().unwrap().to_string();

    assert!(e.contains("refcount width 64 bits"), "{e}");
}

#[test]
fn garbage_compressed_cluster() {
    let d = Scratch::new("h-compgarbage");
    let mut img = template(&d);
    let l2 = l2_offset(&img);
    let data = (be64(&img, l2) & 0x00ff_ffff_ffff_fe00) as usize;
    img[data..data + 1024].fill(0xff);
    // Compressed, one extra sector, at the old data cluster.
    let shift = 62 - (16 - 8);
    put64(&mut img, l2, (1 << 62) | (1u64 << shift) | data as u64);

    assert_err(&d, "compgarbage.qcow2", &img, &["compressed cluster"]);
}

#[test]
fn backing_loop_is_detected() {
    let d = Scratch::new("h-loop");
    let a = d.path("a.qcow2");
    let b = d.path("b.qcow2");
    qemu_img_ok(&["create", "-f", "qcow2", s(&b), "1M"]);
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "b.qcow2",
        "-F",
        "qcow2",
        s(&a),
    ]);
    // Rewrite b's header to name a as its backing file (same length name, same place).
    qemu_img_ok(&["rebase", "-u", "-b", "a.qcow2", "-F", "qcow2", s(&b)]);

    let e = open(&qcow2_node(&a, true)).err().unwrap().to_string();

    assert!(e.contains("loop"), "{e}");
}

#[test]
fn backing_chain_depth_is_limited() {
    let d = Scratch::new("h-deep");
    qemu_img_ok(&["create", "-f", "qcow2", s(&d.path("i0.qcow2")), "1M"]);
    for i in 1..=18 {
        qemu_img_ok(&[
            "create",
            "-f",
            "qcow2",
            "-b",
            &format!("i{}.qcow2", i - 1),
            "-F",
            "qcow2",
            s(&d.path(&format!("i{i}.qcow2"))),
        ]);
    }

    let e = open(&qcow2_node(&d.path("i18.qcow2"), true))
        .err()
        .unwrap()
        .to_string();

    assert!(e.contains("deeper than 16"), "{e}");
}

#[test]
fn corrupt_flagged_image_is_refused_writable_but_reads() {
    // (Dirty images are repaired instead: tests/qcow2_repair.rs.)
    let d = Scratch::new("h-corrupt");
    let mut img = template(&d);
    put64(&mut img, 72, 1 << 1);
    let p = d.raw("corrupt.qcow2", &img);

    let e = open(&qcow2_node(&p, false)).err().unwrap().to_string();
    let ro = open(&qcow2_node(&p, true)).unwrap();
    let mut b = [0u8; 1];
    ro.read_at(0, &mut b).unwrap();

    assert!(
        e.contains("marked corrupt") && e.contains("qemu-img check -r all"),
        "{e}"
    );
    assert_eq!(b[0], 0x5a);
}

#[test]
fn image_with_internal_snapshots_opens_read_only_only() {
    let d = Scratch::new("h-snap");
    let img = d.path("snap.qcow2");
    qemu_img_ok(&["create", "-f", "qcow2", s(&img), "1M"]);
    qemu_img_ok(&["snapshot", "-c", "s1", s(&img)]);

    // Without image locking: this test's two opens follow each other at once, and a child
    // that another test thread forks meanwhile (to run qemu-img) holds a copy of the first
    // open's file description, and its lock, until it execs. In a full run that made the
    // second open fail now and then with "failed to get \"write\" lock".
    let node = |read_only| {
        let mut n = qcow2_node(&img, read_only);
        n.locking = rampart_config::LockingMode::Off;
        n
    };
    let e = open(&node(false)).err().unwrap().to_string();

    assert!(e.contains("snapshots"), "{e}");
    if let Err(e) = open(&node(true)) {
        panic!("the read-only open failed: {e}");
    }
}

#[test]
fn non_local_backing_file_name_is_refused() {
    let d = Scratch::new("h-json");
    let img = d.path("j.qcow2");
    qemu_img_ok(&["create", "-f", "qcow2", s(&img), "1M"]);
    qemu_img_ok(&[
        "rebase",
        "-u",
        "-b",
        "nbd://127.0.0.1/x",
        "-F",
        "raw",
        s(&img),
    ]);

    let e = open(&qcow2_node(&img, true)).err().unwrap().to_string();

    assert!(e.contains("not a local file"), "{e}");
}
