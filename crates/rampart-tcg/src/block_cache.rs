//! Decoded basic blocks of 64-bit code, so the run loop fetches, translates and validates code
//! once per block instead of once per instruction.
//!
//! A block is a run of instructions decoded from one guest-physical page, ending after the
//! first instruction that may transfer control other than a conditional branch (a taken one
//! leaves the block at run time), after an instruction that crosses into the next page (the
//! only one whose bytes may come from a second page: see "Blocks across a page" below), before
//! one that would exceed the block's byte budget, or at [`MAX_INSNS`] instructions. It is
//! keyed by its linear start address (the decode depends on the IP for RIP-relative operands
//! and branch targets) and holds the exact bytes it was decoded from.
//!
//! # Why blocks are validated by their bytes
//! A hit requires the bytes now in guest RAM at the block's *current* translation to equal the
//! bytes it was decoded from ([`GuestMemory::code_matches`]). That one comparison per block
//! covers every way code can change: this CPU's own stores, stores by other vCPUs, device DMA
//! through vm-memory (which no CPU sees), remapped pages and process switches (the
//! translation is redone on every block entry, through the TLB). A page write-generation
//! scheme would need a hook in every writer, DMA included. Within a block, the run loop stops
//! after any store of this CPU to the block's page (self-modifying code takes effect at the
//! next instruction, as on hardware); stores of other vCPUs take effect at the next block
//! entry, which hardware also allows for cross-modifying code without serialisation.
//!
//! A block found intact is not compared again until its validation generation ends
//! (`Cpu::code_gen`: each run slice, event delivery, serializing instruction, or store of this
//! CPU to a page holding a block validated in the generation), which keeps the comparison off
//! the path of loops.
//!
//! # Blocks across a page
//! An instruction that starts on a page and ends on the next one ends its block. The block's
//! bytes then come from two guest-physical pages: the second page is translated (without
//! faulting) whenever the block is validated outside its generation, both parts are compared,
//! and the run loop watches and marks both pages, so a write into either ends the generation
//! and a store of the block itself into either ends the block (`Cpu::code_page2`). If the
//! second page does not translate, the block is built again without that instruction, which
//! then runs on the single-instruction path and faults there, after the ones before it
//! retired. (Linux's hot paths have a few such instructions: each used to cost a return to
//! the run loop and a decode on every pass.)

use iced_x86::{Decoder, DecoderError, DecoderOptions, FlowControl, Instruction, Mnemonic};

use crate::fast::{lower, Fast};
use crate::memory::GuestMemory;

/// Blocks in the table by default: 2^16 (about 8 MiB per vCPU), in sets of [`WAYS`].
const SLOT_BITS: u32 = 16;
/// Blocks per set. With one (a direct-mapped table of the same size), a Linux guest's disk
/// I/O path lost ~40 blocks per request to collisions, each decoded again and never run
/// often enough to be translated. With two, a set overflows when three hot blocks meet: among
/// the ~7,000 blocks of a sequential-write loop about 60 sets did, and their ~130 blocks were
/// rebuilt and interpreted (then translated again) ~800 times a second each. With four, a set
/// overflows only when five meet (expected: one or two sets of such a working set).
const WAYS: usize = 4;
/// Most instructions in one block.
pub(crate) const MAX_INSNS: usize = 32;
/// Most code bytes in one block on its first page (also the fetch window when a block is
/// built).
pub(crate) const MAX_BYTES: usize = 256;
/// Most bytes of a block on the next page: an instruction that crosses into it (at most 15
/// bytes) has at least one byte on the first.
pub(crate) const MAX_INSN_TAIL: usize = 14;

/// How many bytes from linear `ip` to the end of its page (physical and linear pages share
/// their offsets).
pub(crate) fn first_page_bytes(ip: u64) -> usize {
    (crate::memory::PAGE_SIZE - ip % crate::memory::PAGE_SIZE) as usize
}

/// One instruction of a block as the run loop sees it: its pre-decoded form, or
/// [`Fast::Generic`] for the next entry of the block's [`Generic`] instructions. Kept small (48
/// bytes): a system call's path through a kernel runs tens of thousands of distinct
/// instructions, and with the decoder's `Instruction` in every entry (96 bytes) the run loop
/// spent much of such a path waiting for its operations to come in from memory.
#[derive(Clone, Copy)]
pub(crate) struct Op {
    /// The pre-decoded form, or [`Fast::Generic`].
    pub(crate) fast: Fast,
    /// Address of the next instruction.
    pub(crate) next_ip: u64,
}

/// An instruction of a block that runs on the generic path, with what the dispatcher needs
/// looked up once.
#[derive(Clone, Copy)]
pub(crate) struct Generic {
    pub(crate) instr: Instruction,
    pub(crate) mnemonic: Mnemonic,
    /// Atomic on its memory operand (`lock` prefix, or XCHG with memory).
    pub(crate) locked: bool,
}

/// The instructions of a block, in order: `ops` has one entry per instruction, and the ones
/// that are [`Fast::Generic`] take the entries of `generic` in turn.
#[derive(Default)]
pub(crate) struct Code {
    pub(crate) ops: Box<[Op]>,
    pub(crate) generic: Box<[Generic]>,
    /// Runs since it was built (saturating), for the translator's threshold.
    pub(crate) runs: u32,
    /// Its translation (`crate::jit`), once compiled.
    pub(crate) jit: Option<crate::jit::Compiled>,
    /// The guest-physical address of the page its last instruction crosses into, where it was
    /// last validated (`None` for a block within one page).
    pub(crate) page2: Option<u64>,
}

/// What a block validation holds for: the validation generation (`Cpu::code_gen`), the TLB
/// epoch and the privilege of the fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Stamp {
    pub(crate) gen: u64,
    pub(crate) epoch: u64,
    pub(crate) user: bool,
}

/// What the run loop checks on every block entry, kept apart from the decoded instructions
/// so a set's tags share one cache line.
#[derive(Clone, Copy, Default)]
struct Tag {
    /// Linear address of the first instruction; meaningful only if the slot holds a block or
    /// a `step_only` mark.
    ip: u64,
    /// Generation of the last validation (0: never validated).
    gen: u64,
    /// TLB epoch of the last validation, shifted left once, with the privilege (user) in bit 0.
    epoch_user: u64,
    /// Guest-physical address of the first byte when it was last validated (or, for a
    /// `step_only` mark, where no block could be formed).
    checked_pa: u64,
}

impl Tag {
    /// Whether the last validation holds for `stamp`. With the same generation, TLB epoch and
    /// privilege, `checked_pa` is still the translation of `ip` (a TLB may keep a translation
    /// until it is flushed), and the bytes there are still the block's.
    #[inline]
    fn holds(&self, stamp: Stamp) -> bool {
        self.gen == stamp.gen && self.epoch_user == (stamp.epoch << 1 | stamp.user as u64)
    }

    fn record(&mut self, stamp: Stamp, pa: u64) {
        self.gen = stamp.gen;
        self.epoch_user = stamp.epoch << 1 | stamp.user as u64;
        self.checked_pa = pa;
    }
}

/// The tags of one set, in two cache lines (aligned so they are the two of one 128-byte
/// block, which the hardware prefetcher fetches together).
#[derive(Clone, Copy, Default)]
#[repr(align(128))]
struct Set([Tag; WAYS]);

const _: () = assert!(std::mem::size_of::<Set>() == 128);

/// One decoded block (its tag apart, in the set with its neighbours').
#[derive(Default)]
pub(crate) struct Block {
    /// The code bytes the instructions were decoded from.
    bytes: Box<[u8]>,
    /// The decoded instructions.
    code: Code,
    /// No block could be formed at the tag's `ip` from guest-physical `checked_pa` (its first
    /// instruction crosses the page or does not decode): while `ip` still translates there,
    /// the run loop steps that instruction without trying again. Always safe, whatever the
    /// bytes there become: the single-instruction path handles every instruction.
    step_only: bool,
}

impl Block {
    /// Whether the slot holds a block or a `step_only` mark (its tag's `ip` is meaningful).
    fn used(&self) -> bool {
        !self.code.ops.is_empty() || self.step_only
    }
}

/// Set-associative cache of decoded 64-bit blocks ([`WAYS`] per set). A block's slot is
/// `set * WAYS + way`; its tag is in `sets`, the rest in `blocks`. The tables are allocated at
/// the first block built, so a CPU that runs no 64-bit code does not pay for them.
pub(crate) struct BlockCache {
    /// Empty until the first build, then `1 << bits` slots' tags in sets.
    sets: Box<[Set]>,
    /// Empty until the first build, then `1 << bits` slots.
    blocks: Box<[Block]>,
    bits: u32,
}

impl Default for BlockCache {
    fn default() -> Self {
        Self::with_slot_bits(SLOT_BITS)
    }
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockCache")
    }
}

impl BlockCache {
    /// An empty cache of `1 << bits` slots (`bits` clamped to 4..=20). Any size runs the same
    /// code; a smaller table only rebuilds blocks more often.
    pub(crate) fn with_slot_bits(bits: u32) -> Self {
        Self {
            sets: Box::default(),
            blocks: Box::default(),
            bits: bits.clamp(4, 20),
        }
    }

    /// log2 of the number of slots.
    pub(crate) fn slot_bits(&self) -> u32 {
        self.bits
    }

    /// The set of `ip`: a multiplicative hash (kernel code spread over megabytes maps evenly).
    #[inline]
    fn set(&self, ip: u64) -> usize {
        let set_bits = self.bits - WAYS.trailing_zeros();
        (ip.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - set_bits)) as usize
    }

    fn tag(&self, i: usize) -> Option<&Tag> {
        self.sets.get(i / WAYS).map(|s| &s.0[i % WAYS])
    }

    fn tag_mut(&mut self, i: usize) -> Option<&mut Tag> {
        self.sets.get_mut(i / WAYS).map(|s| &mut s.0[i % WAYS])
    }

    /// The slot holding a block or a `step_only` mark at `ip`, if any.
    fn find(&self, ip: u64) -> Option<usize> {
        let set = self.set(ip);
        let tags = &self.sets.get(set)?.0;
        (0..WAYS)
            .map(|w| set * WAYS + w)
            .find(|&i| tags[i % WAYS].ip == ip && self.blocks.get(i).is_some_and(Block::used))
    }

    /// The slot of a valid block starting at linear `ip`, whose code now sits at
    /// guest-physical `pa`, if the bytes there are still the ones it was decoded from. A block
    /// already validated at `pa` in the generation of `stamp` is not compared again (see
    /// `Cpu::code_gen` for when a generation ends); a hit records `stamp` for
    /// [`BlockCache::validated`].
    /// A block that crosses into the next page needs `pa2`, where that page translates now
    /// (`None`: it does not, and the block is not found).
    pub(crate) fn lookup(
        &mut self,
        ip: u64,
        pa: u64,
        pa2: Option<u64>,
        stamp: Stamp,
        mem: &dyn GuestMemory,
    ) -> Option<usize> {
        let i = self.find(ip)?;
        let b = self.blocks.get(i)?;
        if b.code.ops.is_empty() {
            return None;
        }
        let (on1, on2) = b.bytes.split_at(first_page_bytes(ip).min(b.bytes.len()));
        let page2 = if on2.is_empty() { None } else { Some(pa2?) };
        let t = self.tag(i)?;
        let intact = (t.gen == stamp.gen && t.checked_pa == pa && b.code.page2 == page2)
            || (mem.code_matches(pa, on1) && page2.is_none_or(|p| mem.code_matches(p, on2)));
        if !intact {
            return None;
        }
        self.tag_mut(i)?.record(stamp, pa);
        self.blocks.get_mut(i)?.code.page2 = page2;
        Some(i)
    }

    /// Whether the block at `ip`, if there is one, crosses into the next page.
    pub(crate) fn crosses(&self, ip: u64) -> bool {
        self.find(ip)
            .and_then(|i| self.blocks.get(i))
            .is_some_and(|b| b.bytes.len() > first_page_bytes(ip))
    }

    /// Where the block in slot `i` was last validated on the page its last instruction
    /// crosses into, if it crosses.
    pub(crate) fn page2(&self, i: usize) -> Option<u64> {
        self.blocks.get(i).and_then(|b| b.code.page2)
    }

    /// The slot and code address of a block starting at `ip` already validated under `stamp`
    /// (same generation, TLB epoch and privilege): it runs without a new translation. Reads
    /// only the set's tags (a `step_only` mark is never validated).
    #[inline]
    pub(crate) fn validated(&self, ip: u64, stamp: Stamp) -> Option<(usize, u64)> {
        let set = self.set(ip);
        let tags = &self.sets.get(set)?.0;
        let way = tags.iter().position(|t| t.ip == ip && t.holds(stamp))?;
        Some((set * WAYS + way, tags[way].checked_pa))
    }

    /// Whether the last [`BlockCache::build_at`] at `ip`, from guest-physical `pa`, formed no
    /// block (and the slot has not been reused since). Another physical page at the same
    /// address (another process, a remapped page) is tried again.
    #[inline]
    pub(crate) fn steps_at(&self, ip: u64, pa: u64) -> bool {
        self.find(ip).is_some_and(|i| {
            self.blocks.get(i).is_some_and(|b| b.step_only)
                && self.tag(i).is_some_and(|t| t.checked_pa == pa)
        })
    }

    /// [`BlockCache::build`] from the bytes at guest-physical `pa` (and, past the page's end,
    /// at `pa2`, the next page's), just read under `stamp`: the block counts as validated
    /// there. If no block forms, `pa` is remembered (see [`BlockCache::steps_at`]).
    pub(crate) fn build_at(
        &mut self,
        ip: u64,
        pa: u64,
        pa2: Option<u64>,
        code: &[u8],
        fast: bool,
        stamp: Stamp,
    ) -> Option<usize> {
        let built = self.build(ip, code, fast);
        match built {
            Some(i) => {
                self.tag_mut(i)?.record(stamp, pa);
                let b = self.blocks.get_mut(i)?;
                b.code.page2 = pa2.filter(|_| b.bytes.len() > first_page_bytes(ip));
            }
            None => {
                if let Some(i) = self.find(ip) {
                    self.tag_mut(i)?.checked_pa = pa;
                }
            }
        }
        built
    }

    /// The slot a new block at `ip` goes to: the one already holding `ip`, else an unused
    /// one, else the one validated in the oldest generation.
    fn victim(&self, ip: u64) -> usize {
        let set = self.set(ip);
        let base = set * WAYS;
        if let Some(i) = self.find(ip) {
            return i;
        }
        let Some(tags) = self.sets.get(set).map(|s| &s.0) else {
            return base;
        };
        let way = (0..WAYS)
            .find(|&w| !self.blocks.get(base + w).is_some_and(Block::used))
            .or_else(|| (0..WAYS).min_by_key(|&w| tags[w].gen))
            .unwrap_or(0);
        base + way
    }

    /// Decode a block of 64-bit code starting at linear `ip` from `code` (the RAM bytes from
    /// the block's physical start: within its page, or on to at most [`MAX_INSN_TAIL`] bytes of
    /// the next one). No instruction starts on the next page. Returns its slot, or `None` if
    /// not even the first instruction decodes completely within `code` (the caller then runs
    /// it on the single-instruction path, which handles page-crossing and invalid
    /// instructions). The block is not validated anywhere yet (see [`BlockCache::build_at`]).
    /// `fast`: lower instructions to their pre-decoded forms (`crate::fast`).
    pub(crate) fn build(&mut self, ip: u64, code: &[u8], fast: bool) -> Option<usize> {
        if self.sets.is_empty() {
            let slots = 1usize << self.bits;
            self.sets = vec![Set::default(); slots / WAYS].into_boxed_slice();
            self.blocks = (0..slots).map(|_| Block::default()).collect();
        }
        let i = self.victim(ip);
        *self.tag_mut(i)? = Tag {
            ip,
            ..Tag::default()
        };
        let b = self.blocks.get_mut(i)?;
        b.code = Code::default();
        b.bytes = Box::default();
        b.step_only = false;
        let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
        let mut used = 0usize;
        let mut ops = Vec::new();
        let mut generic = Vec::new();
        let first = first_page_bytes(ip);
        while ops.len() < MAX_INSNS && used < first && decoder.can_decode() {
            let instr = decoder.decode();
            if decoder.last_error() != DecoderError::None || instr.is_invalid() {
                break;
            }
            used += instr.len();
            let form = if fast { lower(&instr) } else { Fast::Generic };
            if form == Fast::Generic {
                generic.push(Generic {
                    instr,
                    mnemonic: instr.mnemonic(),
                    locked: crate::exec::is_locked(&instr),
                });
            }
            ops.push(Op {
                fast: form,
                next_ip: instr.next_ip(),
            });
            // A conditional branch does not end the block: when taken, the run loop leaves
            // the block there (RIP is not the next instruction's).
            if !matches!(
                instr.flow_control(),
                FlowControl::Next | FlowControl::ConditionalBranch
            ) {
                break;
            }
        }
        if ops.is_empty() {
            b.step_only = true;
            return None;
        }
        b.bytes = code.get(..used)?.into();
        b.code = Code {
            ops: ops.into_boxed_slice(),
            generic: generic.into_boxed_slice(),
            runs: 0,
            jit: None,
            page2: None,
        };
        Some(i)
    }

    /// The block in slot `i`.
    #[cfg(test)]
    fn block(&self, i: usize) -> &Block {
        &self.blocks[i]
    }

    /// Move the instructions of the block in slot `i` out to run them (the slot reads as
    /// empty until [`BlockCache::put_code`] returns them).
    pub(crate) fn take_code(&mut self, i: usize) -> Code {
        self.blocks
            .get_mut(i)
            .map(|b| std::mem::take(&mut b.code))
            .unwrap_or_default()
    }

    /// Give back what [`BlockCache::take_code`] took.
    pub(crate) fn put_code(&mut self, i: usize, code: Code) {
        if let Some(b) = self.blocks.get_mut(i) {
            b.code = code;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::FlatMemory;

    fn st(gen: u64) -> Stamp {
        Stamp {
            gen,
            epoch: 0,
            user: false,
        }
    }

    #[test]
    fn block_ends_after_the_first_control_transfer() {
        // mov eax,1; add eax,eax; jmp $; nop
        let code = [0xb8, 1, 0, 0, 0, 0x01, 0xc0, 0xeb, 0xfe, 0x90];
        let mut c = BlockCache::default();
        let i = c.build(0x1000, &code, true).unwrap();
        assert_eq!(c.block(i).code.ops.len(), 3);
        assert_eq!(&c.block(i).bytes[..], &code[..9]);
    }

    #[test]
    fn block_continues_past_a_conditional_branch() {
        // cmp eax,1; je +2; inc eax; ret
        let code = [0x83, 0xf8, 1, 0x74, 2, 0xff, 0xc0, 0xc3];
        let mut c = BlockCache::default();
        let i = c.build(0x1000, &code, true).unwrap();
        assert_eq!(c.block(i).code.ops.len(), 4);
    }

    #[test]
    fn a_block_ends_with_an_instruction_across_its_page_and_is_validated_on_both() {
        // At 0x40_0ffc: nop; nop; mov eax, 0x44332211 (two bytes on the first page, three on
        // the second); then, on the second page, a nop that must not join the block.
        let ip = 0x40_0ffc;
        let code = [0x90, 0x90, 0xb8, 0x11, 0x22, 0x33, 0x44, 0x90];
        let mut m = FlatMemory::new(0x10000);
        m.load(0x2ffc, &code[..4]).unwrap();
        m.load(0x5000, &code[4..]).unwrap();
        let mut c = BlockCache::default();
        let i = c
            .build_at(ip, 0x2ffc, Some(0x5000), &code, true, st(1))
            .unwrap();
        assert_eq!(c.block(i).code.ops.len(), 3);
        assert_eq!(c.block(i).bytes.len(), 7);
        assert!(c.crosses(ip) && !c.crosses(ip + 1));
        assert_eq!(c.page2(i), Some(0x5000));
        // Found only with the second page, and only where its bytes are the block's.
        assert_eq!(c.lookup(ip, 0x2ffc, None, st(2), &m), None);
        assert_eq!(c.lookup(ip, 0x2ffc, Some(0x6000), st(2), &m), None);
        assert_eq!(c.lookup(ip, 0x2ffc, Some(0x5000), st(2), &m), Some(i));
        m.load(0x6000, &code[4..]).unwrap();
        assert_eq!(c.lookup(ip, 0x2ffc, Some(0x6000), st(3), &m), Some(i));
        assert_eq!(c.page2(i), Some(0x6000), "where it was validated last");
        // A change on either page.
        m.load(0x6002, &[0x45]).unwrap();
        assert_eq!(c.lookup(ip, 0x2ffc, Some(0x6000), st(4), &m), None);
        m.load(0x6002, &[0x44]).unwrap();
        m.load(0x2ffd, &[0x91]).unwrap();
        assert_eq!(c.lookup(ip, 0x2ffc, Some(0x6000), st(5), &m), None);
        // Without the second page's bytes, the block stops before the crossing instruction.
        let i = c
            .build_at(ip, 0x2ffc, None, &code[..4], true, st(6))
            .unwrap();
        assert_eq!(c.block(i).code.ops.len(), 2);
        assert!(!c.crosses(ip));
        assert_eq!(c.page2(i), None);
        assert_eq!(
            c.lookup(ip, 0x2ffc, None, st(7), &m),
            None,
            "0x2ffd changed"
        );
        m.load(0x2ffd, &[0x90]).unwrap();
        assert_eq!(c.lookup(ip, 0x2ffc, None, st(7), &m), Some(i));
    }

    #[test]
    fn block_stops_before_an_instruction_cut_off_by_the_window() {
        // nop; then the first two bytes of mov eax, imm32.
        let mut c = BlockCache::default();
        let i = c.build(0x1000, &[0x90, 0xb8, 1], true).unwrap();
        assert_eq!(c.block(i).code.ops.len(), 1);
        assert!(c.build(0x2000, &[0xb8, 1], true).is_none());
        assert!(
            c.build(0x3000, &[0x0f, 0xff], true).is_none(),
            "invalid first"
        );
        // Where no block formed, the run loop steps without building again, as long as the
        // address translates to the same physical address; a block built there later (another
        // physical page, or the slot reused) ends that.
        assert!(c
            .build_at(0x2000, 0x7000, None, &[0xb8, 1], true, st(1))
            .is_none());
        assert!(c.steps_at(0x2000, 0x7000));
        assert!(!c.steps_at(0x2000, 0x8000), "another physical page");
        assert!(!c.steps_at(0x1000, 0x7000) && !c.steps_at(0x4000, 0x7000));
        c.build_at(0x2000, 0x8000, None, &[0xb8, 1, 0, 0, 0], true, st(1))
            .unwrap();
        assert!(!c.steps_at(0x2000, 0x7000) && !c.steps_at(0x2000, 0x8000));
    }

    #[test]
    fn hit_requires_the_same_ip_and_bytes_at_the_current_translation() {
        let code = [0x90, 0x90, 0xc3];
        let mut m = FlatMemory::new(0x4000);
        m.load(0x2000, &code).unwrap();
        let mut c = BlockCache::default();
        let i = c.build(0x40_0000, &code, true).unwrap();
        assert_eq!(c.lookup(0x40_0000, 0x2000, None, st(1), &m), Some(i));
        assert_eq!(
            c.lookup(0x40_1000, 0x2000, None, st(2), &m),
            None,
            "other ip"
        );
        assert_eq!(
            c.lookup(0x40_0000, 0x3000, None, st(3), &m),
            None,
            "other bytes there"
        );
        m.load(0x2001, &[0xcc]).unwrap();
        assert_eq!(
            c.lookup(0x40_0000, 0x2000, None, st(4), &m),
            None,
            "bytes changed"
        );
        assert_eq!(
            c.lookup(0x40_0000, 0x10_0000, None, st(5), &m),
            None,
            "not RAM"
        );
    }

    #[test]
    fn a_block_validated_in_a_generation_is_not_compared_again_until_the_next() {
        let code = [0x90, 0x90, 0xc3];
        let mut m = FlatMemory::new(0x4000);
        m.load(0x2000, &code).unwrap();
        let mut c = BlockCache::default();
        let i = c.build(0x40_0000, &code, true).unwrap();
        assert_eq!(c.lookup(0x40_0000, 0x2000, None, st(7), &m), Some(i));
        m.load(0x2001, &[0xcc]).unwrap();
        assert_eq!(
            c.lookup(0x40_0000, 0x2000, None, st(7), &m),
            Some(i),
            "same generation"
        );
        assert_eq!(
            c.lookup(0x40_0000, 0x2000, None, st(8), &m),
            None,
            "next generation"
        );
        m.load(0x2001, &[0x90]).unwrap();
        assert_eq!(
            c.lookup(0x40_0000, 0x3000, None, st(8), &m),
            None,
            "other frame, compared"
        );
        assert_eq!(c.lookup(0x40_0000, 0x2000, None, st(8), &m), Some(i));
        assert_eq!(c.validated(0x40_0000, st(8)), Some((i, 0x2000)));
        let other_epoch = Stamp { epoch: 1, ..st(8) };
        let user = Stamp {
            user: true,
            ..st(8)
        };
        for s in [st(9), other_epoch, user] {
            assert_eq!(c.validated(0x40_0000, s), None, "{s:?}");
        }
        assert_eq!(c.validated(0x40_1000, st(8)), None, "other ip");
    }

    #[test]
    fn a_built_block_is_validated_where_its_bytes_were_read() {
        let mut c = BlockCache::default();
        let i = c
            .build_at(0x40_0000, 0x2000, None, &[0x90, 0xc3], true, st(3))
            .unwrap();
        assert_eq!(c.validated(0x40_0000, st(3)), Some((i, 0x2000)));
        assert_eq!(c.validated(0x40_0000, st(4)), None);
        let i = c.build(0x50_0000, &[0x90, 0xc3], true).unwrap();
        assert!(c.block(i).used());
        assert_eq!(
            c.validated(0x50_0000, st(3)),
            None,
            "plain build: not validated"
        );
    }

    #[test]
    fn a_set_keeps_its_ways_and_evicts_the_block_validated_longest_ago() {
        let code = [0x90, 0xc3];
        let mut m = FlatMemory::new(0x4000);
        m.load(0x2000, &code).unwrap();
        let mut c = BlockCache::with_slot_bits(4);
        // WAYS + 1 addresses of one set.
        let target = c.set(0x1000);
        let ips: Vec<u64> = (1..)
            .map(|k| 0x1000 * k)
            .filter(|&ip| c.set(ip) == target)
            .take(WAYS + 1)
            .collect();
        let slots: Vec<usize> = (0..WAYS)
            .map(|k| {
                c.build_at(ips[k], 0x2000, None, &code, true, st(k as u64 + 1))
                    .unwrap()
            })
            .collect();
        let distinct: std::collections::HashSet<_> = slots.iter().collect();
        assert_eq!(distinct.len(), WAYS, "one way each");
        // All but `ips[1]` validated again later: it is the one validated longest ago.
        let late = st(WAYS as u64 + 1);
        for k in (0..WAYS).filter(|&k| k != 1) {
            assert_eq!(
                c.lookup(ips[k], 0x2000, None, late, &m),
                Some(slots[k]),
                "all kept"
            );
        }
        let newer = st(WAYS as u64 + 2);
        assert_eq!(
            c.build_at(ips[WAYS], 0x2000, None, &code, true, newer),
            Some(slots[1])
        );
        assert_eq!(c.lookup(ips[1], 0x2000, None, newer, &m), None);
        assert_eq!(c.lookup(ips[0], 0x2000, None, newer, &m), Some(slots[0]));
        // Building again at an address already held reuses its slot (never two entries).
        let again = st(WAYS as u64 + 3);
        assert_eq!(
            c.build_at(ips[0], 0x2000, None, &code, true, again),
            Some(slots[0])
        );
        assert_eq!(c.lookup(ips[WAYS], 0x2000, None, again, &m), Some(slots[1]));
        // A step-only mark takes a slot of its own too, and a block built there replaces it.
        let d = c.build_at(0x1000 * 40, 0x7000, None, &[0xb8, 1], true, st(6));
        assert!(d.is_none());
        assert!(c.steps_at(0x1000 * 40, 0x7000));
    }
}
