//! The `tcg` accelerator: rampart's software CPU (`rampart-tcg`) behind the same
//! [`VcpuBackend`] boundary as `kvm`.
//!
//! What KVM keeps in the kernel lives here in user space: one local APIC per vCPU, the I/O
//! APIC, the TSC and kvmclock. Each vCPU thread owns its `rampart_tcg::Cpu`; its local APIC
//! sits in a [`Slot`] (mutex + condvar) so other threads can deliver interrupts and IPIs and
//! wake it from `hlt`. Messages are routed by [`Machine::route`], which never holds two locks.

mod bus;
mod cpuid;
mod msi;
pub mod state;

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use rampart_config::VmConfig;
use rampart_devices::irq::InterruptLine;
use rampart_tcg::apic::{
    tsc_from_ns, ApicMessage, Delivered, DeliveryMode, IoApic, KvmClock, LocalApic,
};
pub use rampart_tcg::CodePool;
use rampart_tcg::{CodeWatch, Cpu, Exit};
use tracing::{debug, warn};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{format_state, AccelError, IoHandler, VcpuBackend, VcpuEvent};
use crate::arch::x86_64::regs::CpuState;
use crate::arch::x86_64::topology::apic_id;

/// Instructions a vCPU runs between looks at interrupts, timers and kicks.
const SLICE: u64 = 20_000;
/// Longest sleep in `hlt` before re-checking kicks.
const MAX_HALT_WAIT: Duration = Duration::from_millis(10);

thread_local! {
    /// Set by the kick signal handler on this thread; the run loop takes it.
    static KICKED: Cell<bool> = const { Cell::new(false) };
}

/// Called from the kick signal handler on a vCPU thread. Async-signal-safe: one thread-local
/// store.
pub fn on_kick_signal() {
    KICKED.with(|k| k.set(true));
}

fn take_kick() -> bool {
    KICKED.with(|k| k.replace(false))
}

/// Start-up state of an application processor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Startup {
    Running,
    /// After INIT (or at power-on for APs): waiting for a start-up IPI.
    WaitForSipi,
    /// A SIPI arrived with this vector; the owner starts there.
    Sipi(u8),
}

pub(super) struct SlotInner {
    pub apic: LocalApic,
    startup: Startup,
    /// INIT arrived: the owner resets its CPU before waiting for the SIPI.
    init_pending: bool,
    nmi_pending: bool,
}

/// The shared part of one vCPU: its local APIC and the condvar that wakes it.
pub(super) struct Slot {
    inner: Mutex<SlotInner>,
    wake: Condvar,
}

impl Slot {
    pub(super) fn lock(&self) -> MutexGuard<'_, SlotInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Everything the software vCPUs share.
pub struct Machine {
    mem: GuestMemoryMmap,
    /// Pages of code the vCPUs validated; devices and the VMM report their writes into guest
    /// RAM to it (see `rampart_tcg::code_watch`).
    code_watch: Arc<CodeWatch>,
    /// Code memory for the vCPUs' block translators (none: they interpret).
    code: Option<CodePool>,
    ioapic: Mutex<IoApic>,
    slots: Vec<Arc<Slot>>,
    start: Instant,
    /// The identity of `mem`'s mapping, for the vCPUs' host-address tables (see
    /// `rampart_tcg::RamIdentity`).
    ram_id: std::num::NonZeroU64,
}

impl Machine {
    /// A machine for `config.smp.cpus` software vCPUs over `mem`, translating code in `code`'s
    /// regions (without, or when none is free, they interpret).
    pub fn new(mem: &GuestMemoryMmap, config: &VmConfig, code: Option<&CodePool>) -> Arc<Machine> {
        let slots = (0..config.smp.cpus)
            .map(|i| {
                Arc::new(Slot {
                    inner: Mutex::new(SlotInner {
                        apic: LocalApic::new(apic_id(i, &config.smp), i == 0),
                        startup: if i == 0 {
                            Startup::Running
                        } else {
                            Startup::WaitForSipi
                        },
                        init_pending: false,
                        nmi_pending: false,
                    }),
                    wake: Condvar::new(),
                })
            })
            .collect();
        Arc::new(Machine {
            mem: mem.clone(),
            code_watch: Arc::new(CodeWatch::new(
                mem.last_addr().raw_value().saturating_add(1),
            )),
            code: code.cloned(),
            // The MADT gives the I/O APIC the first ID after the CPUs'.
            ioapic: Mutex::new(IoApic::new(config.smp.maxcpus.min(255) as u8)),
            slots,
            start: Instant::now(),
            ram_id: rampart_tcg::RamIdentity::unique(),
        })
    }

    /// The identity of the machine's RAM mapping.
    pub(crate) fn ram_id(&self) -> std::num::NonZeroU64 {
        self.ram_id
    }

    /// The watch every writer of guest RAM other than the vCPUs reports to.
    pub fn code_watch(&self) -> &CodeWatch {
        &self.code_watch
    }

    /// A hook for devices that tells the vCPUs' code watch of their writes into guest RAM.
    pub fn guest_write_hook(&self) -> rampart_devices::virtio::GuestWriteHook {
        let watch = self.code_watch.clone();
        Arc::new(move |gpa, len| watch.wrote(gpa, len))
    }

    /// VM time in nanoseconds.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Delivers an APIC-bus message to every local APIC that accepts it (to the one of lowest
    /// arbitration priority for lowest-priority delivery). Never holds two locks.
    pub(super) fn route(&self, msg: &ApicMessage) {
        if msg.mode == DeliveryMode::LowestPriority {
            let target = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, slot)| {
                    let inner = slot.lock();
                    inner
                        .apic
                        .accepts_message(msg)
                        .then(|| (inner.apic.arbitration_priority(), i))
                })
                .min()
                .map(|(_, i)| i);
            if let Some(i) = target {
                self.deliver_to(&self.slots[i], msg);
            }
            return;
        }
        for slot in &self.slots {
            if slot.lock().apic.accepts_message(msg) {
                self.deliver_to(slot, msg);
            }
        }
    }

    fn deliver_to(&self, slot: &Slot, msg: &ApicMessage) {
        let mut inner = slot.lock();
        match inner.apic.deliver(msg) {
            Delivered::Accepted | Delivered::Ignored => {}
            Delivered::Nmi => inner.nmi_pending = true,
            Delivered::Init => {
                inner.init_pending = true;
                inner.startup = Startup::WaitForSipi;
            }
            Delivered::Sipi(v) => {
                if inner.startup == Startup::WaitForSipi {
                    inner.startup = Startup::Sipi(v);
                }
            }
        }
        drop(inner);
        slot.wake.notify_all();
    }

    /// After a local APIC register write: end-of-interrupt broadcasts for level-triggered
    /// vectors go to the I/O APIC (which may deliver still-asserted pins again), and an IPI the
    /// write produced is routed.
    pub(super) fn after_apic_write(&self, slot: &Slot, ipi: Option<ApicMessage>) {
        let mut eois = Vec::new();
        {
            let mut inner = slot.lock();
            while let Some(v) = inner.apic.take_eoi_broadcast() {
                eois.push(v);
            }
        }
        for v in eois {
            let msgs = self.ioapic.lock().unwrap_or_else(|e| e.into_inner()).eoi(v);
            for m in &msgs {
                self.route(m);
            }
        }
        if let Some(msg) = ipi {
            self.route(&msg);
        }
    }

    /// An edge-triggered interrupt line into I/O APIC pin `pin` (for ISA devices).
    pub fn irq_line(self: &Arc<Self>, pin: u32) -> Arc<dyn InterruptLine> {
        Arc::new(IoApicPin {
            machine: Arc::downgrade(self),
            pin,
        })
    }

    /// Creates software vCPU `index`.
    pub fn create_vcpu(self: &Arc<Self>, index: u32, config: &VmConfig) -> TcgVcpu {
        let mut cpu = Cpu::new();
        if let Some(pool) = &self.code {
            if !cpu.enable_jit(pool, JIT_THRESHOLD) {
                warn!(
                    index,
                    "no free code memory for the block translator: interpreting"
                );
            }
        }
        cpu.cpuid = cpuid::provider(index, config);
        // One vCPU and no hot-plug: nothing but devices and the VMM writes guest memory behind
        // its back, and they report to the code watch.
        cpu.set_sole_cpu(config.smp.maxcpus <= 1);
        let tsc_offset = Arc::new(AtomicU64::new(0));
        let (clock, offset) = (self.clone(), tsc_offset.clone());
        cpu.tsc_source = Some(Box::new(move || {
            tsc_from_ns(clock.now_ns()).wrapping_add(offset.load(Ordering::Relaxed))
        }));
        cpu.msr_hook = Some(Box::new(VcpuMsrs {
            machine: self.clone(),
            slot: self.slots[index as usize].clone(),
            kvmclock: KvmClock::default(),
            tsc_offset,
        }));
        // Every vCPU starts with the MTRR/MISC_ENABLE settings a firmware leaves (application
        // processors get no set_state).
        apply_msrs(&mut cpu, &crate::arch::x86_64::cpu::boot_msrs());
        TcgVcpu {
            index,
            cpu,
            machine: self.clone(),
            slot: self.slots[index as usize].clone(),
        }
    }
}

/// Runs of a decoded block before it is translated to host code.
const JIT_THRESHOLD: u32 = 32;

/// IA32_TIME_STAMP_COUNTER.
const MSR_TSC: u32 = 0x10;

/// The MSRs a software vCPU's embedder implements: the local APIC's, kvmclock's and the TSC
/// (guest TSC = VM time at [`TSC_HZ`](rampart_tcg::apic::TSC_HZ) plus an offset the guest may
/// set, which kvmclock's structure must reflect).
struct VcpuMsrs {
    machine: Arc<Machine>,
    slot: Arc<Slot>,
    kvmclock: KvmClock,
    tsc_offset: Arc<AtomicU64>,
}

impl VcpuMsrs {
    fn guest_tsc(&self, now: u64) -> u64 {
        tsc_from_ns(now).wrapping_add(self.tsc_offset.load(Ordering::Relaxed))
    }

    /// Writes kvmclock's time structure at `gpa`, stamped with the guest's TSC.
    fn publish_time(&mut self, gpa: u64) {
        let now = self.machine.now_ns();
        let mut info = self.kvmclock.time_info(now);
        info[8..16].copy_from_slice(&self.guest_tsc(now).to_le_bytes());
        if self
            .machine
            .mem
            .write_slice(&info, GuestAddress(gpa))
            .is_err()
        {
            warn!(gpa, "kvmclock time structure outside guest RAM: ignored");
        }
        self.machine.code_watch.wrote(gpa, info.len() as u64);
    }
}

impl rampart_tcg::MsrHook for VcpuMsrs {
    fn read(&mut self, idx: u32) -> Option<Result<u64, ()>> {
        let r = self.read_inner(idx);
        if matches!(r, Some(Err(()))) {
            debug!(msr = idx, "RDMSR refused (#GP)");
        }
        r
    }

    fn write(&mut self, idx: u32, value: u64) -> Option<Result<(), ()>> {
        let r = self.write_inner(idx, value);
        if matches!(r, Some(Err(()))) {
            debug!(msr = idx, value, "WRMSR refused (#GP)");
        }
        r
    }
}

impl VcpuMsrs {
    fn read_inner(&mut self, idx: u32) -> Option<Result<u64, ()>> {
        let now = self.machine.now_ns();
        if idx == MSR_TSC {
            return Some(Ok(self.guest_tsc(now)));
        }
        if LocalApic::is_apic_msr(idx) {
            return Some(self.slot.lock().apic.read_msr(idx, now).ok_or(()));
        }
        self.kvmclock.read_msr(idx).map(Ok)
    }

    fn write_inner(&mut self, idx: u32, value: u64) -> Option<Result<(), ()>> {
        if idx == MSR_TSC {
            let now = self.machine.now_ns();
            self.tsc_offset
                .store(value.wrapping_sub(tsc_from_ns(now)), Ordering::Relaxed);
            let st = self.kvmclock.system_time_msr();
            if st & 1 != 0 {
                self.publish_time(st & !1);
            }
            return Some(Ok(()));
        }
        if LocalApic::is_apic_msr(idx) {
            let now = self.machine.now_ns();
            let r = self.slot.lock().apic.write_msr(idx, value, now);
            return Some(r.map(|ipi| self.machine.after_apic_write(&self.slot, ipi)));
        }
        let r = self.kvmclock.write_msr(idx, value)?;
        if let Some(gpa) = self.kvmclock.take_pending_write() {
            self.publish_time(gpa);
        }
        if let Some(gpa) = self.kvmclock.take_pending_wall_clock() {
            let host_ns = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let wc = KvmClock::wall_clock(host_ns, self.machine.now_ns());
            if self
                .machine
                .mem
                .write_slice(&wc, GuestAddress(gpa))
                .is_err()
            {
                warn!(gpa, "kvmclock wall clock outside guest RAM: ignored");
            }
            self.machine.code_watch.wrote(gpa, wc.len() as u64);
        }
        Some(r)
    }
}

/// Loads MSR values into a software CPU. The TSC is skipped: it is VM time, the same on every
/// vCPU, and starts with the machine.
fn apply_msrs(cpu: &mut Cpu, msrs: &[crate::arch::x86_64::regs::MsrEntry]) {
    for m in msrs.iter().filter(|m| m.index != MSR_TSC) {
        if let Err(e) = cpu.write_msr(m.index, m.data) {
            debug!(
                msr = m.index,
                ?e,
                "boot MSR not accepted by the software CPU"
            );
        }
    }
}

struct IoApicPin {
    machine: Weak<Machine>,
    pin: u32,
}

impl InterruptLine for IoApicPin {
    fn trigger(&self) -> std::io::Result<()> {
        if let Some(m) = self.machine.upgrade() {
            let msg = m
                .ioapic
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pulse_irq(self.pin);
            if let Some(msg) = msg {
                m.route(&msg);
            }
        }
        Ok(())
    }
}

/// One software vCPU.
pub struct TcgVcpu {
    index: u32,
    cpu: Cpu,
    machine: Arc<Machine>,
    slot: Arc<Slot>,
}

impl TcgVcpu {
    fn failure(&self, reason: String) -> AccelError {
        AccelError::GuestFailure {
            cpu: self.index,
            reason,
            state: format_state(&state::save(&self.cpu)),
        }
    }

    /// Handles INIT/SIPI; returns false while the vCPU must not run.
    fn startup_gate(&mut self) -> bool {
        let mut inner = self.slot.lock();
        if inner.init_pending {
            inner.init_pending = false;
            inner.apic.reset();
            self.cpu.reset();
        }
        match inner.startup {
            Startup::Running => true,
            Startup::Sipi(vector) => {
                inner.startup = Startup::Running;
                drop(inner);
                debug!(cpu = self.index, vector, "start-up IPI");
                self.cpu.start_at_sipi(vector);
                true
            }
            Startup::WaitForSipi => {
                let _ = self
                    .slot
                    .wake
                    .wait_timeout(inner, MAX_HALT_WAIT)
                    .unwrap_or_else(|e| e.into_inner());
                false
            }
        }
    }

    /// Delivers the highest pending interrupt if the CPU can take it now.
    fn inject_interrupts(&mut self, io: &dyn IoHandler, now: u64) {
        let vector = {
            let mut inner = self.slot.lock();
            inner.apic.tick(now);
            let can_take = self.cpu.flags.get(rampart_tcg::flags::IF) && !self.cpu.interrupt_shadow;
            if !can_take || inner.apic.interrupt_pending().is_none() {
                return;
            }
            inner.apic.acknowledge()
        };
        if let Some(v) = vector {
            let machine = self.machine.clone();
            let slot = self.slot.clone();
            let mut bus = bus::VcpuBus::new(&machine, &slot, io);
            if !self.cpu.inject_external_interrupt(&mut bus, v) {
                warn!(
                    cpu = self.index,
                    vector = v,
                    "interrupt acknowledged but not taken"
                );
            }
        }
    }

    /// Sleeps in `hlt` until an interrupt is pending, a timer is due, or a kick arrives.
    fn halt_wait(&mut self) -> bool {
        let mut inner = self.slot.lock();
        loop {
            let now = self.machine.now_ns();
            inner.apic.tick(now);
            if inner.apic.interrupt_pending().is_some() || inner.init_pending || inner.nmi_pending {
                return true;
            }
            if take_kick() {
                return false;
            }
            let wait = inner
                .apic
                .next_deadline_ns()
                .map(|d| Duration::from_nanos(d.saturating_sub(now)))
                .unwrap_or(MAX_HALT_WAIT)
                .min(MAX_HALT_WAIT);
            inner = self
                .slot
                .wake
                .wait_timeout(inner, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl VcpuBackend for TcgVcpu {
    fn run(&mut self, io: &dyn IoHandler) -> Result<VcpuEvent, AccelError> {
        loop {
            if take_kick() {
                return Ok(VcpuEvent::Kicked);
            }
            if !self.startup_gate() {
                continue;
            }
            let now = self.machine.now_ns();
            self.inject_interrupts(io, now);
            let machine = self.machine.clone();
            let slot = self.slot.clone();
            let mut bus = bus::VcpuBus::new(&machine, &slot, io);
            let exit = self.cpu.run(&mut bus, SLICE);
            match exit {
                Exit::InstructionLimit => {}
                Exit::IoIn { port, size } => {
                    let mut data = [0u8; 4];
                    let n = usize::from(size).min(4);
                    io.pio_read(port, &mut data[..n]);
                    self.cpu.complete_io_in(u32::from_le_bytes(data));
                }
                Exit::IoOut { port, size, value } => {
                    let n = usize::from(size).min(4);
                    io.pio_write(port, &value.to_le_bytes()[..n]);
                }
                Exit::Halt => {
                    if !self.halt_wait() {
                        return Ok(VcpuEvent::Kicked);
                    }
                }
                Exit::Shutdown => return Ok(VcpuEvent::Reset),
                Exit::PhysicalMemory(fault) => {
                    return Err(self.failure(format!("guest-physical access fault: {fault:?}")))
                }
                Exit::Unsupported { rip, what } => {
                    return Err(self.failure(format!(
                        "the software CPU does not implement {what} (at RIP {rip:#x})"
                    )))
                }
                #[allow(unreachable_patterns)]
                other => return Err(self.failure(format!("unexpected CPU exit {other:?}"))),
            }
        }
    }

    fn set_state(&mut self, state: &CpuState) -> Result<(), AccelError> {
        state::load(&mut self.cpu, state);
        apply_msrs(&mut self.cpu, &state.msrs);
        Ok(())
    }

    fn state(&self) -> Result<CpuState, AccelError> {
        Ok(state::save(&self.cpu))
    }
}
