//! I/O accounting of one block device, kept where its requests complete (the virtio-blk
//! handler) and read by the monitor (`query-blockstats`, `info blockstats`). The counters
//! follow QEMU's accounting: a completed request counts its operation, bytes and time; a
//! request the back end failed counts as failed (its time too); a request rejected before any
//! I/O (out of range, misaligned, too large) counts as invalid.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use rampart_config::control::{
    BlockKindStats as KindStats, BlockStatsSnapshot as StatsSnapshot,
};

/// The kind of a request, as accounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoKind {
    Read,
    Write,
    Flush,
    Unmap,
}

#[derive(Debug, Default)]
struct Counters {
    ops: AtomicU64,
    bytes: AtomicU64,
    time_ns: AtomicU64,
    failed: AtomicU64,
    invalid: AtomicU64,
}

/// The live counters of one block device.
#[derive(Debug, Default)]
pub struct BlockStats {
    read: Counters,
    write: Counters,
    flush: Counters,
    unmap: Counters,
    wr_highest_offset: AtomicU64,
    last_done: Mutex<Option<Instant>>,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl BlockStats {
    pub fn new() -> BlockStats {
        BlockStats::default()
    }

    fn counters(&self, kind: IoKind) -> &Counters {
        match kind {
            IoKind::Read => &self.read,
            IoKind::Write => &self.write,
            IoKind::Flush => &self.flush,
            IoKind::Unmap => &self.unmap,
        }
    }

    fn touch(&self) {
        if let Ok(mut t) = self.last_done.lock() {
            *t = Some(Instant::now());
        }
    }

    /// A request of `bytes` that completed successfully after `elapsed`; for writes, `end` is
    /// the byte offset just past the range written.
    pub fn done(&self, kind: IoKind, bytes: u64, elapsed: Duration, end: Option<u64>) {
        let c = self.counters(kind);
        c.ops.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(bytes, Ordering::Relaxed);
        c.time_ns.fetch_add(nanos(elapsed), Ordering::Relaxed);
        if let Some(end) = end {
            self.wr_highest_offset.fetch_max(end, Ordering::Relaxed);
        }
        self.touch();
    }

    /// A request the back end failed after `elapsed`.
    pub fn failed(&self, kind: IoKind, elapsed: Duration) {
        let c = self.counters(kind);
        c.failed.fetch_add(1, Ordering::Relaxed);
        c.time_ns.fetch_add(nanos(elapsed), Ordering::Relaxed);
        self.touch();
    }

    /// A request rejected before any I/O.
    pub fn invalid(&self, kind: IoKind) {
        self.counters(kind).invalid.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let kind = |c: &Counters| KindStats {
            operations: c.ops.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            total_time_ns: c.time_ns.load(Ordering::Relaxed),
            failed_operations: c.failed.load(Ordering::Relaxed),
            invalid_operations: c.invalid.load(Ordering::Relaxed),
        };
        let idle_time_ns = self
            .last_done
            .lock()
            .ok()
            .and_then(|t| t.map(|t| nanos(t.elapsed())));
        StatsSnapshot {
            read: kind(&self.read),
            write: kind(&self.write),
            flush: kind(&self.flush),
            unmap: kind(&self.unmap),
            wr_highest_offset: self.wr_highest_offset.load(Ordering::Relaxed),
            idle_time_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_failed_and_invalid_requests_are_counted_apart() {
        let s = BlockStats::new();
        assert_eq!(s.snapshot().idle_time_ns, None);
        s.done(IoKind::Read, 4096, Duration::from_nanos(10), None);
        s.done(IoKind::Write, 512, Duration::from_nanos(5), Some(8192));
        s.done(IoKind::Write, 512, Duration::from_nanos(5), Some(1024));
        s.failed(IoKind::Flush, Duration::from_nanos(7));
        s.invalid(IoKind::Read);
        let snap = s.snapshot();
        assert_eq!(
            snap.read,
            KindStats {
                operations: 1,
                bytes: 4096,
                total_time_ns: 10,
                failed_operations: 0,
                invalid_operations: 1,
            }
        );
        assert_eq!(snap.write.operations, 2);
        assert_eq!(snap.write.bytes, 1024);
        assert_eq!(snap.wr_highest_offset, 8192);
        assert_eq!(snap.flush.failed_operations, 1);
        assert_eq!(snap.flush.total_time_ns, 7);
        assert_eq!(snap.flush.operations, 0);
        assert!(snap.idle_time_ns.is_some());
    }
}
