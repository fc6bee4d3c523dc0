//! MOVS, STOS, LODS, CMPS, SCAS with REP / REPE / REPNE.
//!
//! A repeated instruction runs at most [`MAX_ITERATIONS`] iterations per step and then restarts
//! itself (RIP stays put) with the registers updated: architecturally exact, bounds the work a
//! guest can demand of one step, and lets interrupts in between, as on hardware.

use super::arith::add_sub;
use crate::cpu::Cpu;
use crate::exception::Res;
use crate::flags::{size_mask, DF, ZF};
use crate::memory::GuestMemory;
use iced_x86::{Instruction, Mnemonic as M, OpKind, Register};

/// Iterations of a REP string instruction per interpreter step.
pub const MAX_ITERATIONS: u64 = 4096;

fn accumulator(size: u8) -> Register {
    match size {
        1 => Register::AL,
        2 => Register::AX,
        4 => Register::EAX,
        _ => Register::RAX,
    }
}

/// Write an index/count register of the given address-size mask: 16-bit writes merge, 32-bit
/// writes zero-extend.
fn merge(old: u64, new: u64, amask: u64) -> u64 {
    if amask == 0xffff {
        (old & !0xffff) | (new & 0xffff)
    } else {
        new & amask
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Movs,
    Stos,
    Lods,
    Cmps,
    Scas,
}

pub(crate) fn exec(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let kind = match i.mnemonic() {
        M::Movsb | M::Movsw | M::Movsd | M::Movsq => Kind::Movs,
        M::Stosb | M::Stosw | M::Stosd | M::Stosq => Kind::Stos,
        M::Lodsb | M::Lodsw | M::Lodsd | M::Lodsq => Kind::Lods,
        M::Cmpsb | M::Cmpsw | M::Cmpsd | M::Cmpsq => Kind::Cmps,
        _ => Kind::Scas,
    };
    let size = i.memory_size().size().clamp(1, 8) as u8;
    // The address size decides which index/count registers are used: SI/DI/CX, ESI/EDI/ECX
    // or RSI/RDI/RCX.
    let kinds = [i.op0_kind(), i.op1_kind()];
    let amask: u64 = if kinds
        .iter()
        .any(|k| matches!(k, OpKind::MemorySegSI | OpKind::MemoryESDI))
    {
        0xffff
    } else if kinds
        .iter()
        .any(|k| matches!(k, OpKind::MemorySegESI | OpKind::MemoryESEDI))
    {
        0xffff_ffff
    } else {
        u64::MAX
    };
    let rep = i.has_rep_prefix() || i.has_repne_prefix();
    let step = if cpu.flags.get(DF) {
        (size as u64).wrapping_neg()
    } else {
        size as u64
    };
    let src_seg = i.memory_segment();
    let mut done = 0u64;
    loop {
        if rep {
            if cpu.gpr[1] & amask == 0 {
                return Ok(());
            }
            if done == MAX_ITERATIONS {
                cpu.next_rip = cpu.rip;
                return Ok(());
            }
        }
        let rsi = cpu.gpr[6] & amask;
        let rdi = cpu.gpr[7] & amask;
        let mut stop = false;
        match kind {
            Kind::Movs => {
                let src = cpu.string_la(src_seg, rsi, size)?;
                let dst = cpu.string_la(Register::ES, rdi, size)?;
                let v = cpu.read_mem(mem, src, size)?;
                cpu.write_mem(mem, dst, size, v)?;
            }
            Kind::Stos => {
                let dst = cpu.string_la(Register::ES, rdi, size)?;
                let v = cpu.reg(accumulator(size));
                cpu.write_mem(mem, dst, size, v)?;
            }
            Kind::Lods => {
                let src = cpu.string_la(src_seg, rsi, size)?;
                let v = cpu.read_mem(mem, src, size)?;
                cpu.set_reg(accumulator(size), v);
            }
            Kind::Cmps => {
                let src = cpu.string_la(src_seg, rsi, size)?;
                let dst = cpu.string_la(Register::ES, rdi, size)?;
                let a = cpu.read_mem(mem, src, size)?;
                let b = cpu.read_mem(mem, dst, size)?;
                add_sub(cpu, M::Cmp, size, a, b & size_mask(size));
                stop = true;
            }
            Kind::Scas => {
                let dst = cpu.string_la(Register::ES, rdi, size)?;
                let b = cpu.read_mem(mem, dst, size)?;
                let a = cpu.reg(accumulator(size));
                add_sub(cpu, M::Cmp, size, a, b & size_mask(size));
                stop = true;
            }
        }
        // With 32-bit addressing the index registers are written as ESI/EDI (zero-extended).
        // With 16-bit addressing only SI/DI/CX change.
        if matches!(kind, Kind::Movs | Kind::Lods | Kind::Cmps) {
            cpu.gpr[6] = merge(cpu.gpr[6], rsi.wrapping_add(step), amask);
        }
        if matches!(kind, Kind::Movs | Kind::Stos | Kind::Cmps | Kind::Scas) {
            cpu.gpr[7] = merge(cpu.gpr[7], rdi.wrapping_add(step), amask);
        }
        if !rep {
            return Ok(());
        }
        cpu.gpr[1] = merge(cpu.gpr[1], (cpu.gpr[1] & amask).wrapping_sub(1), amask);
        done += 1;
        if stop {
            let zf = cpu.flags.get(ZF);
            if (i.has_repe_prefix() && !zf) || (i.has_repne_prefix() && zf) {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::flags::ZF;
    use crate::testutil::*;
    use iced_x86::code_asm::*;

    #[test]
    fn rep_movsb_copies_and_advances() {
        let mut m = Machine::new();
        m.mem.load(DATA, b"hello world").unwrap();
        m.load_code(&assemble(|a| {
            a.mov(rsi, DATA)?;
            a.mov(rdi, DATA + 0x100)?;
            a.mov(ecx, 11)?;
            a.rep().movsb()?;
            Ok(())
        }));
        let t = m.run(100);
        let mut out = [0u8; 11];
        t.mem.dump(DATA + 0x100, &mut out).unwrap();
        assert_eq!(&out, b"hello world");
        assert_eq!(t.cpu.gpr[1], 0);
        assert_eq!(t.cpu.gpr[6], DATA + 11);
    }

    #[test]
    fn rep_stosq_backwards_with_df() {
        let t = run_asm(|a| {
            a.std()?;
            a.mov(rdi, DATA + 16)?;
            a.mov(ecx, 3)?;
            a.mov(rax, 0x0101_0101_0101_0101u64)?;
            a.rep().stosq()?;
            a.cld()?;
            Ok(())
        });
        assert_eq!(t.mem_u64(DATA), 0x0101_0101_0101_0101);
        assert_eq!(t.mem_u64(DATA + 16), 0x0101_0101_0101_0101);
        assert_eq!(t.cpu.gpr[7], DATA - 8);
    }

    #[test]
    fn repne_scasb_finds_terminator() {
        let mut m = Machine::new();
        m.mem.load(DATA, b"abc\0def").unwrap();
        m.load_code(&assemble(|a| {
            a.mov(rdi, DATA)?;
            a.xor(eax, eax)?;
            a.mov(rcx, -1i64)?;
            a.repne().scasb()?;
            Ok(())
        }));
        let t = m.run(100);
        assert_eq!(t.cpu.gpr[7], DATA + 4);
        assert_eq!(t.cpu.gpr[1], (-5i64) as u64);
        assert_ne!(t.arith_flags() & ZF, 0);
    }

    #[test]
    fn repe_cmpsb_stops_at_first_difference() {
        let mut m = Machine::new();
        m.mem.load(DATA, b"abcx").unwrap();
        m.mem.load(DATA + 0x10, b"abcy").unwrap();
        m.load_code(&assemble(|a| {
            a.mov(rsi, DATA)?;
            a.mov(rdi, DATA + 0x10)?;
            a.mov(ecx, 4)?;
            a.repe().cmpsb()?;
            Ok(())
        }));
        let t = m.run(100);
        assert_eq!(t.cpu.gpr[1], 0);
        assert_eq!(t.cpu.gpr[6], DATA + 4);
        assert_eq!(t.arith_flags() & ZF, 0);
    }

    #[test]
    fn long_rep_restarts_in_bounded_steps() {
        let t = run_asm(|a| {
            a.mov(rdi, DATA)?;
            a.mov(ecx, 10_000)?;
            a.xor(eax, eax)?;
            a.rep().stosb()?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[1], 0);
        assert_eq!(t.cpu.gpr[7], DATA + 10_000);
    }

    #[test]
    fn lodsd_loads_accumulator() {
        let mut m = Machine::new();
        m.mem.write_u64(DATA, 0x1234_5678_9abc_def0).unwrap();
        m.load_code(&assemble(|a| {
            a.mov(rax, -1i64)?;
            a.mov(rsi, DATA)?;
            a.lodsd()?;
            Ok(())
        }));
        let t = m.run(100);
        assert_eq!(t.cpu.gpr[0], 0x9abc_def0);
    }
}
