//! The per-VM cgroup: created below the cgroup rampart starts in, with the limits of
//! `-run-with cpu-max=, memory-max=, pids-max=, io-*=`; joined by the process that runs the VM
//! (so every thread it starts, vCPUs included, is inside); removed when the VM has exited.
//!
//! Each controller is used where the host offers it: cgroup v2 when the unified hierarchy has
//! it (`cpu.max`, `memory.max`, `pids.max`, `io.max`), else the v1 hierarchy it is mounted on
//! (`cpu`, `memory`, `pids`, `blkio`). Detection reads `/proc/self/mountinfo`,
//! `/proc/self/cgroup` and `/proc/cgroups` at start (see [`detect`]).

pub mod detect;
mod v1;
mod v2;

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rampart_config::CgroupLimits;
use thiserror::Error;

pub use detect::Hierarchies;

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("reading this process's cgroups: {0}")]
    Detect(io::Error),
    #[error(
        "-run-with {key}: this host has no '{controller}' cgroup controller (neither in the \
         cgroup v2 hierarchy nor mounted as cgroup v1)"
    )]
    NoController {
        key: &'static str,
        controller: &'static str,
    },
    #[error("cgroup {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `value` to the control file `dir/file`.
pub(crate) fn write_file(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(cfg!(test))
        .truncate(cfg!(test))
        .open(&path)
        .map_err(io_err(&path))?;
    f.write_all(value.as_bytes()).map_err(io_err(&path))
}

/// A controller the limits need: its `-run-with` key, v2 name and v1 name.
struct Need {
    key: &'static str,
    v2: &'static str,
    v1: &'static str,
}

fn needs(limits: &CgroupLimits) -> Vec<Need> {
    let mut out = Vec::new();
    let mut add = |on: bool, key, v2, v1| {
        if on {
            out.push(Need { key, v2, v1 });
        }
    };
    add(limits.cpu.is_some(), "cpu-max", "cpu", "cpu");
    add(
        limits.memory_bytes.is_some(),
        "memory-max",
        "memory",
        "memory",
    );
    add(limits.pids.is_some(), "pids-max", "pids", "pids");
    add(limits.io.is_some(), "io-device", "io", "blkio");
    out
}

/// Which version serves one controller.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Placement {
    V2(&'static str),
    V1 {
        controller: &'static str,
        parent: PathBuf,
    },
}

/// The per-VM cgroup directories (one in v2, one per v1 hierarchy used).
#[derive(Debug)]
pub struct VmCgroup {
    /// Directories created, in creation order.
    dirs: Vec<PathBuf>,
    /// The v1 memory or v2 directory whose OOM count is reported at exit.
    memory_dir: Option<(PathBuf, bool)>,
}

impl VmCgroup {
    /// Creates the per-VM cgroup `name` below this process's cgroups in `host` and writes the
    /// limits. On error nothing created is left behind.
    pub fn create(
        host: &Hierarchies,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<VmCgroup, CgroupError> {
        let mut placements = Vec::new();
        for n in needs(limits) {
            if host.v2_dir.is_some() && host.v2_controllers.iter().any(|c| c == n.v2) {
                placements.push(Placement::V2(n.v2));
            } else if let Some(h) = host.v1_with(n.v1) {
                placements.push(Placement::V1 {
                    controller: n.v1,
                    parent: h.dir.clone(),
                });
            } else {
                return Err(CgroupError::NoController {
                    key: n.key,
                    controller: n.v1,
                });
            }
        }
        let mut cg = VmCgroup {
            dirs: Vec::new(),
            memory_dir: None,
        };
        match cg.build(host, name, limits, &placements) {
            Ok(()) => Ok(cg),
            Err(e) => {
                cg.remove();
                Err(e)
            }
        }
    }

    fn mkdir(&mut self, dir: PathBuf) -> Result<PathBuf, CgroupError> {
        if !self.dirs.contains(&dir) {
            std::fs::create_dir(&dir).map_err(io_err(&dir))?;
            self.dirs.push(dir.clone());
        }
        Ok(dir)
    }

    fn build(
        &mut self,
        host: &Hierarchies,
        name: &str,
        limits: &CgroupLimits,
        placements: &[Placement],
    ) -> Result<(), CgroupError> {
        let v2: Vec<&str> = placements
            .iter()
            .filter_map(|p| match p {
                Placement::V2(c) => Some(*c),
                Placement::V1 { .. } => None,
            })
            .collect();
        if let (false, Some(parent)) = (v2.is_empty(), &host.v2_dir) {
            v2::enable_controllers(parent, &v2)?;
            let dir = self.mkdir(parent.join(name))?;
            v2::write_limits(&dir, &v2, limits)?;
            if v2.contains(&"memory") {
                self.memory_dir = Some((dir, true));
            }
        }
        for p in placements {
            if let Placement::V1 { controller, parent } = p {
                let dir = self.mkdir(parent.join(name))?;
                v1::write_limits(&dir, controller, limits)?;
                if *controller == "memory" {
                    self.memory_dir = Some((dir, false));
                }
            }
        }
        Ok(())
    }

    /// The directories of the per-VM cgroup.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Moves the calling process (all its threads, and every thread it starts later) in.
    pub fn join(&self) -> Result<(), CgroupError> {
        join_dirs(&self.dirs)
    }

    /// How many times the kernel's OOM killer acted inside the cgroup (0 if unknown).
    pub fn oom_kills(&self) -> u64 {
        let Some((dir, is_v2)) = &self.memory_dir else {
            return 0;
        };
        let file = if *is_v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(dir.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Removes the directories (the cgroup must be empty of processes); retries briefly, as a
    /// process that has just been reaped may still be leaving its cgroup.
    pub fn remove(&mut self) {
        for dir in self.dirs.drain(..).rev() {
            let mut tries = 0;
            loop {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if tries < 50 && e.raw_os_error() == Some(libc::EBUSY) => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    Err(e) => {
                        tracing::warn!("cannot remove cgroup {}: {e}", dir.display());
                        break;
                    }
                }
            }
        }
    }
}

/// Moves the calling process into the cgroup directories `dirs` (a forked child joins the
/// directories its parent created this way).
pub fn join_dirs(dirs: &[PathBuf]) -> Result<(), CgroupError> {
    for dir in dirs {
        write_file(dir, "cgroup.procs", "0")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
