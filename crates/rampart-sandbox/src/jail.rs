//! The jail: new mount, IPC and UTS namespaces (and optionally a network namespace) for the
//! process that runs the VM, whose root becomes an empty, read-only tmpfs mounted on the
//! per-VM directory. The PID namespace is entered by the fork in [`crate::supervisor`].
//!
//! Nothing has to exist inside the jail: every host resource (`/dev/kvm`, kernel, initrd,
//! images, sockets) is already open, and the entropy device uses `getrandom(2)`. So the new
//! root holds no device node and no file at all.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rampart_config::JailConfig;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum JailError {
    #[error("-run-with jail={path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("-run-with jail={0}: not a directory")]
    NotDir(PathBuf),
    #[error("-run-with jail={0}: only root can build the jail (namespaces, mounts)")]
    NotRoot(PathBuf),
    #[error("entering the jail: {what}: {source}")]
    Syscall {
        what: &'static str,
        source: io::Error,
    },
}

fn err(what: &'static str) -> JailError {
    JailError::Syscall {
        what,
        source: io::Error::last_os_error(),
    }
}

/// The host name inside the jail's UTS namespace.
pub const JAIL_HOSTNAME: &str = "rampart";

/// Checks the jail directory before anything is opened.
pub fn check_dir(jail: &JailConfig) -> Result<(), JailError> {
    let meta = std::fs::metadata(&jail.dir).map_err(|source| JailError::Dir {
        path: jail.dir.clone(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(JailError::NotDir(jail.dir.clone()));
    }
    // SAFETY: geteuid only reads the caller's credentials.
    if unsafe { libc::geteuid() } != 0 {
        return Err(JailError::NotRoot(jail.dir.clone()));
    }
    Ok(())
}

fn mount(
    source: Option<&std::ffi::CStr>,
    target: &std::ffi::CStr,
    fstype: Option<&std::ffi::CStr>,
    flags: libc::c_ulong,
    data: Option<&std::ffi::CStr>,
    what: &'static str,
) -> Result<(), JailError> {
    let p = |c: Option<&std::ffi::CStr>| c.map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string valid for the call.
    let rc = unsafe { libc::mount(p(source), target.as_ptr(), p(fstype), flags, p(data).cast()) };
    if rc != 0 {
        return Err(err(what));
    }
    Ok(())
}

fn cpath(path: &Path) -> Result<CString, JailError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| JailError::NotDir(path.into()))
}

/// Enters the jail's namespaces and pivots into its root. Call it in the supervised child
/// (already PID 1 of its own PID namespace), single-threaded, after every host resource is
/// open.
pub fn enter(jail: &JailConfig) -> Result<(), JailError> {
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    if jail.netns {
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: unshare takes flags only.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(err("unshare(mount, IPC, UTS namespaces)"));
    }
    let name = JAIL_HOSTNAME.as_bytes();
    // SAFETY: `name` is valid for `name.len()` bytes.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        return Err(err("sethostname"));
    }
    // No mount event may travel back to the host's namespace.
    mount(
        None,
        c"/",
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
        "making / private",
    )?;
    let dir = cpath(&jail.dir)?;
    mount(
        Some(c"rampart-jail"),
        &dir,
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY,
        Some(c"size=4k,nr_inodes=1,mode=0555"),
        "mounting the jail's tmpfs",
    )?;
    // SAFETY: `dir` is NUL-terminated.
    if unsafe { libc::chdir(dir.as_ptr()) } != 0 {
        return Err(err("chdir into the jail"));
    }
    // pivot_root(".", "."): the old root ends up stacked on the new one, and is detached next.
    // SAFETY: both paths are NUL-terminated.
    if unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) } != 0 {
        return Err(err("pivot_root"));
    }
    // SAFETY: the path is NUL-terminated.
    if unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(err("detaching the host's root"));
    }
    // SAFETY: the path is NUL-terminated.
    if unsafe { libc::chdir(c"/".as_ptr()) } != 0 {
        return Err(err("chdir /"));
    }
    Ok(())
}
