//! Raw mode for the controlling terminal while the guest owns the console, always restored.

use std::os::fd::RawFd;
use std::sync::Mutex;

/// The terminal settings to restore, kept globally so a panic hook can restore them too.
static SAVED: Mutex<Option<(RawFd, libc::termios)>> = Mutex::new(None);

/// Puts `fd` in raw mode if it is a terminal; the returned guard restores it.
pub struct RawTerminal {
    active: bool,
}

impl RawTerminal {
    /// Raw mode for the serial console: every byte, ^C included, goes to the guest.
    pub fn enter(fd: RawFd) -> std::io::Result<RawTerminal> {
        Self::enter_with(fd, false)
    }

    /// Raw mode for the HMP line editor: ^C and ^Z still signal rampart, as QEMU's stdio
    /// chardev (`signal=on`).
    pub fn enter_keeping_signals(fd: RawFd) -> std::io::Result<RawTerminal> {
        Self::enter_with(fd, true)
    }

    /// Whether `fd` was a terminal (and is now in raw mode).
    pub fn is_active(&self) -> bool {
        self.active
    }

    fn enter_with(fd: RawFd, keep_signals: bool) -> std::io::Result<RawTerminal> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(fd) } != 1 {
            return Ok(RawTerminal { active: false });
        }
        // SAFETY: termios is plain data, filled by tcgetattr before use.
        let mut orig: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `orig` is a valid termios for tcgetattr to fill.
        if unsafe { libc::tcgetattr(fd, &mut orig) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut raw = orig;
        // SAFETY: `raw` is a valid termios.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output processing so host log lines still start at column 0.
        raw.c_oflag |= libc::OPOST | libc::ONLCR;
        if keep_signals {
            raw.c_lflag |= libc::ISIG;
        }
        // SAFETY: `raw` is a valid termios derived from the current settings.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some((fd, orig));
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
        Ok(RawTerminal { active: true })
    }
}

/// Restores the saved terminal settings, if any.
pub fn restore() {
    let saved = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some((fd, orig)) = saved {
        // SAFETY: `orig` came from tcgetattr on the same descriptor.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &orig) };
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if self.active {
            restore();
        }
    }
}
