//! The accelerator boundary: a vCPU backend runs guest code until an exit and exposes its
//! register state. `kvm` implements it over kvm-ioctls; `tcg` (rampart's software CPU) will
//! implement the same trait.
//!
//! Port I/O and MMIO are handled inside [`VcpuBackend::run`] through the [`IoHandler`] the
//! caller passes (the device buses), so `run` only returns for events that change the vCPU's
//! life: halt, reset, power-off, a kick, or a failure.

pub mod kvm;
pub mod kvm_msi;
pub mod tcg;

use thiserror::Error;

use crate::arch::x86_64::regs::CpuState;

/// Where a vCPU's port I/O and MMIO accesses go.
pub trait IoHandler: Sync {
    fn pio_read(&self, port: u16, data: &mut [u8]);
    fn pio_write(&self, port: u16, data: &[u8]);
    fn mmio_read(&self, addr: u64, data: &mut [u8]);
    fn mmio_write(&self, addr: u64, data: &[u8]);
}

/// Why [`VcpuBackend::run`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuEvent {
    /// The vCPU executed `hlt` and the backend does not wait for interrupts itself.
    Halted,
    /// The guest asked for a reset (triple fault or a reset system event).
    Reset,
    /// The guest asked to power off (a power-off system event).
    PowerOff,
    /// The run was interrupted by a kick (a signal); the caller checks its requests.
    Kicked,
}

/// Errors of an accelerator.
#[derive(Debug, Error)]
pub enum AccelError {
    #[error("KVM: {op}: {source}")]
    Kvm {
        op: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("{0}")]
    Unsupported(String),
    /// The guest did something the accelerator cannot continue from; the message carries the
    /// vCPU state.
    #[error("vCPU {cpu}: {reason}\n{state}")]
    GuestFailure {
        cpu: u32,
        reason: String,
        state: String,
    },
}

/// A vCPU of some accelerator.
pub trait VcpuBackend: Send {
    /// Runs guest code until an event; port and MMIO accesses go to `io` meanwhile.
    fn run(&mut self, io: &dyn IoHandler) -> Result<VcpuEvent, AccelError>;
    /// Loads the complete register state (general, special and model-specific registers).
    fn set_state(&mut self, state: &CpuState) -> Result<(), AccelError>;
    /// Reads the general and special registers (MSRs are not read).
    fn state(&self) -> Result<CpuState, AccelError>;
}

/// Formats a register dump for error messages.
pub fn format_state(state: &CpuState) -> String {
    let r = &state.regs;
    let s = &state.sregs;
    format!(
        "RIP={:016x} RFLAGS={:016x} RSP={:016x}\n\
         RAX={:016x} RBX={:016x} RCX={:016x} RDX={:016x}\n\
         RSI={:016x} RDI={:016x} RBP={:016x}\n\
         R8 ={:016x} R9 ={:016x} R10={:016x} R11={:016x}\n\
         R12={:016x} R13={:016x} R14={:016x} R15={:016x}\n\
         CS={:04x} base={:x} l={} db={}  SS={:04x}  CR0={:x} CR2={:x} CR3={:x} CR4={:x} EFER={:x}",
        r.rip,
        r.rflags,
        r.rsp,
        r.rax,
        r.rbx,
        r.rcx,
        r.rdx,
        r.rsi,
        r.rdi,
        r.rbp,
        r.r8,
        r.r9,
        r.r10,
        r.r11,
        r.r12,
        r.r13,
        r.r14,
        r.r15,
        s.cs.selector,
        s.cs.base,
        u8::from(s.cs.l),
        u8::from(s.cs.db),
        s.ss.selector,
        s.cr0,
        s.cr2,
        s.cr3,
        s.cr4,
        s.efer
    )
}
