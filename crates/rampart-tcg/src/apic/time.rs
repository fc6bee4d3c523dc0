//! Guest time: the TSC, kvmclock, and the CPUID leaves that advertise them.
//!
//! The guest TSC runs at [`TSC_HZ`] = 1 GHz, derived from VM time: one tick per nanosecond.
//! That choice makes every conversion exact (`tsc_from_ns` and `ns_from_tsc` are inverse
//! bijections) and gives kvmclock an exact scale (`mul = 2^31, shift = 1`), so the guest's
//! clock never drifts from VM time and the structure never needs refreshing: TSC-stable.

use tracing::debug;

/// Advertised TSC frequency: 1 GHz (see the module documentation).
pub const TSC_HZ: u64 = 1_000_000_000;

const NS_PER_SEC: u64 = 1_000_000_000;

/// Guest TSC at VM time `now_ns`.
pub fn tsc_from_ns(now_ns: u64) -> u64 {
    let t = u128::from(now_ns) * u128::from(TSC_HZ) / u128::from(NS_PER_SEC);
    u64::try_from(t).unwrap_or(u64::MAX)
}

/// VM time (ns) at guest TSC `tsc`, rounded down.
pub fn ns_from_tsc(tsc: u64) -> u64 {
    let t = u128::from(tsc) * u128::from(NS_PER_SEC) / u128::from(TSC_HZ);
    u64::try_from(t).unwrap_or(u64::MAX)
}

/// The earliest VM time (ns) at which the TSC has reached `tsc` (rounded up).
pub(crate) fn ns_from_tsc_ceil(tsc: u64) -> u64 {
    let num = u128::from(tsc) * u128::from(NS_PER_SEC);
    let t = num.div_ceil(u128::from(TSC_HZ));
    u64::try_from(t).unwrap_or(u64::MAX)
}

/// kvmclock system-time MSR (the one Linux uses when `KVM_FEATURE_CLOCKSOURCE2` is set).
pub const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
/// kvmclock wall-clock MSR (with `KVM_FEATURE_CLOCKSOURCE2`).
pub const MSR_KVM_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;
/// Legacy kvmclock system-time MSR (`KVM_FEATURE_CLOCKSOURCE`, not advertised; accepted alike).
pub const MSR_KVM_SYSTEM_TIME: u32 = 0x12;
/// Legacy kvmclock wall-clock MSR.
pub const MSR_KVM_WALL_CLOCK: u32 = 0x11;

/// `pvclock_vcpu_time_info.flags`: the TSC is stable across vCPUs.
pub const PVCLOCK_TSC_STABLE_BIT: u8 = 1 << 0;

/// CPUID leaf with the hypervisor signature "KVMKVMKVM\0\0\0".
pub const KVM_CPUID_SIGNATURE: u32 = 0x4000_0000;
/// CPUID leaf with the KVM paravirtual feature bits (EAX).
pub const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
/// Feature bit: kvmclock at MSRs 0x4b564d00/01.
pub const KVM_FEATURE_CLOCKSOURCE2: u32 = 1 << 3;
/// Feature bit: the guest may set `PVCLOCK_TSC_STABLE_BIT` trust.
pub const KVM_FEATURE_CLOCKSOURCE_STABLE_BIT: u32 = 1 << 24;

/// CPUID leaf 1 bits the VMM sets for what this module implements.
pub mod cpuid_bits {
    /// Leaf 1 EDX: on-chip APIC.
    pub const LEAF1_EDX_APIC: u32 = 1 << 9;
    /// Leaf 1 ECX: x2APIC.
    pub const LEAF1_ECX_X2APIC: u32 = 1 << 21;
    /// Leaf 1 ECX: TSC-deadline timer mode.
    pub const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
    /// Leaf 1 ECX: running under a hypervisor (needed for Linux to look at 0x4000_0000).
    pub const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
}

/// The KVM paravirtual CPUID leaves: `Some([eax, ebx, ecx, edx])` for 0x4000_0000 (signature,
/// max leaf 0x4000_0001) and 0x4000_0001 (CLOCKSOURCE2 and CLOCKSOURCE_STABLE_BIT only);
/// `None` for any other leaf.
pub fn paravirt_cpuid(leaf: u32) -> Option<[u32; 4]> {
    match leaf {
        KVM_CPUID_SIGNATURE => {
            let sig = *b"KVMKVMKVM\0\0\0";
            let w = |i: usize| u32::from_le_bytes([sig[i], sig[i + 1], sig[i + 2], sig[i + 3]]);
            Some([KVM_CPUID_FEATURES, w(0), w(4), w(8)])
        }
        KVM_CPUID_FEATURES => Some([
            KVM_FEATURE_CLOCKSOURCE2 | KVM_FEATURE_CLOCKSOURCE_STABLE_BIT,
            0,
            0,
            0,
        ]),
        _ => None,
    }
}

/// The pvclock scale for [`TSC_HZ`]: `(mul, shift)` with
/// `ns = ((delta << shift) or (delta >> -shift)) * mul >> 32`.
pub(crate) fn pvclock_scale() -> (u32, i8) {
    // Find shift so that NS_PER_SEC * 2^32 / (TSC_HZ * 2^shift) fits below 2^32.
    let mut shift: i8 = 0;
    let mut tsc = u128::from(TSC_HZ);
    let ns = u128::from(NS_PER_SEC) << 32;
    while ns / tsc >= 1 << 32 && shift < 31 {
        tsc <<= 1;
        shift += 1;
    }
    while ns / tsc < 1 << 31 && shift > -31 {
        tsc >>= 1;
        shift -= 1;
        if tsc == 0 {
            break;
        }
    }
    let mul = ns.checked_div(tsc).unwrap_or(u128::from(u32::MAX));
    (u32::try_from(mul).unwrap_or(u32::MAX), shift)
}

/// Highest guest-physical address bit kvmclock structures may use.
const MAX_GPA: u64 = (1 << 52) - 1;

/// One vCPU's kvmclock: the MSR values the guest wrote and what the VMM must write back.
///
/// The embedder forwards WRMSR/RDMSR of the kvmclock MSRs ([`KvmClock::is_kvmclock_msr`]) here,
/// then writes [`KvmClock::time_info`] at the address [`KvmClock::take_pending_write`] gives and
/// [`KvmClock::wall_clock`] at [`KvmClock::take_pending_wall_clock`]'s.
#[derive(Debug, Clone, Default)]
pub struct KvmClock {
    system_time_msr: u64,
    wall_clock_msr: u64,
    version: u32,
    pending_time: Option<u64>,
    pending_wall: Option<u64>,
}

impl KvmClock {
    /// A kvmclock with both MSRs zero (disabled).
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `msr` is one of the four kvmclock MSRs.
    pub fn is_kvmclock_msr(msr: u32) -> bool {
        matches!(
            msr,
            MSR_KVM_SYSTEM_TIME_NEW
                | MSR_KVM_WALL_CLOCK_NEW
                | MSR_KVM_SYSTEM_TIME
                | MSR_KVM_WALL_CLOCK
        )
    }

    /// The guest wrote the system-time MSR: bit 0 enables, the rest is the structure's
    /// guest-physical address. Returns that address if enabled and valid (the 32-byte structure
    /// inside one page and below 2^52); the address is also kept for
    /// [`KvmClock::take_pending_write`].
    pub fn write_system_time_msr(&mut self, value: u64) -> Option<u64> {
        self.system_time_msr = value;
        self.pending_time = None;
        if value & 1 == 0 {
            return None;
        }
        let gpa = value & !1;
        if gpa > MAX_GPA - 31 || (gpa & 0xfff) > 0x1000 - 32 {
            debug!(gpa, "kvmclock: structure address rejected");
            return None;
        }
        self.pending_time = Some(gpa);
        Some(gpa)
    }

    /// The last value written to the system-time MSR.
    pub fn system_time_msr(&self) -> u64 {
        self.system_time_msr
    }

    /// The guest-physical address where [`KvmClock::time_info`] must be written, once per
    /// enabling MSR write.
    pub fn take_pending_write(&mut self) -> Option<u64> {
        self.pending_time.take()
    }

    /// The guest-physical address where [`KvmClock::wall_clock`] must be written, once per
    /// wall-clock MSR write.
    pub fn take_pending_wall_clock(&mut self) -> Option<u64> {
        self.pending_wall.take()
    }

    /// RDMSR of a kvmclock MSR (`None`: not one).
    pub fn read_msr(&self, msr: u32) -> Option<u64> {
        match msr {
            MSR_KVM_SYSTEM_TIME_NEW | MSR_KVM_SYSTEM_TIME => Some(self.system_time_msr),
            MSR_KVM_WALL_CLOCK_NEW | MSR_KVM_WALL_CLOCK => Some(self.wall_clock_msr),
            _ => None,
        }
    }

    /// WRMSR of a kvmclock MSR (`None`: not one). As with KVM these never #GP: an unusable
    /// address (a time structure crossing a page, anything past 2^52) just leaves nothing to
    /// write. The result type matches the CPU's MSR hook.
    pub fn write_msr(&mut self, msr: u32, value: u64) -> Option<Result<(), ()>> {
        match msr {
            MSR_KVM_SYSTEM_TIME_NEW | MSR_KVM_SYSTEM_TIME => {
                self.write_system_time_msr(value);
            }
            MSR_KVM_WALL_CLOCK_NEW | MSR_KVM_WALL_CLOCK => {
                self.wall_clock_msr = value;
                self.pending_wall = (value <= MAX_GPA - 11).then_some(value);
                if self.pending_wall.is_none() {
                    debug!(gpa = value, "kvmclock: wall clock address rejected");
                }
            }
            _ => return None,
        }
        Some(Ok(()))
    }

    /// The `pvclock_vcpu_time_info` for VM time `now_ns` (little-endian, 32 bytes): version
    /// (even, advancing by 2 per call), tsc_timestamp, system_time = `now_ns`,
    /// tsc_to_system_mul, tsc_shift, flags = [`PVCLOCK_TSC_STABLE_BIT`].
    pub fn time_info(&mut self, now_ns: u64) -> [u8; 32] {
        self.version = self.version.wrapping_add(2) & !1;
        let (mul, shift) = pvclock_scale();
        let mut out = [0u8; 32];
        out[0..4].copy_from_slice(&self.version.to_le_bytes());
        out[8..16].copy_from_slice(&tsc_from_ns(now_ns).to_le_bytes());
        out[16..24].copy_from_slice(&now_ns.to_le_bytes());
        out[24..28].copy_from_slice(&mul.to_le_bytes());
        out[28] = shift.to_le_bytes()[0];
        out[29] = PVCLOCK_TSC_STABLE_BIT;
        out
    }

    /// The `pvclock_wall_clock` (version, sec, nsec; 12 bytes): the wall-clock time at VM time
    /// zero, given the host's Unix time `host_unix_ns` observed at VM time `now_ns`.
    pub fn wall_clock(host_unix_ns: u128, now_ns: u64) -> [u8; 12] {
        let boot = host_unix_ns.saturating_sub(u128::from(now_ns));
        let sec = u32::try_from(boot / u128::from(NS_PER_SEC)).unwrap_or(u32::MAX);
        let nsec = (boot % u128::from(NS_PER_SEC)) as u32;
        let mut out = [0u8; 12];
        out[0..4].copy_from_slice(&2u32.to_le_bytes());
        out[4..8].copy_from_slice(&sec.to_le_bytes());
        out[8..12].copy_from_slice(&nsec.to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guest's computation (Linux `pvclock_clocksource_read` without the stable fix-up).
    fn guest_ns(info: &[u8; 32], tsc: u64) -> u64 {
        let ts = u64::from_le_bytes(info[8..16].try_into().unwrap());
        let sys = u64::from_le_bytes(info[16..24].try_into().unwrap());
        let mul = u32::from_le_bytes(info[24..28].try_into().unwrap());
        let shift = info[28] as i8;
        let mut delta = tsc - ts;
        if shift < 0 {
            delta >>= -shift;
        } else {
            delta <<= shift;
        }
        sys + ((u128::from(delta) * u128::from(mul)) >> 32) as u64
    }

    #[test]
    fn tsc_and_ns_convert_exactly_both_ways() {
        for ns in [0, 1, 999, 1_000_000_007, u64::MAX / 3, u64::MAX] {
            assert_eq!(ns_from_tsc(tsc_from_ns(ns)), ns);
            assert_eq!(ns_from_tsc_ceil(tsc_from_ns(ns)), ns);
        }
        assert_eq!(tsc_from_ns(1_000_000_000), TSC_HZ);
    }

    #[test]
    fn kvmclock_scale_lets_the_guest_compute_ns_exactly() {
        let mut clock = KvmClock::new();
        let info = clock.time_info(5_000_000);
        for later in [5_000_000u64, 5_000_001, 7_123_456_789, 1 << 50] {
            assert_eq!(guest_ns(&info, tsc_from_ns(later)), later);
        }
    }

    #[test]
    fn kvmclock_structure_fields() {
        let mut clock = KvmClock::new();
        let a = clock.time_info(42);
        let b = clock.time_info(43);
        let va = u32::from_le_bytes(a[0..4].try_into().unwrap());
        let vb = u32::from_le_bytes(b[0..4].try_into().unwrap());
        assert_eq!(va % 2, 0);
        assert_eq!(vb, va + 2);
        assert_eq!(
            u64::from_le_bytes(a[8..16].try_into().unwrap()),
            tsc_from_ns(42)
        );
        assert_eq!(u64::from_le_bytes(a[16..24].try_into().unwrap()), 42);
        assert_eq!(u32::from_le_bytes(a[24..28].try_into().unwrap()), 1 << 31);
        assert_eq!(a[28] as i8, 1);
        assert_eq!(a[29], PVCLOCK_TSC_STABLE_BIT);
        assert_eq!(&a[4..8], &[0; 4]);
        assert_eq!(&a[30..32], &[0; 2]);
    }

    #[test]
    fn system_time_msr_enables_and_reports_the_address_once() {
        let mut clock = KvmClock::new();
        assert_eq!(clock.write_system_time_msr(0x1_0040 | 1), Some(0x1_0040));
        assert_eq!(clock.take_pending_write(), Some(0x1_0040));
        assert_eq!(clock.take_pending_write(), None);
        assert_eq!(clock.read_msr(MSR_KVM_SYSTEM_TIME_NEW), Some(0x1_0041));
        assert_eq!(clock.write_system_time_msr(0x1_0040), None);
        assert_eq!(clock.take_pending_write(), None);
    }

    #[test]
    fn unusable_kvmclock_addresses_are_ignored_without_gp() {
        let mut clock = KvmClock::new();
        assert_eq!(clock.write_system_time_msr(0x1fe2 | 1), None);
        assert_eq!(clock.write_system_time_msr(0x1fe0 | 1), Some(0x1fe0));
        assert_eq!(clock.write_system_time_msr(u64::MAX), None);
        assert_eq!(
            clock.write_msr(MSR_KVM_SYSTEM_TIME_NEW, u64::MAX),
            Some(Ok(()))
        );
        assert_eq!(clock.take_pending_write(), None);
        assert_eq!(
            clock.write_msr(MSR_KVM_WALL_CLOCK_NEW, u64::MAX - 4),
            Some(Ok(()))
        );
        assert_eq!(clock.take_pending_wall_clock(), None);
        assert_eq!(clock.write_msr(MSR_KVM_WALL_CLOCK_NEW, 0xffc), Some(Ok(())));
        assert_eq!(
            clock.take_pending_wall_clock(),
            Some(0xffc),
            "RAM writes may cross pages"
        );
        assert_eq!(clock.write_msr(0x10, 1), None);
    }

    #[test]
    fn legacy_msrs_behave_like_the_new_ones() {
        let mut clock = KvmClock::new();
        assert_eq!(clock.write_msr(MSR_KVM_SYSTEM_TIME, 0x2001), Some(Ok(())));
        assert_eq!(clock.take_pending_write(), Some(0x2000));
        assert_eq!(clock.write_msr(MSR_KVM_WALL_CLOCK, 0x3000), Some(Ok(())));
        assert_eq!(clock.take_pending_wall_clock(), Some(0x3000));
        assert!(KvmClock::is_kvmclock_msr(MSR_KVM_WALL_CLOCK_NEW));
        assert!(!KvmClock::is_kvmclock_msr(0x1b));
    }

    #[test]
    fn wall_clock_is_the_time_at_vm_start() {
        let host = 1_700_000_000_123_456_789u128;
        let w = KvmClock::wall_clock(host, 23_456_789);
        assert_eq!(u32::from_le_bytes(w[0..4].try_into().unwrap()) % 2, 0);
        assert_eq!(
            u32::from_le_bytes(w[4..8].try_into().unwrap()),
            1_700_000_000
        );
        assert_eq!(
            u32::from_le_bytes(w[8..12].try_into().unwrap()),
            100_000_000
        );
        let early = KvmClock::wall_clock(5, 10);
        assert_eq!(&early[4..12], &[0; 8]);
    }

    #[test]
    fn paravirt_leaves_advertise_kvm_and_only_kvmclock() {
        let sig = paravirt_cpuid(0x4000_0000).unwrap();
        assert_eq!(sig[0], 0x4000_0001);
        let mut text = Vec::new();
        for r in &sig[1..] {
            text.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&text, b"KVMKVMKVM\0\0\0");
        assert_eq!(
            paravirt_cpuid(0x4000_0001),
            Some([(1 << 3) | (1 << 24), 0, 0, 0])
        );
        assert_eq!(paravirt_cpuid(0x4000_0002), None);
        assert_eq!(paravirt_cpuid(1), None);
    }
}
