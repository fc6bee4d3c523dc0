//! Seccomp-BPF allow-lists per thread role, built with `seccompiler`.
//!
//! Every rampart thread has a role ([`Role`]) and installs that role's filter itself, first
//! thing, before it runs guest code or serves a client ([`enter`]). The lists are data
//! (`rules.rs`), one line per system call with the reason it is there, narrowed by argument
//! where it matters (ioctl numbers, mmap/mprotect without `PROT_EXEC`, clone only for
//! threads, tgkill only inside this process).
//!
//! A thread inherits the filters of the thread that creates it, and the kernel applies all of
//! a thread's filters (the strictest answer wins). The VMM thread creates the vCPU and I/O
//! threads at start-up and again on every guest reset, so its list covers what it needs to
//! build a VM and start them; each of those threads then adds its own, narrower list.
//!
//! A system call outside a thread's list traps (`SECCOMP_RET_TRAP`): the SIGSYS handler writes
//! one line naming the call (number and name), the thread and its role to stderr, then ends the
//! process with status [`VIOLATION_EXIT_STATUS`]. See `docs/security.md` §3.1.

mod bpf;
mod kvm_ioctls;
mod names;
mod rules;
#[cfg(debug_assertions)]
mod selftest;
mod sigsys;
#[cfg(debug_assertions)]
pub use selftest::SELFTEST_VAR;
#[cfg(test)]
mod tests;

use std::sync::OnceLock;

use rampart_config::SandboxConfig;
use seccompiler::BpfProgram;
use thiserror::Error;

pub use sigsys::VIOLATION_EXIT_STATUS;

/// What a thread does, and so which system calls it may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The main thread once start-up is done: the event loop, the console, building the VM
    /// again on a guest reset, starting and stopping the other threads.
    Vmm,
    /// A vCPU thread under `kvm`: `KVM_RUN` and the exits it handles.
    VcpuKvm,
    /// A vCPU thread under `tcg`: the interpreter, which only touches memory, plus the eventfd
    /// writes and console output of the devices it reaches through MMIO and port I/O.
    VcpuTcg,
    /// A virtio device's I/O thread: its epoll loop and the disk-image I/O.
    VirtioIo,
    /// The monitor thread: its sockets and the control channel to the VMM thread.
    Monitor,
    /// The audit log's writer thread (`-audit`): appends to the file opened at start.
    Audit,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Vmm,
        Role::VcpuKvm,
        Role::VcpuTcg,
        Role::VirtioIo,
        Role::Monitor,
        Role::Audit,
    ];

    /// The role's name in logs and documentation.
    pub fn name(self) -> &'static str {
        match self {
            Role::Vmm => "vmm",
            Role::VcpuKvm => "vcpu-kvm",
            Role::VcpuTcg => "vcpu-tcg",
            Role::VirtioIo => "virtio-io",
            Role::Monitor => "monitor",
            Role::Audit => "audit",
        }
    }

    fn index(self) -> usize {
        match self {
            Role::Vmm => 0,
            Role::VcpuKvm => 1,
            Role::VcpuTcg => 2,
            Role::VirtioIo => 3,
            Role::Monitor => 4,
            Role::Audit => 5,
        }
    }
}

#[derive(Debug, Error)]
pub enum SeccompError {
    #[error("seccomp filter of role '{role}': {source}")]
    Build {
        role: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("cannot install the seccomp filter of role '{role}': {source}")]
    Apply {
        role: &'static str,
        #[source]
        source: seccompiler::Error,
    },
    #[error("this kernel has no seccomp filters (CONFIG_SECCOMP_FILTER): {0}; use -sandbox off to run without them")]
    Unsupported(std::io::Error),
    #[error(
        "cannot prepare the process for its seccomp filters (SIGSYS handler, thread set-up): {0}"
    )]
    Handler(std::io::Error),
    #[error("the seccomp filters were already prepared")]
    AlreadyPrepared,
}

/// What the rest of the configuration needs from the allow-lists, beyond `-sandbox`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// `-monitor-path-allow` was given: the monitor opens files beneath those directories
    /// (`openat2`).
    pub monitor_opens_paths: bool,
}

/// The compiled filters of every role, ready to install.
pub struct Filters {
    programs: Vec<BpfProgram>,
}

impl Filters {
    /// Compiles every role's list as `config` loosens it.
    pub fn compile(config: &SandboxConfig) -> Result<Filters, SeccompError> {
        Filters::compile_with(config, &Needs::default())
    }

    /// [`Filters::compile`], with what the rest of the configuration needs.
    pub fn compile_with(config: &SandboxConfig, needs: &Needs) -> Result<Filters, SeccompError> {
        let programs = Role::ALL
            .iter()
            .map(|&role| {
                let list = rules::allow_list_with(role, config, needs);
                for a in &list {
                    tracing::trace!(
                        role = role.name(),
                        syscall = names::name(a.nr).unwrap_or("?"),
                        args = ?a.args,
                        why = a.why,
                        "seccomp allow-list entry"
                    );
                }
                bpf::compile(&list, role)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Filters { programs })
    }

    /// The BPF program of `role`.
    pub fn program(&self, role: Role) -> &BpfProgram {
        &self.programs[role.index()]
    }
}

/// The process-wide sandbox state, set once by [`prepare`].
enum State {
    Off,
    On(Filters),
}

static STATE: OnceLock<State> = OnceLock::new();

/// Prepares the sandbox for the whole process, on the main thread before any other thread
/// starts: compiles every role's filter and installs the SIGSYS handler (when `config.enabled`).
/// Without this call (library use, unit tests of other crates) [`enter`] does nothing.
pub fn prepare(config: &SandboxConfig) -> Result<(), SeccompError> {
    prepare_with(config, &Needs::default())
}

/// [`prepare`], with what the rest of the configuration needs from the lists.
pub fn prepare_with(config: &SandboxConfig, needs: &Needs) -> Result<(), SeccompError> {
    let state = if config.enabled {
        check_kernel_support()?;
        let filters = Filters::compile_with(config, needs)?;
        sigsys::install_handler().map_err(SeccompError::Handler)?;
        warm_up_libc().map_err(SeccompError::Handler)?;
        State::On(filters)
    } else {
        State::Off
    };
    STATE.set(state).map_err(|_| SeccompError::AlreadyPrepared)
}

/// Makes glibc do now two things it does lazily that no list should allow: it installs a
/// signal handler of its own on the first `pthread_create` (`rt_sigaction`), and it reads
/// `/proc/sys/vm/overcommit_memory` (`openat`) the first time a thread's malloc heap shrinks.
/// A short-lived thread allocates and frees 2 MiB in blocks below malloc's mmap threshold
/// (zeroed: calloc leaves fresh heap pages untouched, so this costs no resident memory).
///
/// A heap only shrinks once its free top exceeds malloc's trim threshold, which glibc raises
/// to twice the size of any mmap-backed block freed (a qcow2 image's first cluster, up to
/// 2 MiB, is read into one at open). So `main` calls this first thing, before anything
/// large is allocated and freed; [`prepare`] calls it again for other users (harmless).
pub fn warm_up_libc() -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("seccomp-prep".into())
        .spawn(|| {
            let blocks: Vec<Vec<u8>> = (0..32).map(|_| vec![0u8; 64 << 10]).collect();
            drop(std::hint::black_box(blocks));
        })
        .and_then(|t| {
            t.join()
                .map_err(|_| std::io::Error::other("thread panicked"))
        })
}

/// Whether [`prepare`] turned the filters on.
pub fn enabled() -> bool {
    matches!(STATE.get(), Some(State::On(_)))
}

fn check_kernel_support() -> Result<(), SeccompError> {
    // SAFETY: PR_GET_SECCOMP takes no pointer arguments and only reports the calling thread's
    // seccomp mode.
    let rc = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
    if rc < 0 {
        return Err(SeccompError::Unsupported(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Installs the filter of `role` on the calling thread (after [`prepare`] with the sandbox
/// on; otherwise nothing). A thread that cannot install its filter must not go on: this ends
/// the process with an error message.
pub fn enter(role: Role) {
    if let Err(e) = try_enter(role) {
        tracing::error!("{e}; exiting");
        // The process cannot be confined as configured: stop at once, as for a violation.
        std::process::exit(1);
    }
}

/// [`enter`], returning the error instead of exiting.
pub fn try_enter(role: Role) -> Result<(), SeccompError> {
    let Some(State::On(filters)) = STATE.get() else {
        return Ok(());
    };
    sigsys::remember_thread(role);
    seccompiler::apply_filter(filters.program(role)).map_err(|source| SeccompError::Apply {
        role: role.name(),
        source,
    })?;
    #[cfg(debug_assertions)]
    selftest::maybe_violate(role);
    Ok(())
}
