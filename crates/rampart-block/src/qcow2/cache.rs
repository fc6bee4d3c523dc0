//! A bounded cache of cluster-sized metadata tables (L2 tables, refcount blocks), keyed by
//! their offset in the image file, with dirty tracking. Eviction picks the least recently
//! used entry; the caller decides how a dirty entry is written back (ordering matters).

use std::collections::HashMap;

/// One cached table.
#[derive(Debug)]
pub struct Table {
    pub data: Vec<u8>,
    pub dirty: bool,
    last_use: u64,
}

impl Table {
    pub fn u64_at(&self, i: usize) -> u64 {
        super::be64(&self.data, i * 8)
    }

    pub fn set_u64(&mut self, i: usize, v: u64) {
        self.data[i * 8..i * 8 + 8].copy_from_slice(&v.to_be_bytes());
        self.dirty = true;
    }

    pub fn u16_at(&self, i: usize) -> u16 {
        u16::from_be_bytes([self.data[i * 2], self.data[i * 2 + 1]])
    }

    pub fn set_u16(&mut self, i: usize, v: u16) {
        self.data[i * 2..i * 2 + 2].copy_from_slice(&v.to_be_bytes());
        self.dirty = true;
    }
}

/// Tables by file offset, at most `capacity` of them.
#[derive(Debug)]
pub struct TableCache {
    tables: HashMap<u64, Table>,
    capacity: usize,
    clock: u64,
}

impl TableCache {
    /// A cache holding at most `budget` bytes of `table_size`-byte tables (at least 4 tables).
    pub fn new(budget: usize, table_size: usize) -> TableCache {
        TableCache {
            tables: HashMap::new(),
            capacity: (budget / table_size.max(1)).clamp(4, 4096),
            clock: 0,
        }
    }

    pub fn get_mut(&mut self, offset: u64) -> Option<&mut Table> {
        self.clock += 1;
        let now = self.clock;
        let t = self.tables.get_mut(&offset)?;
        t.last_use = now;
        Some(t)
    }

    pub fn contains(&self, offset: u64) -> bool {
        self.tables.contains_key(&offset)
    }

    pub fn is_full(&self) -> bool {
        self.tables.len() >= self.capacity
    }

    /// The least recently used entry's offset and whether it is dirty.
    pub fn victim(&self) -> Option<(u64, bool)> {
        self.tables
            .iter()
            .min_by_key(|(_, t)| t.last_use)
            .map(|(o, t)| (*o, t.dirty))
    }

    pub fn remove(&mut self, offset: u64) -> Option<Table> {
        self.tables.remove(&offset)
    }

    /// Inserts a table (the caller has made room).
    pub fn insert(&mut self, offset: u64, data: Vec<u8>, dirty: bool) {
        self.clock += 1;
        self.tables.insert(
            offset,
            Table {
                data,
                dirty,
                last_use: self.clock,
            },
        );
    }

    /// Offsets of the dirty tables, in file order.
    pub fn dirty_offsets(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .tables
            .iter()
            .filter(|(_, t)| t.dirty)
            .map(|(o, _)| *o)
            .collect();
        v.sort_unstable();
        v
    }

    pub fn has_dirty(&self) -> bool {
        self.tables.values().any(|t| t.dirty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn victim_is_least_recently_used() {
        let mut c = TableCache::new(4 * 512, 512);
        for o in 0..4u64 {
            c.insert(o * 512, vec![0; 512], false);
        }
        c.get_mut(0);

        assert!(c.is_full());
        assert_eq!(c.victim(), Some((512, false)));
    }

    #[test]
    fn setters_mark_dirty_and_round_trip() {
        let mut c = TableCache::new(1 << 20, 512);
        c.insert(4096, vec![0; 512], false);
        let t = c.get_mut(4096).unwrap();
        t.set_u64(3, 0x1122_3344_5566_7788);
        t.set_u16(100, 0xabcd);

        assert_eq!(t.u64_at(3), 0x1122_3344_5566_7788);
        assert_eq!(t.u16_at(100), 0xabcd);
        assert_eq!(c.dirty_offsets(), vec![4096]);
    }
}
