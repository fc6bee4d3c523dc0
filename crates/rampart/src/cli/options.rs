//! Interpreting the QemuOpts-style options: `-machine`, `-accel`, `-cpu`, `-m`, `-smp`, `-name`,
//! `-uuid`, `-display`. Each turns parsed text into typed configuration values.

use std::ffi::OsStr;

use rampart_config::{parse_size, Accel, CpuModel, MachineType, SmpConfig};

use super::qemu_opts::{OptSpec, Opts};
use super::CliError;

/// QEMU's way of asking for a list instead of a value.
pub(crate) fn is_help(value: &str) -> bool {
    value == "help" || value == "?"
}

pub(crate) const MACHINE: OptSpec = OptSpec {
    option: "-machine",
    implied: Some("type"),
    known: &["type", "accel"],
    unsupported: &[
        "kernel-irqchip",
        "kernel_irqchip",
        "usb",
        "vmport",
        "smm",
        "pit",
        "pic",
        "hpet",
        "sata",
        "smbus",
        "acpi",
        "graphics",
        "dump-guest-core",
        "mem-merge",
        "memory-backend",
        "memory-encryption",
        "confidential-guest-support",
        "nvdimm",
        "firmware",
        "max-ram-below-4g",
        "suppress-vmdesc",
        "hmat",
        "boot",
        "kernel",
        "initrd",
        "append",
        "dtb",
        "i8042",
        "x-option-roms",
    ],
    reason: "rampart's machine has a fixed device set and no machine properties besides 'accel'",
};

pub(crate) const ACCEL: OptSpec = OptSpec {
    option: "-accel",
    implied: Some("accel"),
    known: &["accel", "jit"],
    unsupported: &[
        "thread",
        "tb-size",
        "split-wx",
        "one-insn-per-tb",
        "kernel-irqchip",
        "kvm-shadow-mem",
        "dirty-ring-size",
        "eager-split-size",
        "notify-vmexit",
        "notify-window",
        "igd-passthru",
    ],
    reason: "accelerator tuning properties are not implemented",
};

pub(crate) const MEMORY: OptSpec = OptSpec {
    option: "-m",
    implied: Some("size"),
    known: &["size"],
    unsupported: &["slots", "maxmem"],
    reason: "memory hotplug is not supported",
};

pub(crate) const SMP: OptSpec = OptSpec {
    option: "-smp",
    implied: Some("cpus"),
    known: &[
        "cpus", "sockets", "cores", "threads", "maxcpus", "dies", "clusters",
    ],
    unsupported: &["books", "drawers", "modules"],
    reason: "not part of the x86-64 topology rampart builds",
};

pub(crate) const NAME: OptSpec = OptSpec {
    option: "-name",
    implied: Some("guest"),
    known: &["guest", "debug-threads"],
    unsupported: &["process"],
    reason: "setting the process name is not supported",
};

pub(crate) const DISPLAY: OptSpec = OptSpec {
    option: "-display",
    implied: Some("type"),
    known: &["type"],
    unsupported: &[
        "gl",
        "full-screen",
        "window-close",
        "show-cursor",
        "grab-on-hover",
    ],
    reason: "rampart has no display",
};

/// Resolves a machine type name, including QEMU's versioned names.
pub(crate) fn machine_type(name: &str) -> Option<MachineType> {
    let versioned = |prefix: &str| {
        name.strip_prefix(prefix).is_some_and(|v| {
            v.split_once('.').is_some_and(|(a, b)| {
                [a, b]
                    .iter()
                    .all(|p| !p.is_empty() && p.len() <= 4 && p.bytes().all(|c| c.is_ascii_digit()))
            })
        })
    };
    match name {
        "q35" => Some(MachineType::Q35),
        "pc" => Some(MachineType::Pc),
        "microvm" => Some(MachineType::Microvm),
        _ if versioned("pc-q35-") => Some(MachineType::Q35),
        _ if versioned("pc-i440fx-") => Some(MachineType::Pc),
        _ => None,
    }
}

/// The merged `-machine` options: type and the legacy accelerator list.
pub(crate) fn machine(opts: &Opts) -> Result<(MachineType, Option<Vec<Accel>>), CliError> {
    let mtype = match opts.str("type")? {
        None => MachineType::default(),
        Some(name) => machine_type(name).ok_or_else(|| {
            opts.invalid(
                "type",
                OsStr::new(name),
                "unknown machine type (try -machine help)",
            )
        })?,
    };
    let accel = match opts.str("accel")? {
        None => None,
        Some(list) => {
            let mut out = Vec::new();
            for name in list.split(':') {
                let a = accel_name(name)
                    .ok_or_else(|| opts.invalid("accel", OsStr::new(list), &bad_accel(name)))?;
                if !out.contains(&a) {
                    out.push(a);
                }
            }
            Some(out)
        }
    };
    Ok((mtype, accel))
}

fn accel_name(name: &str) -> Option<Accel> {
    match name {
        "kvm" => Some(Accel::Kvm),
        "tcg" => Some(Accel::Tcg),
        _ => None,
    }
}

fn bad_accel(name: &str) -> String {
    let shown: String = name.chars().take(40).collect();
    format!("accelerator '{shown}' is not supported (rampart has kvm and tcg)")
}

/// One `-accel` occurrence, and its `jit=` (`tcg` only).
pub(crate) fn accel(opts: &Opts) -> Result<(Accel, Option<bool>), CliError> {
    let name = opts.str("accel")?.ok_or_else(|| CliError::Invalid {
        option: "-accel",
        message: "no accelerator named (use -accel kvm or -accel tcg)".into(),
    })?;
    let accel = accel_name(name)
        .ok_or_else(|| opts.invalid("accel", OsStr::new(name), &bad_accel(name)))?;
    let jit = opts.bool("jit")?;
    if jit.is_some() && accel != Accel::Tcg {
        return Err(CliError::Invalid {
            option: "-accel",
            message: "jit= is a property of the tcg accelerator only".into(),
        });
    }
    Ok((accel, jit))
}

/// `-cpu MODEL[,feature...]`. Returns `None` for `-cpu help`.
pub(crate) fn cpu(arg: &str) -> Result<Option<CpuModel>, CliError> {
    let mut parts = arg.split(',');
    let model_name = parts.next().unwrap_or_default();
    if is_help(model_name) {
        return Ok(None);
    }
    let model = match model_name {
        "host" => CpuModel::Host,
        "max" => CpuModel::Max,
        "qemu64" => CpuModel::Qemu64,
        _ => {
            return Err(CliError::InvalidValue {
                option: "-cpu",
                property: "model".into(),
                value: model_name.chars().take(80).collect(),
                reason: "unknown CPU model (rampart has host, max and qemu64; try -cpu help)"
                    .into(),
            })
        }
    };
    if let Some(feature) = parts.find(|f| !f.is_empty()) {
        return Err(CliError::Invalid {
            option: "-cpu",
            message: format!(
                "CPU feature '{}' is not supported yet: rampart uses model '{model_name}' as it is",
                feature.chars().take(80).collect::<String>()
            ),
        });
    }
    Ok(Some(model))
}

/// The merged `-m` options → bytes (a bare number is MiB, as in QEMU).
pub(crate) fn memory(opts: &Opts) -> Result<Option<u64>, CliError> {
    match opts.str("size")? {
        None => Ok(None),
        Some("") => Err(CliError::Invalid {
            option: "-m",
            message: "missing size".into(),
        }),
        Some(v) => Ok(Some(parse_size("-m", v, 1 << 20)?)),
    }
}

/// The merged `-smp` options → a resolved topology.
pub(crate) fn smp(opts: &Opts) -> Result<SmpConfig, CliError> {
    for key in ["dies", "clusters"] {
        if let Some(n) = opts.u32(key)? {
            if n != 1 {
                return Err(opts.invalid(
                    key,
                    OsStr::new(&n.to_string()),
                    "rampart supports only 1",
                ));
            }
        }
    }
    Ok(SmpConfig::resolve(
        opts.u32("cpus")?,
        opts.u32("sockets")?,
        opts.u32("cores")?,
        opts.u32("threads")?,
        opts.u32("maxcpus")?,
    )?)
}

/// The merged `-name` options → the guest name (`debug-threads` is accepted and has no effect:
/// rampart always names its threads).
pub(crate) fn name(opts: &Opts) -> Result<Option<String>, CliError> {
    opts.bool("debug-threads")?;
    Ok(opts.str("guest")?.map(str::to_owned))
}

/// `-display`: only `none` exists in rampart.
pub(crate) fn display(opts: &Opts) -> Result<(), CliError> {
    match opts.str("type")? {
        Some("none") => Ok(()),
        Some(other) => Err(opts.invalid(
            "type",
            OsStr::new(other),
            "rampart has no display; only 'none' is accepted",
        )),
        None => Err(CliError::Invalid {
            option: "-display",
            message: "no display type given (only 'none' is accepted)".into(),
        }),
    }
}

/// `-uuid` text (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, hex in either case) → 16 bytes.
pub(crate) fn uuid(text: &str) -> Result<[u8; 16], CliError> {
    let bad = || CliError::InvalidValue {
        option: "-uuid",
        property: "uuid".into(),
        value: text.chars().take(80).collect(),
        reason: "expected the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx".into(),
    };
    let b = text.as_bytes();
    if b.len() != 36 {
        return Err(bad());
    }
    let mut out = [0u8; 16];
    let mut n = 0;
    let mut i = 0;
    while i < b.len() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if b[i] != b'-' {
                return Err(bad());
            }
            i += 1;
            continue;
        }
        let hi = hex(b[i]).ok_or_else(bad)?;
        let lo = hex(*b.get(i + 1).ok_or_else(bad)?).ok_or_else(bad)?;
        *out.get_mut(n).ok_or_else(bad)? = (hi << 4) | lo;
        n += 1;
        i += 2;
    }
    Ok(out)
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::super::qemu_opts::parse;
    use super::*;

    fn opts(spec: &OptSpec, arg: &str) -> Opts {
        parse(spec, OsStr::new(arg)).unwrap()
    }

    #[test]
    fn versioned_machine_names_map_to_their_family() {
        assert_eq!(machine_type("pc-q35-9.2"), Some(MachineType::Q35));
        assert_eq!(machine_type("pc-i440fx-2.12"), Some(MachineType::Pc));
        assert_eq!(machine_type("pc-q35-"), None);
        assert_eq!(machine_type("pc-q35-9"), None);
        assert_eq!(machine_type("virt"), None);
    }

    #[test]
    fn machine_accel_colon_list_keeps_order_without_duplicates() {
        let o = opts(&MACHINE, "q35,accel=kvm:tcg:kvm");

        let (t, a) = machine(&o).unwrap();

        assert_eq!(t, MachineType::Q35);
        assert_eq!(a, Some(vec![Accel::Kvm, Accel::Tcg]));
    }

    #[test]
    fn machine_rejects_unknown_accelerator_in_list() {
        let err = machine(&opts(&MACHINE, "accel=kvm:xen")).unwrap_err();

        assert!(err.to_string().contains("'xen'"), "{err}");
    }

    #[test]
    fn cpu_models_and_feature_rejection() {
        assert_eq!(cpu("host").unwrap(), Some(CpuModel::Host));
        assert_eq!(cpu("qemu64").unwrap(), Some(CpuModel::Qemu64));
        assert_eq!(cpu("help").unwrap(), None);
        let err = cpu("host,+x2apic").unwrap_err();
        assert!(err.to_string().contains("'+x2apic'"), "{err}");
        assert!(cpu("Skylake-Client").is_err());
    }

    #[test]
    fn uuid_text_becomes_bytes() {
        let u = uuid("12345678-9abc-DEF0-1234-56789abcdef0").unwrap();

        assert_eq!(u[0], 0x12);
        assert_eq!(u[6], 0xde);
        assert_eq!(u[15], 0xf0);
    }

    #[test]
    fn uuid_rejects_malformed_text() {
        for bad in [
            "",
            "12345678-9abc-def0-1234-56789abcdef",
            "12345678-9abc-def0-1234-56789abcdef0a",
            "123456789-abc-def0-1234-56789abcdef0",
            "1234567g-9abc-def0-1234-56789abcdef0",
            "12345678-9abc-def0-1234-56789abcdéf",
        ] {
            assert!(uuid(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn smp_accepts_dies_and_clusters_only_as_one() {
        assert!(smp(&opts(&SMP, "4,dies=1,clusters=1")).is_ok());
        let err = smp(&opts(&SMP, "4,dies=2")).unwrap_err();
        assert!(err.to_string().contains("dies"), "{err}");
    }

    #[test]
    fn display_accepts_only_none() {
        assert!(display(&opts(&DISPLAY, "none")).is_ok());
        assert!(display(&opts(&DISPLAY, "gtk")).is_err());
    }
}
