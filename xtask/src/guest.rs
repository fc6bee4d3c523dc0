//! `cargo xtask guest`: fetches Debian's kernel and busybox with apt and builds the test guest
//! (`vmlinuz`, `initrd.img`, `versions.txt`) into an output directory, skipping all work when the
//! recorded versions still match.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::apt::{self, Pinned};
use crate::initramfs::{self, Contents};
use crate::modules::{self, ROOTS};

/// Bump when the layout of the guest changes in a way its inputs do not show.
const BUILDER_VERSION: u32 = 1;
/// Largest kernel image accepted.
const MAX_KERNEL_LEN: u64 = 128 << 20;
/// Largest busybox binary accepted.
const MAX_BUSYBOX_LEN: u64 = 32 << 20;

/// Options of `cargo xtask guest`.
#[derive(Debug, Clone)]
pub struct GuestArgs {
    /// Where `vmlinuz`, `initrd.img` and `versions.txt` go.
    pub out: PathBuf,
    /// Refetch and rebuild even when the recorded versions match.
    pub force: bool,
    /// Run `apt-get update` first.
    pub update: bool,
    /// Also write `initrd-netbench.img` (the initramfs with iperf3, for `bench/net`).
    pub netbench: bool,
    /// The folder with `init` and `tests/`.
    pub scripts: PathBuf,
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("rampart-guest-{}-{nanos:08x}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(dir = %self.0.display(), error = %e, "could not remove temporary directory");
        }
    }
}

/// FNV-1a, 64-bit: a stable fingerprint of the guest's local inputs.
fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Fingerprint of everything local that shapes the initramfs.
pub fn recipe(init: &[u8], tests: &[(String, Vec<u8>)]) -> String {
    let mut h = 0xcbf2_9ce4_8422_2325;
    h = fnv1a(h, &BUILDER_VERSION.to_le_bytes());
    for r in ROOTS {
        h = fnv1a(h, r.as_bytes());
        h = fnv1a(h, b"\0");
    }
    h = fnv1a(h, &(init.len() as u64).to_le_bytes());
    h = fnv1a(h, init);
    for (name, body) in tests {
        h = fnv1a(h, name.as_bytes());
        h = fnv1a(h, &(body.len() as u64).to_le_bytes());
        h = fnv1a(h, body);
    }
    format!("{h:016x}")
}

/// Parses `versions.txt` (`key=value` lines; `#` comments).
pub fn parse_versions(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// True when `recorded` has every key of `wanted` with the same value.
pub fn matches(recorded: &BTreeMap<String, String>, wanted: &[(&str, &str)]) -> bool {
    wanted
        .iter()
        .all(|(k, v)| recorded.get(*k).map(String::as_str) == Some(*v))
}

fn read_recorded(out: &Path) -> Option<BTreeMap<String, String>> {
    let all_there = ["vmlinuz", "initrd.img"]
        .iter()
        .all(|f| out.join(f).is_file());
    let text = std::fs::read_to_string(out.join("versions.txt")).ok()?;
    all_there.then(|| parse_versions(&text))
}

/// A Linux x86 boot image carries "HdrS" at offset 0x202 (the boot protocol's setup header).
pub fn check_bzimage(kernel: &[u8]) -> Result<()> {
    if kernel.get(0x202..0x206) != Some(b"HdrS".as_slice()) {
        bail!("the kernel image has no x86 boot protocol header (\"HdrS\" at 0x202)");
    }
    Ok(())
}

/// Reads a file no larger than `max` bytes.
fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("{} is missing", path.display()))?
        .len();
    if len > max {
        bail!(
            "{} is {len} bytes, more than the {max} accepted",
            path.display()
        );
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Writes `data` to `path` through a temporary file and a rename, so readers never see half.
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// The applets this busybox provides, asked of the binary itself; empty when it cannot run here
/// (then /init installs the links at boot).
fn applets(busybox: &Path) -> Result<Vec<String>> {
    match Command::new(busybox).arg("--list-full").output() {
        Ok(out) if out.status.success() => {
            initramfs::parse_applet_list(&String::from_utf8_lossy(&out.stdout))
        }
        Ok(out) => {
            tracing::warn!(status = %out.status, "busybox --list-full failed; /init will install applet links at boot");
            Ok(Vec::new())
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot run busybox here; /init will install applet links at boot");
            Ok(Vec::new())
        }
    }
}

/// Downloads one pinned package and unpacks it into `dir/<name>`.
fn fetch(tmp: &Path, pkg: &Pinned) -> Result<PathBuf> {
    tracing::info!(package = %pkg.name, version = %pkg.version, "apt-get download");
    let deb = apt::download(tmp, pkg)?;
    let got = apt::deb_version(&deb)?;
    if got != pkg.version {
        bail!(
            "{} is version {got}, expected {}",
            deb.display(),
            pkg.version
        );
    }
    let dest = tmp.join(&pkg.name);
    std::fs::create_dir(&dest).with_context(|| format!("creating {}", dest.display()))?;
    apt::extract(&deb, &dest)?;
    Ok(dest)
}

/// `cargo xtask guest` (and, with `--netbench`, the benchmark's initramfs after it).
pub fn run(args: &GuestArgs) -> Result<()> {
    build_guest(args)?;
    if args.netbench {
        let tmp = TempDir::new()?;
        crate::netbench::build(&args.out, &tmp.0)?;
    }
    Ok(())
}

fn build_guest(args: &GuestArgs) -> Result<()> {
    let initramfs::Scripts { init, tests } = initramfs::read_scripts(&args.scripts)?;
    let recipe = recipe(&init, &tests);
    if args.update {
        apt::update()?;
    }
    let recorded = read_recorded(&args.out);

    let (meta, busybox) = match apt::candidates() {
        Ok(c) => c,
        Err(e) => match &recorded {
            Some(r) if !args.force && matches(r, &[("recipe", &recipe)]) => {
                tracing::warn!(error = %e, "apt cannot say what is current; keeping the guest already in {}", args.out.display());
                return Ok(());
            }
            _ => return Err(e),
        },
    };
    let wanted = [
        (apt::KERNEL_META, meta.version.as_str()),
        (apt::BUSYBOX, busybox.version.as_str()),
        ("recipe", recipe.as_str()),
    ];
    if !args.force && recorded.as_ref().is_some_and(|r| matches(r, &wanted)) {
        println!(
            "guest in {} is up to date ({} {}, busybox-static {})",
            args.out.display(),
            apt::KERNEL_META,
            meta.version,
            busybox.version
        );
        return Ok(());
    }

    let kernel_pkg = apt::kernel_package(&meta)?;
    let tmp = TempDir::new()?;
    let kernel_root = fetch(&tmp.0, &kernel_pkg)?;
    let busybox_root = fetch(&tmp.0, &busybox)?;

    let set = modules::collect(&kernel_root, ROOTS)?;
    let kernel = read_capped(
        &kernel_root.join(format!("boot/vmlinuz-{}", set.release)),
        MAX_KERNEL_LEN,
    )?;
    check_bzimage(&kernel)
        .with_context(|| format!("{} {}", kernel_pkg.name, kernel_pkg.version))?;
    let busybox_bin = busybox_root.join("bin/busybox");
    let busybox_bytes = read_capped(&busybox_bin, MAX_BUSYBOX_LEN)?;
    let applets = applets(&busybox_bin)?;

    let names: Vec<&str> = set.modules.iter().map(|m| m.name.as_str()).collect();
    let versions = format!(
        "# written by `cargo xtask guest`; it rebuilds the guest when a line below changes\n\
         {}={}\nkernel-package={}\nkernel-version={}\nkernel-release={}\n{}={}\n\
         modules={}\nbuiltin={}\nrecipe={recipe}\n",
        apt::KERNEL_META,
        meta.version,
        kernel_pkg.name,
        kernel_pkg.version,
        set.release,
        apt::BUSYBOX,
        busybox.version,
        names.join(","),
        set.builtin.join(","),
    );
    let cpio = initramfs::build_cpio(&Contents {
        busybox: &busybox_bytes,
        applets: &applets,
        init: &init,
        tests: &tests,
        modules: &set,
        versions: &versions,
    })?;
    let initrd = initramfs::gzip(&cpio)?;

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    // versions.txt goes first out and last in, so an interrupted build never looks current.
    let versions_path = args.out.join("versions.txt");
    if versions_path.exists() {
        std::fs::remove_file(&versions_path)
            .with_context(|| format!("removing {}", versions_path.display()))?;
    }
    write_atomic(&args.out.join("vmlinuz"), &kernel)?;
    write_atomic(&args.out.join("initrd.img"), &initrd)?;
    write_atomic(&versions_path, versions.as_bytes())?;

    println!(
        "guest written to {}:\n  kernel  {} {} (release {}, {} bytes)\n  busybox {} {} ({} applet links)\n  \
         modules {}\n  initrd  {} bytes ({} uncompressed), {} tests",
        args.out.display(),
        kernel_pkg.name,
        kernel_pkg.version,
        set.release,
        kernel.len(),
        apt::BUSYBOX,
        busybox.version,
        applets.len(),
        names.join(" "),
        initrd.len(),
        cpio.len(),
        tests.len(),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_changes_when_a_test_script_changes() {
        // Arrange
        let a = vec![("hello".to_string(), b"echo hi\n".to_vec())];
        let b = vec![("hello".to_string(), b"echo ho\n".to_vec())];

        // Act / Assert
        assert_eq!(recipe(b"init", &a), recipe(b"init", &a));
        assert_ne!(recipe(b"init", &a), recipe(b"init", &b));
        assert_ne!(recipe(b"init", &a), recipe(b"init2", &a));
    }

    #[test]
    fn recorded_versions_match_only_when_every_wanted_key_agrees() {
        // Arrange
        let recorded =
            parse_versions("# c\nlinux-image-amd64=6.1.192-3\nbusybox-static=1:1.35\nrecipe=ab\n");

        // Act / Assert
        assert!(matches(
            &recorded,
            &[("linux-image-amd64", "6.1.192-3"), ("recipe", "ab")]
        ));
        assert!(!matches(&recorded, &[("linux-image-amd64", "6.1.200-1")]));
        assert!(!matches(&recorded, &[("missing", "x")]));
    }

    #[test]
    fn accepts_only_images_with_the_boot_protocol_header() {
        // Arrange
        let mut image = vec![0u8; 0x300];
        image[0x202..0x206].copy_from_slice(b"HdrS");

        // Act / Assert
        assert!(check_bzimage(&image).is_ok());
        assert!(check_bzimage(&[0u8; 0x300]).is_err());
        assert!(check_bzimage(b"short").is_err());
    }

    #[test]
    fn refuses_oversized_file() {
        // Arrange
        let tmp = TempDir::new().unwrap();
        let path = tmp.0.join("big");
        std::fs::write(&path, [0u8; 16]).unwrap();

        // Act
        let err = read_capped(&path, 8).unwrap_err();

        // Assert
        assert!(err.to_string().contains("16 bytes"), "{err}");
    }
}
