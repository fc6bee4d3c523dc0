//! Network namespaces for the NIC tests: each test makes its own, with its taps and addresses
//! inside it, so no traffic leaves it; the namespace (and everything in it) is removed when
//! the [`NetNs`] is dropped, also when the test fails.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct NetNs {
    pub name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    /// Creates the namespace with `lo` up. Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN).
    pub fn new(tag: &str) -> NetNs {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "rampart-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// Adds a persistent tap `dev` with address `addr` (CIDR), up.
    pub fn tap(&self, dev: &str, addr: &str) {
        ip(&["-n", &self.name, "tuntap", "add", "dev", dev, "mode", "tap"]);
        ip(&["-n", &self.name, "addr", "add", addr, "dev", dev]);
        ip(&["-n", &self.name, "link", "set", dev, "up"]);
    }

    /// A command run inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &std::ffi::OsStr) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `f` on a thread that has entered the namespace (sockets it makes live there).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open the netns");
            // SAFETY: setns on a namespace descriptor we own; it changes only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }

    /// Opens tap `dev` (in the namespace) the way a manager would for `-netdev tap,fd=N`:
    /// IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, inheritable (no close-on-exec).
    pub fn open_tap_fd(&self, dev: &str) -> OwnedFd {
        let dev = dev.to_string();
        self.spawn(move || {
            // SAFETY: open(2) with a NUL-terminated path; the result is checked.
            let fd: RawFd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR) };
            assert!(fd >= 0, "open /dev/net/tun");
            #[repr(C)]
            struct IfReq {
                name: [u8; 16],
                flags: libc::c_short,
                pad: [u8; 22],
            }
            let mut req = IfReq {
                name: [0; 16],
                flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
                pad: [0; 22],
            };
            req.name[..dev.len()].copy_from_slice(dev.as_bytes());
            // SAFETY: TUNSETIFF with a properly sized ifreq that lives for the call.
            let rc = unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut req) };
            assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
            // SAFETY: `fd` is a fresh descriptor owned by nobody else.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
        .join()
        .expect("open tap")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
