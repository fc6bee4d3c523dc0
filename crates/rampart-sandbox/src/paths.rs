//! The monitor's host-path policy: a monitor command that makes rampart open a host file may
//! name only `/dev/fdset/N` or a file under a directory allowed on the command line
//! (`-monitor-path-allow DIR[,readonly=on]`).
//!
//! Each allowed directory is opened once at start-up as an `O_PATH` descriptor (before the
//! jail, which it survives). A file is then opened with `openat2(dir, rest,
//! RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`, so the kernel itself refuses every way out of the
//! directory: `..` above it, absolute symbolic links, relative ones that climb out, and
//! `/proc` magic links. Nothing is checked by looking at the path text alone, so there is no
//! window between a check and the open.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// The command-line option that allows a directory (named in every refusal).
pub const OPTION: &str = "-monitor-path-allow";

/// Why the policy refused a path.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("{OPTION} '{}': {source}", dir.display())]
    OpenDir { dir: PathBuf, source: io::Error },
    #[error("{OPTION} '{}': must be an absolute path without '..'", dir.display())]
    BadDir { dir: PathBuf },
    #[error(
        "'{}': the monitor may open host files only as /dev/fdset/N (see add-fd) or under a \
         directory allowed with {OPTION} DIR; {}",
        path.display(),
        allowed_text(allowed)
    )]
    NotAllowed {
        path: PathBuf,
        allowed: Vec<PathBuf>,
    },
    #[error(
        "'{}' leaves the allowed directory '{}' (through '..' or a symbolic link); the \
         monitor opens files only beneath the directories allowed with {OPTION}",
        path.display(),
        dir.display()
    )]
    Escapes { path: PathBuf, dir: PathBuf },
    #[error(
        "'{}': the directory '{}' is allowed read-only ({OPTION} ...,readonly=on); the file \
         cannot be opened for writing",
        path.display(),
        dir.display()
    )]
    ReadOnly { path: PathBuf, dir: PathBuf },
    #[error("'{}': {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
}

fn allowed_text(allowed: &[PathBuf]) -> String {
    if allowed.is_empty() {
        "no directory is allowed".into()
    } else {
        let list: Vec<String> = allowed.iter().map(|p| p.display().to_string()).collect();
        format!("allowed: {}", list.join(", "))
    }
}

/// One allowed directory.
#[derive(Debug)]
struct AllowedDir {
    path: PathBuf,
    dir: OwnedFd,
    readonly: bool,
}

/// The directories monitor commands may open files under.
#[derive(Debug, Default)]
pub struct PathPolicy {
    dirs: Vec<AllowedDir>,
}

fn plain_absolute(p: &Path) -> bool {
    p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

fn cstring(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// `openat2(dir, rest, how)` with `resolve` flags (`mode` for a file `O_CREAT` makes).
fn openat2(dir: &OwnedFd, rest: &Path, flags: i32, mode: u64, resolve: u64) -> io::Result<OwnedFd> {
    let name = cstring(rest)?;
    // SAFETY: open_how is plain data; zeroed is a valid value, the fields are set below.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC | libc::O_NOCTTY) as u64;
    how.mode = mode;
    how.resolve = resolve;
    // SAFETY: `name` is a NUL-terminated string and `how` a valid open_how that outlive the
    // call; its size is passed. The kernel returns a new descriptor or an error.
    let r = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

impl PathPolicy {
    /// Opens every allowed directory (`(path, readonly)`), at start-up.
    pub fn new(dirs: &[(PathBuf, bool)]) -> Result<PathPolicy, PathError> {
        let mut out = Vec::new();
        for (path, readonly) in dirs {
            if !plain_absolute(path) {
                return Err(PathError::BadDir { dir: path.clone() });
            }
            let c = cstring(path).map_err(|source| PathError::OpenDir {
                dir: path.clone(),
                source,
            })?;
            // SAFETY: `c` is NUL-terminated; open returns a new descriptor or an error.
            let fd = unsafe {
                libc::open(
                    c.as_ptr(),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(PathError::OpenDir {
                    dir: path.clone(),
                    source: io::Error::last_os_error(),
                });
            }
            out.push(AllowedDir {
                path: path.clone(),
                // SAFETY: `fd` was just returned by open and is owned by nobody else.
                dir: unsafe { OwnedFd::from_raw_fd(fd) },
                readonly: *readonly,
            });
        }
        Ok(PathPolicy { dirs: out })
    }

    /// The allowed directories, as given.
    pub fn dirs(&self) -> impl Iterator<Item = (&Path, bool)> {
        self.dirs.iter().map(|d| (d.path.as_path(), d.readonly))
    }

    /// Opens `path` with `flags` (`O_RDONLY`/`O_RDWR`, optionally `O_DIRECT`; never
    /// `O_CREAT`) if it lies beneath an allowed directory, resolving it inside that directory
    /// only. The most specific allowed directory that is a prefix of `path` is used.
    pub fn open(&self, path: &Path, flags: i32) -> Result<OwnedFd, PathError> {
        let flags = flags & !(libc::O_CREAT | libc::O_TRUNC | libc::O_PATH);
        self.open_beneath(path, flags, 0)
    }

    /// Creates (or truncates) `path`, write-only, mode 0600, under the same rules as
    /// [`PathPolicy::open`]; a read-only allowed directory refuses.
    pub fn create(&self, path: &Path) -> Result<OwnedFd, PathError> {
        self.open_beneath(path, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o600)
    }

    fn open_beneath(&self, path: &Path, flags: i32, mode: u64) -> Result<OwnedFd, PathError> {
        let not_allowed = || PathError::NotAllowed {
            path: path.to_path_buf(),
            allowed: self.dirs.iter().map(|d| d.path.clone()).collect(),
        };
        if !path.is_absolute() {
            return Err(not_allowed());
        }
        let best = self
            .dirs
            .iter()
            .filter_map(|d| path.strip_prefix(&d.path).ok().map(|rest| (d, rest)))
            .max_by_key(|(d, _)| d.path.components().count());
        let Some((dir, rest)) = best else {
            return Err(not_allowed());
        };
        if dir.readonly && flags & libc::O_ACCMODE != libc::O_RDONLY {
            return Err(PathError::ReadOnly {
                path: path.to_path_buf(),
                dir: dir.path.clone(),
            });
        }
        let rest = if rest.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rest
        };
        openat2(
            &dir.dir,
            rest,
            flags,
            mode,
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
        )
        .map_err(|source| match source.raw_os_error() {
            Some(libc::EXDEV) => PathError::Escapes {
                path: path.to_path_buf(),
                dir: dir.path.clone(),
            },
            _ => PathError::Open {
                path: path.to_path_buf(),
                source,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A scratch tree: `root/allowed/{disk.img,sub/inner.img}`, `root/secret.img`, and links
    /// inside `allowed` pointing in and out.
    fn tree(name: &str) -> (PathBuf, PathBuf) {
        let root =
            std::env::temp_dir().join(format!("rampart-paths-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let allowed = root.join("allowed");
        std::fs::create_dir_all(allowed.join("sub")).unwrap();
        std::fs::write(allowed.join("disk.img"), b"ok").unwrap();
        std::fs::write(allowed.join("sub/inner.img"), b"inner").unwrap();
        std::fs::write(root.join("secret.img"), b"secret").unwrap();
        symlink(root.join("secret.img"), allowed.join("abs-out.img")).unwrap();
        symlink("../secret.img", allowed.join("rel-out.img")).unwrap();
        symlink("sub/inner.img", allowed.join("rel-in.img")).unwrap();
        symlink("..", allowed.join("up")).unwrap();
        (root, allowed)
    }

    fn read(fd: OwnedFd) -> String {
        std::fs::read_to_string(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap()
    }

    #[test]
    fn files_beneath_an_allowed_directory_open() {
        let (_root, allowed) = tree("ok");
        let p = PathPolicy::new(&[(allowed.clone(), false)]).unwrap();

        assert_eq!(
            read(p.open(&allowed.join("disk.img"), libc::O_RDONLY).unwrap()),
            "ok"
        );
        assert_eq!(
            read(
                p.open(&allowed.join("sub/inner.img"), libc::O_RDWR)
                    .unwrap()
            ),
            "inner"
        );
        assert_eq!(
            read(p.open(&allowed.join("rel-in.img"), libc::O_RDONLY).unwrap()),
            "inner",
            "a symbolic link that stays inside is followed"
        );
    }

    #[test]
    fn dot_dot_out_of_the_directory_is_refused() {
        let (root, allowed) = tree("dotdot");
        let p = PathPolicy::new(&[(allowed.clone(), false)]).unwrap();

        let e = p
            .open(&allowed.join("../secret.img"), libc::O_RDONLY)
            .unwrap_err();
        assert!(matches!(e, PathError::Escapes { .. }), "{e}");
        let e = p
            .open(&allowed.join("sub/../../secret.img"), libc::O_RDONLY)
            .unwrap_err();
        assert!(matches!(e, PathError::Escapes { .. }), "{e}");
        // `..` that stays inside is fine.
        assert!(p
            .open(&allowed.join("sub/../disk.img"), libc::O_RDONLY)
            .is_ok());
        assert!(root.join("secret.img").exists());
    }

    #[test]
    fn symbolic_links_out_of_the_directory_are_refused() {
        let (_root, allowed) = tree("links");
        let p = PathPolicy::new(&[(allowed.clone(), false)]).unwrap();

        for name in ["abs-out.img", "rel-out.img", "up/secret.img"] {
            let e = p.open(&allowed.join(name), libc::O_RDONLY).unwrap_err();
            assert!(matches!(e, PathError::Escapes { .. }), "{name}: {e}");
            assert!(e.to_string().contains(OPTION), "{e}");
        }
    }

    #[test]
    fn paths_outside_every_allowed_directory_name_the_option() {
        let (root, allowed) = tree("outside");
        let p = PathPolicy::new(&[(allowed.clone(), false)]).unwrap();

        let e = p
            .open(&root.join("secret.img"), libc::O_RDONLY)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("-monitor-path-allow DIR") && e.contains("/dev/fdset/N"),
            "{e}"
        );
        assert!(e.contains(&*allowed.to_string_lossy()), "{e}");
        let e = p.open(Path::new("disk.img"), libc::O_RDONLY).unwrap_err();
        assert!(matches!(e, PathError::NotAllowed { .. }), "relative: {e}");
        let none = PathPolicy::default();
        let e = none
            .open(&allowed.join("disk.img"), libc::O_RDONLY)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no directory is allowed"), "{e}");
    }

    #[test]
    fn read_only_directories_refuse_writers() {
        let (_root, allowed) = tree("ro");
        let p = PathPolicy::new(&[(allowed.clone(), true)]).unwrap();

        assert!(p.open(&allowed.join("disk.img"), libc::O_RDONLY).is_ok());
        let e = p.open(&allowed.join("disk.img"), libc::O_RDWR).unwrap_err();
        assert!(matches!(e, PathError::ReadOnly { .. }), "{e}");
    }

    #[test]
    fn files_are_created_only_beneath_writable_allowed_directories() {
        let (root, allowed) = tree("create");
        let p = PathPolicy::new(&[(allowed.clone(), false)]).unwrap();

        let fd = p.create(&allowed.join("dump.elf")).unwrap();
        std::fs::write(format!("/proc/self/fd/{}", fd.as_raw_fd()), b"core").unwrap();
        assert_eq!(std::fs::read(allowed.join("dump.elf")).unwrap(), b"core");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(allowed.join("dump.elf"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let e = p.create(&allowed.join("../made.elf")).unwrap_err();
        assert!(matches!(e, PathError::Escapes { .. }), "{e}");
        let e = p.create(&allowed.join("rel-out.img")).unwrap_err();
        assert!(matches!(e, PathError::Escapes { .. }), "{e}");
        assert_eq!(std::fs::read(root.join("secret.img")).unwrap(), b"secret");
        assert!(!root.join("made.elf").exists());
        let ro = PathPolicy::new(&[(allowed.clone(), true)]).unwrap();
        assert!(matches!(
            ro.create(&allowed.join("x.elf")),
            Err(PathError::ReadOnly { .. })
        ));
    }

    #[test]
    fn the_most_specific_allowed_directory_decides() {
        let (_root, allowed) = tree("nested");
        let p = PathPolicy::new(&[(allowed.clone(), false), (allowed.join("sub"), true)]).unwrap();

        assert!(p.open(&allowed.join("disk.img"), libc::O_RDWR).is_ok());
        assert!(matches!(
            p.open(&allowed.join("sub/inner.img"), libc::O_RDWR),
            Err(PathError::ReadOnly { .. })
        ));
    }

    #[test]
    fn allowed_directories_must_be_plain_absolute_paths() {
        assert!(matches!(
            PathPolicy::new(&[(PathBuf::from("rel"), false)]),
            Err(PathError::BadDir { .. })
        ));
        assert!(matches!(
            PathPolicy::new(&[(PathBuf::from("/tmp/../etc"), false)]),
            Err(PathError::BadDir { .. })
        ));
        assert!(matches!(
            PathPolicy::new(&[(PathBuf::from("/nonexistent-rampart-dir"), false)]),
            Err(PathError::OpenDir { .. })
        ));
    }
}
