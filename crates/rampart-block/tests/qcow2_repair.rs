//! Dirty images (lazy refcounts not written back, incompatible feature bit 0): a read-write open
//! rebuilds the refcounts and clears the bit, after which `qemu-img check` finds nothing wrong
//! and the data is intact; hostile dirty images are refused without being touched; read-only
//! opens read them as they are.

mod qemu;

use std::path::Path;
use std::process::Command;

use qemu::*;
use rampart_block::open;
use rampart_config::CacheConfig;

const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

fn is_dirty(img: &Path) -> bool {
    be64(&std::fs::read(img).unwrap(), 72) & 1 != 0
}

/// `qemu-img check` finds no errors and no leaks (exit status 0).
fn check_clean(img: &Path) {
    let out = qemu_img(&["check", "-f", "qcow2", s(img)]);
    assert!(
        out.status.code() == Some(0),
        "qemu-img check {}: {}{}",
        img.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `qemu-io` commands on a qcow2 image and then kills it with SIGKILL (`sigraise 9`), so
/// nothing it kept in memory (lazy refcounts) reaches the file.
fn qemu_io_then_sigkill(img: &Path, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "qcow2"]);
    for cmd in cmds.iter().copied().chain(["sigraise 9"]) {
        c.args(["-c", cmd]);
    }
    let out = c.arg(s(img)).output().expect("qemu-io is installed");
    assert!(!out.status.success(), "qemu-io was not killed: {out:?}");
}

/// Writes `len` bytes of `byte` at `off` into the raw file `raw`.
fn raw_fill(raw: &Path, off: u64, len: usize, byte: u8) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(raw).unwrap();
    f.write_all_at(&vec![byte; len], off).unwrap();
}

fn raw_of_size(d: &Scratch, name: &str, size: u64) -> std::path::PathBuf {
    let p = d.path(name);
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p
}

/// Sets the dirty bit and zeroes every refcount block, as a writer with lazy refcounts that
/// never wrote one back would leave them.
fn dirty_without_refcounts(img: &mut [u8]) {
    let incompat = be64(img, 72);
    put64(img, 72, incompat | 1);
    let cs = 1usize << u32::from_be_bytes(img[20..24].try_into().unwrap());
    let rt = be64(img, 48) as usize;
    let rt_len = u32::from_be_bytes(img[56..60].try_into().unwrap()) as usize * cs;
    for i in (0..rt_len).step_by(8) {
        let rb = (be64(img, rt + i) & OFFSET_MASK) as usize;
        if rb != 0 && rb + cs <= img.len() {
            img[rb..rb + cs].fill(0);
        }
    }
}

#[test]
fn lazy_refcounts_image_killed_in_qemu_io_is_repaired_by_a_writable_open() {
    // 512 B and 4 KiB clusters: an L2 table maps 32 KiB / 2 MiB, so the writes need several;
    // 2 MiB clusters: a few big ones.
    for cs in ["512", "4096", "2M"] {
        lazy_image_repaired(cs);
    }
}

fn lazy_image_repaired(cs: &str) {
    let d = Scratch::new(&format!("r-lazy-{cs}"));
    let img = d.path("lazy.qcow2");
    let opts = format!("cluster_size={cs},lazy_refcounts=on");
    qemu_img_ok(&["create", "-f", "qcow2", "-o", &opts, s(&img), "16M"]);
    qemu_io_then_sigkill(
        &img,
        &[
            "write -P 0x11 0 1M",
            "write -P 0x22 5M 300k",
            "write -P 0x33 9437696 4k",
            "write -P 0x44 15M 64k",
            "flush",
        ],
    );
    assert!(is_dirty(&img), "{cs}: qemu-io left the image clean");
    let raw = raw_of_size(&d, "expected.raw", 16 << 20);
    raw_fill(&raw, 0, 1 << 20, 0x11);
    raw_fill(&raw, 5 << 20, 300 << 10, 0x22);
    raw_fill(&raw, 9437696, 4096, 0x33);
    raw_fill(&raw, 15 << 20, 64 << 10, 0x44);

    {
        // cache=none: the repair's small header writes go through O_DIRECT too.
        let mut n = qcow2_node(&img, false);
        n.cache = CacheConfig::from_mode("none").unwrap();
        let disk = open(&n).unwrap();
        assert!(
            !is_dirty(&img),
            "{cs}: the open did not clear the dirty bit"
        );
        // The new refcount structures went out in one request ending 4 KiB aligned, so the
        // O_DIRECT file needed no trimming (which the monitor thread may not do).
        let len = std::fs::metadata(&img).unwrap().len();
        assert_eq!(len % 4096, 0, "{cs}: file length {len} after the repair");
        // Allocation after the repair trusts the rebuilt refcounts.
        disk.write_at(3 << 20, &[0x55; 200 << 10]).unwrap();
        disk.write_at(4096, &[0x66; 4096]).unwrap();
        disk.flush().unwrap();
    }
    raw_fill(&raw, 3 << 20, 200 << 10, 0x55);
    raw_fill(&raw, 4096, 4096, 0x66);

    check_clean(&img);
    compare_ok(&img, &raw);
}

#[test]
fn repair_under_o_direct_leaves_nothing_to_truncate() {
    // 512-byte clusters: the rebuilt structures end mid-way through a 4 KiB block; written
    // as they are, the O_DIRECT write would overshoot and need an ftruncate, which the
    // monitor thread (blockdev-add) may not make. They are padded to 4 KiB instead.
    let d = Scratch::new("r-direct");
    let img = d.path("small.qcow2");
    let opts = "cluster_size=512,lazy_refcounts=on";
    qemu_img_ok(&["create", "-f", "qcow2", "-o", opts, s(&img), "64K"]);
    qemu_io_then_sigkill(&img, &["write -P 0x3c 0 6k", "flush"]);
    assert!(is_dirty(&img));
    let mut n = qcow2_node(&img, false);
    n.cache = CacheConfig::from_mode("none").unwrap();

    drop(open(&n).unwrap());

    let len = std::fs::metadata(&img).unwrap().len();
    assert_eq!(len % 4096, 0, "file length {len} after the repair");
    check_clean(&img);
    let raw = raw_of_size(&d, "expected.raw", 64 << 10);
    raw_fill(&raw, 0, 6 << 10, 0x3c);
    compare_ok(&img, &raw);
}

#[test]
fn dirty_image_with_lost_refcounts_and_copied_flags_is_repaired() {
    let d = Scratch::new("r-lost");
    let img = d.path("lost.qcow2");
    qemu_img_ok(&["create", "-f", "qcow2", s(&img), "4M"]);
    qemu_io_ok(&img, "write -P 0x5a 0 128k");
    qemu_io_ok(&img, "write -P 0xa5 3M 64k");
    let mut bytes = std::fs::read(&img).unwrap();
    dirty_without_refcounts(&mut bytes);
    // Clear OFLAG_COPIED in the L1 entry and the first L2 entry; add a leaked cluster past
    // the end (a cluster of zeroes that nothing references).
    let l1 = be64(&bytes, 40) as usize;
    let l2 = (be64(&bytes, l1) & OFFSET_MASK) as usize;
    let (l1e, l2e) = (be64(&bytes, l1), be64(&bytes, l2));
    put64(&mut bytes, l1, l1e & !(1 << 63));
    put64(&mut bytes, l2, l2e & !(1 << 63));
    bytes.extend_from_slice(&[0u8; 65536]);
    std::fs::write(&img, &bytes).unwrap();
    let raw = raw_of_size(&d, "expected.raw", 4 << 20);
    raw_fill(&raw, 0, 128 << 10, 0x5a);
    raw_fill(&raw, 3 << 20, 64 << 10, 0xa5);

    {
        let disk = open(&qcow2_node(&img, false)).unwrap();
        disk.write_at(1 << 20, &[0x77; 65536]).unwrap();
        disk.flush().unwrap();
    }
    raw_fill(&raw, 1 << 20, 65536, 0x77);

    assert!(!is_dirty(&img));
    check_clean(&img);
    compare_ok(&img, &raw);
}

#[test]
fn dirty_compressed_image_is_repaired() {
    // Compressed clusters share host clusters: the rebuilt refcounts must count each user.
    let d = Scratch::new("r-comp");
    let src = raw_of_size(&d, "src.raw", 2 << 20);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
        let text: Vec<u8> = (0..(1 << 20)).map(|i| b"rampart qcow2 "[i % 14]).collect();
        f.write_all_at(&text, 0).unwrap();
        f.write_all_at(&pattern(3, 65536), 1536 << 10).unwrap();
    }
    let img = d.path("comp.qcow2");
    qemu_img_ok(&[
        "convert",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=4096",
        s(&src),
        s(&img),
    ]);
    let mut bytes = std::fs::read(&img).unwrap();
    dirty_without_refcounts(&mut bytes);
    std::fs::write(&img, &bytes).unwrap();

    {
        let disk = open(&qcow2_node(&img, false)).unwrap();
        // Overwrite part of a compressed cluster: it is released, the refcounts must hold.
        disk.write_at(8192, &[0x42; 512]).unwrap();
        disk.flush().unwrap();
    }
    raw_fill(&src, 8192, 512, 0x42);

    check_clean(&img);
    compare_ok(&img, &src);
}

#[test]
fn interrupted_repair_is_done_again_by_the_next_open() {
    // The crash states a repair can leave: new refcount structures written at the end but not
    // yet named by the header (garbage past the old end), or named but the dirty bit still
    // set. Both are dirty images the next writable open repairs.
    let d = Scratch::new("r-again");
    let img = d.path("again.qcow2");
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        s(&img),
        "2M",
    ]);
    qemu_io_ok(&img, "write -P 0x3c 4k 40k");
    let mut bytes = std::fs::read(&img).unwrap();
    dirty_without_refcounts(&mut bytes);
    bytes.extend_from_slice(&pattern(9, 3 * 4096));
    std::fs::write(&img, &bytes).unwrap();
    drop(open(&qcow2_node(&img, false)).unwrap());
    let mut bytes = std::fs::read(&img).unwrap();
    let incompat = be64(&bytes, 72);
    put64(&mut bytes, 72, incompat | 1);
    std::fs::write(&img, &bytes).unwrap();

    drop(open(&qcow2_node(&img, false)).unwrap());

    let raw = raw_of_size(&d, "expected.raw", 2 << 20);
    raw_fill(&raw, 4096, 40 << 10, 0x3c);
    assert!(!is_dirty(&img));
    check_clean(&img);
    compare_ok(&img, &raw);
}

#[test]
fn dirty_image_opens_read_only_without_repair() {
    let d = Scratch::new("r-ro");
    let img = d.path("ro.qcow2");
    qemu_img_ok(&["create", "-f", "qcow2", s(&img), "1M"]);
    qemu_io_ok(&img, "write -P 0x5a 0 4k");
    let mut bytes = std::fs::read(&img).unwrap();
    dirty_without_refcounts(&mut bytes);
    std::fs::write(&img, &bytes).unwrap();

    let disk = open(&qcow2_node(&img, true)).unwrap();
    let mut b = [0u8; 4096];
    disk.read_at(0, &mut b).unwrap();
    drop(disk);

    assert_eq!(b, [0x5a; 4096]);
    assert_eq!(
        std::fs::read(&img).unwrap(),
        bytes,
        "a read-only open changed the image"
    );
}

/// A dirty 1 MiB image with its first 4 KiB written, as bytes, and its L1 and L2 offsets.
fn dirty_template(d: &Scratch) -> (Vec<u8>, usize, usize) {
    let img = d.path("template.qcow2");
    qemu_img_ok(&["create", "-f", "qcow2", s(&img), "1M"]);
    qemu_io_ok(&img, "write -P 0x5a 0 4k");
    let mut bytes = std::fs::read(&img).unwrap();
    put64(&mut bytes, 72, 1);
    let l1 = be64(&bytes, 40) as usize;
    let l2 = (be64(&bytes, l1) & OFFSET_MASK) as usize;
    (bytes, l1, l2)
}

/// Opens `bytes` as a writable image: the open must fail naming the file and `needles`, and
/// leave the file as it was.
fn assert_refused(d: &Scratch, name: &str, bytes: &[u8], needles: &[&str]) {
    let p = d.raw(name, bytes);

    let e = open(&qcow2_node(&p, false)).err().map(|e| e.to_string());

    let e = e.unwrap_or_else(|| panic!("{name}: the dirty image was opened"));
    for n in needles.iter().chain(&[name]) {
        assert!(e.contains(n), "{name}: error lacks {n:?}: {e}");
    }
    assert_eq!(
        std::fs::read(&p).unwrap(),
        bytes,
        "{name}: a refused repair changed the file"
    );
}

#[test]
fn dirty_image_with_l2_entry_in_the_header_is_refused() {
    let d = Scratch::new("r-hdr");
    let (mut bytes, _, l2) = dirty_template(&d);
    // A data cluster inside the header's cluster, and compressed data in the header.
    put64(&mut bytes, l2 + 8, (1 << 63) | 0x200);
    assert_refused(&d, "hdr.qcow2", &bytes, &["cannot be repaired", "0x200"]);

    put64(&mut bytes, l2 + 8, (1 << 62) | 0x100);
    assert_refused(
        &d,
        "hdr2.qcow2",
        &bytes,
        &["0x100", "points into the header"],
    );
}

#[test]
fn dirty_image_with_a_data_cluster_on_the_l2_table_is_refused() {
    let d = Scratch::new("r-shared");
    let (mut bytes, _, l2) = dirty_template(&d);
    put64(&mut bytes, l2 + 8, (1 << 63) | l2 as u64);

    assert_refused(&d, "shared.qcow2", &bytes, &["something else uses"]);
}

#[test]
fn dirty_image_with_a_data_cluster_on_a_refcount_block_is_refused() {
    let d = Scratch::new("r-onrb");
    let (mut bytes, _, l2) = dirty_template(&d);
    let rb = be64(&bytes, be64(&bytes, 48) as usize) & OFFSET_MASK;
    put64(&mut bytes, l2 + 8, (1 << 63) | rb);

    assert_refused(&d, "onrb.qcow2", &bytes, &["refcount block"]);
}

#[test]
fn dirty_image_with_data_past_the_end_is_refused() {
    let d = Scratch::new("r-eof");
    let (mut bytes, _, l2) = dirty_template(&d);
    put64(&mut bytes, l2 + 8, (1 << 63) | (1 << 40));

    assert_refused(&d, "eof.qcow2", &bytes, &["past the end"]);
}

#[test]
fn dirty_image_with_refcount_table_past_the_end_is_refused() {
    let d = Scratch::new("r-rteof");
    let (mut bytes, _, _) = dirty_template(&d);
    put64(&mut bytes, 48, 1 << 40);

    assert_refused(
        &d,
        "rteof.qcow2",
        &bytes,
        &["refcount table", "past the end"],
    );
}

#[test]
fn dirty_image_with_a_huge_l1_table_is_refused() {
    let d = Scratch::new("r-l1huge");
    let (mut bytes, _, _) = dirty_template(&d);
    bytes[36..40].copy_from_slice(&(1u32 << 24).to_be_bytes());

    assert_refused(&d, "l1huge.qcow2", &bytes, &["L1 table"]);
}
