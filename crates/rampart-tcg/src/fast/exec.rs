//! Execution of the lowered forms: the same effects, checks and fault order as the generic
//! handlers in `crate::exec` (named beside each arm).

use super::{Addr, AluOp, Dst, Fast, Gpr, Src, UnOp, NONE};
use crate::cpu::{Cpu, SegReg};
use crate::exception::{Exception, Res};
use crate::exec::arith::add_sub;
use crate::exec::muldiv::imul_truncated;
use crate::exec::sext;
use crate::exec::shift::{count_mask, shift_result};
use crate::flags::{size_mask, LazyOp, CF};
use crate::memory::GuestMemory;
use crate::mmu::is_canonical;
use iced_x86::Mnemonic as M;

impl Cpu {
    /// Read register operand `r` at `size` bytes.
    #[inline(always)]
    fn fast_get(&self, r: Gpr, size: u8) -> u64 {
        if r < 16 {
            self.gpr[r as usize & 15] & size_mask(size)
        } else {
            (self.gpr[r as usize & 3] >> 8) & 0xff
        }
    }

    /// Write register operand `r` at `size` bytes with the x86 merge rules (`v` already
    /// masked; 32-bit writes zero-extend).
    #[inline(always)]
    fn fast_set(&mut self, r: Gpr, size: u8, v: u64) {
        if r >= 16 {
            let g = &mut self.gpr[r as usize & 3];
            *g = (*g & !0xff00) | ((v & 0xff) << 8);
            return;
        }
        let g = &mut self.gpr[r as usize & 15];
        *g = match size {
            1 => (*g & !0xff) | (v & 0xff),
            2 => (*g & !0xffff) | (v & 0xffff),
            4 => v & 0xffff_ffff,
            _ => v,
        };
    }

    /// The linear address of `a`, without the canonical check (LEA's effective address when
    /// `a` has no segment).
    #[inline(always)]
    fn fast_ea(&self, a: &Addr) -> u64 {
        let mut la = a.disp;
        if a.base != NONE {
            la = la.wrapping_add(self.gpr[a.base as usize & 15]);
        }
        if a.index != NONE {
            la = la.wrapping_add(self.gpr[a.index as usize & 15] << a.shift);
        }
        match a.seg {
            1 => la.wrapping_add(self.seg[SegReg::Fs as usize].base),
            2 => la.wrapping_add(self.seg[SegReg::Gs as usize].base),
            _ => la,
        }
    }

    /// The linear address of a data access through `a` (#GP(0), or #SS(0) for the stack
    /// segment, if it is not canonical), as `Cpu::mem_la`.
    #[inline(always)]
    fn fast_la(&self, a: &Addr) -> Res<u64> {
        let la = self.fast_ea(a);
        if is_canonical(la) {
            Ok(la)
        } else {
            Err(if a.stack {
                Exception::ss(0)
            } else {
                Exception::gp(0)
            }
            .into())
        }
    }

    #[inline(always)]
    fn fast_src(&mut self, mem: &mut dyn GuestMemory, s: &Src, size: u8) -> Res<u64> {
        match s {
            Src::Reg(r) => Ok(self.fast_get(*r, size)),
            Src::Imm(v) => Ok(*v),
            Src::Mem(a) => {
                let la = self.fast_la(a)?;
                self.read_mem(mem, la, size)
            }
        }
    }

    /// Set the next RIP to a near branch target (#GP(0) if it is not canonical).
    #[inline(always)]
    fn fast_jump(&mut self, target: u64) -> Res<()> {
        if !is_canonical(target) {
            return Err(Exception::gp(0).into());
        }
        self.next_rip = target;
        Ok(())
    }

    /// Execute lowered instruction `f` (not [`Fast::Generic`]); `next_rip` is already the
    /// address of the next instruction.
    #[inline(always)]
    pub(crate) fn exec_fast(&mut self, mem: &mut dyn GuestMemory, f: &Fast) -> Res<()> {
        match *f {
            Fast::Generic | Fast::Nop => Ok(()),
            // mov::mov
            Fast::Mov { size, dst, src } => {
                let v = self.fast_src(mem, &src, size)?;
                self.fast_write(mem, dst, size, v)
            }
            // mov::extend
            Fast::Extend {
                dsize,
                ssize,
                signed,
                dst,
                src,
            } => {
                let v = self.fast_src(mem, &src, ssize)?;
                let v = if signed { sext(v, ssize) } else { v };
                self.fast_set(dst, dsize, v & size_mask(dsize));
                Ok(())
            }
            // mov::lea
            Fast::Lea { size, dst, addr } => {
                let ea = self.fast_ea(&addr);
                self.fast_set(dst, size, ea & size_mask(size));
                Ok(())
            }
            Fast::Alu { op, size, dst, src } => self.fast_alu(mem, op, size, dst, &src),
            Fast::Unary { op, size, dst } => self.fast_unary(mem, op, size, dst),
            // control::jcc
            Fast::Jcc { cc, target } => {
                if self.flags.condition(cc) {
                    self.fast_jump(target)?;
                }
                Ok(())
            }
            // control::branch
            Fast::Jmp { target } => self.fast_jump(target),
            Fast::Call { target } => {
                if !is_canonical(target) {
                    return Err(Exception::gp(0).into());
                }
                self.push(mem, self.next_rip, 8)?;
                self.next_rip = target;
                Ok(())
            }
            Fast::JmpInd { src } => {
                let t = self.fast_src(mem, &src, 8)?;
                self.fast_jump(t)
            }
            Fast::CallInd { src } => {
                // The target is read (and checked) before the return address is pushed.
                let t = self.fast_src(mem, &src, 8)?;
                if !is_canonical(t) {
                    return Err(Exception::gp(0).into());
                }
                self.push(mem, self.next_rip, 8)?;
                self.next_rip = t;
                Ok(())
            }
            Fast::Ret => {
                let t = self.read_stack(mem, self.gpr[4], 8)?;
                if !is_canonical(t) {
                    return Err(Exception::gp(0).into());
                }
                self.gpr[4] = self.gpr[4].wrapping_add(8);
                self.next_rip = t;
                Ok(())
            }
            // stack::exec
            Fast::Push { src } => {
                let v = self.fast_get(src, 8);
                self.push(mem, v, 8)
            }
            Fast::Pop { dst } => {
                let v = self.read_stack(mem, self.gpr[4], 8)?;
                self.gpr[4] = self.gpr[4].wrapping_add(8);
                self.fast_set(dst, 8, v);
                Ok(())
            }
            // mov::setcc
            Fast::Setcc { cc, dst } => {
                let v = self.flags.condition(cc) as u64;
                self.fast_write(mem, dst, 1, v)
            }
            // shift::shift
            Fast::Shift {
                op,
                size,
                dst,
                count,
            } => self.fast_shift(mem, op, size, dst, &count),
            // muldiv::imul_multi
            Fast::Imul { size, dst, a, b } => {
                let a = self.fast_src(mem, &a, size)?;
                let b = self.fast_src(mem, &b, size)?;
                let lo = imul_truncated(self, size, a, b);
                self.fast_set(dst, size, lo);
                Ok(())
            }
            // mov::cmov
            Fast::Cmov { cc, size, dst, src } => {
                let v = self.fast_src(mem, &src, size)?;
                let new = if self.flags.condition(cc) {
                    v
                } else {
                    self.fast_get(dst, size)
                };
                self.fast_set(dst, size, new);
                Ok(())
            }
        }
    }

    /// Write `v` (masked to `size`) to destination `dst`.
    #[inline(always)]
    fn fast_write(&mut self, mem: &mut dyn GuestMemory, dst: Dst, size: u8, v: u64) -> Res<()> {
        match dst {
            Dst::Reg(r) => {
                self.fast_set(r, size, v);
                Ok(())
            }
            Dst::Mem(a) => {
                let la = self.fast_la(&a)?;
                self.write_mem(mem, la, size, v)
            }
        }
    }

    /// Read destination `dst` of a read-modify-write: its value and, for memory, its linear
    /// address (checked once, written back with [`Cpu::fast_write_back`]).
    #[inline(always)]
    fn fast_read_dst(
        &mut self,
        mem: &mut dyn GuestMemory,
        dst: Dst,
        size: u8,
    ) -> Res<(u64, Option<u64>)> {
        match dst {
            Dst::Reg(r) => Ok((self.fast_get(r, size), None)),
            Dst::Mem(addr) => {
                let la = self.fast_la(&addr)?;
                Ok((self.read_mem(mem, la, size)?, Some(la)))
            }
        }
    }

    /// Write the result of a read-modify-write back to `dst` (`la` from
    /// [`Cpu::fast_read_dst`]).
    #[inline(always)]
    fn fast_write_back(
        &mut self,
        mem: &mut dyn GuestMemory,
        dst: Dst,
        la: Option<u64>,
        size: u8,
        v: u64,
    ) -> Res<()> {
        match (dst, la) {
            (Dst::Reg(r), _) => {
                self.fast_set(r, size, v);
                Ok(())
            }
            (Dst::Mem(_), Some(la)) => self.write_mem(mem, la, size, v),
            (Dst::Mem(_), None) => Ok(()),
        }
    }

    /// arith::alu2 and logic::alu2.
    #[inline(always)]
    fn fast_alu(
        &mut self,
        mem: &mut dyn GuestMemory,
        op: AluOp,
        size: u8,
        dst: Dst,
        src: &Src,
    ) -> Res<()> {
        let (a, la) = self.fast_read_dst(mem, dst, size)?;
        let b = self.fast_src(mem, src, size)?;
        // Only a memory destination can still fault after the flags are recorded.
        let saved = la.map(|_| self.flags);
        let (res, write) = match op {
            AluOp::Add => (add_sub(self, M::Add, size, a, b), true),
            AluOp::Adc => (add_sub(self, M::Adc, size, a, b), true),
            AluOp::Sub => (add_sub(self, M::Sub, size, a, b), true),
            AluOp::Sbb => (add_sub(self, M::Sbb, size, a, b), true),
            AluOp::Cmp => (add_sub(self, M::Cmp, size, a, b), false),
            AluOp::And | AluOp::Test | AluOp::Or | AluOp::Xor => {
                let res = match op {
                    AluOp::And | AluOp::Test => a & b,
                    AluOp::Or => a | b,
                    _ => a ^ b,
                };
                self.flags.record(LazyOp::Logic, size, a, b, res, false);
                (res, op != AluOp::Test)
            }
        };
        if write {
            if let Err(e) = self.fast_write_back(mem, dst, la, size, res) {
                if let Some(saved) = saved {
                    self.flags = saved;
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// shift::shift.
    #[inline(always)]
    fn fast_shift(
        &mut self,
        mem: &mut dyn GuestMemory,
        op: M,
        size: u8,
        dst: Dst,
        count: &Src,
    ) -> Res<()> {
        let (a, la) = self.fast_read_dst(mem, dst, size)?;
        let c = self.fast_src(mem, count, 1)? & count_mask(size);
        let (res, flags) = if c == 0 {
            // No flags change, but the destination is still written.
            (a, None)
        } else {
            match shift_result(op, size, a, c, self.flags.get(CF)) {
                Some((res, mask, f)) => (res, Some((mask, f))),
                None => return Err(Exception::ud().into()),
            }
        };
        self.fast_write_back(mem, dst, la, size, res)?;
        if let Some((mask, f)) = flags {
            self.flags.set_arith(mask, f);
        }
        Ok(())
    }

    /// arith::unary and logic::not.
    #[inline(always)]
    fn fast_unary(&mut self, mem: &mut dyn GuestMemory, op: UnOp, size: u8, dst: Dst) -> Res<()> {
        let (a, la) = self.fast_read_dst(mem, dst, size)?;
        let mask = size_mask(size);
        let res = match op {
            UnOp::Inc => a.wrapping_add(1) & mask,
            UnOp::Dec => a.wrapping_sub(1) & mask,
            UnOp::Neg => a.wrapping_neg() & mask,
            UnOp::Not => !a & mask,
        };
        self.fast_write_back(mem, dst, la, size, res)?;
        match op {
            UnOp::Inc => self.flags.record(LazyOp::Inc, size, a, 1, res, false),
            UnOp::Dec => self.flags.record(LazyOp::Dec, size, a, 1, res, false),
            UnOp::Neg => self.flags.record(LazyOp::Sub, size, 0, a, res, false),
            UnOp::Not => {}
        }
        Ok(())
    }
}
