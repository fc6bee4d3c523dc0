//! Opening host files: fd sets (`-add-fd`, `/dev/fdset/N`) for every file name, and the
//! monitor's path policy (`-monitor-path-allow`) for names that come from monitor commands.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use rampart_block::{NameOrigin, Opener, PathOpener};
use rampart_config::VmConfig;
use rampart_sandbox::fdset::{self, FdSets};
use rampart_sandbox::paths::PathPolicy;

/// The process's fd sets, shared by start-up and the monitor.
pub type SharedFdSets = Arc<Mutex<FdSets>>;

/// Takes every `-add-fd` descriptor into its set. Runs first, before rampart opens anything.
pub fn take_fdsets(config: &VmConfig) -> Result<SharedFdSets> {
    let mut sets = FdSets::new();
    for a in &config.add_fds {
        let what = || format!("-add-fd fd={},set={}", a.fd, a.set);
        let fd = fdset::take_inherited(a.fd).with_context(what)?;
        sets.add(Some(a.set), fd, a.opaque.clone())
            .with_context(what)?;
    }
    Ok(Arc::new(Mutex::new(sets)))
}

fn lock(sets: &SharedFdSets) -> std::sync::MutexGuard<'_, FdSets> {
    sets.lock().unwrap_or_else(|e| e.into_inner())
}

/// A duplicate from the fd set `path` names, if it names one.
fn from_fdset(sets: &SharedFdSets, path: &Path, flags: i32) -> Option<io::Result<File>> {
    if !path.starts_with(rampart_block::opener::FDSET_DIR) {
        return None;
    }
    let r = match fdset::fdset_of(path) {
        Ok(Some(set)) => lock(sets).dup_matching(path, set, flags),
        Ok(None) => Err(fdset::FdSetError::BadPath {
            path: path.display().to_string(),
        }),
        Err(e) => Err(e),
    };
    Some(
        r.map(File::from)
            .map_err(|e| io::Error::new(io::ErrorKind::NotFound, e.to_string())),
    )
}

/// The command line's opener: `/dev/fdset/N` from the fd sets, anything else by path.
pub struct StartupOpener(pub SharedFdSets);

impl Opener for StartupOpener {
    fn open(&self, path: &Path, flags: i32, origin: NameOrigin) -> io::Result<File> {
        if path.starts_with(rampart_block::opener::FDSET_DIR) && origin != NameOrigin::Config {
            return Err(rampart_block::opener::fdset_refused(path, origin));
        }
        match from_fdset(&self.0, path, flags) {
            Some(r) => r,
            None => PathOpener.open(path, flags, origin),
        }
    }
}

/// The monitor's opener: `/dev/fdset/N`, or a file beneath an allowed directory.
pub struct MonitorOpener {
    pub sets: SharedFdSets,
    pub policy: PathPolicy,
}

impl Opener for MonitorOpener {
    fn open(&self, path: &Path, flags: i32, origin: NameOrigin) -> io::Result<File> {
        if path.starts_with(rampart_block::opener::FDSET_DIR) && origin != NameOrigin::Config {
            return Err(rampart_block::opener::fdset_refused(path, origin));
        }
        match from_fdset(&self.sets, path, flags) {
            Some(r) => r,
            None => self
                .policy
                .open(path, flags)
                .map(File::from)
                .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e.to_string())),
        }
    }
}

impl MonitorOpener {
    /// Creates (or truncates) a file a monitor command writes (`dump-guest-memory
    /// file:PATH`): a write-only descriptor from an fd set, or a new file beneath a writable
    /// allowed directory.
    pub fn create(&self, path: &Path) -> io::Result<File> {
        match from_fdset(&self.sets, path, libc::O_WRONLY) {
            Some(r) => r,
            None => self
                .policy
                .create(path)
                .map(File::from)
                .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e.to_string())),
        }
    }
}

/// Opens the monitor's allowed directories (at start-up, before any jail).
pub fn monitor_policy(config: &VmConfig) -> Result<PathPolicy> {
    let dirs: Vec<_> = config
        .monitor_paths
        .iter()
        .map(|p| (p.dir.clone(), p.readonly))
        .collect();
    Ok(PathPolicy::new(&dirs)?)
}

/// Opens `-kernel`/`-initrd` (a regular file, read-only).
pub fn open_regular(opener: &dyn Opener, what: &str, path: &Path) -> Result<File> {
    let file = opener
        .open(path, libc::O_RDONLY, NameOrigin::Config)
        .with_context(|| format!("{what} '{}'", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("{what} '{}'", path.display()))?;
    if !meta.is_file() {
        anyhow::bail!("{what} '{}' is not a regular file", path.display());
    }
    Ok(file)
}
