//! The allow-lists, as reviewed data: one entry per system call (or per allowed use of it),
//! each with the reason it is there. Measured with `strace -f` on Linux boots with virtio
//! disks (raw and qcow2), virtio-rng, QMP and HMP clients, stop/cont, a guest reset and
//! power-off, and on the `kvm` test guests (`docs/security.md` §3.1).
//!
//! Never here: `execve`/`execveat` (unless `spawn=allow`), `fork`/`vfork`/process `clone`,
//! `ptrace`, `open`/`openat` (no new paths after start-up), `socket`/`connect`/`bind`,
//! `mount`, `setuid` & co. (unless `elevateprivileges=allow`), `mmap`/`mprotect` with
//! `PROT_EXEC`, `kill`/`tgkill` outside this process.

use rampart_config::{ElevatePrivileges, SandboxConfig};

use super::kvm_ioctls;
use super::Role;

/// Which uses of a system call an entry allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Args {
    /// Every use.
    Any,
    /// Argument `.0` (32-bit) is one of these values.
    OneOf(u8, Vec<u64>),
    /// Argument `.0` has none of the bits of `.1` set.
    Without(u8, u64),
    /// Argument `.0` has every bit of `.1` set.
    With(u8, u64),
    /// Argument `.0` is this process's id (signals only to our own threads).
    OwnProcess(u8),
    /// Argument `.0` (a pointer) is null.
    Null(u8),
    /// Every listed argument has its value (argument index, value).
    AllEq(Vec<(u8, u64)>),
}

/// One allow-list entry.
#[derive(Debug, Clone)]
pub(crate) struct Allow {
    pub nr: i64,
    pub args: Args,
    pub why: &'static str,
}

fn any(nr: i64, why: &'static str) -> Allow {
    Allow {
        nr,
        args: Args::Any,
        why,
    }
}

fn with(nr: i64, args: Args, why: &'static str) -> Allow {
    Allow { nr, args, why }
}

const EXEC_BIT: u64 = libc::PROT_EXEC as u64;

/// What every thread needs: memory, locks, signals, its own exit, and logging to stderr.
fn base() -> Vec<Allow> {
    use libc::*;
    vec![
        any(SYS_futex, "mutexes, condvars, channels, thread join"),
        any(
            SYS_write,
            "eventfds, console output, log lines on stderr (also the SIGSYS line)",
        ),
        any(SYS_read, "eventfds"),
        any(SYS_close, "dropping descriptors"),
        any(SYS_exit, "thread exit"),
        any(SYS_exit_group, "process exit (also after a violation)"),
        any(SYS_rt_sigreturn, "return from the vCPU kick handler"),
        any(SYS_rt_sigprocmask, "glibc masks signals around thread exit"),
        any(
            SYS_sigaltstack,
            "Rust's stack-overflow guard, removed at thread exit",
        ),
        any(
            SYS_restart_syscall,
            "a wait interrupted by the kick signal resumes",
        ),
        any(SYS_sched_yield, "spin-then-park in locks"),
        any(SYS_clock_gettime, "time when the vDSO is unavailable"),
        any(SYS_clock_nanosleep, "short sleeps (thread::sleep)"),
        any(SYS_nanosleep, "short sleeps"),
        any(SYS_gettid, "own thread id"),
        any(SYS_getpid, "own process id (pthread_kill, logs)"),
        any(SYS_getrandom, "HashMap keys, virtio-rng"),
        any(SYS_brk, "malloc"),
        with(
            SYS_mmap,
            Args::Without(2, EXEC_BIT),
            "malloc, stacks; never executable",
        ),
        with(
            SYS_mprotect,
            Args::Without(2, EXEC_BIT),
            "malloc arenas, stack guards; never executable",
        ),
        any(SYS_munmap, "free"),
        any(SYS_mremap, "realloc of large buffers"),
        any(
            SYS_madvise,
            "free (glibc returns thread stacks and arena pages)",
        ),
        with(
            SYS_fcntl,
            Args::OneOf(1, vec![F_GETFD as u64, F_GETFL as u64]),
            "Rust checks descriptors it drops (debug builds)",
        ),
        with(
            SYS_tgkill,
            Args::OwnProcess(0),
            "signals to our own threads only (kicks, abort)",
        ),
    ]
}

/// Reading and writing disk images, opened before the filters went on.
fn image_io() -> Vec<Allow> {
    use libc::*;
    vec![
        any(SYS_pread64, "image reads"),
        any(SYS_pwrite64, "image writes"),
        any(SYS_preadv, "vectored image reads"),
        any(SYS_pwritev, "vectored image writes"),
        any(SYS_fdatasync, "flush"),
        any(SYS_fsync, "flush (qcow2 metadata ordering)"),
        any(
            SYS_fallocate,
            "discard and write-zeroes (punch hole, zero range)",
        ),
        any(SYS_ftruncate, "qcow2 grows its file"),
        any(SYS_lseek, "image size"),
        any(SYS_fstat, "image size"),
        any(
            SYS_newfstatat,
            "fstat through glibc (empty path, AT_EMPTY_PATH)",
        ),
        any(SYS_statx, "std's metadata() on an open file"),
        with(
            SYS_fcntl,
            Args::OneOf(1, vec![F_OFD_GETLK as u64, F_OFD_SETLK as u64]),
            "QEMU's image locks, released at close",
        ),
    ]
}

/// The epoll loops of the VMM, I/O and monitor threads.
fn event_loop() -> Vec<Allow> {
    use libc::*;
    vec![
        any(SYS_epoll_wait, "event loop"),
        any(SYS_epoll_pwait, "event loop (glibc's epoll_wait)"),
        any(SYS_epoll_ctl, "adding and removing descriptors"),
    ]
}

/// Sending on a connected socket (no address: only to the peer it is connected to).
fn send_connected(why: &'static str) -> Allow {
    with(libc::SYS_sendto, Args::Null(4), why)
}

fn vcpu_kvm() -> Vec<Allow> {
    vec![
        with(
            libc::SYS_ioctl,
            Args::OneOf(1, kvm_ioctls::vcpu_thread()),
            "KVM_RUN, register reads, MSI routes and ioeventfds the guest reprograms",
        ),
        send_connected("the UART's output to the serial socket's client"),
    ]
}

fn vcpu_tcg() -> Vec<Allow> {
    // The interpreter only touches memory; device side effects are eventfd writes and console
    // output (base), and the serial socket's client.
    vec![send_connected(
        "the UART's output to the serial socket's client",
    )]
}

fn audit() -> Vec<Allow> {
    // Appends lines to the audit file opened at start (write, in the base); nothing else.
    Vec::new()
}

fn virtio_io() -> Vec<Allow> {
    use libc::*;
    let mut v = event_loop();
    v.extend(image_io());
    v.extend([
        any(
            SYS_timerfd_settime,
            "I/O throttling: a throttled queue waits for its timer",
        ),
        with(
            SYS_ioctl,
            Args::OneOf(1, vec![TUNSETOFFLOAD]),
            "tap: the offloads the guest negotiated",
        ),
        any(
            SYS_writev,
            "tap: a frame written from guest memory in place (header, then its pieces)",
        ),
    ]);
    v
}

fn monitor() -> Vec<Allow> {
    use libc::*;
    let mut v = event_loop();
    v.extend([
        any(SYS_accept4, "a client connects to a monitor socket"),
        any(SYS_recvfrom, "client input"),
        send_connected("replies and events"),
        with(
            SYS_ioctl,
            Args::OneOf(1, vec![FIONBIO]),
            "non-blocking client sockets",
        ),
        with(
            SYS_getsockopt,
            Args::OneOf(2, vec![SO_PEERCRED as u64]),
            "the client's pid/uid for authorization and audit",
        ),
        any(SYS_shutdown, "closing a client"),
        with(
            SYS_setsockopt,
            Args::AllEq(vec![(1, SOL_SOCKET as u64), (2, SO_SNDTIMEO as u64)]),
            "a bounded wait for the last replies at exit",
        ),
        with(
            SYS_setsockopt,
            Args::AllEq(vec![(1, IPPROTO_TCP as u64), (2, TCP_NODELAY as u64)]),
            "TCP monitor replies go out at once",
        ),
        any(
            SYS_getpeername,
            "a TCP client's address (authorization, audit)",
        ),
        any(SYS_writev, "TLS records (rustls writes them vectored)"),
        with(
            SYS_statx,
            Args::With(2, AT_EMPTY_PATH as u64),
            "the authz list file's metadata through its open descriptor (refresh=on)",
        ),
        any(SYS_lseek, "rereading the authz list file from its start"),
        any(SYS_readv, "TLS records (vectored reads)"),
        with(
            SYS_recvmsg,
            Args::OneOf(2, vec![MSG_CMSG_CLOEXEC as u64]),
            "UNIX-socket client input with the descriptors passed as SCM_RIGHTS (getfd, add-fd), received close-on-exec",
        ),
        with(
            SYS_fcntl,
            Args::OneOf(1, vec![F_DUPFD_CLOEXEC as u64]),
            "a duplicate from an fd set (/dev/fdset/N) for blockdev-add and dump-guest-memory",
        ),
    ]);
    v.extend(monitor_block_nodes());
    v
}

/// `blockdev-add` opens, probes and locks images on the monitor thread, and `blockdev-del`
/// closes them (flushing qcow2 metadata): the image calls, on descriptors only.
fn monitor_block_nodes() -> Vec<Allow> {
    use libc::*;
    vec![
        any(SYS_pread64, "blockdev-add reads image headers and metadata"),
        any(
            SYS_pwrite64,
            "qcow2 metadata written back when an added node is closed, or repaired (a dirty \
             lazy-refcount image) when it is added",
        ),
        any(
            SYS_fdatasync,
            "flush of an added node at blockdev-del; ordering of a dirty image's repair",
        ),
        any(SYS_fsync, "qcow2 metadata ordering at blockdev-del"),
        any(SYS_fstat, "an added image's size"),
        with(
            SYS_fcntl,
            Args::OneOf(1, vec![F_OFD_GETLK as u64, F_OFD_SETLK as u64]),
            "QEMU's image locks on an added node, released at blockdev-del",
        ),
    ]
}

/// Files the monitor opens by name, only with `-monitor-path-allow`: `openat2` with
/// `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS` relative to the allowed directories' `O_PATH`
/// descriptors (`rampart_sandbox::paths` is the only caller; the resolve flags sit in a struct
/// a filter cannot read, so the privilege drop and the jail bound what a subverted thread
/// could open with it).
fn monitor_opens_paths() -> Vec<Allow> {
    vec![any(
        libc::SYS_openat2,
        "blockdev-add and dump-guest-memory file:PATH beneath -monitor-path-allow directories",
    )]
}

/// The VMM thread: event loop, console, reset (which builds the VM again and starts new
/// threads), exit. The threads it starts inherit this filter before adding their own, so it
/// also holds what they need.
fn vmm() -> Vec<Allow> {
    use libc::*;
    // What the I/O threads it starts need (they inherit this filter first).
    let mut v = virtio_io();
    v.extend([
        any(
            SYS_timerfd_create,
            "I/O throttling timers when the VM is built again after a reset",
        ),
        any(
            SYS_eventfd2,
            "new eventfds when the VM is built again after a reset",
        ),
        any(
            SYS_epoll_create1,
            "new epoll sets for the rebuilt devices' I/O threads",
        ),
        with(
            SYS_fcntl,
            Args::OneOf(1, vec![F_DUPFD_CLOEXEC as u64]),
            "eventfd clones",
        ),
        with(
            SYS_clone,
            Args::With(0, CLONE_THREAD as u64),
            "new vCPU and I/O threads after a reset (threads only)",
        ),
        any(SYS_set_robust_list, "a new thread starting (glibc)"),
        any(SYS_rseq, "a new thread starting (glibc)"),
        with(
            SYS_sched_getaffinity,
            Args::Any,
            "a new thread starting (glibc)",
        ),
        with(
            SYS_prctl,
            Args::OneOf(0, vec![PR_SET_NAME as u64, PR_SET_NO_NEW_PRIVS as u64]),
            "a new thread names itself and sets no_new_privs before its filter",
        ),
        with(
            SYS_seccomp,
            Args::OneOf(0, vec![SECCOMP_SET_MODE_FILTER as u64]),
            "a new thread adds its (narrower) filter",
        ),
        any(SYS_accept4, "a client connects to the serial socket"),
        any(SYS_recvfrom, "serial socket input"),
        send_connected("serial socket output"),
        with(
            SYS_ioctl,
            Args::OneOf(1, vec![FIONBIO, TCGETS, TCSETS, TCSETSW, TCSETSF]),
            "non-blocking sockets; the terminal restored at exit",
        ),
        any(
            SYS_unlink,
            "removing its own UNIX sockets at exit (QEMU's behaviour)",
        ),
    ]);
    v.extend(vcpu_kvm());
    v.push(with(
        SYS_ioctl,
        Args::OneOf(1, kvm_ioctls::vm_build()),
        "building the VM (at start and on every reset)",
    ));
    v
}

/// QEMU's "obsolete" set, as far as x86-64 has it.
fn obsolete() -> Vec<Allow> {
    use libc::*;
    // create_module, get_kernel_syms and query_module have numbers but no libc constants.
    [SYS__sysctl, 174, 177, 178, SYS_sysfs, SYS_uselib, SYS_ustat]
        .into_iter()
        .map(|nr| any(nr, "obsolete=allow"))
        .collect()
}

fn elevate_privileges() -> Vec<Allow> {
    use libc::*;
    [
        SYS_setuid,
        SYS_setgid,
        SYS_setreuid,
        SYS_setregid,
        SYS_setresuid,
        SYS_setresgid,
        SYS_setgroups,
        SYS_setfsuid,
        SYS_setfsgid,
    ]
    .into_iter()
    .map(|nr| any(nr, "elevateprivileges=allow"))
    .collect()
}

fn spawn() -> Vec<Allow> {
    use libc::*;
    [
        SYS_fork,
        SYS_vfork,
        SYS_clone,
        SYS_execve,
        SYS_execveat,
        SYS_wait4,
        SYS_waitid,
    ]
    .into_iter()
    .map(|nr| any(nr, "spawn=allow"))
    .collect()
}

fn resource_control() -> Vec<Allow> {
    use libc::*;
    [
        SYS_sched_setaffinity,
        SYS_sched_setscheduler,
        SYS_sched_setparam,
        SYS_setpriority,
        SYS_sched_setattr,
        SYS_getpriority,
        SYS_sched_getparam,
        SYS_sched_getscheduler,
        SYS_sched_getattr,
    ]
    .into_iter()
    .map(|nr| any(nr, "resourcecontrol=allow"))
    .collect()
}

/// The whole list of `role`, as `config`'s sub-options loosen it.
#[cfg(test)]
pub(crate) fn allow_list(role: Role, config: &SandboxConfig) -> Vec<Allow> {
    allow_list_with(role, config, &super::Needs::default())
}

/// [`allow_list`], plus what the rest of the configuration (`needs`) requires.
pub(crate) fn allow_list_with(
    role: Role,
    config: &SandboxConfig,
    needs: &super::Needs,
) -> Vec<Allow> {
    let mut v = base_list(role, config);
    if role == Role::Monitor && needs.monitor_opens_paths {
        v.extend(monitor_opens_paths());
    }
    v
}

fn base_list(role: Role, config: &SandboxConfig) -> Vec<Allow> {
    let mut v = base();
    v.extend(match role {
        Role::Vmm => vmm(),
        Role::VcpuKvm => vcpu_kvm(),
        Role::VcpuTcg => vcpu_tcg(),
        Role::VirtioIo => virtio_io(),
        Role::Monitor => monitor(),
        Role::Audit => audit(),
    });
    if config.obsolete.allowed() {
        v.extend(obsolete());
    }
    if config.elevate_privileges == ElevatePrivileges::Allow {
        v.extend(elevate_privileges());
    }
    if config.spawn.allowed() {
        v.extend(spawn());
    }
    if config.resource_control.allowed() {
        v.extend(resource_control());
    }
    v
}
