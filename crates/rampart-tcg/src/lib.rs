//! rampart's software CPU: a memory-safe x86-64 interpreter.
//!
//! # Architecture
//!
//! - [`cpu`]: the register file ([`Cpu`]): 16 GPRs, RIP, RFLAGS ([`flags`], with lazily evaluated
//!   arithmetic flags), segment registers with their hidden parts, CR0/2/3/4/8, EFER, GDTR/IDTR/
//!   TR/LDTR, an allow-listed MSR file, XMM0-15 + MXCSR and minimal x87 state.
//! - [`memory`]: the [`GuestMemory`] trait, the only way the CPU touches guest-physical memory
//!   (bounds-checked, never a pointer), with MMIO as a synchronous callback, and the
//!   [`memory::FlatMemory`] implementation used by tests.
//! - [`mmu`]: linear-to-physical translation (4-level long-mode walk, 4K/2M/1G pages, U/S, R/W with
//!   CR0.WP, NX, A/D bits, #PF error codes and CR2; PAE and 32-bit paging outside long mode)
//!   behind a small software TLB; all linear accesses are split at page boundaries and checked
//!   before anything is written.
//! - `segmentation`: outside 64-bit mode, linear addresses are segment base + offset with the
//!   presence and limit checks (#GP(0)/#SS(0)), wrapping at 4 GiB; code-segment checks for far
//!   transfers.
//! - decode (in this file): 64-bit code runs a basic block at a time (`block_cache`): a block
//!   is decoded once by `iced-x86`, kept with the bytes it came from, and on every entry its
//!   start is translated through the MMU and its bytes compared with guest RAM
//!   ([`GuestMemory::code_matches`]), so code changed by anyone (this CPU, another vCPU, DMA)
//!   never runs stale (a block found intact is not compared again within one validation
//!   generation: see `Cpu::code_gen`); a store of this CPU into the running block's page (or
//!   the next one, which the block's last instruction may cross into), a TLB flush or a mode
//!   change ends the block. Most instructions of a block are lowered to pre-decoded forms
//!   (`fast`) that run without looking at the decoded `Instruction` again. Other
//!   instructions (outside 64-bit mode, crossing into a page that does not translate, or
//!   fetched from MMIO) are fetched one at a time through the MMU (also across a page
//!   boundary) and decoded with the bitness of CS (64, or 32/16 from CS.D; the 0x66/0x67
//!   prefixes are iced's business). Outside 64-bit mode RIP holds the CS offset (EIP or IP)
//!   and the fetch goes through CS's base and limit. A small decoded-instruction cache
//!   (`decode_cache`), validated against the fetched bytes on every hit, skips the decoder in
//!   loops.
//! - `exec/`: one file per instruction family (`arith`, `logic`, `shift`, `mov`, `stack`,
//!   `control`, `string`, `bits`, `muldiv`, `system`), dispatched on iced's `Mnemonic`. Every
//!   instruction computes first and commits last, so a fault leaves the architectural state as it
//!   was before the instruction (rep string instructions commit per iteration, as hardware does).
//! - [`exception`]: exception and interrupt delivery through the long-mode IDT (interrupt/trap
//!   gates, IST, TSS.RSPn stack switch, error codes, #DF, triple fault) and IRETQ;
//!   `exception32` does the same through the real-mode IVT and the 32-bit IDT (16/32-bit gates,
//!   stack switch through a 32-bit TSS) with the matching IRET.
//!
//! # Run loop
//!
//! [`Cpu::run`] executes up to `budget` instructions and returns an [`Exit`]: port I/O, HLT,
//! shutdown (triple fault), the budget, or a problem the embedder must see (a physical access
//! nothing claims, an unimplemented mode). Port reads leave the instruction half-done: the
//! embedder answers with [`Cpu::complete_io_in`] before running again. MMIO is not an exit but a
//! callback of the [`GuestMemory`] implementation (see [`memory`] for why).
//!
//! # Safety
//!
//! No `unsafe` code. Any byte sequence the guest can produce is decoded and either executed or
//! answered with #UD (logged once per mnemonic); nothing a guest does can panic the interpreter.
//!
//! # Scope today
//!
//! Every mode a Linux guest and rampart's PVH test guests pass through: real mode (application
//! processors start there: [`Cpu::reset`] for INIT, [`Cpu::start_at_sipi`] for the startup
//! IPI), 16- and 32-bit protected mode with flat or based segments, paging off, PAE or 32-bit,
//! compatibility mode, and 64-bit mode, with the transitions between them (MOV to CR0, far
//! JMP/CALL/RET, IRET). Not implemented, each reported as [`Exit::Unsupported`] naming it:
//! virtual-8086 mode, task switches (task gates, IRET with NT), far transfers through call
//! gates, privilege changes through a 16-bit TSS. DAA/DAS/AAA/AAS/AAM/AAD, BOUND and ARPL are
//! #UD. The integer ISA of the census is implemented; string I/O is next. `lock`-prefixed
//! read-modify-write instructions are executed as plain read-modify-write, which is exact on
//! one vCPU; the SMP hook is [`GuestMemory::compare_exchange`].

// Only the translator (`jit`) may use `unsafe`: it maps its code memory and calls what it
// generated. Everything else is safe Rust.
#![deny(unsafe_code)]

pub mod apic;
mod block_cache;
pub mod code_watch;
pub mod cpu;
mod decode_cache;
pub mod exception;
mod exception32;
mod exec;
mod fast;
pub mod flags;
#[allow(unsafe_code)]
mod jit;
pub mod memory;
pub mod mmu;
mod segmentation;

pub use code_watch::CodeWatch;
pub use cpu::{Cpu, SegReg, Segment};
pub use exec::msr::MsrHook;
pub use exec::system::{baseline_cpuid, MsrFile};
pub use jit::CodePool;
pub use memory::{FlatMemory, GuestMemory, MemFault, MmioHandler, RamIdentity, StableRam};

use exception::{vector, Event, Exception, Res, Source};
use iced_x86::{Decoder, DecoderError, DecoderOptions, Instruction};
use mmu::{Access, AccessKind};

/// Why [`Cpu::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `IN`: answer with [`Cpu::complete_io_in`] before running again.
    IoIn {
        /// Port.
        port: u16,
        /// Access size in bytes (1, 2 or 4).
        size: u8,
    },
    /// `OUT`, already retired.
    IoOut {
        /// Port.
        port: u16,
        /// Access size in bytes (1, 2 or 4).
        size: u8,
        /// Value written (low `size` bytes).
        value: u32,
    },
    /// `HLT` (or halted and no interrupt was injected).
    Halt,
    /// Triple fault: the machine resets or stops.
    Shutdown,
    /// The instruction budget ran out.
    InstructionLimit,
    /// A guest-physical access nothing claimed; RIP is at the faulting instruction.
    PhysicalMemory(MemFault),
    /// The guest entered a mode or feature this CPU does not implement yet.
    Unsupported {
        /// Where.
        rip: u64,
        /// What.
        what: &'static str,
    },
}

impl From<MemFault> for Exit {
    fn from(f: MemFault) -> Self {
        Exit::PhysicalMemory(f)
    }
}

/// Longest legal x86 instruction.
const MAX_INSN_LEN: usize = 15;

impl Cpu {
    /// Run until an exit, for at most `budget` instructions.
    pub fn run(&mut self, mem: &mut dyn GuestMemory, budget: u64) -> Exit {
        if self.pending_shutdown {
            return Exit::Shutdown;
        }
        if let Some(p) = self.pending_in {
            return Exit::IoIn {
                port: p.port,
                size: p.size,
            };
        }
        // Code may have been changed by other vCPUs or devices since the last run.
        self.catch_up_with_writers(mem);
        self.pending_link = None;
        // Host addresses of RAM pages are only good for this run's memory, or for memory of
        // the same identity.
        if self.jit.is_some() {
            let ram = mem.ram_identity();
            if ram.is_none() || ram != self.fast_ram {
                self.tlb.flush_fast();
            }
            self.fast_ram = ram;
        }
        let mut left = budget;
        while left > 0 {
            if self.halted {
                return Exit::Halt;
            }
            let r = if self.in_64bit_mode() {
                self.run_block(mem, &mut left)
            } else {
                left -= 1;
                self.step(mem)
            };
            match r {
                Ok(()) => {}
                Err(Event::Exit(e)) => return e,
                // Nothing was committed: the next iteration runs the instruction again.
                Err(Event::Retry) => {}
                Err(Event::Exception(x)) => {
                    if let Err(e) = self.deliver(mem, x) {
                        if e == Exit::Shutdown {
                            self.pending_shutdown = true;
                        }
                        return e;
                    }
                }
            }
        }
        Exit::InstructionLimit
    }

    /// Finish a pending `IN` with the value the device returned.
    pub fn complete_io_in(&mut self, value: u32) {
        if let Some(p) = self.pending_in.take() {
            match p.size {
                1 => self.set_reg(iced_x86::Register::AL, value as u64),
                2 => self.set_reg(iced_x86::Register::AX, value as u64),
                _ => self.set_reg(iced_x86::Register::EAX, value as u64),
            }
        }
    }

    /// Deliver an external interrupt now if RFLAGS.IF is set and no interrupt shadow is active.
    /// Returns whether it was accepted; if not, the embedder keeps it pending and retries after
    /// the next [`Cpu::run`].
    pub fn inject_external_interrupt(&mut self, mem: &mut dyn GuestMemory, vector: u8) -> bool {
        if !self.flags.get(flags::IF)
            || self.interrupt_shadow
            || self.pending_in.is_some()
            || self.pending_shutdown
        {
            return false;
        }
        let exc = Exception {
            vector,
            error_code: None,
            source: Source::External,
        };
        if let Err(e) = self.deliver(mem, exc) {
            tracing::warn!(vector, exit = ?e, "external interrupt delivery failed");
            if e == Exit::Shutdown {
                self.pending_shutdown = true;
            }
        }
        true
    }

    /// Run 64-bit code from RIP: one decoded block (see `block_cache`), or one instruction on
    /// the single-step path if no block can be formed there (code outside RAM, an instruction
    /// crossing a page, an invalid one). Stops early when the budget runs out, on a fault, or
    /// when something the block was decoded under may have changed: control left the straight
    /// line, the CPU halted or left 64-bit mode, translations were flushed, or this CPU stored
    /// to the block's page. `left` is decremented per instruction started.
    fn run_block(&mut self, mem: &mut dyn GuestMemory, left: &mut u64) -> Res<()> {
        let rip = self.rip;
        // The exit the last translated code left by, to link if this block runs translated.
        let pending = self.pending_link.take();
        let user = self.user_access();
        let stamp = block_cache::Stamp {
            gen: self.code_gen,
            epoch: self.tlb.epoch,
            user,
        };
        let (slot, pa) = match self.blocks.validated(rip, stamp) {
            Some((i, pa)) => (Some(i), pa),
            None => {
                let access = Access {
                    kind: AccessKind::Fetch,
                    user,
                };
                let pa = self.translate(mem, rip, access)?;
                self.watch_code(mem, pa);
                let first = block_cache::first_page_bytes(rip);
                // (Only a block starting within `MAX_BYTES` of its page's end can cross it: the
                // check spares the other blocks a second search of their set.)
                let mut pa2 = None;
                if first <= block_cache::MAX_BYTES && self.blocks.crosses(rip) {
                    pa2 = self.next_code_page(mem, rip, access);
                }
                let slot = match self.blocks.lookup(rip, pa, pa2, stamp, mem) {
                    Some(i) => Some(i),
                    None if self.blocks.steps_at(rip, pa) => None,
                    None => {
                        let window = block_cache::MAX_BYTES.min(first);
                        let mut code = [0u8; block_cache::MAX_BYTES + block_cache::MAX_INSN_TAIL];
                        let tail = window..window + block_cache::MAX_INSN_TAIL;
                        // The block may end with an instruction that crosses the page: the
                        // next page's first bytes, if it translates and is RAM.
                        let pa2 = match pa2 {
                            _ if window < first => None,
                            Some(p2) => Some(p2),
                            None => self.next_code_page(mem, rip, access),
                        }
                        .filter(|&p2| mem.read_ram(p2, &mut code[tail.clone()]));
                        let len = if pa2.is_some() { tail.end } else { window };
                        if mem.read_ram(pa, &mut code[..window]) {
                            let fast = self.fast_ops;
                            self.blocks
                                .build_at(rip, pa, pa2, &code[..len], fast, stamp)
                        } else {
                            None
                        }
                    }
                };
                if let Some(i) = slot {
                    // (A block validated earlier in this generation has its pages marked.)
                    self.mark_code_page(pa);
                    if let Some(p2) = self.blocks.page2(i) {
                        self.mark_code_page(p2);
                    }
                }
                (slot, pa)
            }
        };
        let Some(slot) = slot else {
            *left -= 1;
            return self.step(mem);
        };
        // Borrowed out of the cache while it runs (nothing below touches the block cache).
        let mut code = self.blocks.take_code(slot);
        let mut generic = code.generic.iter();
        let epoch = self.tlb.epoch;
        self.code_page = pa >> 12;
        self.code_page2 = code.page2.map_or(u64::MAX, |p| p >> 12);
        self.code_written = false;
        let mut r = Ok(());
        let mut start = 0;
        if let Some(jit) = self.jit.as_mut() {
            // Compiled at the threshold, and again at once if its code space was recycled.
            // (A block found valid on other pages with the same bytes: its translation
            // names the pages it was compiled for.)
            let pages = [self.code_page, self.code_page2];
            let stale = code
                .jit
                .is_some_and(|c| !jit.valid(&c) || c.code_pages != pages);
            if code.jit.is_none() || stale {
                code.runs = code.runs.saturating_add(1);
                if code.runs == jit.threshold || stale {
                    code.jit = jit.compile(rip, pages, &code.ops, &code.generic);
                }
            }
            let epoch_user = stamp.epoch << 1 | u64::from(user);
            let code_gen = self.code_gen;
            let run = code
                .jit
                .filter(|c| jit.valid(c) && *left >= c.len as u64)
                .and_then(|c| {
                    // (Running out of stamps starts the code space over: `c` must outlive it.)
                    let s = jit.stamp(code_gen, epoch_user);
                    jit.valid(&c).then_some((c, s))
                });
            if let Some((c, link_stamp)) = run {
                // The translation that ran before left by an exit to here: link it to this
                // one; and let exits known only at run time find it.
                if let Some(exit) = pending {
                    jit.link(exit, rip, &c, link_stamp);
                }
                jit.remember(rip, &c, link_stamp);
                self.interrupt_shadow = false;
                let ran = jit::call(&c, self, mem, *left, epoch_user, link_stamp);
                if let Some(jit) = self.jit.as_mut() {
                    jit.count(&ran);
                }
                let ret = ran.ret;
                let event = ran.event;
                self.pending_link = ran.exit_link;
                // A translation covers its whole block and leaves at its end, a taken branch,
                // a fault or wherever the loop below would end the block: the call ended it.
                let retired = ran.retired;
                *left -= retired;
                self.tsc = self.tsc.wrapping_add(retired);
                if ret & jit::FAULT != 0 {
                    *left -= 1;
                    r = Err(event.unwrap_or(Event::Exit(Exit::Unsupported {
                        rip: self.rip,
                        what: "a translated fault without its event",
                    })));
                }
                start = code.ops.len();
            }
        }
        for op in code.ops.get(start..).unwrap_or_default() {
            if *left == 0 {
                break;
            }
            *left -= 1;
            self.interrupt_shadow = false;
            self.next_rip = op.next_ip;
            if op.fast != fast::Fast::Generic {
                // Lowered forms cannot halt, flush translations or change mode: only a branch
                // or a store into this block's page ends the block.
                r = self.exec_fast(mem, &op.fast);
                if r.is_err() {
                    break;
                }
                self.rip = self.next_rip;
                self.tsc = self.tsc.wrapping_add(1);
                if self.rip != op.next_ip || self.code_written {
                    break;
                }
                continue;
            }
            let Some(g) = generic.next() else {
                // `build` gives every generic op its entry; never run past a broken block.
                r = Err(Event::Exit(Exit::Unsupported {
                    rip: self.rip,
                    what: "a decoded block without its generic instruction",
                }));
                break;
            };
            r = exec::execute_op(self, mem, &g.instr, g.mnemonic, g.locked);
            if r.is_err() {
                break;
            }
            self.rip = self.next_rip;
            self.tsc = self.tsc.wrapping_add(1);
            if self.rip != op.next_ip
                || self.halted
                || self.code_written
                || self.tlb.epoch != epoch
                || !self.in_64bit_mode()
            {
                break;
            }
        }
        self.code_page = u64::MAX;
        self.code_page2 = u64::MAX;
        self.blocks.put_code(slot, code);
        r
    }

    /// The guest-physical address of the page after the one of linear `ip`, for a block
    /// whose last instruction crosses into it, if it translates now for a fetch under
    /// `access`. No fault is raised (CR2 is kept): the instruction faults when it runs on the
    /// single-instruction path. The walk may set accessed bits, as a processor's prefetch may.
    /// Its code is watched from now on, as [`Cpu::watch_code`] does before code is read.
    fn next_code_page(
        &mut self,
        mem: &mut dyn GuestMemory,
        ip: u64,
        access: Access,
    ) -> Option<u64> {
        let la = ip.wrapping_add(block_cache::first_page_bytes(ip) as u64);
        let cr2 = self.cr2;
        let pa = self.translate(mem, la, access).ok();
        self.cr2 = cr2;
        if let Some(p) = pa {
            self.watch_code(mem, p);
        }
        pa
    }

    /// Execute one instruction (faults are returned, not delivered).
    fn step(&mut self, mem: &mut dyn GuestMemory) -> Res<()> {
        self.interrupt_shadow = false;
        if self.in_64bit_mode() {
            let instr = self.fetch_decode(mem, 64, self.rip, self.rip)?;
            self.next_rip = instr.next_ip();
            exec::execute(self, mem, &instr)?;
        } else {
            self.step_legacy(mem)?;
        }
        self.rip = self.next_rip;
        self.tsc = self.tsc.wrapping_add(1);
        Ok(())
    }

    /// One instruction outside 64-bit mode: RIP is the offset in CS (EIP or IP), the fetch goes
    /// through CS's base and limit, and the decoder's bitness follows CS.D.
    fn step_legacy(&mut self, mem: &mut dyn GuestMemory) -> Res<()> {
        if self.flags.get(flags::VM) {
            return Err(Event::Exit(Exit::Unsupported {
                rip: self.rip,
                what: "virtual-8086 mode",
            }));
        }
        let bits = self.code_bits();
        let cs = self.seg[SegReg::Cs as usize];
        let ip_mask = if bits == 32 { 0xffff_ffff } else { 0xffff };
        let ip = self.rip & ip_mask;
        if ip > cs.limit as u64 {
            return Err(Exception::gp(0).into());
        }
        let la = cs.base.wrapping_add(ip) & 0xffff_ffff;
        // The decoder's IP is the offset, so iced computes branch targets as offsets.
        let instr = self.fetch_decode(mem, bits, la, ip)?;
        let len = instr.len() as u64;
        if ip + len - 1 > cs.limit as u64 {
            return Err(Exception::gp(0).into());
        }
        self.next_rip = ip.wrapping_add(len) & ip_mask;
        exec::legacy::execute(self, mem, &instr)
    }

    /// Fetch up to 15 bytes at linear address `la` through the MMU and decode one instruction
    /// of `bits`-bit code whose IP (CS offset) is `ip`. The second page of an instruction that
    /// crosses a page boundary is only touched if the instruction needs it.
    fn fetch_decode(
        &mut self,
        mem: &mut dyn GuestMemory,
        bits: u32,
        la: u64,
        ip: u64,
    ) -> Res<Instruction> {
        let access = Access {
            kind: AccessKind::Fetch,
            user: self.user_access(),
        };
        let mut bytes = [0u8; MAX_INSN_LEN];
        let first = MAX_INSN_LEN.min(block_cache::first_page_bytes(la));
        // Fast path: code in RAM, decoded in place (no copy), often straight from the cache.
        let pa = self.translate(mem, la, access)?;
        if let Some(code) = mem.ram_slice(pa, first) {
            if let Some(instr) = self.decoded.lookup(ip, bits, code) {
                return Ok(instr);
            }
            let mut decoder = Decoder::with_ip(bits, code, ip, DecoderOptions::NONE);
            let instr = decoder.decode();
            if decoder.last_error() != DecoderError::NoMoreBytes {
                if instr.is_invalid() {
                    return Err(Exception::ud().into());
                }
                self.decoded.insert(ip, bits, code, &instr);
                return Ok(instr);
            }
        }
        // Slow path: MMIO, or a GuestMemory without `ram_slice`, or an instruction crossing
        // into the next page.
        self.read_linear(mem, la, &mut bytes[..first], access)?;
        if let Some(instr) = self.decoded.lookup(ip, bits, &bytes[..first]) {
            return Ok(instr);
        }
        let mut decoder = Decoder::with_ip(bits, &bytes[..first], ip, DecoderOptions::NONE);
        let mut instr = decoder.decode();
        if decoder.last_error() == DecoderError::NoMoreBytes && first < MAX_INSN_LEN {
            let mut la2 = la.wrapping_add(first as u64);
            if bits != 64 {
                la2 &= 0xffff_ffff;
            }
            self.read_linear(mem, la2, &mut bytes[first..], access)?;
            let mut d2 = Decoder::with_ip(bits, &bytes, ip, DecoderOptions::NONE);
            instr = d2.decode();
            if d2.last_error() == DecoderError::NoMoreBytes {
                return Err(Exception::gp(0).into());
            }
        } else if decoder.last_error() == DecoderError::NoMoreBytes {
            return Err(Exception::gp(0).into());
        } else if !instr.is_invalid() {
            self.decoded.insert(ip, bits, &bytes[..first], &instr);
        }
        if instr.is_invalid() {
            return Err(Exception::ud().into());
        }
        Ok(instr)
    }

    /// Raise #UD for an instruction this CPU does not implement, logging each mnemonic once.
    pub(crate) fn unimplemented(&mut self, instr: &Instruction) -> Event {
        let code = instr.code() as u32;
        if self.warned_ud.insert(code) {
            tracing::warn!(rip = self.rip, code = ?instr.code(), "unimplemented instruction, raising #UD");
        }
        Exception::fault(vector::UD, None).into()
    }
}

#[cfg(test)]
mod block_tests;
#[cfg(test)]
mod modes_tests;
#[cfg(test)]
pub(crate) mod testutil;
#[cfg(test)]
pub(crate) mod testutil32;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    #[test]
    fn random_bytes_never_panic_and_end_cleanly() {
        let mut rng = Rng(0x5eed_0001);
        for _ in 0..3000 {
            let len = (rng.next() % 64) as usize + 1;
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let mut m = Machine::new();
            m.load_code(&bytes);
            // Random registers so memory operands point anywhere.
            for r in m.cpu.gpr.iter_mut() {
                *r = match rng.next() % 3 {
                    0 => rng.next(),
                    1 => DATA + (rng.next() % 0x1000),
                    _ => rng.next() % 0x40_0000,
                };
            }
            m.cpu.gpr[4] = STACK_TOP - (rng.next() % 0x100) * 8;
            let t = m.run(200);
            assert!(matches!(
                t.exit,
                Exit::Halt
                    | Exit::InstructionLimit
                    | Exit::Shutdown
                    | Exit::IoIn { .. }
                    | Exit::IoOut { .. }
                    | Exit::PhysicalMemory(_)
                    | Exit::Unsupported { .. }
            ));
        }
    }

    #[test]
    fn instruction_crossing_into_unmapped_page_faults_on_second_page() {
        let mut m = Machine::new();
        // Map 4 KiB pages for the code region so the second page can be missing:
        // PD entry 0 -> page table at 0xa000 mapping 0..2 MiB, with page 0x10_1000 absent.
        for p in 0..512u64 {
            m.mem.write_u64(0xa000 + p * 8, (p << 12) | 7).unwrap();
        }
        m.mem.write_u64(0xa000 + 0x101 * 8, 0).unwrap();
        m.mem.write_u64(0x3000, 0xa000 | 7).unwrap();
        // mov eax, imm32 starting 2 bytes before the page end.
        m.mem.load(CODE + 0xffe, &[0xb8, 1]).unwrap();
        m.cpu.rip = CODE + 0xffe;
        let t = m.run(10);
        assert_eq!(t.exception, Some(14));
        assert_eq!(t.cpu.cr2, CODE + 0x1000);
        assert_eq!(t.error_code(), 0x10); // fetch, not present (NXE on)
        assert_eq!(t.mem_u64(t.cpu.gpr[4] + 8), CODE + 0xffe);
    }

    #[test]
    fn instruction_crossing_a_page_boundary_executes() {
        let mut m = Machine::new();
        m.mem
            .load(CODE + 0xffe, &[0xb8, 0x78, 0x56, 0x34, 0x12, 0xf4])
            .unwrap();
        m.cpu.rip = CODE + 0xffe;
        let t = m.run(10);
        assert_eq!(t.exit, Exit::Halt);
        assert_eq!(t.cpu.gpr[0], 0x1234_5678);
    }

    #[test]
    fn self_modifying_code_runs_the_new_bytes() {
        use iced_x86::code_asm::*;
        let t = run_asm(|a| {
            let mut l = a.create_label();
            a.mov(ecx, 2)?;
            a.lea(rbx, ptr(l))?;
            a.set_label(&mut l)?;
            a.mov(eax, 1)?;
            a.mov(byte_ptr(rbx + 1), 7)?;
            a.dec(ecx)?;
            a.jne(l)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[0], 7);
    }

    #[test]
    fn self_modifying_code_runs_the_new_bytes_without_ram_slice() {
        use iced_x86::code_asm::*;
        let mut m = Machine::new();
        m.load_code(&assemble(|a| {
            let mut l = a.create_label();
            a.mov(ecx, 3)?;
            a.lea(rbx, ptr(l))?;
            a.set_label(&mut l)?;
            a.mov(eax, 1)?;
            a.add(byte_ptr(rbx + 1), 5)?;
            a.dec(ecx)?;
            a.jne(l)?;
            Ok(())
        }));
        let mut mem = crate::testutil32::NoSlice(m.mem);
        assert_eq!(m.cpu.run(&mut mem, 1000), Exit::Halt);
        assert_eq!(m.cpu.gpr[0], 11);
    }

    #[test]
    fn fault_without_usable_idt_is_a_triple_fault() {
        let mut m = Machine::new();
        m.cpu.idtr.limit = 0;
        m.load_code(&[0x0f, 0x0b]);
        let t = m.run(10);
        assert_eq!(t.exit, Exit::Shutdown);
    }

    #[test]
    fn external_interrupt_wakes_halted_cpu_and_iretq_returns() {
        let mut m = Machine::new();
        // Vector 0x1f handler: iretq.
        m.mem.load(HANDLERS + 0x1f * 16, &[0x48, 0xcf]).unwrap();
        m.load_code(&[0xfb, 0xf4, 0xb8, 7, 0, 0, 0, 0xf4]); // sti; hlt; mov eax,7; hlt
        assert_eq!(m.cpu.run(&mut m.mem, 100), Exit::Halt);
        assert!(m.cpu.inject_external_interrupt(&mut m.mem, 0x1f));
        assert_eq!(m.cpu.run(&mut m.mem, 100), Exit::Halt);
        assert_eq!(m.cpu.gpr[0], 7);
        assert_eq!(m.cpu.gpr[4], STACK_TOP);
        assert!(m.cpu.flags.get(flags::IF));
    }

    #[test]
    fn user_mode_interrupt_switches_to_rsp0() {
        let mut m = Machine::new();
        m.cpu.seg[SegReg::Cs as usize].selector = USER_CS;
        m.cpu.seg[SegReg::Cs as usize].attr |= 3 << cpu::attr::DPL_SHIFT;
        m.cpu.seg[SegReg::Ss as usize].selector = USER_DS;
        m.load_code(&[0x0f, 0x0b]); // ud2 at CPL 3
        let t = m.run(10);
        assert_eq!(t.exception, Some(6));
        assert_eq!(t.cpu.gpr[4], RSP0 - 40);
        assert_eq!(t.mem_u64(RSP0 - 8), USER_DS as u64);
        assert_eq!(t.mem_u64(RSP0 - 16), STACK_TOP);
        assert_eq!(t.mem_u64(RSP0 - 32), USER_CS as u64);
        assert_eq!(t.cpu.cpl(), 0);
    }
}

#[cfg(test)]
mod bench {
    use crate::testutil::*;
    use iced_x86::code_asm::*;

    /// Instructions per second of the run loop on a tight 64-bit loop (register ALU, a load, a
    /// store and a taken branch). Run with `cargo test --release -p rampart-tcg -- --ignored
    /// --nocapture run_loop_mips`.
    #[test]
    #[ignore]
    fn run_loop_mips() {
        bench_loop(false);
    }

    /// The same through a GuestMemory without `ram_slice` (fetches copy the bytes).
    #[test]
    #[ignore]
    fn run_loop_mips_without_ram_slice() {
        bench_loop(true);
    }

    fn bench_loop(copying: bool) {
        let mut m = Machine::new();
        m.load_code(&assemble(|a| {
            let mut top = a.create_label();
            a.mov(ecx, 10_000_000)?;
            a.xor(eax, eax)?;
            a.set_label(&mut top)?;
            a.add(eax, ecx)?;
            a.mov(qword_ptr(DATA), rax)?;
            a.mov(rdx, qword_ptr(DATA))?;
            a.dec(ecx)?;
            a.jne(top)?;
            Ok(())
        }));
        let start = std::time::Instant::now();
        let exit = if copying {
            let mut mem = crate::testutil32::NoSlice(m.mem);
            m.cpu.run(&mut mem, u64::MAX)
        } else {
            m.cpu.run(&mut m.mem, u64::MAX)
        };
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(exit, crate::Exit::Halt);
        let n = m.cpu.tsc;
        println!(
            "run loop: {n} instructions in {secs:.3} s = {:.1} MIPS",
            n as f64 / secs / 1e6
        );
    }
}
