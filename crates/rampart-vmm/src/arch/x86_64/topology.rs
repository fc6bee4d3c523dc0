//! CPU topology: how a vCPU index maps to an APIC ID with thread, core and socket sub-fields.
//!
//! The APIC ID of a vCPU is `socket << (core_bits + thread_bits) | core << thread_bits | thread`,
//! each field as wide as `ceil(log2(count))`. The MADT and CPUID (leaves 0x1, 0x4, 0xB, 0x1F,
//! 0x8000_0008, 0x8000_001E) are all derived from this one definition.

use rampart_config::SmpConfig;

/// `ceil(log2(n))`, with `ceil_log2(0) == ceil_log2(1) == 0`.
pub fn ceil_log2(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Bit widths of the APIC ID sub-fields of a topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApicIdLayout {
    /// Width of the thread (SMT) field.
    pub thread_bits: u32,
    /// Width of the core field.
    pub core_bits: u32,
}

impl ApicIdLayout {
    /// The layout for `smp` (zero counts are treated as one).
    pub fn new(smp: &SmpConfig) -> Self {
        ApicIdLayout {
            thread_bits: ceil_log2(smp.threads.max(1)),
            core_bits: ceil_log2(smp.cores.max(1)),
        }
    }

    /// Shift of the socket (package) field: the thread and core fields together.
    pub fn package_shift(&self) -> u32 {
        self.thread_bits + self.core_bits
    }
}

/// Where a vCPU sits in the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTopologyIds {
    pub socket: u32,
    pub core: u32,
    pub thread: u32,
}

/// The socket, core and thread of vCPU `cpu_index` (vCPUs are numbered thread-first, then
/// core, then socket, as QEMU does).
pub fn topology_ids(cpu_index: u32, smp: &SmpConfig) -> CpuTopologyIds {
    let threads = smp.threads.max(1);
    let cores = smp.cores.max(1);
    CpuTopologyIds {
        thread: cpu_index % threads,
        core: (cpu_index / threads) % cores,
        socket: cpu_index / threads / cores,
    }
}

/// The x2APIC/xAPIC ID of vCPU `cpu_index`.
pub fn apic_id(cpu_index: u32, smp: &SmpConfig) -> u32 {
    let layout = ApicIdLayout::new(smp);
    let ids = topology_ids(cpu_index, smp);
    (ids.socket << layout.package_shift()) | (ids.core << layout.thread_bits) | ids.thread
}

#[cfg(test)]
pub(crate) fn smp(sockets: u32, cores: u32, threads: u32) -> SmpConfig {
    let n = sockets * cores * threads;
    SmpConfig {
        cpus: n,
        sockets,
        cores,
        threads,
        maxcpus: n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceil_log2_rounds_up() {
        let got: Vec<u32> = [1, 2, 3, 4, 5, 8, 9]
            .iter()
            .map(|&n| ceil_log2(n))
            .collect();
        assert_eq!(got, vec![0, 1, 2, 2, 3, 3, 4]);
    }

    #[test]
    fn single_cpu_has_apic_id_zero() {
        assert_eq!(apic_id(0, &SmpConfig::default()), 0);
    }

    #[test]
    fn sockets_only_topology_is_dense() {
        let s = smp(4, 1, 1);
        let ids: Vec<u32> = (0..4).map(|i| apic_id(i, &s)).collect();
        assert_eq!(ids, vec![0, 1, 2, 3]);
    }

    #[test]
    fn two_sockets_two_cores_two_threads_use_one_bit_per_field() {
        let s = smp(2, 2, 2);
        let ids: Vec<u32> = (0..8).map(|i| apic_id(i, &s)).collect();
        assert_eq!(ids, vec![0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(
            topology_ids(5, &s),
            CpuTopologyIds {
                socket: 1,
                core: 0,
                thread: 1
            }
        );
    }

    #[test]
    fn non_power_of_two_cores_leave_gaps_in_ids() {
        let s = smp(2, 3, 1);
        let ids: Vec<u32> = (0..6).map(|i| apic_id(i, &s)).collect();
        assert_eq!(ids, vec![0, 1, 2, 4, 5, 6]);
    }
}
