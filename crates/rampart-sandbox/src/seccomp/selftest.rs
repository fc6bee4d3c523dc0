//! Test-only fault injection, compiled only into debug builds (`cargo build --release` has no
//! trace of it): with `RAMPART_SECCOMP_SELFTEST=ROLE` in the environment, the first thread of
//! that role makes a forbidden system call right after installing its filter, so the
//! integration tests can check that a violation is fatal and logged.

use std::sync::atomic::{AtomicBool, Ordering};

use super::Role;

/// The variable that names the role whose thread must misbehave.
pub const SELFTEST_VAR: &str = "RAMPART_SECCOMP_SELFTEST";

static DONE: AtomicBool = AtomicBool::new(false);

pub(crate) fn maybe_violate(role: Role) {
    let wanted = std::env::var_os(SELFTEST_VAR);
    if wanted.as_deref().and_then(|v| v.to_str()) != Some(role.name()) {
        return;
    }
    if DONE.swap(true, Ordering::Relaxed) {
        return;
    }
    // execve of a path that does not exist: outside every list (the handler ends the process);
    // without a filter it only fails with ENOENT and rampart goes on, so the test fails.
    let path = c"/nonexistent/rampart-seccomp-selftest";
    let argv = [path.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    // SAFETY: path, argv and envp are NUL-terminated and live for the call; the path does
    // not exist, so even an unfiltered call cannot replace the process.
    let rc = unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    tracing::error!(rc, "seccomp self-test: execve was not trapped");
}
