//! `cargo xtask guest --netbench`: the network benchmark's initramfs. Debian's iperf3 is
//! dynamically linked, so it comes with the libraries it loads (from the same apt packages),
//! packed as a second gzip-compressed cpio archive appended to the test guest's `initrd.img`
//! (Linux unpacks concatenated archives in order): `DIR/initrd-netbench.img`. The test
//! initramfs stays small.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::apt::{self, Pinned};
use crate::cpio::CpioWriter;
use crate::initramfs::{self, MTIME};

/// The packages iperf3 needs at run time on bookworm (iperf3 → libiperf0 → libc6, libsctp1,
/// libssl3 for libcrypto).
pub const PACKAGES: &[&str] = &["iperf3", "libiperf0", "libsctp1", "libssl3", "libc6"];
/// The shared objects iperf3 loads (its `ldd`), packed in /lib/x86_64-linux-gnu.
pub const LIBRARIES: &[&str] = &[
    "libiperf.so.0",
    "libc.so.6",
    "libm.so.6",
    "libcrypto.so.3",
    "libsctp.so.1",
    "ld-linux-x86-64.so.2",
];
/// Largest file accepted from the packages.
const MAX_FILE: u64 = 16 << 20;
const LIBDIRS: &[&str] = &["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"];

/// Finds `name` in the unpacked package roots and reads it (following symbolic links inside
/// the root only).
fn find(roots: &[PathBuf], dirs: &[&str], name: &str) -> Result<Vec<u8>> {
    for root in roots {
        for dir in dirs {
            let mut path = root.join(dir).join(name);
            for _ in 0..8 {
                let Ok(meta) = std::fs::symlink_metadata(&path) else {
                    break;
                };
                if meta.file_type().is_symlink() {
                    let target = std::fs::read_link(&path)?;
                    path = if target.is_absolute() {
                        root.join(target.strip_prefix("/").unwrap_or(&target))
                    } else {
                        path.parent().unwrap_or(root).join(target)
                    };
                    continue;
                }
                if meta.len() > MAX_FILE {
                    bail!(
                        "{} is {} bytes, more than {MAX_FILE}",
                        path.display(),
                        meta.len()
                    );
                }
                return std::fs::read(&path).with_context(|| format!("reading {}", path.display()));
            }
        }
    }
    bail!("{name} is in none of the packages {PACKAGES:?}")
}

/// The appended archive: iperf3, its libraries, the dynamic loader where the ELF names it.
pub fn payload(roots: &[PathBuf]) -> Result<Vec<u8>> {
    let mut w = CpioWriter::new(Vec::new(), MTIME);
    for d in ["usr", "usr/bin", "lib", "lib/x86_64-linux-gnu", "lib64"] {
        w.dir(d, 0o755)?;
    }
    w.file(
        "usr/bin/iperf3",
        0o755,
        &find(roots, &["usr/bin"], "iperf3")?,
    )?;
    for lib in LIBRARIES {
        let bytes = find(roots, LIBDIRS, lib)?;
        w.file(&format!("lib/x86_64-linux-gnu/{lib}"), 0o755, &bytes)?;
    }
    w.symlink(
        "lib64/ld-linux-x86-64.so.2",
        "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    )?;
    Ok(w.finish()?)
}

/// Writes `out/initrd-netbench.img` from `out/initrd.img` and the packages apt offers.
pub fn build(out: &Path, tmp: &Path) -> Result<()> {
    let mut roots = Vec::new();
    for name in PACKAGES {
        let pkg = Pinned {
            name: (*name).to_string(),
            version: apt::candidate(name)?,
        };
        tracing::info!(package = %pkg.name, version = %pkg.version, "apt-get download");
        let deb = apt::download(tmp, &pkg)?;
        let dest = tmp.join(format!("nb-{name}"));
        std::fs::create_dir(&dest).with_context(|| format!("creating {}", dest.display()))?;
        apt::extract(&deb, &dest)?;
        roots.push(dest);
    }
    let base = std::fs::read(out.join("initrd.img"))
        .with_context(|| format!("reading {}/initrd.img", out.display()))?;
    let extra = initramfs::gzip(&payload(&roots)?)?;
    let mut all = base;
    all.extend_from_slice(&extra);
    let path = out.join("initrd-netbench.img");
    std::fs::write(&path, &all).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "network benchmark initramfs written to {} ({} bytes: the guest's plus {} of iperf3)",
        path.display(),
        all.len(),
        extra.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libraries_are_found_through_symlinks_inside_the_package_root() {
        let root = std::env::temp_dir().join(format!("rampart-netbench-{}", std::process::id()));
        let dir = root.join("usr/lib/x86_64-linux-gnu");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("libiperf.so.0.0.0"), b"ELF").unwrap();
        std::os::unix::fs::symlink("libiperf.so.0.0.0", dir.join("libiperf.so.0")).unwrap();
        let roots = vec![root.clone()];
        assert_eq!(find(&roots, LIBDIRS, "libiperf.so.0").unwrap(), b"ELF");
        let e = find(&roots, LIBDIRS, "libc.so.6").unwrap_err().to_string();
        assert!(e.contains("libc.so.6"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
