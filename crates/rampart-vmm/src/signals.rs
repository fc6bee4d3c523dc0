//! Termination signals as file-descriptor events (signalfd), so the VMM's event loop handles
//! SIGINT/SIGTERM/SIGHUP in order with everything else and never in a signal handler.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum SignalError {
    #[error("cannot block termination signals: {0}")]
    Mask(std::io::Error),
    #[error("cannot create a signalfd: {0}")]
    Create(std::io::Error),
}

/// The signals that stop rampart cleanly.
pub const TERMINATION_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// A signalfd for [`TERMINATION_SIGNALS`]. Create it on the main thread before any other thread
/// starts, so that every thread inherits the blocked mask and the signals queue here.
pub struct TerminationSignals {
    fd: File,
}

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame.
    unsafe { libc::sigemptyset(&mut set) };
    for s in TERMINATION_SIGNALS {
        // SAFETY: as above; `s` is a valid signal number.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    set
}

impl TerminationSignals {
    pub fn new() -> Result<Self, SignalError> {
        let set = termination_set();
        // SAFETY: `set` is initialised; a null old-set pointer is allowed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(SignalError::Mask(std::io::Error::from_raw_os_error(rc)));
        }
        // SAFETY: `set` is initialised; -1 asks for a new descriptor.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(SignalError::Create(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { File::from_raw_fd(fd) };
        Ok(TerminationSignals { fd })
    }

    /// Reads one pending signal, if any.
    pub fn read(&mut self) -> Option<i32> {
        let mut buf = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        match self.fd.read(&mut buf) {
            Ok(n) if n == buf.len() => Some(i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]])),
            _ => None,
        }
    }

    /// Restores the signal mask of the calling thread (for child processes and tests).
    pub fn unblock(&self) {
        let set = termination_set();
        // SAFETY: `set` is initialised.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    }
}

impl AsRawFd for TerminationSignals {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
