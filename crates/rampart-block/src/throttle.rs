//! Token buckets that enforce I/O limits ([`rampart_config::RateLimit`]).
//!
//! A [`Bucket`] fills at the average rate up to its capacity: a tenth of a second of the
//! average, or with a burst rate `max` the burst (`max × max-length`) — then a second bucket
//! filling at `max` (capacity a tenth of a second of it) caps how fast a burst goes, as QEMU's
//! throttling does. An operation may start while a bucket has any tokens and then takes its
//! whole cost (the level may go below zero), so a large request is never refused, only
//! delayed; the next one waits until the debt is paid back. Time is passed in, so the logic is
//! testable without sleeping.

use std::time::{Duration, Instant};

use rampart_config::{BlockLimits, RateLimit};

/// One limit's buckets.
#[derive(Debug, Clone)]
pub struct Bucket {
    limit: RateLimit,
    level: f64,
    capacity: f64,
    burst_level: f64,
    burst_capacity: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket for `limit` (which must be set: `avg > 0`).
    pub fn new(limit: RateLimit, now: Instant) -> Bucket {
        let avg = limit.avg as f64;
        let (capacity, burst_capacity) = if limit.max > 0 {
            let len = limit.max_length.max(1) as f64;
            (
                (limit.max as f64 * len).max(avg / 10.0),
                limit.max as f64 / 10.0,
            )
        } else {
            (avg / 10.0, 0.0)
        };
        Bucket {
            limit,
            level: capacity,
            capacity,
            burst_level: burst_capacity,
            burst_capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.level = (self.level + dt * self.limit.avg as f64).min(self.capacity);
        if self.limit.max > 0 {
            self.burst_level =
                (self.burst_level + dt * self.limit.max as f64).min(self.burst_capacity);
        }
    }

    /// `None` if an operation may start now, else how long until it may.
    pub fn wait(&mut self, now: Instant) -> Option<Duration> {
        self.refill(now);
        let mut need: f64 = 0.0;
        if self.level <= 0.0 {
            need = need.max((-self.level + 1.0) / self.limit.avg as f64);
        }
        if self.limit.max > 0 && self.burst_level <= 0.0 {
            need = need.max((-self.burst_level + 1.0) / self.limit.max as f64);
        }
        (need > 0.0).then(|| Duration::from_secs_f64(need.min(3600.0)))
    }

    /// Takes `cost` units (call after [`wait`](Self::wait) said yes).
    pub fn take(&mut self, cost: u64) {
        self.level -= cost as f64;
        if self.limit.max > 0 {
            self.burst_level -= cost as f64;
        }
    }
}

/// A set of optional buckets that an operation must all pass.
#[derive(Debug, Clone, Default)]
pub struct Buckets(Vec<Option<Bucket>>);

impl Buckets {
    /// One slot per limit, in order.
    pub fn new(limits: &[RateLimit], now: Instant) -> Buckets {
        Buckets(
            limits
                .iter()
                .map(|l| l.is_set().then(|| Bucket::new(*l, now)))
                .collect(),
        )
    }

    /// `None` if every bucket in `which` allows an operation now, else the longest wait.
    pub fn wait(&mut self, which: &[usize], now: Instant) -> Option<Duration> {
        self.0
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| which.contains(i))
            .filter_map(|(_, b)| b.as_mut().and_then(|b| b.wait(now)))
            .max()
    }

    /// Charges `costs` (bucket index, units).
    pub fn take(&mut self, costs: &[(usize, u64)]) {
        for &(i, c) in costs {
            if let Some(Some(b)) = self.0.get_mut(i) {
                b.take(c);
            }
        }
    }
}

/// Indices of [`BlockLimits`] in a block [`Buckets`].
pub const BPS_TOTAL: usize = 0;
pub const BPS_READ: usize = 1;
pub const BPS_WRITE: usize = 2;
pub const IOPS_TOTAL: usize = 3;
pub const IOPS_READ: usize = 4;
pub const IOPS_WRITE: usize = 5;

/// The buckets of a block device (or a throttle group shared by several).
pub fn block_buckets(l: &BlockLimits, now: Instant) -> Buckets {
    Buckets::new(&l.as_array(), now)
}

/// The kind of a block request, for throttling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoKind {
    Read,
    Write,
    /// Not throttled (flush, get-id, discard).
    Other,
}

/// A throttle shared by the devices of one group (or owned by one device): limits that may
/// change at run time, and their buckets.
#[derive(Debug)]
pub struct BlockThrottle {
    limits: BlockLimits,
    buckets: Buckets,
}

impl BlockThrottle {
    pub fn new(limits: BlockLimits) -> BlockThrottle {
        BlockThrottle {
            limits,
            buckets: block_buckets(&limits, Instant::now()),
        }
    }

    pub fn limits(&self) -> BlockLimits {
        self.limits
    }

    /// New limits take effect at once (buckets start full).
    pub fn set_limits(&mut self, limits: BlockLimits) {
        self.limits = limits;
        self.buckets = block_buckets(&limits, Instant::now());
    }

    /// `None` if a request of `kind` may start now, else how long to wait.
    pub fn wait(&mut self, kind: IoKind, now: Instant) -> Option<Duration> {
        match kind {
            IoKind::Read => self
                .buckets
                .wait(&[BPS_TOTAL, BPS_READ, IOPS_TOTAL, IOPS_READ], now),
            IoKind::Write => self
                .buckets
                .wait(&[BPS_TOTAL, BPS_WRITE, IOPS_TOTAL, IOPS_WRITE], now),
            IoKind::Other => None,
        }
    }

    /// Charges a started request of `bytes`.
    pub fn take(&mut self, kind: IoKind, bytes: u64) {
        match kind {
            IoKind::Read => self.buckets.take(&[
                (BPS_TOTAL, bytes),
                (BPS_READ, bytes),
                (IOPS_TOTAL, 1),
                (IOPS_READ, 1),
            ]),
            IoKind::Write => self.buckets.take(&[
                (BPS_TOTAL, bytes),
                (BPS_WRITE, bytes),
                (IOPS_TOTAL, 1),
                (IOPS_WRITE, 1),
            ]),
            IoKind::Other => {}
        }
    }
}

/// Wakes a device's I/O thread (after a limit change).
pub type Waker = std::sync::Arc<dyn Fn() + Send + Sync>;

/// The throttle of one drive or one throttle group, shared by its devices and the monitor
/// (`block_set_io_throttle`), kept across VM resets. A limit change wakes every device so it
/// takes effect at once.
pub struct ThrottleHandle {
    group: Option<String>,
    throttle: std::sync::Mutex<BlockThrottle>,
    wakers: std::sync::Mutex<Vec<std::sync::Weak<dyn Fn() + Send + Sync>>>,
}

impl std::fmt::Debug for ThrottleHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThrottleHandle")
            .field("group", &self.group)
            .field("limits", &self.limits())
            .finish()
    }
}

impl ThrottleHandle {
    pub fn new(limits: BlockLimits, group: Option<String>) -> std::sync::Arc<ThrottleHandle> {
        std::sync::Arc::new(ThrottleHandle {
            group,
            throttle: std::sync::Mutex::new(BlockThrottle::new(limits)),
            wakers: std::sync::Mutex::new(Vec::new()),
        })
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, BlockThrottle> {
        self.throttle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The throttle group's name, if this is one.
    pub fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }

    pub fn limits(&self) -> BlockLimits {
        self.inner().limits()
    }

    /// New limits, effective at once for every device using this throttle.
    pub fn set_limits(&self, limits: BlockLimits) {
        self.inner().set_limits(limits);
        let mut w = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        w.retain(|w| w.strong_count() > 0);
        for w in w.iter().filter_map(std::sync::Weak::upgrade) {
            w();
        }
    }

    /// Registers a device's waker (held weakly: a device rebuilt after a reset replaces it).
    pub fn register(&self, waker: &Waker) {
        let mut w = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        w.retain(|w| w.strong_count() > 0);
        w.push(std::sync::Arc::downgrade(waker));
    }

    /// `None` if a request of `kind` may start now, else how long until it may.
    pub fn wait(&self, kind: IoKind) -> Option<Duration> {
        self.inner().wait(kind, Instant::now())
    }

    /// Charges a started request.
    pub fn take(&self, kind: IoKind, bytes: u64) {
        self.inner().take(kind, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim(avg: u64, max: u64, len: u64) -> RateLimit {
        RateLimit {
            avg,
            max,
            max_length: len,
        }
    }

    /// Runs back-to-back operations of `cost` for `secs` simulated seconds; returns units done.
    fn simulate(b: &mut Bucket, start: Instant, cost: u64, secs: f64) -> u64 {
        let end = start + Duration::from_secs_f64(secs);
        let mut now = start;
        let mut done = 0;
        while now < end {
            match b.wait(now) {
                None => {
                    b.take(cost);
                    done += cost;
                }
                Some(d) => now += d,
            }
        }
        done
    }

    #[test]
    fn average_rate_holds_over_time_with_a_tenth_second_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(lim(1_000_000, 0, 0), t0);
        let done = simulate(&mut b, t0, 65536, 5.0);
        // 5 s at 1 MB/s plus the initial 0.1 s bucket and at most one request of debt.
        assert!(done <= 5_100_000 + 65536, "{done}");
        assert!(done >= 4_900_000, "{done}");
    }

    #[test]
    fn burst_allows_max_rate_for_its_length_then_falls_back() {
        let t0 = Instant::now();
        let mut b = Bucket::new(lim(100, 1000, 2), t0);
        // The first two seconds may run near 1000/s (capacity 2000 plus refill).
        let burst = simulate(&mut b, t0, 1, 2.0);
        assert!(burst > 1500 && burst <= 2300, "{burst}");
        let t1 = t0 + Duration::from_secs(2);
        let later = simulate(&mut b, t1, 1, 10.0);
        assert!(later <= 1000 + 300, "{later}");
    }

    #[test]
    fn a_request_larger_than_the_bucket_is_delayed_not_refused() {
        let t0 = Instant::now();
        let mut b = Bucket::new(lim(1000, 0, 0), t0);
        assert_eq!(b.wait(t0), None);
        b.take(10_000);
        let w = b.wait(t0).expect("must wait");
        assert!(
            w >= Duration::from_secs(9) && w <= Duration::from_secs(11),
            "{w:?}"
        );
        assert_eq!(b.wait(t0 + w), None);
    }

    #[test]
    fn block_throttle_charges_the_matching_buckets() {
        let mut t = BlockThrottle::new(BlockLimits {
            iops_write: lim(10, 0, 0),
            ..Default::default()
        });
        let now = Instant::now();
        assert_eq!(t.wait(IoKind::Write, now), None);
        t.take(IoKind::Write, 4096);
        t.take(IoKind::Write, 4096);
        assert!(t.wait(IoKind::Write, now).is_some());
        assert_eq!(t.wait(IoKind::Read, now), None);
        t.set_limits(BlockLimits::default());
        assert_eq!(t.wait(IoKind::Write, now), None);
    }
}
