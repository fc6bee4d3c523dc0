//! The filters are compiled and, for the narrowed rules, installed on a scratch thread with
//! `EPERM` instead of the trap, so a refused call can be observed without ending the test
//! process.

use rampart_config::{ElevatePrivileges, SandboxConfig, SandboxPermission};
use seccompiler::SeccompAction;

use super::rules::allow_list;
use super::*;

fn loosest() -> SandboxConfig {
    SandboxConfig {
        enabled: true,
        obsolete: SandboxPermission::Allow,
        elevate_privileges: ElevatePrivileges::Allow,
        spawn: SandboxPermission::Allow,
        resource_control: SandboxPermission::Allow,
    }
}

/// Runs `f` on a new thread under `role`'s filter (refusals answer `EPERM`) and returns its
/// result.
fn under<T: Send + 'static>(role: Role, f: impl FnOnce() -> T + Send + 'static) -> T {
    let program = bpf::compile_with(
        &allow_list(role, &SandboxConfig::default()),
        role,
        SeccompAction::Errno(libc::EPERM as u32),
    )
    .unwrap();
    std::thread::spawn(move || {
        seccompiler::apply_filter(&program).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// A raw system call's result: `Ok(return value)` or `Err(errno)`.
fn sys(r: libc::c_long) -> Result<libc::c_long, i32> {
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(r)
    }
}

fn mmap(prot: libc::c_int) -> Result<libc::c_long, i32> {
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches no
    // existing memory; it is unmapped below when it succeeds.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    // SAFETY: `p` is the 4 KiB mapping made just above.
    unsafe { libc::munmap(p, 4096) };
    Ok(0)
}

#[test]
fn every_role_compiles_strict_and_loosened() {
    for config in [SandboxConfig::default(), loosest()] {
        let filters = Filters::compile(&config).unwrap();
        for role in Role::ALL {
            let p = filters.program(role);
            assert!(
                !p.is_empty() && p.len() < 4096,
                "{}: {} instructions",
                role.name(),
                p.len()
            );
        }
    }
}

#[test]
fn executable_mappings_are_refused_and_plain_ones_allowed() {
    let (rw, rx, rwx) = under(Role::VcpuTcg, || {
        (
            mmap(libc::PROT_READ | libc::PROT_WRITE),
            mmap(libc::PROT_READ | libc::PROT_EXEC),
            mmap(libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC),
        )
    });

    assert_eq!(rw, Ok(0));
    assert_eq!(rx, Err(libc::EPERM));
    assert_eq!(rwx, Err(libc::EPERM));
}

#[test]
fn no_role_may_open_paths_exec_or_make_sockets() {
    for role in Role::ALL {
        let (open, exec, sock, ptrace) = under(role, || {
            let path = c"/etc/hostname";
            // SAFETY: plain system calls with valid, NUL-terminated strings or no pointers.
            unsafe {
                (
                    sys(libc::syscall(
                        libc::SYS_openat,
                        libc::AT_FDCWD,
                        path.as_ptr(),
                        libc::O_RDONLY,
                    )),
                    sys(libc::syscall(
                        libc::SYS_execve,
                        path.as_ptr(),
                        0usize,
                        0usize,
                    )),
                    sys(libc::syscall(
                        libc::SYS_socket,
                        libc::AF_INET,
                        libc::SOCK_STREAM,
                        0,
                    )),
                    sys(libc::syscall(
                        libc::SYS_ptrace,
                        libc::PTRACE_TRACEME,
                        0,
                        0,
                        0,
                    )),
                )
            }
        });

        assert_eq!(open, Err(libc::EPERM), "{} openat", role.name());
        assert_eq!(exec, Err(libc::EPERM), "{} execve", role.name());
        assert_eq!(sock, Err(libc::EPERM), "{} socket", role.name());
        assert_eq!(ptrace, Err(libc::EPERM), "{} ptrace", role.name());
    }
}

#[test]
fn kvm_vcpu_thread_may_only_use_vcpu_ioctls() {
    let (run, create_vm, tcsets) = under(Role::VcpuKvm, || {
        // SAFETY: ioctls on descriptor -1 touch nothing: the kernel answers EBADF if the
        // filter lets them through.
        unsafe {
            (
                sys(libc::syscall(libc::SYS_ioctl, -1, kvm_ioctls::KVM_RUN(), 0)),
                sys(libc::syscall(
                    libc::SYS_ioctl,
                    -1,
                    kvm_ioctls::KVM_CREATE_VM(),
                    0,
                )),
                sys(libc::syscall(libc::SYS_ioctl, -1, libc::TCSETS, 0)),
            )
        }
    });

    assert_eq!(run, Err(libc::EBADF));
    assert_eq!(create_vm, Err(libc::EPERM));
    assert_eq!(tcsets, Err(libc::EPERM));
}

#[test]
fn signals_only_reach_threads_of_this_process() {
    let (own, other) = under(Role::VcpuTcg, || {
        // SAFETY: signal 0 delivers nothing, it only checks that the target exists.
        unsafe {
            let me = libc::getpid();
            (
                sys(libc::syscall(libc::SYS_tgkill, me, libc::gettid(), 0)),
                sys(libc::syscall(libc::SYS_tgkill, 1, 1, 0)),
            )
        }
    });

    assert_eq!(own, Ok(0));
    assert_eq!(other, Err(libc::EPERM));
}

#[test]
fn clone3_is_answered_enosys_so_glibc_uses_clone() {
    let r = under(Role::Vmm, || {
        // SAFETY: a null argument structure of size 0 is rejected by the kernel (EINVAL) if
        // the filter lets the call through; nothing is created.
        unsafe { sys(libc::syscall(libc::SYS_clone3, 0usize, 0usize)) }
    });

    assert_eq!(r, Err(libc::ENOSYS));
}

#[test]
fn threads_start_under_the_vmm_filter() {
    let started = under(Role::Vmm, || {
        std::thread::spawn(|| 7).join().map_err(|_| ())
    });

    assert_eq!(started, Ok(7));
}

#[test]
fn sub_options_add_their_calls_only_when_allowed() {
    let has =
        |config: &SandboxConfig, nr: i64| allow_list(Role::Vmm, config).iter().any(|a| a.nr == nr);
    let strict = SandboxConfig::default();
    let loose = loosest();

    for nr in [
        libc::SYS_execve,
        libc::SYS_setuid,
        libc::SYS_sched_setaffinity,
        libc::SYS_ustat,
    ] {
        assert!(!has(&strict, nr), "{nr} allowed by default");
        assert!(has(&loose, nr), "{nr} not added when allowed");
    }
}

#[test]
fn every_entry_says_why() {
    for role in Role::ALL {
        for a in allow_list(role, &loosest()) {
            assert!(!a.why.is_empty(), "{}: {} has no reason", role.name(), a.nr);
        }
    }
}

#[test]
fn violation_line_names_the_call_the_thread_and_the_role() {
    let mut name = [0u8; 16];
    name[..5].copy_from_slice(b"vcpu0");

    let (buf, len) = sigsys::violation_line(libc::SYS_execve, &name, Some(Role::VcpuTcg));

    let line = std::str::from_utf8(&buf[..len]).unwrap();
    assert_eq!(
        line,
        "rampart: seccomp: thread 'vcpu0' (role vcpu-tcg) made a forbidden system call: 59 (execve); exiting\n"
    );
}

#[test]
fn syscall_names_come_from_the_kernel_table() {
    assert_eq!(names::name(0), Some("read"));
    assert_eq!(names::name(libc::SYS_ioctl), Some("ioctl"));
    assert_eq!(names::name(libc::SYS_clone3), Some("clone3"));
    assert_eq!(names::name(100_000), None);
    assert_eq!(names::name(-1), None);
}

#[test]
fn sockets_send_only_to_their_connected_peer() {
    let (connected, addressed) = under(Role::Monitor, || {
        // SAFETY: sockaddr_un is plain data; all zeroes is a valid (AF_UNSPEC) value.
        let addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        // SAFETY: descriptor -1 makes the kernel answer EBADF if the filter lets the call
        // through; the buffers are valid for their lengths.
        unsafe {
            (
                sys(libc::syscall(
                    libc::SYS_sendto,
                    -1,
                    b"x".as_ptr(),
                    1,
                    0,
                    0usize,
                    0,
                )),
                sys(libc::syscall(
                    libc::SYS_sendto,
                    -1,
                    b"x".as_ptr(),
                    1,
                    0,
                    &addr as *const libc::sockaddr_un,
                    std::mem::size_of::<libc::sockaddr_un>(),
                )),
            )
        }
    });

    assert_eq!(connected, Err(libc::EBADF));
    assert_eq!(addressed, Err(libc::EPERM));
}

#[test]
fn monitor_stat_by_path_is_refused_but_its_open_files_can_be_stat_ed() {
    let file = std::fs::File::open("/proc/self/exe").unwrap();
    let (by_path, by_fd) = under(Role::Monitor, move || {
        let path = std::path::Path::new("/etc/hostname");
        (
            std::fs::metadata(path)
                .map(|_| ())
                .map_err(|e| e.raw_os_error()),
            file.metadata().map(|_| ()).map_err(|e| e.raw_os_error()),
        )
    });

    assert_eq!(by_path, Err(Some(libc::EACCES)));
    assert_eq!(by_fd, Ok(()));
}

#[test]
fn openat2_is_allowed_only_to_the_monitor_and_only_with_allowed_directories() {
    let has_openat2 = |list: &[super::rules::Allow]| list.iter().any(|a| a.nr == libc::SYS_openat2);
    let needs = Needs {
        monitor_opens_paths: true,
    };
    for role in Role::ALL {
        let config = SandboxConfig::default();
        assert!(!has_openat2(&allow_list(role, &config)), "{}", role.name());
        let with = super::rules::allow_list_with(role, &config, &needs);
        assert_eq!(has_openat2(&with), role == Role::Monitor, "{}", role.name());
    }
}

#[test]
fn the_monitor_receives_descriptors_only_close_on_exec() {
    let list = allow_list(Role::Monitor, &SandboxConfig::default());
    let recvmsg: Vec<_> = list.iter().filter(|a| a.nr == libc::SYS_recvmsg).collect();
    assert_eq!(recvmsg.len(), 1);
    assert_eq!(
        recvmsg[0].args,
        super::rules::Args::OneOf(2, vec![libc::MSG_CMSG_CLOEXEC as u64])
    );
}
