//! Tests of the kernel and initrd loader (a sibling file to keep loader.rs short).

use std::io::Write;

use vm_memory::Bytes;
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::arch::x86_64::bzimage::tests::fake_bzimage;
use crate::arch::x86_64::layout::{ram_regions, MIB};

const RAM: u64 = 64 * MIB;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&ram_regions(RAM)).unwrap()
}

fn file_with(bytes: &[u8]) -> (TempFile, File) {
    let tmp = TempFile::new().unwrap();
    let mut f = tmp.as_file().try_clone().unwrap();
    f.write_all(bytes).unwrap();
    let f2 = File::open(tmp.as_path()).unwrap();
    (tmp, f2)
}

/// A hand-built ELF64 x86-64 kernel: one PT_LOAD at `paddr` holding `code` (memsz =
/// `memsz`), entry `entry`, and optionally a PT_NOTE with the Xen PVH entry note.
struct ElfSpec {
    paddr: u64,
    code: Vec<u8>,
    memsz: u64,
    entry: u64,
    pvh_entry: Option<u32>,
}

impl Default for ElfSpec {
    fn default() -> Self {
        ElfSpec {
            paddr: 0x10_0000,
            code: vec![0xf4; 64], // hlt
            memsz: 0x2000,
            entry: 0x10_0000,
            pvh_entry: None,
        }
    }
}

fn build_elf(spec: &ElfSpec) -> Vec<u8> {
    let phnum: u16 = if spec.pvh_entry.is_some() { 2 } else { 1 };
    let phoff = 64u64;
    let note_off = phoff + 56 * u64::from(phnum);
    let note = spec.pvh_entry.map(|e| {
        let mut n = Vec::new();
        // An unrelated note first, then the PVH one.
        n.extend(4u32.to_le_bytes()); // namesz
        n.extend(4u32.to_le_bytes()); // descsz
        n.extend(1u32.to_le_bytes()); // type
        n.extend(b"GNU\0");
        n.extend([0u8; 4]);
        n.extend(4u32.to_le_bytes());
        n.extend(4u32.to_le_bytes());
        n.extend(18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
        n.extend(b"Xen\0");
        n.extend(e.to_le_bytes());
        n
    });
    let note_len = note.as_ref().map_or(0, |n| n.len() as u64);
    let code_off = (note_off + note_len).div_ceil(16) * 16;

    let mut f = vec![0u8; 64];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // ELFCLASS64
    f[5] = 1; // little-endian
    f[6] = 1; // version
    f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[24..32].copy_from_slice(&spec.entry.to_le_bytes());
    f[32..40].copy_from_slice(&phoff.to_le_bytes());
    f[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    f[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    f[56..58].copy_from_slice(&phnum.to_le_bytes());

    let phdr = |p_type: u32, offset: u64, addr: u64, filesz: u64, memsz: u64| {
        let mut p = Vec::with_capacity(56);
        p.extend(p_type.to_le_bytes());
        p.extend(7u32.to_le_bytes()); // flags RWX
        p.extend(offset.to_le_bytes());
        p.extend(addr.to_le_bytes()); // vaddr
        p.extend(addr.to_le_bytes()); // paddr
        p.extend(filesz.to_le_bytes());
        p.extend(memsz.to_le_bytes());
        p.extend(16u64.to_le_bytes()); // align
        p
    };
    let code_len = spec.code.len() as u64;
    f.extend(phdr(1, code_off, spec.paddr, code_len, spec.memsz));
    if note.is_some() {
        f.extend(phdr(4, note_off, 0, note_len, note_len));
    }
    if let Some(n) = note {
        f.extend(n);
    }
    f.resize(code_off as usize, 0);
    f.extend(&spec.code);
    f
}

fn load(bytes: &[u8]) -> Result<KernelEntry, LoaderError> {
    let (_tmp, mut f) = file_with(bytes);
    load_kernel(&mem(), &mut f)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn loads_elf_vmlinux_for_64_bit_entry() {
    // Arrange
    let mem = mem();
    let elf = build_elf(&ElfSpec::default());
    let (_tmp, mut f) = file_with(&elf);
    // Act
    let k = load_kernel(&mem, &mut f).unwrap();
    // Assert
    assert_eq!(k.protocol, BootProtocol::Linux64);
    assert_eq!(k.entry, GuestAddress(0x10_0000));
    assert_eq!(k.kernel_end, GuestAddress(0x10_2000));
    assert_eq!(k.cmdline_limit(), DEFAULT_CMDLINE_LIMIT);
    let byte: u8 = mem.read_obj(GuestAddress(0x10_0000)).unwrap();
    assert_eq!(byte, 0xf4);
}

#[test]
fn pvh_note_selects_pvh_entry() {
    let elf = build_elf(&ElfSpec {
        pvh_entry: Some(0x10_0010),
        ..Default::default()
    });
    let k = load(&elf).unwrap();
    assert_eq!(k.protocol, BootProtocol::Pvh);
    assert_eq!(k.entry, GuestAddress(0x10_0010));
}

#[test]
fn rejects_pvh_entry_outside_kernel() {
    let elf = build_elf(&ElfSpec {
        pvh_entry: Some(0x50_0000),
        ..Default::default()
    });
    assert!(matches!(
        load(&elf),
        Err(LoaderError::EntryOutsideKernel(0x50_0000))
    ));
}

#[test]
fn rejects_elf_segment_outside_ram() {
    let elf = build_elf(&ElfSpec {
        paddr: RAM - 0x1000,
        entry: RAM - 0x1000,
        ..Default::default()
    });
    let err = load(&elf).unwrap_err();
    assert!(
        matches!(err, LoaderError::SegmentOutsideRam { index: 0, .. }),
        "{err}"
    );
}

#[test]
fn rejects_elf_segment_below_one_mib() {
    let elf = build_elf(&ElfSpec {
        paddr: 0x7000,
        entry: 0x7000,
        ..Default::default()
    });
    assert!(matches!(
        load(&elf),
        Err(LoaderError::SegmentOutsideRam { .. })
    ));
}

#[test]
fn rejects_elf_segment_past_end_of_file() {
    let mut elf = build_elf(&ElfSpec::default());
    elf.truncate(elf.len() - 10);
    let err = load(&elf).unwrap_err();
    assert!(
        matches!(err, LoaderError::SegmentOutsideFile { index: 0, .. }),
        "{err}"
    );
}

#[test]
fn rejects_entry_outside_loaded_segments() {
    let elf = build_elf(&ElfSpec {
        entry: 0x90_0000,
        ..Default::default()
    });
    assert!(matches!(
        load(&elf),
        Err(LoaderError::EntryOutsideKernel(0x90_0000))
    ));
}

#[test]
fn rejects_truncated_elf_header() {
    let elf = build_elf(&ElfSpec::default());
    assert!(matches!(load(&elf[..40]), Err(LoaderError::BadElf(_))));
}

#[test]
fn rejects_32_bit_elf() {
    let mut elf = build_elf(&ElfSpec::default());
    elf[4] = 1;
    let err = load(&elf).unwrap_err();
    assert!(err.to_string().contains("ELFCLASS64"), "{err}");
}

#[test]
fn rejects_garbage_empty_file_and_directory() {
    assert!(matches!(
        load(b"this is not a kernel at all"),
        Err(LoaderError::UnknownFormat(_))
    ));
    assert!(matches!(load(b""), Err(LoaderError::Empty("kernel file"))));
    let mut dir = File::open(std::env::temp_dir()).unwrap();
    assert!(matches!(
        load_kernel(&mem(), &mut dir),
        Err(LoaderError::IsDirectory(_))
    ));
}

#[test]
fn loads_bzimage_with_gzip_payload_through_64_bit_entry() {
    // Arrange: the vmlinux inside has a PVH note, which the bzImage path ignores.
    let vmlinux = build_elf(&ElfSpec {
        pvh_entry: Some(0x10_0010),
        ..Default::default()
    });
    let image = fake_bzimage(&gzip(&vmlinux));
    // Act
    let k = load(&image).unwrap();
    // Assert
    assert_eq!(k.protocol, BootProtocol::Linux64);
    assert_eq!(k.entry, GuestAddress(0x10_0000));
    assert_eq!(k.compression, Some(Compression::Gzip));
    let h = k.setup_header.unwrap();
    assert_eq!({ h.init_size }, 0x40_0000);
    // The kernel reserves load address + init_size.
    assert_eq!(k.kernel_end, GuestAddress(0x10_0000 + 0x40_0000));
    assert_eq!(k.cmdline_limit(), 2047);
}

#[test]
fn rejects_bzimage_whose_payload_decompresses_past_limit() {
    let vmlinux = build_elf(&ElfSpec::default());
    let (_tmp, mut f) = file_with(&fake_bzimage(&gzip(&vmlinux)));
    let err = load_kernel_with_limit(&mem(), &mut f, 100).unwrap_err();
    assert!(
        matches!(
            err,
            LoaderError::Decompress(DecompressError::TooLarge { limit: 100 })
        ),
        "{err}"
    );
}

#[test]
fn rejects_bzimage_with_bzip2_payload_by_name() {
    let err = load(&fake_bzimage(b"BZh91AY&SY....")).unwrap_err();
    assert!(err.to_string().contains("bzip2"), "{err}");
}

#[test]
fn rejects_bzimage_with_old_protocol() {
    let mut image = fake_bzimage(&gzip(&build_elf(&ElfSpec::default())));
    image[0x206..0x208].copy_from_slice(&0x0202u16.to_le_bytes());
    assert!(matches!(
        load(&image),
        Err(LoaderError::BzImage(BzImageError::OldProtocol { .. }))
    ));
}

fn elf_kernel() -> KernelEntry {
    load(&build_elf(&ElfSpec::default())).unwrap()
}

#[test]
fn initrd_is_page_aligned_at_top_of_low_ram() {
    // Arrange
    let mem = mem();
    let (_tmp, mut f) = file_with(&[0xab; 5000]);
    // Act
    let (addr, size) = load_initrd(&mem, &mut f, &elf_kernel()).unwrap();
    // Assert
    assert_eq!(size, 5000);
    assert_eq!(addr.0 % 0x1000, 0);
    assert!(addr.0 + size <= RAM && addr.0 + size > RAM - 0x2000);
    let byte: u8 = mem.read_obj(GuestAddress(addr.0 + 4999)).unwrap();
    assert_eq!(byte, 0xab);
}

#[test]
fn initrd_respects_initrd_addr_max() {
    let mem = mem();
    let (_tmp, mut f) = file_with(&[1; 100]);
    let mut kernel = load(&fake_bzimage(&gzip(&build_elf(&ElfSpec::default())))).unwrap();
    if let Some(h) = kernel.setup_header.as_mut() {
        h.initrd_addr_max = 0x80_0fff;
    }
    let (addr, _) = load_initrd(&mem, &mut f, &kernel).unwrap();
    assert_eq!(addr, GuestAddress(0x80_0000));
}

#[test]
fn rejects_initrd_larger_than_ram() {
    let (_tmp, mut f) = file_with(&vec![0; (RAM - MIB) as usize]);
    let err = load_initrd(&mem(), &mut f, &elf_kernel()).unwrap_err();
    assert!(matches!(err, LoaderError::InitrdTooLarge { .. }), "{err}");
    assert!(err.to_string().contains(&format!("{}", RAM - MIB)), "{err}");
}

#[test]
fn rejects_empty_initrd() {
    let (_tmp, mut f) = file_with(b"");
    assert!(matches!(
        load_initrd(&mem(), &mut f, &elf_kernel()),
        Err(LoaderError::Empty("initrd"))
    ));
}

/// The real Debian kernel fetched by `cargo xtask guest`. Run with
/// `cargo test -p rampart-vmm -- --ignored real_debian_kernel`.
#[test]
#[ignore = "needs the Debian kernel at guest/vmlinuz (cargo xtask guest)"]
fn real_debian_kernel_decompresses_and_loads() {
    let path = std::env::var("RAMPART_TEST_KERNEL").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../guest/vmlinuz").to_string()
    });
    let Ok(mut f) = File::open(&path) else {
        panic!("kernel {path} is absent: run `cargo xtask guest` or set RAMPART_TEST_KERNEL");
    };
    let mem = GuestMemoryMmap::from_ranges(&ram_regions(512 * MIB)).unwrap();
    let k = load_kernel(&mem, &mut f).unwrap();
    eprintln!("loaded {path}: {k:?}");
    assert_eq!(k.protocol, BootProtocol::Linux64);
    assert_eq!(k.kernel_start, GuestAddress(0x100_0000));
    assert!(k.compression.is_some());
    let h = k.setup_header.unwrap();
    assert!({ h.version } >= 0x020c);
    assert!(k.kernel_end.0 >= k.kernel_start.0 + u64::from(h.init_size));
    // The first bytes of startup_64 are in memory at the entry point.
    let mut code = [0u8; 16];
    mem.read_slice(&mut code, k.entry).unwrap();
    assert_ne!(code, [0u8; 16]);
    // An initrd goes above the kernel.
    let (_tmp, mut initrd) = file_with(&[7; 4096 * 3]);
    let (addr, _) = load_initrd(&mem, &mut initrd, &k).unwrap();
    assert!(addr.0 >= k.kernel_end.0);

    // The vmlinux inside, loaded as an ELF on its own, is a PVH kernel (CONFIG_PVH=y).
    let image = std::fs::read(&path).unwrap();
    let info = bzimage::parse_setup_header(&image, image.len() as u64).unwrap();
    let start = info.payload_offset as usize;
    let payload = &image[start..start + info.payload_length as usize];
    let (_, vmlinux) = decompress::decompress(payload, decompress::MAX_DECOMPRESSED_SIZE).unwrap();
    let (_tmp, mut elf) = file_with(&vmlinux);
    let mem = GuestMemoryMmap::from_ranges(&ram_regions(512 * MIB)).unwrap();
    let pvh = load_kernel(&mem, &mut elf).unwrap();
    eprintln!("vmlinux inside: {pvh:?}");
    assert_eq!(pvh.protocol, BootProtocol::Pvh);
    assert!(pvh.entry.0 > pvh.kernel_start.0 && pvh.entry.0 < pvh.kernel_end.0);
}
