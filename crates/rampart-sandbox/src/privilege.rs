//! Running unprivileged: change root, drop supplementary groups, switch gid then uid, drop every
//! capability (bounding, effective, permitted, inheritable, ambient) and set `no_new_privs`.
//!
//! [`Credentials::resolve`] runs first, while `/etc/passwd` is still reachable; [`drop_to`]
//! runs once every host resource is open and while the process is single-threaded (capability
//! sets are per thread).

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rampart_config::RunAsUser;
use thiserror::Error;

/// Why rampart cannot run as asked. Each names the culprit.
#[derive(Debug, Error)]
pub enum PrivilegeError {
    #[error("-run-with user={0}: no such user")]
    UnknownUser(String),
    #[error("-run-with user={name}: looking the user up failed: {source}")]
    Lookup { name: String, source: io::Error },
    #[error(
        "-run-with user={target}: rampart runs as uid {uid}, not root, so it cannot switch to \
         uid {target_uid} gid {target_gid}"
    )]
    NotRoot {
        target: String,
        uid: u32,
        target_uid: u32,
        target_gid: u32,
    },
    #[error("-run-with chroot={0}: rampart is not root, so it cannot change its root directory")]
    ChrootNotRoot(PathBuf),
    #[error("-run-with chroot={path}: {source}")]
    ChrootDir { path: PathBuf, source: io::Error },
    #[error("-run-with chroot={0}: not a directory")]
    ChrootNotDir(PathBuf),
    #[error("dropping privileges: {what}: {source}")]
    Syscall {
        what: &'static str,
        source: io::Error,
    },
    #[error("dropping privileges: {0}")]
    Check(String),
}

fn syscall_err(what: &'static str) -> PrivilegeError {
    PrivilegeError::Syscall {
        what,
        source: io::Error::last_os_error(),
    }
}

/// The user and group rampart switches to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// As the user wrote it (for messages).
    pub shown: String,
    pub uid: u32,
    pub gid: u32,
}

impl Credentials {
    /// Looks the user up (a name in the password database; `UID:GID` as is) and checks that
    /// this process may switch to it.
    pub fn resolve(user: &RunAsUser) -> Result<Credentials, PrivilegeError> {
        let creds = match user {
            RunAsUser::Ids { uid, gid } => Credentials {
                shown: format!("{uid}:{gid}"),
                uid: *uid,
                gid: *gid,
            },
            RunAsUser::Name(name) => lookup(name)?,
        };
        // SAFETY: getuid/getgid/geteuid only read the caller's credentials.
        let (uid, gid, euid) = unsafe { (libc::getuid(), libc::getgid(), libc::geteuid()) };
        if euid != 0 && (creds.uid != uid || creds.gid != gid || euid != uid) {
            return Err(PrivilegeError::NotRoot {
                target: creds.shown.clone(),
                uid: euid,
                target_uid: creds.uid,
                target_gid: creds.gid,
            });
        }
        Ok(creds)
    }
}

fn lookup(name: &str) -> Result<Credentials, PrivilegeError> {
    let cname = CString::new(name).map_err(|_| PrivilegeError::UnknownUser(name.into()))?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // SAFETY: passwd is plain data that getpwnam_r fills in.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; `buf` outlives it and its length is
        // passed; the strings it stores there are not used after `buf` changes.
        let rc = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(PrivilegeError::Lookup {
                name: name.into(),
                source: io::Error::from_raw_os_error(rc),
            });
        }
        if result.is_null() {
            return Err(PrivilegeError::UnknownUser(name.into()));
        }
        return Ok(Credentials {
            shown: name.into(),
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        });
    }
}

/// Checks a `chroot=` directory before anything is opened, so a typo fails fast.
pub fn check_chroot_dir(path: &Path) -> Result<(), PrivilegeError> {
    let meta = std::fs::metadata(path).map_err(|source| PrivilegeError::ChrootDir {
        path: path.into(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(PrivilegeError::ChrootNotDir(path.into()));
    }
    // SAFETY: geteuid only reads the caller's credentials.
    if unsafe { libc::geteuid() } != 0 {
        return Err(PrivilegeError::ChrootNotRoot(path.into()));
    }
    Ok(())
}

/// The highest capability number plus one that the kernel may know (the bounding-set loop
/// stops at the first number the kernel refuses).
const CAP_LIMIT: libc::c_ulong = 64;
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn clear_bounding_set() -> Result<(), PrivilegeError> {
    for cap in 0..CAP_LIMIT {
        // SAFETY: PR_CAPBSET_DROP takes a capability number and touches no memory.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINVAL) {
                return Ok(()); // past the kernel's last capability
            }
            return Err(PrivilegeError::Syscall {
                what: "prctl(PR_CAPBSET_DROP)",
                source: err,
            });
        }
    }
    Ok(())
}

fn capset_empty() -> Result<(), PrivilegeError> {
    let mut hdr = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads a version-3 header and two data structs, both valid for the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    if rc != 0 {
        return Err(syscall_err("capset"));
    }
    Ok(())
}

fn chroot_into(path: &Path) -> Result<(), PrivilegeError> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| PrivilegeError::ChrootNotDir(path.into()))?;
    // SAFETY: `c` is a NUL-terminated path valid for the call.
    if unsafe { libc::chroot(c.as_ptr()) } != 0 {
        return Err(PrivilegeError::ChrootDir {
            path: path.into(),
            source: io::Error::last_os_error(),
        });
    }
    let root = c"/";
    chdir(root)
}

fn chdir(path: &CStr) -> Result<(), PrivilegeError> {
    // SAFETY: `path` is NUL-terminated and valid for the call.
    if unsafe { libc::chdir(path.as_ptr()) } != 0 {
        return Err(syscall_err("chdir"));
    }
    Ok(())
}

/// Changes root (if asked), switches to `creds` (if given), drops every capability and sets
/// `no_new_privs`. Call it single-threaded, after every host resource is open.
pub fn drop_to(creds: Option<&Credentials>, chroot: Option<&Path>) -> Result<(), PrivilegeError> {
    if let Some(dir) = chroot {
        chroot_into(dir)?;
    }
    // The bounding set needs CAP_SETPCAP, so it goes before the uid switch clears it.
    clear_bounding_set()?;
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL touches no memory.
    if unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(syscall_err("prctl(PR_CAP_AMBIENT_CLEAR_ALL)"));
    }
    if let Some(c) = creds {
        // SAFETY: geteuid only reads the caller's credentials.
        if unsafe { libc::geteuid() } == 0 {
            // SAFETY: an empty list: no pointer is read.
            if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
                return Err(syscall_err("setgroups"));
            }
        }
        // SAFETY: plain id arguments.
        if unsafe { libc::setresgid(c.gid, c.gid, c.gid) } != 0 {
            return Err(syscall_err("setresgid"));
        }
        // SAFETY: plain id arguments.
        if unsafe { libc::setresuid(c.uid, c.uid, c.uid) } != 0 {
            return Err(syscall_err("setresuid"));
        }
    }
    // Leaving uid 0 already emptied the permitted and effective sets; this covers staying at
    // uid 0 (user=0:0, or a jail without user=) and the inheritable set.
    capset_empty()?;
    // SAFETY: PR_SET_NO_NEW_PRIVS touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(syscall_err("prctl(PR_SET_NO_NEW_PRIVS)"));
    }
    verify(creds)
}

/// Reads the credentials back: a failed switch must never go unnoticed.
fn verify(creds: Option<&Credentials>) -> Result<(), PrivilegeError> {
    if let Some(c) = creds {
        let (mut r, mut e, mut s) = (0, 0, 0);
        // SAFETY: the three pointers are valid for the call.
        unsafe { libc::getresuid(&mut r, &mut e, &mut s) };
        let (mut gr, mut ge, mut gs) = (0, 0, 0);
        // SAFETY: as above.
        unsafe { libc::getresgid(&mut gr, &mut ge, &mut gs) };
        if [r, e, s] != [c.uid; 3] || [gr, ge, gs] != [c.gid; 3] {
            return Err(PrivilegeError::Check(format!(
                "uids {r}/{e}/{s} gids {gr}/{ge}/{gs} after switching to {}:{}",
                c.uid, c.gid
            )));
        }
    }
    let mut hdr = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two data structs into `data`, which is valid for the call.
    if unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) } != 0 {
        return Err(syscall_err("capget"));
    }
    if data
        .iter()
        .any(|d| d.effective | d.permitted | d.inheritable != 0)
    {
        return Err(PrivilegeError::Check("capabilities remain".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_ids_need_no_lookup() {
        // SAFETY: getuid/getgid only read the caller's credentials.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };

        let c = Credentials::resolve(&RunAsUser::Ids { uid, gid }).unwrap();

        assert_eq!((c.uid, c.gid), (uid, gid));
    }

    #[test]
    fn root_resolves_by_name() {
        let c = Credentials::resolve(&RunAsUser::Name("root".into()));

        // Only root may switch to root; anyone else is told why.
        match c {
            Ok(c) => assert_eq!((c.uid, c.gid), (0, 0)),
            Err(e) => assert!(matches!(e, PrivilegeError::NotRoot { .. }), "{e}"),
        }
    }

    #[test]
    fn unknown_user_is_named() {
        let err =
            Credentials::resolve(&RunAsUser::Name("no-such-user-rampart".into())).unwrap_err();

        assert_eq!(
            err.to_string(),
            "-run-with user=no-such-user-rampart: no such user"
        );
    }

    #[test]
    fn missing_chroot_dir_is_named() {
        let err = check_chroot_dir(Path::new("/nonexistent/rampart-root")).unwrap_err();

        assert!(
            err.to_string()
                .starts_with("-run-with chroot=/nonexistent/rampart-root: "),
            "{err}"
        );
    }
}
