//! Repair of a dirty image: an image whose writer used lazy refcounts (version 3, incompatible
//! feature bit 0 set) and did not close it, so its refcounts are stale.
//!
//! On a read-write open the refcounts are rebuilt from what the image references: the header
//! cluster, the L1 table, the refcount table, and every L2 table and data or compressed cluster
//! the L1/L2 tables point to (images without internal snapshots only). The new refcount table
//! and blocks go to the end of the file, are synced, and only then does the header point to
//! them; then `OFLAG_COPIED` is set where it is missing (every cluster has refcount 1), and the
//! dirty bit is cleared and synced last. A crash at any point leaves a dirty image the next
//! open repairs again; the old refcount structures become free clusters.
//!
//! The image is hostile: the reference counts are held in arrays sized from the file's real
//! length (bounded by [`MAX_REPAIR_CLUSTERS`]), every table is read in cluster-sized pieces,
//! each L2 table at most once, and an entry pointing outside the file, into the header, the
//! L1 or refcount tables or an old refcount block, or at a cluster something else already uses
//! makes the repair refuse the image instead of "repairing" it into corruption.

use super::header::{Header, INCOMPAT_DIRTY, MAX_REFTABLE_BYTES};
use super::meta::{L1E_OFFSET_MASK, L2E_OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED, OFLAG_ZERO};
use super::{be64, Qcow2Error};
use crate::file::{HostFile, DIRECT_ALIGN};
use crate::BlockError;

/// Most host clusters a repair accounts for (16 MiB of refcounts in memory; 512 GiB of
/// image with 64 KiB clusters).
pub const MAX_REPAIR_CLUSTERS: u64 = 8 << 20;

fn corrupt(reason: impl Into<String>) -> Qcow2Error {
    Qcow2Error::Corrupt(format!(
        "the dirty image cannot be repaired safely: {}",
        reason.into()
    ))
}

/// A set of cluster indexes below a bound.
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: u64) -> Bits {
        Bits(vec![0; n.div_ceil(64) as usize])
    }

    fn get(&self, c: u64) -> bool {
        self.0[(c / 64) as usize] & (1 << (c % 64)) != 0
    }

    fn set(&mut self, c: u64) {
        self.0[(c / 64) as usize] |= 1 << (c % 64);
    }
}

/// The references found so far, per host cluster of the file.
struct Usage {
    cs: u64,
    file_len: u64,
    clusters: u64,
    refs: Vec<u16>,
    /// Clusters used by exactly one metadata structure or one data cluster.
    exclusive: Bits,
    /// Clusters the (untrusted, about to be replaced) refcount table names as blocks.
    old_refblocks: Bits,
}

impl Usage {
    /// No cluster used yet, for an image of `clusters` clusters of `cs` bytes in a file of
    /// `file_len` bytes (`clusters` already bounded by the caller).
    fn new(cs: u64, file_len: u64, clusters: u64) -> Self {
        Self {
            cs,
            file_len,
            clusters,
            refs: vec![0; clusters as usize],
            exclusive: Bits::new(clusters),
            old_refblocks: Bits::new(clusters),
        }
    }

    /// Validates a cluster-aligned offset read from the image and returns its cluster.
    fn cluster(&self, what: &str, offset: u64) -> Result<u64, Qcow2Error> {
        if offset % self.cs != 0 {
            return Err(corrupt(format!(
                "{what} offset 0x{offset:x} is not cluster aligned"
            )));
        }
        self.byte_cluster(what, offset)
    }

    fn byte_cluster(&self, what: &str, offset: u64) -> Result<u64, Qcow2Error> {
        if offset < self.cs {
            return Err(corrupt(format!(
                "{what} offset 0x{offset:x} points into the header"
            )));
        }
        if offset >= self.file_len {
            return Err(corrupt(format!(
                "{what} offset 0x{offset:x} lies past the end of the file"
            )));
        }
        let c = offset / self.cs;
        if self.old_refblocks.get(c) {
            return Err(corrupt(format!(
                "{what} offset 0x{offset:x} points into a refcount block"
            )));
        }
        Ok(c)
    }

    /// Counts a cluster that nothing else may use.
    fn exclusive(&mut self, what: &str, c: u64) -> Result<(), Qcow2Error> {
        if self.exclusive.get(c) || self.refs[c as usize] != 0 {
            return Err(corrupt(format!(
                "{what} at 0x{:x} uses a cluster something else uses too (shared \
                 clusters need internal snapshots, which this image does not have)",
                c * self.cs
            )));
        }
        self.exclusive.set(c);
        self.refs[c as usize] = 1;
        Ok(())
    }

    /// Counts a cluster holding compressed data (several compressed clusters may share it).
    fn compressed(&mut self, c: u64) -> Result<(), Qcow2Error> {
        if self.exclusive.get(c) {
            return Err(corrupt(format!(
                "compressed data at 0x{:x} overlaps a metadata or data cluster",
                c * self.cs
            )));
        }
        let r = &mut self.refs[c as usize];
        *r = r.checked_add(1).ok_or_else(|| {
            corrupt(format!(
                "the cluster at 0x{:x} is referenced more than 65535 times",
                c * self.cs
            ))
        })?;
        Ok(())
    }

    /// Counts every cluster of `[offset, offset+len)` as exclusive; with `replaced` (the old
    /// refcount table) nothing may use them, but they are free once the repair is done.
    fn region(
        &mut self,
        what: &str,
        offset: u64,
        len: u64,
        replaced: bool,
    ) -> Result<(), Qcow2Error> {
        if len == 0 {
            return Ok(());
        }
        let first = offset / self.cs;
        let last = (offset + len - 1) / self.cs;
        for c in first..=last {
            if c >= self.clusters {
                return Err(corrupt(format!("the {what} lies past the end of the file")));
            }
            self.exclusive(what, c)?;
            if replaced {
                self.refs[c as usize] = 0;
            }
        }
        Ok(())
    }
}

/// What the scan found that needs `OFLAG_COPIED` set.
#[derive(Default)]
struct CopiedFixes {
    l1: Vec<usize>,
    l2_tables: Vec<u64>,
}

fn read_entries(file: &HostFile, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
    file.read_at(offset, buf)
}

/// Scans the L1 and L2 tables, counting every cluster they reference.
fn scan(file: &HostFile, hdr: &Header, u: &mut Usage) -> Result<CopiedFixes, BlockError> {
    let cs = u.cs;
    let err = |e: Qcow2Error| e.into_block_error(file.path());
    let mut fixes = CopiedFixes::default();
    let l1_bytes = u64::from(hdr.l1_size) * 8;
    let mut l1_chunk = vec![0u8; cs as usize];
    let mut l2 = vec![0u8; cs as usize];
    let bits = hdr.cluster_bits;
    let shift = 62 - (bits - 8);
    let mut pos = 0u64;
    while pos < l1_bytes {
        let n = (l1_bytes - pos).min(cs) as usize;
        read_entries(file, hdr.l1_table_offset + pos, &mut l1_chunk[..n])?;
        for (k, raw) in l1_chunk[..n].chunks_exact(8).enumerate() {
            let idx = (pos / 8) as usize + k;
            let e = be64(raw, 0);
            let off = e & L1E_OFFSET_MASK;
            if off == 0 {
                continue;
            }
            let what = format!("L2 table (L1 entry {idx})");
            let c = u.cluster(&what, off).map_err(err)?;
            u.exclusive(&what, c).map_err(err)?;
            if e & OFLAG_COPIED == 0 {
                fixes.l1.push(idx);
            }
            read_entries(file, off, &mut l2)?;
            let mut needs_copied = false;
            for (j, raw) in l2.chunks_exact(8).enumerate() {
                let e = be64(raw, 0);
                let vc = idx as u64 * (cs / 8) + j as u64;
                if e & OFLAG_COMPRESSED != 0 {
                    let offset = e & ((1u64 << shift) - 1);
                    let sectors = ((e >> shift) & ((1u64 << (bits - 8)) - 1)) + 1;
                    let what = format!("compressed guest cluster {vc}");
                    let first = u.byte_cluster(&what, offset).map_err(err)?;
                    // As the reader: the sector count may run past the end of the file.
                    let len = (sectors * 512)
                        .saturating_sub(offset & 511)
                        .min(u.file_len - offset);
                    let last = (offset + len.max(1) - 1) / cs;
                    for c in first..=last {
                        if u.old_refblocks.get(c) {
                            return Err(err(corrupt(format!(
                                "{what} points into a refcount block"
                            ))));
                        }
                        u.compressed(c).map_err(err)?;
                    }
                    continue;
                }
                let host = e & L2E_OFFSET_MASK;
                if e & OFLAG_ZERO != 0 && hdr.version < 3 {
                    return Err(err(corrupt("zero flag in a version 2 image")));
                }
                if host == 0 {
                    continue;
                }
                let what = format!("data cluster of guest cluster {vc}");
                let c = u.cluster(&what, host).map_err(err)?;
                u.exclusive(&what, c).map_err(err)?;
                needs_copied |= e & OFLAG_COPIED == 0;
            }
            if needs_copied {
                fixes.l2_tables.push(off);
            }
        }
        pos += n as u64;
    }
    Ok(fixes)
}

/// Where the new refcount structures go: the table at cluster `start`, `blocks` blocks after
/// it, covering every cluster up to and including themselves.
struct Layout {
    start: u64,
    table_clusters: u64,
    blocks: u64,
}

impl Layout {
    fn end(&self) -> u64 {
        self.start + self.table_clusters + self.blocks
    }
}

fn layout(start: u64, cs: u64) -> Layout {
    let rbe = cs / 2;
    let mut l = Layout {
        start,
        table_clusters: 1,
        blocks: 1,
    };
    // Each step only grows; a few iterations reach the fixed point.
    loop {
        let blocks = l.end().div_ceil(rbe);
        let table_clusters = (blocks * 8).div_ceil(cs);
        if blocks == l.blocks && table_clusters == l.table_clusters {
            return l;
        }
        l.blocks = blocks;
        l.table_clusters = table_clusters;
    }
}

/// Rebuilds the refcounts of a dirty image and clears its dirty bit; `hdr` is updated to the
/// new refcount table. Refuses (with the reason) images it cannot repair safely.
pub fn repair(file: &HostFile, hdr: &mut Header) -> Result<(), BlockError> {
    let cs = hdr.cluster_size();
    let err = |e: Qcow2Error| e.into_block_error(file.path());
    if hdr.nb_snapshots > 0 {
        return Err(err(corrupt("the image has internal snapshots")));
    }
    let file_len = file.len();
    let clusters = file_len.div_ceil(cs);
    if clusters > MAX_REPAIR_CLUSTERS {
        return Err(BlockError::Unsupported {
            path: file.path().to_path_buf(),
            reason: format!(
                "the image is dirty and has {clusters} clusters, more than rampart repairs \
                 ({MAX_REPAIR_CLUSTERS}); repair it with 'qemu-img check -r all'"
            ),
        });
    }
    tracing::warn!(
        "'{}': the qcow2 image is dirty (lazy refcounts not written back); rebuilding its \
         refcounts",
        file.path().display()
    );
    let mut u = Usage::new(cs, file_len, clusters);
    // The old refcount blocks: not counted (they are replaced), but nothing may point there.
    let rt_bytes = u64::from(hdr.refcount_table_clusters) * cs;
    let mut chunk = vec![0u8; cs as usize];
    let mut pos = 0;
    while pos < rt_bytes {
        read_entries(file, hdr.refcount_table_offset + pos, &mut chunk)?;
        for raw in chunk.chunks_exact(8) {
            let off = be64(raw, 0) & L1E_OFFSET_MASK;
            if off != 0 && off % cs == 0 && off < file_len {
                u.old_refblocks.set(off / cs);
            }
        }
        pos += cs;
    }
    u.region("header", 0, cs, false).map_err(err)?;
    u.region(
        "L1 table",
        hdr.l1_table_offset,
        u64::from(hdr.l1_size) * 8,
        false,
    )
    .map_err(err)?;
    u.region("refcount table", hdr.refcount_table_offset, rt_bytes, true)
        .map_err(err)?;
    let fixes = scan(file, hdr, &mut u)?;

    // The new refcount table and blocks, at the end of the file, synced before the header
    // names them.
    let l = layout(clusters, cs);
    if l.table_clusters * cs > MAX_REFTABLE_BYTES {
        return Err(err(corrupt(
            "the rebuilt refcount table would exceed its limit",
        )));
    }
    // Built in memory (two bytes per cluster of the image, as the counts) and written with
    // one request that ends 4 KiB aligned: with O_DIRECT the file then never needs trimming
    // back (the monitor thread, which repairs images `blockdev-add` opens, may not truncate).
    let rbe = cs / 2;
    let table_off = l.start * cs;
    let table_len = (l.table_clusters * cs) as usize;
    let len = table_len + (l.blocks * cs) as usize;
    let pad = (table_off + len as u64).next_multiple_of(DIRECT_ALIGN) - (table_off + len as u64);
    let mut out = vec![0u8; len + pad as usize];
    for b in 0..l.blocks {
        let off = (l.start + l.table_clusters + b) * cs;
        out[(b * 8) as usize..(b * 8 + 8) as usize].copy_from_slice(&off.to_be_bytes());
        let block = &mut out[table_len + (b * cs) as usize..][..cs as usize];
        for c in b * rbe..((b + 1) * rbe).min(l.end()) {
            let r = if c < clusters { u.refs[c as usize] } else { 1 };
            let i = ((c - b * rbe) * 2) as usize;
            block[i..i + 2].copy_from_slice(&r.to_be_bytes());
        }
    }
    drop(u);
    file.write_at(table_off, &out)?;
    drop(out);
    file.flush()?;
    let mut rt_fields = [0u8; 12];
    rt_fields[..8].copy_from_slice(&table_off.to_be_bytes());
    rt_fields[8..].copy_from_slice(&(l.table_clusters as u32).to_be_bytes());
    file.write_at(48, &rt_fields)?;
    file.flush()?;
    hdr.refcount_table_offset = table_off;
    hdr.refcount_table_clusters = l.table_clusters as u32;

    // Every referenced cluster now has refcount 1: mark the entries so (safe once the
    // refcounts are durable).
    for off in fixes.l2_tables {
        let mut l2 = vec![0u8; cs as usize];
        file.read_at(off, &mut l2)?;
        for raw in l2.chunks_exact_mut(8) {
            let e = be64(raw, 0);
            if e & OFLAG_COMPRESSED == 0 && e & L2E_OFFSET_MASK != 0 {
                raw.copy_from_slice(&(e | OFLAG_COPIED).to_be_bytes());
            }
        }
        file.write_at(off, &l2)?;
    }
    for idx in fixes.l1 {
        let at = hdr.l1_table_offset + idx as u64 * 8;
        let mut raw = [0u8; 8];
        file.read_at(at, &mut raw)?;
        let e = u64::from_be_bytes(raw) | OFLAG_COPIED;
        file.write_at(at, &e.to_be_bytes())?;
    }
    file.flush()?;
    hdr.incompatible &= !INCOMPAT_DIRTY;
    file.write_at(72, &hdr.incompatible.to_be_bytes())?;
    file.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_covers_itself() {
        for cs in [512u64, 4096, 65536, 2 << 20] {
            for start in [3u64, 255, 256, 257, 100_000, MAX_REPAIR_CLUSTERS] {
                let l = layout(start, cs);
                let rbe = cs / 2;

                assert!(l.blocks * rbe >= l.end(), "cs {cs} start {start}");
                assert!(
                    l.table_clusters * cs / 8 >= l.blocks,
                    "cs {cs} start {start}"
                );
            }
        }
    }

    #[test]
    fn exclusive_cluster_used_twice_is_refused() {
        let mut u = Usage::new(512, 512 * 8, 8);
        u.exclusive("a", 3).unwrap();

        let e = u.exclusive("b", 3).unwrap_err().to_string();
        let c = u.compressed(3).unwrap_err().to_string();

        assert!(e.contains("something else uses"), "{e}");
        assert!(c.contains("overlaps"), "{c}");
    }

    #[test]
    fn compressed_clusters_may_share_but_not_overflow() {
        let mut u = Usage::new(512, 512 * 8, 8);
        for _ in 0..65535 {
            u.compressed(5).unwrap();
        }

        let e = u.compressed(5).unwrap_err().to_string();

        assert!(e.contains("more than 65535"), "{e}");
        assert!(u.exclusive("data", 5).is_err());
    }
}
