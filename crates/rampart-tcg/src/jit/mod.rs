//! A baseline translator: decoded blocks (`block_cache`) that run often are compiled to host
//! x86-64 code, so the run loop no longer dispatches their instructions one by one.
//!
//! # What the generated code may touch
//! The generated code is the emulator's, not the guest's: it reads and writes the `Cpu`'s own
//! fields at fixed offsets (general registers, the lazy flags record, RIP) and calls helper
//! functions of this module. Guest memory: **every access that misses goes through a
//! helper**, which runs the interpreter's own `Cpu::read_mem`/`write_mem` (TLB, page walk,
//! permission checks, bounds-checked RAM access, MMIO, the code-page watch). An access that
//! hits reaches RAM inline: the helper, after an access through the TLB succeeded, records the
//! page's host address in a small table (`Tlb::fast` for reads, `Tlb::fast_w` for writes, per
//! privilege, keyed by virtual page), taken from `GuestMemory::ram_page_addr`, whose
//! [`crate::StableRam`] promise says the address stays valid; the inline path compares the
//! page tag and checks that the access stays within the page, and an inline store leaves to
//! the helper a page holding the running block or code validated in this generation (the
//! code-page watch of `Cpu::note_store`). The entries leave with their TLB entry (replacement,
//! INVLPG, CR3 and mode changes) and at a `Cpu::run` with memory of another identity, or of
//! none (`memory::RamIdentity`: an address never outlives the memory it came from), and MMIO
//! pages never enter them. So a translation bug can give
//! the guest a wrong result, as an interpreter bug can, but a guest cannot steer a host access
//! outside a page of its RAM that its own page tables map for that access.
//!
//! # What is translated
//! Whole blocks. MOV, MOVZX/MOVSX/MOVSXD, LEA, the ALU operations without carry-in (ADD SUB
//! CMP AND OR XOR TEST), PUSH/POP of 64-bit registers, CALL/JMP with direct targets or through
//! a register or memory (leaving through the jump cache, as RET does), RET, Jcc,
//! CMOVcc, INC/DEC/NEG, NOT of a register, SHL/SHR/SAR of a register by an immediate and
//! CMPXCHG of memory (on the host-address fast path) are emitted inline
//! (a Jcc or CMOVcc after an inline ALU operation of the same translation sets the host's
//! flags from the lazy record with the same operation and branches on them; a shift writes
//! its flags materialized, computed as `exec::shift::shift_result` does); every
//! other lowered form calls [`op_helper`], which runs `Cpu::exec_fast` on it: exactly the
//! interpreter's behaviour, without the dispatch loop. An instruction that runs on the generic
//! path calls [`generic_helper`], which runs the interpreter's `exec::execute_op` on the
//! translation's own copy of its decoded form, and ends the translation wherever the run loop
//! would end a block after it (or what the translation runs under changed). So a block with a
//! locked, system or string instruction in the middle no longer falls back to the run loop
//! there: in a Linux guest's disk write path the interpreted remainders of such blocks were
//! about a tenth of all instructions, and each cost a return to the run loop.
//!
//! The host code is written by [`asm`], a small assembler for exactly the forms used here
//! (one pass into one buffer, branches patched at the end), about seven times cheaper than
//! iced's general one.
//!
//! # Exactness
//! Each instruction commits nothing before its last possible fault, as in the interpreter: a
//! fault leaves RIP at the faulting instruction and everything before it retired. The flags
//! record written is the interpreter's (`Flags::record` with the same operands). The run loop
//! counts retired instructions (budget, TSC) from what the call reports, and ends the block after
//! a taken branch or a store into the block's own page, as it does when interpreting. The
//! randomized differential test runs programs interpreted and translated and compares
//! registers, flags, memory and exits.

mod arena;
mod asm;

use std::io;
use std::mem::offset_of;
use std::sync::{Arc, Mutex};

use crate::block_cache::{Generic, Op};
use crate::cpu::{Cpu, SegReg, Segment, CODE_PAGE_SLOTS};
use crate::exception::{Event, Exception};
use crate::exec::shift::count_mask;
use crate::fast::{Addr, AluOp, Dst, Fast, Src, UnOp, NONE};
use crate::flags::{self, Flags, LazyOp};
use crate::memory::GuestMemory;
use crate::mmu::{is_canonical, AccessKind, FastEntry, FAST_ENTRIES};
use arena::{pair_offset, Arena};
use asm::*;
use iced_x86::Mnemonic as M;

/// Code space per CPU. Compiled blocks of a Linux boot take about a tenth of it; when it is
/// full, everything compiled is dropped and compiled again as it runs.
const ARENA_BYTES: usize = 64 << 20;

/// Set in a translated block's return value when instruction `value & 0xffff_ffff` faulted
/// (the event is in [`Env::event`]); otherwise the low half is the number of instructions
/// retired.
pub(crate) const FAULT: u64 = 1 << 32;

/// In the `info` argument of the load and store helpers (beside the size): the access is
/// through SS (a non-canonical address raises #SS rather than #GP).
const STACK: u64 = 0x100;

/// Helper status: carry on with the next instruction.
const CONTINUE: u64 = 0;
/// Helper status: the instruction retired and the block must end (a store hit the block's
/// page, or the helper's instruction changed RIP); RIP is `Cpu::next_rip`.
const END: u64 = 1;
/// Helper status: the instruction faulted (the event is in [`Env::event`]).
const FAULTED: u64 = 2;
/// Load helper status: the read's page walk stored into the running block's page (an
/// accessed bit): end the translation before this instruction, which has committed nothing,
/// so it runs again from a block validated afresh (as the interpreter ends the block there).
const RESTART: u64 = 3;

/// A compiled block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Compiled {
    /// Executable address of the entry: its generation's shared prologue ([`Shared::entry`]).
    entry: usize,
    /// Its code, where the prologue and other translations jump into it.
    chain_entry: usize,
    /// The arena generation it was compiled in (stale once the arena is recycled).
    gen: u64,
    /// Instructions covered, from the block's first.
    pub(crate) len: u16,
    /// The guest-physical pages it was compiled for (`Cpu::code_page` and, for a block that
    /// crosses into the next page, `Cpu::code_page2` while it runs, set by its entry;
    /// `u64::MAX` for none): a block found valid on other pages with the same bytes is
    /// compiled again.
    pub(crate) code_pages: [u64; 2],
}

/// A chaining exit: one per exit of a translation to a fixed address (a taken branch, a
/// direct jump or call, the end of a block). Its hot code compares the call's link stamp
/// ([`Env::stamp`]) with the one patched into it and, if they are equal, jumps straight to the
/// translation patched into it; the run loop patches both when the exit was taken and the
/// translation at its target ran next ([`Jit::link`]). A stamp names the block validation
/// generation and the TLB epoch and privilege (see [`Jit::stamp`]): an exit linked under
/// another one, or never, leaves for the run loop. Every translation checks the budget for
/// its instructions at its own entry.
#[derive(Debug, Clone, Copy)]
struct Link {
    /// Executable addresses of the stamp (imm32) and of the jump's rel32 field.
    stamp_at: usize,
    rel_at: usize,
    /// The address the exit goes to (fixed when translated).
    target: u64,
}

/// A cell of the jump cache: the translation last run at a guest address, with the stamp it
/// ran under (generated code reads it, at these offsets). Sixteen bytes, so that the whole
/// cache (256 KiB) stays in the host's second-level cache: every RET reads a cell.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(16))]
pub(crate) struct JumpCell {
    target: u64,
    /// The stamp (never [`NO_STAMP`] for a filled cell).
    stamp: u32,
    /// The translation's entry (`Compiled::chain_entry`), as an offset from the arena's
    /// [`Arena::exec_base`].
    entry: u32,
}
const _: () = assert!(size_of::<JumpCell>() == 16 && ARENA_BYTES <= u32::MAX as usize);

/// The stamp of exits never linked and jump cells never filled: no call runs under it.
const NO_STAMP: u32 = u32::MAX;
/// Stamps handed out stay below this (they fit a sign-extended imm32 compare as they are).
const STAMP_LIMIT: u32 = 0x7fff_ffff;

impl Default for JumpCell {
    fn default() -> Self {
        Self {
            target: 0,
            stamp: NO_STAMP,
            entry: 0,
        }
    }
}

/// Chaining exits per arena generation; when they run out the arena is recycled, as when it
/// is full.
const LINKS: usize = 1 << 17;

/// log2 of the cells of the jump cache: translations by their address, for exits whose target
/// is only known when they run (RET).
const JUMP_BITS: u32 = 14;

/// The jump cache cell of guest address `rip` (the generated code computes the same).
fn jump_slot(rip: u64) -> usize {
    (rip.wrapping_mul(JUMP_HASH) >> (64 - JUMP_BITS)) as usize
}
const JUMP_HASH: u64 = 0x9e37_79b9_7f4a_7c15;

/// What the run loop lends translated code and its helpers for one call.
pub(crate) struct Env<'a> {
    mem: *mut (dyn GuestMemory + 'a),
    /// The host-address read and write tables of the running privilege (`Tlb::fast`,
    /// `Tlb::fast_w`).
    fast: *const FastEntry,
    fast_w: *const FastEntry,
    /// `Cpu::code_pages`, for the code-page watch of inline stores.
    code_pages: *const u16,
    /// The value the load helper read.
    val: u64,
    /// A value generated code keeps across a helper call (an ALU result being stored).
    tmp: u64,
    event: Option<Event>,
    /// The budget left: every translation takes all its instructions from it at its entry
    /// (leaving if they are not there) and an exit before its end gives back those it did
    /// not retire. A chain never takes more than the budget at the call.
    left: u64,
    /// The budget at the call.
    budget: u64,
    /// The link stamp the call runs under ([`Jit::stamp`]); 0, which no exit or jump cell
    /// holds, once a helper saw the validation generation change.
    stamp: u64,
    /// `Cpu::code_gen` and TLB epoch << 1 | user at the call (translated code ends when a
    /// generic instruction changes the second).
    code_gen: u64,
    epoch_user: u64,
    /// The chaining exit the call left by, if it left by one (its index + 1), for the run
    /// loop to link.
    exit_link: usize,
    /// Exits that went on through the jump cache.
    jumped: u64,
    /// Generic instructions run (by [`generic_helper`]).
    generic: u64,
    /// Instructions retired in the call up to the last one that set an interrupt shadow and
    /// went on (0: none did).
    shadow_at: u64,
}

/// A call of translated code, through its generation's shared prologue:
/// `(cpu, env, translation) ->` instructions retired in the translation it left from, or the
/// faulting instruction's index with [`FAULT`].
type Entry = unsafe extern "sysv64" fn(*mut Cpu, *mut Env<'_>, usize) -> u64;

/// Memory for translated code, mapped up front (before a sandbox forbids mapping executable
/// memory): one region per CPU, lent to a CPU by [`Cpu::enable_jit`] and given back, emptied,
/// when that CPU is dropped, so the CPUs of a rebooted machine use it again. A region is only
/// ever used by one CPU at a time.
#[derive(Debug, Clone, Default)]
pub struct CodePool(Arc<Mutex<Vec<Arena>>>);

impl CodePool {
    /// `regions` regions of 64 MiB of address space each (backed only as code is written).
    pub fn new(regions: usize) -> io::Result<Self> {
        let v = (0..regions)
            .map(|_| Arena::new(ARENA_BYTES))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self(Arc::new(Mutex::new(v))))
    }

    fn take(&self) -> Option<Arena> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn give_back(&self, mut a: Arena) {
        a.clear();
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(a);
    }
}

/// A CPU's translator: its code arena and statistics.
#[derive(Debug)]
pub(crate) struct Jit {
    /// Always `Some` until dropped (then returned to `pool`).
    arena: Option<Arena>,
    pool: CodePool,
    gen: u64,
    /// Runs of a block before it is compiled.
    pub(crate) threshold: u32,
    /// Blocks compiled (for tests and tracing).
    pub(crate) compiled: u64,
    /// This arena generation's chaining exits.
    links: Vec<Link>,
    /// Exits patched to go straight into a translation (for tests and tracing).
    pub(crate) linked: u64,
    /// The jump cache: cell `jump_slot(rip)` names the last translation run at `rip`, with
    /// the stamp it ran under. Boxed once: generated code holds its address.
    jumps: Box<[JumpCell]>,
    /// The link stamps of the last few (validation generation, TLB epoch << 1 | user) pairs
    /// ([`Jit::stamp`]), and the next stamp to hand out.
    stamps: [(u64, u64, u32); STAMPS],
    next_stamp: u32,
    /// Returns that went straight on through the jump cache (counted by the generated code
    /// through `Env::jumped`; for tests and tracing).
    pub(crate) jumped: u64,
    /// Generic instructions run in translated code (for tests and tracing).
    pub(crate) generic: u64,
    /// The exits every translation of this arena generation shares, once placed.
    shared: Option<Shared>,
}

/// Code that every translation of an arena generation shares, placed first in its hot part:
/// the prologue, the epilogue, and the exit through the jump cache, several dozen bytes that
/// were repeated at every exit.
#[derive(Debug, Clone, Copy)]
struct Shared {
    /// The prologue: `(cpu, env, translation)` makes the frame translated code runs in and
    /// jumps to the translation (the [`Entry`] of every call).
    entry: usize,
    /// Return to the run loop with the value in `rax`.
    epilogue: usize,
    /// Called with a guest address in `rax` (RIP already holds it) and `rcx` instructions
    /// retired in this translation (the budget already holds the rest): returns with the entry
    /// of the translation the jump cache names for it in `rdx` if it has one (the caller jumps
    /// there), else exits.
    jump: usize,
    /// The jump cache's first cell.
    jumps: usize,
}

/// (Validation generation, TLB epoch << 1 | user) pairs whose link stamps are remembered: a
/// kernel and the user programs it switches between keep theirs.
const STAMPS: usize = 8;

impl Jit {
    /// A translator with a region of `pool`, if one is free.
    pub(crate) fn new(pool: &CodePool, threshold: u32) -> Option<Self> {
        Some(Self {
            arena: Some(pool.take()?),
            pool: pool.clone(),
            gen: 1,
            threshold,
            compiled: 0,
            links: Vec::new(),
            linked: 0,
            jumps: vec![JumpCell::default(); 1 << JUMP_BITS].into_boxed_slice(),
            stamps: [(0, 0, NO_STAMP); STAMPS],
            next_stamp: 1,
            jumped: 0,
            generic: 0,
            shared: None,
        })
    }

    /// Whether `c` can still run (its arena generation is current).
    #[inline]
    pub(crate) fn valid(&self, c: &Compiled) -> bool {
        c.gen == self.gen
    }

    /// Compile the block at `ip` on guest-physical pages `code_pages` (the second `u64::MAX`
    /// unless its last instruction crosses into it) with instructions `ops`,
    /// whose generic ones take the entries of `generic` in turn (as in `block_cache::Code`).
    pub(crate) fn compile(
        &mut self,
        ip: u64,
        code_pages: [u64; 2],
        ops: &[Op],
        generic: &[Generic],
    ) -> Option<Compiled> {
        for attempt in 0..2 {
            if attempt == 1 || self.links.len() + MAX_EXITS > LINKS {
                self.recycle();
            }
            let jumps = self.jumps.as_ptr() as usize;
            let shared = match self.shared {
                Some(s) => s,
                None => {
                    let arena = self.arena.as_mut()?;
                    match place_shared(arena, jumps) {
                        Ok(Some(s)) => {
                            self.shared = Some(s);
                            s
                        }
                        Ok(None) => continue,
                        Err(e) => {
                            tracing::warn!(error = %e, "shared exits failed; interpreting");
                            return None;
                        }
                    }
                }
            };
            // Its own copy of its instructions first: its helper calls name their places.
            let len = ops.len().min(u16::MAX as usize);
            let arena = self.arena.as_mut()?;
            let n_generic = ops[..len]
                .iter()
                .filter(|o| o.fast == Fast::Generic)
                .count();
            let Some(generic) = generic.get(..n_generic) else {
                tracing::warn!(ip, "a decoded block without its generic instructions");
                return None;
            };
            let Some(ops_at) = arena.put_pair(&ops[..len], generic) else {
                continue;
            };
            let first_link = self.links.len();
            let place = Place {
                ip,
                code_pages,
                ops_at,
                first_link,
            };
            let t = match translate(&place, ops, generic, &shared) {
                Ok(Some(t)) => t,
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(ip, error = %e, "block translation failed; interpreting it");
                    return None;
                }
            };
            let (hot_len, cold_len) = (t.code.len(false), t.code.len(true));
            let (Some(hot_at), Some(cold_at)) =
                (arena.next(hot_len, false), arena.next(cold_len, true))
            else {
                continue;
            };
            let exits: Vec<Link> = t
                .exits
                .iter()
                .map(|&(stamp, rel, target)| {
                    let at = |l| t.code.label_offset(l).map(|o| hot_at + o - 4);
                    Some(Link {
                        stamp_at: at(stamp)?,
                        rel_at: at(rel)?,
                        target,
                    })
                })
                .collect::<Option<_>>()?;
            let [hot, cold] = match t.code.link(hot_at, cold_at) {
                Ok(code) => code,
                Err(e) => {
                    tracing::warn!(ip, error = %e, "block translation failed; interpreting it");
                    return None;
                }
            };
            // (Where `next` said: nothing was put in between.)
            let (Some(entry), Some(_)) = (arena.put(&hot), arena.put_cold(&cold)) else {
                continue;
            };
            self.links.extend(exits);
            self.compiled += 1;

            return Some(Compiled {
                entry: shared.entry,
                chain_entry: entry,
                gen: self.gen,
                len: t.len,
                code_pages,
            });
        }
        None
    }

    /// Start the code space and the chaining exits over. Every handle of the old generation
    /// is refused from now on.
    fn recycle(&mut self) {
        if let Some(arena) = self.arena.as_mut() {
            tracing::debug!(used = arena.used(), "translated code space recycled");
            arena.clear();
        }
        self.links.clear();
        self.jumps.fill(JumpCell::default());
        self.stamps = [(0, 0, NO_STAMP); STAMPS];
        self.next_stamp = 1;
        self.shared = None;
        self.gen += 1;
    }

    /// The link stamp of validation generation `code_gen` under TLB epoch and privilege
    /// `epoch_user`: the same for the same pair while it is among the last [`STAMPS`] pairs
    /// seen, and never the same for two pairs (a new pair gets a new stamp; when they run
    /// out, the code space starts over).
    pub(crate) fn stamp(&mut self, code_gen: u64, epoch_user: u64) -> u32 {
        if let Some(&(_, _, s)) = self
            .stamps
            .iter()
            .find(|&&(g, e, s)| s != NO_STAMP && g == code_gen && e == epoch_user)
        {
            return s;
        }
        if self.next_stamp >= STAMP_LIMIT {
            self.recycle();
        }
        let s = self.next_stamp;
        self.next_stamp += 1;
        self.stamps[s as usize % STAMPS] = (code_gen, epoch_user, s);
        s
    }

    /// `c`, the translation of the block at `rip`, is about to run under `stamp`: let exits
    /// to its address known only at run time find it (the jump cache).
    pub(crate) fn remember(&mut self, rip: u64, c: &Compiled, stamp: u32) {
        if !self.valid(c) {
            return;
        }
        let Some(base) = self.arena.as_ref().map(Arena::exec_base) else {
            return;
        };
        let Some(entry) = c
            .chain_entry
            .checked_sub(base)
            .and_then(|e| u32::try_from(e).ok())
        else {
            return;
        };
        if let Some(cell) = self.jumps.get_mut(jump_slot(rip)) {
            *cell = JumpCell {
                target: rip,
                stamp,
                entry,
            };
        }
    }

    /// Count what a call did: jumps through the jump cache, generic instructions run.
    pub(crate) fn count(&mut self, ran: &Ran) {
        self.jumped += ran.jumped;
        self.generic += ran.generic;
    }

    /// The call that ran last left by chaining exit `exit` (from [`Ran::exit_link`]), and
    /// `c`, the translation of the block at `rip`, runs next under `stamp`: link them, if
    /// there is such an exit now, it goes to `rip`, and `c` is current. (An index from before
    /// the code space started over may name another exit: one to `rip` is linked rightly.)
    pub(crate) fn link(&mut self, exit: usize, rip: u64, c: &Compiled, stamp: u32) {
        if !self.valid(c) {
            return;
        }
        let Some(&l) = self.links.get(exit) else {
            return;
        };
        if l.target != rip {
            return;
        }
        let Some(arena) = self.arena.as_mut() else {
            return;
        };
        let rel = (c.chain_entry as i64).wrapping_sub(l.rel_at as i64 + 4);
        let Ok(rel) = i32::try_from(rel) else {
            return;
        };
        if arena.patch(l.stamp_at, &stamp.to_le_bytes())
            && arena.patch(l.rel_at, &rel.to_le_bytes())
        {
            self.linked += 1;
        }
    }
}

impl Drop for Jit {
    fn drop(&mut self) {
        tracing::debug!(
            blocks = self.compiled,
            linked = self.linked,
            jumped = self.jumped,
            generic = self.generic,
            recycled = self.gen.saturating_sub(1),
            "block translator statistics"
        );
        if let Some(a) = self.arena.take() {
            self.pool.give_back(a);
        }
    }
}

/// What a call of translated code did.
pub(crate) struct Ran {
    /// The generated code's value (see [`FAULT`]), for the translation it returned from.
    pub(crate) ret: u64,
    /// The fault's event.
    pub(crate) event: Option<Event>,
    /// Instructions retired by the call, in every translation it ran.
    pub(crate) retired: u64,
    /// The chaining exit it left by, to link ([`Jit::link`]).
    pub(crate) exit_link: Option<usize>,
    /// Exits that went on through the jump cache.
    pub(crate) jumped: u64,
    /// Generic instructions it ran.
    pub(crate) generic: u64,
}

/// Run compiled block `c` (valid, see [`Jit::valid`]), chaining into other translations for
/// at most `left` instructions in all, under TLB epoch and privilege `epoch_user` and link
/// stamp `stamp` ([`Jit::stamp`]).
pub(crate) fn call(
    c: &Compiled,
    cpu: &mut Cpu,
    mem: &mut dyn GuestMemory,
    left: u64,
    epoch_user: u64,
    stamp: u32,
) -> Ran {
    let table = if cpu.user_access() { FAST_ENTRIES } else { 0 };
    let fast = cpu
        .tlb
        .fast
        .get(table..)
        .map_or(std::ptr::null(), |t| t.as_ptr());
    let fast_w = cpu
        .tlb
        .fast_w
        .get(table..)
        .map_or(std::ptr::null(), |t| t.as_ptr());
    let code_pages = cpu.code_pages.as_ptr();
    let mut env = Env {
        mem,
        fast,
        fast_w,
        code_pages,
        val: 0,
        tmp: 0,
        event: None,
        left,
        budget: left,
        stamp: u64::from(stamp),
        code_gen: cpu.code_gen,
        epoch_user,
        exit_link: 0,
        jumped: 0,
        generic: 0,
        shadow_at: 0,
    };
    // SAFETY: `c.entry` is the shared prologue `place_shared` emitted and `c.chain_entry` the
    // start of code `translate` emitted, both copied in completely by `Arena::put` in the
    // current generation (checked by the caller), so neither has been overwritten; the
    // prologue follows the SysV ABI with this signature, makes the frame and jumps to the
    // translation, whose exits return through the shared epilogue. It uses `cpu` only at the
    // field offsets `translate` took with `offset_of!`, `env` only through the helpers and
    // the fields it names with `offset_of!`, and reads its instructions only from its own copy
    // in the arena, at indices below its length (passed to `op_helper`). It may jump into
    // other translations of the same generation: through its chaining exits, which only
    // `Jit::link` patches (with the entry of a translation of this generation), and through
    // `Jit::jumps`, which only `Jit::remember` fills (likewise) and `Jit::recycle` empties,
    // under the same contract. Everything outlives the call, and nothing else uses it
    // meanwhile.
    let r = unsafe {
        let f: Entry = std::mem::transmute::<usize, Entry>(c.entry);
        f(cpu, &mut env, c.chain_entry)
    };
    let retired = left.saturating_sub(env.left);
    // An interrupt shadow lasts one instruction: gone if one retired after the instruction
    // that set it (a fault there is delivered, which clears it too).
    if env.shadow_at != 0 && retired > env.shadow_at {
        cpu.interrupt_shadow = false;
    }
    Ran {
        ret: r,
        event: env.event,
        retired,
        exit_link: env.exit_link.checked_sub(1),
        jumped: env.jumped,
        generic: env.generic,
    }
}

// ---- helpers called from generated code ----

/// Load `info & 0xff` bytes at linear `la` (`info & STACK`: the access is through SS).
/// Returns [`CONTINUE`] with the value in `Env::val`, [`RESTART`] or [`FAULTED`].
unsafe extern "sysv64" fn load_helper(cpu: *mut Cpu, env: *mut Env<'_>, la: u64, info: u64) -> u64 {
    // SAFETY: called only from generated code, with the pointers `call` passed in, which
    // are valid and unaliased for the duration of the call.
    let (cpu, env) = unsafe { (&mut *cpu, &mut *env) };
    // SAFETY: as above: `env.mem` is the run loop's `&mut dyn GuestMemory`, lent for the call.
    let mem = unsafe { &mut *env.mem };
    let r = cpu
        .check_canonical(la, info & STACK != 0)
        .and_then(|()| cpu.read_mem(mem, la, info as u8));
    check_stamp(cpu, env);
    match r {
        Ok(_) if cpu.code_written => RESTART,
        Ok(v) => {
            env.val = v;
            // Let the next reads of this page take the inline path if it is plain RAM.
            fill(cpu, mem, la, AccessKind::Read);
            CONTINUE
        }
        Err(e) => {
            env.event = Some(e);
            FAULTED
        }
    }
}

/// After an access of `kind` at `la` succeeded through the TLB: record the host address of
/// its page in the fast table of that kind and the running privilege, if it is plain RAM.
fn fill(cpu: &mut Cpu, mem: &mut dyn GuestMemory, la: u64, kind: AccessKind) {
    let user = cpu.user_access();
    if let Some(pa) = cpu.tlb.cached(la, kind, user) {
        if let Some((host, _promise)) = mem.ram_page_addr(pa) {
            cpu.tlb.fill_fast(la, kind, user, pa, host as u64);
        }
    }
}

/// Store the low `info & 0xff` bytes of `v` at linear `la` (`info & STACK` as for loads).
/// Returns [`CONTINUE`], [`END`] if the
/// store hit the running block's page, or [`FAULTED`].
unsafe extern "sysv64" fn store_helper(
    cpu: *mut Cpu,
    env: *mut Env<'_>,
    la: u64,
    info: u64,
    v: u64,
) -> u64 {
    // SAFETY: as in `load_helper`.
    let (cpu, env) = unsafe { (&mut *cpu, &mut *env) };
    // SAFETY: as in `load_helper`.
    let mem = unsafe { &mut *env.mem };
    let r = cpu
        .check_canonical(la, info & STACK != 0)
        .and_then(|()| cpu.write_mem(mem, la, info as u8, v));
    check_stamp(cpu, env);
    match r {
        Ok(()) if cpu.code_written => END,
        Ok(()) => {
            // Let the next writes of this page take the inline path if it is plain RAM.
            fill(cpu, mem, la, AccessKind::Write);
            CONTINUE
        }
        Err(e) => {
            env.event = Some(e);
            FAULTED
        }
    }
}

/// Run lowered instruction `*op` as the interpreter does. Returns [`CONTINUE`], [`END`] (it
/// retired; RIP is `Cpu::next_rip`) or [`FAULTED`]. (`_unretired`, the instructions of the
/// translation from this one on, is what `Tr::run_helper` passes every helper it calls.)
unsafe extern "sysv64" fn op_helper(
    cpu: *mut Cpu,
    env: *mut Env<'_>,
    op: *const Op,
    _unretired: u64,
) -> u64 {
    // SAFETY: as in `load_helper`; `op` points into the translation's own copy of its ops in
    // the arena, which stays in place while it runs.
    let (cpu, env, op) = unsafe { (&mut *cpu, &mut *env, &*op) };
    // SAFETY: as in `load_helper`.
    let mem = unsafe { &mut *env.mem };
    cpu.next_rip = op.next_ip;
    let r = cpu.exec_fast(mem, &op.fast);
    check_stamp(cpu, env);
    match r {
        Ok(()) if cpu.next_rip != op.next_ip || cpu.code_written => END,
        Ok(()) => CONTINUE,
        Err(e) => {
            env.event = Some(e);
            FAULTED
        }
    }
}

/// Run generic instruction `*g` of the running translation, which has `unretired`
/// instructions from this one on, as the interpreter does. Returns [`CONTINUE`], [`END`] (it retired; RIP is `Cpu::next_rip`) or
/// [`FAULTED`] (it faulted, or left for the embedder as HLT, IN and OUT do, with RIP where the
/// interpreter would leave it: at the instruction, or past it if it retired). It ends the translation wherever the interpreter ends a block after a generic
/// instruction (a change of RIP, a halt, a store into the block's page, a change of TLB epoch
/// or mode), and also where what the translation runs under would no longer hold: a change of
/// privilege (the inline accesses use the tables of the privilege at the call) or of the
/// validation generation. An interrupt shadow (STI that sets IF, MOV SS, POP SS) goes on: the
/// helper notes where it retired ([`Env::shadow_at`]), and the run loop clears the shadow if
/// anything retired after it in the call (the interpreter clears it at the next instruction,
/// which translated code does not). Interrupts are only taken between calls, so leaving
/// here would only cost a return to the run loop (STI and POPF are a Linux kernel's way out
/// of every critical section).
unsafe extern "sysv64" fn generic_helper(
    cpu: *mut Cpu,
    env: *mut Env<'_>,
    g: *const Generic,
    unretired: u64,
) -> u64 {
    // SAFETY: as in `load_helper`; `g` points into the translation's own copy of its generic
    // instructions in the arena, which stays in place while it runs.
    let (cpu, env, g) = unsafe { (&mut *cpu, &mut *env, &*g) };
    // SAFETY: as in `load_helper`.
    let mem = unsafe { &mut *env.mem };
    let gen = cpu.code_gen;
    cpu.interrupt_shadow = false;
    cpu.rip = g.instr.ip();
    cpu.next_rip = g.instr.next_ip();
    // The run loop counts the TSC for the whole call when it returns: let this instruction
    // see (and set) it as the interpreter would.
    env.generic += 1;
    let before = env.budget.wrapping_sub(env.left).wrapping_sub(unretired);
    cpu.tsc = cpu.tsc.wrapping_add(before);
    let r = crate::exec::execute_op(cpu, mem, &g.instr, g.mnemonic, g.locked);
    cpu.tsc = cpu.tsc.wrapping_sub(before);
    check_stamp(cpu, env);
    match r {
        Ok(())
            if cpu.next_rip != g.instr.next_ip()
                || cpu.halted
                || cpu.code_written
                || cpu.code_gen != gen
                || (cpu.tlb.epoch << 1 | u64::from(cpu.user_access())) != env.epoch_user
                || !cpu.in_64bit_mode() =>
        {
            END
        }
        Ok(()) => {
            if cpu.interrupt_shadow {
                env.shadow_at = before + 1;
            }
            CONTINUE
        }
        Err(e) => {
            env.event = Some(e);
            FAULTED
        }
    }
}

/// After a helper ran an access or an instruction: if that changed the validation generation
/// (a store into validated code, or a page walk's) or the TLB epoch or privilege, no exit goes
/// on into another translation under the call's link stamp; they leave for the run loop.
fn check_stamp(cpu: &Cpu, env: &mut Env<'_>) {
    if cpu.code_gen != env.code_gen
        || (cpu.tlb.epoch << 1 | u64::from(cpu.user_access())) != env.epoch_user
    {
        env.stamp = 0;
    }
}

/// Record #GP(0) as the fault of the running instruction.
unsafe extern "sysv64" fn gp_helper(env: *mut Env<'_>) {
    // SAFETY: as in `load_helper`.
    let env = unsafe { &mut *env };
    env.event = Some(Exception::gp(0).into());
}

/// Condition code `cc` of the current flags (0 or 1).
unsafe extern "sysv64" fn cond_helper(cpu: *const Cpu, cc: u64) -> u64 {
    // SAFETY: as in `load_helper` (read only).
    let cpu = unsafe { &*cpu };
    cpu.flags.condition(cc as u8) as u64
}

/// Set CF and OF to those of `f` (the interpreter's `Flags::set_arith`), keeping the other
/// arithmetic flags: after a rotate.
unsafe extern "sysv64" fn cf_of_helper(cpu: *mut Cpu, f: u64) {
    // SAFETY: as in `load_helper`.
    let cpu = unsafe { &mut *cpu };
    cpu.flags.set_arith(flags::CF | flags::OF, f);
}

// ---- the translator ----

/// Host registers of generated code: `rbx` the `Cpu` (biased, see [`CPU_BIAS`]), `r12` the
/// [`Env`], `r13` the register cache ([`CACHE`]); `r14`, `r15`, `rbp` values kept across
/// helper calls.
const CPU: Reg64 = rbx;
/// `CPU` points this far into the [`Cpu`], so that its general registers, flags and the
/// other fields translated code uses most are within a signed byte of it (see `Cpu`'s
/// `repr(C)`).
const CPU_BIAS: usize = 128;
const _: () =
    assert!(offset_of!(Cpu, gpr) + 128 >= CPU_BIAS && offset_of!(Cpu, code_gen) < CPU_BIAS + 128);
const ENV: Reg64 = r12;
/// Holds the value of the guest register [`Tr::cached`] names, if any.
const CACHE: Reg64 = r13;
const CACHE32: Reg32 = r13d;

fn gpr_off(i: u8) -> usize {
    offset_of!(Cpu, gpr) + 8 * (i as usize & 15)
}

fn seg_base_off(s: SegReg) -> usize {
    offset_of!(Cpu, seg) + std::mem::size_of::<Segment>() * s as usize + offset_of!(Segment, base)
}

/// log2 of the size of a [`FastEntry`] (the inline paths index the tables with it).
const FAST_ENTRY_SHIFT: u32 = 5;
const _: () = assert!(std::mem::size_of::<FastEntry>() == 1 << FAST_ENTRY_SHIFT);
const _: () = assert!(CODE_PAGE_SLOTS.is_power_of_two() && FAST_ENTRIES.is_power_of_two());

/// The top of the stack, `[rsp]`, as an address recipe.
const RSP_TOP: Addr = Addr {
    disp: 0,
    base: 4,
    index: NONE,
    shift: 0,
    seg: 0,
    stack: true,
};

/// What an exit stub does.
enum StubKind {
    /// Instruction `i` at `ip` faulted.
    Fault { i: usize, ip: u64 },
    /// The translation is not to run: RIP is its start, and nothing retired.
    Unentered,
    /// Instruction `i` retired and RIP is `Cpu::next_rip`.
    EndNext { i: usize },
    /// Instruction `i` retired and RIP is `rip`.
    EndAt { i: usize, rip: u64 },
    /// Instruction `i` retired and RIP is `rip`, the target of chaining exit `link` (its
    /// index in `Jit::links`): go on into the translation patched into it if its stamp is the
    /// call's, else end like `EndAt` and name the exit for the run loop to link.
    Chain { i: usize, link: usize, rip: u64 },
    /// Instruction `i` retired and RIP is the value in `rax`.
    EndRax { i: usize },
    /// Instruction `i` at `ip` raised #GP(0).
    FaultGp { i: usize, ip: u64 },
    /// Instruction `i` at `ip` is to run again (see [`RESTART`]).
    Restart { i: usize, ip: u64 },
    /// Generic instruction `i` faulted or left for the embedder, with RIP where it left it.
    Left { i: usize },
    /// The slow path of a load (see [`Tr::load`]): the load helper for a `size`-byte access
    /// (through SS if `stack`) at the address in `rdx`, then back to `back` with the value in
    /// `rax`, or to `fault` or `restart`.
    LoadSlow {
        size: u8,
        stack: bool,
        fault: Label,
        restart: Label,
        back: Label,
    },
    /// The slow path of an inline generic instruction (see [`Tr::cmpxchg`]): run instruction
    /// `i` through [`generic_helper`] on its copy at `OPS + at`, then back to `back`, or to
    /// `left` or `end` as [`Tr::run_helper`] would.
    GenericSlow {
        i: usize,
        at: usize,
        left: Label,
        end: Label,
        back: Label,
    },
    /// The slow path of a store (see [`Tr::store_rdx`]): the store helper, then back to
    /// `back` with its status in `rax`, or to `fault`.
    StoreSlow {
        size: u8,
        stack: bool,
        fault: Label,
        back: Label,
    },
}

struct Stub {
    label: Label,
    kind: StubKind,
}

struct Tr<'c> {
    a: Asm,
    /// The guest register whose whole 64-bit value is also in [`CACHE`] at this point of the
    /// code. Guest registers are written through to the `Cpu` always (so exits, faults and
    /// helpers see them there); the copy only spares reads the trip through memory. Forgotten
    /// wherever a helper may write guest registers, and at every join of paths that could
    /// disagree.
    cached: Option<u8>,
    stubs: Vec<Stub>,
    epilogue: Label,
    /// The operation and size the lazy flags record holds, when an instruction emitted
    /// inline earlier in this translation wrote it (and nothing since may have changed it).
    flags: Option<(LazyOp, u8)>,
    /// The flags the instruction being emitted writes are never read ([`flags_dead_after`]):
    /// a later instruction of this translation writes the whole lazy flags record first, with
    /// only moves that cannot fault or leave in between, so an ALU operation of a register, or
    /// a shift or rotate by an immediate, need not write them.
    record_dead: bool,
    /// Where the hot code stood ([`Asm::mark`]) when the host's arithmetic flags last were
    /// the guest's ones `flags` records: at that same mark they still are, and a condition
    /// needs no [`Tr::host_flags`].
    flags_live: Option<(usize, usize)>,
    /// The instruction being emitted: its index and address.
    cur: (usize, u64),
    /// Where the translation goes and what it runs under.
    place: &'c Place,
    /// Its instructions.
    len: usize,
    /// Its chaining exits: the labels just past their stamp and jump fields (once emitted),
    /// their targets.
    exits: Vec<(Option<(Label, Label)>, u64)>,
    /// The shared exit through the jump cache ([`Shared::jump`]).
    jump_exit: Label,
    /// The jump cache's first cell ([`Shared::jumps`]).
    jumps: usize,
    /// Offset from the copy of its instructions of the copy of the first generic one (see
    /// [`Arena::put_pair`]), and the generic instructions emitted so far.
    generic_base: usize,
    generic_used: usize,
    /// The block's generic instructions.
    generics: &'c [Generic],
}

/// What a translation is made for.
struct Place {
    /// The block's address and guest-physical pages (see [`Compiled::code_pages`]).
    ip: u64,
    code_pages: [u64; 2],
    /// Where its own copy of its instructions is (see [`Arena::put_pair`]).
    ops_at: usize,
    /// The index in `Jit::links` of its first chaining exit.
    first_link: usize,
}

/// A translation, before it is placed in the arena.
struct Translation {
    /// Its code, hot (starting with its entry) and cold, to be linked where it is placed.
    code: Asm,
    /// Instructions covered.
    len: u16,
    /// Its chaining exits, in order from [`Place::first_link`]: the labels just past their
    /// stamp and jump fields, and their targets.
    exits: Vec<(Label, Label, u64)>,
}

/// Most chaining exits one translation has: one per instruction and one for its end.
const MAX_EXITS: usize = crate::block_cache::MAX_INSNS + 1;

/// Why a block could not be translated (it is then interpreted).
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("assembler: {0}")]
    Asm(#[from] AsmError),
    #[error("a decoded block without its generic instruction")]
    Generic,
}

impl Tr<'_> {
    /// A stub for leaving after instruction `i` to fixed address `rip`: chainable while
    /// chaining exits are left.
    fn exit_to(&mut self, i: usize, rip: u64) -> Label {
        let link = self.place.first_link + self.exits.len();
        if link < LINKS {
            // (Its labels are made when the stub is emitted.)
            self.exits.push((None, rip));
            self.stub(StubKind::Chain { i, link, rip })
        } else {
            self.stub(StubKind::EndAt { i, rip })
        }
    }

    /// Give back to the budget the instructions of this translation after instruction `i`
    /// (which retired): it took all of them at its entry.
    fn give_back(&mut self, retired: usize) -> R<()> {
        let n = self.len.saturating_sub(retired);
        if n == 0 {
            return Ok(());
        }
        self.a
            .add(qword_ptr(ENV + offset_of!(Env<'_>, left)), n as u32)
    }

    /// Leave after instruction `i` for the address in `rax` (RIP already holds it): through
    /// the jump cache into the translation there if its cell names that address under the
    /// call's stamp, else return to the run loop.
    fn jump(&mut self, i: usize) -> R<()> {
        self.give_back(i + 1)?;
        self.a.mov(ecx, i as u32 + 1)?;
        let to = self.jump_exit;
        self.a.call_label(to)?;
        self.a.jmp_reg(rdx)
    }

    /// The code of a [`StubKind::Chain`] stub, exit `n` of this translation: hot, a compare
    /// with the stamp patched in and a jump to the translation patched in (at first: never,
    /// and the way out), and the way out, cold.
    fn chain(&mut self, i: usize, link: usize, rip: u64) -> R<()> {
        let n = link - self.place.first_link;
        let mut out = self.a.create_label();
        let mut stamp_end = self.a.create_label();
        let mut rel_end = self.a.create_label();
        self.give_back(i + 1)?;
        self.a
            .cmp_imm32(dword_ptr(ENV + offset_of!(Env<'_>, stamp)), NO_STAMP)?;
        self.a.set_label(&mut stamp_end)?;
        self.a.jne(out)?;
        self.a.jmp(out)?;
        self.a.set_label(&mut rel_end)?;
        self.exits.get_mut(n).ok_or(AsmError::Unbound)?.0 = Some((stamp_end, rel_end));
        self.a.cold(true);
        self.a.set_label(&mut out)?;
        self.a.mov(
            qword_ptr(ENV + offset_of!(Env<'_>, exit_link)),
            link as u32 + 1,
        )?;
        self.a.mov(rax, rip)?;
        self.a
            .mov(qword_ptr(CPU - CPU_BIAS + offset_of!(Cpu, rip)), rax)?;
        self.a.mov(rax, i as u64 + 1)?;
        let e = self.epilogue;
        self.a.jmp(e)
    }

    fn stub(&mut self, kind: StubKind) -> Label {
        let label = self.a.create_label();
        self.stubs.push(Stub { label, kind });
        label
    }

    /// `dst` (32- or 64-bit view of a scratch register) = general register `g` at `size`,
    /// zero-extended. `g` 16-19 are AH, CH, DH, BH.
    fn get(&mut self, dst: Reg64, dst32: Reg32, g: u8, size: u8) -> R<()> {
        if self.cached == Some(g) {
            return match size {
                1 => self.a.movzx(dst32, r13b),
                2 => self.a.movzx(dst32, r13w),
                4 => self.a.mov(dst32, CACHE32),
                _ => self.a.mov(dst, CACHE),
            };
        }
        if g >= 16 {
            let off = gpr_off(g & 3) + 1;
            return self.a.movzx(dst32, byte_ptr(CPU - CPU_BIAS + off));
        }
        let off = gpr_off(g);
        match size {
            1 => self.a.movzx(dst32, byte_ptr(CPU - CPU_BIAS + off)),
            2 => self.a.movzx(dst32, word_ptr(CPU - CPU_BIAS + off)),
            4 => self.a.mov(dst32, dword_ptr(CPU - CPU_BIAS + off)),
            _ => self.a.mov(dst, qword_ptr(CPU - CPU_BIAS + off)),
        }
    }

    /// General register `g` at `size` = `rax`, already zero-extended from `size` (a 32-bit
    /// value needs no masking then), with x86's merge rules.
    fn set_from_rax_zx(&mut self, g: u8, size: u8) -> R<()> {
        if size == 4 && g < 16 {
            return self.set64_from(g, rax);
        }
        self.set_from_rax(g, size)
    }

    /// General register `g` at `size` = `rax` (masked to `size`), with x86's merge rules.
    fn set_from_rax(&mut self, g: u8, size: u8) -> R<()> {
        if g >= 16 {
            self.forget(g & 3);
            return self
                .a
                .mov(byte_ptr(CPU - CPU_BIAS + gpr_off(g & 3) + 1), al);
        }
        let off = gpr_off(g);
        match size {
            1 => {
                self.forget(g);
                self.a.mov(byte_ptr(CPU - CPU_BIAS + off), al)
            }
            2 => {
                self.forget(g);
                self.a.mov(word_ptr(CPU - CPU_BIAS + off), ax)
            }
            4 => {
                self.a.mov(eax, eax)?;
                self.set64_from(g, rax)
            }
            _ => self.set64_from(g, rax),
        }
    }

    /// General register `g` (0-15) = all of `r`, kept in [`CACHE`] too.
    fn set64_from(&mut self, g: u8, r: Reg64) -> R<()> {
        self.a.mov(qword_ptr(CPU - CPU_BIAS + gpr_off(g)), r)?;
        self.a.mov(CACHE, r)?;
        self.cached = Some(g);
        Ok(())
    }

    /// General register `g` (0-15) changed in the `Cpu` alone: drop a cached copy of it.
    fn forget(&mut self, g: u8) {
        if self.cached == Some(g) {
            self.cached = None;
        }
    }

    /// `rdx` = the linear address of `addr` (no canonical check). Clobbers `rax`.
    fn ea(&mut self, addr: &Addr) -> R<()> {
        // The displacement as a sign-extended imm32 / disp32, if it is one.
        let disp = i32::try_from(addr.disp as i64).ok();
        match (addr.base, disp) {
            (NONE, _) | (_, None) => {
                self.a.mov(rdx, addr.disp)?;
                if addr.base != NONE {
                    if self.cached == Some(addr.base) {
                        self.a.add(rdx, CACHE)?;
                    } else {
                        self.a
                            .add(rdx, qword_ptr(CPU - CPU_BIAS + gpr_off(addr.base)))?;
                    }
                }
            }
            (base, Some(d)) if self.cached == Some(base) => {
                self.a
                    .lea(rdx, qword_ptr(Mem::from(CACHE).plus(i64::from(d))))?;
            }
            (base, Some(d)) => {
                self.a.mov(rdx, qword_ptr(CPU - CPU_BIAS + gpr_off(base)))?;
                if d != 0 {
                    self.a.add(rdx, d)?;
                }
            }
        }
        if addr.index != NONE {
            self.get(rax, eax, addr.index, 8)?;
            self.a
                .lea(rdx, qword_ptr(rdx + rax * (1u8 << addr.shift)))?;
        }
        match addr.seg {
            1 => self
                .a
                .add(rdx, qword_ptr(CPU - CPU_BIAS + seg_base_off(SegReg::Fs))),
            2 => self
                .a
                .add(rdx, qword_ptr(CPU - CPU_BIAS + seg_base_off(SegReg::Gs))),
            _ => Ok(()),
        }
    }

    fn call_helper(&mut self, f: usize) -> R<()> {
        self.a.mov(rax, f as u64)?;
        self.a.call(rax)
    }

    /// Call the load or store helper `f` for a `size`-byte access (through SS if `stack`) at
    /// the address in `rdx` (a store's value in `r8`).
    fn access_helper(&mut self, f: usize, size: u8, stack: bool) -> R<()> {
        self.a.lea(rdi, qword_ptr(CPU - CPU_BIAS))?;
        self.a.mov(rsi, ENV)?;
        let info = u64::from(size) | if stack { STACK } else { 0 };
        self.a.mov(ecx, info as u32)?;
        self.call_helper(f)
    }

    /// After a store whose status is in `rax`: end the translation after instruction `i`
    /// (RIP `next`) if it hit the running block's page ([`END`]).
    fn end_if_code_written(&mut self, i: usize, next: u64) -> R<()> {
        let end = self.stub(StubKind::EndAt { i, rip: next });
        self.a.test(eax, eax)?;
        self.a.jne(end)
    }

    /// Look the address in `rdx` up in the host-address table whose pointer is at `table` in
    /// the [`Env`]: with a hit for a `size`-byte access within the page, `rcx` is the entry
    /// (whose addend added to `rdx` is the host address); otherwise jump to `slow`. `rdx` is
    /// kept.
    fn fast_entry(&mut self, table: usize, size: u8, slow: Label) -> R<()> {
        // rcx = the slot of the page (its byte offset in the table, straight from the
        // address); rax = its tag.
        self.a.mov(ecx, edx)?;
        self.a.shr(ecx, 12 - FAST_ENTRY_SHIFT)?;
        self.a
            .and(ecx, (FAST_ENTRIES as u32 - 1) << FAST_ENTRY_SHIFT)?;
        self.a.add(rcx, qword_ptr(ENV + table))?;
        // The tag of the access's last byte: an access that crosses into the next page
        // never finds it in the slot of its first byte's page (slots are the page number
        // modulo the table size, and the two pages' numbers differ by one), so it takes the
        // slow path, where the helper splits it.
        if size > 1 {
            self.a.lea(rax, qword_ptr(rdx + (usize::from(size) - 1)))?;
        } else {
            self.a.mov(rax, rdx)?;
        }
        self.a.shr(rax, 12)?;
        self.a
            .cmp(rax, qword_ptr(rcx + offset_of!(FastEntry, tag)))?;
        self.a.jne(slow)
    }

    /// `rax` = the addend of the host-address entry in `rcx` ([`Tr::fast_entry`]): the host
    /// address of the access is `rax + rdx`.
    fn addend(&mut self) -> R<()> {
        self.a
            .mov(rax, qword_ptr(rcx + offset_of!(FastEntry, addend)))
    }

    /// `rax` = `size` bytes at `addr`: inline from the host address of a RAM page found in
    /// the read table (`Tlb::fast`), else through the load helper; a fault exits via `fault`.
    fn load(&mut self, addr: &Addr, size: u8, fault: Label) -> R<()> {
        self.ea(addr)?;
        let mut back = self.a.create_label();
        let (i, ip) = self.cur;
        let restart = self.stub(StubKind::Restart { i, ip });
        // The helper call is out of line, after the block's hot code.
        let slow = self.stub(StubKind::LoadSlow {
            size,
            stack: addr.stack,
            fault,
            restart,
            back,
        });
        self.fast_entry(offset_of!(Env<'_>, fast), size, slow)?;
        self.addend()?;
        match size {
            1 => self.a.movzx(eax, byte_ptr(rax + rdx * 1))?,
            2 => self.a.movzx(eax, word_ptr(rax + rdx * 1))?,
            4 => self.a.mov(eax, dword_ptr(rax + rdx * 1))?,
            _ => self.a.mov(rax, qword_ptr(rax + rdx * 1))?,
        }
        self.a.set_label(&mut back)
    }

    /// Store the value in `r8` (`size` bytes) at the address in `rdx`: inline to the host
    /// address of a RAM page found in the write table (`Tlb::fast_w`) unless the page is the
    /// running block's or holds code validated in this generation (the code-page watch of
    /// `Cpu::note_store`), else through the store helper. A fault exits via `fault`. Leaves
    /// the status in `rax`: [`CONTINUE`], or [`END`] if the store hit the block's page.
    fn store_rdx(&mut self, size: u8, stack: bool, fault: Label) -> R<()> {
        let mut back = self.a.create_label();
        // The helper call is out of line, after the block's hot code.
        let slow = self.stub(StubKind::StoreSlow {
            size,
            stack,
            fault,
            back,
        });
        self.fast_entry(offset_of!(Env<'_>, fast_w), size, slow)?;
        self.code_watch(slow)?;
        self.addend()?;
        match size {
            1 => self.a.mov(byte_ptr(rax + rdx * 1), r8b)?,
            2 => self.a.mov(word_ptr(rax + rdx * 1), r8w)?,
            4 => self.a.mov(dword_ptr(rax + rdx * 1), r8d)?,
            _ => self.a.mov(qword_ptr(rax + rdx * 1), r8)?,
        }
        self.a.xor(eax, eax)?;
        self.a.set_label(&mut back)
    }

    /// The code-page watch of an inline store to the page of write-table entry `rcx`: to
    /// `slow` if the page holds the running block or code validated in this generation.
    /// Clobbers `r9`-`r11`.
    fn code_watch(&mut self, slow: Label) -> R<()> {
        self.a
            .mov(r9, qword_ptr(rcx + offset_of!(FastEntry, ppn)))?;
        self.a
            .cmp(r9, qword_ptr(CPU - CPU_BIAS + offset_of!(Cpu, code_page)))?;
        self.a.je(slow)?;
        self.a.and(r9d, CODE_PAGE_SLOTS as u32 - 1)?;
        self.a
            .mov(r10, qword_ptr(ENV + offset_of!(Env<'_>, code_pages)))?;
        self.a
            .movzx(r11d, word_ptr(CPU - CPU_BIAS + offset_of!(Cpu, code_gen)))?;
        self.a.cmp(r11w, word_ptr(r10 + r9 * 2))?;
        self.a.je(slow)
    }

    /// Push the value in `r8` (8 bytes): the stack pointer changes only once the store is
    /// done. Leaves the store helper's status in `rax`.
    fn push_r8(&mut self, fault: Label) -> R<()> {
        self.get(rdx, edx, 4, 8)?;
        self.a.sub(rdx, 8)?;
        self.a.mov(r15, rdx)?;
        self.store_rdx(8, true, fault)?;
        self.set64_from(4, r15)
    }

    /// `rax` = the target of RET or of an indirect JMP/CALL of instruction `i` (at `ip`), read
    /// from `src` and checked canonical (#GP otherwise). Returns the instruction's fault exit.
    fn branch_target(&mut self, i: usize, ip: u64, src: &Src) -> R<Label> {
        let fault = self.stub(StubKind::Fault { i, ip });
        let gp = self.stub(StubKind::FaultGp { i, ip });
        self.src(src, 8, fault)?;
        self.canonical_rax(gp)?;
        Ok(fault)
    }

    /// Leave instruction `i` for the address in `rax`, through the jump cache.
    /// Ask the host to bring the jump cache cell of `ret`, a CALL's return address, into its
    /// caches: the RET that comes back there reads it (the hash scatters the cells, so the one
    /// RET needs is often out of the cache by then), and waiting for that read is waiting
    /// before the jump to the caller's code. Here, the callee runs meanwhile.
    fn prefetch_return(&mut self, ret: u64) -> R<()> {
        let cell = self.jumps + jump_slot(ret) * size_of::<JumpCell>();
        self.a.mov(rax, cell as u64)?;
        self.a.prefetcht0(byte_ptr(rax))
    }

    fn leave_to_rax(&mut self, i: usize) -> R<()> {
        let end = self.stub(StubKind::EndRax { i });
        self.a.jmp(end)
    }

    /// `rax` = source `s` at `size` (zero-extended).
    fn src(&mut self, s: &Src, size: u8, fault: Label) -> R<()> {
        match *s {
            Src::Reg(g) => self.get(rax, eax, g, size),
            Src::Imm(v) => self.a.mov(rax, v),
            Src::Mem(ref addr) => self.load(addr, size, fault),
        }
    }

    /// Mask `r` (with 32-bit view `r32`) to `size` bytes.
    fn mask(&mut self, r: Reg64, r32: Reg32, size: u8) -> R<()> {
        match size {
            1 => self.a.movzx(r32, low8(r)),
            2 => self.a.movzx(r32, low16(r)),
            4 => self.a.mov(r32, r32),
            _ => Ok(()),
        }
    }

    /// Record `op` in the lazy flags: operands `r14` and `rbp`, result `rcx`, no carry-in.
    fn record(&mut self, op: LazyOp, size: u8) -> R<()> {
        self.record_of(op, size, rbp.into(), rcx, false)
    }

    /// Record `op` in the lazy flags: operands `r14` and `b`, result `res`, and the carry in
    /// `eax` (0 or 1) if `carry`, else none.
    fn record_of(&mut self, op: LazyOp, size: u8, b: Opnd, res: Reg64, carry: bool) -> R<()> {
        let f = offset_of!(Cpu, flags);
        // (A logic operation's flags are its result's alone: `Flags::arith` and the host
        // flags read only `res` for it.)
        if op != LazyOp::Logic {
            self.a
                .mov(qword_ptr(CPU - CPU_BIAS + f + Flags::OFF_A), r14)?;
            self.a
                .mov(qword_ptr(CPU - CPU_BIAS + f + Flags::OFF_B), b)?;
        }
        self.a
            .mov(qword_ptr(CPU - CPU_BIAS + f + Flags::OFF_RES), res)?;
        // The operation, its size and the carry, in one store.
        let word = dword_ptr(CPU - CPU_BIAS + f + Flags::OFF_OP_WORD);
        let op_size = op as u32 | u32::from(size) << 8;
        if carry {
            self.a.shl(eax, 16)?;
            self.a.or(eax, op_size)?;
            self.a.mov(word, eax)
        } else {
            self.a.mov(word, op_size)
        }
    }

    /// Instruction `i` through [`op_helper`].
    fn via_helper(&mut self, i: usize, ip: u64) -> R<()> {
        let fault = self.stub(StubKind::Fault { i, ip });
        let at = i * std::mem::size_of::<Op>();
        self.run_helper(i, op_helper as *const () as usize, at, fault)
    }

    /// Call `helper(cpu, env, OPS + at, i)` to run instruction `i`, which may write the flags:
    /// it returns [`CONTINUE`], [`END`] (leave by [`StubKind::EndNext`]) or [`FAULTED`] (leave
    /// by `fault`).
    fn run_helper(&mut self, i: usize, helper: usize, at: usize, fault: Label) -> R<()> {
        self.flags = None;
        // (The helper may write any guest register.)
        self.cached = None;
        let end = self.stub(StubKind::EndNext { i });
        self.helper_call(i, helper, at)?;
        self.on_status(fault, Some(end))
    }

    /// After a helper whose status is in `eax`: to `faulted` on [`FAULTED`], and to `other`
    /// (if given) on any other status but [`CONTINUE`].
    fn on_status(&mut self, faulted: Label, other: Option<Label>) -> R<()> {
        self.a.cmp(eax, FAULTED as u32)?;
        self.a.je(faulted)?;
        if let Some(other) = other {
            self.a.test(eax, eax)?;
            self.a.jne(other)?;
        }
        Ok(())
    }

    /// Call `helper(cpu, env, OPS + at, unretired)` for instruction `i`, where `OPS` is the
    /// translation's own copy of its instructions and `unretired` its instructions from `i`
    /// on.
    fn helper_call(&mut self, i: usize, helper: usize, at: usize) -> R<()> {
        self.a.lea(rdi, qword_ptr(CPU - CPU_BIAS))?;
        self.a.mov(rsi, ENV)?;
        self.a.mov(rdx, (self.place.ops_at + at) as u64)?;
        self.a.mov(ecx, self.len.saturating_sub(i) as u32)?;
        self.call_helper(helper)
    }

    /// `eax` = condition code `cc` of the current flags (0 or 1), through [`cond_helper`].
    fn condition_to_eax(&mut self, cc: u8) -> R<()> {
        self.a.lea(rdi, qword_ptr(CPU - CPU_BIAS))?;
        self.a.mov(esi, cc as u32)?;
        self.call_helper(cond_helper as *const () as usize)
    }

    /// Run generic instruction `i` (at `ip`), the next of the block's generic instructions,
    /// through [`generic_helper`].
    fn generic(&mut self, i: usize) -> Result<(), Error> {
        let k = self.generic_used;
        let Some(g) = self.generics.get(k) else {
            return Err(Error::Generic);
        };
        self.generic_used += 1;
        let fault = self.stub(StubKind::Left { i });
        let at = self.generic_base + k * std::mem::size_of::<Generic>();
        if let Some((addr, src, size)) = inline_cmpxchg(g) {
            return Ok(self.cmpxchg(i, at, fault, &addr, src, size)?);
        }
        Ok(self.run_helper(i, generic_helper as *const () as usize, at, fault)?)
    }

    /// CMPXCHG of memory with general register `src` at `size` (4 or 8), generic instruction
    /// `i` with its copy at `OPS + at`: inline as a host LOCK CMPXCHG on the RAM page when the
    /// write table has it (with the code-page watch of a store) and the operand is aligned (so
    /// it never splits a cache line), else through [`generic_helper`] out of line. Both ways
    /// leave the interpreter's flags record (a CMP of the accumulator with the old value),
    /// and the accumulator takes the old value only when they differ. The host instruction is
    /// atomic, as the interpreter's locked write is (a compare-and-exchange with the value
    /// read), so vCPUs running either way stay atomic against each other.
    fn cmpxchg(
        &mut self,
        i: usize,
        at: usize,
        left: Label,
        addr: &Addr,
        src: u8,
        size: u8,
    ) -> R<()> {
        let mut back = self.a.create_label();
        let end = self.stub(StubKind::EndNext { i });
        let slow = self.stub(StubKind::GenericSlow {
            i,
            at,
            left,
            end,
            back,
        });
        self.ea(addr)?;
        self.a.test(edx, u32::from(size) - 1)?;
        self.a.jne(slow)?;
        self.fast_entry(offset_of!(Env<'_>, fast_w), size, slow)?;
        self.code_watch(slow)?;
        self.addend()?;
        self.a.add(rax, rdx)?;
        // The host address aligned too, whatever the alignment of the page the memory gave
        // (a locked access across a cache line is a bus lock, or SIGBUS on some hosts).
        self.a.test(eax, u32::from(size) - 1)?;
        self.a.jne(slow)?;
        self.a.mov(r8, rax)?;
        // a (the accumulator) in r14, the old value in rbp, a - old in rcx.
        self.get(r14, r14d, 0, size)?;
        self.get(rcx, ecx, src, size)?;
        self.a.mov(rax, r14)?;
        if size == 8 {
            self.a.lock_cmpxchg(qword_ptr(r8), rcx)?;
        } else {
            self.a.lock_cmpxchg(dword_ptr(r8), ecx)?;
        }
        self.a.mov(rbp, rax)?;
        let mut same = self.a.create_label();
        self.a.cmp(r14, rbp)?;
        self.a.je(same)?;
        self.set_from_rax(0, size)?;
        self.a.set_label(&mut same)?;
        // (Only the failure path wrote the accumulator.)
        self.cached = None;
        self.a.mov(rcx, r14)?;
        self.a.sub(rcx, rbp)?;
        self.mask(rcx, ecx, size)?;
        self.record(LazyOp::Sub, size)?;
        self.a.set_label(&mut back)?;
        self.flags = Some((LazyOp::Sub, size));
        // (The accumulator was written on one path only, and the generic path may write
        // any register.)
        self.cached = None;
        Ok(())
    }

    /// Emit instruction `i` (at `ip`, `op`).
    fn op(&mut self, i: usize, ip: u64, op: &Op) -> Result<(), Error> {
        self.cur = (i, ip);
        let r = match op.fast {
            Fast::Nop => Ok(()),
            Fast::Mov { size, dst, src } => {
                let fault = self.stub(StubKind::Fault { i, ip });
                // (`src` leaves the value zero-extended from its size.)
                self.src(&src, size, fault)?;
                match dst {
                    Dst::Reg(g) => self.set_from_rax_zx(g, size),
                    Dst::Mem(addr) => {
                        self.a.mov(r8, rax)?;
                        self.ea(&addr)?;
                        self.store_rdx(size, addr.stack, fault)?;
                        self.end_if_code_written(i, op.next_ip)
                    }
                }
            }
            Fast::Extend {
                dsize,
                ssize,
                signed,
                dst,
                src,
            } => {
                let fault = self.stub(StubKind::Fault { i, ip });
                self.src(&src, ssize, fault)?;
                if signed {
                    match ssize {
                        1 => self.a.movsx(rax, al)?,
                        2 => self.a.movsx(rax, ax)?,
                        4 => self.a.movsxd(rax, eax)?,
                        _ => {}
                    }
                }
                self.mask(rax, eax, dsize)?;
                self.set_from_rax_zx(dst, dsize)
            }
            Fast::Lea { size, dst, addr } => {
                self.ea(&addr)?;
                self.a.mov(rax, rdx)?;
                self.mask(rax, eax, size)?;
                self.set_from_rax_zx(dst, size)
            }
            Fast::Alu {
                op: aop,
                size,
                dst,
                src,
            } => self.alu(i, ip, op, aop, size, dst, &src),
            Fast::Jcc { cc, target } if is_canonical(target) && self.host_cc(cc) => {
                let taken = self.exit_to(i, target);
                self.host_flags()?;
                self.a.jcc(cc, taken)?;
                // (A branch keeps the flags: a second one on them needs none rebuilt.)
                self.flags_live = Some(self.a.mark());
                Ok(())
            }
            Fast::Jcc { cc, target } if is_canonical(target) => {
                let taken = self.exit_to(i, target);
                self.condition_to_eax(cc)?;
                self.a.test(eax, eax)?;
                self.a.jne(taken)
            }
            Fast::Push { src } if src < 16 => {
                let fault = self.stub(StubKind::Fault { i, ip });
                self.get(r8, r8d, src, 8)?;
                self.push_r8(fault)?;
                self.end_if_code_written(i, op.next_ip)
            }
            Fast::Call { target } if is_canonical(target) => {
                let fault = self.stub(StubKind::Fault { i, ip });
                self.prefetch_return(op.next_ip)?;
                self.a.mov(r8, op.next_ip)?;
                self.push_r8(fault)?;
                let taken = self.exit_to(i, target);
                self.a.jmp(taken)
            }
            Fast::Pop { dst } if dst < 16 => {
                let fault = self.stub(StubKind::Fault { i, ip });
                self.load(&RSP_TOP, 8, fault)?;
                self.a.add(qword_ptr(CPU - CPU_BIAS + gpr_off(4)), 8)?;
                self.forget(4);
                self.set64_from(dst, rax)
            }
            Fast::Ret => {
                self.branch_target(i, ip, &Src::Mem(RSP_TOP))?;
                self.a.add(qword_ptr(CPU - CPU_BIAS + gpr_off(4)), 8)?;
                self.forget(4);
                self.leave_to_rax(i)
            }
            // Indirect JMP and CALL: through the jump cache, as RET.
            Fast::JmpInd { ref src } => {
                self.branch_target(i, ip, src)?;
                self.leave_to_rax(i)
            }
            Fast::CallInd { ref src } => {
                self.prefetch_return(op.next_ip)?;
                let fault = self.branch_target(i, ip, src)?;
                // (R14 is kept across the store helper.)
                self.a.mov(r14, rax)?;
                self.a.mov(r8, op.next_ip)?;
                self.push_r8(fault)?;
                self.a.mov(rax, r14)?;
                self.leave_to_rax(i)
            }
            Fast::Jmp { target } if is_canonical(target) => {
                let taken = self.exit_to(i, target);
                self.a.jmp(taken)
            }
            Fast::Shift {
                op: m @ (M::Shl | M::Shr | M::Sar),
                size,
                dst: Dst::Reg(g),
                count: Src::Imm(c),
            } if c & count_mask(size) != 0 => self.shift_imm(m, size, g, c & count_mask(size)),
            Fast::Shift {
                op: m @ (M::Rol | M::Ror),
                size,
                dst: Dst::Reg(g),
                count: Src::Imm(c),
            } if c & count_mask(size) != 0 => self.rotate_imm(m == M::Rol, size, g, c),
            Fast::Cmov { cc, size, dst, src } => self.cmov(i, ip, cc, size, dst, &src),
            Fast::Setcc {
                cc,
                dst: Dst::Reg(g),
            } => {
                if self.host_cc(cc) {
                    self.host_flags()?;
                    self.a.setcc_al(cc)?;
                    self.a.movzx(eax, al)?;
                } else {
                    self.condition_to_eax(cc)?;
                }
                self.set_from_rax(g, 1)
            }
            Fast::Unary {
                op: UnOp::Not,
                size,
                dst: Dst::Reg(g),
            } => {
                self.get(rax, eax, g, size)?;
                self.a.not(rax)?;
                self.set_from_rax(g, size)
            }
            Fast::Unary {
                op: u @ (UnOp::Inc | UnOp::Dec),
                size,
                dst,
            } => self.inc_dec(i, ip, u == UnOp::Inc, size, dst, op.next_ip),
            Fast::Unary {
                op: UnOp::Neg,
                size,
                dst,
            } => self.neg(i, ip, size, dst, op.next_ip),
            Fast::Generic => return self.generic(i),
            _ => self.via_helper(i, ip),
        };
        Ok(r?)
    }

    /// The ALU operations without carry-in: `a` in `r14`, `b` in `rbp`, result in `rcx`.
    #[allow(clippy::too_many_arguments)]
    fn alu(
        &mut self,
        i: usize,
        ip: u64,
        op: &Op,
        aop: AluOp,
        size: u8,
        dst: Dst,
        src: &Src,
    ) -> R<()> {
        let (lazy, write) = match aop {
            AluOp::Add => (LazyOp::Add, true),
            AluOp::Sub => (LazyOp::Sub, true),
            AluOp::Cmp => (LazyOp::Sub, false),
            AluOp::And | AluOp::Or | AluOp::Xor => (LazyOp::Logic, true),
            AluOp::Test => (LazyOp::Logic, false),
            AluOp::Adc | AluOp::Sbb => return self.via_helper(i, ip),
        };
        let fault = self.stub(StubKind::Fault { i, ip });
        // a (and the destination's address, kept in r15).
        match dst {
            Dst::Reg(g) => self.get(r14, r14d, g, size)?,
            Dst::Mem(addr) => {
                self.load(&addr, size, fault)?;
                self.a.mov(r14, rax)?;
                if write {
                    self.ea(&addr)?;
                    self.a.mov(r15, rdx)?;
                }
            }
        }
        match *src {
            Src::Imm(v) => self.a.mov(rbp, v)?,
            Src::Reg(g) => self.get(rbp, ebp, g, size)?,
            Src::Mem(_) => {
                self.src(src, size, fault)?;
                self.a.mov(rbp, rax)?;
            }
        }
        // At the guest's width, so that the host's flags are the guest's (and the result is
        // zero-extended as it is: a 32-bit operation clears the upper half, and a narrower
        // one leaves the zeroes of r14's zero-extension).
        self.a.mov(rcx, r14)?;
        macro_rules! at_size {
            ($f:ident) => {
                match size {
                    1 => self.a.$f(cl, bpl)?,
                    2 => self.a.$f(cx, bp)?,
                    4 => self.a.$f(ecx, ebp)?,
                    _ => self.a.$f(rcx, rbp)?,
                }
            };
        }
        match aop {
            AluOp::Add => at_size!(add),
            AluOp::Sub | AluOp::Cmp => at_size!(sub),
            AluOp::And | AluOp::Test => at_size!(and),
            AluOp::Or => at_size!(or),
            _ => at_size!(xor),
        }
        let mut stored = false;
        if write {
            match dst {
                // (A 32- or 64-bit result, zero-extended, goes from rcx as it is.)
                Dst::Reg(g) if size >= 4 && g < 16 => self.set64_from(g, rcx)?,
                Dst::Reg(g) => {
                    self.a.mov(rax, rcx)?;
                    self.set_from_rax_zx(g, size)?;
                }
                Dst::Mem(addr) => {
                    self.a.mov(qword_ptr(ENV + offset_of!(Env<'_>, tmp)), rcx)?;
                    self.a.mov(r8, rcx)?;
                    self.a.mov(rdx, r15)?;
                    self.store_rdx(size, addr.stack, fault)?;
                    self.a.mov(rcx, qword_ptr(ENV + offset_of!(Env<'_>, tmp)))?;
                    stored = true;
                }
            }
        }
        if matches!(dst, Dst::Reg(_)) && self.record_dead {
            // (The next instruction writes the whole record before anything can read it.)
            self.flags = None;
            return Ok(());
        }
        self.record(lazy, size)?;
        self.flags = Some((lazy, size));
        if stored {
            self.end_if_code_written(i, op.next_ip)?;
        } else {
            // (Only moves since the operation: its flags are still the host's.)
            self.flags_live = Some(self.a.mark());
        }
        Ok(())
    }

    /// SHL, SHR or SAR of general register `g` at `size` by `c` (already masked, not 0), with
    /// the interpreter's flags (`exec::shift::shift_result`): CF the last bit shifted out (0
    /// when a left shift moves every bit out), OF the sign of the result XOR CF (SHL), the
    /// sign of the operand (SHR) or 0 (SAR), AF 0, PF ZF SF from the result. They are written
    /// materialized, all six at once, as `Flags::set_arith` does.
    fn shift_imm(&mut self, m: M, size: u8, g: u8, c: u64) -> R<()> {
        let bits = u32::from(size) * 8;
        let c = c as u32;
        // a (zero-extended) in r14 (sign-extended in r8 for SAR); the result in rcx; CF in
        // edx; OF (at bit 11) in r8d.
        self.get(r14, r14d, g, size)?;
        match m {
            M::Shl => {
                self.a.mov(rcx, r14)?;
                self.a.shl(rcx, c)?;
            }
            M::Shr => {
                self.a.mov(rcx, r14)?;
                self.a.shr(rcx, c)?;
            }
            _ => {
                self.a.mov(r8, r14)?;
                match size {
                    1 => self.a.movsx(r8, r8b)?,
                    2 => self.a.movsx(r8, r8w)?,
                    4 => self.a.movsxd(r8, r8d)?,
                    _ => {}
                }
                self.a.mov(rcx, r8)?;
                self.a.sar(rcx, c.min(63))?;
            }
        }
        if self.record_dead {
            // The next instruction writes every flag before anything can read one: the
            // result alone.
            self.mask(rcx, ecx, size)?;
            self.flags = None;
            self.a.mov(rax, rcx)?;
            return self.set_from_rax_zx(g, size);
        }
        match m {
            M::Shl if c <= bits => {
                self.a.mov(rdx, r14)?;
                self.a.shr(rdx, bits - c)?;
                self.a.and(edx, 1)?;
            }
            M::Shl => self.a.xor(edx, edx)?,
            M::Shr => {
                self.a.mov(rdx, r14)?;
                self.a.shr(rdx, c - 1)?;
                self.a.and(edx, 1)?;
            }
            _ => {
                self.a.mov(rdx, r8)?;
                self.a.sar(rdx, (c - 1).min(63))?;
                self.a.and(edx, 1)?;
            }
        }
        self.mask(rcx, ecx, size)?;
        match m {
            M::Shl => {
                self.a.mov(r8, rcx)?;
                self.a.shr(r8, bits - 1)?;
                self.a.xor(r8d, edx)?;
            }
            M::Shr => {
                self.a.mov(r8, r14)?;
                self.a.shr(r8, bits - 1)?;
            }
            _ => self.a.xor(r8d, r8d)?,
        }
        self.a.and(r8d, 1)?;
        self.a.shl(r8d, 11)?;
        // PF, ZF and SF of the result at its size, from the host's TEST.
        match size {
            1 => self.a.test(cl, cl)?,
            2 => self.a.test(cx, cx)?,
            4 => self.a.test(ecx, ecx)?,
            _ => self.a.test(rcx, rcx)?,
        }
        self.a.pushfq()?;
        self.a.pop(rax)?;
        self.a
            .and(eax, (flags::PF | flags::ZF | flags::SF) as u32)?;
        self.a.or(eax, edx)?;
        self.a.or(eax, r8d)?;
        let f = offset_of!(Cpu, flags);
        self.a
            .mov(rdx, qword_ptr(CPU - CPU_BIAS + f + Flags::OFF_OTHER))?;
        self.a.and(rdx, !(flags::ARITH as i32))?;
        self.a.or(rdx, rax)?;
        self.a
            .mov(qword_ptr(CPU - CPU_BIAS + f + Flags::OFF_OTHER), rdx)?;
        self.a.mov(
            byte_ptr(CPU - CPU_BIAS + f + Flags::OFF_OP),
            LazyOp::Materialized as u32,
        )?;
        // (Materialized: the next Jcc asks `cond_helper`.)
        self.flags = None;
        self.a.mov(rax, rcx)?;
        self.set_from_rax(g, size)
    }

    /// ROL (`left`) or ROR of register `g` (`size` bytes) by immediate `c` (non-zero once
    /// masked): the result inline, CF and OF computed with the interpreter's rules and set by
    /// `cf_of_helper`, which keeps the other flags as the interpreter does.
    fn rotate_imm(&mut self, left: bool, size: u8, g: u8, c: u64) -> R<()> {
        let bits = u32::from(size) * 8;
        let r = ((c & count_mask(size)) % u64::from(bits)) as u32;
        self.get(rcx, ecx, g, size)?;
        if r != 0 {
            self.a.mov(rdx, rcx)?;
            if left {
                self.a.shl(rcx, r)?;
                self.a.shr(rdx, bits - r)?;
            } else {
                self.a.shr(rcx, r)?;
                self.a.shl(rdx, bits - r)?;
            }
            // (Bits above `size` are left over; nothing below reads them, and the register
            // takes only its `size` bytes.)
            self.a.or(rcx, rdx)?;
        }
        if self.record_dead {
            // The next instruction writes every flag before anything can read one: no CF and
            // OF to set.
            self.flags = None;
            self.a.mov(rax, rcx)?;
            return self.set_from_rax(g, size);
        }
        // CF in edx; OF (CF xor the bit below it: bit 0 and the top bit for ROL, the top two
        // bits for ROR) in r8d, then at bit 11.
        self.a.mov(rdx, rcx)?;
        self.a.mov(r8, rcx)?;
        if left {
            self.a.shr(r8, bits - 1)?;
        } else {
            self.a.shr(rdx, bits - 1)?;
            self.a.shr(r8, bits - 2)?;
        }
        self.a.and(edx, 1)?;
        self.a.xor(r8d, edx)?;
        self.a.and(r8d, 1)?;
        self.a.shl(r8d, 11)?;
        self.a.or(edx, r8d)?;
        // (R14 is kept across the helper call.)
        self.a.mov(r14, rcx)?;
        self.a.lea(rdi, qword_ptr(CPU - CPU_BIAS))?;
        self.a.mov(esi, edx)?;
        self.call_helper(cf_of_helper as *const () as usize)?;
        // (The other flags are what they were, lazy or not: the next Jcc asks `cond_helper`.)
        self.flags = None;
        self.a.mov(rax, r14)?;
        self.set_from_rax(g, size)
    }

    /// CMOVcc: the source is read (and may fault) whatever the condition; the destination is
    /// written either way (a 32-bit one is zero-extended even when the condition fails).
    #[allow(clippy::too_many_arguments)]
    fn cmov(&mut self, i: usize, ip: u64, cc: u8, size: u8, dst: u8, src: &Src) -> R<()> {
        let fault = self.stub(StubKind::Fault { i, ip });
        self.src(src, size, fault)?;
        self.a.mov(rbp, rax)?;
        if self.host_cc(cc) {
            let mut keep = self.a.create_label();
            self.host_flags()?;
            self.get(rax, eax, dst, size)?;
            self.a.jcc(cc ^ 1, keep)?;
            self.a.mov(rax, rbp)?;
            self.a.set_label(&mut keep)?;
        } else {
            self.condition_to_eax(cc)?;
            self.a.mov(r14d, eax)?;
            self.get(rax, eax, dst, size)?;
            self.a.test(r14d, r14d)?;
            self.a.cmovne(rax, rbp)?;
        }
        self.set_from_rax(dst, size)
    }

    /// Whether a condition `cc` after this point can be taken from the host's flags
    /// ([`Tr::host_flags`]): an inline operation wrote the record, and the condition does not
    /// read the CF that INC and DEC keep from before them.
    fn host_cc(&self, cc: u8) -> bool {
        match self.flags {
            Some((LazyOp::Inc | LazyOp::Dec, _)) => !matches!(cc & 15, 2 | 3 | 6 | 7),
            Some(_) => true,
            None => false,
        }
    }

    /// `a` (in `r14`) and, for a memory destination, its address (in `r15`), of a one-operand
    /// instruction on `dst`.
    fn unary_operand(&mut self, dst: &Dst, size: u8, fault: Label) -> R<()> {
        match dst {
            Dst::Reg(g) => self.get(r14, r14d, *g, size),
            Dst::Mem(addr) => {
                self.load(addr, size, fault)?;
                self.a.mov(r14, rax)?;
                self.ea(addr)?;
                self.a.mov(r15, rdx)
            }
        }
    }

    /// Write the result in `rcx` to `dst` (the address in `r15` for memory), and leave it in
    /// `r15`; for memory, the store's status is left in `rbp`.
    fn unary_result(&mut self, dst: &Dst, size: u8, fault: Label) -> R<()> {
        match dst {
            Dst::Reg(g) => {
                self.a.mov(rax, rcx)?;
                self.set_from_rax(*g, size)?;
                self.a.mov(r15, rcx)
            }
            Dst::Mem(addr) => {
                self.a.mov(qword_ptr(ENV + offset_of!(Env<'_>, tmp)), rcx)?;
                self.a.mov(r8, rcx)?;
                self.a.mov(rdx, r15)?;
                self.store_rdx(size, addr.stack, fault)?;
                self.a.mov(ebp, eax)?;
                self.a.mov(r15, qword_ptr(ENV + offset_of!(Env<'_>, tmp)))
            }
        }
    }

    /// INC (`inc`) or DEC of `dst` at `size`, with the interpreter's record: the operand, 1,
    /// the result, and the CF of the flags before it, which they keep.
    #[allow(clippy::too_many_arguments)]
    fn inc_dec(&mut self, i: usize, ip: u64, inc: bool, size: u8, dst: Dst, next: u64) -> R<()> {
        let fault = self.stub(StubKind::Fault { i, ip });
        self.unary_operand(&dst, size, fault)?;
        self.a.mov(rcx, r14)?;
        if inc {
            self.a.add(rcx, 1)?;
        } else {
            self.a.sub(rcx, 1)?;
        }
        self.mask(rcx, ecx, size)?;
        self.unary_result(&dst, size, fault)?;
        // eax = CF before this instruction (the record still holds the one before).
        let f = offset_of!(Cpu, flags);
        match self.flags {
            Some((LazyOp::Inc | LazyOp::Dec, _)) => {
                self.a
                    .movzx(eax, byte_ptr(CPU - CPU_BIAS + f + Flags::OFF_CARRY))?;
            }
            Some(_) => {
                self.host_flags()?;
                self.a.mov(eax, 0)?;
                self.a.adc(eax, 0)?;
            }
            None => self.condition_to_eax(2)?,
        }
        let op = if inc { LazyOp::Inc } else { LazyOp::Dec };
        self.record_of(op, size, 1.into(), r15, true)?;
        self.flags = Some((op, size));
        if let Dst::Mem(_) = dst {
            self.a.mov(eax, ebp)?;
            self.end_if_code_written(i, next)?;
        }
        Ok(())
    }

    /// NEG of `dst` at `size`: the interpreter's record of `0 - a`.
    fn neg(&mut self, i: usize, ip: u64, size: u8, dst: Dst, next: u64) -> R<()> {
        let fault = self.stub(StubKind::Fault { i, ip });
        self.unary_operand(&dst, size, fault)?;
        self.a.xor(ecx, ecx)?;
        self.a.sub(rcx, r14)?;
        self.mask(rcx, ecx, size)?;
        self.unary_result(&dst, size, fault)?;
        let status = matches!(dst, Dst::Mem(_));
        if status {
            // (The store's status moves out of rbp, which the record takes.)
            self.a.mov(qword_ptr(ENV + offset_of!(Env<'_>, tmp)), rbp)?;
        }
        // The record: a = 0, b = the operand, res.
        self.a.mov(rbp, r14)?;
        self.a.xor(r14d, r14d)?;
        self.a.mov(rcx, r15)?;
        self.record(LazyOp::Sub, size)?;
        self.flags = Some((LazyOp::Sub, size));
        if status {
            self.a.mov(rax, qword_ptr(ENV + offset_of!(Env<'_>, tmp)))?;
            self.end_if_code_written(i, next)?;
        }
        Ok(())
    }

    /// Set the host's arithmetic flags to the guest's, from the lazy record written by the
    /// inline operation in `self.flags`: the same operation on the same operands at the same
    /// width sets CF, PF, ZF, SF and OF exactly as it did for the guest.
    fn host_flags(&mut self) -> R<()> {
        let Some((op, size)) = self.flags else {
            return Ok(());
        };
        if self.flags_live == Some(self.a.mark()) {
            return Ok(());
        }
        let f = offset_of!(Cpu, flags);
        let (a, b, res) = (
            CPU - CPU_BIAS + f + Flags::OFF_A,
            CPU - CPU_BIAS + f + Flags::OFF_B,
            CPU - CPU_BIAS + f + Flags::OFF_RES,
        );
        match op {
            LazyOp::Logic => {
                self.a.mov(rax, qword_ptr(res))?;
                match size {
                    1 => self.a.test(al, al),
                    2 => self.a.test(ax, ax),
                    4 => self.a.test(eax, eax),
                    _ => self.a.test(rax, rax),
                }
            }
            LazyOp::Add => {
                self.a.mov(rax, qword_ptr(a))?;
                match size {
                    1 => self.a.add(al, byte_ptr(b)),
                    2 => self.a.add(ax, word_ptr(b)),
                    4 => self.a.add(eax, dword_ptr(b)),
                    _ => self.a.add(rax, qword_ptr(b)),
                }
            }
            // (All but CF, which `host_cc` keeps conditions on from asking for.)
            LazyOp::Inc | LazyOp::Dec => {
                self.a.mov(rax, qword_ptr(a))?;
                let inc = op == LazyOp::Inc;
                match (size, inc) {
                    (1, true) => self.a.add(al, 1),
                    (1, false) => self.a.sub(al, 1),
                    (2, true) => self.a.add(ax, 1),
                    (2, false) => self.a.sub(ax, 1),
                    (4, true) => self.a.add(eax, 1),
                    (4, false) => self.a.sub(eax, 1),
                    (_, true) => self.a.add(rax, 1),
                    _ => self.a.sub(rax, 1),
                }
            }
            _ => {
                self.a.mov(rax, qword_ptr(a))?;
                match size {
                    1 => self.a.cmp(al, byte_ptr(b)),
                    2 => self.a.cmp(ax, word_ptr(b)),
                    4 => self.a.cmp(eax, dword_ptr(b)),
                    _ => self.a.cmp(rax, qword_ptr(b)),
                }
            }
        }
    }

    /// Return `v` (instructions retired here in its low half, see [`FAULT`]) to the run loop,
    /// giving the rest back to the budget.
    /// To `gp` unless the address in `rax` is canonical (bits 63..47 all equal). Clobbers
    /// `rcx`.
    fn canonical_rax(&mut self, gp: Label) -> R<()> {
        self.a.mov(rcx, rax)?;
        self.a.shl(rcx, 16)?;
        self.a.sar(rcx, 16)?;
        self.a.cmp(rcx, rax)?;
        self.a.jne(gp)
    }

    fn ret_value(&mut self, v: u64) -> R<()> {
        self.give_back(v as u32 as usize)?;
        self.a.mov(rax, v)?;
        let e = self.epilogue;
        self.a.jmp(e)
    }

    /// Leave the translation with RIP `rip` and return value `v`.
    fn exit_at(&mut self, rip: u64, v: u64) -> R<()> {
        self.a.mov(rax, rip)?;
        self.a
            .mov(qword_ptr(CPU - CPU_BIAS + offset_of!(Cpu, rip)), rax)?;
        self.ret_value(v)
    }
}

/// The shared exits ([`Shared`]) for the jump cache at `jumps`, placed in `arena`'s hot part;
/// `None` if they do not fit.
fn place_shared(arena: &mut Arena, jumps: usize) -> R<Option<Shared>> {
    let mut a = Asm::new();
    let mut entry = a.create_label();
    let mut epilogue = a.create_label();
    let mut jump = a.create_label();
    a.set_label(&mut entry)?;
    for r in [rbx, r12, r13, r14, r15, rbp] {
        a.push(r)?;
    }
    // Six pushes and the return address: 16-byte alignment for the helper calls.
    a.sub(rsp, 8)?;
    a.lea(CPU, qword_ptr(rdi + CPU_BIAS))?;
    a.mov(ENV, rsi)?;
    a.jmp_reg(rdx)?;
    a.set_label(&mut epilogue)?;
    a.add(rsp, 8)?;
    for r in [rbp, r15, r14, r13, r12, rbx] {
        a.pop(r)?;
    }
    a.ret()?;
    // Called with a guest address in rax (RIP holds it too) and rcx instructions retired
    // here: returns with the entry of the translation in its jump cache cell in rdx if that
    // names the address under the call's stamp (the caller jumps there; the entry checks the
    // budget), else leaves for the run loop.
    a.set_label(&mut jump)?;
    let mut plain = a.create_label();
    a.mov(rdx, rax)?;
    a.mov(rsi, JUMP_HASH)?;
    a.imul_2(rdx, rsi)?;
    a.shr(rdx, 64 - JUMP_BITS)?;
    a.shl(rdx, size_of::<JumpCell>().trailing_zeros())?;
    a.mov(rsi, jumps as u64)?;
    a.add(rdx, rsi)?;
    a.cmp(rax, qword_ptr(rdx + offset_of!(JumpCell, target)))?;
    a.jne(plain)?;
    // (The call's stamp fits 32 bits: it is a handed-out stamp or 0.)
    a.mov(esi, dword_ptr(ENV + offset_of!(Env<'_>, stamp)))?;
    a.cmp(esi, dword_ptr(rdx + offset_of!(JumpCell, stamp)))?;
    a.jne(plain)?;
    a.mov(edx, dword_ptr(rdx + offset_of!(JumpCell, entry)))?;
    a.mov(rsi, arena.exec_base() as u64)?;
    a.add(rdx, rsi)?;
    a.inc(qword_ptr(ENV + offset_of!(Env<'_>, jumped)))?;
    a.ret()?;
    a.set_label(&mut plain)?;
    a.add(rsp, 8)?;
    a.mov(eax, ecx)?;
    a.jmp(epilogue)?;
    let offsets = [entry, epilogue, jump].map(|l| a.label_offset(l));
    let Some(at) = arena.next(a.len(false), false) else {
        return Ok(None);
    };
    let [hot, _] = a.link(at, 0)?;
    if arena.put(&hot) != Some(at) {
        return Ok(None);
    }
    let [Some(n), Some(e), Some(j)] = offsets else {
        return Err(AsmError::Unbound);
    };
    Ok(Some(Shared {
        entry: at + n,
        epilogue: at + e,
        jump: at + j,
        jumps,
    }))
}

/// Whether `op`, emitted inline by [`Tr::alu`], writes the whole lazy flags record (operation,
/// size, operands and result) without reading the one before, and can neither fault nor leave
/// the translation first: an ALU operation other than ADC/SBB between registers or with an
/// immediate.
fn overwrites_flags(op: &Op) -> bool {
    matches!(
        op.fast,
        Fast::Alu {
            op: AluOp::Add
                | AluOp::Sub
                | AluOp::Cmp
                | AluOp::And
                | AluOp::Or
                | AluOp::Xor
                | AluOp::Test,
            dst: Dst::Reg(_),
            src: Src::Reg(_) | Src::Imm(_),
            ..
        }
    )
}

/// Whether the flags op `i` of `ops` writes are never read: past moves that neither touch
/// the flags nor can fault or leave (MOV, MOVZX/MOVSX between registers or of an immediate,
/// LEA), the next operation overwrites them all first ([`overwrites_flags`]).
fn flags_dead_after(ops: &[Op], i: usize) -> bool {
    for op in ops.iter().skip(i + 1) {
        if overwrites_flags(op) {
            return true;
        }
        let neutral = matches!(
            op.fast,
            Fast::Mov {
                dst: Dst::Reg(_),
                src: Src::Reg(_) | Src::Imm(_),
                ..
            } | Fast::Extend {
                src: Src::Reg(_) | Src::Imm(_),
                ..
            } | Fast::Lea { .. }
        );
        if !neutral {
            return false;
        }
    }
    false
}

/// The memory operand, source register and size of a CMPXCHG the translator emits inline
/// ([`Tr::cmpxchg`]): memory with a 32- or 64-bit general register, 64-bit addressing.
fn inline_cmpxchg(g: &Generic) -> Option<(Addr, u8, u8)> {
    use iced_x86::OpKind;
    let i = &g.instr;
    if g.mnemonic != M::Cmpxchg || i.op_count() != 2 || i.op1_kind() != OpKind::Register {
        return None;
    }
    let r = i.op1_register();
    let size = if r.is_gpr64() {
        8
    } else if r.is_gpr32() {
        4
    } else {
        return None;
    };
    let src = crate::fast::gpr(r).filter(|&g| g < 16)?;
    let addr = crate::fast::addr(i, 0, true)?;
    Some((addr, src, size))
}

/// The low byte register of `r` (one of the scratch registers used here).
fn low8(r: Reg64) -> Reg8 {
    if r == rcx {
        cl
    } else {
        al
    }
}

/// The low word register of `r`.
fn low16(r: Reg64) -> Reg16 {
    if r == rcx {
        cx
    } else {
        ax
    }
}

/// Host code for the block at `place.ip` (`ops`, whose generic instructions are the first
/// of `generics`), and its length in instructions; `None` for an empty block.
fn translate(
    place: &Place,
    ops: &[Op],
    generics: &[Generic],
    shared: &Shared,
) -> Result<Option<Translation>, Error> {
    let len = ops.len();
    if len == 0 || len > u16::MAX as usize {
        return Ok(None);
    }
    let ip = place.ip;
    let mut a = Asm::new();
    let epilogue = a.label_at(shared.epilogue);
    let jump_exit = a.label_at(shared.jump);
    let mut t = Tr {
        a,
        stubs: Vec::new(),
        cached: None,
        epilogue,
        flags: None,
        record_dead: false,
        flags_live: None,
        cur: (0, ip),
        place,
        len,
        exits: Vec::new(),
        jump_exit,
        jumps: shared.jumps,
        generic_base: pair_offset::<Op>(len),
        generic_used: 0,
        generics,
    };
    // Every translation starts here, in the frame the shared prologue ([`Shared::entry`]) made
    // for the first one of a call (and nothing cached): it takes its instructions from the
    // budget, or leaves at once with none retired if they are not all there (or if this CPU
    // wrote code, which no exit goes on after), and names its page as the running block's.
    let out = t.stub(StubKind::Unentered);
    t.a.sub(qword_ptr(ENV + offset_of!(Env<'_>, left)), len as u32)?;
    t.a.jcc(2, out)?;
    t.a.cmp(byte_ptr(CPU - CPU_BIAS + offset_of!(Cpu, code_written)), 0)?;
    t.a.jne(out)?;
    let [page, page2] = place.code_pages;
    let page = i32::try_from(page).map_err(|_| AsmError::TooLarge)?;
    t.a.mov(qword_ptr(CPU - CPU_BIAS + offset_of!(Cpu, code_page)), page)?;
    if page2 != u64::MAX {
        let page2 = i32::try_from(page2).map_err(|_| AsmError::TooLarge)?;
        t.a.mov(
            qword_ptr(CPU - CPU_BIAS + offset_of!(Cpu, code_page2)),
            page2,
        )?;
    }
    let mut at = ip;
    for (i, op) in ops[..len].iter().enumerate() {
        t.record_dead = flags_dead_after(&ops[..len], i);
        t.op(i, at, op)?;
        at = op.next_ip;
    }
    // Whether control can get past the last instruction (not after an inline JMP, CALL or
    // RET, which always leave through their own exits).
    let falls_through = !ops.get(len - 1).is_some_and(|o| match o.fast {
        Fast::Ret | Fast::JmpInd { .. } | Fast::CallInd { .. } => true,
        Fast::Jmp { target } | Fast::Call { target } => is_canonical(target),
        _ => false,
    });
    if falls_through {
        // Its end is an exit to the next block.
        let end = t.exit_to(len - 1, at);
        t.a.jmp(end)?;
    }
    for mut s in std::mem::take(&mut t.stubs) {
        // Exits into other translations run at every block transition: hot. The others are
        // for faults, helper calls and returns to the run loop: cold.
        t.a.cold(!matches!(
            s.kind,
            StubKind::Chain { .. } | StubKind::EndRax { .. }
        ));
        t.a.set_label(&mut s.label)?;
        let rip_off = offset_of!(Cpu, rip);
        match s.kind {
            StubKind::Fault { i, ip } => t.exit_at(ip, FAULT | i as u64)?,
            StubKind::EndNext { i } => {
                // (A store into the running block's page, or a generic instruction that
                // changed what the translation runs under: back to the run loop.)
                t.a.mov(rax, qword_ptr(CPU - CPU_BIAS + offset_of!(Cpu, next_rip)))?;
                t.a.mov(qword_ptr(CPU - CPU_BIAS + rip_off), rax)?;
                t.ret_value(i as u64 + 1)?;
            }
            StubKind::EndAt { i, rip } => t.exit_at(rip, i as u64 + 1)?,
            StubKind::Unentered => t.exit_at(ip, 0)?,
            StubKind::Chain { i, link, rip } => t.chain(i, link, rip)?,
            StubKind::EndRax { i } => {
                t.a.mov(qword_ptr(CPU - CPU_BIAS + rip_off), rax)?;
                t.jump(i)?;
            }
            StubKind::Restart { i, ip } => t.exit_at(ip, i as u64)?,
            StubKind::Left { i } => t.ret_value(FAULT | i as u64)?,
            StubKind::LoadSlow {
                size,
                stack,
                fault,
                restart,
                back,
            } => {
                t.access_helper(load_helper as *const () as usize, size, stack)?;
                t.on_status(fault, Some(restart))?;
                t.a.mov(rax, qword_ptr(ENV + offset_of!(Env<'_>, val)))?;
                t.a.jmp(back)?;
            }
            StubKind::GenericSlow {
                i,
                at,
                left,
                end,
                back,
            } => {
                t.helper_call(i, generic_helper as *const () as usize, at)?;
                t.on_status(left, Some(end))?;
                t.a.jmp(back)?;
            }
            StubKind::StoreSlow {
                size,
                stack,
                fault,
                back,
            } => {
                t.access_helper(store_helper as *const () as usize, size, stack)?;
                t.on_status(fault, None)?;
                t.a.jmp(back)?;
            }
            StubKind::FaultGp { i, ip } => {
                t.a.mov(rdi, ENV)?;
                t.call_helper(gp_helper as *const () as usize)?;
                t.exit_at(ip, FAULT | i as u64)?;
            }
        }
    }
    let exits = std::mem::take(&mut t.exits)
        .into_iter()
        .map(|(labels, rip)| labels.map(|(s, r)| (s, r, rip)))
        .collect::<Option<_>>()
        .ok_or(AsmError::Unbound)?;
    Ok(Some(Translation {
        code: std::mem::take(&mut t.a),
        len: len as u16,
        exits,
    }))
}

#[cfg(test)]
mod tests {
    use crate::testutil::*;

    /// `a.op(RAX's low size bytes, the operand given for that size)`.
    macro_rules! on_rax {
        ($a:expr, $size:expr, $op:ident, $b1:expr, $b2:expr, $b4:expr, $b8:expr) => {
            match $size {
                1 => $a.$op(al, $b1),
                2 => $a.$op(ax, $b2),
                4 => $a.$op(eax, $b4),
                _ => $a.$op(rax, $b8),
            }
        };
    }
    use crate::{CodePool, Cpu};
    use iced_x86::code_asm::*;

    /// A loop that reads `VA + off` (in a 2 MiB page), remaps that page to other RAM, INVLPGs
    /// `VA`, reads again and maps it back, three times: returns the sums of the reads before
    /// and after the remapping (expected `3 * 0x1111`, `3 * 0x2222`) and the blocks
    /// translated, run translated from the second run of each block or (`jit` false)
    /// interpreted.
    fn remap_loop(off: u64, jit: bool) -> (u64, u64, u64) {
        const VA: u64 = 0x60_a000;
        const PDE3: u64 = 0x3000 + 3 * 8;
        let code = assemble(|a| {
            a.mov(ecx, 3)?;
            a.mov(rsi, 0x20_0000u64 | 0x87)?;
            a.mov(rdi, 0x87u64)?;
            a.mov(qword_ptr(PDE3), rsi)?;
            let mut top = a.create_label();
            a.set_label(&mut top)?;
            a.mov(rax, qword_ptr(VA + off))?;
            a.mov(qword_ptr(PDE3), rdi)?;
            a.invlpg(byte_ptr(VA))?;
            a.mov(rbx, qword_ptr(VA + off))?;
            a.mov(qword_ptr(PDE3), rsi)?;
            a.invlpg(byte_ptr(VA))?;
            a.add(r8, rax)?;
            a.add(r9, rbx)?;
            a.dec(ecx)?;
            a.jne(top)
        });
        let mut m = Machine::new();
        if !jit {
            m.cpu.jit = None;
        }
        m.mem.write_u64(0x20_a000 + off, 0x1111).unwrap();
        m.mem.write_u64(0x00_a000 + off, 0x2222).unwrap();
        m.load_code(&code);
        let out = m.run(10_000);
        (out.cpu.gpr[8], out.cpu.gpr[9], out.cpu.jit_blocks())
    }

    /// A test machine that translates every block at its first run (`jit`) or interprets.
    fn machine_translating_at_once(jit: bool) -> Machine {
        let mut m = Machine::new();
        if jit {
            let pool = CodePool::new(1).expect("code memory");
            assert!(m.cpu.enable_jit(&pool, 1));
        } else {
            m.cpu.jit = None;
        }
        m
    }

    /// A loop through a call, a return point and a function (three blocks, two of them left by
    /// chainable exits), and a store into the function's code every `patch_every` rounds
    /// (`add eax, ecx` becomes `sub eax, ecx` and back). Runs it with `budget` in slices of
    /// `slice` instructions, translated at the first run of a block (or interpreted), and
    /// returns the CPU and how many exits were linked.
    fn chain_loop(jit: bool, budget: u64, slice: u64, patch_every: u32) -> (Cpu, u64, u64) {
        let func = CODE + 0x1000;
        let code = assemble(|a| {
            a.mov(ecx, 200)?;
            a.mov(edx, patch_every)?;
            let mut top = a.create_label();
            a.set_label(&mut top)?;
            a.call(func)?;
            a.dec(edx)?;
            let mut no_patch = a.create_label();
            a.jne(no_patch)?;
            // Flip the ADD/SUB opcode byte of the function (0x01 <-> 0x29).
            a.xor(byte_ptr(func), 0x28)?;
            a.mov(edx, patch_every)?;
            a.set_label(&mut no_patch)?;
            a.dec(ecx)?;
            a.jne(top)
        });
        let mut m = machine_translating_at_once(jit);
        m.load_code(&code);
        // add eax, ecx; ret
        m.mem.load(func, &[0x01, 0xc8, 0xc3]).unwrap();
        let mut left = budget;
        while left > 0 && !m.cpu.halted {
            let n = left.min(slice);
            m.cpu.run(&mut m.mem, n);
            left -= n;
        }
        let linked = m.cpu.jit.as_ref().map_or(0, |j| j.linked);
        let jumped = m.cpu.jit.as_ref().map_or(0, |j| j.jumped);
        (m.cpu, linked, jumped)
    }

    /// Chained translations (and returns through the jump cache) give the interpreter's
    /// result, stop exactly where the budget runs out (the same registers, RIP and TSC at
    /// every cut), and see a store into a chained function at once.
    #[test]
    fn chained_translations_match_the_interpreter_at_every_budget() {
        let (done, linked, jumped) = chain_loop(true, 100_000, 20_000, 7);
        let (want, _, _) = chain_loop(false, 100_000, 20_000, 7);
        assert!(done.halted && want.halted);
        assert!(linked > 0, "no exit was chained");
        assert!(jumped > 0, "no return went through the jump cache");
        assert_eq!(
            (done.gpr, done.rip, done.tsc),
            (want.gpr, want.rip, want.tsc)
        );
        for budget in (1..160).chain([233, 399, 997, 1500, 2049]) {
            for slice in [budget, 13, 64] {
                let (got, _, _) = chain_loop(true, budget, slice, 3);
                let (want, _, _) = chain_loop(false, budget, slice, 3);
                assert_eq!(
                    (got.gpr, got.rip, got.tsc),
                    (want.gpr, want.rip, want.tsc),
                    "budget {budget}, slices of {slice}"
                );
            }
        }
    }

    /// A loop of inline forms and generic instructions (RDTSC, BSWAP, PUSHFQ, CMPXCHG, MUL,
    /// BTS, CLI/STI, OUT, XADD), run in slices of `slice` for `budget` instructions,
    /// translated at the first run of each block (or interpreted). Returns the CPU, the exits
    /// of the slices and the generic instructions run translated.
    fn generic_loop(jit: bool, budget: u64, slice: u64) -> (Cpu, Vec<crate::Exit>, u64) {
        let code = assemble(|a| {
            a.mov(ecx, 300)?;
            let mut top = a.create_label();
            a.set_label(&mut top)?;
            a.rdtsc()?;
            a.add(r8, rax)?;
            a.bswap(r8)?;
            a.pushfq()?;
            a.add(r9, r8)?;
            a.pop(r10)?;
            a.mov(rax, r9)?;
            a.cmpxchg(r11, r9)?;
            a.mul(rcx)?;
            a.xor(r12, rax)?;
            a.bts(r13, rcx)?;
            a.cli()?;
            a.sti()?;
            a.add(r12, 5)?;
            a.out(0x80, al)?;
            a.xadd(r14, r12)?;
            a.dec(ecx)?;
            a.jne(top)
        });
        let mut m = machine_translating_at_once(jit);
        m.load_code(&code);
        let mut exits = Vec::new();
        let mut left = budget;
        while left > 0 && !m.cpu.halted {
            let n = left.min(slice);
            exits.push(m.cpu.run(&mut m.mem, n));
            left -= n;
        }
        let generic = m.cpu.jit.as_ref().map_or(0, |j| j.generic);
        (m.cpu, exits, generic)
    }

    /// Generic instructions run inside translations give the interpreter's result: the same
    /// registers (the TSC RDTSC reads included), RIP, TSC, interrupt shadow (STI's, which
    /// translated code goes on past) and exits (an OUT leaves once, past itself) at every
    /// budget cut.
    #[test]
    fn generic_instructions_in_translations_match_the_interpreter_at_every_budget() {
        // (Each OUT ends its slice.)
        let (done, exits, generic) = generic_loop(true, 400 * 10_000, 10_000);
        let (want, want_exits, _) = generic_loop(false, 400 * 10_000, 10_000);
        assert!(done.halted && want.halted);
        assert!(
            generic > 1000,
            "generic instructions ran translated: {generic}"
        );
        assert_eq!(exits, want_exits);
        assert_eq!(
            (done.gpr, done.rip, done.tsc, done.interrupt_shadow),
            (want.gpr, want.rip, want.tsc, want.interrupt_shadow)
        );
        for budget in (1..64).chain([97, 233, 399, 997]) {
            for slice in [budget, 7] {
                let (got, exits, _) = generic_loop(true, budget, slice);
                let (want, want_exits, _) = generic_loop(false, budget, slice);
                assert_eq!(exits, want_exits, "budget {budget}, slices of {slice}");
                assert_eq!(
                    (got.gpr, got.rip, got.tsc, got.interrupt_shadow),
                    (want.gpr, want.rip, want.tsc, want.interrupt_shadow),
                    "budget {budget}, slices of {slice}"
                );
            }
        }
    }

    /// A translation goes on past an STI that opens the interrupt window; the shadow it set
    /// is gone once another instruction retired, as in the interpreter, at every budget cut.
    #[test]
    fn an_interrupt_shadow_in_a_translation_lasts_one_instruction() {
        // cli; sti; inc eax; jmp next; (next:) hlt -- four instructions in one translation,
        // whose call ends after the JMP.
        let code = assemble(|a| {
            let mut next = a.create_label();
            a.cli()?;
            a.sti()?;
            a.inc(eax)?;
            a.jmp(next)?;
            a.set_label(&mut next)?;
            a.hlt()
        });
        for budget in 1..=5 {
            let mut got = machine_translating_at_once(true);
            let mut want = machine_translating_at_once(false);
            for m in [&mut got, &mut want] {
                m.load_code(&code);
                m.cpu.run(&mut m.mem, budget);
            }
            if budget == 4 {
                // One call ran all four: the translation went on past the STI (it used to
                // leave there, and the INC was translated as a block of its own).
                assert_eq!(got.cpu.jit.as_ref().map(|j| j.generic), Some(2));
                assert_eq!(got.cpu.jit_blocks(), 1);
            }
            assert_eq!(
                (got.cpu.gpr, got.cpu.rip, got.cpu.interrupt_shadow),
                (want.cpu.gpr, want.cpu.rip, want.cpu.interrupt_shadow),
                "budget {budget}"
            );
            assert_eq!(got.cpu.interrupt_shadow, budget == 2, "budget {budget}");
        }
    }

    /// Two calls of one function whose return addresses share a jump cache cell: each return
    /// goes on to its own caller, translated as interpreted.
    #[test]
    fn returns_whose_targets_share_a_jump_cache_cell_go_to_their_own_caller() {
        let r1 = CODE + 10;
        let r2 = (r1 + 64..r1 + 0x10_0000)
            .find(|&r| super::jump_slot(r) == super::jump_slot(r1))
            .unwrap();
        let f = r2 + 0x40;
        let rel = |from_next: u64, to: u64| (to.wrapping_sub(from_next) as u32).to_le_bytes();
        let mut code = vec![0xcc; (f + 4 - CODE) as usize];
        let mut put = |at: u64, bytes: &[u8]| {
            let o = (at - CODE) as usize;
            code[o..o + bytes.len()].copy_from_slice(bytes);
        };
        put(CODE, &[0xb9, 50, 0, 0, 0]); // mov ecx, 50
        put(CODE + 5, &[0xe8]); // top: call f
        put(CODE + 6, &rel(r1, f));
        put(r1, &[0x83, 0xc3, 0x01]); // add ebx, 1
        put(r1 + 3, &[0xe9]); // jmp r2 - 5
        put(r1 + 4, &rel(r1 + 8, r2 - 5));
        put(r2 - 5, &[0xe8]); // call f
        put(r2 - 4, &rel(r2, f));
        put(r2, &[0x83, 0xc3, 0x64, 0xff, 0xc9, 0x0f, 0x85]); // add ebx, 100; dec ecx; jne top
        put(r2 + 7, &rel(r2 + 11, CODE + 5));
        put(r2 + 11, &[0xf4]); // hlt
        put(f, &[0x83, 0xc0, 0x01, 0xc3]); // add eax, 1; ret
        let run = |jit: bool| {
            let mut m = machine_translating_at_once(jit);
            m.mem.load(CODE, &code).unwrap();
            m.cpu.rip = CODE;
            m.cpu.gpr[0] = 0;
            m.cpu.gpr[3] = 0;
            assert_eq!(m.cpu.run(&mut m.mem, 100_000), crate::Exit::Halt);
            let jumped = m.cpu.jit.as_ref().map_or(0, |j| j.jumped);
            (m.cpu.gpr[0], m.cpu.gpr[3], jumped)
        };
        // (They evict each other from the cell: every return goes through the run loop.)
        let (a, b, _) = run(true);
        assert_eq!((a, b), (100, 50 * 101));
        assert_eq!((a, b, 0), run(false));
    }

    /// A loop of loads and stores across the boundary from the virtual page at 0x3f_f000
    /// (physical 0x3f_f000, the last page of RAM) into the one at 0x40_0000, mapped here to
    /// physical 0: far apart, so the host byte after the first page is not the next page's.
    /// Whole accesses to the first page come first in every round, so that its read and
    /// write entries of the host-address tables are filled. Returns the sum of the loads,
    /// the last 8 bytes of the first page and the first 8 of physical memory, and the
    /// blocks translated.
    fn crossing_loop(jit: bool) -> (u64, u64, u64, u64) {
        const PDE2: u64 = 0x3000 + 2 * 8;
        let code = assemble(|a| {
            a.mov(rsi, 0x87u64)?;
            a.mov(qword_ptr(PDE2), rsi)?;
            a.mov(r10, 0x1122_3344_5566_7788u64)?;
            a.mov(ecx, 20)?;
            let mut top = a.create_label();
            a.set_label(&mut top)?;
            a.mov(rax, qword_ptr(0x3f_f800u64))?;
            a.mov(qword_ptr(0x3f_f808u64), rax)?;
            a.mov(rbx, qword_ptr(0x3f_fffcu64))?;
            a.add(r8, rbx)?;
            a.movzx(ebx, word_ptr(0x3f_ffffu64))?;
            a.add(r8, rbx)?;
            a.add(r10, rcx)?;
            a.mov(qword_ptr(0x3f_fffau64), r10)?;
            a.mov(dword_ptr(0x3f_fffeu64), ecx)?;
            a.dec(ecx)?;
            a.jne(top)
        });
        let mut m = machine_translating_at_once(jit);
        m.mem.write_u64(0x3f_fff8, 0xa1a2_a3a4_a5a6_a7a8).unwrap();
        m.mem.write_u64(0, 0xb1b2_b3b4_b5b6_b7b8).unwrap();
        m.load_code(&code);
        let out = m.run(10_000);
        assert!(out.cpu.halted, "the loop ran to its end");
        (
            out.cpu.gpr[8],
            out.mem.read_u64(0x3f_fff8).unwrap(),
            out.mem.read_u64(0).unwrap(),
            out.cpu.jit_blocks(),
        )
    }

    /// Translated loads and stores that cross into the next page reach that page wherever
    /// it maps, as interpreted ones do, even with the first page in the host-address tables:
    /// never the host bytes after the first page.
    #[test]
    fn translated_accesses_across_a_page_boundary_match_the_interpreter() {
        let (sum, first, second, blocks) = crossing_loop(true);
        assert!(blocks >= 1, "the loop ran translated");
        let want = crossing_loop(false);
        assert_eq!((sum, first, second), (want.0, want.1, want.2));
        // The last round stored 0x0000_0001 at 0x3f_fffe: its upper half went to physical 0.
        assert_eq!(second & 0xffff, 0);
        assert_eq!(first >> 48, 1);
    }

    /// Translated reads of a page remapped with INVLPG in between see the new page: the
    /// host-address read table is emptied with the TLB entry (`Tlb::flush_page`).
    #[test]
    fn translated_reads_follow_a_remapping_after_invlpg() {
        let (before, after, blocks) = remap_loop(0, true);
        assert!(blocks >= 2, "the loop ran translated");
        assert_eq!((before, after), (3 * 0x1111, 3 * 0x2222));
    }

    /// Every condition code after ADD, CMP and TEST of every width, on pairs of edge values,
    /// branches the same translated (host flags rebuilt from the lazy record) as interpreted.
    #[test]
    fn translated_conditions_after_inline_alu_match_the_interpreter() {
        const VALUES: [u64; 10] = [
            0,
            1,
            0x7f,
            0x80,
            0xff,
            0xffff,
            0x8000_0000,
            0xffff_ffff,
            0x7fff_ffff_ffff_ffff,
            u64::MAX,
        ];
        const RESULTS: u64 = DATA + 0x8000;
        let pairs: Vec<(u64, u64)> = VALUES
            .iter()
            .flat_map(|&a| VALUES.iter().map(move |&b| (a, b)))
            .collect();
        let pool = CodePool::new(1).unwrap();
        for kind in 0..3 {
            for size in [1u8, 2, 4, 8] {
                for cc in 0..16u8 {
                    // For each pair at DATA: load it, operate, branch on cc, store 0 or 1.
                    let code = assemble(|a| {
                        a.mov(rsi, DATA)?;
                        a.mov(rdi, RESULTS)?;
                        a.mov(ecx, pairs.len() as u32)?;
                        let mut top = a.create_label();
                        let mut taken = a.create_label();
                        let mut next = a.create_label();
                        a.set_label(&mut top)?;
                        a.mov(rax, qword_ptr(rsi))?;
                        a.mov(rbx, qword_ptr(rsi + 8))?;
                        match kind {
                            0 => on_rax!(a, size, add, bl, bx, ebx, rbx)?,
                            1 => on_rax!(a, size, cmp, bl, bx, ebx, rbx)?,
                            _ => on_rax!(a, size, test, bl, bx, ebx, rbx)?,
                        }
                        match cc {
                            0 => a.jo(taken)?,
                            1 => a.jno(taken)?,
                            2 => a.jb(taken)?,
                            3 => a.jae(taken)?,
                            4 => a.je(taken)?,
                            5 => a.jne(taken)?,
                            6 => a.jbe(taken)?,
                            7 => a.ja(taken)?,
                            8 => a.js(taken)?,
                            9 => a.jns(taken)?,
                            10 => a.jp(taken)?,
                            11 => a.jnp(taken)?,
                            12 => a.jl(taken)?,
                            13 => a.jge(taken)?,
                            14 => a.jle(taken)?,
                            _ => a.jg(taken)?,
                        }
                        a.mov(byte_ptr(rdi), 0)?;
                        a.jmp(next)?;
                        a.set_label(&mut taken)?;
                        a.mov(byte_ptr(rdi), 1)?;
                        a.set_label(&mut next)?;
                        a.add(rsi, 16)?;
                        a.inc(rdi)?;
                        a.dec(ecx)?;
                        a.jne(top)
                    });
                    let [interpreted, translated] = [false, true].map(|jit| {
                        let mut m = interpreting_or_translating(&pool, jit);
                        for (k, (x, y)) in pairs.iter().enumerate() {
                            m.mem.write_u64(DATA + 16 * k as u64, *x).unwrap();
                            m.mem.write_u64(DATA + 16 * k as u64 + 8, *y).unwrap();
                        }
                        m.load_code(&code);
                        let out = m.run(100_000);
                        assert_eq!(out.exit, crate::Exit::Halt);
                        let mut taken = vec![0u8; pairs.len()];
                        out.mem.dump(RESULTS, &mut taken).unwrap();
                        taken
                    });
                    assert_eq!(interpreted, translated, "op {kind} size {size} cc {cc}");
                }
            }
        }
    }

    /// The host addresses of RAM pages that translated loads learnt are kept for the next run
    /// with the same memory, and dropped for memory of another identity.
    #[test]
    fn host_addresses_outlive_a_run_only_with_ram_of_the_same_identity() {
        let code = assemble(|a| {
            a.mov(rsi, DATA)?;
            a.mov(rax, qword_ptr(rsi))?;
            a.mov(rbx, qword_ptr(rsi + 0x1000))?;
            a.add(rax, rbx)
        });
        let mut m = machine_translating_at_once(true);
        m.load_code(&code);
        // (A budget for the whole block, which goes on past the HLT: it runs translated.)
        m.cpu.run(&mut m.mem, 100);
        let learnt = m.cpu.tlb.fast_filled();
        assert!(learnt >= 2, "{learnt}");
        m.cpu.run(&mut m.mem, 0);
        assert_eq!(m.cpu.tlb.fast_filled(), learnt, "same memory: kept");
        let mut other = crate::FlatMemory::new(1 << 20);
        m.cpu.run(&mut other, 0);
        assert_eq!(m.cpu.tlb.fast_filled(), 0, "other memory: dropped");
    }

    /// A test machine that interprets, or translates every block at its first run with code
    /// memory from `pool`.
    fn interpreting_or_translating(pool: &CodePool, jit: bool) -> Machine {
        let mut m = Machine::new();
        m.cpu.jit = None;
        if jit {
            assert!(m.cpu.enable_jit(pool, 1));
        }
        m
    }

    /// Run `code` interpreted and translated at the first run of each block, with `values` at
    /// DATA; returns the `n` words each left at RESULTS.
    fn both_ways(code: &[u8], values: &[u64], n: usize) -> [Vec<u64>; 2] {
        let pool = CodePool::new(1).unwrap();
        [false, true].map(|jit| {
            let mut m = interpreting_or_translating(&pool, jit);
            for (k, v) in values.iter().enumerate() {
                m.mem.write_u64(DATA + 8 * k as u64, *v).unwrap();
            }
            m.load_code(code);
            let out = m.run(1_000_000);
            assert_eq!(out.exit, crate::Exit::Halt);
            let mut words = vec![0u64; n];
            for (k, w) in words.iter_mut().enumerate() {
                *w = out.mem.read_u64(DATA + 0x8000 + 8 * k as u64).unwrap();
            }
            words
        })
    }

    /// A loop over neighbouring pairs of [`EDGES`] (RSI at the pair, RDI at the results): each
    /// round runs `body`, which writes its results at RDI and moves it on.
    fn edge_loop(body: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
        assemble(|a| {
            a.mov(rsi, DATA)?;
            a.mov(rdi, DATA + 0x8000)?;
            a.mov(r9d, (EDGES.len() - 1) as u32)?;
            let mut top = a.create_label();
            a.set_label(&mut top)?;
            body(a)?;
            a.add(rsi, 8)?;
            a.dec(r9d)?;
            a.jne(top)
        })
    }

    /// `code` run both ways ([`both_ways`]) over a round per pair of neighbouring [`EDGES`],
    /// each round writing `words` words for each of its `cases`: every word matches.
    fn edge_rounds_match(code: &[u8], cases: usize, words: usize) {
        let n = (EDGES.len() - 1) * cases * words;
        let [interpreted, translated] = both_ways(code, &EDGES, n);
        for (k, (x, y)) in interpreted.iter().zip(&translated).enumerate() {
            let case = (k / words) % cases;
            assert_eq!(x, y, "word {k} ({} of case {case})", k % words);
        }
    }

    /// Run `code` translated from the first run of each block, with `values` at DATA, to its
    /// HLT: the instructions that went through the generic helper.
    fn generic_when_translated(code: &[u8], values: &[u64]) -> u64 {
        let pool = CodePool::new(1).unwrap();
        let mut m = interpreting_or_translating(&pool, true);
        for (k, v) in values.iter().enumerate() {
            m.mem.write_u64(DATA + 8 * k as u64, *v).unwrap();
        }
        m.load_code(code);
        let out = m.run(10_000_000);
        assert_eq!(out.exit, crate::Exit::Halt);
        out.cpu.jit.as_ref().map_or(0, |j| j.generic)
    }

    const EDGES: [u64; 8] = [
        0,
        1,
        0x80,
        0x8001,
        0x8000_0000,
        0xdead_beef_8765_4321,
        0x8000_0000_0000_0000,
        u64::MAX,
    ];

    /// Branches one after the other on the flags of one CMP or SUB (the host's flags kept
    /// live between them), then one more after a load (which changes the host's flags, so
    /// they are rebuilt): every path taken matches the interpreter's, at every width.
    #[test]
    fn translated_branches_on_the_same_flags_match_the_interpreter() {
        fn jcc(a: &mut CodeAssembler, cc: u8, l: CodeLabel) -> Result<(), IcedError> {
            match cc {
                0 => a.jo(l),
                1 => a.jno(l),
                2 => a.jb(l),
                3 => a.jae(l),
                4 => a.je(l),
                5 => a.jne(l),
                6 => a.jbe(l),
                7 => a.ja(l),
                8 => a.js(l),
                9 => a.jns(l),
                10 => a.jp(l),
                11 => a.jnp(l),
                12 => a.jl(l),
                13 => a.jge(l),
                14 => a.jle(l),
                _ => a.jg(l),
            }
        }
        let triples: [[u8; 3]; 6] = [
            [2, 4, 12],
            [7, 5, 13],
            [0, 8, 10],
            [14, 6, 15],
            [3, 9, 11],
            [5, 12, 2],
        ];
        for sub in [false, true] {
            for size in [1u8, 2, 4, 8] {
                for t in triples {
                    let code = assemble(|a| {
                        a.mov(rsi, DATA)?;
                        a.mov(rdi, DATA + 0x8000)?;
                        a.mov(r9d, (EDGES.len() - 1) as u32)?;
                        let mut top = a.create_label();
                        let mut next = a.create_label();
                        let mut l = [a.create_label(), a.create_label(), a.create_label()];
                        a.set_label(&mut top)?;
                        a.mov(rax, qword_ptr(rsi))?;
                        a.mov(rbx, qword_ptr(rsi + 8))?;
                        if sub {
                            on_rax!(a, size, sub, bl, bx, ebx, rbx)?;
                        } else {
                            on_rax!(a, size, cmp, bl, bx, ebx, rbx)?;
                        }
                        jcc(a, t[0], l[0])?;
                        jcc(a, t[1], l[1])?;
                        a.mov(rdx, qword_ptr(rsi + 8))?;
                        jcc(a, t[2], l[2])?;
                        a.mov(qword_ptr(rdi), 9)?;
                        a.jmp(next)?;
                        for (k, label) in l.iter_mut().enumerate() {
                            a.set_label(label)?;
                            a.mov(qword_ptr(rdi), k as i32)?;
                            a.jmp(next)?;
                        }
                        a.set_label(&mut next)?;
                        a.mov(qword_ptr(rdi + 8), rax)?;
                        a.add(rdi, 16)?;
                        a.add(rsi, 8)?;
                        a.dec(r9d)?;
                        a.jne(top)
                    });
                    let n = (EDGES.len() - 1) * 2;
                    let [interpreted, translated] = both_ways(&code, &EDGES, n);
                    assert_eq!(interpreted, translated, "sub {sub} size {size} {t:?}");
                }
            }
        }
    }

    /// For each of SHL, SHR, SAR, ROL and ROR and each size: a loop over [`EDGES`] that runs,
    /// for each count of `counts`, `before` (with the value in RAX), the shift of RAX by the
    /// count, then `after`, which stores three words at RDI and moves it on; the words match
    /// the interpreter's.
    fn shift_rounds_match(
        counts: impl Fn(u8) -> std::ops::Range<u32>,
        before: impl Fn(&mut CodeAssembler) -> Result<(), IcedError>,
        after: impl Fn(&mut CodeAssembler, u32) -> Result<(), IcedError>,
    ) {
        for op in 0..5 {
            for size in [1u8, 2, 4, 8] {
                let counts = counts(size);
                let code = assemble(|a| {
                    a.mov(rsi, DATA)?;
                    a.mov(rdi, DATA + 0x8000)?;
                    a.mov(r9d, EDGES.len() as u32)?;
                    let mut top = a.create_label();
                    a.set_label(&mut top)?;
                    for c in counts.clone() {
                        a.mov(rax, qword_ptr(rsi))?;
                        before(a)?;
                        match op {
                            0 => on_rax!(a, size, shl, c, c, c, c)?,
                            1 => on_rax!(a, size, shr, c, c, c, c)?,
                            2 => on_rax!(a, size, sar, c, c, c, c)?,
                            3 => on_rax!(a, size, rol, c, c, c, c)?,
                            _ => on_rax!(a, size, ror, c, c, c, c)?,
                        }
                        after(a, c)?;
                        a.add(rdi, 24)?;
                    }
                    a.add(rsi, 8)?;
                    a.dec(r9d)?;
                    a.jne(top)
                });
                let n = EDGES.len() * counts.len() * 3;
                let [interpreted, translated] = both_ways(&code, &EDGES, n);
                assert_eq!(interpreted, translated, "op {op} size {size}");
            }
        }
    }

    /// Shifts and rotates by an immediate whose flags the next instruction (an ADD or CMP)
    /// replaces: translated, they skip the flags, and the results, and the flags after the
    /// next instruction, match the interpreter's at every size and count.
    #[test]
    fn translated_shifts_whose_flags_are_overwritten_match_the_interpreter() {
        shift_rounds_match(
            |size| 1..if size == 8 { 64 } else { 32 },
            |a| a.mov(rbx, rax),
            |a, c| {
                if c % 2 == 0 {
                    a.add(rbx, 5)?;
                } else {
                    a.cmp(rbx, rax)?;
                }
                a.pushfq()?;
                a.pop(rdx)?;
                a.mov(qword_ptr(rdi), rax)?;
                a.mov(qword_ptr(rdi + 8), rdx)?;
                a.mov(qword_ptr(rdi + 16), rbx)
            },
        );
    }

    /// SHL, SHR, SAR, ROL and ROR of a register by every immediate count at every size: the
    /// results and RFLAGS (as PUSHFQ sees them, then a Jcc on each flag) match the interpreter.
    #[test]
    fn translated_shifts_by_an_immediate_match_the_interpreter() {
        shift_rounds_match(
            |size| 0..if size == 8 { 64 } else { 32 },
            // Flags before: ones the shift must replace (or keep, count 0).
            |a| a.cmp(rax, 3),
            |a, _| {
                a.setl(bl)?;
                a.pushfq()?;
                a.pop(rdx)?;
                a.mov(qword_ptr(rdi), rax)?;
                a.mov(qword_ptr(rdi + 8), rdx)?;
                a.mov(byte_ptr(rdi + 16), bl)
            },
        );
    }

    /// The flags an ALU operation of registers leaves are still there for an ADC after it
    /// (which reads CF) and for the fault of a compare with memory after it (the exception
    /// frame's RFLAGS): the translator leaves a record out only before an instruction that
    /// writes the whole record without reading it and cannot fault.
    #[test]
    fn flags_stay_for_an_instruction_that_reads_them_or_faults_first() {
        let code = edge_loop(|a| {
            a.mov(rax, qword_ptr(rsi))?;
            a.mov(rbx, qword_ptr(rsi + 8))?;
            a.mov(rcx, rbx)?;
            a.mov(rdx, rax)?;
            a.add(rax, rbx)?;
            a.adc(rcx, rdx)?;
            a.sub(rdx, rbx)?;
            a.sbb(rcx, rax)?;
            a.xor(rax, rdx)?;
            a.cmp(rcx, rbx)?;
            // Moves between an operation and the next one: its flags stay for ADC, and go
            // for CMP.
            a.add(rax, rbx)?;
            a.mov(rdx, rax)?;
            a.lea(r8, qword_ptr(rax + rdx * 2 + 3))?;
            a.movzx(r10d, cl)?;
            a.adc(rcx, r8)?;
            a.shl(rdx, 3)?;
            a.mov(r11, 7u64)?;
            a.lea(r10, qword_ptr(rdx + 1))?;
            a.cmp(r10, r11)?;
            a.setb(r11b)?;
            a.pushfq()?;
            a.pop(rdx)?;
            a.mov(qword_ptr(rdi), rcx)?;
            a.mov(qword_ptr(rdi + 8), rdx)?;
            a.mov(qword_ptr(rdi + 16), r11)?;
            a.mov(qword_ptr(rdi + 24), r10)?;
            a.add(rdi, 32)
        });
        let n = (EDGES.len() - 1) * 4;
        let [interpreted, translated] = both_ways(&code, &EDGES, n);
        assert_eq!(interpreted, translated);

        // ADD sets CF and ZF, then (past a move) a compare with unmapped memory faults (#PF):
        // the handler's frame holds the ADD's flags.
        // Or a load between the ADD and a CMP that would overwrite its flags faults.
        for load_faults in [false, true] {
            let code = assemble(|a| {
                a.mov(rax, u64::MAX)?;
                a.mov(rbx, 1u64)?;
                a.cmp(rax, 5)?;
                a.add(rax, rbx)?;
                a.mov(rdx, rax)?;
                if load_faults {
                    a.mov(rdx, qword_ptr(0x4000_0000u64))?;
                    a.cmp(rcx, rbx)
                } else {
                    a.cmp(rcx, qword_ptr(0x4000_0000u64))
                }
            });
            let frame = |jit: bool| {
                let mut m = machine_translating_at_once(jit);
                m.load_code(&code);
                let out = m.run(1_000);
                assert_eq!(out.exception, Some(14));
                let top = out.cpu.gpr[4];
                out.mem.read_u64(top + 24).unwrap() & crate::flags::ARITH
            };
            let want = frame(false);
            let (cf, zf) = (crate::flags::CF, crate::flags::ZF);
            assert_eq!(want & (cf | zf), cf | zf);
            assert_eq!(frame(true), want, "load faults: {load_faults}");
        }
    }

    /// SETcc into a register on every condition, after an inline ALU operation (host flags),
    /// after INC (which keeps CF) and after a shift (materialized flags), into a low byte, a
    /// REX byte (SIL) and a high byte (AH): the registers match the interpreter's.
    #[test]
    fn translated_setcc_matches_the_interpreter() {
        for before in 0..3 {
            let code = assemble(|a| {
                a.mov(r10, DATA)?;
                a.mov(rdi, DATA + 0x8000)?;
                a.mov(r9d, (EDGES.len() - 1) as u32)?;
                let mut top = a.create_label();
                a.set_label(&mut top)?;
                for cc in 0..16u8 {
                    a.mov(rax, qword_ptr(r10))?;
                    a.mov(rbx, qword_ptr(r10 + 8))?;
                    a.mov(rcx, u64::MAX)?;
                    a.mov(rsi, u64::MAX)?;
                    a.mov(rdx, rax)?;
                    match before {
                        0 => a.cmp(rax, rbx)?,
                        1 => {
                            a.cmp(rbx, rax)?;
                            a.inc(rdx)?
                        }
                        _ => a.shl(rax, 1)?,
                    }
                    macro_rules! set {
                        ($f:ident) => {{
                            a.$f(cl)?;
                            a.$f(sil)?;
                            a.$f(ah)?;
                        }};
                    }
                    match cc {
                        0 => set!(seto),
                        1 => set!(setno),
                        2 => set!(setb),
                        3 => set!(setae),
                        4 => set!(sete),
                        5 => set!(setne),
                        6 => set!(setbe),
                        7 => set!(seta),
                        8 => set!(sets),
                        9 => set!(setns),
                        10 => set!(setp),
                        11 => set!(setnp),
                        12 => set!(setl),
                        13 => set!(setge),
                        14 => set!(setle),
                        _ => set!(setg),
                    }
                    a.mov(qword_ptr(rdi), rcx)?;
                    a.mov(qword_ptr(rdi + 8), rsi)?;
                    a.mov(qword_ptr(rdi + 16), rax)?;
                    a.add(rdi, 24)?;
                }
                a.add(r10, 8)?;
                a.dec(r9d)?;
                a.jne(top)
            });
            let n = (EDGES.len() - 1) * 16 * 3;
            let [interpreted, translated] = both_ways(&code, &EDGES, n);
            assert_eq!(interpreted, translated, "before {before}");
        }
    }

    /// CMOVcc on every condition, after an inline ALU operation (host flags) and after a shift
    /// (materialized flags), from a register and from memory, at 16, 32 and 64 bits: the
    /// destination matches the interpreter's (a 32-bit one zero-extended even when the
    /// condition fails).
    #[test]
    fn translated_cmov_matches_the_interpreter() {
        for after_shift in [false, true] {
            for size in [2u8, 4, 8] {
                let code = assemble(|a| {
                    a.mov(rsi, DATA)?;
                    a.mov(rdi, DATA + 0x8000)?;
                    a.mov(r9d, (EDGES.len() - 1) as u32)?;
                    let mut top = a.create_label();
                    a.set_label(&mut top)?;
                    for cc in 0..16u8 {
                        for from_memory in [false, true] {
                            a.mov(rcx, u64::MAX)?;
                            a.mov(rax, qword_ptr(rsi))?;
                            a.mov(rbx, qword_ptr(rsi + 8))?;
                            if after_shift {
                                a.shl(rax, 1)?;
                            } else {
                                a.cmp(rax, rbx)?;
                            }
                            let m = qword_ptr(rsi + 8);
                            macro_rules! cm {
                                ($f:ident) => {
                                    match (size, from_memory) {
                                        (2, false) => a.$f(cx, bx)?,
                                        (2, true) => a.$f(cx, m)?,
                                        (4, false) => a.$f(ecx, ebx)?,
                                        (4, true) => a.$f(ecx, m)?,
                                        (_, false) => a.$f(rcx, rbx)?,
                                        _ => a.$f(rcx, m)?,
                                    }
                                };
                            }
                            match cc {
                                0 => cm!(cmovo),
                                1 => cm!(cmovno),
                                2 => cm!(cmovb),
                                3 => cm!(cmovae),
                                4 => cm!(cmove),
                                5 => cm!(cmovne),
                                6 => cm!(cmovbe),
                                7 => cm!(cmova),
                                8 => cm!(cmovs),
                                9 => cm!(cmovns),
                                10 => cm!(cmovp),
                                11 => cm!(cmovnp),
                                12 => cm!(cmovl),
                                13 => cm!(cmovge),
                                14 => cm!(cmovle),
                                _ => cm!(cmovg),
                            }
                            a.mov(qword_ptr(rdi), rcx)?;
                            a.add(rdi, 8)?;
                        }
                    }
                    a.add(rsi, 8)?;
                    a.dec(r9d)?;
                    a.jne(top)
                });
                let n = (EDGES.len() - 1) * 32;
                let [interpreted, translated] = both_ways(&code, &EDGES, n);
                assert_eq!(
                    interpreted, translated,
                    "size {size} after shift {after_shift}"
                );
            }
        }
    }

    /// Loads and stores through every form of effective address the translator computes
    /// inline: base plus a zero, positive or negative displacement, a base the register cache
    /// holds (just written), base plus index at every scale plus a displacement, and an
    /// absolute address: the same results as interpreted.
    #[test]
    fn translated_effective_addresses_match_the_interpreter() {
        let rounds = 20usize;
        let code = assemble(|a| {
            a.mov(rsi, DATA + 0x100)?;
            a.mov(rdi, DATA + 0x8000)?;
            a.mov(r9d, rounds as u32)?;
            let mut top = a.create_label();
            a.set_label(&mut top)?;
            a.mov(ecx, 3)?;
            a.mov(rax, qword_ptr(rsi))?;
            a.add(rax, qword_ptr(rsi + 8))?;
            a.add(rax, qword_ptr(rsi - 0x40))?;
            a.mov(rdx, rsi)?;
            a.add(rax, qword_ptr(rdx + 0x18))?;
            a.add(rax, qword_ptr(rdx - 0x28))?;
            a.add(rax, qword_ptr(rsi + rcx * 1 + 5))?;
            a.add(rax, qword_ptr(rsi + rcx * 2 - 7))?;
            a.add(rax, qword_ptr(rsi + rcx * 4))?;
            a.add(rax, qword_ptr(rsi + rcx * 8 + 0x80))?;
            a.add(rax, qword_ptr(DATA + 0x30))?;
            a.mov(qword_ptr(rdi), rax)?;
            a.mov(qword_ptr(rdi + rcx * 8 - 0x10), rsi)?;
            a.add(rsi, 24)?;
            a.add(rdi, 16)?;
            a.dec(r9d)?;
            a.jne(top)
        });
        let values: Vec<u64> = (0..256u64)
            .map(|k| k.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (k << 3))
            .collect();
        let [interpreted, translated] = both_ways(&code, &values, 2 * rounds);
        assert_eq!(interpreted, translated);
        assert!(interpreted.iter().all(|&w| w != 0), "every round stored");
    }

    /// CMPXCHG of memory at 32 and 64 bits, locked or not, succeeding and failing, aligned
    /// (inline) and not (through the generic path): the memory, the accumulator (a 32-bit
    /// one zero-extended only when it is written), RFLAGS and a Jcc after it match the
    /// interpreter, and the aligned ones ran without the generic helper.
    #[test]
    fn translated_cmpxchg_matches_the_interpreter() {
        let code = edge_loop(|a| {
            for size in [4u8, 8] {
                for succeed in [false, true] {
                    for locked in [false, true] {
                        for misaligned in [0u32, 1] {
                            let m = if misaligned == 0 {
                                qword_ptr(rdi)
                            } else {
                                qword_ptr(rdi + 1)
                            };
                            let d = if misaligned == 0 {
                                dword_ptr(rdi)
                            } else {
                                dword_ptr(rdi + 1)
                            };
                            a.mov(rbx, qword_ptr(rsi + 8))?;
                            a.mov(qword_ptr(rdi), rbx)?;
                            a.mov(qword_ptr(rdi + 8), rbx)?;
                            a.mov(rax, qword_ptr(rsi))?;
                            if succeed {
                                a.mov(rax, qword_ptr(rdi + misaligned as i32))?;
                                // (The upper half of a 32-bit accumulator stays when it
                                // matches: make it differ from the memory's.)
                                a.not(rbx)?;
                                a.shl(rbx, 32)?;
                                a.or(rax, rbx)?;
                            }
                            a.mov(rcx, 0x0123_4567_89ab_cdefu64)?;
                            a.xor(rcx, qword_ptr(rsi))?;
                            match (size, locked) {
                                (4, false) => a.cmpxchg(d, ecx)?,
                                (4, true) => a.lock().cmpxchg(d, ecx)?,
                                (_, false) => a.cmpxchg(m, rcx)?,
                                _ => a.lock().cmpxchg(m, rcx)?,
                            }
                            let mut skip = a.create_label();
                            a.mov(qword_ptr(rdi + 16), rax)?;
                            a.mov(edx, 1)?;
                            a.jne(skip)?;
                            a.mov(edx, 2)?;
                            a.set_label(&mut skip)?;
                            a.mov(qword_ptr(rdi + 24), rdx)?;
                            a.pushfq()?;
                            a.pop(qword_ptr(rdi + 32))?;
                            a.add(rdi, 40)?;
                        }
                    }
                }
            }
            Ok(())
        });
        let per_round = 2 * 2 * 2 * 2;
        edge_rounds_match(&code, per_round, 5);
        // The aligned half ran inline: through the generic helper went only the misaligned
        // half, each case's PUSHFQ and POP to memory, and the HLT.
        let generic = generic_when_translated(&code, &EDGES);
        let rounds = (EDGES.len() - 1) as u64;
        assert!(
            generic <= rounds * (per_round as u64 / 2 + 2 * per_round as u64) + 1,
            "{generic} generic instructions"
        );
    }

    /// A register whose value translated code keeps in a host register, then changed every
    /// way but a full write (a byte, AH, a word, a helper's instruction, a generic one, POP,
    /// PUSH's and RET's stack pointer, a failing CMPXCHG's accumulator), and read after each:
    /// the same values as the interpreter's.
    #[test]
    fn a_cached_register_changed_behind_the_cache_reads_its_new_value() {
        let code = assemble(|a| {
            a.mov(rsi, DATA)?;
            a.mov(rdi, DATA + 0x8000)?;
            let out =
                |a: &mut CodeAssembler, k: i32, r: AsmRegister64| a.mov(qword_ptr(rdi + 8 * k), r);
            a.mov(rax, qword_ptr(rsi))?;
            a.mov(al, 0x5a)?;
            out(a, 0, rax)?;
            a.mov(rax, qword_ptr(rsi + 8))?;
            a.mov(ah, 0x33)?;
            out(a, 1, rax)?;
            a.mov(rax, qword_ptr(rsi + 16))?;
            a.mov(ax, 0x1234)?;
            out(a, 2, rax)?;
            a.mov(rcx, qword_ptr(rsi))?;
            a.bswap(rcx)?;
            out(a, 3, rcx)?;
            a.mov(rdx, qword_ptr(rsi + 8))?;
            a.imul_2(rdx, rdx)?;
            out(a, 4, rdx)?;
            a.mov(rbx, qword_ptr(rsi + 16))?;
            a.push(qword_ptr(rsi))?;
            a.pop(rbx)?;
            out(a, 5, rbx)?;
            a.mov(rax, rsp)?;
            a.push(rax)?;
            out(a, 6, rsp)?;
            a.pop(rcx)?;
            out(a, 7, rsp)?;
            a.mov(r8, qword_ptr(rsi + 8))?;
            a.xchg(qword_ptr(rsi + 24), r8)?;
            out(a, 8, r8)?;
            a.mov(rax, qword_ptr(rsi + 8))?;
            a.lock().cmpxchg(qword_ptr(rsi), rcx)?;
            out(a, 9, rax)?;
            a.mov(r9, qword_ptr(rsi + 16))?;
            a.inc(r9)?;
            out(a, 10, r9)?;
            let mut f = a.create_label();
            let mut back = a.create_label();
            a.mov(r10, 7u64)?;
            a.call(f)?;
            a.jmp(back)?;
            a.set_label(&mut f)?;
            a.mov(r11, rsp)?;
            out(a, 11, r11)?;
            a.ret()?;
            a.set_label(&mut back)?;
            out(a, 12, rsp)
        });
        let [interpreted, translated] = both_ways(&code, &EDGES[4..], 13);
        assert_eq!(interpreted, translated);
    }

    /// INC, DEC and NEG of a register and of memory at every size, after flags written by an
    /// inline CMP, an inline TEST, a shift (materialized) and an INC (whose CF is the one kept
    /// from before): results, RFLAGS and a Jcc on CF and on ZF after each match the
    /// interpreter.
    #[test]
    fn translated_inc_dec_and_neg_match_the_interpreter() {
        let code = edge_loop(|a| {
            for before in 0..4 {
                for op in 0..3 {
                    for size in [1u8, 2, 4, 8] {
                        for memory in [false, true] {
                            a.mov(rax, qword_ptr(rsi))?;
                            a.mov(rbx, qword_ptr(rsi + 8))?;
                            a.mov(qword_ptr(rdi), rax)?;
                            match before {
                                0 => a.cmp(rax, rbx)?,
                                1 => a.test(rax, rbx)?,
                                2 => a.shl(rbx, 1)?,
                                _ => {
                                    a.cmp(rbx, rax)?;
                                    a.inc(rbx)?;
                                }
                            }
                            macro_rules! un {
                                ($f:ident) => {
                                    match (size, memory) {
                                        (1, false) => a.$f(al)?,
                                        (2, false) => a.$f(ax)?,
                                        (4, false) => a.$f(eax)?,
                                        (_, false) => a.$f(rax)?,
                                        (1, true) => a.$f(byte_ptr(rdi))?,
                                        (2, true) => a.$f(word_ptr(rdi))?,
                                        (4, true) => a.$f(dword_ptr(rdi))?,
                                        _ => a.$f(qword_ptr(rdi))?,
                                    }
                                };
                            }
                            match op {
                                0 => un!(inc),
                                1 => un!(dec),
                                _ => un!(neg),
                            }
                            let mut no_cf = a.create_label();
                            let mut no_zf = a.create_label();
                            a.mov(ecx, 0)?;
                            a.jae(no_cf)?;
                            a.mov(ecx, 1)?;
                            a.set_label(&mut no_cf)?;
                            a.jne(no_zf)?;
                            a.add(ecx, 2)?;
                            a.set_label(&mut no_zf)?;
                            a.pushfq()?;
                            a.pop(qword_ptr(rdi + 8))?;
                            a.mov(qword_ptr(rdi + 16), rcx)?;
                            a.mov(qword_ptr(rdi + 24), rax)?;
                            a.add(rdi, 32)?;
                        }
                    }
                }
            }
            Ok(())
        });
        let cases = 4 * 3 * 4 * 2;
        edge_rounds_match(&code, cases, 4);
        // Only the PUSHFQ and POP to memory of each case, and the HLT, ran generic.
        let generic = generic_when_translated(&code, &EDGES);
        assert_eq!(generic, (EDGES.len() - 1) as u64 * cases as u64 * 2 + 1);
    }

    /// INVLPG of one address in a 2 MiB page drops the translations of the whole page, the
    /// host-address entries of its other 4 KiB pieces included.
    #[test]
    fn translated_indirect_jumps_and_calls_match_the_interpreter_through_the_jump_cache() {
        // Each round: CALL through a register and through memory (a slot the call's own push
        // lands next to), JMP through a register and through memory; the callee records RSP
        // and a value, so a wrong push, order or target shows.
        let code = edge_loop(|a| {
            let mut f = a.create_label();
            let mut g = a.create_label();
            let mut after_f = a.create_label();
            let mut over = a.create_label();
            let mut landed = a.create_label();
            a.lea(rax, ptr(f))?;
            a.call(rax)?;
            a.lea(rcx, ptr(g))?;
            a.mov(qword_ptr(rdi + 8), rcx)?;
            a.call(qword_ptr(rdi + 8))?;
            a.lea(rdx, ptr(over))?;
            a.jmp(rdx)?;
            a.int3()?;
            a.set_label(&mut over)?;
            a.lea(rcx, ptr(landed))?;
            a.mov(qword_ptr(rdi + 32), rcx)?;
            a.jmp(qword_ptr(rdi + 32))?;
            a.int3()?;
            a.set_label(&mut landed)?;
            a.add(rdi, 40)?;
            a.jmp(after_f)?;
            a.set_label(&mut f)?;
            a.mov(rbx, rsp)?;
            a.add(rbx, qword_ptr(rsi))?;
            a.mov(qword_ptr(rdi), rbx)?;
            a.ret()?;
            a.set_label(&mut g)?;
            a.mov(rbx, qword_ptr(rsp))?;
            a.xor(rbx, qword_ptr(rsi + 8))?;
            a.mov(qword_ptr(rdi + 16), rbx)?;
            a.mov(qword_ptr(rdi + 24), rsp)?;
            a.ret()?;
            a.set_label(&mut after_f)?;
            Ok(())
        });
        edge_rounds_match(&code, 1, 5);
        // The indirect branches went on through the jump cache, not back to the run loop.
        let pool = CodePool::new(1).unwrap();
        let mut m = interpreting_or_translating(&pool, true);
        for (k, v) in EDGES.iter().enumerate() {
            m.mem.write_u64(DATA + 8 * k as u64, *v).unwrap();
        }
        m.load_code(&code);
        let out = m.run(1_000_000);
        assert_eq!(out.exit, crate::Exit::Halt);
        let jumped = out.cpu.jit.as_ref().map_or(0, |j| j.jumped);
        // Six jump-cache exits a round (four indirect branches, two RETs), the first rounds
        // interpreted or still filling the cache.
        assert!(jumped >= 6 * (EDGES.len() as u64 - 1) / 2, "{jumped}");
    }

    #[test]
    fn a_non_canonical_indirect_target_faults_alike_translated_or_not() {
        for call in [false, true] {
            let code = assemble(|a| {
                let mut top = a.create_label();
                a.mov(r9d, 40)?;
                a.set_label(&mut top)?;
                a.mov(rax, 0x0000_7fff_ffff_f000u64)?;
                a.dec(r9d)?;
                a.jne(top)?;
                a.mov(rax, 0x8000_0000_0000_0000u64)?;
                if call {
                    a.call(rax)
                } else {
                    a.jmp(rax)
                }
            });
            let pool = CodePool::new(1).unwrap();
            let [x, y] = [false, true].map(|jit| {
                let mut m = interpreting_or_translating(&pool, jit);
                m.load_code(&code);
                let out = m.run(100_000);
                (format!("{:?}", out.exit), out.cpu.rip, out.cpu.gpr[4])
            });
            assert_eq!(x, y, "call {call}");
        }
    }

    #[test]
    fn invlpg_in_a_large_page_drops_every_piece_of_it() {
        for jit in [false, true] {
            let (before, after, _) = remap_loop(0x1000, jit);
            assert_eq!(
                (before, after),
                (3 * 0x1111, 3 * 0x2222),
                "translator {jit}"
            );
        }
    }

    /// Runs `code` interpreted and translated from the first run of each block; returns R8.
    fn r8_both_ways(code: &[u8]) -> [u64; 2] {
        let pool = CodePool::new(1).unwrap();
        [false, true].map(|jit| {
            let mut m = interpreting_or_translating(&pool, jit);
            m.load_code(code);
            let out = m.run(10_000);
            assert_eq!(out.exit, crate::Exit::Halt, "translator {jit}");
            out.cpu.gpr[8]
        })
    }

    /// A translated store into its own block's page ends the block after it (the inline store
    /// path leaves that page to the helper), so the patched instruction runs patched.
    #[test]
    fn a_translated_store_into_its_own_block_takes_effect_at_the_next_instruction() {
        let code = assemble(|a| {
            let mut patch = a.create_label();
            a.mov(ecx, 3)?;
            let mut top = a.create_label();
            a.set_label(&mut top)?;
            a.lea(rdx, qword_ptr(patch))?;
            a.mov(byte_ptr(rdx + 1), cl)?;
            a.set_label(&mut patch)?;
            a.mov(eax, 0)?;
            a.add(r8, rax)?;
            a.dec(ecx)?;
            a.jne(top)
        });
        assert_eq!(r8_both_ways(&code), [6, 6]);
    }

    /// A translated store into another page holding code validated in this generation ends
    /// the generation (the inline store path leaves marked pages to the helper), so that code
    /// is compared with its bytes again before it next runs.
    #[test]
    fn a_translated_store_into_validated_code_elsewhere_is_seen_by_its_next_run() {
        let code = assemble(|a| {
            let mut f = a.create_label();
            a.mov(ecx, 3)?;
            a.lea(rdx, qword_ptr(f))?;
            let mut top = a.create_label();
            a.set_label(&mut top)?;
            // Twice: the function also runs as a block already validated in the generation,
            // not only as one just built.
            a.call(f)?;
            a.add(r8, rax)?;
            a.call(f)?;
            a.add(r8, rax)?;
            a.mov(dword_ptr(rdx + 1), ecx)?;
            a.dec(ecx)?;
            a.jne(top)?;
            a.hlt()?;
            // f, on the next page.
            a.db(&[0x90; 0x1000])?;
            a.set_label(&mut f)?;
            a.mov(eax, 100)?;
            a.ret()
        });
        assert_eq!(r8_both_ways(&code), [210, 210]);
    }

    #[test]
    fn enabling_the_translator_again_drops_every_earlier_translation() {
        let code = assemble(|a| {
            a.mov(ecx, 10)?;
            let mut top = a.create_label();
            a.set_label(&mut top)?;
            a.add(rax, rcx)?;
            a.dec(ecx)?;
            a.jne(top)
        });
        let pool = CodePool::new(1).unwrap();
        let mut m = Machine::new();
        assert!(m.cpu.enable_jit(&pool, 1));
        m.load_code(&code);
        assert_eq!(m.cpu.run(&mut m.mem, 1000), crate::Exit::Halt);
        assert!(m.cpu.jit_blocks() > 0);
        // The region is lent out, so this fails (and gives it back); the next one takes it.
        assert!(!m.cpu.enable_jit(&pool, 1));
        assert!(m.cpu.enable_jit(&pool, 1));
        m.cpu.halted = false;
        m.cpu.rip = CODE;
        m.cpu.gpr[0] = 0;
        assert_eq!(m.cpu.run(&mut m.mem, 1000), crate::Exit::Halt);
        assert_eq!(m.cpu.gpr[0], 55);
        assert!(m.cpu.jit_blocks() > 0, "blocks were translated again");
    }

    #[test]
    fn a_code_region_serves_one_cpu_at_a_time_and_comes_back_when_it_is_dropped() {
        let pool = CodePool::new(1).unwrap();
        let mut a = Cpu::new();
        let mut b = Cpu::new();
        assert!(a.enable_jit(&pool, 1));
        assert!(!b.enable_jit(&pool, 1), "the only region is lent out");
        drop(a);
        assert!(
            b.enable_jit(&pool, 1),
            "a dropped CPU gives its region back"
        );
    }
}
