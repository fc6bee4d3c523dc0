//! The supervised child: with a jail or cgroup limits, rampart forks once its host resources
//! are open. The child runs the VM (as PID 1 of a new PID namespace when jailed); the parent —
//! the process the user or management tool started — stays outside, relays SIGINT, SIGTERM and
//! SIGHUP to the child, and when the child ends removes what only it can (the per-VM cgroup,
//! socket files the jailed child cannot reach) and exits with the child's status: the same
//! exit code, or the same fatal signal raised on itself.

use std::io;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum SupervisorError {
    #[error(
        "cannot fork the supervised VM process: {0} threads already run (it must happen \
         before any thread starts)"
    )]
    Threaded(usize),
    #[error("starting the supervised VM process: {what}: {source}")]
    Syscall {
        what: &'static str,
        source: io::Error,
    },
}

fn err(what: &'static str) -> SupervisorError {
    SupervisorError::Syscall {
        what,
        source: io::Error::last_os_error(),
    }
}

/// The signals the parent relays to the child.
const RELAYED: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame.
    unsafe { libc::sigemptyset(&mut set) };
    for &s in signals {
        // SAFETY: as above; `s` is a valid signal number.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    set
}

/// The number of threads of this process (from `/proc/self/task`).
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count())
}

/// What the parent does once the child has ended, before it exits.
pub type Cleanup = Box<dyn FnOnce()>;

/// Forks the supervised child; returns in the child only. With `new_pid_ns` the child is PID 1
/// of a new PID namespace. The parent waits for the child (see the module documentation) and
/// never returns.
pub fn fork_supervised(new_pid_ns: bool, cleanup: Cleanup) -> Result<(), SupervisorError> {
    let threads = thread_count();
    if threads != 1 {
        return Err(SupervisorError::Threaded(threads));
    }
    // SIGCHLD joins the relayed signals, blocked so that sigwaitinfo picks them up in order.
    let mut all = RELAYED.to_vec();
    all.push(libc::SIGCHLD);
    let set = sigset(&all);
    // SAFETY: `set` is initialised; a null old set is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(SupervisorError::Syscall {
            what: "blocking signals",
            source: io::Error::from_raw_os_error(rc),
        });
    }
    // SAFETY: unshare takes flags only.
    if new_pid_ns && unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(err("unshare(PID namespace)"));
    }
    // SAFETY: the process is single-threaded (checked above), so the child starts consistent.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(err("fork"));
    }
    if pid == 0 {
        // Die with the supervisor from the first instant; the uid switch clears this, so the
        // caller sets it again after the drop (`die_with_parent`).
        die_with_parent()?;
        let chld = sigset(&[libc::SIGCHLD]);
        // SAFETY: `chld` is initialised.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &chld, std::ptr::null_mut()) };
        return Ok(());
    }
    supervise(pid, &set, cleanup)
}

fn supervise(child: libc::pid_t, set: &libc::sigset_t, cleanup: Cleanup) -> ! {
    tracing::info!("the VM runs in process {child}; this process supervises it");
    // The parent needs none of the descriptors opened for the VM: close them, so that only the
    // child holds the images, sockets and /dev/kvm.
    // SAFETY: close_range takes plain numbers; nothing in this process uses those descriptors
    // again (this function never returns, and it exits without running destructors).
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    let status = loop {
        // SAFETY: siginfo_t is plain data that sigwaitinfo fills in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` and `info` are valid for the call.
        let sig = unsafe { libc::sigwaitinfo(set, &mut info) };
        if sig < 0 {
            continue; // EINTR
        }
        if RELAYED.contains(&sig) {
            // SAFETY: kill takes plain numbers.
            unsafe { libc::kill(child, sig) };
            continue;
        }
        let mut status = 0;
        // SAFETY: `status` is valid for the call.
        let r = unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) };
        if r == child {
            break status;
        }
    };
    cleanup();
    if libc::WIFEXITED(status) {
        std::process::exit(libc::WEXITSTATUS(status));
    }
    let sig = libc::WTERMSIG(status);
    tracing::error!("the VM process {child} was killed by signal {sig}");
    raise_fatal(sig)
}

/// Ends this process with `sig`, as the child ended, without a core dump of its own.
fn raise_fatal(sig: libc::c_int) -> ! {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `zero` is valid for the call.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
    // SAFETY: restoring the default action and unblocking it touch no memory of ours.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let set = sigset(&[sig]);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
    }
    std::process::exit(128 + sig)
}

/// In the child: die with the supervisor, so that killing the process the user started never
/// leaves the VM running. Set at the fork and again after the uid switch (which clears it).
pub fn die_with_parent() -> Result<(), SupervisorError> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
        return Err(err("prctl(PR_SET_PDEATHSIG)"));
    }
    Ok(())
}
