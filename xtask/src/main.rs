//! rampart's developer commands: `cargo xtask <command>`.

mod apt;
mod cpio;
mod guest;
mod initramfs;
mod modinfo;
mod modules;
mod netbench;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  guest [--out DIR] [--force] [--update] [--netbench]
      Fetch Debian bookworm's kernel (linux-image-amd64) and busybox-static with apt-get download
      and build the test guest: DIR/vmlinuz, DIR/initrd.img, DIR/versions.txt
      (DIR defaults to <repo>/guest). Does nothing when DIR already holds the versions apt offers.
        --force   refetch and rebuild anyway
        --update  run apt-get update first
        --netbench  also write DIR/initrd-netbench.img for bench/net: the guest's initramfs
                  with Debian's iperf3 and its libraries appended (apt-get download)
  help
      Show this text.
";

/// The repository root (the parent of this crate).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn parse_guest_args(args: &[String]) -> Result<guest::GuestArgs> {
    let root = repo_root();
    let mut parsed = guest::GuestArgs {
        out: root.join("guest"),
        force: false,
        update: false,
        netbench: false,
        scripts: root.join("guest-init"),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--force" => parsed.force = true,
            "--update" => parsed.update = true,
            "--netbench" => parsed.netbench = true,
            "--out" => {
                parsed.out = PathBuf::from(it.next().context("--out needs a directory")?);
            }
            other => match other.strip_prefix("--out=") {
                Some(dir) if !dir.is_empty() => parsed.out = PathBuf::from(dir),
                _ => bail!("unknown argument {other:?} for `guest`\n\n{USAGE}"),
            },
        }
    }
    Ok(parsed)
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("guest") => guest::run(&parse_guest_args(&args[1..])?),
        Some("help" | "--help" | "-h") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn guest_defaults_to_repo_guest_folder() {
        let parsed = parse_guest_args(&[]).unwrap();
        assert!(parsed.out.ends_with("guest"));
        assert!(!parsed.force && !parsed.update);
    }

    #[test]
    fn guest_accepts_out_force_and_update() {
        // Arrange / Act
        let parsed = parse_guest_args(&args(&["--out", "/tmp/g", "--force", "--update"])).unwrap();

        // Assert
        assert_eq!(parsed.out, PathBuf::from("/tmp/g"));
        assert!(parsed.force && parsed.update);
        let eq = parse_guest_args(&args(&["--out=/tmp/h"])).unwrap();
        assert_eq!(eq.out, PathBuf::from("/tmp/h"));
    }

    #[test]
    fn guest_rejects_unknown_flag_and_missing_out_value() {
        assert!(parse_guest_args(&args(&["--bogus"])).is_err());
        assert!(parse_guest_args(&args(&["--out"])).is_err());
    }
}
