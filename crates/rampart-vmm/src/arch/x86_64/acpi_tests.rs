//! Tests of the ACPI tables: written into guest memory, then parsed back as a guest would.

use super::*;
use crate::arch::x86_64::layout::{ram_regions, MIB};
use crate::arch::x86_64::topology::smp;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&ram_regions(64 * MIB)).unwrap()
}

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

/// Reads a whole SDT at `addr`, checking its checksum; returns (signature, bytes).
fn read_table(mem: &GuestMemoryMmap, addr: u64) -> ([u8; 4], Vec<u8>) {
    let header = read(mem, addr, 36);
    let len = u32_at(&header, 4) as usize;
    assert!(len >= 36);
    let table = read(mem, addr, len);
    assert_eq!(sum(&table), 0, "checksum of {:?}", &table[..4]);
    (table[..4].try_into().unwrap(), table)
}

/// Everything the guest finds from the RSDP: (FADT, MADT, DSDT).
fn walk(mem: &GuestMemoryMmap, rsdp: GuestAddress) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let r = read(mem, rsdp.0, 36);
    assert_eq!(&r[..8], b"RSD PTR ");
    assert_eq!(sum(&r[..20]), 0, "RSDP v1 checksum");
    assert_eq!(sum(&r), 0, "RSDP extended checksum");
    assert_eq!(r[15], 2, "revision");
    let (sig, xsdt) = read_table(mem, u64_at(&r, 24));
    assert_eq!(&sig, b"XSDT");
    let mut fadt = None;
    let mut madt = None;
    for i in 0..(xsdt.len() - 36) / 8 {
        let (sig, t) = read_table(mem, u64_at(&xsdt, 36 + 8 * i));
        match &sig {
            b"FACP" => fadt = Some(t),
            b"APIC" => madt = Some(t),
            b"MCFG" => assert_eq!(sum(&t), 0, "MCFG checksum"),
            other => panic!("unexpected table {other:?}"),
        }
    }
    let fadt = fadt.expect("XSDT points at the FADT");
    let (sig, dsdt) = read_table(mem, u64_at(&fadt, 140));
    assert_eq!(&sig, b"DSDT");
    (fadt, madt.expect("XSDT points at the MADT"), dsdt)
}

/// MADT structures as (type, bytes).
fn madt_entries(madt: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pos = 44;
    while pos < madt.len() {
        let len = madt[pos + 1] as usize;
        assert!(
            len >= 2 && pos + len <= madt.len(),
            "bad MADT entry at {pos}"
        );
        out.push((madt[pos], madt[pos..pos + len].to_vec()));
        pos += len;
    }
    out
}

#[test]
fn rsdp_is_in_bios_scan_range_and_checksums_hold() {
    // Arrange
    let mem = mem();
    // Act
    let rsdp = create_acpi_tables(&mem, &smp(1, 1, 1)).unwrap();
    // Assert
    assert!((0xe0000..0x100000).contains(&rsdp.0) && rsdp.0.is_multiple_of(16));
    walk(&mem, rsdp);
}

#[test]
fn fadt_is_hardware_reduced_with_pm_port_registers() {
    let mem = mem();
    let rsdp = create_acpi_tables(&mem, &smp(1, 1, 1)).unwrap();
    let (fadt, _, _) = walk(&mem, rsdp);
    assert_eq!(fadt.len(), 276);
    assert_eq!(fadt[8], 6, "FADT major revision");
    let flags = u32_at(&fadt, 112);
    assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
    assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
    let io_port_gas = [1u8, 8, 0, 1, 0x00, 0x06, 0, 0, 0, 0, 0, 0];
    assert_eq!(&fadt[116..128], &io_port_gas, "RESET_REG");
    assert_eq!(fadt[128], 0x01, "RESET_VALUE");
    assert_eq!(&fadt[244..256], &io_port_gas, "SLEEP_CONTROL_REG");
    assert_eq!(&fadt[256..268], &io_port_gas, "SLEEP_STATUS_REG");
    assert_ne!(u16_at(&fadt, 109) & IAPC_VGA_NOT_PRESENT, 0);
}

fn check_madt(s: &SmpConfig) {
    // Arrange
    let mem = mem();
    // Act
    let rsdp = create_acpi_tables(&mem, s).unwrap();
    // Assert
    let (_, madt, _) = walk(&mem, rsdp);
    assert_eq!(u32_at(&madt, 36), 0xfee0_0000);
    assert_eq!(u32_at(&madt, 40) & 1, 0, "no PCAT_COMPAT");
    let entries = madt_entries(&madt);
    let lapic_ids: Vec<u32> = entries
        .iter()
        .filter_map(|(t, e)| match *t {
            MADT_LOCAL_APIC => {
                assert_eq!(u32_at(e, 4) & 1, 1, "enabled");
                Some(u32::from(e[3]))
            }
            MADT_LOCAL_X2APIC => Some(u32_at(e, 4)),
            _ => None,
        })
        .collect();
    let expected: Vec<u32> = (0..s.cpus).map(|i| apic_id(i, s)).collect();
    assert_eq!(lapic_ids, expected);
    let ioapic: Vec<_> = entries.iter().filter(|(t, _)| *t == MADT_IO_APIC).collect();
    assert_eq!(ioapic.len(), 1);
    let io = &ioapic[0].1;
    assert_eq!(u32_at(io, 4), 0xfec0_0000);
    assert_eq!(u32_at(io, 8), 0, "GSI base");
    assert!(
        !expected.contains(&u32::from(io[2])),
        "I/O APIC ID after the CPUs"
    );
    let overrides: Vec<(u8, u32, u16)> = entries
        .iter()
        .filter(|(t, _)| *t == MADT_INTERRUPT_OVERRIDE)
        .map(|(_, e)| (e[3], u32_at(e, 4), u16_at(e, 8)))
        .collect();
    assert_eq!(
        overrides,
        vec![(0, 2, INTI_HIGH_EDGE), (9, 9, INTI_HIGH_LEVEL)]
    );
    assert!(entries.iter().any(|(t, _)| *t == MADT_LOCAL_APIC_NMI));
}

#[test]
fn madt_lists_one_cpu() {
    check_madt(&smp(1, 1, 1));
}

#[test]
fn madt_lists_four_sockets() {
    check_madt(&smp(4, 1, 1));
}

#[test]
fn madt_lists_2s_2c_2t_with_topology_ids() {
    check_madt(&smp(2, 2, 2));
}

#[test]
fn madt_lists_only_present_cpus() {
    let mut s = smp(1, 3, 2);
    s.cpus = 4;
    check_madt(&s);
}

#[test]
fn madt_uses_x2apic_entries_for_ids_above_254() {
    // 2 sockets x 200 cores: socket 1 starts at APIC ID 256.
    let s = SmpConfig {
        cpus: 202,
        sockets: 2,
        cores: 200,
        threads: 1,
        maxcpus: 400,
    };
    check_madt(&s);
    let madt = build_madt(&s).unwrap();
    assert!(madt_entries(&madt)
        .iter()
        .any(|(t, _)| *t == MADT_LOCAL_X2APIC));
}

#[test]
fn dsdt_has_s5_com1_and_power_button() {
    let dsdt = build_dsdt((1 << 32, 1 << 36));
    assert_eq!(sum(&dsdt), 0);
    assert_eq!(u32_at(&dsdt, 4) as usize, dsdt.len());
    let has = |needle: &[u8]| dsdt.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"_S5_"));
    assert!(has(b"COM1") && has(b"PWRB") && has(b"_SB_"));
    // PNP0501 and PNP0C0C as EISA IDs.
    assert!(has(&[0x41, 0xd0, 0x05, 0x01]));
    assert!(has(&[0x41, 0xd0, 0x0c, 0x0c]));
    // IO port descriptor for 0x3f8..0x3f8, 8 ports.
    assert!(has(&[0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08]));
}

#[test]
fn rejects_zero_cpus() {
    let mut s = smp(1, 1, 1);
    s.cpus = 0;
    assert!(matches!(
        create_acpi_tables(&mem(), &s),
        Err(AcpiError::NoCpu)
    ));
}

#[test]
fn rejects_tables_outside_guest_ram() {
    let tiny = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    let err = create_acpi_tables(&tiny, &smp(1, 1, 1)).unwrap_err();
    assert!(
        matches!(err, AcpiError::Write { table: "DSDT", .. }),
        "{err}"
    );
}

/// Development aid: writes the tables to `$RAMPART_ACPI_DUMP/{dsdt,facp,apic}.dat` (default
/// `$TMPDIR/rampart-acpi`) for `iasl -d`. Run with
/// `cargo test -p rampart-vmm -- --ignored dump_tables --nocapture`.
#[test]
#[ignore = "development aid: writes files for iasl -d"]
fn dump_tables_for_iasl() {
    let dir = std::env::var("RAMPART_ACPI_DUMP").unwrap_or_else(|_| {
        std::env::temp_dir()
            .join("rampart-acpi")
            .to_string_lossy()
            .into_owned()
    });
    std::fs::create_dir_all(&dir).unwrap();
    let s = smp(2, 2, 2);
    std::fs::write(format!("{dir}/dsdt.dat"), build_dsdt((1 << 32, 1 << 36))).unwrap();
    std::fs::write(format!("{dir}/facp.dat"), build_fadt(0xe0040)).unwrap();
    std::fs::write(format!("{dir}/apic.dat"), build_madt(&s).unwrap()).unwrap();
    eprintln!("ACPI tables written to {dir}: run `iasl -d {dir}/*.dat`");
}
