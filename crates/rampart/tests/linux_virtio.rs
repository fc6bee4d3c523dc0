//! Linux-level tests of the PCI bus and virtio devices: Debian's kernel under rampart's
//! software CPU finds the devices through ACPI (MCFG, PNP0A08) and uses them with MSI-X.
//! Many checks share one boot: boots under the interpreter cost about a minute each.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(600);

fn guest_file(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../guest")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask guest` first (scripts/test does)",
        p.display()
    );
    p
}

/// Boots the guest with `modules` loaded and test `test`, plus `extra` arguments.
fn boot(test: &str, modules: &str, extra: &[&str]) -> Finished {
    let mut cmd = rampart();
    cmd.args(["-accel", "tcg", "-m", "512", "-nographic"])
        .arg("-kernel")
        .arg(guest_file("vmlinuz"))
        .arg("-initrd")
        .arg(guest_file("initrd.img"))
        .args([
            "-append",
            &format!(
                "console=ttyS0 cryptomgr.notests rampart.modules={modules} rampart.test={test}"
            ),
        ])
        .args(extra);
    run_to_end(cmd, LIMIT)
}

/// The lines of test `name` between the init's markers; the test must end with status 0.
fn test_output(r: &Finished, name: &str) -> String {
    let begin = format!("rampart-test: begin {name}");
    let end = format!("rampart-test: end {name} status=0");
    let start = r
        .stdout
        .find(&begin)
        .unwrap_or_else(|| panic!("no '{begin}' in the console output: {r:?}"));
    let rest = &r.stdout[start..];
    assert!(
        rest.contains(&end),
        "test {name} did not end with status 0: {r:?}"
    );
    rest.to_string()
}

#[test]
fn linux_finds_virtio_pci_devices_through_ecam_and_uses_msix() {
    // Act
    let r = boot("virtio", "virtio_rng", &["-device", "virtio-rng-pci"]);
    // Assert
    assert_eq!(r.code, Some(0), "{r:?}");
    let out = test_output(&r, "virtio");
    // PCI: ECAM from the MCFG table, reserved; the device in slot 1 with its 64-bit BAR.
    assert!(
        out.contains("MMCONFIG at [mem 0xe0000000-0xefffffff] reserved"),
        "{out}"
    );
    assert!(
        out.contains("pci 0000:00:00.0 0x8086 0x29c0 0x060000"),
        "{out}"
    );
    assert!(
        out.contains("pci 0000:00:01.0 0x1af4 0x1044 0x00ff00"),
        "{out}"
    );
    // MSI-X vectors (PCI-MSIX edge interrupts named after the queues).
    assert!(out.contains("virtio0-input"), "{out}");
    // virtio-rng: the kernel's hwrng is ours and gives random bytes.
    assert!(out.contains("hwrng_current=virtio_rng.0"), "{out}");
    assert!(out.contains("hwrng_bytes=4096"), "{out}");
    let distinct: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("hwrng_distinct="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        distinct > 20,
        "64 random bytes should not repeat much: {out}"
    );
}
