//! qcow2 images made by the real `qemu-img`, read and written through rampart's block layer,
//! then checked by `qemu-img check` (no errors; leaks are allowed) and `qemu-img compare`
//! against the raw content they must have.

mod qemu;

use std::path::Path;
use std::sync::Arc;

use qemu::*;
use rampart_block::{open, BlockBackend, GuestBuf};
use rampart_config::{BackingConfig, BlockFormat, BlockNodeConfig, CacheConfig, DiscardMode};

fn node(p: &Path) -> BlockNodeConfig {
    BlockNodeConfig::new("q0", BlockFormat::Qcow2, p.to_path_buf())
}

/// Writes a deterministic pattern through `disk` and into `expected` at each (offset, len).
fn write_pattern(disk: &dyn BlockBackend, expected: &mut [u8], writes: &[(u64, usize)]) {
    for (i, &(off, len)) in writes.iter().enumerate() {
        let data = pattern(i as u32 + 1, len);
        disk.write_at(off, &data).unwrap();
        expected[off as usize..off as usize + len].copy_from_slice(&data);
    }
}

/// Reads the whole disk back through rampart.
fn read_all(disk: &dyn BlockBackend) -> Vec<u8> {
    let mut v = vec![0u8; disk.size() as usize];
    disk.read_at(0, &mut v).unwrap();
    v
}

fn writes_for(cluster: u64) -> Vec<(u64, usize)> {
    vec![
        (0, 512),
        (cluster - 100, 300),
        (3 * cluster + 7, 2 * cluster as usize + 5),
        (5 << 20, 65536),
        ((8 << 20) - 4096, 4096),
        (1 << 20, 1 << 20),
    ]
}

#[test]
fn qemu_img_images_of_every_cluster_size_round_trip() {
    for (cluster, compat) in [
        (512u64, "1.1"),
        (4096, "1.1"),
        (65536, "1.1"),
        (2 << 20, "1.1"),
        (65536, "0.10"),
        (512, "0.10"),
    ] {
        let d = Scratch::new(&format!("cs{cluster}-{compat}"));
        let img = d.path("disk.qcow2");
        qemu_img_ok(&[
            "create",
            "-f",
            "qcow2",
            "-o",
            &format!("cluster_size={cluster},compat={compat}"),
            s(&img),
            "16M",
        ]);
        let mut expected = vec![0u8; 16 << 20];
        {
            let disk = open(&node(&img)).unwrap();
            write_pattern(&*disk, &mut expected, &writes_for(cluster));
            disk.flush().unwrap();
            assert!(
                read_all(&*disk) == expected,
                "cluster {cluster} {compat}: read back"
            );
        }
        check_ok(&img);
        compare_ok(&img, &d.raw("expected.raw", &expected));
        let again = open(&node(&img)).unwrap();
        assert!(read_all(&*again) == expected, "cluster {cluster}: reopened");
    }
}

#[test]
fn direct_io_and_writethrough_modes_keep_the_image_consistent() {
    for mode in ["none", "directsync", "writethrough", "unsafe"] {
        let d = Scratch::new(&format!("mode-{mode}"));
        let img = d.path("disk.qcow2");
        qemu_img_ok(&["create", "-f", "qcow2", s(&img), "8M"]);
        let mut expected = vec![0u8; 8 << 20];
        {
            let mut n = node(&img);
            n.cache = CacheConfig::from_mode(mode).unwrap();
            let disk = open(&n).unwrap();
            write_pattern(&*disk, &mut expected, &writes_for(65536));
            disk.flush().unwrap();
        }
        check_ok(&img);
        compare_ok(&img, &d.raw("expected.raw", &expected));
    }
}

#[test]
fn refcount_table_grows_when_the_image_outgrows_it() {
    // 512-byte clusters: one refcount block covers 128 KiB, the initial one-cluster refcount
    // table 8 MiB of file; writing 12 MiB forces new blocks and a bigger table.
    let d = Scratch::new("grow");
    let img = d.path("disk.qcow2");
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512",
        s(&img),
        "16M",
    ]);
    let reftable_at = |p: &Path| std::fs::read(p).unwrap()[48..60].to_vec();
    let before = reftable_at(&img);
    let mut expected = vec![0u8; 16 << 20];
    {
        let disk = open(&node(&img)).unwrap();
        let writes: Vec<(u64, usize)> = (0..12).map(|i| (i << 20, 1 << 20)).collect();
        write_pattern(&*disk, &mut expected, &writes);
        disk.flush().unwrap();
    }

    assert_ne!(reftable_at(&img), before, "the refcount table did not move");
    check_ok(&img);
    compare_ok(&img, &d.raw("expected.raw", &expected));
}

#[test]
fn backing_chains_of_qcow2_and_raw_read_through_and_stay_untouched() {
    let d = Scratch::new("backing");
    let base_raw = d.path("base.raw");
    let mut base = pattern(99, 8 << 20);
    base[..4096].fill(0x11);
    std::fs::write(&base_raw, &base).unwrap();
    let base_q = d.path("base.qcow2");
    qemu_img_ok(&["convert", "-O", "qcow2", s(&base_raw), s(&base_q)]);
    // Middle: qcow2 over qcow2 with one write; top: relative backing name.
    let mid = d.path("mid.qcow2");
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        s(&mid),
    ]);
    qemu_io_ok(&mid, "write -P 0x22 1M 64k");
    base[1 << 20..(1 << 20) + 65536].fill(0x22);
    let top = d.path("top.qcow2");
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        s(&top),
    ]);
    let base_before = std::fs::read(&base_q).unwrap();
    let mut expected = base.clone();
    {
        let disk = open(&node(&top)).unwrap();
        assert!(read_all(&*disk) == expected, "read through the chain");
        write_pattern(&*disk, &mut expected, &writes_for(65536));
        disk.flush().unwrap();
    }

    check_ok(&top);
    compare_ok(&top, &d.raw("expected.raw", &expected));
    assert!(
        std::fs::read(&base_q).unwrap() == base_before,
        "backing file was written"
    );
    // A raw backing file, and backing=null.
    let over_raw = d.path("over-raw.qcow2");
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        s(&over_raw),
    ]);
    let disk = open(&node(&over_raw)).unwrap();
    let mut b = vec![0u8; 4096];
    disk.read_at(8192, &mut b).unwrap();
    assert_eq!(&b[..], &std::fs::read(&base_raw).unwrap()[8192..12288]);
    drop(disk);
    let mut n = node(&over_raw);
    n.backing = BackingConfig::None;
    let disk = open(&n).unwrap();
    disk.read_at(8192, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0), "backing=null reads zeroes");
}

#[test]
fn compressed_images_read_and_overwrite() {
    for ctype in ["zlib", "zstd"] {
        let d = Scratch::new(&format!("compressed-{ctype}"));
        let raw = d.path("src.raw");
        // Compressible content: runs of bytes.
        let mut content: Vec<u8> = (0..(4u32 << 20)).map(|i| (i / 1000) as u8).collect();
        content[(3 << 20)..].fill(0);
        std::fs::write(&raw, &content).unwrap();
        let img = d.path("c.qcow2");
        qemu_img_ok(&[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            &format!("compression_type={ctype}"),
            s(&raw),
            s(&img),
        ]);
        assert!(
            std::fs::metadata(&img).unwrap().len() < 2 << 20,
            "{ctype}: qemu-img did not compress"
        );
        let mut expected = content.clone();
        {
            let disk = open(&node(&img)).unwrap();
            assert!(read_all(&*disk) == expected, "{ctype}: compressed read");
            write_pattern(
                &*disk,
                &mut expected,
                &[(100, 50), (65536 * 3 + 1000, 70000), (2 << 20, 65536)],
            );
            disk.flush().unwrap();
        }
        check_ok(&img);
        compare_ok(&img, &d.raw("expected.raw", &expected));
    }
}

#[test]
fn discard_and_write_zeroes_keep_the_image_consistent() {
    for compat in ["1.1", "0.10"] {
        let d = Scratch::new(&format!("discard-{compat}"));
        let img = d.path("disk.qcow2");
        qemu_img_ok(&[
            "create",
            "-f",
            "qcow2",
            "-o",
            &format!("compat={compat}"),
            s(&img),
            "8M",
        ]);
        let mut expected = vec![0u8; 8 << 20];
        {
            let mut n = node(&img);
            n.discard = DiscardMode::Unmap;
            let disk = open(&n).unwrap();
            write_pattern(&*disk, &mut expected, &[(0, 4 << 20)]);
            disk.flush().unwrap();
            disk.discard(1 << 20, 1 << 20).unwrap();
            expected[1 << 20..2 << 20].fill(0);
            disk.write_zeroes(3 << 20, (1 << 20) + 300, true).unwrap();
            expected[3 << 20..(4 << 20) + 300].fill(0);
            disk.write_zeroes(100, 65536, false).unwrap();
            expected[100..65636].fill(0);
            disk.flush().unwrap();
            assert!(read_all(&*disk) == expected, "{compat}: read back");
            // Discarded clusters are reused by later writes.
            write_pattern(&*disk, &mut expected, &[(6 << 20, 1 << 20)]);
            disk.flush().unwrap();
        }
        check_ok(&img);
        compare_ok(&img, &d.raw("expected.raw", &expected));
        let used = std::fs::metadata(&img).unwrap().len();
        assert!(
            used < (7 << 20),
            "{compat}: freed clusters were not reused ({used})"
        );
    }
}

#[test]
fn probed_read_only_qcow2_opens_and_refuses_writes() {
    let d = Scratch::new("probe");
    let img = d.path("disk.qcow2");
    qemu_img_ok(&["create", "-f", "qcow2", s(&img), "1M"]);
    qemu_io_ok(&img, "write -P 0x5a 0 4k");
    let mut n = node(&img);
    n.format = BlockFormat::Probe;
    n.read_only = true;

    let disk = open(&n).unwrap();
    let mut b = [0u8; 4];
    disk.read_at(0, &mut b).unwrap();

    assert_eq!(b, [0x5a; 4]);
    assert_eq!(disk.size(), 1 << 20);
    assert!(disk.write_at(0, &b).is_err());
}

#[test]
fn probed_image_with_a_backing_file_is_not_followed() {
    let d = Scratch::new("probe-backing");
    let base = d.path("base.raw");
    std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
    let img = d.path("top.qcow2");
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        s(&img),
    ]);
    let mut n = node(&img);
    n.format = BlockFormat::Probe;
    n.read_only = true;

    let err = open(&n).err().unwrap().to_string();

    assert!(err.contains("probed") && err.contains("base.raw"), "{err}");
}

#[test]
fn a_backing_name_in_the_image_cannot_select_an_fd_set() {
    let d = Scratch::new("fdset-backing");
    let img = d.path("top.qcow2");
    // -u: qemu-img does not open the backing file; the header just names it.
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "/dev/fdset/0",
        "-F",
        "raw",
        s(&img),
        "1M",
    ]);

    let err = open(&node(&img)).err().unwrap().to_string();

    assert!(
        err.contains("/dev/fdset/0") && err.contains("may not select an fd set"),
        "{err}"
    );
}

/// Flushes and closes `disk`, after checking that it reads `expected`; then `qemu-img` checks
/// its image `img` and compares it with `expected`.
fn settle(disk: Arc<dyn BlockBackend>, img: &Path, d: &Scratch, expected: &[u8], ctx: &str) {
    disk.flush().unwrap();
    assert!(read_all(&*disk) == expected, "{ctx}: read back");
    drop(disk);
    check_ok(img);
    compare_ok(img, &d.raw("expected.raw", expected));
}

/// 4 KiB-aligned memory standing in for guest RAM.
struct Ram(Vec<u8>, usize);

impl Ram {
    fn new(len: usize) -> Ram {
        let v = vec![0u8; len + 4096];
        let start = v.as_ptr().align_offset(4096);
        Ram(v, start)
    }

    fn bytes(&mut self) -> &mut [u8] {
        let s = self.1;
        &mut self.0[s..]
    }

    /// Writes `data` at disk offset `at` from guest buffers cut at the offsets `cuts` into
    /// it: whether it went straight (and then into `expected` too).
    fn write_straight(
        &mut self,
        disk: &dyn BlockBackend,
        at: usize,
        data: &[u8],
        cuts: &[usize],
        expected: &mut [u8],
    ) -> bool {
        self.bytes()[..data.len()].copy_from_slice(data);
        let ends: Vec<usize> = cuts.iter().copied().chain([data.len()]).collect();
        let pieces: Vec<(usize, usize)> = std::iter::once(0)
            .chain(cuts.iter().copied())
            .zip(ends)
            .map(|(from, to)| (from, to - from))
            .collect();
        let bufs = self.bufs(&pieces);
        let straight = disk.write_guest_at(at as u64, &bufs).unwrap();
        if straight {
            expected[at..at + data.len()].copy_from_slice(data);
        }
        straight
    }

    /// Buffers of the given (offset, length) pieces.
    fn bufs(&mut self, pieces: &[(usize, usize)]) -> Vec<GuestBuf> {
        let base = self.bytes().as_mut_ptr();
        pieces
            .iter()
            .map(|&(o, len)| {
                assert!(o + len <= self.0.len() - self.1);
                // SAFETY: inside `self`, which outlives the buffers in the test.
                unsafe { GuestBuf::new(base.add(o), len) }
            })
            .collect()
    }
}

#[test]
fn guest_buffers_go_straight_to_and_from_allocated_or_whole_clusters() {
    for (cluster, mode) in [
        (65536usize, "none"),
        (4096, "none"),
        (65536, "writeback"),
        (512, "writeback"),
    ] {
        let d = Scratch::new(&format!("guest-{cluster}-{mode}"));
        let img = d.path("disk.qcow2");
        qemu_img_ok(&[
            "create",
            "-f",
            "qcow2",
            "-o",
            &format!("cluster_size={cluster}"),
            s(&img),
            "8M",
        ]);
        let mut expected = vec![0u8; 8 << 20];
        let mut ram = Ram::new(1 << 20);
        {
            let mut n = node(&img);
            n.cache = CacheConfig::from_mode(mode).unwrap();
            let disk = open(&n).unwrap();
            // Whole new clusters, from three buffers split off the cluster boundaries.
            let (at, len) = (1usize << 20, 4 * cluster);
            let third = (len / 3) & !4095;
            let cuts = [third, len - third];
            let ok = ram.write_straight(&*disk, at, &pattern(7, len), &cuts, &mut expected);
            assert!(ok, "{cluster} {mode}");
            // The same range again: in place.
            assert!(ram.write_straight(&*disk, at, &pattern(8, len), &[], &mut expected));
            // Parts of unallocated clusters (no backing file): new clusters, zero elsewhere.
            if cluster > 4096 {
                let at = (3 << 20) + cluster - 4096;
                assert!(ram.write_straight(&*disk, at, &[0xee; 8192], &[], &mut expected));
            }
            // Reads of allocated data go straight into the buffers; of unallocated, not.
            ram.bytes()[..len].fill(0);
            let bufs = ram.bufs(&[(0, len / 2), (len / 2, len / 2)]);
            assert!(disk.read_guest_at(at as u64, &bufs).unwrap());
            assert!(
                ram.bytes()[..len] == expected[at..at + len],
                "{cluster} {mode}: read"
            );
            let bufs = ram.bufs(&[(0, 4096)]);
            assert!(!disk.read_guest_at(5 << 20, &bufs).unwrap());
            settle(disk, &img, &d, &expected, &format!("{cluster} {mode}"));
        }
    }
}

#[test]
fn guest_buffers_go_straight_to_an_overlay_only_where_the_backing_file_is_not_needed() {
    let d = Scratch::new("guest-backing");
    let base_raw = d.path("base.raw");
    let base = pattern(5, 4 << 20);
    std::fs::write(&base_raw, &base).unwrap();
    let top = d.path("top.qcow2");
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        s(&top),
    ]);
    let mut expected = base.clone();
    let mut ram = Ram::new(1 << 20);
    {
        let disk = open(&node(&top)).unwrap();
        // Part of a cluster the backing file fills: copied (read-modify-write), not straight.
        let at = 65536 + 8192;
        assert!(!ram.write_straight(&*disk, at, &[0x5a; 4096], &[], &mut expected));
        assert!(read_all(&*disk) == expected, "nothing changed");
        // Whole clusters: straight.
        let whole = vec![0x6b; 131072];
        assert!(ram.write_straight(&*disk, 1 << 20, &whole, &[], &mut expected));
        settle(disk, &top, &d, &expected, "overlay");
    }
}

#[test]
fn a_cluster_written_in_part_from_guest_buffers_reads_zeroes_elsewhere_even_when_reused() {
    let d = Scratch::new("guest-reuse");
    let img = d.path("disk.qcow2");
    qemu_img_ok(&["create", "-f", "qcow2", s(&img), "4M"]);
    // A cluster full of 0x77, then freed by QEMU without punching the file: its host
    // cluster is free (refcount 0) and still holds the old bytes.
    qemu_io_ok(&img, "write -P 0x77 0 64k");
    let out = std::process::Command::new("qemu-io")
        .args(["--image-opts", "-d", "unmap", "-c", "discard 0 64k"])
        .arg(format!(
            "driver=qcow2,file.filename={},pass-discard-request=off",
            s(&img)
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut expected = vec![0u8; 4 << 20];
    let mut ram = Ram::new(65536);
    {
        let disk = open(&node(&img)).unwrap();
        // 4 KiB into another cluster: whatever host cluster it gets, the rest reads zero.
        let at = (1 << 20) + 8192;
        assert!(ram.write_straight(&*disk, at, &[0x31; 4096], &[], &mut expected));
        settle(disk, &img, &d, &expected, "reused");
    }
}
