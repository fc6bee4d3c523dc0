//! Exceptions and interrupts: how they are raised inside the interpreter and delivered through
//! the long-mode IDT (64-bit interrupt and trap gates, IST, stack switch through TSS.RSPn, error
//! codes, double and triple faults) and IRETQ.

use crate::cpu::{attr, efer, Cpu, SegReg, Segment};
use crate::flags;
use crate::memory::GuestMemory;
use crate::mmu::{is_canonical, Access, AccessKind};
use crate::Exit;

/// Exception vectors.
pub mod vector {
    /// Divide error.
    pub const DE: u8 = 0;
    /// Debug.
    pub const DB: u8 = 1;
    /// Breakpoint (INT3).
    pub const BP: u8 = 3;
    /// Overflow (INTO).
    pub const OF: u8 = 4;
    /// Invalid opcode.
    pub const UD: u8 = 6;
    /// Device not available.
    pub const NM: u8 = 7;
    /// Double fault.
    pub const DF: u8 = 8;
    /// Invalid TSS.
    pub const TS: u8 = 10;
    /// Segment not present.
    pub const NP: u8 = 11;
    /// Stack fault.
    pub const SS: u8 = 12;
    /// General protection.
    pub const GP: u8 = 13;
    /// Page fault.
    pub const PF: u8 = 14;
    /// x87 floating point error.
    pub const MF: u8 = 16;
    /// SIMD floating point exception.
    pub const XM: u8 = 19;
}

/// Where an event came from; decides the pushed RIP and the gate DPL check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A fault of the current instruction: pushes its own RIP.
    Fault,
    /// INT n / INT3 / INTO: pushes the next RIP and checks the gate DPL.
    Software,
    /// An external interrupt at an instruction boundary.
    External,
}

/// An exception or interrupt waiting to be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exception {
    /// Vector number.
    pub vector: u8,
    /// Error code, if the vector pushes one.
    pub error_code: Option<u32>,
    /// Origin.
    pub source: Source,
}

impl Exception {
    /// A fault of the current instruction.
    pub fn fault(vector: u8, error_code: Option<u32>) -> Self {
        Self {
            vector,
            error_code,
            source: Source::Fault,
        }
    }
    /// #GP(code).
    pub fn gp(code: u32) -> Self {
        Self::fault(vector::GP, Some(code))
    }
    /// #SS(code).
    pub fn ss(code: u32) -> Self {
        Self::fault(vector::SS, Some(code))
    }
    /// #NP(code).
    pub fn np(code: u32) -> Self {
        Self::fault(vector::NP, Some(code))
    }
    /// #UD.
    pub fn ud() -> Self {
        Self::fault(vector::UD, None)
    }
    /// #DE.
    pub fn de() -> Self {
        Self::fault(vector::DE, None)
    }
}

/// What stops an instruction: an exception to deliver, or a reason to leave the run loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Deliver through the IDT.
    Exception(Exception),
    /// Return to the embedder.
    Exit(Exit),
    /// A locked read-modify-write lost a race with another vCPU: nothing was committed; run
    /// the instruction again.
    Retry,
}

impl From<Exception> for Event {
    fn from(e: Exception) -> Self {
        Event::Exception(e)
    }
}

/// Result of anything an instruction does.
pub type Res<T> = Result<T, Event>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Benign,
    Contributory,
    PageFault,
}

fn class(v: u8) -> Class {
    match v {
        vector::DE | vector::TS | vector::NP | vector::SS | vector::GP => Class::Contributory,
        vector::PF => Class::PageFault,
        _ => Class::Benign,
    }
}

/// Whether a second exception during delivery of the first becomes #DF (SDM table 6-5).
fn is_double_fault(first: u8, second: u8) -> bool {
    matches!(
        (class(first), class(second)),
        (Class::Contributory, Class::Contributory)
            | (Class::PageFault, Class::Contributory | Class::PageFault)
    )
}

impl Cpu {
    /// Deliver `exc`, escalating to #DF and to a triple fault (shutdown) as the hardware does.
    pub(crate) fn deliver(
        &mut self,
        mem: &mut dyn GuestMemory,
        exc: Exception,
    ) -> Result<(), Exit> {
        // Delivery is serializing: code changed by others is seen from here on.
        self.catch_up_with_writers(mem);
        let mut current = exc;
        // Bounded: serial delivery can chain at most a few times before #DF or shutdown.
        for _ in 0..4 {
            let second = match self.deliver_once(mem, current) {
                Ok(()) => return Ok(()),
                Err(Event::Exit(e)) => return Err(e),
                Err(Event::Exception(s)) => s,
                // Delivery does no locked read-modify-write; should one race, deliver again.
                Err(Event::Retry) => continue,
            };
            tracing::debug!(
                first = current.vector,
                second = second.vector,
                "exception during delivery"
            );
            if current.vector == vector::DF {
                return Err(Exit::Shutdown);
            }
            let ext = current.source == Source::External;
            current = if is_double_fault(current.vector, second.vector) {
                Exception::fault(vector::DF, Some(0))
            } else {
                let code = second.error_code.map(|c| c | ext as u32);
                Exception {
                    error_code: code,
                    ..second
                }
            };
        }
        Err(Exit::Shutdown)
    }

    /// Read a code/data descriptor for `sel` from the GDT or LDT; #GP(sel) if outside the table.
    pub(crate) fn read_descriptor(&mut self, mem: &mut dyn GuestMemory, sel: u16) -> Res<u64> {
        let (base, limit) = if sel & 4 != 0 {
            (self.ldtr.base, self.ldtr.limit as u64)
        } else {
            (self.gdtr.base, self.gdtr.limit as u64)
        };
        let off = (sel & !7) as u64;
        if off + 7 > limit {
            return Err(Exception::gp((sel & !3) as u32).into());
        }
        let mut b = [0u8; 8];
        self.read_linear(
            mem,
            base.wrapping_add(off),
            &mut b,
            Access {
                kind: AccessKind::Read,
                user: false,
            },
        )?;
        Ok(u64::from_le_bytes(b))
    }

    /// Read a 64-bit field of the current TSS.
    fn read_tss_u64(&mut self, mem: &mut dyn GuestMemory, off: u64) -> Res<u64> {
        if off + 7 > self.tr.limit as u64 {
            return Err(Exception::fault(vector::TS, Some((self.tr.selector & !3) as u32)).into());
        }
        let mut b = [0u8; 8];
        self.read_linear(
            mem,
            self.tr.base.wrapping_add(off),
            &mut b,
            Access {
                kind: AccessKind::Read,
                user: false,
            },
        )?;
        Ok(u64::from_le_bytes(b))
    }

    fn deliver_once(&mut self, mem: &mut dyn GuestMemory, exc: Exception) -> Res<()> {
        if self.efer & efer::LMA == 0 {
            return if self.in_real_mode() {
                self.deliver_real(mem, exc)
            } else {
                self.deliver_protected(mem, exc)
            };
        }
        let v = exc.vector as u32;
        let ext = (exc.source == Source::External) as u32;
        let idt_code = v * 8 + 2 + ext;
        if v * 16 + 15 > self.idtr.limit as u32 {
            return Err(Exception::gp(idt_code).into());
        }
        let mut raw = [0u8; 16];
        let gate_la = self.idtr.base.wrapping_add(v as u64 * 16);
        self.read_linear(
            mem,
            gate_la,
            &mut raw,
            Access {
                kind: AccessKind::Read,
                user: false,
            },
        )?;
        let lo = u64::from_le_bytes(raw[..8].try_into().unwrap_or_default());
        let hi = u64::from_le_bytes(raw[8..].try_into().unwrap_or_default());
        let offset = (lo & 0xffff) | ((lo >> 48) << 16) | ((hi & 0xffff_ffff) << 32);
        let selector = ((lo >> 16) & 0xffff) as u16;
        let ist = (lo >> 32) & 7;
        let gate_type = (lo >> 40) & 0xf;
        let gate_dpl = ((lo >> 45) & 3) as u8;
        let present = (lo >> 47) & 1 != 0;
        if gate_type != 0xe && gate_type != 0xf {
            return Err(Exception::gp(idt_code).into());
        }
        let cpl = self.cpl();
        if exc.source == Source::Software && gate_dpl < cpl {
            return Err(Exception::gp(v * 8 + 2).into());
        }
        if !present {
            return Err(Exception::np(idt_code).into());
        }
        // Target code segment.
        if selector & !3 == 0 {
            return Err(Exception::gp(ext).into());
        }
        let desc = self.read_descriptor(mem, selector)?;
        let cs = Segment::from_descriptor(selector, desc);
        let sel_code = (selector & !3) as u32 + ext;
        let is_code = cs.attr & attr::S != 0 && cs.attr & attr::CODE != 0;
        if !is_code || cs.attr & attr::L == 0 || cs.attr & attr::DB != 0 || cs.dpl() > cpl {
            return Err(Exception::gp(sel_code).into());
        }
        if cs.attr & attr::P == 0 {
            return Err(Exception::np(sel_code).into());
        }
        let new_cpl = if cs.attr & attr::DC != 0 {
            cpl
        } else {
            cs.dpl()
        };
        // Stack.
        let old_rsp = self.gpr[4];
        let old_ss = self.seg[SegReg::Ss as usize];
        let mut rsp = old_rsp;
        if ist != 0 {
            rsp = self.read_tss_u64(mem, 0x24 + 8 * (ist - 1))?;
        } else if new_cpl < cpl {
            rsp = self.read_tss_u64(mem, 4 + 8 * new_cpl as u64)?;
        }
        if !is_canonical(rsp) {
            return Err(Exception::ss(ext).into());
        }
        rsp &= !0xf;
        let ret_rip = match exc.source {
            Source::Software => self.next_rip,
            _ => self.rip,
        };
        let mut frame: [u64; 6] = [0; 6];
        let mut n = 0;
        if let Some(code) = exc.error_code {
            frame[n] = code as u64;
            n += 1;
        }
        frame[n] = ret_rip;
        frame[n + 1] = self.seg[SegReg::Cs as usize].selector as u64;
        frame[n + 2] = self.flags.bits();
        frame[n + 3] = old_rsp;
        frame[n + 4] = old_ss.selector as u64;
        n += 5;
        // Write the frame from the lowest address up; every page is checked by write_linear.
        let user = new_cpl == 3;
        let top = rsp.wrapping_sub(8 * n as u64);
        for (i, val) in frame[..n].iter().enumerate() {
            let la = top.wrapping_add(8 * i as u64);
            if !is_canonical(la) {
                return Err(Exception::ss(ext).into());
            }
            self.write_linear(mem, la, &val.to_le_bytes(), user)?;
        }
        // Commit.
        self.gpr[4] = top;
        if new_cpl != cpl {
            self.seg[SegReg::Ss as usize] = Segment {
                selector: new_cpl as u16,
                base: 0,
                limit: 0,
                attr: attr::DB | attr::S | attr::RW | ((new_cpl as u16) << attr::DPL_SHIFT),
            };
        }
        self.seg[SegReg::Cs as usize] = Segment {
            selector: (selector & !3) | new_cpl as u16,
            ..cs
        };
        self.rip = offset;
        let mut f = self.flags.bits() & !(flags::TF | flags::NT | flags::RF | flags::VM);
        if gate_type == 0xe {
            f &= !flags::IF;
        }
        self.flags.set_bits(f);
        self.halted = false;
        self.interrupt_shadow = false;
        Ok(())
    }

    /// IRET with operand size `size` (4 or 8) in long mode (64-bit or compatibility mode).
    pub(crate) fn iret(&mut self, mem: &mut dyn GuestMemory, size: u8) -> Res<()> {
        if self.efer & efer::LMA == 0 {
            return self.iret_legacy(mem, size);
        }
        let cpl = self.cpl();
        let mut vals = [0u64; 5];
        let mut rsp = self.gpr[4];
        for v in vals.iter_mut() {
            *v = self.read_stack(mem, rsp, size)?;
            rsp = rsp.wrapping_add(size as u64);
        }
        let [new_rip, cs_sel, new_flags, new_rsp, ss_sel] = vals;
        let (cs_sel, ss_sel) = (cs_sel as u16, ss_sel as u16);
        let new_cpl = (cs_sel & 3) as u8;
        if cs_sel & !3 == 0 || new_cpl < cpl {
            return Err(Exception::gp((cs_sel & !3) as u32).into());
        }
        let cs = Segment::from_descriptor(cs_sel, self.read_descriptor(mem, cs_sel)?);
        let is_code = cs.attr & attr::S != 0 && cs.attr & attr::CODE != 0;
        let conforming = cs.attr & attr::DC != 0;
        if !is_code || (conforming && cs.dpl() > new_cpl) || (!conforming && cs.dpl() != new_cpl) {
            return Err(Exception::gp((cs_sel & !3) as u32).into());
        }
        if cs.attr & attr::P == 0 {
            return Err(Exception::np((cs_sel & !3) as u32).into());
        }
        let ss = if ss_sel & !3 == 0 {
            if new_cpl == 3 || cs.attr & attr::L == 0 {
                return Err(Exception::gp(0).into());
            }
            Segment {
                selector: ss_sel,
                base: 0,
                limit: 0,
                attr: attr::S | attr::RW | attr::DB | ((new_cpl as u16) << attr::DPL_SHIFT),
            }
        } else {
            let s = Segment::from_descriptor(ss_sel, self.read_descriptor(mem, ss_sel)?);
            let writable_data =
                s.attr & attr::S != 0 && s.attr & attr::CODE == 0 && s.attr & attr::RW != 0;
            if (ss_sel & 3) as u8 != new_cpl || s.dpl() != new_cpl || !writable_data {
                return Err(Exception::gp((ss_sel & !3) as u32).into());
            }
            if s.attr & attr::P == 0 {
                return Err(Exception::ss((ss_sel & !3) as u32).into());
            }
            s
        };
        let target_64 = cs.attr & attr::L != 0;
        if target_64 && !is_canonical(new_rip) {
            return Err(Exception::gp(0).into());
        }
        // Commit.
        let mask = if size == 4 { 0xffff_ffff } else { u64::MAX };
        self.write_flags_privileged(new_flags & mask, cpl, size);
        self.seg[SegReg::Cs as usize] = cs;
        self.seg[SegReg::Ss as usize] = ss;
        self.gpr[4] = new_rsp & mask;
        self.next_rip = if target_64 {
            new_rip
        } else {
            new_rip & 0xffff_ffff
        };
        if new_cpl > cpl {
            for s in [SegReg::Es, SegReg::Ds, SegReg::Fs, SegReg::Gs] {
                let seg = &mut self.seg[s as usize];
                let data_or_nc = seg.attr & attr::CODE == 0 || seg.attr & attr::DC == 0;
                if data_or_nc && seg.dpl() < new_cpl {
                    seg.selector = 0;
                    seg.attr = 0;
                }
            }
        }
        Ok(())
    }

    /// POPF/IRET flag update: what may change depends on CPL and IOPL.
    pub(crate) fn write_flags_privileged(&mut self, new: u64, cpl: u8, size: u8) {
        let old = self.flags.bits();
        let iopl = ((old & flags::IOPL) >> 12) as u8;
        let mut changeable =
            flags::ARITH | flags::TF | flags::DF | flags::NT | flags::AC | flags::ID | flags::RF;
        if cpl == 0 {
            changeable |= flags::IOPL;
        }
        if cpl <= iopl {
            changeable |= flags::IF;
        }
        if size == 2 {
            changeable &= 0xffff;
        }
        self.flags
            .set_bits((old & !changeable) | (new & changeable));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_fault_during_page_fault_is_double_fault() {
        assert!(is_double_fault(vector::PF, vector::PF));
        assert!(is_double_fault(vector::GP, vector::NP));
        assert!(!is_double_fault(vector::GP, vector::PF));
        assert!(!is_double_fault(vector::UD, vector::GP));
    }
}
