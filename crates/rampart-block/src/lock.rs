//! Image locking as QEMU does it, so that rampart and QEMU (or two rampart processes) see each
//! other: open file description (OFD) locks on single bytes of the image file.
//!
//! For each permission bit *p* a user holds, it takes a shared lock on byte `100 + p`; for each
//! permission it refuses to share, a shared lock on byte `200 + p`. Before use it tests, with a
//! would-be exclusive lock, that nobody holds a byte that conflicts: someone refusing a
//! permission it holds, or holding a permission it refuses. OFD locks belong to the open file,
//! so they vanish when the image is closed or the process dies.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::BlockError;

const PERM_BASE: i64 = 100;
const SHARED_BASE: i64 = 200;

/// QEMU's permission bits (`BLK_PERM_*`), by bit number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Perm {
    ConsistentRead = 0,
    Write = 1,
    Resize = 3,
}

impl Perm {
    fn name(self) -> &'static str {
        match self {
            Perm::ConsistentRead => "consistent read",
            Perm::Write => "write",
            Perm::Resize => "resize",
        }
    }
}

/// Takes the locks a user of the image needs: a writer holds read, write and resize; every
/// user (as a QEMU block device without `share-rw`) refuses to share write and resize.
pub fn lock_image(file: &File, path: &Path, writable: bool) -> Result<(), BlockError> {
    let held: &[Perm] = if writable {
        &[Perm::ConsistentRead, Perm::Write, Perm::Resize]
    } else {
        &[Perm::ConsistentRead]
    };
    let unshared: &[Perm] = &[Perm::Write, Perm::Resize];
    let lock_err = |source| BlockError::Lock {
        path: path.to_path_buf(),
        source,
    };
    for p in held {
        set_lock(file, PERM_BASE + *p as i64, libc::F_RDLCK).map_err(|e| conflict(path, *p, e))?;
    }
    for p in unshared {
        set_lock(file, SHARED_BASE + *p as i64, libc::F_RDLCK)
            .map_err(|e| conflict(path, *p, e))?;
    }
    for p in held {
        if is_locked_by_other(file, SHARED_BASE + *p as i64).map_err(lock_err)? {
            return Err(BlockError::Locked {
                path: path.to_path_buf(),
                perm: p.name(),
            });
        }
    }
    for p in unshared {
        if is_locked_by_other(file, PERM_BASE + *p as i64).map_err(lock_err)? {
            return Err(BlockError::Locked {
                path: path.to_path_buf(),
                perm: p.name(),
            });
        }
    }
    Ok(())
}

fn conflict(path: &Path, p: Perm, e: io::Error) -> BlockError {
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => BlockError::Locked {
            path: path.to_path_buf(),
            perm: p.name(),
        },
        _ => BlockError::Lock {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

fn flock_for(byte: i64, kind: libc::c_int) -> libc::flock {
    // SAFETY: `flock` is plain old data; all-zero is a valid value (l_pid must be 0 for OFD
    // locks).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte;
    fl.l_len = 1;
    fl
}

fn set_lock(file: &File, byte: i64, kind: libc::c_int) -> io::Result<()> {
    let fl = flock_for(byte, kind);
    // SAFETY: F_OFD_SETLK reads the flock struct we pass, which lives across the call.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether another open file holds a lock on `byte` (tested with a would-be write lock).
fn is_locked_by_other(file: &File, byte: i64) -> io::Result<bool> {
    let mut fl = flock_for(byte, libc::F_WRLCK);
    // SAFETY: F_OFD_GETLK reads and fills in the flock struct we pass, which outlives the call.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> std::path::PathBuf {
        let p = crate::testutil::scratch_dir().join("img");
        std::fs::write(&p, [0u8; 4096]).unwrap();
        p
    }

    fn open(p: &Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .unwrap()
    }

    #[test]
    fn second_writer_is_refused_naming_the_file() {
        let p = image();
        let a = open(&p);
        lock_image(&a, &p, true).unwrap();
        let b = open(&p);

        let err = lock_image(&b, &p, true).unwrap_err();

        assert!(matches!(err, BlockError::Locked { .. }), "{err}");
        assert!(err.to_string().contains(&*p.to_string_lossy()), "{err}");
    }

    #[test]
    fn two_readers_share_an_image() {
        let p = image();
        let a = open(&p);
        let b = open(&p);

        lock_image(&a, &p, false).unwrap();
        lock_image(&b, &p, false).unwrap();
    }

    #[test]
    fn lock_is_released_when_the_file_is_closed() {
        let p = image();
        let a = open(&p);
        lock_image(&a, &p, true).unwrap();
        drop(a);
        let b = open(&p);

        lock_image(&b, &p, true).unwrap();
    }

    #[test]
    fn reader_is_refused_while_a_writer_holds_the_image() {
        let p = image();
        let a = open(&p);
        lock_image(&a, &p, true).unwrap();
        let b = open(&p);

        assert!(lock_image(&b, &p, false).is_err());
    }
}
