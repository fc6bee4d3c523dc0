//! A small writer for the cpio "newc" format (the one the Linux kernel unpacks as an initramfs).
//!
//! Every entry is a 110-byte ASCII header (`070701` and thirteen 8-digit hex fields), the path
//! (NUL-terminated, padded so header + name ends on a 4-byte boundary), then the data, padded to
//! 4 bytes. The archive ends with an entry named `TRAILER!!!`. Owners are always root and the
//! modification time is fixed, so the same inputs always give the same bytes, and device nodes
//! can be written without any privilege on the build host.

use std::collections::BTreeSet;
use std::io::Write;

/// Magic of the newc format (no checksum).
pub const NEWC_MAGIC: &[u8; 6] = b"070701";
/// Name of the entry that closes an archive.
pub const TRAILER: &str = "TRAILER!!!";
/// Size of a newc header.
pub const HEADER_LEN: usize = 110;

/// File type bits of `st_mode`.
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;

/// Longest path accepted (Linux's PATH_MAX).
const MAX_NAME: usize = 4096;

/// Why an entry could not be added.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error(
        "cpio entry {0:?}: path is empty, absolute, has a NUL, `.`/`..` or an empty component"
    )]
    BadPath(String),
    #[error("cpio entry {0:?}: path is longer than {MAX_NAME} bytes")]
    PathTooLong(String),
    #[error("cpio entry {0:?}: already in the archive")]
    Duplicate(String),
    #[error("cpio entry {0:?}: parent directory {1:?} was not added before it")]
    MissingParent(String, String),
    #[error("cpio entry {name:?}: {len} bytes does not fit the format's 32-bit size field")]
    TooLarge { name: String, len: usize },
    #[error("cpio entry {0:?}: permission bits {1:#o} go beyond 0o7777")]
    BadMode(String, u32),
    #[error("cpio entry {0:?}: symlink target is empty or has a NUL")]
    BadTarget(String),
    #[error("cpio archive: the trailer was already written")]
    Finished,
    #[error("cpio archive: write failed")]
    Io(#[from] std::io::Error),
}

/// Streams a newc archive into `W`. Directories must be added before what they contain.
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    mtime: u32,
    names: BTreeSet<String>,
    finished: bool,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive; every entry gets modification time `mtime` (seconds since the epoch).
    pub fn new(out: W, mtime: u32) -> Self {
        Self {
            out,
            next_ino: 1,
            mtime,
            names: BTreeSet::new(),
            finished: false,
        }
    }

    /// Adds a directory with permission bits `perm` (e.g. 0o755).
    pub fn dir(&mut self, path: &str, perm: u32) -> Result<(), CpioError> {
        self.entry(path, S_IFDIR, perm, 2, (0, 0), &[])
    }

    /// Adds a regular file with permission bits `perm` and contents `data`.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<(), CpioError> {
        self.entry(path, S_IFREG, perm, 1, (0, 0), data)
    }

    /// Adds a symbolic link `path` pointing at `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        if target.is_empty() || target.contains('\0') {
            return Err(CpioError::BadTarget(path.to_owned()));
        }
        self.entry(path, S_IFLNK, 0o777, 1, (0, 0), target.as_bytes())
    }

    /// Adds a character device node `(major, minor)`.
    pub fn char_dev(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        self.entry(path, S_IFCHR, perm, 1, (major, minor), &[])
    }

    /// Writes the trailer and returns the underlying writer.
    pub fn finish(mut self) -> Result<W, CpioError> {
        if self.finished {
            return Err(CpioError::Finished);
        }
        self.write_record(TRAILER, 0, 0, 1, (0, 0), &[])?;
        self.finished = true;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(
        &mut self,
        path: &str,
        kind: u32,
        perm: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> Result<(), CpioError> {
        if self.finished {
            return Err(CpioError::Finished);
        }
        validate_path(path)?;
        if perm & !0o7777 != 0 {
            return Err(CpioError::BadMode(path.to_owned(), perm));
        }
        if self.names.contains(path) {
            return Err(CpioError::Duplicate(path.to_owned()));
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            if !self.names.contains(parent) {
                return Err(CpioError::MissingParent(path.to_owned(), parent.to_owned()));
            }
        }
        let ino = self.next_ino;
        self.next_ino = self.next_ino.wrapping_add(1);
        self.write_record(path, ino, kind | perm, nlink, rdev, data)?;
        self.names.insert(path.to_owned());
        Ok(())
    }

    fn write_record(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> Result<(), CpioError> {
        let size = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge {
            name: name.to_owned(),
            len: data.len(),
        })?;
        // Bounded by MAX_NAME (checked by validate_path; the trailer name is a constant).
        let namesize = (name.len() + 1) as u32;
        let fields = [
            ino, mode, 0, 0, nlink, self.mtime, size, 0, 0, rdev.0, rdev.1, namesize, 0,
        ];
        let mut header = Vec::with_capacity(HEADER_LEN + name.len() + 4);
        header.extend_from_slice(NEWC_MAGIC);
        for f in fields {
            header.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        header.extend_from_slice(name.as_bytes());
        header.push(0);
        header.resize(header.len() + pad4(header.len()), 0);
        self.put(&header)?;
        self.put(data)?;
        self.put(&[0u8; 3][..pad4(data.len())])?;
        Ok(())
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), CpioError> {
        self.out.write_all(bytes)?;
        Ok(())
    }
}

/// Bytes of padding that bring `len` to a multiple of 4.
pub fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Archive paths are relative ("bin/sh"), with no empty, `.` or `..` components.
fn validate_path(path: &str) -> Result<(), CpioError> {
    if path.len() > MAX_NAME {
        return Err(CpioError::PathTooLong(path.chars().take(64).collect()));
    }
    let bad = path.is_empty()
        || path == TRAILER
        || path.contains('\0')
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(CpioError::BadPath(path.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One entry as read back by [`parse`].
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Parsed {
        pub name: String,
        pub ino: u32,
        pub mode: u32,
        pub nlink: u32,
        pub mtime: u32,
        pub rdev: (u32, u32),
        pub data: Vec<u8>,
    }

    fn hex_field(b: &[u8], i: usize) -> Result<u32, String> {
        let s = std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).map_err(|e| e.to_string())?;
        u32::from_str_radix(s, 16).map_err(|e| format!("field {i}: {e}"))
    }

    /// An independent newc reader, strict about alignment, used to check the writer.
    pub fn parse(mut b: &[u8]) -> Result<Vec<Parsed>, String> {
        let mut out = Vec::new();
        let mut offset = 0usize;
        loop {
            if b.len() < HEADER_LEN || &b[..6] != NEWC_MAGIC {
                return Err(format!("bad header at {offset}"));
            }
            let f: Vec<u32> = (0..13).map(|i| hex_field(b, i)).collect::<Result<_, _>>()?;
            let (namesize, filesize) = (f[11] as usize, f[6] as usize);
            let name_end = HEADER_LEN + namesize;
            let data_start = name_end + pad4(name_end);
            let data_end = data_start + filesize;
            let next = data_end + pad4(data_end);
            if namesize == 0 || b.len() < next || b[name_end - 1] != 0 {
                return Err(format!("truncated or unterminated entry at {offset}"));
            }
            if (offset + data_start) % 4 != 0 || (offset + next) % 4 != 0 {
                return Err(format!("misaligned entry at {offset}"));
            }
            if b[name_end..data_start]
                .iter()
                .chain(&b[data_end..next])
                .any(|&x| x != 0)
            {
                return Err(format!("non-zero padding at {offset}"));
            }
            let name = String::from_utf8(b[HEADER_LEN..name_end - 1].to_vec())
                .map_err(|e| e.to_string())?;
            if name == TRAILER {
                return Ok(out);
            }
            out.push(Parsed {
                name,
                ino: f[0],
                mode: f[1],
                nlink: f[4],
                mtime: f[5],
                rdev: (f[9], f[10]),
                data: b[data_start..data_end].to_vec(),
            });
            offset += next;
            b = &b[next..];
        }
    }

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new(), 1234);
        w.dir("bin", 0o755).unwrap();
        w.file("bin/busybox", 0o755, b"\x7fELF12345").unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.dir("dev", 0o755).unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        w.char_dev("dev/null", 0o666, 1, 3).unwrap();
        w.file("init", 0o755, b"#!/bin/sh\n").unwrap();
        w.file("empty", 0o644, b"").unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn round_trips_every_entry_kind() {
        // Arrange / Act
        let bytes = sample();
        let entries = parse(&bytes).unwrap();

        // Assert
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/busybox",
                "bin/sh",
                "dev",
                "dev/console",
                "dev/null",
                "init",
                "empty"
            ]
        );
        assert_eq!(entries[0].mode, S_IFDIR | 0o755);
        assert_eq!(entries[1].mode, S_IFREG | 0o755);
        assert_eq!(entries[1].data, b"\x7fELF12345");
        assert_eq!(entries[2].mode, S_IFLNK | 0o777);
        assert_eq!(entries[2].data, b"busybox");
        assert_eq!(entries[4].mode, S_IFCHR | 0o600);
        assert_eq!(entries[4].rdev, (5, 1));
        assert_eq!(entries[5].rdev, (1, 3));
        assert!(entries.iter().all(|e| e.mtime == 1234));
        assert!(entries[7].data.is_empty());
    }

    #[test]
    fn ends_with_trailer_on_a_four_byte_boundary() {
        // Arrange / Act
        let bytes = sample();

        // Assert
        assert_eq!(bytes.len() % 4, 0);
        let tail = String::from_utf8_lossy(&bytes[bytes.len() - 16..]);
        assert!(tail.contains("TRAILER!!!"), "{tail:?}");
    }

    #[test]
    fn gives_every_entry_a_distinct_inode() {
        // Arrange / Act
        let entries = parse(&sample()).unwrap();

        // Assert
        let inodes: BTreeSet<_> = entries.iter().map(|e| e.ino).collect();
        assert_eq!(inodes.len(), entries.len());
    }

    #[test]
    fn pads_names_and_data_for_every_length_mod_four() {
        // Arrange
        let mut w = CpioWriter::new(Vec::new(), 0);
        for n in 1..=8 {
            let name = "f".repeat(n);
            w.file(&name, 0o644, &vec![b'x'; n]).unwrap();
        }

        // Act
        let entries = parse(&w.finish().unwrap()).unwrap();

        // Assert
        assert_eq!(entries.len(), 8);
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.data.len(), i + 1);
        }
    }

    #[test]
    fn lists_the_same_names_with_host_cpio_when_installed() {
        // Arrange
        let bytes = sample();
        let child = std::process::Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("cpio is not installed; skipping the cross-check");
            return;
        };

        // Act
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();

        // Assert
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listed = String::from_utf8(out.stdout).unwrap();
        let ours: Vec<_> = parse(&bytes).unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(listed.lines().collect::<Vec<_>>(), ours);
    }

    #[test]
    fn is_byte_for_byte_reproducible() {
        assert_eq!(sample(), sample());
    }

    #[test]
    fn rejects_entry_whose_parent_is_missing() {
        // Arrange
        let mut w = CpioWriter::new(Vec::new(), 0);

        // Act
        let err = w.file("lib/modules/a.ko", 0o644, b"").unwrap_err();

        // Assert
        assert!(matches!(err, CpioError::MissingParent(_, p) if p == "lib/modules"));
    }

    #[test]
    fn rejects_duplicate_paths() {
        let mut w = CpioWriter::new(Vec::new(), 0);
        w.file("init", 0o755, b"a").unwrap();
        assert!(matches!(
            w.file("init", 0o755, b"b"),
            Err(CpioError::Duplicate(_))
        ));
    }

    #[test]
    fn rejects_absolute_dotdot_and_trailer_paths() {
        let mut w = CpioWriter::new(Vec::new(), 0);
        for bad in [
            "",
            "/init",
            "a/../b",
            "./x",
            "a//b",
            "a/",
            "TRAILER!!!",
            "a\0b",
        ] {
            assert!(
                matches!(w.file(bad, 0o644, b""), Err(CpioError::BadPath(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn rejects_permission_bits_that_carry_a_file_type() {
        let mut w = CpioWriter::new(Vec::new(), 0);
        assert!(matches!(
            w.file("x", S_IFREG | 0o644, b""),
            Err(CpioError::BadMode(..))
        ));
    }

    #[test]
    fn rejects_empty_symlink_target() {
        let mut w = CpioWriter::new(Vec::new(), 0);
        assert!(matches!(w.symlink("x", ""), Err(CpioError::BadTarget(_))));
    }

    #[test]
    fn rejects_overlong_path() {
        let mut w = CpioWriter::new(Vec::new(), 0);
        let long = "a".repeat(MAX_NAME + 1);
        assert!(matches!(
            w.dir(&long, 0o755),
            Err(CpioError::PathTooLong(_))
        ));
    }
}
