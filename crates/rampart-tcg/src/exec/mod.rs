//! Instruction execution: operand access shared by all families, and the mnemonic dispatch.

pub(crate) mod arith;
pub(crate) mod bits;
pub(crate) mod control;
pub(crate) mod far;
pub(crate) mod legacy;
pub(crate) mod logic;
pub(crate) mod mov;
pub(crate) mod msr;
pub(crate) mod muldiv;
pub(crate) mod segment;
pub(crate) mod shift;
pub(crate) mod sse;
pub(crate) mod sse_cvt;
pub(crate) mod sse_float;
pub(crate) mod sse_fp;
pub(crate) mod sse_fxsave;
pub(crate) mod sse_int;
pub(crate) mod sse_move;
pub(crate) mod stack;
pub(crate) mod string;
pub mod system;
pub(crate) mod x87;

use crate::cpu::Cpu;
use crate::exception::{Event, Exception, Res};
use crate::flags::size_mask;
use crate::memory::GuestMemory;
use crate::mmu::{is_canonical, Access, AccessKind};
use iced_x86::{EncodingKind, Instruction, Mnemonic as M, OpKind, Register};

/// Where an operand lives once its address is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Loc {
    /// A general-purpose register.
    Reg(Register),
    /// Linear address.
    Mem(u64),
}

/// Size in bytes of operand `op`.
pub(crate) fn op_size(instr: &Instruction, op: u32) -> u8 {
    match instr.op_kind(op) {
        OpKind::Register => instr.op_register(op).size() as u8,
        OpKind::Immediate8 | OpKind::Immediate8_2nd => 1,
        OpKind::Immediate16 | OpKind::Immediate8to16 => 2,
        OpKind::Immediate32 | OpKind::Immediate8to32 => 4,
        OpKind::Immediate64 | OpKind::Immediate8to64 | OpKind::Immediate32to64 => 8,
        _ => instr.memory_size().size() as u8,
    }
}

/// Whether an operand of kind `k` is an immediate (of any width or extension).
pub(crate) fn is_immediate(k: OpKind) -> bool {
    matches!(
        k,
        OpKind::Immediate8
            | OpKind::Immediate8_2nd
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64
    )
}

/// Sign-extend the low `size` bytes of `v`.
pub(crate) fn sext(v: u64, size: u8) -> u64 {
    match size {
        1 => v as u8 as i8 as i64 as u64,
        2 => v as u16 as i16 as i64 as u64,
        4 => v as u32 as i32 as i64 as u64,
        _ => v,
    }
}

impl Cpu {
    fn data_access(&self, kind: AccessKind) -> Access {
        Access {
            kind,
            user: self.user_access(),
        }
    }

    /// Linear address of memory operand `op`, with the canonical check (#SS for stack accesses).
    pub(crate) fn mem_la(&self, instr: &Instruction, op: u32) -> Res<u64> {
        if !self.in_64bit_mode() {
            return self.legacy_mem_la(instr, op);
        }
        let la = match self.la64(instr, op) {
            Some(la) => la,
            None => instr
                .virtual_address(op, 0, |r, _, _| {
                    Some(if r.is_segment_register() {
                        self.seg_base(r)
                    } else {
                        self.reg(r)
                    })
                })
                .unwrap_or(0),
        };
        self.check_canonical(la, instr.memory_segment() == Register::SS)?;
        Ok(la)
    }

    /// The linear address of a plain memory operand with 64-bit addressing, computed directly
    /// (iced's generic evaluator is the fallback): base (a 64-bit GPR, or RIP whose target iced
    /// has folded into the displacement) + index << scale + displacement, + the FS/GS base.
    /// `None` for every other form (32-bit addressing, VSIB, ignored index, string operands).
    #[inline]
    pub(crate) fn la64(&self, instr: &Instruction, op: u32) -> Option<u64> {
        // Legacy encodings only: VEX/EVEX bring VSIB and AMX's unscaled stride index.
        if instr.op_kind(op) != OpKind::Memory || instr.encoding() != EncodingKind::Legacy {
            return None;
        }
        let base = instr.memory_base();
        let index = instr.memory_index();
        let mut la = instr.memory_displacement64();
        if base.is_gpr64() {
            la = la.wrapping_add(self.reg(base));
        } else if base == Register::None {
            // [index*scale + disp32] is 64-bit addressing; a bare displacement is if iced
            // decoded it as a 64-bit one (an address-size prefix makes it 32-bit).
            if index == Register::None && instr.memory_displ_size() != 8 {
                return None;
            }
        } else if base != Register::RIP {
            return None;
        }
        if index != Register::None {
            // MPX BNDLDX/BNDSTX ignore the index in the address (and are #UD here anyway).
            if !index.is_gpr64() || matches!(instr.mnemonic(), M::Bndldx | M::Bndstx) {
                return None;
            }
            la = la.wrapping_add(self.reg(index) << instr.memory_index_scale().trailing_zeros());
        }
        // LEA and MPX's bound checks ignore the segment.
        if matches!(
            instr.mnemonic(),
            M::Lea | M::Bndcl | M::Bndcu | M::Bndcn | M::Bndmk
        ) {
            return Some(la);
        }
        match instr.memory_segment() {
            Register::FS => la = la.wrapping_add(self.seg[crate::SegReg::Fs as usize].base),
            Register::GS => la = la.wrapping_add(self.seg[crate::SegReg::Gs as usize].base),
            _ => {}
        }
        Some(la)
    }

    pub(crate) fn check_canonical(&self, la: u64, stack: bool) -> Res<()> {
        if is_canonical(la) {
            Ok(())
        } else if stack {
            Err(Exception::ss(0).into())
        } else {
            Err(Exception::gp(0).into())
        }
    }

    /// Resolve operand `op` to a register or linear address.
    pub(crate) fn loc(&self, instr: &Instruction, op: u32) -> Res<Loc> {
        match instr.op_kind(op) {
            OpKind::Register => Ok(Loc::Reg(instr.op_register(op))),
            _ => Ok(Loc::Mem(self.mem_la(instr, op)?)),
        }
    }

    /// Read `size` bytes (1..=8) at linear address `la`.
    #[inline]
    pub(crate) fn read_mem(&mut self, mem: &mut dyn GuestMemory, la: u64, size: u8) -> Res<u64> {
        let v = self.read_data(mem, la, size)?;
        if self.lock.active && self.lock.read.is_none() {
            self.lock.read = Some((la, size, v));
        }
        Ok(v)
    }

    /// Read `size` bytes (1..=8) at linear address `la` with this CPU's data privilege: one
    /// translation and [`GuestMemory::read_small`] when the access stays in one page.
    #[inline]
    pub(crate) fn read_data(&mut self, mem: &mut dyn GuestMemory, la: u64, size: u8) -> Res<u64> {
        let n = (size as usize).min(8);
        let access = self.data_access(AccessKind::Read);
        if (la & 0xfff) as usize + n <= 0x1000 {
            let pa = self.translate(mem, la, access)?;
            return mem
                .read_small(pa, n as u8)
                .map_err(|e| Event::Exit(crate::Exit::from(e)));
        }
        let mut b = [0u8; 8];
        self.read_linear(mem, la, &mut b[..n], access)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Write the low `size` bytes (1..=8) of `v` at linear address `la`.
    #[inline]
    pub(crate) fn write_mem(
        &mut self,
        mem: &mut dyn GuestMemory,
        la: u64,
        size: u8,
        v: u64,
    ) -> Res<()> {
        let n = (size as usize).min(8);
        if let Some((rla, rsize, old)) = self.lock.read {
            if self.lock.active && rla == la && rsize == size {
                return self.write_locked(mem, la, n, old, v);
            }
        }
        if (la & 0xfff) as usize + n <= 0x1000 {
            let access = self.data_access(AccessKind::Write);
            let pa = self.translate(mem, la, access)?;
            self.note_store(pa);
            return mem
                .write_small(pa, n as u8, v)
                .map_err(|e| Event::Exit(crate::Exit::from(e)));
        }
        let user = self.user_access();
        self.write_linear(mem, la, &v.to_le_bytes()[..n], user)
    }

    /// The write of a locked read-modify-write: a compare-and-exchange against the value the
    /// instruction read, so a concurrent write by another vCPU makes it run again instead of
    /// being lost. A split lock (operand across a page boundary) is written plainly.
    fn write_locked(
        &mut self,
        mem: &mut dyn GuestMemory,
        la: u64,
        n: usize,
        old: u64,
        v: u64,
    ) -> Res<()> {
        let access = self.data_access(AccessKind::Write);
        let ((pa, len), second) = self.split(mem, la, n, access)?;
        if second.is_some() || len != n {
            let user = self.user_access();
            return self.write_linear(mem, la, &v.to_le_bytes()[..n], user);
        }
        self.note_store(pa);
        let mut found = [0u8; 8];
        mem.compare_exchange(
            pa,
            &old.to_le_bytes()[..n],
            &v.to_le_bytes()[..n],
            &mut found[..n],
        )
        .map_err(|e| Event::Exit(crate::Exit::from(e)))?;
        if found[..n] != old.to_le_bytes()[..n] {
            return Err(Event::Retry);
        }
        Ok(())
    }

    /// Check that a write of `size` bytes at `la` would succeed, without writing.
    pub(crate) fn probe_write(&mut self, mem: &mut dyn GuestMemory, la: u64, size: u8) -> Res<()> {
        let access = self.data_access(AccessKind::Write);
        self.split(mem, la, size as usize, access).map(|_| ())
    }

    pub(crate) fn read_loc(&mut self, mem: &mut dyn GuestMemory, loc: Loc, size: u8) -> Res<u64> {
        match loc {
            Loc::Reg(r) => Ok(self.reg(r)),
            Loc::Mem(la) => self.read_mem(mem, la, size),
        }
    }

    pub(crate) fn write_loc(
        &mut self,
        mem: &mut dyn GuestMemory,
        loc: Loc,
        size: u8,
        v: u64,
    ) -> Res<()> {
        match loc {
            Loc::Reg(r) => {
                self.set_reg(r, v & size_mask(size));
                Ok(())
            }
            Loc::Mem(la) => self.write_mem(mem, la, size, v),
        }
    }

    /// Read operand `op` (register, memory or immediate), masked to its size.
    pub(crate) fn read_op(
        &mut self,
        mem: &mut dyn GuestMemory,
        instr: &Instruction,
        op: u32,
    ) -> Res<u64> {
        let size = op_size(instr, op);
        match instr.op_kind(op) {
            OpKind::Register => Ok(self.reg(instr.op_register(op))),
            OpKind::Memory => {
                let la = self.mem_la(instr, op)?;
                self.read_mem(mem, la, size)
            }
            k if is_immediate(k) => Ok(instr.immediate(op) & size_mask(size)),
            _ => Err(self.unimplemented(instr)),
        }
    }
}

/// Execute one decoded instruction.
/// A locked read-modify-write in progress: its memory operand's first read, which the write
/// must still find in memory (compare-and-exchange) for the instruction to be atomic against
/// other vCPUs.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LockState {
    active: bool,
    /// (linear address, size, value read).
    read: Option<(u64, u8, u64)>,
}

/// The serializing system instructions the generic path runs (IRET is handled with the
/// events; MOV to CR/DR goes through MOV): after one, code stored by other vCPUs or devices
/// must be what runs, so the block validation generation ends (`Cpu::code_gen`).
fn is_serializing(m: M) -> bool {
    matches!(
        m,
        M::Cpuid
            | M::Invd
            | M::Wbinvd
            | M::Invlpg
            | M::Invpcid
            | M::Lgdt
            | M::Lidt
            | M::Lldt
            | M::Ltr
            | M::Wrmsr
            | M::Serialize
            | M::Rsm
    )
}

/// MSRs whose WRMSR is not serializing (Intel SDM vol. 3, "Serializing Instructions"): the
/// x2APIC registers (0x802-0x83F) and IA32_TSC_DEADLINE (0x6E0).
fn non_serializing_msr(msr: u32) -> bool {
    (0x802..=0x83f).contains(&msr) || msr == 0x6e0
}

/// Whether `i` is atomic on its memory operand: a `lock` prefix, or XCHG with memory.
pub(crate) fn is_locked(i: &Instruction) -> bool {
    i.has_lock_prefix()
        || (i.mnemonic() == M::Xchg
            && (i.op0_kind() == OpKind::Memory || i.op1_kind() == OpKind::Memory))
}

pub(crate) fn execute(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    execute_op(cpu, mem, i, i.mnemonic(), is_locked(i))
}

/// [`execute`] with the mnemonic and [`is_locked`] of `i` already looked up (the block cache
/// keeps them beside each instruction).
#[inline]
pub(crate) fn execute_op(
    cpu: &mut Cpu,
    mem: &mut dyn GuestMemory,
    i: &Instruction,
    m: M,
    locked: bool,
) -> Res<()> {
    if !locked {
        return execute_unlocked(cpu, mem, i, m);
    }
    cpu.lock = LockState {
        active: true,
        read: None,
    };
    let r = execute_unlocked(cpu, mem, i, m);
    cpu.lock = LockState::default();
    r
}

fn execute_unlocked(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction, m: M) -> Res<()> {
    match m {
        M::Add | M::Adc | M::Sub | M::Sbb | M::Cmp => arith::alu2(cpu, mem, i),
        M::Inc | M::Dec | M::Neg => arith::unary(cpu, mem, i),
        M::Xadd => arith::xadd(cpu, mem, i),
        M::Cmpxchg => arith::cmpxchg(cpu, mem, i),
        M::Cmpxchg8b => arith::cmpxchg8b(cpu, mem, i),
        M::And | M::Or | M::Xor | M::Test => logic::alu2(cpu, mem, i),
        M::Not => logic::not(cpu, mem, i),
        M::Shl | M::Sal | M::Shr | M::Sar | M::Rol | M::Ror | M::Rcl | M::Rcr => {
            shift::shift(cpu, mem, i)
        }
        M::Shld | M::Shrd => shift::double(cpu, mem, i),
        M::Mov => mov::mov(cpu, mem, i),
        M::Movzx | M::Movsx | M::Movsxd => mov::extend(cpu, mem, i),
        M::Lea => mov::lea(cpu, i),
        M::Xchg => mov::xchg(cpu, mem, i),
        M::Cbw | M::Cwde | M::Cdqe | M::Cwd | M::Cdq | M::Cqo => mov::convert(cpu, i),
        M::Nop | M::Pause | M::Lfence | M::Mfence | M::Sfence | M::Endbr64 | M::Endbr32 => Ok(()),
        M::Prefetchw
        | M::Prefetcht0
        | M::Prefetcht1
        | M::Prefetcht2
        | M::Prefetchnta
        | M::Clflush => mov::touch_only(cpu, i),
        M::Push | M::Pop | M::Pushfq | M::Popfq | M::Pushf | M::Popf | M::Leave | M::Enter => {
            stack::exec(cpu, mem, i)
        }
        M::Jmp
        | M::Call
        | M::Ret
        | M::Retf
        | M::Loop
        | M::Loope
        | M::Loopne
        | M::Jrcxz
        | M::Jecxz => control::branch(cpu, mem, i),
        M::Int3
        | M::Int
        | M::Int1
        | M::Into
        | M::Ud2
        | M::Ud0
        | M::Ud1
        | M::Iretq
        | M::Iretd
        | M::Iret => {
            // Serializing (IRET), or an event (its delivery catches up with writers anyway).
            cpu.catch_up_with_writers(mem);
            control::interrupt(cpu, mem, i)
        }
        M::Movsb
        | M::Movsw
        | M::Movsd
        | M::Movsq
        | M::Stosb
        | M::Stosw
        | M::Stosd
        | M::Stosq
        | M::Lodsb
        | M::Lodsw
        | M::Lodsd
        | M::Lodsq
        | M::Cmpsb
        | M::Cmpsw
        | M::Cmpsd
        | M::Cmpsq
        | M::Scasb
        | M::Scasw
        | M::Scasd
        | M::Scasq
            if i.is_string_instruction() =>
        {
            string::exec(cpu, mem, i)
        }
        M::Bt | M::Bts | M::Btr | M::Btc => bits::bit_test(cpu, mem, i),
        M::Bsf | M::Bsr | M::Tzcnt | M::Lzcnt => bits::scan(cpu, mem, i),
        M::Bswap => bits::bswap(cpu, i),
        M::Mul | M::Imul | M::Div | M::Idiv => muldiv::exec(cpu, mem, i),
        m if control::is_jcc(m) => control::jcc(cpu, i),
        m if mov::is_cmov(m) => mov::cmov(cpu, mem, i),
        m if mov::is_setcc(m) => mov::setcc(cpu, mem, i),
        m if sse::handles(m) => sse::exec(cpu, mem, i),
        m if x87::handles(m) => x87::exec(cpu, mem, i),
        _ => {
            let serializing = is_serializing(m)
                && !(m == M::Wrmsr && non_serializing_msr(cpu.gpr[crate::cpu::gpr::RCX] as u32));
            let r = system::exec(cpu, mem, i);
            if serializing {
                // After it: a WRMSR's own writes into guest RAM (kvmclock) are seen too.
                cpu.catch_up_with_writers(mem);
            }
            r
        }
    }
}

#[cfg(test)]
mod addr_tests;
#[cfg(test)]
mod lock_tests;
