//! Which guest-physical pages hold code a CPU has validated, so that writes by other agents
//! (device DMA, the VMM's own writes into guest RAM) into them are noticed without comparing
//! every decoded block again after each interrupt.
//!
//! # Why
//! A decoded block is revalidated by comparing its bytes once per *validation generation*
//! (`Cpu::code_gen`). Generations used to end at every run slice and event delivery, because
//! a device may have written code meanwhile and nothing told the CPU. Under disk I/O that is
//! once or twice per request, and a Linux request path runs ~1,500 distinct blocks: their
//! comparisons and table lookups were a fifth of the vCPU's time (`bench/blk`).
//!
//! # How
//! A CPU that is about to compare (or decode) a block's bytes on page *p* first sets bit *p*
//! ([`CodeWatch::watch`]). Whoever writes guest RAM behind the CPUs' backs reports the range
//! afterwards ([`CodeWatch::wrote`]): any watched page in it is unwatched and the change
//! count goes up. A CPU with no other CPU beside it (`Cpu::set_sole_cpu`) then ends its
//! generation at a run slice or event delivery only if the count moved since it last looked.
//!
//! # Why no write is missed
//! The CPU sets the bit with a sequentially consistent read-modify-write, then reads the
//! bytes; the writer writes the bytes, then (after a sequentially consistent fence) reads the
//! bit. In any interleaving one of them sees the other: either the CPU compares the new bytes,
//! or the writer sees the bit and counts a change, which the CPU reads at its next run slice
//! or event delivery (a device's interrupt is delivered after it wrote). A bit found already
//! set needs no new read-modify-write: if a writer cleared it meanwhile, that writer also
//! counted a change the CPU has not seen yet. A page the bitmap does not cover cannot be
//! watched, and the CPU then ends its generations as before.

use std::sync::atomic::{fence, AtomicU64, Ordering};

use crate::memory::PAGE_SIZE;

/// Largest guest-physical address range the bitmap covers (1 TiB: 32 MiB of bits).
const MAX_COVERED: u64 = 1 << 40;

/// The watched pages of one guest's memory and the count of writes into them. Shared by the
/// vCPUs and every writer of guest RAM outside them.
#[derive(Debug)]
pub struct CodeWatch {
    /// Bit `p % 64` of word `p / 64`: page `p` holds code a CPU validated.
    bits: Box<[AtomicU64]>,
    /// Writes reported into watched pages.
    changes: AtomicU64,
}

impl CodeWatch {
    /// A watch covering guest-physical addresses below `end` (at most 1 TiB).
    pub fn new(end: u64) -> Self {
        let pages = end.min(MAX_COVERED).div_ceil(PAGE_SIZE);
        let words = pages.div_ceil(64) as usize;
        Self {
            bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
            changes: AtomicU64::new(0),
        }
    }

    /// A CPU is about to read code on the page of `pa` to validate or decode a block: watch
    /// the page. Returns false if the page is outside the bitmap (its changes cannot be told).
    pub fn watch(&self, pa: u64) -> bool {
        let page = pa / PAGE_SIZE;
        let Some(word) = self.bits.get((page / 64) as usize) else {
            return false;
        };
        let bit = 1u64 << (page % 64);
        if word.load(Ordering::Relaxed) & bit == 0 {
            word.fetch_or(bit, Ordering::SeqCst);
        }
        true
    }

    /// Bytes `[gpa, gpa + len)` of guest RAM were written (the write is complete): count a
    /// change if a watched page is among them. Bounded by the bitmap's size, whatever `len`.
    pub fn wrote(&self, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        fence(Ordering::SeqCst);
        let first = gpa / PAGE_SIZE;
        let last = gpa.saturating_add(len - 1) / PAGE_SIZE;
        let (w0, w1) = (first / 64, last / 64);
        let words = self.bits.len() as u64;
        if w0 >= words {
            return;
        }
        let mut hit = false;
        for w in w0..=w1.min(words - 1) {
            let Some(word) = self.bits.get(w as usize) else {
                break;
            };
            let lo = if w == w0 { first % 64 } else { 0 };
            let hi = if w == w1 { last % 64 } else { 63 };
            let mask = (u64::MAX >> (63 - hi)) & (u64::MAX << lo);
            if word.load(Ordering::Relaxed) & mask != 0 {
                word.fetch_and(!mask, Ordering::SeqCst);
                hit = true;
            }
        }
        if hit {
            self.changes.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// All of guest RAM may have changed (a restore, a reset): count a change.
    pub fn wrote_all(&self) {
        fence(Ordering::SeqCst);
        for w in self.bits.iter() {
            w.store(0, Ordering::SeqCst);
        }
        self.changes.fetch_add(1, Ordering::SeqCst);
    }

    /// How many writes into watched pages were reported so far.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_counts_only_if_it_touches_a_watched_page_and_unwatches_it() {
        let w = CodeWatch::new(1 << 30);
        w.wrote(0x5000, 4096);
        assert_eq!(w.changes(), 0, "nothing watched");
        assert!(w.watch(0x5123));
        w.wrote(0x4000, 4096);
        w.wrote(0x6000, 1);
        w.wrote(0x5000, 0);
        assert_eq!(w.changes(), 0, "neighbours and empty writes");
        w.wrote(0x5fff, 1);
        assert_eq!(w.changes(), 1);
        w.wrote(0x5000, 8);
        assert_eq!(w.changes(), 1, "unwatched by the first write");
        assert!(w.watch(0x5000));
        w.wrote(0x4ffc, 8);
        assert_eq!(w.changes(), 2, "a write straddling into the page");
    }

    #[test]
    fn long_writes_cover_every_word_they_cross_and_stop_at_the_bitmap() {
        let w = CodeWatch::new(1 << 30);
        for pa in [0u64, 63 << 12, 64 << 12, 200 << 12, (1 << 30) - 4096] {
            assert!(w.watch(pa));
            w.wrote(0, u64::MAX);
            assert_eq!(w.changes(), 1, "{pa:#x}");
            w.wrote(0, u64::MAX);
            assert_eq!(w.changes(), 1, "{pa:#x}: unwatched");
            w.wrote_all();
            assert_eq!(w.changes(), 2);
            w.changes.store(0, Ordering::SeqCst);
        }
        // Outside the bitmap: not watchable, and writes there count nothing.
        assert!(!w.watch(1 << 30));
        assert!(!w.watch(u64::MAX));
        w.wrote(u64::MAX - 10, 100);
        w.wrote(1 << 31, 1 << 20);
        assert_eq!(w.changes(), 0);
        // A range from below into beyond the bitmap still sees the pages it covers.
        assert!(w.watch((1 << 30) - 1));
        w.wrote((1 << 30) - 8, 1 << 40);
        assert_eq!(w.changes(), 1);
    }

    #[test]
    fn the_bitmap_is_bounded_whatever_the_end() {
        assert_eq!(
            CodeWatch::new(u64::MAX).bits.len(),
            (MAX_COVERED >> 18) as usize
        );
        assert!(CodeWatch::new(0).bits.is_empty());
        let w = CodeWatch::new(0);
        assert!(!w.watch(0));
        w.wrote(0, 4096);
        assert_eq!(w.changes(), 0);
    }
}
