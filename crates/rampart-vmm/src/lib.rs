//! The rampart VM: guest memory, x86-64 boot, vCPUs and their accelerators, and the event loop.

pub mod accel;
pub mod arch;
pub mod boot;
pub mod chardev;
pub mod console;
pub mod control;
pub mod dump;
pub mod event_loop;
pub mod io;
pub mod pci;
pub mod signals;
pub mod vcpu;
pub mod vm;
