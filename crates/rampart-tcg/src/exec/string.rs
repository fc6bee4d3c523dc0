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
use crate::mmu::{Access, AccessKind};
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
        if rep
            && cpu.fast_ops
            && amask == u64::MAX
            && step == size as u64
            && matches!(kind, Kind::Movs | Kind::Stos)
        {
            let n = cpu.bulk(
                mem,
                kind == Kind::Movs,
                src_seg,
                size,
                MAX_ITERATIONS - done,
            )?;
            if n > 0 {
                done += n;
                continue;
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

/// Most bytes one bulk step of REP MOVS/STOS moves (one page).
pub(crate) const BULK_BYTES: usize = 4096;

impl Cpu {
    /// The bulk path of a forward REP MOVS (`movs`) or REP STOS with 64-bit addresses: as many
    /// elements (at most `limit` and RCX) as stay within the current source and destination
    /// pages, translated once per page and copied RAM to RAM. Returns the elements done (RSI,
    /// RDI and RCX updated); 0 when the path does not apply (fewer than two elements, either
    /// side not RAM, or overlapping source and destination, whose element-by-element result
    /// differs from a block copy), and the caller takes one element the ordinary way. Faults
    /// come from the translations, before anything of the chunk is written, so the state is
    /// that of the element-by-element loop at its first element.
    fn bulk(
        &mut self,
        mem: &mut dyn GuestMemory,
        movs: bool,
        src_seg: Register,
        size: u8,
        limit: u64,
    ) -> Res<u64> {
        let size64 = size as u64;
        let room = |la: u64| (0x1000 - (la & 0xfff)) / size64;
        let dst = self.string_la(Register::ES, self.gpr[7], size)?;
        let mut k = self.gpr[1].min(limit).min(room(dst));
        let src = if movs {
            let src = self.string_la(src_seg, self.gpr[6], size)?;
            k = k.min(room(src));
            Some(src)
        } else {
            None
        };
        if k < 2 {
            return Ok(0);
        }
        let n = (k * size64) as usize;
        let user = self.user_access();
        // The source first, as the element loop faults on it first.
        let pa = match src {
            Some(src) => {
                let read = Access {
                    kind: AccessKind::Read,
                    user,
                };
                Some(self.translate(mem, src, read)?)
            }
            None => None,
        };
        let write = Access {
            kind: AccessKind::Write,
            user,
        };
        let pd = self.translate(mem, dst, write)?;
        // The chunk goes through the CPU's own buffer (kept, not zeroed, between calls: with
        // ERMS a kernel's every memcpy and memset is a REP MOVSB/STOSB, most of a few bytes).
        let mut whole = std::mem::take(&mut self.bulk_buf);
        let Some(buf) = whole.get_mut(..n) else {
            self.bulk_buf = whole;
            return Ok(0);
        };
        let moved = if let Some(pa) = pa {
            let overlap = pd < pa + n as u64 && pa < pd + n as u64;
            !overlap && mem.read_ram(pa, buf) && self.write_chunk(mem, pd, buf)
        } else {
            // The value repeated: every element starts at a multiple of its size, which
            // divides 8.
            let v = self.gpr[0] & crate::flags::size_mask(size);
            let pattern = match size {
                1 => v * 0x0101_0101_0101_0101,
                2 => v * 0x0001_0001_0001_0001,
                4 => v | (v << 32),
                _ => v,
            }
            .to_le_bytes();
            let mut words = buf.chunks_exact_mut(8);
            for w in &mut words {
                w.copy_from_slice(&pattern);
            }
            let rest = words.into_remainder();
            let len = rest.len();
            rest.copy_from_slice(&pattern[..len]);
            self.write_chunk(mem, pd, buf)
        };
        self.bulk_buf = whole;
        if !moved {
            return Ok(0);
        }
        if pa.is_some() {
            self.gpr[6] = self.gpr[6].wrapping_add(n as u64);
        }
        self.gpr[7] = self.gpr[7].wrapping_add(n as u64);
        self.gpr[1] -= k;
        Ok(k)
    }

    /// Write a bulk chunk at guest-physical `pa` (within one page) if it is all RAM.
    fn write_chunk(&mut self, mem: &mut dyn GuestMemory, pa: u64, buf: &[u8]) -> bool {
        self.note_store(pa);
        mem.write_ram(pa, buf)
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

    /// REP MOVS/STOS with the bulk path against the element-by-element loop: random sizes,
    /// counts, page-crossing and overlapping ranges, and ranges running off the end of RAM.
    #[test]
    fn bulk_rep_movs_and_stos_match_the_element_loop() {
        let mut rng = crate::testutil::Rng(0x5717_0b01);
        let forms: [&[u8]; 8] = [
            &[0xf3, 0xa4],       // rep movsb
            &[0xf3, 0x66, 0xa5], // rep movsw
            &[0xf3, 0xa5],       // rep movsd
            &[0xf3, 0x48, 0xa5], // rep movsq
            &[0xf3, 0xaa],       // rep stosb
            &[0xf3, 0x66, 0xab], // rep stosw
            &[0xf3, 0xab],       // rep stosd
            &[0xf3, 0x48, 0xab], // rep stosq
        ];
        for case in 0..400 {
            let form = forms[(rng.next() % 8) as usize];
            let src = DATA + rng.next() % 0x6000;
            let dst = match rng.next() % 4 {
                0 => src + rng.next() % 64,           // overlapping, forward
                1 => 0x40_0000 - rng.next() % 0x3000, // running off the end of RAM
                _ => DATA + 0x8000 + rng.next() % 0x6000,
            };
            let count = rng.next() % 9000;
            let acc = rng.next();
            let fill: Vec<u8> = (0..0x1_0000).map(|_| rng.next() as u8).collect();
            let outs = [true, false].map(|fast| {
                let mut m = Machine::new();
                m.cpu.fast_ops = fast;
                m.mem.load(DATA, &fill).unwrap();
                let mut code = form.to_vec();
                code.push(0xf4);
                m.load_code(&code);
                m.cpu.gpr[6] = src;
                m.cpu.gpr[7] = dst;
                m.cpu.gpr[1] = count;
                m.cpu.gpr[0] = acc;
                let exit = m.cpu.run(&mut m.mem, 100);
                let mut data = vec![0u8; 0x2_0000];
                m.mem.dump(DATA, &mut data).unwrap();
                let mut top = vec![0u8; 0x3000];
                m.mem.dump(0x40_0000 - 0x3000, &mut top).unwrap();
                (exit, m.cpu.gpr, m.cpu.rip, data, top)
            });
            let ctx = format!("case {case}: {form:02x?} src {src:#x} dst {dst:#x} count {count}");
            assert_eq!(outs[0].0, outs[1].0, "{ctx}");
            assert_eq!(outs[0].1, outs[1].1, "{ctx}");
            assert_eq!(outs[0].2, outs[1].2, "{ctx}");
            assert!(outs[0].3 == outs[1].3, "{ctx}: data differs");
            assert!(outs[0].4 == outs[1].4, "{ctx}: end of RAM differs");
        }
    }
}
