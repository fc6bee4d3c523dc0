//! What happens on a violation: the filter answers `SECCOMP_RET_TRAP`, the kernel sends SIGSYS
//! to the thread, and this handler writes one line naming the system call, the thread and its
//! role, then ends the whole process.
//!
//! The handler is async-signal-safe: it reads a thread-local set before the filter was
//! installed, formats into a stack buffer, and makes only `write` and `exit_group`, which every
//! role allows.

use std::cell::Cell;

use super::{names, Role};

/// The exit status after a violation: 128 + SIGSYS, what a shell reports for a process killed
/// by SIGSYS (the default action of the signal).
pub const VIOLATION_EXIT_STATUS: i32 = 128 + libc::SIGSYS;

/// Longest thread name Linux keeps (15 bytes and a NUL).
const NAME_LEN: usize = 16;

thread_local! {
    /// This thread's name and role, for the violation line (set by [`remember_thread`]).
    static THREAD: Cell<([u8; NAME_LEN], Option<Role>)> = const { Cell::new(([0; NAME_LEN], None)) };
}

/// Records the calling thread's name and role before its filter goes on.
pub(crate) fn remember_thread(role: Role) {
    let mut name = [0u8; NAME_LEN];
    let current = std::thread::current();
    let given = current.name().unwrap_or("rampart").as_bytes();
    let n = given.len().min(NAME_LEN - 1);
    name[..n].copy_from_slice(&given[..n]);
    THREAD.with(|t| t.set((name, Some(role))));
}

/// A fixed buffer that formatting writes into without allocating.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn push_number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The violation line for system call `nr` on thread `name` of `role`.
pub(crate) fn violation_line(nr: i64, name: &[u8], role: Option<Role>) -> ([u8; 256], usize) {
    let mut line = Line {
        buf: [0; 256],
        len: 0,
    };
    line.push(b"rampart: seccomp: thread '");
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    line.push(&name[..end]);
    line.push(b"' (role ");
    line.push(role.map_or("unknown", Role::name).as_bytes());
    line.push(b") made a forbidden system call: ");
    line.push_number(u64::try_from(nr).unwrap_or(u64::MAX));
    if let Some(n) = names::name(nr) {
        line.push(b" (");
        line.push(n.as_bytes());
        line.push(b")");
    }
    line.push(b"; exiting\n");
    (line.buf, line.len)
}

/// The layout of `siginfo_t` for SIGSYS on x86-64 (`_sigsys` in the kernel's union): three
/// ints, padding to 8 bytes, then the call address, the system call number and the audit arch.
#[repr(C)]
struct SigsysInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    call_addr: *mut libc::c_void,
    syscall: i32,
    arch: u32,
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a valid siginfo_t (SA_SIGINFO); for SIGSYS its union holds
        // `_sigsys`, whose layout `SigsysInfo` mirrors; siginfo_t is larger than SigsysInfo.
        i64::from(unsafe { (*info.cast::<SigsysInfo>()).syscall })
    };
    let (name, role) = THREAD.with(Cell::get);
    let (buf, len) = violation_line(nr, &name, role);
    // SAFETY: write and _exit are async-signal-safe; `buf` is a live stack buffer of at least
    // `len` bytes.
    unsafe {
        libc::write(libc::STDERR_FILENO, buf.as_ptr().cast(), len);
        libc::_exit(VIOLATION_EXIT_STATUS);
    }
}

/// Installs the SIGSYS handler for the whole process (before any filter goes on).
pub(crate) fn install_handler() -> std::io::Result<()> {
    // SAFETY: sigaction is plain data; zeroed is a valid starting value that is filled in
    // below.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = on_sigsys;
    act.sa_sigaction = handler as libc::sighandler_t;
    act.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `act.sa_mask` is a valid sigset_t owned by this frame.
    unsafe { libc::sigemptyset(&mut act.sa_mask) };
    // SAFETY: `act` is initialised and the handler is an `extern "C"` function that stays
    // valid for the life of the process; a null old-action pointer is allowed.
    if unsafe { libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
