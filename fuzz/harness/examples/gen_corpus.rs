//! Writes the seed corpus of every target into `fuzz/corpus/<target>/` (or the folder given as
//! the first argument). Seeds are built here from scratch: small valid inputs of each format
//! plus a few near-misses, so the fuzzer starts past the magic-number checks.
//!
//! `cargo run --release -p rampart-fuzz-harness --example gen_corpus`

use std::io::Write;
use std::path::{Path, PathBuf};

/// The xz and zstd samples the decompressor's own unit tests use (made by the project with
/// `xz --x86 --lzma2` and `zstd -19`), so the fuzzer starts from kernel-like streams.
const SAMPLE_XZ: &[u8] =
    include_bytes!("../../../crates/rampart-vmm/src/arch/x86_64/testdata/sample.xz");
const SAMPLE_ZST: &[u8] =
    include_bytes!("../../../crates/rampart-vmm/src/arch/x86_64/testdata/sample.zst");

const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).expect("gzip into a Vec");
    let mut out = e.finish().expect("gzip into a Vec");
    out.extend((data.len() as u32).to_le_bytes()); // the kernel's size trailer
    out
}

fn lz4_legacy(data: &[u8]) -> Vec<u8> {
    let mut out = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
    for chunk in data.chunks(256) {
        let block = lz4_flex::block::compress(chunk);
        out.extend((block.len() as u32).to_le_bytes());
        out.extend(block);
    }
    out.extend((data.len() as u32).to_le_bytes());
    out
}

/// A little-endian field writer.
fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

/// An ELF64 x86-64 executable: one PT_LOAD of `code` at `paddr` (memsz `memsz`), entry at
/// `paddr`, and a Xen PVH entry note if `pvh` is set.
fn elf(code: &[u8], paddr: u64, memsz: u64, pvh: Option<u32>) -> Vec<u8> {
    let phnum: u16 = if pvh.is_some() { 2 } else { 1 };
    let note: Vec<u8> = match pvh {
        Some(entry) => [
            &4u32.to_le_bytes()[..],
            &4u32.to_le_bytes(),
            &18u32.to_le_bytes(), // XEN_ELFNOTE_PHYS32_ENTRY
            b"Xen\0",
            &entry.to_le_bytes(),
        ]
        .concat(),
        None => Vec::new(),
    };
    let note_off = 64 + 56 * u64::from(phnum);
    let code_off = (note_off + note.len() as u64).div_ceil(16) * 16;
    let mut f = vec![0u8; 64];
    put(&mut f, 0, b"\x7fELF\x02\x01\x01");
    put(&mut f, 16, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut f, 18, &62u16.to_le_bytes()); // EM_X86_64
    put(&mut f, 20, &1u32.to_le_bytes());
    put(&mut f, 24, &paddr.to_le_bytes()); // e_entry
    put(&mut f, 32, &64u64.to_le_bytes()); // e_phoff
    put(&mut f, 52, &64u16.to_le_bytes());
    put(&mut f, 54, &56u16.to_le_bytes());
    put(&mut f, 56, &phnum.to_le_bytes());
    let phdr = |ty: u32, off: u64, addr: u64, filesz: u64, memsz: u64| {
        let mut p = Vec::new();
        for field in [
            &ty.to_le_bytes()[..],
            &7u32.to_le_bytes(),
            &off.to_le_bytes(),
            &addr.to_le_bytes(),
            &addr.to_le_bytes(),
            &filesz.to_le_bytes(),
            &memsz.to_le_bytes(),
            &16u64.to_le_bytes(),
        ] {
            p.extend_from_slice(field);
        }
        p
    };
    f.extend(phdr(1, code_off, paddr, code.len() as u64, memsz));
    if pvh.is_some() {
        f.extend(phdr(4, note_off, 0, note.len() as u64, note.len() as u64));
    }
    f.extend(&note);
    f.resize(code_off as usize, 0);
    f.extend(code);
    f
}

/// A bzImage: `setup_sects` setup sectors after the boot sector, then the protected-mode part
/// holding `payload` at its start.
fn bzimage(payload: &[u8], setup_sects: u8) -> Vec<u8> {
    let sects = if setup_sects == 0 {
        4
    } else {
        usize::from(setup_sects)
    };
    let setup_size = (sects + 1) * 512;
    let pm_len = payload.len().div_ceil(16) * 16;
    let mut f = vec![0u8; setup_size + pm_len];
    f[0x1f1] = setup_sects;
    put(&mut f, 0x1f4, &((pm_len / 16) as u32).to_le_bytes()); // syssize
    put(&mut f, 0x1fe, &0xaa55u16.to_le_bytes()); // boot_flag
    put(&mut f, 0x202, b"HdrS");
    put(&mut f, 0x206, &0x020fu16.to_le_bytes()); // version 2.15
    f[0x211] = 1; // loadflags: LOADED_HIGH
    put(&mut f, 0x22c, &0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    put(&mut f, 0x230, &0x20_0000u32.to_le_bytes()); // kernel_alignment
    put(&mut f, 0x236, &1u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    put(&mut f, 0x238, &2047u32.to_le_bytes()); // cmdline_size
    put(&mut f, 0x248, &0u32.to_le_bytes()); // payload_offset
    put(&mut f, 0x24c, &(payload.len() as u32).to_le_bytes()); // payload_length
    put(&mut f, 0x258, &0x100_0000u64.to_le_bytes()); // pref_address
    put(&mut f, 0x260, &0x40_0000u32.to_le_bytes()); // init_size
    f[setup_size..setup_size + payload.len()].copy_from_slice(payload);
    f
}

/// A tiny kernel: `mov eax, 1; hlt` at 1 MiB.
fn tiny_vmlinux() -> Vec<u8> {
    elf(&[0xb8, 1, 0, 0, 0, 0xf4], 0x10_0000, 0x2000, None)
}

fn write(root: &Path, target: &str, name: &str, data: &[u8]) {
    let dir = root.join(target);
    std::fs::create_dir_all(&dir).expect("creating the corpus folder");
    std::fs::write(dir.join(name), data).expect("writing a seed");
}

fn boot_seeds(root: &Path) {
    let vmlinux = tiny_vmlinux();
    let gz = gzip(&vmlinux);
    let lz4 = lz4_legacy(&vmlinux);
    let bz_gz = bzimage(&gz, 1);
    write(root, "bzimage_header", "valid-gzip", &bz_gz);
    write(root, "bzimage_header", "setup-sects-0", &bzimage(&gz, 0));
    write(root, "bzimage_header", "truncated", &bz_gz[..0x300]);
    let mut old = bz_gz.clone();
    put(&mut old, 0x206, &0x020bu16.to_le_bytes());
    write(root, "bzimage_header", "old-protocol", &old);

    write(root, "decompress", "gzip", &gz);
    write(root, "decompress", "lz4-legacy", &lz4);
    write(root, "decompress", "xz-bcj", SAMPLE_XZ);
    write(root, "decompress", "zstd", SAMPLE_ZST);
    write(root, "decompress", "elf", &vmlinux);
    write(root, "decompress", "bzip2-magic", b"BZh91AY&SY");

    write(root, "kernel_loader", "elf", &vmlinux);
    let pvh = elf(&[0xf4; 32], 0x10_0000, 0x1000, Some(0x10_0010));
    write(root, "kernel_loader", "elf-pvh", &pvh);
    write(root, "kernel_loader", "bzimage-gzip", &bz_gz);
    write(root, "kernel_loader", "bzimage-lz4", &bzimage(&lz4, 1));
    write(
        root,
        "kernel_loader",
        "bzimage-uncompressed",
        &bzimage(&vmlinux, 2),
    );
    write(root, "kernel_loader", "bzimage-xz", &bzimage(SAMPLE_XZ, 1));
}

fn text_seeds(root: &Path) {
    // First byte: bit 0 selects tight limits, bits 1-2 the implied key (keyval only).
    let keyval: [(&str, u8, &str); 7] = [
        ("flat", 0, "id=a0,size=64M,share=on"),
        ("implied-qom-type", 2, "memory-backend-ram,id=m0,size=1G"),
        ("implied-driver", 4, "virtio-blk-pci,drive=d0,,x,bus=pci.0"),
        (
            "dotted-list",
            0,
            "rules.0.match=*,rules.0.policy=allow,rules.1.match=x",
        ),
        ("nested", 1, "a.b.c=1,a.b.d=2,e=,f.0=x"),
        ("inconsistent", 0, "a=1,a.b=2"),
        ("array-gap", 1, "l.0=a,l.2=b"),
    ];
    for (name, sel, text) in keyval {
        write(root, "keyval", name, &[&[sel], text.as_bytes()].concat());
    }
    let json: [(&str, u8, &str); 6] = [
        (
            "object",
            0,
            r#"{"qom-type":"authz-list","id":"a0","rules":[{"match":"*","policy":"allow"}],"n":3}"#,
        ),
        (
            "numbers",
            0,
            r#"{"i":-1,"u":18446744073709551615,"f":1.5e300,"b":true,"z":null}"#,
        ),
        ("deep-tight", 1, r#"{"a":{"b":{"c":{"d":[1,[2]]}}}}"#),
        ("long-key-tight", 1, r#"{"abcdefghijklmnop":1}"#),
        ("not-object", 0, "[1,2,3]"),
        ("escapes", 0, r#"{"s":"\u00e9\ud83d\ude00\n","":1}"#),
    ];
    for (name, sel, text) in json {
        write(
            root,
            "json_props",
            name,
            &[&[sel], text.as_bytes()].concat(),
        );
    }
}

fn tcg_seeds(root: &Path) {
    let seeds: [(&str, &[u8]); 14] = [
        ("hlt", &[0xf4]),
        (
            "mov-add-loop",
            &[
                0xb8, 5, 0, 0, 0, 0x48, 0x01, 0xc3, 0xff, 0xc8, 0x75, 0xf9, 0xf4,
            ],
        ),
        ("rep-stosb", &[0xf3, 0xaa, 0xf4]),
        ("rep-movsq", &[0xf3, 0x48, 0xa5, 0xf4]),
        ("port-io", &[0xe4, 0x60, 0x66, 0xe7, 0x80, 0xec, 0xef, 0xf4]),
        ("int3-and-int", &[0xcc, 0xcd, 0x40, 0xf4]),
        ("ud2", &[0x0f, 0x0b]),
        (
            "push-call-ret",
            &[0x50, 0xe8, 0x01, 0, 0, 0, 0xf4, 0x58, 0xc3],
        ),
        (
            "cpuid-rdtsc-rdmsr",
            &[
                0x0f, 0xa2, 0x0f, 0x31, 0xb9, 0x1b, 0, 0, 0xc0, 0x0f, 0x32, 0xf4,
            ],
        ),
        ("lock-cmpxchg", &[0xf0, 0x48, 0x0f, 0xb1, 0x0b, 0xf4]),
        // mov eax, [0xfee00030] (MMIO window); mov [0xfee000b0], eax
        (
            "mmio",
            &[
                0x8b, 0x04, 0x25, 0x30, 0, 0xe0, 0xfe, 0x89, 0x04, 0x25, 0xb0, 0, 0xe0, 0xfe, 0xf4,
            ],
        ),
        // mov rax, cr3; mov cr3, rax; invlpg [rbx]
        (
            "cr3-invlpg",
            &[0x0f, 0x20, 0xd8, 0x0f, 0x22, 0xd8, 0x0f, 0x01, 0x3b, 0xf4],
        ),
        // sti; hlt; jmp back
        ("sti-hlt-loop", &[0xfb, 0xf4, 0xeb, 0xfd]),
        // mov rax, 1<<40 (unmapped); mov rbx, [rax]
        (
            "unmapped-read",
            &[0x48, 0xb8, 0, 0, 0, 0, 0, 1, 0, 0, 0x48, 0x8b, 0x18, 0xf4],
        ),
    ];
    for (name, code) in seeds {
        write(root, "tcg_run", name, code);
    }
}

/// qcow2 images made by `qemu-img` (512-byte clusters keep them small), when it is
/// installed: plain v3 and v2 with data, compressed (zlib and zstd), with a backing file name,
/// with a refcount table that had to grow, and dirty (lazy refcounts never written back).
fn qcow2_seeds(root: &Path) {
    let tmp = std::env::temp_dir().join(format!("rampart-gen-qcow2-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).expect("creating a scratch folder");
    let run = |prog: &str, args: &[&str]| -> bool {
        std::process::Command::new(prog)
            .args(args)
            .current_dir(&tmp)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let raw: Vec<u8> = (0..65536u32).map(|i| (i / 300) as u8).collect();
    std::fs::write(tmp.join("src.raw"), &raw).expect("writing src.raw");
    let opts = "cluster_size=512";
    let seeds: &[(&str, &[&str], Option<&str>)] = &[
        (
            "v3-data",
            &["create", "-f", "qcow2", "-o", opts, "v3-data", "64K"],
            Some("write -P 0x5a 1000 3000"),
        ),
        (
            "v2-data",
            &[
                "create",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=512,compat=0.10",
                "v2-data",
                "64K",
            ],
            Some("write -P 0x11 0 4k"),
        ),
        (
            "zlib",
            &[
                "convert", "-c", "-O", "qcow2", "-o", opts, "src.raw", "zlib",
            ],
            None,
        ),
        (
            "zstd",
            &[
                "convert",
                "-c",
                "-O",
                "qcow2",
                "-o",
                "cluster_size=512,compression_type=zstd",
                "src.raw",
                "zstd",
            ],
            None,
        ),
        (
            "backing-name",
            &[
                "create",
                "-f",
                "qcow2",
                "-o",
                opts,
                "-b",
                "src.raw",
                "-F",
                "raw",
                "backing-name",
            ],
            None,
        ),
        (
            "zero-clusters",
            &["create", "-f", "qcow2", "-o", opts, "zero-clusters", "64K"],
            Some("write -z 0 8k"),
        ),
    ];
    for (name, args, io) in seeds {
        if !run("qemu-img", args) {
            eprintln!("qemu-img is not available: skipping the qcow2_open seed {name}");
            continue;
        }
        if let Some(cmd) = io {
            run("qemu-io", &["-f", "qcow2", "-c", cmd, name]);
        }
        let bytes = std::fs::read(tmp.join(name)).expect("reading a qcow2 seed");
        write(root, "qcow2_open", name, &bytes);
    }
    // A dirty image: lazy refcounts, killed before it wrote them back (the repair path of a
    // writable open).
    let name = "dirty-lazy";
    let opts = "cluster_size=512,lazy_refcounts=on";
    if run(
        "qemu-img",
        &["create", "-f", "qcow2", "-o", opts, name, "64K"],
    ) {
        let cmds = [
            "-c",
            "write -P 0x3c 0 6k",
            "-c",
            "flush",
            "-c",
            "sigraise 9",
        ];
        run("qemu-io", &[&["-f", "qcow2"][..], &cmds, &[name]].concat());
        let bytes = std::fs::read(tmp.join(name)).expect("reading a qcow2 seed");
        write(root, "qcow2_open", name, &bytes);
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// `net_tx` seeds: guest memory with a descriptor table at 0, the available ring at 0x1000
/// and buffers from 0x4000 (see the harness for the layout of the first four bytes).
fn net_seeds(root: &Path) {
    fn desc(mem: &mut [u8], i: usize, addr: u64, len: u32, flags: u16, next: u16) {
        let d = &mut mem[i * 16..i * 16 + 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
    }
    fn seed(setup: u8, chains: &[u16], build: impl FnOnce(&mut [u8])) -> Vec<u8> {
        let mut mem = vec![0u8; 0x6000];
        for (i, head) in chains.iter().enumerate() {
            mem[0x1004 + 2 * i..0x1006 + 2 * i].copy_from_slice(&head.to_le_bytes());
        }
        build(&mut mem);
        let mut v = vec![4, chains.len() as u8, 0, setup];
        v.extend(mem);
        v
    }
    let frame = |mem: &mut [u8], at: usize, hdr: [u8; 12], len: usize| {
        mem[at..at + 12].copy_from_slice(&hdr);
        mem[at + 12..at + 18].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        mem[at + 24..at + 26].copy_from_slice(&[0x08, 0x00]);
        let _ = len;
    };
    // A plain 60-byte frame, header and data in two descriptors.
    write(
        root,
        "net_tx",
        "plain",
        &seed(0, &[0], |m| {
            frame(m, 0x4000, [0; 12], 60);
            desc(m, 0, 0x4000, 12, 1, 1);
            desc(m, 1, 0x400c, 60, 0, 0);
        }),
    );
    // A TCPv4 segmentation request with checksum offload, all features acked.
    write(
        root,
        "net_tx",
        "tso4",
        &seed(0b11111100, &[0], |m| {
            frame(m, 0x4000, [1, 1, 54, 0, 0xa8, 5, 34, 0, 16, 0, 0, 0], 8000);
            desc(m, 0, 0x4000, 8012, 0, 0);
        }),
    );
    // Checksum offload that was not negotiated, and a header cut short.
    write(
        root,
        "net_tx",
        "bad-headers",
        &seed(0, &[0, 1], |m| {
            frame(m, 0x4000, [1, 0, 0, 0, 0, 0, 34, 0, 16, 0, 0, 0], 60);
            desc(m, 0, 0x4000, 72, 0, 0);
            desc(m, 1, 0x4000, 7, 0, 0);
        }),
    );
    // A descriptor loop and a buffer outside guest RAM.
    write(
        root,
        "net_tx",
        "loop-outside",
        &seed(2, &[0, 2], |m| {
            desc(m, 0, 0x4000, 12, 1, 1);
            desc(m, 1, 0x4000, 64, 1, 0);
            desc(m, 2, 0xffff_0000, 100, 0, 0);
        }),
    );
    // Control queue: promiscuous off, then a MAC table with a huge count.
    write(
        root,
        "net_tx",
        "ctrl",
        &seed(1, &[0, 2], |m| {
            m[0x4000..0x4003].copy_from_slice(&[0, 0, 0]);
            desc(m, 0, 0x4000, 3, 1, 1);
            desc(m, 1, 0x5000, 1, 2 | 1, 4);
            m[0x4100..0x4106].copy_from_slice(&[1, 0, 0xff, 0xff, 0xff, 0xff]);
            desc(m, 2, 0x4100, 6, 1, 3);
            desc(m, 3, 0x5001, 1, 2, 0);
            desc(m, 4, 0x5002, 1, 2, 0);
        }),
    );
}

/// One DER element.
fn der(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match body.len() {
        n if n < 0x80 => out.push(n as u8),
        n if n < 0x100 => out.extend_from_slice(&[0x81, n as u8]),
        n => out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(body);
    out
}

/// A certificate-shaped DER whose subject is `rdns` (each a list of (OID body, value tag,
/// value)); the signature is not a real one (the DN reader does not look at it).
/// One relative distinguished name: (OID body, value tag, value) for each attribute.
type Rdn<'a> = &'a [(&'a [u8], u8, &'a [u8])];

fn cert(rdns: &[Rdn]) -> Vec<u8> {
    let name: Vec<u8> = rdns
        .iter()
        .flat_map(|rdn| {
            let atvs: Vec<u8> = rdn
                .iter()
                .flat_map(|(oid, tag, v)| der(0x30, &[der(0x06, oid), der(*tag, v)].concat()))
                .collect();
            der(0x31, &atvs)
        })
        .collect();
    let alg = der(
        0x30,
        &der(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]),
    );
    let tbs = der(
        0x30,
        &[
            der(0xa0, &der(0x02, &[2])),
            der(0x02, &[1, 2, 3, 4]),
            alg.clone(),
            der(
                0x30,
                &der(
                    0x31,
                    &der(0x30, &[der(0x06, &[0x55, 4, 3]), der(0x0c, b"CA")].concat()),
                ),
            ),
            der(
                0x30,
                &[der(0x17, b"240101000000Z"), der(0x17, b"990101000000Z")].concat(),
            ),
            der(0x30, &name),
            der(0x30, &[alg.clone(), der(0x03, &[0, 4, 1, 2])].concat()),
        ]
        .concat(),
    );
    der(0x30, &[tbs, alg, der(0x03, &[0, 1, 2, 3])].concat())
}

fn dn_seeds(root: &Path) {
    const CN: &[u8] = &[0x55, 4, 3];
    const O: &[u8] = &[0x55, 4, 10];
    const C: &[u8] = &[0x55, 4, 6];
    const EMAIL: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01];
    const ODD: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x7f];
    write(
        root,
        "x509_dn",
        "c-o-cn",
        &cert(&[
            &[(C, 0x13, b"GB")],
            &[(O, 0x0c, b"Example Org")],
            &[(CN, 0x0c, b"admin")],
        ]),
    );
    write(
        root,
        "x509_dn",
        "escapes-multivalued",
        &cert(&[
            &[(O, 0x0c, b"Acme, Inc."), (CN, 0x0c, b"#ops+dev ")],
            &[(EMAIL, 0x16, b"a@b")],
        ]),
    );
    write(
        root,
        "x509_dn",
        "bmp-teletex-unknown",
        &cert(&[
            &[(CN, 0x1e, &[0, b'x', 0x00, 0xe9])],
            &[(O, 0x14, &[0xe9, b'a'])],
            &[(ODD, 0x04, &[1, 2, 3])],
        ]),
    );
    write(root, "x509_dn", "empty-subject", &cert(&[]));
}

fn main() {
    let root: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus"));
    boot_seeds(&root);
    text_seeds(&root);
    tcg_seeds(&root);
    qcow2_seeds(&root);
    net_seeds(&root);
    dn_seeds(&root);
    println!("seed corpus written under {}", root.display());
}
