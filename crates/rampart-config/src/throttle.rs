//! I/O limits as typed values: QEMU's `throttling.*` block options (bps/iops, total/read/write,
//! with `-max` bursts and `-max-length`) and rampart's net limits (bytes and packets per
//! second, each way). The token buckets that enforce them live in `rampart_block::throttle`.

use crate::ConfigError;

/// Largest rate accepted (QEMU's THROTTLE_VALUE_MAX).
pub const THROTTLE_VALUE_MAX: u64 = 1_000_000_000_000_000;
/// Longest burst accepted, in seconds (QEMU allows up to a day too).
pub const MAX_BURST_SECONDS: u64 = 86_400;

/// One limit: `avg` units per second (0 = unlimited), optionally bursting at `max` per second
/// for `max_length` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimit {
    pub avg: u64,
    /// Burst rate (0 = none: the bucket holds a tenth of a second at `avg`).
    pub max: u64,
    /// How long a burst at `max` may last, in seconds (0 = the default, 1).
    pub max_length: u64,
}

impl RateLimit {
    pub fn is_set(&self) -> bool {
        self.avg != 0
    }

    /// QEMU's rules: values in range, a burst needs an average no higher than it, a burst
    /// length needs a burst.
    pub fn validate(&self, name: &str) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.avg > THROTTLE_VALUE_MAX || self.max > THROTTLE_VALUE_MAX {
            return bad(format!(
                "{name}: values must be at most {THROTTLE_VALUE_MAX}"
            ));
        }
        if self.max != 0 && self.avg == 0 {
            return bad(format!("{name}-max requires {name}"));
        }
        if self.max != 0 && self.max < self.avg {
            return bad(format!("{name}-max cannot be lower than {name}"));
        }
        if self.max_length != 0 && self.max == 0 {
            return bad(format!("{name}-max-length requires {name}-max"));
        }
        if self.max_length > MAX_BURST_SECONDS {
            return bad(format!(
                "{name}-max-length must be between 1 and {MAX_BURST_SECONDS}"
            ));
        }
        Ok(())
    }
}

/// A block device's limits (`throttling.*` of `-drive`, `-object throttle-group`,
/// `block_set_io_throttle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockLimits {
    pub bps_total: RateLimit,
    pub bps_read: RateLimit,
    pub bps_write: RateLimit,
    pub iops_total: RateLimit,
    pub iops_read: RateLimit,
    pub iops_write: RateLimit,
}

impl BlockLimits {
    /// The six limits in field order: bps total, read, write; iops total, read, write.
    pub fn as_array(&self) -> [RateLimit; 6] {
        [
            self.bps_total,
            self.bps_read,
            self.bps_write,
            self.iops_total,
            self.iops_read,
            self.iops_write,
        ]
    }

    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.as_array().iter().any(RateLimit::is_set)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let names = [
            "bps-total",
            "bps-read",
            "bps-write",
            "iops-total",
            "iops-read",
            "iops-write",
        ];
        for (l, n) in self.as_array().into_iter().zip(names) {
            l.validate(n)?;
        }
        if self.bps_total.is_set() && (self.bps_read.is_set() || self.bps_write.is_set()) {
            return Err(ConfigError::Invalid(
                "bps-total and bps-read/bps-write cannot be used at the same time".into(),
            ));
        }
        if self.iops_total.is_set() && (self.iops_read.is_set() || self.iops_write.is_set()) {
            return Err(ConfigError::Invalid(
                "iops-total and iops-read/iops-write cannot be used at the same time".into(),
            ));
        }
        Ok(())
    }
}

/// A NIC's limits: bytes and packets per second, guest-received (rx) and guest-sent (tx).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetLimits {
    pub rx_bps: RateLimit,
    pub rx_pps: RateLimit,
    pub tx_bps: RateLimit,
    pub tx_pps: RateLimit,
}

impl NetLimits {
    pub fn any(&self) -> bool {
        [self.rx_bps, self.rx_pps, self.tx_bps, self.tx_pps]
            .iter()
            .any(RateLimit::is_set)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (l, n) in [
            (self.rx_bps, "rx-bps"),
            (self.rx_pps, "rx-pps"),
            (self.tx_bps, "tx-bps"),
            (self.tx_pps, "tx-pps"),
        ] {
            l.validate(n)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim(avg: u64, max: u64, max_length: u64) -> RateLimit {
        RateLimit {
            avg,
            max,
            max_length,
        }
    }

    #[test]
    fn burst_rules_follow_qemu() {
        assert!(lim(100, 200, 5).validate("bps").is_ok());
        assert!(lim(100, 0, 0).validate("bps").is_ok());
        let e = lim(0, 200, 0).validate("bps").unwrap_err().to_string();
        assert!(e.contains("bps-max requires bps"), "{e}");
        let e = lim(300, 200, 0).validate("bps").unwrap_err().to_string();
        assert!(e.contains("cannot be lower"), "{e}");
        let e = lim(100, 0, 3).validate("bps").unwrap_err().to_string();
        assert!(e.contains("requires bps-max"), "{e}");
        assert!(lim(THROTTLE_VALUE_MAX + 1, 0, 0).validate("x").is_err());
    }

    #[test]
    fn total_and_read_write_limits_are_exclusive() {
        let mut b = BlockLimits {
            bps_total: lim(1, 0, 0),
            bps_read: lim(1, 0, 0),
            ..Default::default()
        };
        assert!(b.validate().is_err());
        b.bps_read = RateLimit::default();
        b.iops_write = lim(5, 0, 0);
        assert!(b.validate().is_ok());
        assert!(b.any());
    }
}
