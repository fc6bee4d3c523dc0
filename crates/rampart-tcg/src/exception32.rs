//! Interrupt and exception delivery outside long mode, and the matching IRET.
//!
//! - Real mode: the interrupt vector table (4-byte `offset:segment` entries at IDTR.base, checked
//!   against IDTR.limit); FLAGS, CS and IP are pushed as words; no error codes.
//! - Protected mode: 8-byte IDT gates. 32-bit and 16-bit interrupt and trap gates are delivered,
//!   with the stack switch through a 32-bit TSS (SS0:ESP0 .. SS2:ESP2) when the handler is more
//!   privileged. Task gates, 16-bit TSSs, and IRET with NT (task return) or to virtual-8086 mode
//!   are not implemented: they end the run loop with [`Exit::Unsupported`].
//!
//! Escalation (#DF, triple fault) is common to every mode and lives in `exception`.

use crate::cpu::{attr, Cpu, SegReg, Segment};
use crate::exception::{vector, Event, Exception, Res, Source};
use crate::flags;
use crate::memory::GuestMemory;
use crate::segmentation::{la_in, CsLoad};
use crate::Exit;

fn unsupported(cpu: &Cpu, what: &'static str) -> Event {
    Event::Exit(Exit::Unsupported { rip: cpu.rip, what })
}

impl Cpu {
    /// The instruction pointer an event saves: the next instruction for INT n, the faulting
    /// one otherwise.
    fn return_ip(&self, exc: &Exception) -> u64 {
        match exc.source {
            Source::Software => self.next_rip,
            _ => self.rip,
        }
    }

    /// Push `vals` (in order) as `size`-byte items below `sp` in stack segment `ss`; returns
    /// the new stack pointer. Nothing is committed but memory, and every slot is checked
    /// before it is written.
    fn push_frame(
        &mut self,
        mem: &mut dyn GuestMemory,
        ss: &Segment,
        sp: u64,
        vals: &[u64],
        size: u8,
        user: bool,
    ) -> Res<u64> {
        let mask = if ss.attr & attr::DB != 0 {
            0xffff_ffff
        } else {
            0xffff
        };
        let real = self.in_real_mode();
        let mut sp = sp;
        for v in vals {
            sp = sp.wrapping_sub(size as u64) & mask;
            let la = la_in(ss, sp, size as u64, true, real)?;
            self.write_linear(mem, la, &v.to_le_bytes()[..size as usize], user)?;
        }
        Ok(sp)
    }

    /// Real-mode delivery through the interrupt vector table.
    pub(crate) fn deliver_real(&mut self, mem: &mut dyn GuestMemory, exc: Exception) -> Res<()> {
        let v = exc.vector as u64;
        if v * 4 + 3 > self.idtr.limit as u64 {
            return Err(Exception::gp(0).into());
        }
        let entry: [u8; 4] = self.read_system(mem, self.idtr.base.wrapping_add(v * 4))?;
        let ip = u16::from_le_bytes([entry[0], entry[1]]) as u64;
        let cs = u16::from_le_bytes([entry[2], entry[3]]);
        let frame = [
            self.flags.bits() & 0xffff,
            self.seg[SegReg::Cs as usize].selector as u64,
            self.return_ip(&exc) & 0xffff,
        ];
        let ss = self.seg[SegReg::Ss as usize];
        let sp = self.push_frame(mem, &ss, self.gpr[4], &frame, 2, false)?;
        self.set_sp(sp);
        self.install_cs(CsLoad::Real, cs);
        self.rip = ip;
        let f = self.flags.bits() & !(flags::IF | flags::TF | flags::AC | flags::RF);
        self.flags.set_bits(f);
        self.halted = false;
        self.interrupt_shadow = false;
        Ok(())
    }

    /// Protected-mode (not long mode) delivery through a 16- or 32-bit interrupt/trap gate.
    pub(crate) fn deliver_protected(
        &mut self,
        mem: &mut dyn GuestMemory,
        exc: Exception,
    ) -> Res<()> {
        let v = exc.vector as u32;
        let ext = (exc.source == Source::External) as u32;
        let idt_code = v * 8 + 2 + ext;
        if v * 8 + 7 > self.idtr.limit as u32 {
            return Err(Exception::gp(idt_code).into());
        }
        let raw = u64::from_le_bytes(
            self.read_system::<8>(mem, self.idtr.base.wrapping_add(v as u64 * 8) & 0xffff_ffff)?,
        );
        let offset = (raw & 0xffff) | ((raw >> 48) << 16);
        let selector = ((raw >> 16) & 0xffff) as u16;
        let gate_type = (raw >> 40) & 0xf;
        let gate_dpl = ((raw >> 45) & 3) as u8;
        let present = (raw >> 47) & 1 != 0;
        let size: u8 = match gate_type {
            0xe | 0xf => 4,
            0x6 | 0x7 => 2,
            0x5 => 0,
            _ => return Err(Exception::gp(idt_code).into()),
        };
        let offset = if size == 2 { offset & 0xffff } else { offset };
        let cpl = self.cpl();
        if exc.source == Source::Software && gate_dpl < cpl {
            return Err(Exception::gp(v * 8 + 2).into());
        }
        if !present {
            return Err(Exception::np(idt_code).into());
        }
        if size == 0 {
            return Err(unsupported(self, "interrupt through a task gate"));
        }
        if selector & !3 == 0 {
            return Err(Exception::gp(ext).into());
        }
        let sel_code = (selector & !3) as u32 + ext;
        let desc = self.read_descriptor(mem, selector)?;
        let cs = Segment::from_descriptor(selector, desc);
        let is_code = cs.attr & attr::S != 0 && cs.attr & attr::CODE != 0;
        if !is_code || cs.dpl() > cpl {
            return Err(Exception::gp(sel_code).into());
        }
        if cs.attr & attr::P == 0 {
            return Err(Exception::np(sel_code).into());
        }
        if offset > cs.limit as u64 {
            return Err(Exception::gp(ext).into());
        }
        let new_cpl = if cs.attr & attr::DC != 0 {
            cpl
        } else {
            cs.dpl()
        };
        let mask = if size == 2 { 0xffff } else { 0xffff_ffff };
        let old_ss = self.seg[SegReg::Ss as usize];
        let mut frame = [0u64; 6];
        let mut n = 0;
        let (ss, sp) = if new_cpl < cpl {
            let (ss, esp) = self.inner_stack(mem, new_cpl, ext)?;
            frame[0] = old_ss.selector as u64;
            frame[1] = self.gpr[4] & mask;
            n = 2;
            (ss, esp)
        } else {
            (old_ss, self.gpr[4])
        };
        frame[n] = self.flags.bits() & mask;
        frame[n + 1] = self.seg[SegReg::Cs as usize].selector as u64;
        frame[n + 2] = self.return_ip(&exc) & mask;
        n += 3;
        if let Some(code) = exc.error_code {
            frame[n] = code as u64 & mask;
            n += 1;
        }
        let new_sp = self.push_frame(mem, &ss, sp, &frame[..n], size, new_cpl == 3)?;
        // Commit.
        self.seg[SegReg::Ss as usize] = ss;
        self.gpr[4] = if ss.attr & attr::DB != 0 {
            new_sp
        } else {
            (self.gpr[4] & !0xffff) | new_sp
        };
        self.seg[SegReg::Cs as usize] = Segment {
            selector: (selector & !3) | new_cpl as u16,
            attr: cs.attr | attr::ACCESSED,
            ..cs
        };
        self.rip = offset;
        let mut f = self.flags.bits() & !(flags::TF | flags::NT | flags::RF | flags::VM);
        if gate_type & 1 == 0 {
            f &= !flags::IF;
        }
        self.flags.set_bits(f);
        self.halted = false;
        self.interrupt_shadow = false;
        Ok(())
    }

    /// SS:ESP for privilege `dpl` from the current 32-bit TSS, with the SS checks (#TS).
    fn inner_stack(&mut self, mem: &mut dyn GuestMemory, dpl: u8, ext: u32) -> Res<(Segment, u64)> {
        let ts = |code: u32| -> Event { Exception::fault(vector::TS, Some(code)).into() };
        let tss_type = self.tr.attr & 0xf;
        if tss_type != 0x9 && tss_type != 0xb {
            return Err(unsupported(
                self,
                "privilege change through a 16-bit or missing TSS",
            ));
        }
        let off = 4 + 8 * dpl as u64;
        if off + 7 > self.tr.limit as u64 {
            return Err(ts((self.tr.selector & !3) as u32 + ext));
        }
        let b: [u8; 8] = self.read_system(mem, self.tr.base.wrapping_add(off) & 0xffff_ffff)?;
        let esp = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64;
        let ss_sel = u16::from_le_bytes([b[4], b[5]]);
        let code = (ss_sel & !3) as u32 + ext;
        if ss_sel & !3 == 0 {
            return Err(ts(ext));
        }
        let raw = self.read_descriptor(mem, ss_sel).map_err(|_| ts(code))?;
        let ss = Segment::from_descriptor(ss_sel, raw);
        let writable_data =
            ss.attr & attr::S != 0 && ss.attr & attr::CODE == 0 && ss.attr & attr::RW != 0;
        if (ss_sel & 3) as u8 != dpl || ss.dpl() != dpl || !writable_data {
            return Err(ts(code));
        }
        if ss.attr & attr::P == 0 {
            return Err(Exception::ss(code).into());
        }
        Ok((
            Segment {
                attr: ss.attr | attr::ACCESSED,
                ..ss
            },
            esp,
        ))
    }

    /// IRET / IRETD outside long mode (`size` 2 or 4).
    pub(crate) fn iret_legacy(&mut self, mem: &mut dyn GuestMemory, size: u8) -> Res<()> {
        let sz = size as u64;
        let mask = if size == 2 { 0xffff } else { 0xffff_ffff };
        if !self.in_real_mode() && self.flags.get(flags::NT) {
            return Err(unsupported(self, "IRET with NT set (task return)"));
        }
        let sp = self.gpr[4];
        let new_ip = self.read_stack(mem, sp, size)? & mask;
        let sel = self.read_stack(mem, sp.wrapping_add(sz), size)? as u16;
        let new_flags = self.read_stack(mem, sp.wrapping_add(2 * sz), size)? & mask;
        let cpl = self.cpl();
        if !self.in_real_mode() && size == 4 && new_flags & flags::VM != 0 && cpl == 0 {
            return Err(unsupported(self, "IRET to virtual-8086 mode"));
        }
        let load = self
            .check_code_segment(mem, sel, true)?
            .ok_or(Exception::gp((sel & !3) as u32))?;
        let cs = self.cs_after(&load, sel);
        let outer = !self.in_real_mode() && (sel & 3) as u8 > cpl;
        let after = sp.wrapping_add(3 * sz);
        let new_stack = if outer {
            let new_sp = self.read_stack(mem, after, size)?;
            let ss_sel = self.read_stack(mem, after.wrapping_add(sz), size)? as u16;
            Some((
                self.check_stack_segment(mem, ss_sel, (sel & 3) as u8, false)?,
                new_sp,
            ))
        } else {
            None
        };
        if !self.ip_fits(&cs, new_ip) {
            return Err(Exception::gp(0).into());
        }
        // Commit: flags under the old CPL's rules, then the stack and CS.
        self.write_flags_privileged(new_flags, cpl, size);
        match new_stack {
            None => {
                self.set_sp(after);
                self.install_cs(load, sel);
            }
            Some((ss, new_sp)) => {
                self.install_cs(load, sel);
                self.seg[SegReg::Ss as usize] = ss;
                self.gpr[4] = new_sp;
                self.set_sp(new_sp);
                self.null_inaccessible_data_segments();
            }
        }
        self.next_rip = new_ip;
        Ok(())
    }
}
