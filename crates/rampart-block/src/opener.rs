//! How the block layer turns a file name into an open file. The command line's names are
//! opened by path (or, for `/dev/fdset/N`, taken from a passed descriptor: the binary's
//! opener); a monitor command's names go through the monitor's path policy. Backing-file names
//! read from an image header are hostile input and are marked as such, so an opener can refuse
//! what only a trusted configuration may name (an fd set, for instance).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The directory whose names select fd sets (`/dev/fdset/N`).
pub const FDSET_DIR: &str = "/dev/fdset";

/// Where a file name came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameOrigin {
    /// The configuration (command line or monitor command arguments).
    Config,
    /// A backing-file name recorded in an image (hostile).
    ImageHeader,
}

/// Opens host files for the block layer.
pub trait Opener: Send + Sync {
    /// Opens `path` with `flags`: `O_RDONLY` or `O_RDWR`, optionally `O_DIRECT` (the
    /// implementation adds `O_CLOEXEC`; it never creates files).
    fn open(&self, path: &Path, flags: i32, origin: NameOrigin) -> io::Result<File>;
}

/// Opens names as host paths. `/dev/fdset/N` names are refused (this opener has no fd sets).
pub struct PathOpener;

/// The refusal of a `/dev/fdset/` name by an opener without fd sets, or from an image.
pub fn fdset_refused(path: &Path, origin: NameOrigin) -> io::Error {
    let why = match origin {
        NameOrigin::ImageHeader => {
            "an image's backing-file name may not select an fd set; pass the backing file \
             with backing.file.filename=/dev/fdset/N"
        }
        NameOrigin::Config => "fd sets are not available here",
    };
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("'{}': {why}", path.display()),
    )
}

impl Opener for PathOpener {
    fn open(&self, path: &Path, flags: i32, origin: NameOrigin) -> io::Result<File> {
        if path.starts_with(FDSET_DIR) {
            return Err(fdset_refused(path, origin));
        }
        let mut oo = OpenOptions::new();
        oo.read(true)
            .write(flags & libc::O_ACCMODE == libc::O_RDWR)
            .custom_flags((flags & !libc::O_ACCMODE) | libc::O_CLOEXEC | libc::O_NOCTTY);
        oo.open(path)
    }
}
