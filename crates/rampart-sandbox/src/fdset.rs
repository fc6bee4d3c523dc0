//! File-descriptor sets (`-add-fd`, QMP `add-fd`/`remove-fd`/`query-fdsets`) and named fds
//! (QMP `getfd`/`closefd`): the way a management tool hands rampart open files instead of
//! paths, so rampart itself needs no access to the file system.
//!
//! A set is a numbered group of descriptors for the same file opened in different modes (say
//! one read-only and one read-write). Wherever a file name is accepted, `/dev/fdset/N` means
//! "a duplicate of the descriptor of set N whose access mode fits": a user that needs to write
//! gets the `O_RDWR` one, a reader the `O_RDONLY` one, and `O_DIRECT` must match too (as in
//! QEMU). The set keeps its own descriptor; the user owns the duplicate, so removing a
//! descriptor from a set never pulls a file away from a disk that is already open.
//!
//! Everything here is bounded: fds held in all sets, named fds per monitor, the length of
//! names and opaque strings.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// Most descriptors held in all fd sets together.
pub const MAX_FDSET_FDS: usize = 256;
/// Most named descriptors (`getfd`) one monitor holds.
pub const MAX_NAMED_FDS: usize = 64;
/// Longest fd name or opaque string.
pub const MAX_FD_STRING: usize = 1024;
/// The file-name prefix that selects an fd set.
pub const FDSET_PREFIX: &str = "/dev/fdset/";

/// What can go wrong with fd sets and named fds. Messages follow QEMU's where QEMU has one.
#[derive(Debug, thiserror::Error)]
pub enum FdSetError {
    #[error("fd {fd} is not open (or not inherited: it has close-on-exec set)")]
    NotInherited { fd: RawFd },
    #[error("fd {fd} is a standard I/O stream; pass a descriptor of 3 or more")]
    StandardStream { fd: RawFd },
    #[error("cannot duplicate fd {fd}: {source}")]
    Dup { fd: RawFd, source: io::Error },
    #[error("too many descriptors in fd sets (the limit is {MAX_FDSET_FDS})")]
    TooManyInSets,
    #[error("too many named descriptors on this monitor (the limit is {MAX_NAMED_FDS})")]
    TooManyNamed,
    #[error("Parameter '{what}' is longer than {MAX_FD_STRING} bytes")]
    TooLong { what: &'static str },
    #[error("Parameter 'fdname' expects a name not starting with a digit")]
    NameStartsWithDigit,
    #[error("File descriptor named '{0}' not found")]
    NotFound(String),
    #[error("'{path}': not a valid fd set name; write /dev/fdset/N with N a set number")]
    BadPath { path: String },
    #[error("'{path}': fd set {set} does not exist (add it with -add-fd or the add-fd command)")]
    NoSuchSet { path: String, set: u64 },
    #[error(
        "'{path}': fd set {set} has no descriptor opened {mode} (the access mode and O_DIRECT \
         must match)"
    )]
    NoMatchingFd {
        path: String,
        set: u64,
        mode: String,
    },
}

/// One descriptor of a set.
#[derive(Debug)]
pub struct SetFd {
    fd: OwnedFd,
    opaque: Option<String>,
}

impl SetFd {
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn opaque(&self) -> Option<&str> {
        self.opaque.as_deref()
    }
}

/// Every fd set of the process, by id. Listed as QEMU 10 lists them: sets in descending id
/// order, each set's descriptors oldest first.
#[derive(Debug, Default)]
pub struct FdSets {
    sets: BTreeMap<u64, Vec<SetFd>>,
}

fn check_len(what: &'static str, s: &str) -> Result<(), FdSetError> {
    if s.len() > MAX_FD_STRING {
        return Err(FdSetError::TooLong { what });
    }
    Ok(())
}

/// `fcntl(fd, F_GETFL)`: the file status flags and access mode.
fn status_flags(fd: RawFd) -> io::Result<i32> {
    // SAFETY: F_GETFL only reads the descriptor's flags; a bad fd is reported as an error.
    let r = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// Duplicates `fd` with close-on-exec set.
pub fn dup_cloexec(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC creates a new descriptor or fails; it touches no memory.
    let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `r` is a descriptor fcntl just created, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// The flags that must match between a set's descriptor and an open request.
fn match_mask() -> i32 {
    libc::O_ACCMODE | libc::O_DIRECT
}

fn mode_text(flags: i32) -> String {
    let acc = match flags & libc::O_ACCMODE {
        libc::O_RDONLY => "read-only",
        libc::O_WRONLY => "write-only",
        _ => "read-write",
    };
    if flags & libc::O_DIRECT != 0 {
        format!("{acc} with O_DIRECT")
    } else {
        acc.to_string()
    }
}

/// The set a `/dev/fdset/N` name selects; `Ok(None)` for any other name.
pub fn fdset_of(path: &Path) -> Result<Option<u64>, FdSetError> {
    let Some(text) = path.to_str() else {
        return Ok(None);
    };
    let Some(rest) = text.strip_prefix(FDSET_PREFIX) else {
        return Ok(None);
    };
    let ok = !rest.is_empty() && rest.len() <= 19 && rest.bytes().all(|b| b.is_ascii_digit());
    match rest.parse::<u64>() {
        Ok(n) if ok && n <= i64::MAX as u64 => Ok(Some(n)),
        _ => Err(FdSetError::BadPath {
            path: text.chars().take(64).collect(),
        }),
    }
}

/// Takes an inherited descriptor (`-add-fd fd=N`): checks that `fd` is open and was inherited
/// (close-on-exec clear, as every descriptor passed across `exec` is, while rampart's own have
/// it set), duplicates it with close-on-exec, and closes the original.
pub fn take_inherited(fd: RawFd) -> Result<OwnedFd, FdSetError> {
    if (0..=2).contains(&fd) {
        return Err(FdSetError::StandardStream { fd });
    }
    // SAFETY: F_GETFD only reads the descriptor's flags; a bad fd is reported as an error.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 || flags & libc::FD_CLOEXEC != 0 {
        return Err(FdSetError::NotInherited { fd });
    }
    let dup = dup_cloexec(fd).map_err(|source| FdSetError::Dup { fd, source })?;
    // SAFETY: `fd` is an inherited descriptor nothing in rampart owns (its close-on-exec flag
    // was clear, which rampart never leaves on its own fds); we hold a duplicate now.
    unsafe { libc::close(fd) };
    Ok(dup)
}

impl FdSets {
    pub fn new() -> FdSets {
        FdSets::default()
    }

    /// Descriptors held in all sets.
    pub fn len(&self) -> usize {
        self.sets.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// Adds `fd` to set `set` (created if needed; with `None`, a new set with the lowest free
    /// id). Returns the set id and the descriptor's number. On error `fd` is closed.
    pub fn add(
        &mut self,
        set: Option<u64>,
        fd: OwnedFd,
        opaque: Option<String>,
    ) -> Result<(u64, RawFd), FdSetError> {
        if let Some(o) = &opaque {
            check_len("opaque", o)?;
        }
        if self.len() >= MAX_FDSET_FDS {
            return Err(FdSetError::TooManyInSets);
        }
        let id = match set {
            Some(id) => id,
            None => (0..)
                .find(|i| !self.sets.contains_key(i))
                .expect("fewer sets than u64 values"),
        };
        let raw = fd.as_raw_fd();
        self.sets.entry(id).or_default().push(SetFd { fd, opaque });
        Ok((id, raw))
    }

    /// Removes (and closes) descriptor `fd` of set `set`, or the whole set when `fd` is None.
    /// Duplicates already handed out stay open with their users.
    pub fn remove(&mut self, set: u64, fd: Option<RawFd>) -> Result<(), FdSetError> {
        let not_found = || {
            FdSetError::NotFound(match fd {
                Some(fd) => format!("fdset-id:{set}, fd:{fd}"),
                None => format!("fdset-id:{set}"),
            })
        };
        let fds = self.sets.get_mut(&set).ok_or_else(not_found)?;
        match fd {
            None => {
                self.sets.remove(&set);
            }
            Some(fd) => {
                let i = fds
                    .iter()
                    .position(|f| f.fd() == fd)
                    .ok_or_else(not_found)?;
                fds.remove(i);
                if fds.is_empty() {
                    self.sets.remove(&set);
                }
            }
        }
        Ok(())
    }

    /// Every set and its descriptors, sets in descending order, oldest descriptor first.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &[SetFd])> {
        self.sets
            .iter()
            .rev()
            .map(|(id, fds)| (*id, fds.as_slice()))
    }

    /// A duplicate (close-on-exec) of the descriptor of set `set` whose access mode and
    /// `O_DIRECT` flag match `flags` (the flags an `open` of the file would use); of several
    /// that match, the newest (as QEMU).
    pub fn dup_matching(&self, path: &Path, set: u64, flags: i32) -> Result<OwnedFd, FdSetError> {
        let shown = path.display().to_string();
        let fds = self.sets.get(&set).ok_or_else(|| FdSetError::NoSuchSet {
            path: shown.clone(),
            set,
        })?;
        for f in fds.iter().rev() {
            let got =
                status_flags(f.fd()).map_err(|source| FdSetError::Dup { fd: f.fd(), source })?;
            if got & match_mask() == flags & match_mask() {
                return dup_cloexec(f.fd())
                    .map_err(|source| FdSetError::Dup { fd: f.fd(), source });
            }
        }
        Err(FdSetError::NoMatchingFd {
            path: shown,
            set,
            mode: mode_text(flags),
        })
    }
}

/// A monitor's named descriptors (`getfd`/`closefd`).
#[derive(Debug, Default)]
pub struct NamedFds {
    fds: BTreeMap<String, OwnedFd>,
}

impl NamedFds {
    /// Keeps `fd` under `name`, replacing (and closing) a descriptor of the same name.
    pub fn insert(&mut self, name: &str, fd: OwnedFd) -> Result<(), FdSetError> {
        check_len("fdname", name)?;
        if name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(FdSetError::NameStartsWithDigit);
        }
        if !self.fds.contains_key(name) && self.fds.len() >= MAX_NAMED_FDS {
            return Err(FdSetError::TooManyNamed);
        }
        self.fds.insert(name.to_string(), fd);
        Ok(())
    }

    /// Closes the descriptor named `name`.
    pub fn close(&mut self, name: &str) -> Result<(), FdSetError> {
        self.fds
            .remove(name)
            .map(drop)
            .ok_or_else(|| FdSetError::NotFound(name.to_string()))
    }

    /// Takes the descriptor named `name` out (for a command that consumes it).
    pub fn take(&mut self, name: &str) -> Result<OwnedFd, FdSetError> {
        self.fds
            .remove(name)
            .ok_or_else(|| FdSetError::NotFound(name.to_string()))
    }

    pub fn len(&self) -> usize {
        self.fds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write;
    use std::os::fd::IntoRawFd;

    /// Tests here check that descriptor numbers are closed: they must not run while another
    /// test of this module opens files (and may be given a just-closed number).
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("rampart-fdset-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        File::create(&p).unwrap().write_all(b"data").unwrap();
        p
    }

    fn open(p: &Path, write: bool) -> OwnedFd {
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(p)
            .unwrap()
            .into()
    }

    fn is_open(fd: RawFd) -> bool {
        // SAFETY: F_GETFD only reads flags.
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    }

    #[test]
    fn fdset_names_parse_and_bad_ones_are_refused() {
        let _g = serial();
        assert_eq!(fdset_of(Path::new("/dev/fdset/0")).unwrap(), Some(0));
        assert_eq!(fdset_of(Path::new("/dev/fdset/42")).unwrap(), Some(42));
        assert_eq!(fdset_of(Path::new("/tmp/disk.img")).unwrap(), None);
        for bad in [
            "/dev/fdset/",
            "/dev/fdset/x",
            "/dev/fdset/1/..",
            "/dev/fdset/-1",
        ] {
            let e = fdset_of(Path::new(bad)).unwrap_err();
            assert!(e.to_string().contains("/dev/fdset/N"), "{bad}: {e}");
        }
        assert!(fdset_of(Path::new("/dev/fdset/99999999999999999999")).is_err());
    }

    #[test]
    fn the_descriptor_whose_access_mode_fits_is_duplicated() {
        let _g = serial();
        let p = scratch("modes");
        let mut sets = FdSets::new();
        let (set, ro) = sets.add(Some(3), open(&p, false), None).unwrap();
        let (_, rw) = sets
            .add(Some(3), open(&p, true), Some("rw".into()))
            .unwrap();
        assert_eq!(set, 3);

        let got_rw = sets.dup_matching(&p, 3, libc::O_RDWR).unwrap();
        let got_ro = sets.dup_matching(&p, 3, libc::O_RDONLY).unwrap();

        assert_eq!(
            status_flags(got_rw.as_raw_fd()).unwrap() & libc::O_ACCMODE,
            libc::O_RDWR
        );
        assert_eq!(
            status_flags(got_ro.as_raw_fd()).unwrap() & libc::O_ACCMODE,
            libc::O_RDONLY
        );
        assert_ne!(got_rw.as_raw_fd(), rw);
        assert_ne!(got_ro.as_raw_fd(), ro);
        // SAFETY: F_GETFD only reads flags.
        let cloexec = unsafe { libc::fcntl(got_rw.as_raw_fd(), libc::F_GETFD) };
        assert_ne!(cloexec & libc::FD_CLOEXEC, 0);
    }

    #[test]
    fn no_matching_mode_or_set_is_an_error_naming_both() {
        let _g = serial();
        let p = scratch("nomatch");
        let mut sets = FdSets::new();
        sets.add(Some(1), open(&p, false), None).unwrap();
        let e = sets
            .dup_matching(Path::new("/dev/fdset/1"), 1, libc::O_RDWR)
            .unwrap_err()
            .to_string();
        assert!(e.contains("fd set 1") && e.contains("read-write"), "{e}");
        let e = sets
            .dup_matching(Path::new("/dev/fdset/2"), 2, libc::O_RDONLY)
            .unwrap_err()
            .to_string();
        assert!(e.contains("fd set 2 does not exist"), "{e}");
        let e = sets
            .dup_matching(
                Path::new("/dev/fdset/1"),
                1,
                libc::O_RDONLY | libc::O_DIRECT,
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("O_DIRECT"), "{e}");
    }

    #[test]
    fn new_sets_take_the_lowest_free_id_and_list_as_qemu_10_does() {
        let _g = serial();
        let p = scratch("ids");
        let mut sets = FdSets::new();
        sets.add(Some(0), open(&p, false), None).unwrap();
        sets.add(Some(2), open(&p, false), None).unwrap();
        let (id, _) = sets.add(None, open(&p, false), None).unwrap();
        assert_eq!(id, 1);
        let (_, newest) = sets.add(Some(2), open(&p, true), Some("x".into())).unwrap();

        let listed: Vec<(u64, Vec<RawFd>)> = sets
            .iter()
            .map(|(id, fds)| (id, fds.iter().map(SetFd::fd).collect()))
            .collect();
        assert_eq!(listed.iter().map(|l| l.0).collect::<Vec<_>>(), [2, 1, 0]);
        assert_eq!(listed[0].1.len(), 2);
        assert_eq!(listed[0].1[1], newest, "oldest first");
        assert_eq!(sets.iter().next().unwrap().1[1].opaque(), Some("x"));
    }

    #[test]
    fn removing_closes_the_descriptor_and_empty_sets_vanish() {
        let _g = serial();
        let p = scratch("remove");
        let mut sets = FdSets::new();
        let (_, a) = sets.add(Some(5), open(&p, false), None).unwrap();
        let (_, b) = sets.add(Some(5), open(&p, true), None).unwrap();
        let dup = sets.dup_matching(&p, 5, libc::O_RDONLY).unwrap();

        sets.remove(5, Some(a)).unwrap();
        assert!(!is_open(a));
        assert!(is_open(dup.as_raw_fd()), "a user's duplicate stays open");
        let e = sets.remove(5, Some(a)).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("File descriptor named 'fdset-id:5, fd:{a}' not found")
        );

        sets.remove(5, None).unwrap();
        assert!(!is_open(b));
        assert!(sets.is_empty());
        let e = sets.remove(5, None).unwrap_err().to_string();
        assert_eq!(e, "File descriptor named 'fdset-id:5' not found");
    }

    #[test]
    fn sets_hold_a_bounded_number_of_descriptors() {
        let _g = serial();
        let p = scratch("cap");
        let mut sets = FdSets::new();
        for _ in 0..MAX_FDSET_FDS {
            sets.add(Some(0), open(&p, false), None).unwrap();
        }
        let extra = open(&p, false);
        let raw = extra.as_raw_fd();
        assert!(matches!(
            sets.add(Some(0), extra, None),
            Err(FdSetError::TooManyInSets)
        ));
        assert!(!is_open(raw), "a refused descriptor is closed, not leaked");
    }

    #[test]
    fn inherited_descriptors_are_taken_and_the_original_closed() {
        let _g = serial();
        let p = scratch("inherit");
        let f = File::open(&p).unwrap().into_raw_fd();
        // Clear close-on-exec, as an inherited descriptor has it.
        // SAFETY: F_SETFD on a descriptor this test owns.
        unsafe { libc::fcntl(f, libc::F_SETFD, 0) };

        let taken = take_inherited(f).unwrap();

        // SAFETY: F_GETFD only reads flags.
        let flags = unsafe { libc::fcntl(f, libc::F_GETFD) };
        assert!(flags < 0, "the original descriptor is closed");
        assert!(is_open(taken.as_raw_fd()));
    }

    #[test]
    fn own_and_closed_descriptors_are_not_taken() {
        let _g = serial();
        let p = scratch("own");
        let own = File::open(&p).unwrap();
        let e = take_inherited(own.as_raw_fd()).unwrap_err().to_string();
        assert!(e.contains("not open (or not inherited"), "{e}");
        assert!(is_open(own.as_raw_fd()));
        assert!(matches!(
            take_inherited(1),
            Err(FdSetError::StandardStream { fd: 1 })
        ));
        assert!(take_inherited(100_000).is_err());
    }

    #[test]
    fn named_fds_follow_qemus_rules() {
        let _g = serial();
        let p = scratch("named");
        let mut n = NamedFds::default();
        let first = open(&p, false);
        let first_raw = first.as_raw_fd();
        n.insert("disk", first).unwrap();
        n.insert("disk", open(&p, false)).unwrap();
        assert!(!is_open(first_raw), "a replaced descriptor is closed");
        assert_eq!(n.len(), 1);
        assert!(matches!(
            n.insert("1abc", open(&p, false)),
            Err(FdSetError::NameStartsWithDigit)
        ));
        assert_eq!(
            n.close("nope").unwrap_err().to_string(),
            "File descriptor named 'nope' not found"
        );
        n.close("disk").unwrap();
        assert!(n.is_empty());
    }
}
