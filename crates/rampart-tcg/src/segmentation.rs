//! Segmentation outside 64-bit mode: linear addresses from segment base, limit and presence, and
//! the protected-mode checks of code-segment loads shared by far JMP/CALL/RET, IRET and
//! interrupt delivery.
//!
//! In 64-bit mode segments are flat (FS/GS add a base) and these functions are not on the path;
//! there the canonical-address check in `exec` is the only one.
//!
//! Limits: an expand-up segment allows offsets `0..=limit`; an expand-down data segment allows
//! `limit+1..=0xffff` (B clear) or `..=0xffff_ffff` (B set). A fault through SS is #SS(0), any
//! other #GP(0). Linear addresses wrap at 4 GiB. Write permission on read-only data segments is
//! not checked (no guest this CPU targets relies on that fault).

use crate::cpu::{attr, Cpu, SegReg, Segment};
use crate::exception::{Exception, Res};
use crate::memory::GuestMemory;
use crate::mmu::{Access, AccessKind};
use iced_x86::{Instruction, Register};

/// Whether `size` bytes at `off` lie inside segment `s`.
pub(crate) fn within_limit(s: &Segment, off: u64, size: u64) -> bool {
    let last = match off.checked_add(size.max(1) - 1) {
        Some(l) => l,
        None => return false,
    };
    let is_code = s.attr & attr::CODE != 0;
    if !is_code && s.attr & attr::DC != 0 {
        let upper = if s.attr & attr::DB != 0 {
            0xffff_ffff
        } else {
            0xffff
        };
        off > s.limit as u64 && last <= upper
    } else {
        last <= s.limit as u64
    }
}

/// What a checked code-segment load installs in CS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CsLoad {
    /// Real mode: CS = selector << 4.
    Real,
    /// Protected/long mode: the checked descriptor cache to install.
    Descriptor(Segment),
}

/// Linear address of `size` bytes at `off` in `seg` (outside 64-bit mode): presence (protected
/// mode only) and limit checked, #SS(0) for a stack access and #GP(0) otherwise.
pub(crate) fn la_in(seg: &Segment, off: u64, size: u64, stack: bool, real: bool) -> Res<u64> {
    if (!real && seg.attr & attr::P == 0) || !within_limit(seg, off, size) {
        return Err(if stack {
            Exception::ss(0)
        } else {
            Exception::gp(0)
        }
        .into());
    }
    Ok(seg.base.wrapping_add(off) & 0xffff_ffff)
}

impl Cpu {
    /// Linear address of `size` bytes at offset `off` through segment `s` outside 64-bit mode,
    /// with the presence and limit checks (#SS(0) through SS, #GP(0) otherwise).
    pub(crate) fn seg_la(&self, s: SegReg, off: u64, size: u64) -> Res<u64> {
        la_in(
            &self.seg[s as usize],
            off,
            size,
            s == SegReg::Ss,
            self.in_real_mode(),
        )
    }

    /// Linear address of memory operand `op` outside 64-bit mode (called by `exec::mem_la`).
    pub(crate) fn legacy_mem_la(&self, instr: &Instruction, op: u32) -> Res<u64> {
        let off = instr
            .virtual_address(op, 0, |r, _, _| {
                Some(if r.is_segment_register() {
                    0
                } else {
                    self.reg(r)
                })
            })
            .unwrap_or(0);
        let s = SegReg::from_iced(instr.memory_segment()).unwrap_or(SegReg::Ds);
        let size = instr.memory_size().size().clamp(1, 16) as u64;
        self.seg_la(s, off, size)
    }

    /// Linear address of a string-instruction operand: `seg:off` (64-bit mode: flat, FS/GS
    /// based, canonical; otherwise with the segment checks).
    pub(crate) fn string_la(&self, s: Register, off: u64, size: u8) -> Res<u64> {
        if self.in_64bit_mode() {
            let la = self.seg_base(s).wrapping_add(off);
            self.check_canonical(la, s == Register::SS)?;
            return Ok(la);
        }
        let sr = SegReg::from_iced(s).unwrap_or(SegReg::Ds);
        self.seg_la(sr, off, size as u64)
    }

    /// Set the accessed bit of descriptor `sel` in its table if it is clear (the hardware
    /// does this on every segment load).
    pub(crate) fn mark_accessed(
        &mut self,
        mem: &mut dyn GuestMemory,
        sel: u16,
        raw: u64,
    ) -> Res<()> {
        if raw & (1 << 40) != 0 {
            return Ok(());
        }
        let base = if sel & 4 != 0 {
            self.ldtr.base
        } else {
            self.gdtr.base
        };
        let la = base.wrapping_add((sel & !7) as u64 + 5);
        let byte = ((raw >> 40) as u8) | 1;
        self.write_linear(mem, la, &[byte], false)
    }

    /// Check a far JMP/CALL/RET target selector and return what to load into CS.
    ///
    /// `rpl_is_new_cpl`: RETF/IRET (the selector's RPL is the privilege returned to, which may
    /// be outer) instead of JMP/CALL (same privilege only; conforming segments keep the CPL).
    /// Gates and TSS selectors are reported as an unsupported exit by the caller (`None`).
    pub(crate) fn check_code_segment(
        &mut self,
        mem: &mut dyn GuestMemory,
        sel: u16,
        rpl_is_new_cpl: bool,
    ) -> Res<Option<CsLoad>> {
        if self.in_real_mode() {
            return Ok(Some(CsLoad::Real));
        }
        let code = (sel & !3) as u32;
        if sel & !3 == 0 {
            return Err(Exception::gp(0).into());
        }
        let raw = self.read_descriptor(mem, sel)?;
        let d = Segment::from_descriptor(sel, raw);
        if d.attr & attr::S == 0 {
            return Ok(None);
        }
        let cpl = self.cpl();
        let rpl = (sel & 3) as u8;
        let conforming = d.attr & attr::DC != 0;
        if d.attr & attr::CODE == 0 {
            return Err(Exception::gp(code).into());
        }
        let ok = if rpl_is_new_cpl {
            rpl >= cpl
                && if conforming {
                    d.dpl() <= rpl
                } else {
                    d.dpl() == rpl
                }
        } else if conforming {
            d.dpl() <= cpl
        } else {
            rpl <= cpl && d.dpl() == cpl
        };
        if !ok {
            return Err(Exception::gp(code).into());
        }
        if d.attr & attr::P == 0 {
            return Err(Exception::np(code).into());
        }
        let long = self.efer & crate::cpu::efer::LMA != 0;
        // L with D is reserved in long mode (outside it, L is ignored: cleared below).
        if long && d.attr & attr::L != 0 && d.attr & attr::DB != 0 {
            return Err(Exception::gp(code).into());
        }
        self.mark_accessed(mem, sel, raw)?;
        let new_cpl = if rpl_is_new_cpl { rpl } else { cpl };
        let mut cs = d;
        if !long {
            cs.attr &= !attr::L;
        }
        cs.selector = (sel & !3) | new_cpl as u16;
        cs.attr |= attr::ACCESSED;
        Ok(Some(CsLoad::Descriptor(cs)))
    }

    /// Whether `target` is a valid instruction pointer for code segment `cs` (canonical for a
    /// 64-bit segment, within the limit otherwise).
    pub(crate) fn ip_fits(&self, cs: &Segment, target: u64) -> bool {
        if self.efer & crate::cpu::efer::LMA != 0 && cs.attr & attr::L != 0 {
            crate::mmu::is_canonical(target)
        } else {
            target <= cs.limit as u64
        }
    }

    /// Install a checked CS (from [`Cpu::check_code_segment`]).
    pub(crate) fn install_cs(&mut self, load: CsLoad, sel: u16) {
        let cs = &mut self.seg[SegReg::Cs as usize];
        match load {
            CsLoad::Real => {
                cs.selector = sel;
                cs.base = (sel as u64) << 4;
            }
            CsLoad::Descriptor(d) => *cs = d,
        }
    }

    /// The segment a CS load would produce, without committing (for IP checks).
    pub(crate) fn cs_after(&self, load: &CsLoad, sel: u16) -> Segment {
        match load {
            CsLoad::Real => Segment {
                selector: sel,
                base: (sel as u64) << 4,
                ..self.seg[SegReg::Cs as usize]
            },
            CsLoad::Descriptor(d) => *d,
        }
    }

    /// Read `N` bytes of a system table (GDT/LDT/IDT/TSS) at linear address `la` with
    /// supervisor rights.
    pub(crate) fn read_system<const N: usize>(
        &mut self,
        mem: &mut dyn GuestMemory,
        la: u64,
    ) -> Res<[u8; N]> {
        let mut b = [0u8; N];
        self.read_linear(
            mem,
            la,
            &mut b,
            Access {
                kind: AccessKind::Read,
                user: false,
            },
        )?;
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(limit: u32, attr_bits: u16) -> Segment {
        Segment {
            selector: 0,
            base: 0x1000,
            limit,
            attr: attr::P | attr::S | attr_bits,
        }
    }

    #[test]
    fn expand_up_limit_is_inclusive() {
        let s = seg(0xffff, attr::RW);
        assert!(within_limit(&s, 0xfffe, 2));
        assert!(!within_limit(&s, 0xffff, 2));
    }

    #[test]
    fn expand_down_segment_allows_only_above_limit() {
        let s = seg(0x0fff, attr::RW | attr::DC);
        assert!(!within_limit(&s, 0x0fff, 1));
        assert!(within_limit(&s, 0x1000, 4));
        assert!(!within_limit(&s, 0xfffe, 4));
    }

    #[test]
    fn real_mode_address_is_base_plus_offset_and_wraps_at_4g() {
        let mut c = Cpu::new();
        c.seg[SegReg::Ds as usize].base = 0xffff_fff0;
        c.seg[SegReg::Ds as usize].limit = 0xffff;
        assert_eq!(c.seg_la(SegReg::Ds, 0x20, 1).unwrap(), 0x10);
        assert_eq!(
            c.seg_la(SegReg::Ss, 0xffff, 2),
            Err(Exception::ss(0).into())
        );
    }
}
