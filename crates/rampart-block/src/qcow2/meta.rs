//! qcow2 metadata: the L1 table, L2 tables and refcounts, cluster allocation, and the order in
//! which changes reach the disk.
//!
//! Crash safety (the image stays consistent after a crash at any point; leaks are allowed):
//! - a new cluster's refcount is written, and synced, before any L2/L1 entry that uses it;
//! - guest data is written before the L2 entry that points to it (and synced with the
//!   refcounts, before the L2 table is written);
//! - a new L2 table is written, and synced, before the L1 entry that points to it;
//! - a new refcount block is synced before the refcount-table entry that points to it;
//! - a cluster's refcount is only decremented after the L2/L1 change that dropped the last
//!   reference is synced, and a freed cluster is not reused before that either.
//!
//! Metadata changes collect in the caches and reach the file at [`Meta::flush`] (a guest flush,
//! an eviction of a dirty L2 table, or closing the image).

use std::sync::Arc;

use super::cache::TableCache;
use super::header::Header;
use super::{be64, Qcow2Error};
use crate::file::HostFile;
use crate::BlockError;

pub const L1E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
pub const L2E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
pub const OFLAG_COPIED: u64 = 1 << 63;
pub const OFLAG_COMPRESSED: u64 = 1 << 62;
pub const OFLAG_ZERO: u64 = 1;

/// Metadata cache budgets.
const L2_CACHE_BYTES: usize = 4 << 20;
const RB_CACHE_BYTES: usize = 1 << 20;
/// Deepest recursion allocating refcount blocks for refcount blocks.
const MAX_REFBLOCK_DEPTH: u32 = 4;

/// Where a guest cluster's data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Not allocated: read from the backing file (or zeroes).
    Unallocated,
    /// Reads as zeroes; `host` is a preallocated cluster, if any.
    Zero { host: Option<u64> },
    /// Allocated at `host`; `copied` means its refcount is 1 (writable in place).
    Data { host: u64, copied: bool },
    /// Compressed: `len` bytes from `offset` (byte-granular).
    Compressed { offset: u64, len: u64 },
}

/// The mutable metadata of an open image (behind the back end's mutex).
#[derive(Debug)]
pub struct Meta {
    pub file: Arc<HostFile>,
    pub hdr: Header,
    pub cs: u64,
    l1: Vec<u64>,
    l1_dirty: Vec<usize>,
    reftable: Vec<u64>,
    reftable_dirty: Vec<usize>,
    l2_cache: TableCache,
    rb_cache: TableCache,
    /// First cluster index worth looking at for a free cluster.
    free_hint: u64,
    /// Cluster index past everything in the file or allocated this session.
    alloc_end: u64,
    /// Host clusters whose refcount drops once the metadata that dropped them is synced.
    pending_frees: Vec<u64>,
    /// Punch holes into clusters whose refcount reaches 0 (`discard=unmap`).
    pub punch_freed: bool,
    /// Skip fdatasync (`cache=unsafe`).
    pub no_sync: bool,
}

fn corrupt(reason: impl Into<String>) -> Qcow2Error {
    Qcow2Error::Corrupt(reason.into())
}

impl Meta {
    /// Loads the L1 and refcount tables of a validated header.
    pub fn load(file: Arc<HostFile>, hdr: Header) -> Result<Meta, BlockError> {
        let cs = hdr.cluster_size();
        // Only the entries the virtual size needs are kept (the header may claim more).
        let l1_len = hdr.needed_l1() as usize;
        let mut raw = vec![0u8; l1_len * 8];
        file.read_at(hdr.l1_table_offset, &mut raw)?;
        let l1 = raw.chunks_exact(8).map(|c| be64(c, 0)).collect();
        let rt_len = (u64::from(hdr.refcount_table_clusters) * cs / 8) as usize;
        let mut raw = vec![0u8; rt_len * 8];
        file.read_at(hdr.refcount_table_offset, &mut raw)?;
        let reftable = raw.chunks_exact(8).map(|c| be64(c, 0)).collect();
        let alloc_end = file.len().div_ceil(cs);
        Ok(Meta {
            file,
            cs,
            l1,
            l1_dirty: Vec::new(),
            reftable,
            reftable_dirty: Vec::new(),
            l2_cache: TableCache::new(L2_CACHE_BYTES, cs as usize),
            rb_cache: TableCache::new(RB_CACHE_BYTES, cs as usize),
            free_hint: 0,
            alloc_end,
            pending_frees: Vec::new(),
            punch_freed: false,
            no_sync: false,
            hdr,
        })
    }

    fn l2_entries(&self) -> u64 {
        self.cs / 8
    }

    fn rb_entries(&self) -> u64 {
        self.cs / 2
    }

    /// Checks a metadata or data cluster offset read from the image.
    fn check_cluster(&self, what: &str, offset: u64) -> Result<(), Qcow2Error> {
        if offset % self.cs != 0 {
            return Err(corrupt(format!(
                "{what} offset 0x{offset:x} is not cluster aligned"
            )));
        }
        if offset < self.cs {
            return Err(corrupt(format!(
                "{what} offset 0x{offset:x} points into the header"
            )));
        }
        let limit = self.alloc_end.saturating_mul(self.cs);
        if offset >= limit {
            return Err(corrupt(format!(
                "{what} offset 0x{offset:x} lies past the end of the file"
            )));
        }
        if self.overlaps_fixed_metadata(offset / self.cs) {
            return Err(corrupt(format!(
                "{what} offset 0x{offset:x} overlaps the L1 or refcount table"
            )));
        }
        Ok(())
    }

    /// Whether cluster `c` holds the header, the L1 table or the refcount table.
    fn overlaps_fixed_metadata(&self, c: u64) -> bool {
        let in_range = |start: u64, bytes: u64| {
            bytes > 0 && c >= start / self.cs && c < (start + bytes).div_ceil(self.cs)
        };
        c == 0
            || in_range(self.hdr.l1_table_offset, u64::from(self.hdr.l1_size) * 8)
            || in_range(
                self.hdr.refcount_table_offset,
                u64::from(self.hdr.refcount_table_clusters) * self.cs,
            )
    }

    // ---- L2 tables -------------------------------------------------------------------------

    /// Makes the L2 table at `offset` resident in the cache.
    fn load_l2(&mut self, offset: u64) -> Result<(), BlockError> {
        if self.l2_cache.contains(offset) {
            return Ok(());
        }
        if self.l2_cache.is_full() {
            if let Some((victim, dirty)) = self.l2_cache.victim() {
                if dirty {
                    self.flush_inner(false)?;
                }
                self.l2_cache.remove(victim);
            }
        }
        let mut data = vec![0u8; self.cs as usize];
        self.file.read_at(offset, &mut data)?;
        self.l2_cache.insert(offset, data, false);
        Ok(())
    }

    /// The L2 table offset for guest cluster `vc`, if allocated.
    fn l2_offset(&self, vc: u64) -> Result<Option<u64>, Qcow2Error> {
        let i = (vc / self.l2_entries()) as usize;
        let e = match self.l1.get(i) {
            Some(e) => *e,
            None => {
                return Err(corrupt(format!(
                    "guest cluster {vc} is beyond the L1 table"
                )))
            }
        };
        let off = e & L1E_OFFSET_MASK;
        if off == 0 {
            return Ok(None);
        }
        self.check_cluster("L2 table", off)?;
        Ok(Some(off))
    }

    /// Looks up where guest cluster `vc` lives.
    pub fn lookup(&mut self, vc: u64) -> Result<Mapping, BlockError> {
        let Some(l2) = self.l2_offset(vc).map_err(|e| self.err(e))? else {
            return Ok(Mapping::Unallocated);
        };
        self.load_l2(l2)?;
        let idx = (vc % self.l2_entries()) as usize;
        let e = match self.l2_cache.get_mut(l2) {
            Some(t) => t.u64_at(idx),
            None => return Ok(Mapping::Unallocated),
        };
        self.decode_l2(e).map_err(|e| self.err(e))
    }

    fn decode_l2(&self, e: u64) -> Result<Mapping, Qcow2Error> {
        if e & OFLAG_COMPRESSED != 0 {
            let bits = self.hdr.cluster_bits;
            let shift = 62 - (bits - 8);
            let offset = e & ((1u64 << shift) - 1);
            let sectors = ((e >> shift) & ((1u64 << (bits - 8)) - 1)) + 1;
            let len = (sectors * 512).saturating_sub(offset & 511);
            if offset < self.cs {
                return Err(corrupt(format!(
                    "compressed cluster at 0x{offset:x} points into the header"
                )));
            }
            let file_len = self.file.len();
            if offset >= file_len {
                return Err(corrupt(format!(
                    "compressed cluster at 0x{offset:x} lies past the end of the file"
                )));
            }
            // The sector count is rounded up; the data may end before it.
            return Ok(Mapping::Compressed {
                offset,
                len: len.min(file_len - offset),
            });
        }
        let host = e & L2E_OFFSET_MASK;
        let zero = e & OFLAG_ZERO != 0;
        if zero && self.hdr.version < 3 {
            return Err(corrupt("zero flag in a version 2 image"));
        }
        if host != 0 {
            self.check_cluster("data cluster", host)?;
        }
        Ok(match (zero, host) {
            (true, 0) => Mapping::Zero { host: None },
            (true, h) => Mapping::Zero { host: Some(h) },
            (false, 0) => Mapping::Unallocated,
            (false, h) => Mapping::Data {
                host: h,
                copied: e & OFLAG_COPIED != 0,
            },
        })
    }

    /// Sets guest cluster `vc`'s L2 entry, allocating its L2 table if needed.
    pub fn set_l2(&mut self, vc: u64, entry: u64) -> Result<(), BlockError> {
        let l2 = match self.l2_offset(vc).map_err(|e| self.err(e))? {
            Some(o) => o,
            None => {
                let c = self.alloc_cluster()?;
                let off = c * self.cs;
                if self.l2_cache.is_full() {
                    if let Some((victim, dirty)) = self.l2_cache.victim() {
                        if dirty {
                            self.flush_inner(false)?;
                        }
                        self.l2_cache.remove(victim);
                    }
                }
                self.l2_cache.insert(off, vec![0u8; self.cs as usize], true);
                let i = (vc / self.l2_entries()) as usize;
                self.l1[i] = off | OFLAG_COPIED;
                self.l1_dirty.push(i);
                off
            }
        };
        self.load_l2(l2)?;
        let idx = (vc % self.l2_entries()) as usize;
        if let Some(t) = self.l2_cache.get_mut(l2) {
            t.set_u64(idx, entry);
        }
        Ok(())
    }

    // ---- refcounts -------------------------------------------------------------------------

    fn load_rb(&mut self, offset: u64) -> Result<(), BlockError> {
        if self.rb_cache.contains(offset) {
            return Ok(());
        }
        if self.rb_cache.is_full() {
            if let Some((victim, dirty)) = self.rb_cache.victim() {
                // Refcount blocks may reach the disk at any time (increments are wanted
                // early; decrements are only applied once safe).
                if dirty {
                    self.write_table(victim, true)?;
                }
                self.rb_cache.remove(victim);
            }
        }
        let mut data = vec![0u8; self.cs as usize];
        self.file.read_at(offset, &mut data)?;
        self.rb_cache.insert(offset, data, false);
        Ok(())
    }

    fn rb_offset(&self, rt: usize) -> Result<Option<u64>, Qcow2Error> {
        let off = self.reftable.get(rt).copied().unwrap_or(0) & L1E_OFFSET_MASK;
        if off == 0 {
            return Ok(None);
        }
        self.check_cluster("refcount block", off)?;
        Ok(Some(off))
    }

    /// The refcount of host cluster `c`.
    pub fn refcount(&mut self, c: u64) -> Result<u16, BlockError> {
        let rt = (c / self.rb_entries()) as usize;
        let Some(rb) = self.rb_offset(rt).map_err(|e| self.err(e))? else {
            return Ok(0);
        };
        self.load_rb(rb)?;
        let i = (c % self.rb_entries()) as usize;
        Ok(self.rb_cache.get_mut(rb).map(|t| t.u16_at(i)).unwrap_or(0))
    }

    /// Adds `delta` (+1 or -1) to the refcount of host cluster `c`.
    fn change_refcount(&mut self, c: u64, delta: i32, depth: u32) -> Result<u16, BlockError> {
        let rt = (c / self.rb_entries()) as usize;
        let rb = match self.rb_offset(rt).map_err(|e| self.err(e))? {
            Some(o) => o,
            None if delta < 0 => {
                return Err(self.err(corrupt(format!(
                    "freeing cluster {c}, which has no refcount"
                ))))
            }
            None => self.new_refblock(rt, c, depth)?,
        };
        self.load_rb(rb)?;
        let i = (c % self.rb_entries()) as usize;
        let cur = self.rb_cache.get_mut(rb).map(|t| t.u16_at(i)).unwrap_or(0);
        let new = i32::from(cur) + delta;
        let new = u16::try_from(new).map_err(|_| {
            self.err(corrupt(format!(
                "refcount of cluster {c} would {} (it is {cur})",
                if delta < 0 { "underflow" } else { "overflow" }
            )))
        })?;
        if let Some(t) = self.rb_cache.get_mut(rb) {
            t.set_u16(i, new);
        }
        Ok(new)
    }

    /// Creates the refcount block for refcount-table index `rt` while cluster `for_cluster`
    /// is being allocated; places it inside its own range when possible.
    fn new_refblock(&mut self, rt: usize, for_cluster: u64, depth: u32) -> Result<u64, BlockError> {
        if depth >= MAX_REFBLOCK_DEPTH {
            return Err(self.err(corrupt("refcount block allocation does not converge")));
        }
        if rt >= self.reftable.len() {
            self.grow_reftable(rt)?;
            // Growing may have created this very block.
            if let Some(o) = self.rb_offset(rt).map_err(|e| self.err(e))? {
                return Ok(o);
            }
        }
        let rbe = self.rb_entries();
        let start = rt as u64 * rbe;
        // Every cluster of a range without a block is free; skip the fixed metadata and the
        // cluster being allocated.
        let b = (start..start + rbe)
            .find(|&c| c != for_cluster && !self.overlaps_fixed_metadata(c))
            .ok_or_else(|| self.err(corrupt("no room for a refcount block")))?;
        let off = b * self.cs;
        self.alloc_end = self.alloc_end.max(b + 1);
        let mut data = vec![0u8; self.cs as usize];
        // The block counts itself.
        let i = ((b - start) * 2) as usize;
        data[i..i + 2].copy_from_slice(&1u16.to_be_bytes());
        if self.rb_cache.is_full() {
            if let Some((victim, dirty)) = self.rb_cache.victim() {
                if dirty {
                    self.write_table(victim, true)?;
                }
                self.rb_cache.remove(victim);
            }
        }
        self.rb_cache.insert(off, data, true);
        self.reftable[rt] = off;
        self.reftable_dirty.push(rt);
        Ok(off)
    }

    /// Replaces the refcount table with a larger one covering index `need`, placed (with the
    /// refcount blocks it needs for itself) at the end of the file. Synchronous: the new table
    /// is synced before the header points to it.
    fn grow_reftable(&mut self, need: usize) -> Result<(), BlockError> {
        let cs = self.cs;
        let rbe = self.rb_entries();
        let per_cluster = (cs / 8) as usize;
        let mut entries = (need + 1 + 8).max(self.reftable.len() * 2);
        entries = entries.div_ceil(per_cluster) * per_cluster;
        let t = self.alloc_end;
        let mut n_rt = (entries / per_cluster) as u64;
        let mut new_blocks: Vec<usize> = Vec::new();
        for _ in 0..8 {
            let end = t + n_rt + new_blocks.len() as u64;
            let needed: Vec<usize> = ((t / rbe) as usize..=((end - 1) / rbe) as usize)
                .filter(|&r| self.reftable.get(r).copied().unwrap_or(0) == 0)
                .collect();
            if needed.len() == new_blocks.len() {
                break;
            }
            new_blocks = needed;
            if let Some(&max) = new_blocks.last() {
                if max >= entries {
                    entries = (max + 1 + 8).div_ceil(per_cluster) * per_cluster;
                    n_rt = (entries / per_cluster) as u64;
                }
            }
        }
        let bytes = entries as u64 * 8;
        if bytes > super::header::MAX_REFTABLE_BYTES {
            return Err(BlockError::Unsupported {
                path: self.file.path().to_path_buf(),
                reason: "the image has grown past the refcount table limit".into(),
            });
        }
        let end = t + n_rt + new_blocks.len() as u64;
        let mut table = self.reftable.clone();
        table.resize(entries, 0);
        // New blocks sit after the table, in range order.
        for (j, &r) in new_blocks.iter().enumerate() {
            table[r] = (t + n_rt + j as u64) * cs;
        }
        // Refcounts of the new clusters: in new blocks (built here) or existing ones (cache).
        let mut block_data: Vec<Vec<u8>> = vec![vec![0u8; cs as usize]; new_blocks.len()];
        for c in t..end {
            let r = (c / rbe) as usize;
            let i = ((c % rbe) * 2) as usize;
            if let Some(j) = new_blocks.iter().position(|&x| x == r) {
                block_data[j][i..i + 2].copy_from_slice(&1u16.to_be_bytes());
            } else {
                self.change_refcount(c, 1, MAX_REFBLOCK_DEPTH)?;
            }
        }
        self.alloc_end = end;
        for (j, data) in block_data.iter().enumerate() {
            self.file.write_at((t + n_rt + j as u64) * cs, data)?;
        }
        let mut raw = Vec::with_capacity(entries * 8);
        for e in &table {
            raw.extend_from_slice(&e.to_be_bytes());
        }
        self.file.write_at(t * cs, &raw)?;
        for off in self.rb_cache.dirty_offsets() {
            self.write_table(off, true)?;
        }
        self.sync()?;
        let mut hdr = [0u8; 12];
        hdr[..8].copy_from_slice(&(t * cs).to_be_bytes());
        hdr[8..].copy_from_slice(&(n_rt as u32).to_be_bytes());
        self.file.write_at(48, &hdr)?;
        self.sync()?;
        let old_start = self.hdr.refcount_table_offset / cs;
        let old_n = u64::from(self.hdr.refcount_table_clusters);
        self.hdr.refcount_table_offset = t * cs;
        self.hdr.refcount_table_clusters = n_rt as u32;
        self.reftable = table;
        self.reftable_dirty.clear();
        self.pending_frees.extend(old_start..old_start + old_n);
        Ok(())
    }

    /// Allocates one host cluster (refcount 1) and returns its index.
    pub fn alloc_cluster(&mut self) -> Result<u64, BlockError> {
        let mut c = self.free_hint;
        while c < self.alloc_end {
            let off = c * self.cs;
            if !self.overlaps_fixed_metadata(c)
                && !self.l2_cache.contains(off)
                && !self.rb_cache.contains(off)
                && self.refcount(c)? == 0
            {
                break;
            }
            c += 1;
        }
        self.alloc_end = self.alloc_end.max(c + 1);
        self.free_hint = c + 1;
        self.change_refcount(c, 1, 0)?;
        Ok(c)
    }

    /// Drops one reference to each host cluster of `[offset, offset+len)` once the metadata
    /// change that dropped it is synced.
    pub fn free_later(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = offset / self.cs;
        let last = (offset + len - 1) / self.cs;
        self.pending_frees.extend(first..=last);
    }

    // ---- write-back --------------------------------------------------------------------------

    fn sync(&self) -> Result<(), BlockError> {
        if self.no_sync {
            return Ok(());
        }
        self.file.flush()
    }

    /// Writes one cached table back to the file.
    fn write_table(&mut self, offset: u64, refblock: bool) -> Result<(), BlockError> {
        let cache = if refblock {
            &mut self.rb_cache
        } else {
            &mut self.l2_cache
        };
        if let Some(t) = cache.get_mut(offset) {
            if t.dirty {
                self.file.write_at(offset, &t.data)?;
                t.dirty = false;
            }
        }
        Ok(())
    }

    /// Writes every metadata change to the file in crash-safe order, then applies pending
    /// frees. With `final_sync`, the data is durable when it returns.
    pub fn flush_inner(&mut self, final_sync: bool) -> Result<(), BlockError> {
        let structural = self.l2_cache.has_dirty() || !self.l1_dirty.is_empty();
        if self.rb_cache.has_dirty() || !self.reftable_dirty.is_empty() || structural {
            for off in self.rb_cache.dirty_offsets() {
                self.write_table(off, true)?;
            }
            self.sync()?;
            if !self.reftable_dirty.is_empty() {
                let mut idx = std::mem::take(&mut self.reftable_dirty);
                idx.sort_unstable();
                idx.dedup();
                for i in idx {
                    let off = self.hdr.refcount_table_offset + i as u64 * 8;
                    self.file.write_at(off, &self.reftable[i].to_be_bytes())?;
                }
                self.sync()?;
            }
            for off in self.l2_cache.dirty_offsets() {
                self.write_table(off, false)?;
            }
            if !self.l1_dirty.is_empty() {
                self.sync()?;
                let mut idx = std::mem::take(&mut self.l1_dirty);
                idx.sort_unstable();
                idx.dedup();
                for i in idx {
                    let off = self.hdr.l1_table_offset + i as u64 * 8;
                    self.file.write_at(off, &self.l1[i].to_be_bytes())?;
                }
            }
            self.sync()?;
        }
        if !self.pending_frees.is_empty() {
            let frees = std::mem::take(&mut self.pending_frees);
            let mut holes = Vec::new();
            for c in frees {
                if self.change_refcount(c, -1, 0)? == 0 {
                    self.free_hint = self.free_hint.min(c);
                    holes.push(c);
                }
            }
            for off in self.rb_cache.dirty_offsets() {
                self.write_table(off, true)?;
            }
            if self.punch_freed {
                for c in holes {
                    match self.file.punch_hole(c * self.cs, self.cs) {
                        Err(e) if !e.is_unsupported() => return Err(e),
                        _ => {}
                    }
                }
            }
            self.sync()?;
        } else if final_sync {
            self.sync()?;
        }
        Ok(())
    }

    pub fn err(&self, e: Qcow2Error) -> BlockError {
        e.into_block_error(self.file.path())
    }
}
