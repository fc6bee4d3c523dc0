//! ACPI description of the PCI host bridge: the MCFG table (where ECAM is) and, in the DSDT,
//! `\_SB.PCI0` (PNP0A08, a PCI Express root bridge) whose `_CRS` gives the bus range, the
//! 0xCF8 ports and the two MMIO windows BARs live in, plus `\_SB.MRES` (PNP0C02, motherboard
//! resources) reserving ECAM so Linux trusts MCFG without `pci=` options.

use acpi_tables::mcfg::MCFG;
use acpi_tables::{aml, Aml};

use super::layout::{PCI_ECAM_SIZE, PCI_ECAM_START, PCI_MMIO32_SIZE, PCI_MMIO32_START};

/// The MCFG table: one ECAM region, segment 0, buses 0..=255.
pub fn build_mcfg(oem_id: [u8; 6], oem_revision: u32) -> Vec<u8> {
    let mut mcfg = MCFG::new(oem_id, *b"RMPTMCFG", oem_revision);
    mcfg.add_ecam(PCI_ECAM_START, 0, 0, ((PCI_ECAM_SIZE >> 20) - 1) as u8);
    let mut v = Vec::new();
    mcfg.to_aml_bytes(&mut v);
    v
}

/// AML for `Scope(\_SB) { PCI0, MRES }` with the 64-bit window `[start, start + size)`.
pub fn dsdt_aml(mmio64: (u64, u64)) -> Vec<u8> {
    let (start64, size64) = mmio64;
    let mut out = Vec::new();
    aml::Scope::new(
        "_SB_".into(),
        vec![
            &aml::Device::new(
                "PCI0".into(),
                vec![
                    &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08")),
                    &aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03")),
                    &aml::Name::new("_UID".into(), &aml::ZERO),
                    &aml::Name::new("_SEG".into(), &aml::ZERO),
                    &aml::Name::new("_BBN".into(), &aml::ZERO),
                    &aml::Name::new("_ADR".into(), &aml::ZERO),
                    &aml::Name::new(
                        "_CRS".into(),
                        &aml::ResourceTemplate::new(vec![
                            &aml::AddressSpace::new_bus_number(0u16, 0xffu16),
                            &aml::IO::new(0xcf8, 0xcf8, 1, 8),
                            &aml::AddressSpace::new_memory(
                                aml::AddressSpaceCacheable::NotCacheable,
                                true,
                                PCI_MMIO32_START as u32,
                                (PCI_MMIO32_START + PCI_MMIO32_SIZE - 1) as u32,
                                None,
                            ),
                            &aml::AddressSpace::new_memory(
                                aml::AddressSpaceCacheable::NotCacheable,
                                true,
                                start64,
                                start64 + size64 - 1,
                                None,
                            ),
                        ]),
                    ),
                ],
            ),
            &aml::Device::new(
                "MRES".into(),
                vec![
                    &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C02")),
                    &aml::Name::new("_UID".into(), &aml::ZERO),
                    &aml::Name::new(
                        "_CRS".into(),
                        &aml::ResourceTemplate::new(vec![&aml::Memory32Fixed::new(
                            false,
                            PCI_ECAM_START as u32,
                            PCI_ECAM_SIZE as u32,
                        )]),
                    ),
                ],
            ),
        ],
    )
    .to_aml_bytes(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcfg_describes_ecam_for_all_buses() {
        let t = build_mcfg(*b"RMPART", 1);
        assert_eq!(&t[0..4], b"MCFG");
        assert_eq!(t.len(), 44 + 16);
        assert_eq!(
            u64::from_le_bytes(t[44..52].try_into().unwrap()),
            PCI_ECAM_START
        );
        assert_eq!((t[54], t[55]), (0, 255));
        assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
    }

    #[test]
    fn host_bridge_aml_names_pnp0a08_and_both_windows() {
        let a = dsdt_aml((0x1_0000_0000, 0x10_0000_0000));
        let find = |needle: &[u8]| a.windows(needle.len()).any(|w| w == needle);
        assert!(find(b"PCI0"));
        assert!(find(b"MRES"));
        // EISA ID of PNP0A08 as AML encodes it.
        assert!(find(&[0x41, 0xd0, 0x0a, 0x08]));
        assert!(find(&0xc000_0000u32.to_le_bytes()));
        assert!(find(&0x10_ffff_ffffu64.to_le_bytes()));
    }
}
