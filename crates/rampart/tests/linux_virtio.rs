//! Linux-level tests of the PCI bus and virtio devices: Debian's kernel under rampart's
//! software CPU finds the devices through ACPI (MCFG, PNP0A08), drives them with MSI-X, and
//! reads and writes real image files. Every check shares one boot: boots under the interpreter
//! cost about a minute each. The kernel, the initrd and the read-write disk are passed as
//! descriptors (`-add-fd`, `/dev/fdset/N`), as a management tool that gives rampart no file
//! system access would pass them.

mod common;

use std::fs::{File, OpenOptions};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::linux::*;
use common::*;

const LIMIT: Duration = Duration::from_secs(600);
const MIB: usize = 1 << 20;

fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn linux_uses_virtio_blk_and_rng_over_pci() {
    // Arrange: a sparse 64 MiB read-write disk with 8 MiB of data at 16 MiB, a 1 MiB read-only
    // disk, a 4 MiB disk of host-made data.
    let dir = Scratch::new("linux-virtio");
    let rw = dir.path("rw.img");
    {
        let f = std::fs::File::create(&rw).unwrap();
        f.set_len(64 * MIB as u64).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&vec![0x55; 8 * MIB], 16 * MIB as u64)
            .unwrap();
        f.sync_all().unwrap();
    }
    let allocated_before = allocated(&rw);
    let ro_bytes: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
    let ro = dir.file("ro.img", &ro_bytes);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data_bytes: Vec<u8> = (0..4 * MIB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let data = dir.file("data.img", &data_bytes);
    // The kernel and initrd by descriptor (sets 10, 11); the read-write disk as set 12 with a
    // read-only descriptor and an O_RDWR|O_DIRECT one: cache=none picks the latter.
    let fd = |p: &Path| -> OwnedFd { File::open(p).unwrap().into() };
    let rw_direct: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&rw)
        .unwrap()
        .into();
    let mut cmd = rampart();
    cmd.args(["-accel", "tcg", "-m", "512", "-nographic"])
        .args(["-add-fd", "fd=110,set=10", "-kernel", "/dev/fdset/10"])
        .args(["-add-fd", "fd=111,set=11", "-initrd", "/dev/fdset/11"])
        .args(["-add-fd", "fd=112,set=12,opaque=rw.img:ro"])
        .args(["-add-fd", "fd=113,set=12,opaque=rw.img:rw-direct"])
        .args([
            "-append",
            &format!("{CMDLINE} rampart.modules=virtio_blk,virtio_rng rampart.test=virtio"),
        ]);
    pass_fds(
        &mut cmd,
        vec![
            (fd(&guest_file("vmlinuz")), 110),
            (fd(&guest_file("initrd.img")), 111),
            (fd(&rw), 112),
            (rw_direct, 113),
        ],
    );
    cmd.arg("-drive")
        .arg("file=/dev/fdset/12,format=raw,if=virtio,cache=none,discard=unmap")
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=none,id=d1,readonly=on",
            ro.display()
        ))
        .args(["-device", "virtio-blk-pci,drive=d1,serial=RO1"])
        .arg("-blockdev")
        .arg(format!(
            "driver=file,filename={},node-name=n0",
            data.display()
        ))
        .args([
            "-device",
            "virtio-blk-pci,drive=n0",
            "-device",
            "virtio-rng-pci",
        ]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());

    // Act: boot; meanwhile a second rampart asks for the same read-write image.
    let child = cmd.spawn().expect("spawn rampart");
    std::thread::sleep(Duration::from_secs(3));
    let mut second = guest_cmd("hello", "");
    second
        .arg("-S")
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", rw.display()));
    let second = run_to_end(second, Duration::from_secs(60));
    let r = wait_with_limit(child, LIMIT);

    // Assert: the second instance was refused by the image lock (held through the passed
    // descriptor).
    assert_ne!(second.code, Some(0), "{second:?}");
    assert!(second.stderr.contains("lock"), "{second:?}");
    assert_eq!(r.code, Some(0), "{r:?}");
    let out = test_output(&r, "virtio");
    // PCI: ECAM from the MCFG table, the host bridge and the devices in slot order.
    assert!(
        out.contains("MMCONFIG at [mem 0xe0000000-0xefffffff] reserved"),
        "{out}"
    );
    assert!(
        out.contains("pci 0000:00:00.0 0x8086 0x29c0 0x060000"),
        "{out}"
    );
    assert!(
        out.contains("pci 0000:00:01.0 0x1af4 0x1042 0x010000"),
        "{out}"
    );
    assert!(
        out.contains("pci 0000:00:04.0 0x1af4 0x1044 0x00ff00"),
        "{out}"
    );
    // MSI-X vectors (edge interrupts named after the queues).
    assert!(out.contains("virtio0-config"), "{out}");
    // Disks as the guest sees them: sizes, read-only flag, serial, discard support.
    assert!(
        out.contains("blk vda sectors=131072 ro=0 serial= discard_max="),
        "{out}"
    );
    assert!(
        out.contains("blk vdb sectors=2048 ro=1 serial=RO1 "),
        "{out}"
    );
    assert!(
        out.contains("blk vdc sectors=8192 ro=0 serial= discard_max=0"),
        "{out}"
    );
    // vda: the guest's writes are in the image, byte for byte.
    for key in [
        "vda_direct_write",
        "vda_odd_write",
        "vda_byte_write",
        "vda_readback",
        "vda_discard",
    ] {
        assert_eq!(value(&out, key), "ok", "{out}");
    }
    let image = std::fs::read(&rw).unwrap();
    assert_eq!(
        image[MIB..2 * MIB],
        repeat("rampart-pattern\n", MIB)[..],
        "1 MiB O_DIRECT write"
    );
    assert_eq!(
        image[7 * 512..10 * 512],
        repeat("0123456789abcde\n", 1536)[..],
        "3-sector O_DIRECT write"
    );
    assert_eq!(&image[3 * MIB + 5..3 * MIB + 15], b"tail-bytes");
    // Discard punched a hole where the 8 MiB of data were.
    let allocated_after = allocated(&rw);
    assert!(
        allocated_after + 7 * MIB as u64 <= allocated_before + 2 * MIB as u64,
        "allocated {allocated_before} -> {allocated_after}"
    );
    assert!(image[16 * MIB..24 * MIB].iter().all(|&b| b == 0));
    // vdb: read-only, readable, unchanged.
    assert_eq!(value(&out, "vdb_write"), "refused", "{out}");
    assert_eq!(value(&out, "vdb_sha256"), sha256_file(&ro), "{out}");
    assert_eq!(std::fs::read(&ro).unwrap(), ro_bytes);
    // vdc: the host's data reaches the guest intact, with and without O_DIRECT.
    let want = sha256_file(&data);
    assert_eq!(value(&out, "vdc_sha256_direct"), want, "{out}");
    assert_eq!(value(&out, "vdc_sha256"), want, "{out}");
    // virtio-rng: the kernel's hwrng is ours and gives random bytes.
    assert_eq!(value(&out, "hwrng_current"), "virtio_rng.0", "{out}");
    assert_eq!(value(&out, "hwrng_bytes"), "4096", "{out}");
    let distinct: u32 = value(&out, "hwrng_distinct").parse().unwrap_or(0);
    assert!(
        distinct > 20,
        "64 random bytes should not repeat much: {out}"
    );
}
