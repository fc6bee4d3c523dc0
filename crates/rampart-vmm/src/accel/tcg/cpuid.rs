//! CPUID of the software CPU: the baseline x86-64 model the CPU implements, plus what the
//! user-space APIC and clock offer (TSC-deadline timer, x2APIC, kvmclock), with the topology
//! leaves made consistent with the MADT. Nothing is advertised that is not implemented.

use rampart_config::VmConfig;
use rampart_tcg::apic::paravirt_cpuid;
use rampart_tcg::baseline_cpuid;
use rampart_tcg::cpu::CpuidFn;

use crate::arch::x86_64::cpuid::{apply_topology, CpuidEntry, CPUID_FLAG_SIGNIFICANT_INDEX};

/// Leaf 1 ECX: x2APIC.
const LEAF1_ECX_X2APIC: u32 = 1 << 21;
/// Leaf 1 ECX: TSC-deadline timer.
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 0x8000_0007 EDX: invariant TSC.
const EXT7_EDX_INVARIANT_TSC: u32 = 1 << 8;

fn entry(function: u32, index: u32, r: [u32; 4]) -> CpuidEntry {
    CpuidEntry {
        function,
        index,
        flags: 0,
        eax: r[0],
        ebx: r[1],
        ecx: r[2],
        edx: r[3],
    }
}

/// The CPUID table of software vCPU `index`.
pub fn table(index: u32, config: &VmConfig) -> Vec<CpuidEntry> {
    let mut entries = Vec::new();
    let max_basic = baseline_cpuid(0, 0)[0];
    for leaf in 0..=max_basic {
        let mut e = entry(leaf, 0, baseline_cpuid(leaf, 0));
        if leaf == 1 {
            e.ecx |= LEAF1_ECX_X2APIC | LEAF1_ECX_TSC_DEADLINE;
        }
        if leaf == 0xb || leaf == 7 {
            e.flags = CPUID_FLAG_SIGNIFICANT_INDEX;
        }
        entries.push(e);
    }
    let max_ext = baseline_cpuid(0x8000_0000, 0)[0];
    for leaf in 0x8000_0000..=max_ext.min(0x8000_00ff) {
        let mut e = entry(leaf, 0, baseline_cpuid(leaf, 0));
        if leaf == 0x8000_0007 {
            e.edx |= EXT7_EDX_INVARIANT_TSC;
        }
        entries.push(e);
    }
    for leaf in [0x4000_0000, 0x4000_0001] {
        if let Some(r) = paravirt_cpuid(leaf) {
            entries.push(entry(leaf, 0, r));
        }
    }
    apply_topology(&mut entries, index, &config.smp);
    entries
}

/// A CPUID provider for the software CPU: looks `leaf`/`subleaf` up in the table. Leaves past
/// the maximum answer as the highest basic leaf does on Intel and zeros on AMD; rampart's model
/// answers zeros.
pub fn provider(index: u32, config: &VmConfig) -> CpuidFn {
    let entries = table(index, config);
    Box::new(move |leaf, subleaf| {
        entries
            .iter()
            .find(|e| {
                e.function == leaf
                    && (e.flags & CPUID_FLAG_SIGNIFICANT_INDEX == 0 || e.index == subleaf)
            })
            .map(|e| [e.eax, e.ebx, e.ecx, e.edx])
            .unwrap_or([0; 4])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::topology::apic_id;
    use rampart_config::SmpConfig;

    #[test]
    fn leaf1_carries_the_topology_apic_id_and_the_timer_features() {
        let config = VmConfig {
            smp: SmpConfig::resolve(Some(4), None, None, None, None).unwrap(),
            ..VmConfig::default()
        };
        for i in 0..4 {
            let f = provider(i, &config);
            let mut f = f;
            let r = f(1, 0);
            assert_eq!(r[1] >> 24, apic_id(i, &config.smp));
            assert_ne!(r[2] & LEAF1_ECX_TSC_DEADLINE, 0);
        }
    }

    #[test]
    fn leaf7_reports_fsgsbase_and_erms_in_subleaf_0_only() {
        let mut f = provider(0, &VmConfig::default());
        let r = f(7, 0);
        assert_eq!(r[0], 0, "one subleaf");
        assert_eq!(r[1], 1 | (1 << 9), "FSGSBASE and ERMS, nothing else");
        assert_eq!(f(7, 1), [0; 4]);
    }

    #[test]
    fn kvm_paravirt_signature_is_present() {
        let mut f = provider(0, &VmConfig::default());
        let r = f(0x4000_0000, 0);
        let mut sig = Vec::new();
        for w in &r[1..] {
            sig.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(&sig[..9], b"KVMKVMKVM");
    }
}
