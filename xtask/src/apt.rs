//! Asks the host's apt which Debian packages to use and downloads them, through `apt-cache` and
//! `apt-get download` only: whatever mirror the host is configured with, never a host name of ours.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The metapackage that names the current Debian kernel.
pub const KERNEL_META: &str = "linux-image-amd64";
/// Debian's statically linked busybox.
pub const BUSYBOX: &str = "busybox-static";

const LISTS_HINT: &str = "apt's package lists look missing or stale: run `apt-get update` \
     (or `cargo xtask guest --update`) and try again";

/// A package pinned to one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    pub name: String,
    pub version: String,
}

/// Runs a command, returning its standard output, or an error that shows its standard error.
fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("could not start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{shown} printed non-UTF-8 output"))
}

/// Parses `apt-cache policy A B ...`: each package's `Candidate:` (None when it is "(none)" or the
/// package is unknown).
pub fn parse_policy(output: &str, package: &str) -> Option<String> {
    let mut current: Option<&str> = None;
    for line in output.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            current = Some(line.trim_end_matches(':'));
        } else if current == Some(package) {
            if let Some(v) = line.trim().strip_prefix("Candidate:") {
                let v = v.trim();
                return (v != "(none)" && !v.is_empty()).then(|| v.to_owned());
            }
        }
    }
    None
}

/// Parses the `Depends:` field of `apt-cache show linux-image-amd64=V` for the real kernel
/// package, e.g. `linux-image-6.1.0-57-amd64 (= 6.1.192-3)`.
pub fn parse_kernel_depends(show: &str) -> Option<Pinned> {
    let depends = show.lines().find_map(|l| l.strip_prefix("Depends:"))?;
    depends.split(',').find_map(|alt| {
        let alt = alt.split('|').next()?.trim();
        let (name, rest) = alt.split_once(' ').unwrap_or((alt, ""));
        let is_kernel = name.starts_with("linux-image-")
            && name.ends_with("-amd64")
            && name != KERNEL_META
            && name.as_bytes().get(12).is_some_and(u8::is_ascii_digit);
        let version = rest
            .trim()
            .strip_prefix("(=")?
            .strip_suffix(')')?
            .trim()
            .to_owned();
        is_kernel.then(|| Pinned {
            name: name.to_owned(),
            version,
        })
    })
}

/// Candidate versions of the kernel metapackage and of busybox-static, in one `apt-cache` call.
pub fn candidates() -> Result<(Pinned, Pinned)> {
    let out = run(Command::new("apt-cache").args(["policy", KERNEL_META, BUSYBOX]))?;
    let get = |p: &str| {
        parse_policy(&out, p)
            .map(|version| Pinned {
                name: p.to_owned(),
                version,
            })
            .with_context(|| format!("apt offers no candidate for {p}; {LISTS_HINT}"))
    };
    Ok((get(KERNEL_META)?, get(BUSYBOX)?))
}

/// The real `linux-image-<abi>-amd64` package a metapackage version depends on.
pub fn kernel_package(meta: &Pinned) -> Result<Pinned> {
    let out =
        run(Command::new("apt-cache").args(["show", &format!("{}={}", meta.name, meta.version)]))?;
    parse_kernel_depends(&out).with_context(|| {
        format!(
            "{}={} does not depend on a linux-image-<version>-amd64 package",
            meta.name, meta.version
        )
    })
}

/// The version of `package` apt would install (its `Candidate:`).
pub fn candidate(package: &str) -> Result<String> {
    let out = run(Command::new("apt-cache").args(["policy", package]))?;
    parse_policy(&out, package)
        .with_context(|| format!("apt has no candidate for {package}; {LISTS_HINT}"))
}

/// `apt-get update`, only when the user asked for it.
pub fn update() -> Result<()> {
    let status = Command::new("apt-get")
        .arg("update")
        .status()
        .context("could not start apt-get update")?;
    if !status.success() {
        bail!("apt-get update failed ({status})");
    }
    Ok(())
}

/// Downloads `pkg=version` into `dir` and returns the .deb's path.
pub fn download(dir: &Path, pkg: &Pinned) -> Result<PathBuf> {
    let spec = format!("{}={}", pkg.name, pkg.version);
    run(Command::new("apt-get")
        // The download directory is ours, not _apt's.
        .args(["-q", "-o", "APT::Sandbox::User=root", "download", &spec])
        .current_dir(dir))
    .with_context(|| format!("apt-get download {spec} failed; {LISTS_HINT}"))?;
    let prefix = format!("{}_", pkg.name);
    let mut debs = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            debs.push(path);
        }
    }
    match debs.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "apt-get download {spec} left no {prefix}*.deb in {}",
            dir.display()
        ),
        _ => bail!(
            "apt-get download {spec} left several .deb files in {}",
            dir.display()
        ),
    }
}

/// The version recorded inside a .deb, to check apt gave what was asked.
pub fn deb_version(deb: &Path) -> Result<String> {
    let out = run(Command::new("dpkg-deb").arg("-f").arg(deb).arg("Version"))?;
    Ok(out.trim().to_owned())
}

/// Unpacks a .deb's files into `dest`.
pub fn extract(deb: &Path, dest: &Path) -> Result<()> {
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest))
        .with_context(|| format!("extracting {}", deb.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "\
linux-image-amd64:
  Installed: (none)
  Candidate: 6.1.192-3
  Version table:
     6.1.192-3 500
        500 http://example.invalid/debian-security bookworm-security/main amd64 Packages
busybox-static:
  Installed: (none)
  Candidate: 1:1.35.0-4+deb12u1+b1
  Version table:
";

    #[test]
    fn reads_candidate_of_each_package() {
        assert_eq!(
            parse_policy(POLICY, KERNEL_META).as_deref(),
            Some("6.1.192-3")
        );
        assert_eq!(
            parse_policy(POLICY, BUSYBOX).as_deref(),
            Some("1:1.35.0-4+deb12u1+b1")
        );
    }

    #[test]
    fn reads_no_candidate_when_lists_are_missing() {
        // Arrange
        let out = "linux-image-amd64:\n  Installed: (none)\n  Candidate: (none)\n";

        // Act / Assert
        assert_eq!(parse_policy(out, KERNEL_META), None);
        assert_eq!(parse_policy("", BUSYBOX), None);
    }

    #[test]
    fn finds_real_kernel_package_in_metapackage_depends() {
        // Arrange
        let show = "Package: linux-image-amd64\nVersion: 6.1.192-3\n\
                    Depends: linux-image-6.1.0-57-amd64 (= 6.1.192-3)\nDescription: x\n";

        // Act
        let pinned = parse_kernel_depends(show).unwrap();

        // Assert
        assert_eq!(pinned.name, "linux-image-6.1.0-57-amd64");
        assert_eq!(pinned.version, "6.1.192-3");
    }

    #[test]
    fn ignores_unrelated_or_unpinned_depends() {
        assert_eq!(
            parse_kernel_depends("Depends: initramfs-tools (>= 1)\n"),
            None
        );
        assert_eq!(
            parse_kernel_depends("Depends: linux-image-6.1.0-57-amd64\n"),
            None
        );
        assert_eq!(parse_kernel_depends("Package: x\n"), None);
    }
}
