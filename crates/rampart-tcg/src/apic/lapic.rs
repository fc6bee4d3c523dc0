//! The local APIC (Intel SDM vol. 3, ch. 11 "Advanced Programmable Interrupt Controller"):
//! xAPIC registers through MMIO, x2APIC through MSRs, priorities, EOI, IPIs and the timer.
//!
//! Not implemented: APIC virtualization, thermal/performance/CMCI interrupt sources (their LVT
//! registers exist and hold values), SMI, ExtINT (there is no PIC), directed EOI, focus
//! processor checking and the remote read register (reads 0).

use tracing::{debug, trace};

use super::time::tsc_from_ns;
use super::timer::{Timer, TimerMode};
use super::{ApicMessage, Delivered, DeliveryMode, Destination, APIC_BASE_ADDR};
use crate::mmu::PHYS_ADDR_BITS;

/// Version register: version 0x14 (integrated APIC), max LVT entry 5, no directed EOI.
pub const APIC_VERSION: u32 = 0x0005_0014;

/// IA32_APIC_BASE.
const MSR_APIC_BASE: u32 = 0x1b;
/// IA32_TSC_DEADLINE.
const MSR_TSC_DEADLINE: u32 = 0x6e0;
const BASE_BSP: u64 = 1 << 8;
const BASE_EXTD: u64 = 1 << 10;
const BASE_EN: u64 = 1 << 11;

// Register offsets in the xAPIC page (the x2APIC MSR is 0x800 + offset / 16).
pub(super) const REG_ID: u32 = 0x20;
pub(super) const REG_VERSION: u32 = 0x30;
pub(super) const REG_TPR: u32 = 0x80;
pub(super) const REG_APR: u32 = 0x90;
pub(super) const REG_PPR: u32 = 0xa0;
pub(super) const REG_EOI: u32 = 0xb0;
pub(super) const REG_RRD: u32 = 0xc0;
pub(super) const REG_LDR: u32 = 0xd0;
pub(super) const REG_DFR: u32 = 0xe0;
pub(super) const REG_SVR: u32 = 0xf0;
pub(super) const REG_ISR: u32 = 0x100;
pub(super) const REG_TMR: u32 = 0x180;
pub(super) const REG_IRR: u32 = 0x200;
pub(super) const REG_ESR: u32 = 0x280;
pub(super) const REG_ICR_LOW: u32 = 0x300;
pub(super) const REG_ICR_HIGH: u32 = 0x310;
pub(super) const REG_LVT_TIMER: u32 = 0x320;
pub(super) const REG_LVT_ERROR: u32 = 0x370;
pub(super) const REG_TIMER_INITIAL: u32 = 0x380;
pub(super) const REG_TIMER_CURRENT: u32 = 0x390;
pub(super) const REG_TIMER_DIVIDE: u32 = 0x3e0;
pub(super) const REG_SELF_IPI: u32 = 0x3f0;

const LVT_TIMER: usize = 0;
const LVT_LINT0: usize = 3;
const LVT_LINT1: usize = 4;
const LVT_ERROR: usize = 5;
const LVT_COUNT: usize = 6;
const LVT_MASKED: u32 = 1 << 16;
/// Writable bits of each LVT (timer, thermal, perf, LINT0, LINT1, error).
const LVT_WRITABLE: [u32; LVT_COUNT] = [
    0x0007_00ff,
    0x0001_07ff,
    0x0001_07ff,
    0x0001_a7ff,
    0x0001_a7ff,
    0x0001_00ff,
];

const SVR_ENABLE: u32 = 1 << 8;
/// Vector, enable, focus-check disable (kept, unused); no EOI-broadcast suppression.
const SVR_WRITABLE: u32 = 0x3ff;

const ESR_SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
const ESR_RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;

const ICR_DEST_LOGICAL: u32 = 1 << 11;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_TRIGGER_LEVEL: u32 = 1 << 15;
const ICR_SHORTHAND_SELF: u32 = 1 << 18;
/// xAPIC ICR low writable bits (everything but delivery status and reserved bits).
const ICR_LOW_WRITABLE: u32 = 0x000c_cfff;
/// x2APIC ICR bits that must be zero (KVM and hardware #GP on them).
const X2APIC_ICR_RESERVED: u64 = 0xfff0_0000 | 0x3_0000 | (1 << 13);

/// How the local APIC is enabled (IA32_APIC_BASE bits 11 and 10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApicMode {
    /// Hardware-disabled: no MMIO page, no x2APIC MSRs, no interrupts.
    Disabled,
    XApic,
    X2Apic,
}

/// One vCPU's local APIC.
#[derive(Debug, Clone)]
pub struct LocalApic {
    initial_id: u32,
    /// xAPIC ID register bits 31:24 (writable in xAPIC mode).
    xapic_id: u8,
    base: u64,
    tpr: u32,
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: [u32; 8],
    tmr: [u32; 8],
    irr: [u32; 8],
    /// ESR as last latched by an ESR write.
    esr: u32,
    /// Errors since the last ESR write.
    esr_pending: u32,
    icr_low: u32,
    /// xAPIC: destination in bits 31:24; x2APIC: the 32-bit destination.
    icr_high: u32,
    lvt: [u32; LVT_COUNT],
    timer: Timer,
    /// Vectors of level-triggered interrupts EOI'd but not yet taken by the embedder.
    eoi_broadcast: [u32; 8],
}

fn bit_test(v: &[u32; 8], vector: u8) -> bool {
    v[usize::from(vector >> 5)] & (1 << (vector & 31)) != 0
}

fn bit_set(v: &mut [u32; 8], vector: u8) {
    v[usize::from(vector >> 5)] |= 1 << (vector & 31);
}

fn bit_clear(v: &mut [u32; 8], vector: u8) {
    v[usize::from(vector >> 5)] &= !(1 << (vector & 31));
}

/// The highest set vector, if any.
fn highest(v: &[u32; 8]) -> Option<u8> {
    (0..8usize).rev().find_map(|i| {
        let w = v[i];
        (w != 0).then(|| (i as u8) * 32 + (31 - w.leading_zeros() as u8))
    })
}

/// The lowest set vector, if any.
fn lowest(v: &[u32; 8]) -> Option<u8> {
    (0..8usize).find_map(|i| {
        let w = v[i];
        (w != 0).then(|| (i as u8) * 32 + w.trailing_zeros() as u8)
    })
}

impl LocalApic {
    /// A local APIC at power-on: xAPIC mode at [`APIC_BASE_ADDR`], software-disabled, all LVTs
    /// masked. `apic_id` is the initial (x2APIC, 32-bit) ID; the xAPIC ID is its low 8 bits.
    pub fn new(apic_id: u32, bsp: bool) -> Self {
        let mut apic = LocalApic {
            initial_id: apic_id,
            xapic_id: apic_id as u8,
            base: APIC_BASE_ADDR | BASE_EN | if bsp { BASE_BSP } else { 0 },
            tpr: 0,
            ldr: 0,
            dfr: u32::MAX,
            svr: 0xff,
            isr: [0; 8],
            tmr: [0; 8],
            irr: [0; 8],
            esr: 0,
            esr_pending: 0,
            icr_low: 0,
            icr_high: 0,
            lvt: [LVT_MASKED; LVT_COUNT],
            timer: Timer::default(),
            eoi_broadcast: [0; 8],
        };
        apic.reset();
        apic
    }

    /// The APIC ID this local APIC answers to in its current mode (x2APIC: the initial 32-bit
    /// ID; otherwise the 8-bit xAPIC ID register).
    pub fn apic_id(&self) -> u32 {
        match self.mode() {
            ApicMode::X2Apic => self.initial_id,
            _ => u32::from(self.xapic_id),
        }
    }

    /// Current mode from IA32_APIC_BASE.
    pub fn mode(&self) -> ApicMode {
        if self.base & BASE_EN == 0 {
            ApicMode::Disabled
        } else if self.base & BASE_EXTD != 0 {
            ApicMode::X2Apic
        } else {
            ApicMode::XApic
        }
    }

    /// Guest-physical address of the xAPIC page, if the APIC is in xAPIC mode. Rarely anything
    /// but [`APIC_BASE_ADDR`]: a guest may relocate it through IA32_APIC_BASE.
    pub fn mmio_base(&self) -> Option<u64> {
        (self.mode() == ApicMode::XApic).then_some(self.base & !0xfff & ((1 << PHYS_ADDR_BITS) - 1))
    }

    fn sw_enabled(&self) -> bool {
        self.svr & SVR_ENABLE != 0
    }

    /// INIT: every register to its power-up value except the APIC ID and IA32_APIC_BASE (and
    /// so the x2APIC mode). Pending EOI broadcasts are kept for the embedder.
    pub fn reset(&mut self) {
        self.tpr = 0;
        self.ldr = 0;
        self.dfr = u32::MAX;
        self.svr = 0xff;
        self.isr = [0; 8];
        self.tmr = [0; 8];
        self.irr = [0; 8];
        self.esr = 0;
        self.esr_pending = 0;
        self.icr_low = 0;
        self.icr_high = 0;
        self.lvt = [LVT_MASKED; LVT_COUNT];
        self.timer = Timer::default();
    }

    fn timer_mode(&self) -> TimerMode {
        TimerMode::from_lvt(self.lvt[LVT_TIMER])
    }

    // ---- priorities ----------------------------------------------------------------------

    /// Processor priority: the higher of the TPR and the class of the highest in-service vector.
    pub fn processor_priority(&self) -> u8 {
        let tpr = self.tpr as u8;
        let isrv = highest(&self.isr).unwrap_or(0);
        if tpr & 0xf0 >= isrv & 0xf0 {
            tpr
        } else {
            isrv & 0xf0
        }
    }

    /// The task-priority register (bits 7:0). CR8 is its bits 7:4.
    pub fn task_priority(&self) -> u8 {
        self.tpr as u8
    }

    /// Sets the task-priority register (MOV to CR8 writes `value << 4`).
    pub fn set_task_priority(&mut self, tpr: u8) {
        self.tpr = u32::from(tpr);
    }

    /// Arbitration priority (for lowest-priority delivery).
    pub fn arbitration_priority(&self) -> u8 {
        let tpr = self.tpr as u8;
        let isrv = highest(&self.isr).unwrap_or(0) & 0xf0;
        let irrv = highest(&self.irr).unwrap_or(0) & 0xf0;
        if tpr & 0xf0 >= irrv && tpr & 0xf0 > isrv {
            tpr
        } else {
            (tpr & 0xf0).max(isrv).max(irrv)
        }
    }

    /// The highest-priority IRR vector deliverable now (its class above the PPR's).
    pub fn interrupt_pending(&self) -> Option<u8> {
        if self.mode() == ApicMode::Disabled {
            return None;
        }
        let v = highest(&self.irr)?;
        (v & 0xf0 > self.processor_priority() & 0xf0).then_some(v)
    }

    /// The CPU takes the interrupt: IRR → ISR; returns its vector.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let v = self.interrupt_pending()?;
        bit_clear(&mut self.irr, v);
        bit_set(&mut self.isr, v);
        Some(v)
    }

    fn eoi(&mut self) {
        let Some(v) = highest(&self.isr) else {
            return;
        };
        bit_clear(&mut self.isr, v);
        if bit_test(&self.tmr, v) {
            bit_clear(&mut self.tmr, v);
            bit_set(&mut self.eoi_broadcast, v);
        }
    }

    /// The vector of a level-triggered interrupt just EOI'd, for the I/O APIC's remote IRR
    /// (one per call; call until `None` after each register write).
    pub fn take_eoi_broadcast(&mut self) -> Option<u8> {
        let v = lowest(&self.eoi_broadcast)?;
        bit_clear(&mut self.eoi_broadcast, v);
        Some(v)
    }

    // ---- errors and local interrupts -----------------------------------------------------

    fn signal_error(&mut self, bits: u32) {
        self.esr_pending |= bits;
        let lvt = self.lvt[LVT_ERROR];
        let vector = lvt as u8;
        if lvt & LVT_MASKED == 0 && vector >= 16 && self.mode() != ApicMode::Disabled {
            bit_set(&mut self.irr, vector);
            bit_clear(&mut self.tmr, vector);
        }
    }

    /// Raises a local (LVT) interrupt as an edge-triggered fixed interrupt.
    fn raise_local(&mut self, lvt_index: usize) {
        let lvt = self.lvt[lvt_index];
        if lvt & LVT_MASKED != 0 || self.mode() == ApicMode::Disabled {
            return;
        }
        let vector = lvt as u8;
        if vector < 16 {
            self.signal_error(ESR_RECEIVE_ILLEGAL_VECTOR);
            return;
        }
        bit_set(&mut self.irr, vector);
        bit_clear(&mut self.tmr, vector);
    }

    // ---- timer ---------------------------------------------------------------------------

    /// Fires the timer if due: sets the LVT timer vector in the IRR unless masked; a periodic
    /// timer reloads, a one-shot or TSC-deadline timer disarms.
    pub fn tick(&mut self, now_ns: u64) {
        if self.timer.expire(now_ns, self.timer_mode()) {
            trace!(apic = self.initial_id, now_ns, "APIC timer expired");
            self.raise_local(LVT_TIMER);
        }
    }

    /// When [`LocalApic::tick`] must next be called (`None`: timer idle or masked; a masked
    /// timer is brought up to date whenever its registers are written).
    pub fn next_deadline_ns(&self) -> Option<u64> {
        if self.lvt[LVT_TIMER] & LVT_MASKED != 0 || self.mode() == ApicMode::Disabled {
            return None;
        }
        self.timer.deadline_ns(self.timer_mode())
    }

    fn write_lvt(&mut self, index: usize, value: u32, now_ns: u64) {
        let mut v = value & LVT_WRITABLE[index];
        if !self.sw_enabled() {
            v |= LVT_MASKED;
        }
        if index == LVT_TIMER {
            self.tick(now_ns);
            let old = self.timer_mode();
            let new = TimerMode::from_lvt(v);
            if old != new && (old == TimerMode::TscDeadline || new == TimerMode::TscDeadline) {
                self.timer.disarm();
            }
        }
        if index == LVT_LINT0 || index == LVT_LINT1 {
            // Remote IRR (bit 14) is read-only and stays as it was.
            v |= self.lvt[index] & (1 << 14);
        }
        self.lvt[index] = v;
    }

    // ---- register file (shared by MMIO and MSR) ------------------------------------------

    /// Reads register `reg` (offset in the xAPIC page); `None` if it does not exist or is
    /// write-only in the current mode.
    fn read_reg(&self, reg: u32, now_ns: u64) -> Option<u32> {
        let x2 = self.mode() == ApicMode::X2Apic;
        let idx = ((reg >> 4) & 7) as usize;
        Some(match reg {
            REG_ID if x2 => self.initial_id,
            REG_ID => u32::from(self.xapic_id) << 24,
            REG_VERSION => APIC_VERSION,
            REG_TPR => self.tpr,
            REG_APR if !x2 => u32::from(self.arbitration_priority()),
            REG_PPR => u32::from(self.processor_priority()),
            REG_EOI | REG_RRD if !x2 => 0,
            REG_LDR if x2 => ((self.initial_id >> 4) << 16) | (1 << (self.initial_id & 0xf)),
            REG_LDR => self.ldr,
            REG_DFR if !x2 => self.dfr,
            REG_SVR => self.svr,
            REG_ISR..=0x170 => self.isr[idx],
            REG_TMR..=0x1f0 => self.tmr[idx],
            REG_IRR..=0x270 => self.irr[idx],
            REG_ESR => self.esr,
            REG_ICR_LOW => self.icr_low,
            REG_ICR_HIGH if !x2 => self.icr_high,
            REG_LVT_TIMER..=REG_LVT_ERROR => self.lvt[((reg - REG_LVT_TIMER) >> 4) as usize],
            REG_TIMER_INITIAL => self.timer.initial_count(),
            REG_TIMER_CURRENT => self.timer.current_count(now_ns, self.timer_mode()),
            REG_TIMER_DIVIDE => self.timer.divide_config(),
            _ => return None,
        })
    }

    /// Writes register `reg`; `Err(())` if it does not exist or is read-only in the current
    /// mode (x2APIC: #GP; xAPIC: ignored). An ICR write yields the IPI to route.
    fn write_reg(&mut self, reg: u32, value: u32, now_ns: u64) -> Result<Option<ApicMessage>, ()> {
        let x2 = self.mode() == ApicMode::X2Apic;
        match reg {
            REG_ID if !x2 => self.xapic_id = (value >> 24) as u8,
            REG_TPR => self.tpr = value & 0xff,
            REG_EOI => {
                if x2 && value != 0 {
                    return Err(());
                }
                self.eoi();
            }
            REG_LDR if !x2 => self.ldr = value & 0xff00_0000,
            REG_DFR if !x2 => self.dfr = value | 0x0fff_ffff,
            REG_SVR => {
                self.tick(now_ns);
                self.svr = value & SVR_WRITABLE;
                if !self.sw_enabled() {
                    for lvt in &mut self.lvt {
                        *lvt |= LVT_MASKED;
                    }
                }
            }
            REG_ESR => {
                if x2 && value != 0 {
                    return Err(());
                }
                self.esr = self.esr_pending;
                self.esr_pending = 0;
            }
            REG_ICR_LOW if !x2 => {
                self.icr_low = value & ICR_LOW_WRITABLE;
                return Ok(self.send_ipi(self.icr_low, self.icr_high >> 24));
            }
            REG_ICR_HIGH if !x2 => self.icr_high = value & 0xff00_0000,
            REG_LVT_TIMER..=REG_LVT_ERROR => {
                self.write_lvt(((reg - REG_LVT_TIMER) >> 4) as usize, value, now_ns)
            }
            REG_TIMER_INITIAL => {
                self.tick(now_ns);
                self.timer.write_initial(value, now_ns, self.timer_mode());
            }
            REG_TIMER_DIVIDE => {
                self.tick(now_ns);
                self.timer.write_divide(value, now_ns, self.timer_mode());
            }
            REG_SELF_IPI if x2 => {
                if value & !0xff != 0 {
                    return Err(());
                }
                return Ok(self.send_ipi((value & 0xff) | ICR_SHORTHAND_SELF, 0));
            }
            _ => return Err(()),
        }
        Ok(None)
    }

    /// Turns an ICR value (low word, destination) into a bus message: `None` for INIT level
    /// de-assert, reserved delivery modes and illegal vectors (which set the ESR).
    fn send_ipi(&mut self, low: u32, dest: u32) -> Option<ApicMessage> {
        let vector = low as u8;
        let mode = match (low >> 8) & 7 {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            6 => DeliveryMode::StartUp(vector),
            other => {
                debug!(
                    apic = self.initial_id,
                    mode = other,
                    "IPI with reserved delivery mode dropped"
                );
                return None;
            }
        };
        let level = low & ICR_TRIGGER_LEVEL != 0;
        if mode == DeliveryMode::Init && level && low & ICR_LEVEL_ASSERT == 0 {
            trace!(apic = self.initial_id, "INIT level de-assert (no effect)");
            return None;
        }
        if matches!(mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority) && vector < 16 {
            self.signal_error(ESR_SEND_ILLEGAL_VECTOR);
            return None;
        }
        let x2 = self.mode() == ApicMode::X2Apic;
        let dest = match (low >> 18) & 3 {
            1 => Destination::SelfOnly,
            2 => Destination::Broadcast,
            3 => Destination::AllExcludingSelf,
            _ if low & ICR_DEST_LOGICAL != 0 => Destination::Logical(dest),
            _ if dest == u32::MAX || (!x2 && dest == 0xff) => Destination::Broadcast,
            _ => Destination::Physical(dest),
        };
        Some(ApicMessage {
            dest,
            vector,
            mode,
            level_triggered: level,
            source_apic_id: self.apic_id(),
        })
    }
}

/// The guest-visible interfaces: MMIO, MSRs, and the APIC bus.
impl LocalApic {
    /// A read from the xAPIC page at `offset`. Only aligned 32-bit accesses to registers read
    /// anything; every other access (and every access outside xAPIC mode) reads zeros.
    pub fn mmio_read(&mut self, offset: u64, data: &mut [u8], now_ns: u64) {
        data.fill(0);
        if self.mode() != ApicMode::XApic
            || data.len() != 4
            || offset & 0xf != 0
            || offset >= 0x1000
        {
            trace!(
                apic = self.initial_id,
                offset,
                len = data.len(),
                "ignored APIC MMIO read"
            );
            return;
        }
        let value = self.read_reg(offset as u32, now_ns).unwrap_or(0);
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// A write to the xAPIC page at `offset`. Only aligned 32-bit writes to writable registers
    /// do anything; an ICR write produces the IPI to route.
    pub fn mmio_write(&mut self, offset: u64, data: &[u8], now_ns: u64) -> Option<ApicMessage> {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            trace!(
                apic = self.initial_id,
                offset,
                len = data.len(),
                "ignored APIC MMIO write size"
            );
            return None;
        };
        if self.mode() != ApicMode::XApic || offset & 0xf != 0 || offset >= 0x1000 {
            return None;
        }
        self.write_reg(offset as u32, u32::from_le_bytes(bytes), now_ns)
            .unwrap_or_else(|()| {
                trace!(
                    apic = self.initial_id,
                    offset,
                    "write to read-only or absent APIC register"
                );
                None
            })
    }

    /// Whether RDMSR/WRMSR of `msr` belongs to the local APIC: IA32_APIC_BASE, IA32_TSC_DEADLINE
    /// and the x2APIC range 0x800..=0x8ff.
    pub fn is_apic_msr(msr: u32) -> bool {
        msr == MSR_APIC_BASE || msr == MSR_TSC_DEADLINE || (0x800..=0x8ff).contains(&msr)
    }

    /// RDMSR; `None` (#GP) for a non-APIC MSR, an x2APIC MSR outside x2APIC mode, and absent or
    /// write-only x2APIC registers (EOI, SELF IPI, DFR, APR, ICR high).
    pub fn read_msr(&mut self, msr: u32, now_ns: u64) -> Option<u64> {
        match msr {
            MSR_APIC_BASE => Some(self.base),
            MSR_TSC_DEADLINE => Some(self.timer.tsc_deadline(self.timer_mode())),
            0x800..=0x8ff if self.mode() == ApicMode::X2Apic => {
                let reg = (msr - 0x800) << 4;
                if reg == REG_ICR_LOW {
                    return Some((u64::from(self.icr_high) << 32) | u64::from(self.icr_low));
                }
                self.read_reg(reg, now_ns).map(u64::from)
            }
            _ => None,
        }
    }

    /// WRMSR; `Err(())` is #GP: reserved bits or an invalid mode transition in
    /// IA32_APIC_BASE, an x2APIC MSR outside x2APIC mode, a read-only or absent x2APIC
    /// register, non-zero upper 32 bits (but in the ICR), non-zero EOI/ESR values, reserved ICR
    /// or SELF IPI bits. An ICR or SELF IPI write yields the IPI to route.
    #[allow(clippy::result_unit_err)] // `Err` carries nothing but "#GP", as the embedder's hook wants
    pub fn write_msr(
        &mut self,
        msr: u32,
        value: u64,
        now_ns: u64,
    ) -> Result<Option<ApicMessage>, ()> {
        match msr {
            MSR_APIC_BASE => self.write_apic_base(value).map(|()| None),
            MSR_TSC_DEADLINE => {
                self.tick(now_ns);
                self.timer.write_tsc_deadline(value, self.timer_mode());
                trace!(
                    apic = self.initial_id,
                    value,
                    tsc = tsc_from_ns(now_ns),
                    "TSC deadline"
                );
                Ok(None)
            }
            0x800..=0x8ff if self.mode() == ApicMode::X2Apic => {
                let reg = (msr - 0x800) << 4;
                if reg == REG_ICR_LOW {
                    if value & X2APIC_ICR_RESERVED != 0 {
                        return Err(());
                    }
                    self.icr_low = value as u32 & ICR_LOW_WRITABLE;
                    self.icr_high = (value >> 32) as u32;
                    return Ok(self.send_ipi(self.icr_low, self.icr_high));
                }
                let low = u32::try_from(value).map_err(|_| ())?;
                self.write_reg(reg, low, now_ns)
            }
            _ => Err(()),
        }
    }

    fn write_apic_base(&mut self, value: u64) -> Result<(), ()> {
        let reserved = !((1u64 << PHYS_ADDR_BITS) - 1) | 0x2ff;
        if value & reserved != 0 {
            return Err(());
        }
        let old = self.mode();
        let new_base = (value & !BASE_BSP) | (self.base & BASE_BSP);
        let new = match (new_base & BASE_EN != 0, new_base & BASE_EXTD != 0) {
            (false, false) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
            (false, true) => return Err(()),
        };
        match (old, new) {
            (ApicMode::X2Apic, ApicMode::XApic) | (ApicMode::Disabled, ApicMode::X2Apic) => {
                return Err(())
            }
            _ => {}
        }
        if new_base & !0xfff & ((1 << PHYS_ADDR_BITS) - 1) != APIC_BASE_ADDR {
            debug!(
                apic = self.initial_id,
                base = new_base,
                "local APIC page relocated"
            );
        }
        self.base = new_base;
        if old != new && (old == ApicMode::Disabled || new == ApicMode::Disabled) {
            // Hardware disable and re-enable both leave the power-up state.
            self.reset();
            self.xapic_id = self.initial_id as u8;
        }
        debug!(apic = self.initial_id, ?old, ?new, "APIC mode");
        Ok(())
    }

    fn match_logical(&self, mask: u32) -> bool {
        if self.mode() == ApicMode::X2Apic {
            if mask == u32::MAX {
                return true;
            }
            let ldr = ((self.initial_id >> 4) << 16) | (1 << (self.initial_id & 0xf));
            return mask >> 16 == ldr >> 16 && mask & ldr & 0xffff != 0;
        }
        let mda = mask as u8;
        if mda == 0xff {
            return true;
        }
        let id = (self.ldr >> 24) as u8;
        if self.dfr >> 28 == 0 {
            // Cluster model: cluster in bits 7:4 (15 = all clusters), members in 3:0.
            (mda >> 4 == id >> 4 || mda >> 4 == 0xf) && mda & id & 0xf != 0
        } else {
            mda & id != 0
        }
    }

    /// Whether this local APIC is a target of `dest`: physical (own ID or broadcast),
    /// logical (flat or cluster DFR model in xAPIC, cluster LDR derived from the ID in x2APIC),
    /// broadcast. A hardware-disabled APIC accepts nothing. The sender-relative shorthands
    /// (`SelfOnly`, `AllExcludingSelf`) need the sender: use [`LocalApic::accepts_message`];
    /// here they answer `false`.
    pub fn accepts(&self, dest: &Destination) -> bool {
        let mode = self.mode();
        match *dest {
            _ if mode == ApicMode::Disabled => false,
            Destination::Broadcast => true,
            Destination::SelfOnly | Destination::AllExcludingSelf => false,
            Destination::Physical(id) if mode == ApicMode::X2Apic => {
                id == self.initial_id || id == u32::MAX
            }
            Destination::Physical(id) => {
                id == u32::from(self.xapic_id) || id == 0xff || id == u32::MAX
            }
            Destination::Logical(mask) => self.match_logical(mask),
        }
    }

    /// [`LocalApic::accepts`], with the shorthands decided against `msg.source_apic_id`.
    pub fn accepts_message(&self, msg: &ApicMessage) -> bool {
        if self.mode() == ApicMode::Disabled {
            return false;
        }
        match msg.dest {
            Destination::SelfOnly => msg.source_apic_id == self.apic_id(),
            Destination::AllExcludingSelf => msg.source_apic_id != self.apic_id(),
            ref d => self.accepts(d),
        }
    }

    /// Takes a message this APIC accepts. Fixed and lowest-priority interrupts set the IRR
    /// (and the TMR if level-triggered, so the EOI is broadcast); they are dropped while the APIC
    /// is software-disabled, and vectors 0-15 are refused with "receive illegal vector" in the
    /// ESR. INIT resets this APIC (the CPU must reset itself); NMI and SIPI are for the CPU.
    pub fn deliver(&mut self, msg: &ApicMessage) -> Delivered {
        if self.mode() == ApicMode::Disabled {
            return Delivered::Ignored;
        }
        match msg.mode {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                if !self.sw_enabled() {
                    trace!(
                        apic = self.initial_id,
                        vector = msg.vector,
                        "interrupt to a software-disabled APIC dropped"
                    );
                    return Delivered::Ignored;
                }
                if msg.vector < 16 {
                    self.signal_error(ESR_RECEIVE_ILLEGAL_VECTOR);
                    return Delivered::Ignored;
                }
                bit_set(&mut self.irr, msg.vector);
                if msg.level_triggered {
                    bit_set(&mut self.tmr, msg.vector);
                } else {
                    bit_clear(&mut self.tmr, msg.vector);
                }
                Delivered::Accepted
            }
            DeliveryMode::Nmi => Delivered::Nmi,
            DeliveryMode::Init => {
                self.reset();
                Delivered::Init
            }
            DeliveryMode::StartUp(vector) => Delivered::Sipi(vector),
            DeliveryMode::Smi | DeliveryMode::ExtInt => {
                debug!(apic = self.initial_id, mode = ?msg.mode, "unsupported delivery mode dropped");
                Delivered::Ignored
            }
        }
    }
}
