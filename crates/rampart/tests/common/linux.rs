//! The Debian test guest (`cargo xtask guest`): its files, and reading its test scripts'
//! results from the serial console.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{rampart, Finished};

/// The kernel command line every Linux-level test starts from. `cryptomgr.notests` skips the
/// kernel's crypto self-tests: pure computation that tests nothing of the machine and, under
/// the software CPU, takes about as long as the rest of the boot.
pub const CMDLINE: &str = "console=ttyS0 cryptomgr.notests";

/// A file of the test guest (`vmlinuz`, `initrd.img`).
pub fn guest_file(name: &str) -> PathBuf {
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

/// The lines of test `name` between the guest init's markers; the test must end with
/// status 0.
pub fn test_output(r: &Finished, name: &str) -> String {
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

/// The value of `key=` on its own line of `out`.
pub fn value<'a>(out: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    out.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key}= in the guest output:\n{out}"))
}

/// The SHA-256 of a host file, as `sha256sum` prints it (the guest runs busybox's).
pub fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum");
    assert!(
        out.status.success(),
        "sha256sum {}: {out:?}",
        path.display()
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// `text` repeated to exactly `len` bytes.
pub fn repeat(text: &str, len: usize) -> Vec<u8> {
    text.bytes().cycle().take(len).collect()
}

/// A rampart command booting the test guest under tcg with 512 MiB, `modules` loaded by its
/// init and guest test script `test`.
pub fn guest_cmd(test: &str, modules: &str) -> Command {
    let mut cmd = rampart();
    cmd.args(["-accel", "tcg", "-m", "512", "-nographic"])
        .arg("-kernel")
        .arg(guest_file("vmlinuz"))
        .arg("-initrd")
        .arg(guest_file("initrd.img"))
        .args([
            "-append",
            &format!("{CMDLINE} rampart.modules={modules} rampart.test={test}"),
        ]);
    cmd
}
