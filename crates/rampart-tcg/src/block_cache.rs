//! Decoded basic blocks of 64-bit code, so the run loop fetches, translates and validates code
//! once per block instead of once per instruction.
//!
//! A block is a run of instructions decoded from one guest-physical page, ending after the
//! first instruction that may transfer control other than a conditional branch (a taken one
//! leaves the block at run time), before an
//! instruction that would cross the page (or the block's byte budget), or at
//! [`MAX_INSNS`] instructions. It is keyed by its linear start address (the decode depends on
//! the IP for RIP-relative operands and branch targets) and holds the exact bytes it was
//! decoded from.
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

use iced_x86::{Decoder, DecoderError, DecoderOptions, FlowControl, Instruction, Mnemonic};

use crate::fast::{lower, Fast};
use crate::memory::GuestMemory;

/// Blocks in the direct-mapped table by default: 2^16 (about 6 MiB per vCPU).
const SLOT_BITS: u32 = 16;
/// Most instructions in one block.
pub(crate) const MAX_INSNS: usize = 32;
/// Most code bytes in one block (also the fetch window when a block is built).
pub(crate) const MAX_BYTES: usize = 256;

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
}

/// What a block validation holds for: the validation generation (`Cpu::code_gen`), the TLB
/// epoch and the privilege of the fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Stamp {
    pub(crate) gen: u64,
    pub(crate) epoch: u64,
    pub(crate) user: bool,
}

/// One decoded block.
#[derive(Default)]
pub(crate) struct Block {
    /// Linear address of the first instruction; meaningful only if `code.ops` is non-empty.
    ip: u64,
    /// What the bytes at `checked_pa` were last found equal to `bytes` under (generation 0:
    /// never). With the same generation, TLB epoch and privilege, `checked_pa` is still the
    /// translation of `ip` (a TLB may keep a translation until it is flushed).
    checked: Stamp,
    /// Guest-physical address of the first byte when it was last validated.
    checked_pa: u64,
    /// The code bytes the instructions were decoded from.
    bytes: Box<[u8]>,
    /// The decoded instructions.
    code: Code,
    /// No block could be formed at `ip` from guest-physical `checked_pa` (its first instruction
    /// crosses the page or does not decode): while `ip` still translates there, the run loop
    /// steps that instruction without trying again. Always safe, whatever the bytes there
    /// become: the single-instruction path handles every instruction.
    step_only: bool,
}

/// Direct-mapped cache of decoded 64-bit blocks. The table is allocated at the first block
/// built, so a CPU that runs no 64-bit code does not pay for it.
pub(crate) struct BlockCache {
    /// Empty until the first build, then `1 << bits` slots.
    slots: Box<[Block]>,
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
            slots: Box::default(),
            bits: bits.clamp(4, 20),
        }
    }

    /// log2 of the number of slots.
    pub(crate) fn slot_bits(&self) -> u32 {
        self.bits
    }

    /// The slot of `ip`: a multiplicative hash (kernel code spread over megabytes maps evenly).
    #[inline]
    fn slot(&self, ip: u64) -> usize {
        (ip.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - self.bits)) as usize
    }

    /// The slot of a valid block starting at linear `ip`, whose code now sits at
    /// guest-physical `pa`, if the bytes there are still the ones it was decoded from. A block
    /// already validated at `pa` in the generation of `stamp` is not compared again (see
    /// `Cpu::code_gen` for when a generation ends); a hit records `stamp` for
    /// [`BlockCache::validated`].
    pub(crate) fn lookup(
        &mut self,
        ip: u64,
        pa: u64,
        stamp: Stamp,
        mem: &dyn GuestMemory,
    ) -> Option<usize> {
        let i = self.slot(ip);
        let b = self.slots.get_mut(i)?;
        if b.ip != ip || b.code.ops.is_empty() {
            return None;
        }
        let intact =
            (b.checked.gen == stamp.gen && b.checked_pa == pa) || mem.code_matches(pa, &b.bytes);
        if !intact {
            return None;
        }
        b.checked = stamp;
        b.checked_pa = pa;
        Some(i)
    }

    /// The slot and code address of a block starting at `ip` already validated under `stamp`
    /// (same generation, TLB epoch and privilege): it runs without a new translation.
    #[inline]
    pub(crate) fn validated(&self, ip: u64, stamp: Stamp) -> Option<(usize, u64)> {
        let i = self.slot(ip);
        let b = self.slots.get(i)?;
        (b.ip == ip && !b.code.ops.is_empty() && b.checked == stamp).then_some((i, b.checked_pa))
    }

    /// Whether the last [`BlockCache::build_at`] at `ip`, from guest-physical `pa`, formed no
    /// block (and the slot has not been reused since). Another physical page at the same
    /// address (another process, a remapped page) is tried again.
    #[inline]
    pub(crate) fn steps_at(&self, ip: u64, pa: u64) -> bool {
        self.slots
            .get(self.slot(ip))
            .is_some_and(|b| b.ip == ip && b.step_only && b.checked_pa == pa)
    }

    /// [`BlockCache::build`] from the bytes at guest-physical `pa`, remembering `pa` if no
    /// block forms (see [`BlockCache::steps_at`]).
    pub(crate) fn build_at(&mut self, ip: u64, pa: u64, code: &[u8], fast: bool) -> Option<usize> {
        let built = self.build(ip, code, fast);
        if built.is_none() {
            if let Some(b) = self.slots.get_mut(self.slot(ip)) {
                b.checked_pa = pa;
            }
        }
        built
    }

    /// Decode a block of 64-bit code starting at linear `ip` from `code` (the RAM bytes from
    /// the block's physical start, within its page). Returns its slot, or `None` if not even
    /// the first instruction decodes completely within `code` (the caller then runs it on the
    /// single-instruction path, which handles page-crossing and invalid instructions).
    /// `fast`: lower instructions to their pre-decoded forms (`crate::fast`).
    pub(crate) fn build(&mut self, ip: u64, code: &[u8], fast: bool) -> Option<usize> {
        let i = self.slot(ip);
        if self.slots.is_empty() {
            self.slots = (0..1usize << self.bits).map(|_| Block::default()).collect();
        }
        let b = self.slots.get_mut(i)?;
        b.ip = ip;
        b.checked = Stamp::default();
        b.code = Code::default();
        b.bytes = Box::default();
        b.step_only = false;
        let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
        let mut used = 0usize;
        let mut ops = Vec::new();
        let mut generic = Vec::new();
        while ops.len() < MAX_INSNS && decoder.can_decode() {
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
        };
        Some(i)
    }

    /// The block in slot `i`.
    #[cfg(test)]
    fn block(&self, i: usize) -> &Block {
        &self.slots[i]
    }

    /// Move the instructions of the block in slot `i` out to run them (the slot reads as
    /// empty until [`BlockCache::put_code`] returns them).
    pub(crate) fn take_code(&mut self, i: usize) -> Code {
        self.slots
            .get_mut(i)
            .map(|b| std::mem::take(&mut b.code))
            .unwrap_or_default()
    }

    /// Give back what [`BlockCache::take_code`] took.
    pub(crate) fn put_code(&mut self, i: usize, code: Code) {
        if let Some(b) = self.slots.get_mut(i) {
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
        assert!(c.build_at(0x2000, 0x7000, &[0xb8, 1], true).is_none());
        assert!(c.steps_at(0x2000, 0x7000));
        assert!(!c.steps_at(0x2000, 0x8000), "another physical page");
        assert!(!c.steps_at(0x1000, 0x7000) && !c.steps_at(0x4000, 0x7000));
        c.build_at(0x2000, 0x8000, &[0xb8, 1, 0, 0, 0], true)
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
        assert_eq!(c.lookup(0x40_0000, 0x2000, st(1), &m), Some(i));
        assert_eq!(c.lookup(0x40_1000, 0x2000, st(2), &m), None, "other ip");
        assert_eq!(
            c.lookup(0x40_0000, 0x3000, st(3), &m),
            None,
            "other bytes there"
        );
        m.load(0x2001, &[0xcc]).unwrap();
        assert_eq!(
            c.lookup(0x40_0000, 0x2000, st(4), &m),
            None,
            "bytes changed"
        );
        assert_eq!(c.lookup(0x40_0000, 0x10_0000, st(5), &m), None, "not RAM");
    }

    #[test]
    fn a_block_validated_in_a_generation_is_not_compared_again_until_the_next() {
        let code = [0x90, 0x90, 0xc3];
        let mut m = FlatMemory::new(0x4000);
        m.load(0x2000, &code).unwrap();
        let mut c = BlockCache::default();
        let i = c.build(0x40_0000, &code, true).unwrap();
        assert_eq!(c.lookup(0x40_0000, 0x2000, st(7), &m), Some(i));
        m.load(0x2001, &[0xcc]).unwrap();
        assert_eq!(
            c.lookup(0x40_0000, 0x2000, st(7), &m),
            Some(i),
            "same generation"
        );
        assert_eq!(
            c.lookup(0x40_0000, 0x2000, st(8), &m),
            None,
            "next generation"
        );
        m.load(0x2001, &[0x90]).unwrap();
        assert_eq!(
            c.lookup(0x40_0000, 0x3000, st(8), &m),
            None,
            "other frame, compared"
        );
        assert_eq!(c.lookup(0x40_0000, 0x2000, st(8), &m), Some(i));
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
}
