//! Resource limits (`-run-with rlimit-nofile=, rlimit-fsize=, ...`), set as both the soft and
//! the hard limit, so the process cannot raise them again.

use std::io;

use rampart_config::Rlimit;
use thiserror::Error;

#[derive(Debug, Error)]
#[error("-run-with {key}={value}: {source}")]
pub struct RlimitError {
    key: &'static str,
    value: u64,
    source: io::Error,
}

fn resource(r: Rlimit) -> libc::__rlimit_resource_t {
    match r {
        Rlimit::Nofile => libc::RLIMIT_NOFILE,
        Rlimit::Fsize => libc::RLIMIT_FSIZE,
        Rlimit::Core => libc::RLIMIT_CORE,
        Rlimit::Nproc => libc::RLIMIT_NPROC,
        Rlimit::Memlock => libc::RLIMIT_MEMLOCK,
        Rlimit::As => libc::RLIMIT_AS,
    }
}

/// Sets every limit. With a file-size limit, SIGXFSZ is ignored: a write past it fails with
/// `EFBIG` (an I/O error the guest sees) instead of killing rampart.
pub fn apply(limits: &[(Rlimit, u64)]) -> Result<(), RlimitError> {
    for &(r, value) in limits {
        let lim = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: `lim` is valid for the call.
        if unsafe { libc::setrlimit(resource(r), &lim) } != 0 {
            return Err(RlimitError {
                key: r.key(),
                value,
                source: io::Error::last_os_error(),
            });
        }
        if r == Rlimit::Fsize {
            // SAFETY: SIG_IGN installs no handler code.
            unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
        }
    }
    Ok(())
}
