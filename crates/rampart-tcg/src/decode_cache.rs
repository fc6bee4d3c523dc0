//! A small cache of decoded instructions, so hot loops skip iced's decoder set-up and decode.
//!
//! An entry is keyed by (IP, bitness) and holds the instruction bytes it was decoded from. A
//! hit requires the bytes just fetched (through the MMU, as always) to be identical, so
//! self-modifying code, remapped pages and mode changes can never run a stale decode: a decode
//! depends only on the bytes, the bitness and the IP. Instructions that cross a page boundary
//! are not cached (their second page is fetched only when needed).

use iced_x86::Instruction;

/// Entries (a power of two).
const ENTRIES: usize = 4096;
/// Longest legal x86 instruction.
const MAX_LEN: usize = 15;

#[derive(Clone, Copy, Default)]
struct Entry {
    ip: u64,
    /// 0 = empty; 16, 32 or 64.
    bits: u8,
    len: u8,
    /// The instruction bytes, little-endian, zero above `len` bytes.
    key: u128,
    /// Ones over the `len` instruction bytes.
    mask: u128,
    instr: Instruction,
}

/// The first (up to) 15 bytes of `b` as a little-endian integer.
#[inline]
fn word(b: &[u8]) -> u128 {
    let mut w = [0u8; 16];
    if b.len() >= MAX_LEN {
        w[..MAX_LEN].copy_from_slice(&b[..MAX_LEN]);
    } else {
        w[..b.len()].copy_from_slice(b);
    }
    u128::from_le_bytes(w)
}

/// Direct-mapped decoded-instruction cache.
pub(crate) struct DecodeCache {
    entries: Box<[Entry]>,
}

impl Default for DecodeCache {
    fn default() -> Self {
        Self {
            entries: vec![Entry::default(); ENTRIES].into_boxed_slice(),
        }
    }
}

impl std::fmt::Debug for DecodeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DecodeCache")
    }
}

fn slot(ip: u64) -> usize {
    (ip as usize ^ (ip >> 9) as usize) & (ENTRIES - 1)
}

impl DecodeCache {
    /// The cached decode of the instruction at `ip` if `fetched` (the bytes available in the
    /// current page) starts with exactly the bytes it was decoded from.
    pub(crate) fn lookup(&self, ip: u64, bits: u32, fetched: &[u8]) -> Option<Instruction> {
        let e = self.entries.get(slot(ip))?;
        let hit = e.ip == ip
            && e.bits as u32 == bits
            && e.len as usize <= fetched.len()
            && word(fetched) & e.mask == e.key;
        hit.then_some(e.instr)
    }

    /// Remember a decode of `bytes[..instr.len()]`.
    pub(crate) fn insert(&mut self, ip: u64, bits: u32, bytes: &[u8], instr: &Instruction) {
        let len = instr.len();
        let (Some(src), Some(e)) = (bytes.get(..len), self.entries.get_mut(slot(ip))) else {
            return;
        };
        let mask = (1u128 << (8 * len.min(MAX_LEN))) - 1;
        *e = Entry {
            ip,
            bits: bits as u8,
            len: len as u8,
            key: word(src) & mask,
            mask,
            instr: *instr,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions};

    fn decode(bits: u32, bytes: &[u8], ip: u64) -> Instruction {
        Decoder::with_ip(bits, bytes, ip, DecoderOptions::NONE).decode()
    }

    #[test]
    fn hit_requires_same_ip_bitness_and_bytes() {
        let mut c = DecodeCache::default();
        let bytes = [0xb8, 1, 0, 0, 0, 0x90];
        let i = decode(64, &bytes, 0x1000);
        c.insert(0x1000, 64, &bytes, &i);
        assert_eq!(c.lookup(0x1000, 64, &bytes), Some(i));
        assert_eq!(c.lookup(0x1000, 32, &bytes), None);
        assert_eq!(c.lookup(0x2000, 64, &bytes), None);
        assert_eq!(c.lookup(0x1000, 64, &[0xb8, 2, 0, 0, 0]), None);
        // Fewer bytes available than the instruction needs: no hit.
        assert_eq!(c.lookup(0x1000, 64, &bytes[..3]), None);
    }
}
