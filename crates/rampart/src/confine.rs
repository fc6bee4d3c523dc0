//! `-run-with`: checked before anything is opened ([`plan`]), applied once every host resource
//! is open and before any thread starts ([`enter`]): the per-VM cgroup, the supervised child
//! (and its PID namespace), the jail, rlimits, then the root change and the privilege drop.

use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use anyhow::{Context, Result};
use rampart_config::{ChardevBackend, RunWithConfig, SerialBackend, VmConfig};
use rampart_sandbox::cgroup::{self, VmCgroup};
use rampart_sandbox::privilege::{self, Credentials};
use rampart_sandbox::{jail, rlimit, supervisor};
use tracing::{error, info};

/// What [`enter`] will do, with the user already looked up (the password database is not
/// reachable once the root changes).
pub struct Plan {
    run_with: RunWithConfig,
    creds: Option<Credentials>,
    /// Socket files the jailed child cannot remove itself; the supervisor does.
    sockets: Vec<PathBuf>,
}

/// Looks up the user and checks the directories, before any resource is opened.
pub fn plan(config: &VmConfig) -> Result<Plan> {
    let rw = &config.run_with;
    let creds = rw.user.as_ref().map(Credentials::resolve).transpose()?;
    if let Some(dir) = &rw.chroot {
        privilege::check_chroot_dir(dir)?;
    }
    if let Some(j) = &rw.jail {
        jail::check_dir(j)?;
    }
    let mut sockets: Vec<PathBuf> = config
        .chardevs
        .iter()
        .filter_map(|c| match &c.backend {
            ChardevBackend::UnixServer { path, .. } => Some(path.clone()),
            ChardevBackend::Stdio | ChardevBackend::TcpServer { .. } => None,
        })
        .collect();
    if let SerialBackend::UnixServer { path, .. } = &config.serial {
        sockets.push(path.clone());
    }
    Ok(Plan {
        run_with: rw.clone(),
        creds,
        sockets,
    })
}

/// Removes the socket files at `paths` (sockets only: anything else is never deleted).
fn remove_sockets(paths: &[PathBuf]) {
    for p in paths {
        if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Applies the plan. Must run while the process is single-threaded. With a jail or cgroup
/// limits, this forks: only the child returns (the parent supervises it and exits with its
/// status).
pub fn enter(plan: Plan) -> Result<()> {
    let rw = &plan.run_with;
    let threads = supervisor::thread_count();
    if threads != 1 {
        anyhow::bail!("-run-with: {threads} threads already run; confinement must come first");
    }
    if rw.supervised() {
        let vm_cgroup = if rw.cgroup.any() {
            let host = cgroup::detect::detect().map_err(cgroup::CgroupError::Detect)?;
            let name = format!("rampart-{}", std::process::id());
            let cg = VmCgroup::create(&host, &name, &rw.cgroup)?;
            for d in cg.dirs() {
                info!("per-VM cgroup: {}", d.display());
            }
            Some(cg)
        } else {
            None
        };
        let jailed = rw.jail.is_some();
        let sockets = if jailed {
            plan.sockets.clone()
        } else {
            Vec::new()
        };
        let mut parent_cg = vm_cgroup.as_ref().map(|c| c.dirs().to_vec());
        let mut for_cleanup = vm_cgroup;
        let cleanup: supervisor::Cleanup = Box::new(move || {
            if let Some(mut cg) = for_cleanup.take() {
                let kills = cg.oom_kills();
                if kills > 0 {
                    error!(
                        "the VM's cgroup reached its memory-max: the kernel's OOM killer acted \
                         {kills} time(s)"
                    );
                }
                cg.remove();
            }
            remove_sockets(&sockets);
        });
        if let Err(e) = supervisor::fork_supervised(jailed, cleanup) {
            // Still the only process: nothing joined the cgroup, remove it.
            if let Some(dirs) = parent_cg.take() {
                for d in dirs.iter().rev() {
                    let _ = std::fs::remove_dir(d);
                }
            }
            return Err(e.into());
        }
        // The child from here on: into the cgroup before the VM allocates anything.
        if let Some(dirs) = parent_cg {
            cgroup::join_dirs(&dirs).context("joining the per-VM cgroup")?;
        }
        if let Some(j) = &rw.jail {
            jail::enter(j)?;
            info!(
                "jail: new mount, PID, IPC, UTS{} namespaces; root is {}",
                if j.netns { ", network" } else { "" },
                j.dir.display()
            );
        }
    }
    rlimit::apply(&rw.rlimits)?;
    let drop_wanted = plan.creds.is_some() || rw.chroot.is_some() || rw.supervised();
    if drop_wanted {
        privilege::drop_to(plan.creds.as_ref(), rw.chroot.as_deref())?;
        match &plan.creds {
            Some(c) => info!(
                "running as uid {} gid {} with no capabilities and no_new_privs",
                c.uid, c.gid
            ),
            None => info!("running with no capabilities and no_new_privs (uid unchanged)"),
        }
    }
    if rw.supervised() {
        supervisor::die_with_parent()?;
    }
    Ok(())
}
