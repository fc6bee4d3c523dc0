//! rampart's least-privilege layer: everything that narrows what the rampart process can reach
//! once its host resources are open.
//!
//! Start-up order (see `docs/security.md`): parse and validate the configuration → open every
//! host resource (`/dev/kvm`, images, kernel, sockets, taps; or take passed fds) → enter the
//! jail and drop privileges → build the VM → each thread installs the seccomp filter of its
//! role before it runs guest code or serves a client → the main thread installs its own and
//! runs the event loop.
//!
//! Each mechanism lives in its own module, added with the feature that needs it:
//! - [`privilege`]: `-run-with user=,chroot=` (change root, groups, gid, uid, capabilities,
//!   `no_new_privs`);
//! - [`supervisor`]: the fork that puts the VM in its own PID namespace and cleans up after it;
//! - [`jail`]: mount, IPC, UTS (and network) namespaces and `pivot_root`;
//! - [`cgroup`]: the per-VM cgroup, v2 or v1 per controller;
//! - [`rlimit`]: resource limits;
//! - [`seccomp`]: the seccomp allow-list of each thread role (`-sandbox`);
//! - [`fdset`]: fd sets and named descriptors (`-add-fd`, `/dev/fdset/N`, QMP `add-fd`...);
//! - [`paths`]: the monitor's host-path policy (`-monitor-path-allow`).

pub mod cgroup;
pub mod fdset;
pub mod jail;
pub mod paths;
pub mod privilege;
pub mod rlimit;
pub mod seccomp;
pub mod supervisor;
