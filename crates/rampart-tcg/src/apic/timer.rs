//! The local APIC timer: one-shot and periodic counting at the bus clock divided by the divide
//! configuration, and TSC-deadline mode. Pure arithmetic on `now_ns`: the current count is
//! computed, not decremented, so nothing depends on how often `tick` runs.

use super::time::{ns_from_tsc_ceil, tsc_from_ns};

/// One APIC bus clock: 1 ns (a 1 GHz bus, as KVM uses). The timer counts once per
/// `APIC_TIMER_TICK_NS * divisor` nanoseconds.
pub const APIC_TIMER_TICK_NS: u64 = 1;

/// The LVT timer mode (bits 18:17); the reserved value 3 counts like one-shot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimerMode {
    OneShot,
    Periodic,
    TscDeadline,
}

impl TimerMode {
    pub(crate) fn from_lvt(lvt: u32) -> Self {
        match (lvt >> 17) & 3 {
            1 => TimerMode::Periodic,
            2 => TimerMode::TscDeadline,
            _ => TimerMode::OneShot,
        }
    }
}

/// Timer state; the LVT timer register (mode, vector, mask) lives with the other LVTs.
///
/// In the count modes the count is `base_count` at `base_ns` and falls by one per tick; a
/// periodic count reloads `initial` on reaching zero. Divide changes re-base it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Timer {
    initial: u32,
    divide: u32,
    base_ns: u64,
    base_count: u32,
    /// A count is in progress (one-shot not yet fired, or periodic).
    running: bool,
    /// IA32_TSC_DEADLINE; 0 = disarmed.
    tsc_deadline: u64,
}

impl Timer {
    pub(crate) fn divide_config(&self) -> u32 {
        self.divide
    }

    pub(crate) fn initial_count(&self) -> u32 {
        self.initial
    }

    /// Divide value from bits 3, 1:0: 0b000 → 2, ... 0b110 → 128, 0b111 → 1.
    fn divisor(&self) -> u64 {
        let v = ((self.divide & 8) >> 1) | (self.divide & 3);
        1 << ((v + 1) & 7)
    }

    fn tick_ns(&self) -> u64 {
        APIC_TIMER_TICK_NS * self.divisor()
    }

    fn period_ns(&self) -> u64 {
        u64::from(self.initial).saturating_mul(self.tick_ns())
    }

    /// Stops everything (mode changes to or from TSC-deadline, reset).
    pub(crate) fn disarm(&mut self) {
        self.initial = 0;
        self.base_count = 0;
        self.running = false;
        self.tsc_deadline = 0;
    }

    /// Writing the initial-count register (ignored in TSC-deadline mode) starts a count; 0 stops.
    pub(crate) fn write_initial(&mut self, count: u32, now_ns: u64, mode: TimerMode) {
        if mode == TimerMode::TscDeadline {
            return;
        }
        self.initial = count;
        self.base_ns = now_ns;
        self.base_count = count;
        self.running = count != 0;
    }

    pub(crate) fn current_count(&self, now_ns: u64, mode: TimerMode) -> u32 {
        if mode == TimerMode::TscDeadline || !self.running || self.initial == 0 {
            return 0;
        }
        let elapsed = now_ns.saturating_sub(self.base_ns) / self.tick_ns();
        let base = u64::from(self.base_count);
        let left = if elapsed < base {
            base - elapsed
        } else if mode == TimerMode::Periodic {
            let initial = u64::from(self.initial);
            initial - (elapsed - base) % initial
        } else {
            0
        };
        u32::try_from(left).unwrap_or(u32::MAX)
    }

    /// A new divide configuration keeps the current count continuous.
    pub(crate) fn write_divide(&mut self, value: u32, now_ns: u64, mode: TimerMode) {
        let current = self.current_count(now_ns, mode);
        self.divide = value & 0xb;
        if self.running && mode != TimerMode::TscDeadline {
            self.base_ns = now_ns;
            self.base_count = current;
        }
    }

    pub(crate) fn tsc_deadline(&self, mode: TimerMode) -> u64 {
        if mode == TimerMode::TscDeadline {
            self.tsc_deadline
        } else {
            0
        }
    }

    /// IA32_TSC_DEADLINE writes count only in TSC-deadline mode; 0 disarms.
    pub(crate) fn write_tsc_deadline(&mut self, value: u64, mode: TimerMode) {
        if mode == TimerMode::TscDeadline {
            self.tsc_deadline = value;
        }
    }

    /// When the timer next expires, if armed.
    pub(crate) fn deadline_ns(&self, mode: TimerMode) -> Option<u64> {
        match mode {
            TimerMode::TscDeadline => {
                (self.tsc_deadline != 0).then(|| ns_from_tsc_ceil(self.tsc_deadline))
            }
            _ => (self.running && self.initial != 0).then(|| {
                self.base_ns
                    .saturating_add(u64::from(self.base_count).saturating_mul(self.tick_ns()))
            }),
        }
    }

    /// Advances to `now_ns`; true if the timer expired (once, however many periods passed).
    pub(crate) fn expire(&mut self, now_ns: u64, mode: TimerMode) -> bool {
        match mode {
            TimerMode::TscDeadline => {
                if self.tsc_deadline != 0 && tsc_from_ns(now_ns) >= self.tsc_deadline {
                    self.tsc_deadline = 0;
                    return true;
                }
                false
            }
            TimerMode::OneShot | TimerMode::Periodic => {
                let Some(deadline) = self.deadline_ns(mode) else {
                    return false;
                };
                if now_ns < deadline {
                    return false;
                }
                if mode == TimerMode::Periodic {
                    let period = self.period_ns().max(1);
                    let periods = (now_ns - deadline) / period;
                    self.base_ns = deadline.saturating_add(periods.saturating_mul(period));
                    self.base_count = self.initial;
                } else {
                    self.running = false;
                }
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divide_configuration_decodes_all_eight_values() {
        let mut t = Timer::default();
        let expect = [
            (0b0000, 2),
            (0b0001, 4),
            (0b0010, 8),
            (0b0011, 16),
            (0b1000, 32),
            (0b1001, 64),
            (0b1010, 128),
            (0b1011, 1),
        ];
        for (v, d) in expect {
            t.divide = v;
            assert_eq!(t.divisor(), d, "divide config {v:#b}");
        }
    }

    #[test]
    fn one_shot_counts_down_then_stays_zero() {
        let mut t = Timer::default();
        t.write_divide(0b1011, 0, TimerMode::OneShot);
        t.write_initial(100, 1000, TimerMode::OneShot);
        assert_eq!(t.current_count(1000, TimerMode::OneShot), 100);
        assert_eq!(t.current_count(1040, TimerMode::OneShot), 60);
        assert_eq!(t.deadline_ns(TimerMode::OneShot), Some(1100));
        assert!(!t.expire(1099, TimerMode::OneShot));
        assert!(t.expire(1100, TimerMode::OneShot));
        assert!(!t.expire(5000, TimerMode::OneShot));
        assert_eq!(t.current_count(5000, TimerMode::OneShot), 0);
        assert_eq!(t.deadline_ns(TimerMode::OneShot), None);
    }

    #[test]
    fn periodic_reloads_and_catches_up_in_one_step() {
        let mut t = Timer::default();
        t.write_divide(0b1011, 0, TimerMode::Periodic);
        t.write_initial(10, 0, TimerMode::Periodic);
        assert!(t.expire(10, TimerMode::Periodic));
        assert_eq!(t.deadline_ns(TimerMode::Periodic), Some(20));
        assert_eq!(t.current_count(13, TimerMode::Periodic), 7);
        assert!(t.expire(1_000_005, TimerMode::Periodic));
        assert_eq!(t.deadline_ns(TimerMode::Periodic), Some(1_000_010));
    }

    #[test]
    fn divide_change_keeps_current_count() {
        let mut t = Timer::default();
        t.write_divide(0b1011, 0, TimerMode::OneShot);
        t.write_initial(100, 0, TimerMode::OneShot);
        t.write_divide(0b0000, 30, TimerMode::OneShot);
        assert_eq!(t.current_count(30, TimerMode::OneShot), 70);
        assert_eq!(t.current_count(50, TimerMode::OneShot), 60);
        assert_eq!(t.deadline_ns(TimerMode::OneShot), Some(170));
    }

    #[test]
    fn tsc_deadline_fires_when_tsc_reaches_it_and_clears() {
        let mut t = Timer::default();
        t.write_tsc_deadline(tsc_from_ns(500), TimerMode::TscDeadline);
        assert_eq!(t.deadline_ns(TimerMode::TscDeadline), Some(500));
        assert!(!t.expire(499, TimerMode::TscDeadline));
        assert!(t.expire(500, TimerMode::TscDeadline));
        assert_eq!(t.tsc_deadline(TimerMode::TscDeadline), 0);
        assert_eq!(t.deadline_ns(TimerMode::TscDeadline), None);
    }

    #[test]
    fn huge_counts_and_times_saturate_instead_of_overflowing() {
        let mut t = Timer::default();
        t.write_divide(0b1010, 0, TimerMode::Periodic);
        t.write_initial(u32::MAX, u64::MAX - 5, TimerMode::Periodic);
        assert_eq!(t.current_count(u64::MAX, TimerMode::Periodic), u32::MAX);
        assert_eq!(t.deadline_ns(TimerMode::Periodic), Some(u64::MAX));
        assert!(t.expire(u64::MAX, TimerMode::Periodic));
        assert!(t.current_count(u64::MAX, TimerMode::Periodic) > 0);
    }
}
