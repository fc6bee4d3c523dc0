//! End-to-end runs outside 64-bit mode, through the public API only: Linux's SMP trampoline
//! (real mode -> 32-bit protected mode -> long mode) from a startup IPI, and rampart's PVH test
//! guests (32-bit protected-mode entry, their own switch to long mode, COM1 output).

use rampart_tcg::{Cpu, Exit, FlatMemory, GuestMemory, SegReg, Segment};
use rampart_testguest::{layout, Program, HELLO_LINE};

/// The bytes of Linux 6.1's trampoline that an AP executes, by address, as listed in
/// `/work/shared/tcg/smp-trampoline.txt` (the QEMU trace of a real boot).
#[rustfmt::skip]
const TRAMPOLINE: &[(u64, &[u8])] = &[
    (0x99000, &[0xfa, 0x0f, 0x09, 0xea, 0x08, 0x10, 0x00, 0x98, 0x8c, 0xc8, 0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0, 0x66, 0xbc, 0x20, 0x60, 0x00, 0x00, 0xe8, 0x57, 0x00]),
    (0x99070, &[0x9c, 0x6a, 0x00, 0x9d, 0x66, 0x9c, 0x66, 0x58, 0x66, 0x89, 0xc3, 0x66, 0x35, 0x00, 0x00, 0x20, 0x00, 0x66, 0x50, 0x66, 0x9d, 0x66, 0x9c, 0x66, 0x58, 0x66, 0x39, 0xc3, 0x0f, 0x84, 0xfb, 0x00, 0x66, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x0f, 0xa2, 0x66, 0x83, 0xf8, 0x01, 0x0f, 0x82, 0xeb, 0x00, 0x31, 0xff, 0x66, 0x81, 0xfb, 0x41, 0x75, 0x74, 0x68, 0x75, 0x17, 0x66, 0x81, 0xfa, 0x65, 0x6e, 0x74, 0x69, 0x75, 0x0e, 0x66, 0x81, 0xf9, 0x63, 0x41, 0x4d, 0x44, 0x75, 0x05, 0xbf, 0x01, 0x00, 0xeb, 0x5a]),
    (0x9911c, &[0x66, 0xb8, 0x01, 0x00, 0x00, 0x00, 0x0f, 0xa2, 0x66, 0x81, 0xe2, 0x61, 0x81, 0x00, 0x07, 0x66, 0x81, 0xf2, 0x61, 0x81, 0x00, 0x07, 0x75, 0x57, 0x66, 0xb8, 0x00, 0x00, 0x00, 0x80, 0x0f, 0xa2, 0x66, 0x3d, 0x01, 0x00, 0x00, 0x80, 0x72, 0x47, 0x66, 0xb8, 0x01, 0x00, 0x00, 0x80, 0x0f, 0xa2, 0x66, 0x81, 0xe2, 0x00, 0x00, 0x00, 0x20, 0x66, 0x81, 0xf2, 0x00, 0x00, 0x00, 0x20, 0x75, 0x2f, 0x66, 0xb8, 0x01, 0x00, 0x00, 0x00, 0x0f, 0xa2, 0x66, 0x81, 0xe2, 0x00, 0x00, 0x00, 0x06, 0x66, 0x81, 0xfa, 0x00, 0x00, 0x00, 0x06, 0x74, 0x20]),
    (0x99194, &[0x9d, 0x66, 0x31, 0xc0, 0xc3]),
    (0x99019, &[0x66, 0x85, 0xc0, 0x75, 0x20, 0x66, 0x0f, 0x01, 0x1e, 0x60, 0x00, 0x66, 0x0f, 0x01, 0x16, 0x30, 0x00, 0xba, 0x18, 0x00, 0x66, 0xb8, 0x33, 0x00, 0x05, 0x00, 0x0f, 0x22, 0xc0, 0x66, 0xea, 0xf0, 0x9f, 0x09, 0x00, 0x08, 0x00]),
    (0x99ff0, &[0x8e, 0xd2, 0x81, 0xc4, 0x00, 0x80, 0x09, 0x00, 0x8e, 0xda, 0x8e, 0xc2, 0x8e, 0xe2, 0x8e, 0xea, 0x0f, 0xba, 0x25, 0x14, 0xd0, 0x09, 0x00, 0x00, 0x73, 0x0f]),
    (0x9a019, &[0xa1, 0x10, 0xd0, 0x09, 0x00, 0x0f, 0x22, 0xe0, 0xb8, 0x00, 0xc0, 0x09, 0x00, 0x0f, 0x22, 0xd8, 0xb9, 0x80, 0x00, 0x00, 0xc0, 0x0f, 0x32, 0x3b, 0x05, 0x08, 0xd0, 0x09, 0x00, 0x75, 0x08]),
    (0x9a040, &[0xa1, 0x08, 0xd0, 0x09, 0x00, 0x8b, 0x15, 0x0c, 0xd0, 0x09, 0x00, 0x0f, 0x30, 0xb8, 0x33, 0x00, 0x05, 0x80, 0x0f, 0x22, 0xc0, 0xea, 0xd0, 0xa0, 0x09, 0x00, 0x10, 0x00]),
    (0x9a0d0, &[0xff, 0x25, 0x2a, 0x2f, 0x00, 0x00]),
];

/// Where the trampoline's final `jmpq *tr_start(%rip)` lands in this test.
const LONG_MODE_TARGET: u64 = 0x9e000;

fn u64_le(mem: &mut FlatMemory, gpa: u64, v: u64) {
    mem.write(gpa, &v.to_le_bytes()).unwrap();
}

/// The trampoline with the data Linux lays out next to it: `tr_gdt` at 0x98030 (its first 8
/// bytes are the GDTR image; 0x08 32-bit code, 0x10 64-bit code, 0x18 data), the empty IDTR
/// at 0x98060, `trampoline_header` at 0x9d000 (start, EFER, CR4, flags) and page tables at
/// CR3 = 0x9c000 identity-mapping the first 2 MiB.
fn trampoline_machine() -> FlatMemory {
    let mut mem = FlatMemory::new(2 << 20);
    for (gpa, bytes) in TRAMPOLINE {
        mem.load(*gpa, bytes).unwrap();
    }
    mem.load(0x98030, &[0x1f, 0x00, 0x30, 0x80, 0x09, 0x00, 0, 0])
        .unwrap();
    u64_le(&mut mem, 0x98038, 0x00cf_9b00_0000_ffff);
    u64_le(&mut mem, 0x98040, 0x00af_9b00_0000_ffff);
    u64_le(&mut mem, 0x98048, 0x00cf_9300_0000_ffff);
    mem.load(0x98060, &[0; 6]).unwrap();
    u64_le(&mut mem, 0x9d000, LONG_MODE_TARGET);
    u64_le(&mut mem, 0x9d008, 0x900); // EFER: LME | NXE
    mem.load(0x9d010, &0xa0u32.to_le_bytes()).unwrap(); // CR4: PAE | PGE
    mem.load(0x9d014, &0u32.to_le_bytes()).unwrap(); // tr_flags
    u64_le(&mut mem, 0x9c000, 0xa0003);
    u64_le(&mut mem, 0xa0000, 0xa1003);
    u64_le(&mut mem, 0xa1000, 0x83);
    // 64-bit code at the target: mov eax, 0x600d; hlt.
    mem.load(LONG_MODE_TARGET, &[0xb8, 0x0d, 0x60, 0x00, 0x00, 0xf4])
        .unwrap();
    mem
}

#[test]
fn linux_smp_trampoline_runs_from_sipi_into_64_bit_mode() {
    let mut mem = trampoline_machine();
    let mut cpu = Cpu::new();
    cpu.reset();
    cpu.start_at_sipi(0x99);

    let exit = cpu.run(&mut mem, 10_000);

    assert_eq!(exit, Exit::Halt, "{cpu:?}");
    assert!(cpu.in_64bit_mode());
    assert_eq!(cpu.rip, LONG_MODE_TARGET + 6);
    assert_eq!(cpu.gpr[0], 0x600d);
    assert_eq!(cpu.seg[SegReg::Cs as usize].selector, 0x10);
    assert_eq!(cpu.seg[SegReg::Ss as usize].selector, 0x18);
    assert_eq!(cpu.gpr[4], 0x9e020, "callw/retw balanced, ESP rebased");
    assert_eq!(cpu.efer & 0xd00, 0xd00, "LME, LMA and NXE");
    assert_eq!(cpu.cr3, 0x9c000);
}

#[test]
fn trampoline_without_long_mode_cpuid_takes_the_no_longmode_path() {
    // A CPU that does not report LM makes verify_cpu fail: the trampoline branches to its
    // error path at 0x9918b (IP 0x118b), outside the traced bytes: a HLT here.
    let mut mem = trampoline_machine();
    mem.load(0x9918b, &[0xf4]).unwrap();
    let mut cpu = Cpu::new();
    cpu.cpuid = Box::new(|leaf, sub| {
        let mut r = rampart_tcg::baseline_cpuid(leaf, sub);
        if leaf == 0x8000_0001 {
            r[3] &= !(1 << 29);
        }
        r
    });
    cpu.start_at_sipi(0x99);

    let exit = cpu.run(&mut mem, 1_000);

    assert_eq!(exit, Exit::Halt);
    assert!(cpu.in_real_mode());
    assert_eq!(cpu.rip, 0x118c);
    assert_eq!(cpu.seg[SegReg::Cs as usize].base, 0x98000);
}

/// Load a PVH ELF's PT_LOAD segments into memory (bounds-checked: these are our own images,
/// but a test should not panic on a malformed one either: it fails).
fn load_elf(mem: &mut FlatMemory, elf: &[u8]) {
    let rd = |off: usize, n: usize| -> u64 {
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(elf.get(off..off + n).expect("ELF field in bounds"));
        u64::from_le_bytes(b)
    };
    assert_eq!(&elf[..4], b"\x7fELF");
    let phoff = rd(32, 8) as usize;
    let phnum = rd(56, 2) as usize;
    for i in 0..phnum {
        let ph = phoff + i * 56;
        if rd(ph, 4) != 1 {
            continue;
        }
        let (off, paddr, filesz, memsz) = (
            rd(ph + 8, 8) as usize,
            rd(ph + 24, 8),
            rd(ph + 32, 8) as usize,
            rd(ph + 40, 8) as usize,
        );
        let data = elf.get(off..off + filesz).expect("segment in file");
        mem.load(paddr, data).unwrap();
        mem.load(paddr + filesz as u64, &vec![0u8; memsz - filesz])
            .unwrap();
    }
}

/// Boot a test guest the PVH way (32-bit flat protected mode, paging off, EBX = start info)
/// and collect what it writes to COM1 until it resets the machine.
fn run_pvh_guest(program: Program) -> String {
    let elf = rampart_testguest::build(program).unwrap();
    let mut mem = FlatMemory::new(16 << 20);
    load_elf(&mut mem, &elf);
    let mut cpu = Cpu::new();
    let flat = |selector: u16, access: u16| Segment {
        selector,
        base: 0,
        limit: u32::MAX,
        attr: access | (1 << 14) | (1 << 15),
    };
    cpu.cr0 = 0x11; // PE | ET
    cpu.seg = [flat(0x18, 0x93); 6];
    cpu.seg[SegReg::Cs as usize] = flat(0x10, 0x9b);
    cpu.tr = Segment {
        selector: 0x20,
        base: 0,
        limit: 0x67,
        attr: 0x8b,
    };
    cpu.rip = layout::STUB32_ADDR;
    cpu.gpr[3] = 0x6000; // EBX: hvm_start_info (unused by these guests)
    let mut out = Vec::new();
    for _ in 0..100_000 {
        match cpu.run(&mut mem, 1_000_000) {
            Exit::IoOut {
                port: 0x3f8, value, ..
            } => out.push(value as u8),
            Exit::IoOut {
                port: 0x64,
                value: 0xfe,
                ..
            }
            | Exit::Shutdown => break,
            Exit::IoOut { .. } => {}
            Exit::IoIn { port, .. } => {
                // COM1 LSR: transmitter empty; everything else reads as all ones.
                cpu.complete_io_in(if port == 0x3fd { 0x60 } else { 0xff });
            }
            other => panic!("unexpected exit {other:?} at {cpu:?}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn pvh_hello_guest_prints_its_line() {
    let out = run_pvh_guest(Program::Hello);

    assert!(out.contains(HELLO_LINE), "serial output: {out:?}");
}

#[test]
fn pvh_count_guest_prints_ten_ticks() {
    let out = run_pvh_guest(Program::Count);

    for n in 0..=9 {
        let line = format!("{}tick {n}\n", rampart_testguest::LINE_PREFIX);
        assert!(out.contains(&line), "missing {line:?} in {out:?}");
    }
}
