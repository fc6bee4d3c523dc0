//! One transmitted frame, gathered from a descriptor chain without copying it: the 12-byte
//! header is copied (it is checked, and what is checked is what the tap gets, whatever the
//! guest writes meanwhile), the rest stays in guest memory as slices the tap writes with one
//! `writev`. A chain in more pieces than [`MAX_PIECES`] is copied into one buffer instead.

use virtio_queue::DescriptorChain;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

use super::header::{HDR_LEN, MAX_FRAME};

pub use crate::net::tap::MAX_PIECES;

/// Why a transmit chain is not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatherError {
    #[error("a {0}-byte transmit chain (a header and at most {MAX_FRAME} bytes of frame)")]
    BadLength(usize),
    #[error("a transmit descriptor outside guest memory")]
    OutsideMemory,
}

/// A frame ready for the tap: its header, and its bytes either in place or copied.
pub struct Gathered<'a> {
    pub hdr: [u8; HDR_LEN],
    /// Frame bytes after the header, in guest memory (`copied` is then empty)...
    pub pieces: [Option<VolatileSlice<'a>>; MAX_PIECES],
    pub count: usize,
    /// ...or copied here, when the chain has more than [`MAX_PIECES`] pieces.
    pub copied: bool,
    /// Frame length after the header.
    pub len: usize,
}

/// Appends `s` to `buf`.
pub fn append(buf: &mut Vec<u8>, s: &VolatileSlice<'_>) {
    let old = buf.len();
    buf.resize(old + s.len(), 0);
    s.copy_to(&mut buf[old..]);
}

/// Gathers the readable part of `chain`; `copy` is the buffer used (cleared first) when the
/// chain has too many pieces to be sent in place.
pub fn gather<'a>(
    mem: &'a GuestMemoryMmap,
    chain: DescriptorChain<&'a GuestMemoryMmap>,
    copy: &mut Vec<u8>,
) -> Result<Gathered<'a>, GatherError> {
    let mut g = Gathered {
        hdr: [0; HDR_LEN],
        pieces: [None; MAX_PIECES],
        count: 0,
        copied: false,
        len: 0,
    };
    let mut total = 0usize;
    let mut hdr_got = 0;
    for desc in chain.readable() {
        let len = desc.len() as usize;
        total = total.saturating_add(len);
        if total > HDR_LEN + MAX_FRAME {
            return Err(GatherError::BadLength(total));
        }
        for s in mem.get_slices(desc.addr(), len) {
            let mut s = s.map_err(|_| GatherError::OutsideMemory)?;
            if hdr_got < HDR_LEN {
                let k = (HDR_LEN - hdr_got).min(s.len());
                let head = s.subslice(0, k).map_err(|_| GatherError::OutsideMemory)?;
                head.copy_to(&mut g.hdr[hdr_got..hdr_got + k]);
                hdr_got += k;
                s = s.offset(k).map_err(|_| GatherError::OutsideMemory)?;
            }
            if s.is_empty() {
                continue;
            }
            if g.copied {
                append(copy, &s);
            } else if g.count == MAX_PIECES {
                copy.clear();
                for p in g.pieces.iter_mut().take(g.count) {
                    if let Some(p) = p.take() {
                        append(copy, &p);
                    }
                }
                g.count = 0;
                g.copied = true;
                append(copy, &s);
            } else {
                g.pieces[g.count] = Some(s);
                g.count += 1;
            }
        }
    }
    if total < HDR_LEN {
        return Err(GatherError::BadLength(total));
    }
    g.len = total - HDR_LEN;
    Ok(g)
}

#[cfg(test)]
mod tests {
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT};
    use vm_memory::{Bytes, GuestAddress};

    use super::*;

    /// A gathered frame's bytes, and whether they were copied.
    type Frame = (Vec<u8>, bool);

    /// Gathers a chain of readable descriptors of `lens` bytes each, laid end to end in guest
    /// memory holding a counting pattern; returns the frame as gathered (header and pieces, or
    /// the copy) and whether it was copied, and the bytes the chain holds.
    fn gather_all(lens: &[u32]) -> (Result<Frame, GatherError>, Vec<u8>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
        let total: u32 = lens.iter().sum();
        let bytes: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        mem.write_slice(&bytes, GuestAddress(0x10_0000)).unwrap();
        let mut addr = 0x10_0000u64;
        let descs: Vec<RawDescriptor> = lens
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                let flags = if i + 1 == lens.len() {
                    0
                } else {
                    VRING_DESC_F_NEXT as u16
                };
                let d = Descriptor::new(addr, l, flags, i as u16 + 1);
                addr += u64::from(l);
                RawDescriptor::from(d)
            })
            .collect();
        let vq = MockSplitQueue::new(&mem, 256);
        vq.build_desc_chain(&descs).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let c = q.iter(&mem).unwrap().next().unwrap();
        let mut copy = Vec::new();
        let r = gather(&mem, c, &mut copy).map(|g| {
            let mut out = g.hdr.to_vec();
            if g.copied {
                out.extend_from_slice(&copy);
            } else {
                for p in g.pieces[..g.count].iter().flatten() {
                    append(&mut out, p);
                }
            }
            assert_eq!(out.len(), HDR_LEN + g.len);
            (out, g.copied)
        });
        (r, bytes)
    }

    #[test]
    fn a_header_split_over_descriptors_is_copied_and_the_rest_left_in_place() {
        let (r, bytes) = gather_all(&[5, 4, 3, 100, 60]);
        let (out, copied) = r.unwrap();
        assert_eq!(out, bytes);
        assert!(!copied);
    }

    #[test]
    fn a_chain_in_more_pieces_than_the_limit_is_copied_whole() {
        let mut lens = vec![HDR_LEN as u32];
        lens.extend(std::iter::repeat_n(10, MAX_PIECES + 5));
        let (r, bytes) = gather_all(&lens);
        let (out, copied) = r.unwrap();
        assert_eq!(out, bytes);
        assert!(copied);
    }

    #[test]
    fn short_and_oversized_chains_are_refused() {
        assert_eq!(
            gather_all(&[4, 7]).0.unwrap_err(),
            GatherError::BadLength(11)
        );
        let (r, _) = gather_all(&[HDR_LEN as u32, MAX_FRAME as u32 + 1]);
        assert_eq!(
            r.unwrap_err(),
            GatherError::BadLength(HDR_LEN + MAX_FRAME + 1)
        );
    }
}
