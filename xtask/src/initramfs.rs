//! Lays out the test guest's initramfs: busybox and its applet links, device nodes, `/init`, the
//! test scripts and the kernel modules with their load order, as a gzip-compressed cpio archive.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::cpio::CpioWriter;
use crate::modules::{render_load_order, ModuleSet};

/// Fixed modification time of every entry (2024-01-01T00:00:00Z): same inputs, same bytes.
pub const MTIME: u32 = 1_704_067_200;
/// Most test scripts accepted from `guest-init/tests/`.
const MAX_TESTS: usize = 256;
/// Largest script accepted (init or a test).
const MAX_SCRIPT_LEN: u64 = 1 << 20;
/// Most busybox applet links accepted.
const MAX_APPLETS: usize = 1024;

/// What goes into the initramfs.
pub struct Contents<'a> {
    /// The static busybox binary, packed as `/bin/busybox`.
    pub busybox: &'a [u8],
    /// Applet paths relative to `/` (`bin/sh`, `sbin/insmod`...), linked to `/bin/busybox`.
    /// Empty: /init installs the links itself at boot.
    pub applets: &'a [String],
    /// The `/init` script.
    pub init: &'a [u8],
    /// Test scripts, packed as `/tests/NAME`.
    pub tests: &'a [(String, Vec<u8>)],
    /// Kernel modules, packed as `/lib/modules/NAME.ko` plus `/lib/modules/load-order`.
    pub modules: &'a ModuleSet,
    /// Text packed as `/etc/rampart-guest` (package versions, for people reading a guest).
    pub versions: &'a str,
}

/// A test or applet name is a plain file name.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Parses `busybox --list-full` (lines such as `usr/bin/md5sum`), rejecting anything odd.
pub fn parse_applet_list(list: &str) -> Result<Vec<String>> {
    let mut applets = Vec::new();
    for line in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        // `linuxrc` (an old initrd convention) sits at the root; this guest has no use for it.
        if is_plain_name(line) {
            continue;
        }
        let ok = line
            .split('/')
            .all(|c| is_plain_name(c) || c == "[" || c == "[[")
            && matches!(
                line.rsplit_once('/').map(|(d, _)| d),
                Some("bin" | "sbin" | "usr/bin" | "usr/sbin")
            );
        if !ok {
            bail!("busybox --list-full printed an unexpected applet path {line:?}");
        }
        if line != "bin/busybox" {
            applets.push(line.to_owned());
        }
        if applets.len() > MAX_APPLETS {
            bail!("busybox lists more than {MAX_APPLETS} applets");
        }
    }
    Ok(applets)
}

/// `/init` and the test scripts, as read from `guest-init/`.
pub struct Scripts {
    pub init: Vec<u8>,
    /// `(name, body)`, sorted by name.
    pub tests: Vec<(String, Vec<u8>)>,
}

/// Reads `guest-init/init` and the scripts in `guest-init/tests/` (sorted by name).
pub fn read_scripts(dir: &Path) -> Result<Scripts> {
    let read_bounded = |p: &Path| -> Result<Vec<u8>> {
        let len = std::fs::metadata(p)
            .with_context(|| format!("reading {}", p.display()))?
            .len();
        if len > MAX_SCRIPT_LEN {
            bail!(
                "{} is {len} bytes; scripts are capped at {MAX_SCRIPT_LEN}",
                p.display()
            );
        }
        std::fs::read(p).with_context(|| format!("reading {}", p.display()))
    };
    let init = read_bounded(&dir.join("init"))?;
    let mut tests = Vec::new();
    let tests_dir = dir.join("tests");
    for entry in
        std::fs::read_dir(&tests_dir).with_context(|| format!("reading {}", tests_dir.display()))?
    {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.ends_with('~') || name.ends_with(".swp") {
            continue;
        }
        if !is_plain_name(&name) {
            bail!(
                "test script name {name:?} in {} is not a plain name",
                tests_dir.display()
            );
        }
        if tests.len() >= MAX_TESTS {
            bail!(
                "more than {MAX_TESTS} test scripts in {}",
                tests_dir.display()
            );
        }
        tests.push((name, read_bounded(&entry.path())?));
    }
    tests.sort();
    Ok(Scripts { init, tests })
}

/// Writes the uncompressed cpio archive.
pub fn build_cpio(c: &Contents<'_>) -> Result<Vec<u8>> {
    let mut w = CpioWriter::new(Vec::new(), MTIME);
    let mut dirs = BTreeSet::new();
    for d in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "etc",
        "root",
        "mnt",
        "lib",
        "lib/modules",
        "tests",
    ] {
        let perm = if d == "tmp" { 0o1777 } else { 0o755 };
        w.dir(d, perm)?;
        dirs.insert(d);
    }
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.char_dev("dev/null", 0o666, 1, 3)?;
    w.file("bin/busybox", 0o755, c.busybox)?;
    for applet in c.applets {
        let parent = applet.rsplit_once('/').map(|(d, _)| d).unwrap_or_default();
        if !dirs.contains(parent) {
            bail!("applet {applet:?} is outside bin, sbin, usr/bin and usr/sbin");
        }
        w.symlink(applet, "/bin/busybox")?;
    }
    w.file("init", 0o755, c.init)?;
    for (name, body) in c.tests {
        w.file(&format!("tests/{name}"), 0o755, body)?;
    }
    for m in &c.modules.modules {
        w.file(&format!("lib/modules/{}.ko", m.name), 0o644, &m.bytes)?;
    }
    w.file(
        "lib/modules/load-order",
        0o644,
        render_load_order(c.modules).as_bytes(),
    )?;
    w.file("etc/rampart-guest", 0o644, c.versions.as_bytes())?;
    Ok(w.finish()?)
}

/// Gzip-compresses an archive (header time zero, so the output is reproducible).
pub fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    enc.write_all(data).context("compressing the initramfs")?;
    enc.finish().context("compressing the initramfs")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::tests::parse;
    use crate::cpio::{S_IFCHR, S_IFLNK, S_IFREG};
    use crate::modules::Module;

    fn set() -> ModuleSet {
        ModuleSet {
            release: "6.1.0-57-amd64".into(),
            modules: vec![
                Module {
                    name: "virtio_ring".into(),
                    depends: vec![],
                    bytes: b"ring".to_vec(),
                },
                Module {
                    name: "virtio".into(),
                    depends: vec!["virtio_ring".into()],
                    bytes: b"virtio".to_vec(),
                },
            ],
            builtin: vec![],
        }
    }

    fn build() -> Vec<u8> {
        let modules = set();
        let applets = vec!["bin/sh".to_string(), "sbin/insmod".to_string()];
        let tests = vec![("hello".to_string(), b"echo hi\n".to_vec())];
        build_cpio(&Contents {
            busybox: b"\x7fELFbusybox",
            applets: &applets,
            init: b"#!/bin/busybox sh\n",
            tests: &tests,
            modules: &modules,
            versions: "busybox-static=1\n",
        })
        .unwrap()
    }

    #[test]
    fn packs_init_busybox_links_devices_tests_and_modules() {
        // Arrange / Act
        let entries = parse(&build()).unwrap();
        let get = |n: &str| {
            entries
                .iter()
                .find(|e| e.name == n)
                .unwrap_or_else(|| panic!("{n}"))
        };

        // Assert
        assert_eq!(get("init").mode, S_IFREG | 0o755);
        assert_eq!(get("bin/sh").mode, S_IFLNK | 0o777);
        assert_eq!(get("bin/sh").data, b"/bin/busybox");
        assert_eq!(get("sbin/insmod").data, b"/bin/busybox");
        assert_eq!(get("dev/console").mode, S_IFCHR | 0o600);
        assert_eq!(get("dev/console").rdev, (5, 1));
        assert_eq!(get("dev/null").rdev, (1, 3));
        assert_eq!(get("tests/hello").data, b"echo hi\n");
        assert_eq!(get("lib/modules/virtio.ko").data, b"virtio");
        let order = String::from_utf8(get("lib/modules/load-order").data.clone()).unwrap();
        assert!(
            order.ends_with("virtio_ring\nvirtio virtio_ring\n"),
            "{order}"
        );
    }

    #[test]
    fn compresses_to_gzip_that_decompresses_to_the_same_archive() {
        // Arrange
        let raw = build();

        // Act
        let gz = gzip(&raw).unwrap();

        // Assert
        assert_eq!(&gz[..2], b"\x1f\x8b");
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut back).unwrap();
        assert_eq!(back, raw);
        assert_eq!(gzip(&raw).unwrap(), gz, "reproducible");
    }

    #[test]
    fn parses_busybox_applet_list() {
        // Arrange
        let list = "usr/bin/[\nbin/sh\nlinuxrc\nsbin/insmod\nbin/busybox\nusr/sbin/arping\n";

        // Act
        let applets = parse_applet_list(list).unwrap();

        // Assert
        assert_eq!(
            applets,
            ["usr/bin/[", "bin/sh", "sbin/insmod", "usr/sbin/arping"]
        );
    }

    #[test]
    fn rejects_applet_path_outside_the_bin_directories() {
        for bad in ["etc/passwd", "bin/../etc/x", "/bin/sh", "bin/a b", "a b"] {
            assert!(parse_applet_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_test_names_with_slashes_or_spaces() {
        assert!(is_plain_name("cpus"));
        assert!(is_plain_name("virtio-blk_1"));
        assert!(!is_plain_name("a/b"));
        assert!(!is_plain_name("a b"));
        assert!(!is_plain_name(".."));
        assert!(!is_plain_name(""));
        assert!(!is_plain_name("["));
    }
}
