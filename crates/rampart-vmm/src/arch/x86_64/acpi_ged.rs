//! The ACPI power button of the hardware-reduced machine: a Generic Event Device
//! (`\_SB.GED_`, ACPI0013) whose interrupt, [`GED_GSI`], makes the OS run its `_EVT` method,
//! which notifies the power button device `\_SB.PWRB` (PNP0C0C) with 0x80 ("button pressed").
//! Linux's GED driver is built in; its `button` driver turns the notification into a
//! `KEY_POWER` input event and an ACPI netlink event, which `acpid` (or systemd-logind) acts
//! on. This is how Cloud Hypervisor and Firecracker deliver a power button without fixed
//! ACPI hardware. `system_powerdown` pulses the line (`irq_line(GED_GSI)`, both accelerators).

use acpi_tables::{aml, Aml};

/// The GED's interrupt: an ISA-range GSI no other device uses (edge, active high, as the
/// MADT's defaults for ISA IRQs without an override).
pub const GED_GSI: u32 = 6;

/// Notify value for "power button pressed" (ACPI spec, Device Object Notification Values).
const NOTIFY_BUTTON_PRESSED: u8 = 0x80;

/// Appends `Scope (\_SB) { Device (GED_) { ... } }` to the DSDT body. The `PWRB` device itself
/// is defined with the other `\_SB` devices.
pub fn append_ged(body: &mut Vec<u8>) {
    let pressed = NOTIFY_BUTTON_PRESSED;
    let gsi = GED_GSI;
    aml::Scope::new(
        "\\_SB_".into(),
        vec![&aml::Device::new(
            "GED_".into(),
            vec![
                &aml::Name::new("_HID".into(), &"ACPI0013"),
                &aml::Name::new("_UID".into(), &aml::ZERO),
                &aml::Name::new(
                    "_CRS".into(),
                    &aml::ResourceTemplate::new(vec![&aml::Interrupt::new(
                        true, true, false, false, GED_GSI,
                    )]),
                ),
                &aml::Method::new(
                    "_EVT".into(),
                    1,
                    true,
                    vec![&aml::If::new(
                        &aml::Equal::new(&aml::Arg(0), &gsi),
                        vec![&aml::Notify::new(&aml::Path::new("\\_SB_.PWRB"), &pressed)],
                    )],
                ),
            ],
        )],
    )
    .to_aml_bytes(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn ged_names_its_hid_interrupt_and_event_method() {
        let mut body = Vec::new();
        append_ged(&mut body);
        assert!(contains(&body, b"GED_"));
        assert!(contains(&body, b"ACPI0013"));
        assert!(contains(&body, b"_EVT"));
        assert!(contains(&body, b"PWRB"));
        // Extended IRQ descriptor: consumer, edge, active high, exclusive, one GSI.
        assert!(contains(
            &body,
            &[0x89, 6, 0, 0b011, 1, GED_GSI as u8, 0, 0, 0]
        ));
    }
}
