//! The tap back end: a Linux TAP interface opened through `/dev/net/tun` (or passed in as a
//! descriptor by a manager) with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, so every frame carries
//! a 12-byte virtio-net header (checksum and segmentation offload pass through unchanged).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

use tracing::debug;
use vm_memory::volatile_memory::PtrGuard;
use vm_memory::VolatileSlice;

/// Most pieces of guest memory one frame is written from (see `virtio::net`'s transmit).
pub const MAX_PIECES: usize = 64;

/// Size of the virtio-net header on the tap (virtio 1.x: `virtio_net_hdr_mrg_rxbuf`).
pub const VNET_HDR_LEN: usize = 12;
/// Longest interface name (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = libc::IFNAMSIZ - 1;

/// Errors opening or configuring a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap: cannot open /dev/net/tun: {0}")]
    OpenTun(std::io::Error),
    #[error("tap: interface name '{0}' is longer than {IFNAME_MAX} bytes or contains '/', NUL or spaces")]
    BadName(String),
    #[error("tap: interface '{0}' does not exist and creating it needs CAP_NET_ADMIN, which rampart does not have (create it first: ip tuntap add dev {0} mode tap user UID)")]
    CannotCreate(String),
    #[error("tap: creating an interface needs CAP_NET_ADMIN, which rampart does not have; name an existing tap with ifname= or pass one with fd=")]
    CannotCreateUnnamed,
    #[error("tap: no permission to attach to interface '{0}' (is it a tap owned by this user?)")]
    NoPermission(String),
    #[error("tap: TUNSETIFF on '{name}' failed: {source}")]
    SetIff {
        name: String,
        source: std::io::Error,
    },
    #[error("tap: fd={fd} is not an open descriptor")]
    BadFd { fd: RawFd },
    #[error("tap: fd={fd} must not be a standard stream")]
    StdioFd { fd: RawFd },
    #[error("tap: fd={fd} is not a tap device (/dev/net/tun attached to an interface): {why}")]
    NotTap { fd: RawFd, why: String },
    #[error("tap: {what} on '{name}' failed: {source}")]
    Ioctl {
        what: &'static str,
        name: String,
        source: std::io::Error,
    },
}

/// `struct ifreq` as far as TUNSETIFF/TUNGETIFF use it: the name and the flags.
#[repr(C)]
#[derive(Clone, Copy)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str, flags: libc::c_int) -> IfReq {
        let mut r = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: flags as libc::c_short,
            _pad: [0; 22],
        };
        r.name[..name.len()].copy_from_slice(name.as_bytes());
        r
    }

    fn name(&self) -> String {
        let end = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

/// Whether `name` is acceptable as an interface name.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace() || b == b':')
}

fn interface_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// An open tap interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

impl Tap {
    /// Opens `/dev/net/tun` and attaches to `ifname` (an existing tap, or a new one when
    /// rampart has CAP_NET_ADMIN; `None` lets the kernel pick `tapN`).
    pub fn open(ifname: Option<&str>) -> Result<Tap, TapError> {
        if let Some(n) = ifname {
            if !valid_ifname(n) {
                return Err(TapError::BadName(n.to_string()));
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq::new(ifname.unwrap_or(""), TAP_FLAGS);
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is a properly sized,
        // initialised ifreq that lives for the call, and the fd is ours.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            let perm = matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES));
            return Err(match (ifname, perm) {
                (Some(n), true) if !interface_exists(n) => TapError::CannotCreate(n.into()),
                (Some(n), true) => TapError::NoPermission(n.into()),
                (None, true) => TapError::CannotCreateUnnamed,
                (n, false) => TapError::SetIff {
                    name: n.unwrap_or("tap%d").into(),
                    source: e,
                },
            });
        }
        let tap = Tap {
            file,
            name: req.name(),
        };
        tap.init()?;
        Ok(tap)
    }

    /// Takes a tap descriptor inherited from the parent (`fd=N`): it must be `/dev/net/tun`
    /// attached to a TAP interface with IFF_NO_PI and IFF_VNET_HDR. The descriptor becomes
    /// rampart's (close-on-exec, non-blocking).
    pub fn from_fd(fd: RawFd) -> Result<Tap, TapError> {
        if (0..=2).contains(&fd) {
            return Err(TapError::StdioFd { fd });
        }
        // SAFETY: F_GETFD only inspects the descriptor table.
        if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(TapError::BadFd { fd });
        }
        // SAFETY: the descriptor is open (checked above) and was handed to rampart by its
        // parent for this tap alone: nothing else in the process owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let file = File::from(owned);
        let not_tap = |why: String| TapError::NotTap { fd, why };
        let meta = file.metadata().map_err(|e| not_tap(e.to_string()))?;
        if !meta.file_type().is_char_device() {
            return Err(not_tap("not a character device".into()));
        }
        let mut req = IfReq::new("", 0);
        // SAFETY: TUNGETIFF writes a `struct ifreq` into `req`, which is properly sized and
        // lives for the call; on any other device it fails with an error.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNGETIFF, &mut req) };
        if r < 0 {
            return Err(not_tap(format!(
                "TUNGETIFF: {}",
                std::io::Error::last_os_error()
            )));
        }
        let flags = libc::c_int::from(req.flags);
        if flags & libc::IFF_TAP == 0 {
            return Err(not_tap("a TUN (layer 3) interface, not a TAP".into()));
        }
        if flags & libc::IFF_NO_PI == 0 || flags & libc::IFF_VNET_HDR == 0 {
            return Err(not_tap(
                "opened without IFF_NO_PI|IFF_VNET_HDR (rampart needs both)".into(),
            ));
        }
        // SAFETY: F_SETFD/F_GETFL/F_SETFL on our own descriptor.
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            let fl = libc::fcntl(fd, libc::F_GETFL);
            if fl >= 0 {
                libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
            }
        }
        let tap = Tap {
            file,
            name: req.name(),
        };
        tap.init()?;
        Ok(tap)
    }

    fn init(&self) -> Result<(), TapError> {
        let size: libc::c_int = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which is valid for the call.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) };
        if r < 0 {
            return Err(self.ioctl_err("TUNSETVNETHDRSZ"));
        }
        // No offloads until the guest acks them.
        self.set_offload(0)?;
        debug!(tap = %self.name, "tap ready");
        Ok(())
    }

    fn ioctl_err(&self, what: &'static str) -> TapError {
        TapError::Ioctl {
            what,
            name: self.name.clone(),
            source: std::io::Error::last_os_error(),
        }
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tells the kernel which offloads the reader accepts (`TUN_F_*`): what it may send us.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; the fd is ours.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if r < 0 {
            return Err(self.ioctl_err("TUNSETOFFLOAD"));
        }
        Ok(())
    }

    /// Whether the kernel accepts `flags` as offloads (probed, then reset to none).
    pub fn supports_offload(&self, flags: u32) -> bool {
        let ok = self.set_offload(flags).is_ok();
        let _ = self.set_offload(0);
        ok
    }

    /// A second handle on the same interface (for a VM rebuilt after a reset).
    pub fn try_clone(&self) -> std::io::Result<Tap> {
        Ok(Tap {
            file: self.file.try_clone()?,
            name: self.name.clone(),
        })
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// Where virtio-net frames go and come from (the tap, or a test double). Every frame starts
/// with the 12-byte virtio-net header.
pub trait NetBackend: Send {
    /// Reads one frame into `buf`; `WouldBlock` when none is waiting.
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Sends one frame.
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()>;
    /// Sends one frame given as its header and the rest in pieces of guest memory (which the
    /// guest may change meanwhile: only the bytes go out, nothing is interpreted). By default
    /// copied into one buffer for [`send`](Self::send); the tap writes them with one `writev`.
    fn send_gathered(
        &mut self,
        hdr: &[u8],
        pieces: &[Option<VolatileSlice<'_>>],
    ) -> std::io::Result<()> {
        let mut frame = hdr.to_vec();
        for p in pieces.iter().flatten() {
            let old = frame.len();
            frame.resize(old + p.len(), 0);
            p.copy_to(&mut frame[old..]);
        }
        self.send(&frame)
    }
    /// The offloads the guest accepts (`TUN_F_*`).
    fn set_offload(&mut self, flags: u32) -> std::io::Result<()>;
    /// The descriptor to poll for readability, if any.
    fn fd(&self) -> Option<RawFd>;
}

impl NetBackend for Tap {
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        let n = self.file.write(frame)?;
        if n != frame.len() {
            return Err(std::io::Error::other("short write to the tap"));
        }
        Ok(())
    }
    fn send_gathered(
        &mut self,
        hdr: &[u8],
        pieces: &[Option<VolatileSlice<'_>>],
    ) -> std::io::Result<()> {
        const NONE: libc::iovec = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let mut iov = [NONE; 1 + MAX_PIECES];
        if pieces.len() > MAX_PIECES {
            return Err(std::io::Error::other("too many pieces for one frame"));
        }
        // The guards keep each piece's mapping usable until the write returns.
        let mut guards: [Option<PtrGuard>; MAX_PIECES] = [const { None }; MAX_PIECES];
        iov[0] = libc::iovec {
            iov_base: hdr.as_ptr() as *mut libc::c_void,
            iov_len: hdr.len(),
        };
        let mut n = 1;
        let mut want = hdr.len();
        for (p, slot) in pieces.iter().flatten().zip(guards.iter_mut()) {
            let g = slot.insert(p.ptr_guard());
            iov[n] = libc::iovec {
                iov_base: g.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            };
            n += 1;
            want += p.len();
        }
        // SAFETY: `iov[..n]` describes `hdr` (borrowed for the call) and pieces of guest
        // memory that stay mapped while their guards live (to the end of this function); the
        // kernel only reads them. `n` is at most 1 + MAX_PIECES, the array's length.
        let r = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_ptr(), n as libc::c_int) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if r as usize != want {
            return Err(std::io::Error::other("short write to the tap"));
        }
        Ok(())
    }
    fn set_offload(&mut self, flags: u32) -> std::io::Result<()> {
        Tap::set_offload(self, flags).map_err(std::io::Error::other)
    }
    fn fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked() {
        assert!(valid_ifname("tap0"));
        assert!(valid_ifname("a-b_c.1"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname("0123456789abcdef"));
        assert!(!valid_ifname("a/b"));
        assert!(!valid_ifname("a b"));
        assert!(!valid_ifname(".."));
    }

    #[test]
    fn bad_name_is_refused_before_opening() {
        let e = Tap::open(Some("bad/name")).unwrap_err();
        assert!(matches!(e, TapError::BadName(_)), "{e}");
    }

    #[test]
    fn passed_fd_must_be_a_tap() {
        let f = File::open("/dev/null").unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
        let e = Tap::from_fd(fd).unwrap_err();
        assert!(matches!(e, TapError::NotTap { .. }), "{e}");
        assert!(matches!(
            Tap::from_fd(1).unwrap_err(),
            TapError::StdioFd { .. }
        ));
        assert!(matches!(
            Tap::from_fd(100_000).unwrap_err(),
            TapError::BadFd { .. }
        ));
    }
}
