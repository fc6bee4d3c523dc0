//! Accelerator-independent CPUID entries and the topology leaves derived from [`apic_id`].
//!
//! The accelerator starts from what the host (or the software CPU) supports, converts it into
//! [`CpuidEntry`] values, calls [`apply_topology`] once per vCPU and hands the result back.

use rampart_config::SmpConfig;

use super::topology::{apic_id, topology_ids, ApicIdLayout};

/// The entry's `index` (sub-leaf, ECX on input) is significant. Same value as KVM's
/// `KVM_CPUID_FLAG_SIGNIFCANT_INDEX`.
pub const CPUID_FLAG_SIGNIFICANT_INDEX: u32 = 1;

/// One CPUID leaf/sub-leaf and its output registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuidEntry {
    /// Leaf (EAX on input).
    pub function: u32,
    /// Sub-leaf (ECX on input); meaningful only with [`CPUID_FLAG_SIGNIFICANT_INDEX`].
    pub index: u32,
    pub flags: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// Leaf 0x1 EDX: HTT (multi-threading / multi-core package).
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 0x1 ECX: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 0xB/0x1F level types.
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Rewrites the topology-dependent leaves of `entries` for vCPU `cpu_index` so that they agree
/// with [`apic_id`] (and therefore with the MADT):
/// - 0x1: initial APIC ID (EBX[31:24]), logical processor count (EBX[23:16]), HTT (EDX[28]),
///   hypervisor bit (ECX[31]);
/// - 0x4: cores per package (EAX[31:26]) and threads sharing each cache (EAX[25:14]);
/// - 0xB (and 0x1F if present): SMT and core levels, shifts, counts, x2APIC ID in EDX;
/// - AMD 0x8000_0008 ECX and 0x8000_001E, if present.
///
/// Leaf 0xB is added if the maximum basic leaf (leaf 0 EAX) covers it but it is missing.
pub fn apply_topology(entries: &mut Vec<CpuidEntry>, cpu_index: u32, smp: &SmpConfig) {
    let layout = ApicIdLayout::new(smp);
    let id = apic_id(cpu_index, smp);
    let ids = topology_ids(cpu_index, smp);
    let threads = smp.threads.max(1);
    let cores = smp.cores.max(1);
    let per_package = threads.saturating_mul(cores);
    let max_basic = entries
        .iter()
        .find(|e| e.function == 0)
        .map(|e| e.eax)
        .unwrap_or(0);

    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | ((id & 0xff) << 24);
                if per_package > 1 {
                    e.ebx |= per_package.min(0xff) << 16;
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
                e.ecx |= LEAF1_ECX_HYPERVISOR;
            }
            0x4 if e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 0x7;
                let sharing_bits = if level >= 3 {
                    layout.package_shift()
                } else {
                    layout.thread_bits
                };
                let cores_field = (1u32 << layout.core_bits) - 1;
                let sharing_field = (1u32 << sharing_bits) - 1;
                e.eax = (e.eax & 0x3fff)
                    | ((cores_field & 0x3f) << 26)
                    | ((sharing_field & 0xfff) << 14);
            }
            0x8000_0008 => {
                e.ecx = (e.ecx & !0xf0ff)
                    | ((per_package - 1) & 0xff)
                    | ((layout.package_shift() & 0xf) << 12);
            }
            0x8000_001e => {
                e.eax = id;
                e.ebx = (e.ebx & !0xffff) | (ids.core & 0xff) | (((threads - 1) & 0xff) << 8);
                e.ecx = (e.ecx & !0x7ff) | (ids.socket & 0xff);
            }
            _ => {}
        }
    }

    let has_b = entries.iter().any(|e| e.function == 0xb);
    let has_1f = entries.iter().any(|e| e.function == 0x1f);
    if has_b || max_basic >= 0xb {
        replace_extended_topology_leaf(entries, 0xb, id, &layout, threads, per_package);
    }
    if has_1f {
        replace_extended_topology_leaf(entries, 0x1f, id, &layout, threads, per_package);
    }
}

/// Replaces every sub-leaf of leaf 0xB or 0x1F with: sub-leaf 0 the SMT level, sub-leaf 1 the
/// core level, sub-leaf 2 the terminating invalid level.
fn replace_extended_topology_leaf(
    entries: &mut Vec<CpuidEntry>,
    function: u32,
    x2apic_id: u32,
    layout: &ApicIdLayout,
    threads: u32,
    per_package: u32,
) {
    entries.retain(|e| e.function != function);
    let levels = [
        (layout.thread_bits, threads, LEVEL_TYPE_SMT),
        (layout.package_shift(), per_package, LEVEL_TYPE_CORE),
        (0, 0, 0),
    ];
    for (index, (shift, count, level_type)) in levels.into_iter().enumerate() {
        let index = index as u32;
        entries.push(CpuidEntry {
            function,
            index,
            flags: CPUID_FLAG_SIGNIFICANT_INDEX,
            eax: shift & 0x1f,
            ebx: count & 0xffff,
            ecx: (level_type << 8) | (index & 0xff),
            edx: x2apic_id,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::topology::smp;

    /// A host-like starting table: max basic leaf 0xB, leaf 1, two leaf-4 caches (L1d, L3),
    /// a leaf 0xB placeholder, 0x1F, and the AMD leaves.
    fn host_entries() -> Vec<CpuidEntry> {
        let cache = |index: u32, level: u32, type_: u32| CpuidEntry {
            function: 4,
            index,
            flags: CPUID_FLAG_SIGNIFICANT_INDEX,
            eax: (level << 5) | type_ | (0x3f << 26) | (0xfff << 14),
            ..Default::default()
        };
        vec![
            CpuidEntry {
                function: 0,
                eax: 0x1f,
                ..Default::default()
            },
            CpuidEntry {
                function: 1,
                ebx: 0xff00_0800,
                edx: LEAF1_EDX_HTT,
                ..Default::default()
            },
            cache(0, 1, 1),
            cache(1, 3, 3),
            cache(2, 0, 0),
            CpuidEntry {
                function: 0xb,
                index: 5,
                ..Default::default()
            },
            CpuidEntry {
                function: 0x1f,
                ..Default::default()
            },
            CpuidEntry {
                function: 0x8000_0008,
                ecx: 0xffff_ffff,
                ..Default::default()
            },
            CpuidEntry {
                function: 0x8000_001e,
                ..Default::default()
            },
        ]
    }

    fn leaf(entries: &[CpuidEntry], function: u32, index: u32) -> CpuidEntry {
        *entries
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("leaf {function:#x}.{index} missing"))
    }

    /// Checks every invariant for each vCPU of `s`.
    fn check_topology(s: &SmpConfig) {
        let per_package = s.threads * s.cores;
        for cpu in 0..s.cpus {
            // Arrange
            let mut entries = host_entries();
            let id = apic_id(cpu, s);
            // Act
            apply_topology(&mut entries, cpu, s);
            // Assert
            let l1 = leaf(&entries, 1, 0);
            assert_eq!(l1.ebx >> 24, id & 0xff, "cpu {cpu}");
            assert_eq!(l1.ebx & 0xffff, 0x0800, "brand/clflush bits kept");
            assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
            assert_eq!(l1.edx & LEAF1_EDX_HTT != 0, per_package > 1);
            if per_package > 1 {
                assert_eq!((l1.ebx >> 16) & 0xff, per_package);
            }
            for function in [0xb, 0x1f] {
                let smt = leaf(&entries, function, 0);
                let core = leaf(&entries, function, 1);
                let end = leaf(&entries, function, 2);
                assert_eq!(smt.edx, id);
                assert_eq!(core.edx, id);
                assert_eq!(smt.ebx, s.threads);
                assert_eq!(core.ebx, per_package);
                assert_eq!((smt.ecx >> 8) & 0xff, LEVEL_TYPE_SMT);
                assert_eq!((core.ecx >> 8) & 0xff, LEVEL_TYPE_CORE);
                assert_eq!((end.ecx >> 8) & 0xff, 0);
                // The package ID is the APIC ID shifted by the core level's shift; the core ID
                // within the package by the SMT shift.
                let ids = topology_ids(cpu, s);
                assert_eq!(id >> (core.eax & 0x1f), ids.socket);
                let core_mask = (1 << (core.eax & 0x1f)) - 1;
                assert_eq!((id & core_mask) >> (smt.eax & 0x1f), ids.core);
                assert!(!entries
                    .iter()
                    .any(|e| e.function == function && e.index > 2));
            }
            let l1d = leaf(&entries, 4, 0);
            let l3 = leaf(&entries, 4, 1);
            let cores_ids = (l1d.eax >> 26) + 1;
            assert!(cores_ids >= s.cores && cores_ids.is_power_of_two());
            assert!(((l1d.eax >> 14) & 0xfff) + 1 >= s.threads);
            assert!(((l3.eax >> 14) & 0xfff) + 1 >= per_package);
            assert_eq!(
                leaf(&entries, 4, 2),
                leaf(&host_entries(), 4, 2),
                "null sub-leaf untouched"
            );
            let amd8 = leaf(&entries, 0x8000_0008, 0);
            assert_eq!((amd8.ecx & 0xff) + 1, per_package);
            let amd1e = leaf(&entries, 0x8000_001e, 0);
            assert_eq!(amd1e.eax, id);
            assert_eq!(((amd1e.ebx >> 8) & 0xff) + 1, s.threads);
        }
    }

    #[test]
    fn topology_leaves_agree_with_apic_id_for_one_cpu() {
        check_topology(&smp(1, 1, 1));
    }

    #[test]
    fn topology_leaves_agree_with_apic_id_for_two_cores() {
        check_topology(&smp(1, 2, 1));
    }

    #[test]
    fn topology_leaves_agree_with_apic_id_for_four_sockets() {
        check_topology(&smp(4, 1, 1));
    }

    #[test]
    fn topology_leaves_agree_with_apic_id_for_2s_2c_2t() {
        check_topology(&smp(2, 2, 2));
    }

    #[test]
    fn topology_leaves_agree_with_apic_id_for_three_cores() {
        check_topology(&smp(1, 3, 2));
    }

    #[test]
    fn leaf_b_is_added_when_max_leaf_covers_it() {
        // Arrange
        let mut entries = vec![CpuidEntry {
            function: 0,
            eax: 0xd,
            ..Default::default()
        }];
        // Act
        apply_topology(&mut entries, 1, &smp(1, 2, 1));
        // Assert
        assert_eq!(leaf(&entries, 0xb, 0).edx, 1);
        assert!(!entries.iter().any(|e| e.function == 0x1f));
    }

    #[test]
    fn old_max_leaf_gets_no_leaf_b() {
        let mut entries = vec![CpuidEntry {
            function: 0,
            eax: 0x4,
            ..Default::default()
        }];
        apply_topology(&mut entries, 0, &smp(1, 1, 1));
        assert_eq!(entries.len(), 1);
    }
}
