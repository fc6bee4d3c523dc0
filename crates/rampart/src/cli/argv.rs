//! argv → a list of recognised options with their arguments (QEMU's option table, reduced to
//! what rampart implements). `-opt` and `--opt` are the same option; an argument is always the
//! next argv element.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use super::CliError;

/// Every option rampart accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opt {
    Machine,
    Accel,
    EnableKvm,
    Cpu,
    Memory,
    Smp,
    Kernel,
    Initrd,
    Append,
    Nographic,
    Display,
    Serial,
    NoReboot,
    NoShutdown,
    StartPaused,
    Name,
    Uuid,
    Nodefaults,
    Version,
    Help,
    Object,
    Device,
    Blockdev,
    Drive,
    Chardev,
    Mon,
    Qmp,
    Audit,
    Monitor,
    RunWith,
    Runas,
    Chroot,
    Netdev,
    Nic,
    Sandbox,
    AddFd,
    MonitorPathAllow,
}

struct OptDef {
    name: &'static str,
    opt: Opt,
    takes_arg: bool,
}

const fn def(name: &'static str, opt: Opt, takes_arg: bool) -> OptDef {
    OptDef {
        name,
        opt,
        takes_arg,
    }
}

const TABLE: &[OptDef] = &[
    def("-machine", Opt::Machine, true),
    def("-M", Opt::Machine, true),
    def("-accel", Opt::Accel, true),
    def("-enable-kvm", Opt::EnableKvm, false),
    def("-cpu", Opt::Cpu, true),
    def("-m", Opt::Memory, true),
    def("-smp", Opt::Smp, true),
    def("-kernel", Opt::Kernel, true),
    def("-initrd", Opt::Initrd, true),
    def("-append", Opt::Append, true),
    def("-nographic", Opt::Nographic, false),
    def("-display", Opt::Display, true),
    def("-serial", Opt::Serial, true),
    def("-no-reboot", Opt::NoReboot, false),
    def("-no-shutdown", Opt::NoShutdown, false),
    def("-S", Opt::StartPaused, false),
    def("-name", Opt::Name, true),
    def("-uuid", Opt::Uuid, true),
    def("-nodefaults", Opt::Nodefaults, false),
    def("-version", Opt::Version, false),
    def("-h", Opt::Help, false),
    def("-help", Opt::Help, false),
    def("-object", Opt::Object, true),
    def("-device", Opt::Device, true),
    def("-blockdev", Opt::Blockdev, true),
    def("-drive", Opt::Drive, true),
    def("-chardev", Opt::Chardev, true),
    def("-mon", Opt::Mon, true),
    def("-qmp", Opt::Qmp, true),
    def("-monitor", Opt::Monitor, true),
    def("-run-with", Opt::RunWith, true),
    def("-runas", Opt::Runas, true),
    def("-chroot", Opt::Chroot, true),
    def("-audit", Opt::Audit, true),
    def("-netdev", Opt::Netdev, true),
    def("-nic", Opt::Nic, true),
    def("-sandbox", Opt::Sandbox, true),
    def("-add-fd", Opt::AddFd, true),
    def("-monitor-path-allow", Opt::MonitorPathAllow, true),
];

/// One option occurrence: which option, the spelling used (single dash, for messages), and its
/// argument if it takes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Item {
    pub opt: Opt,
    pub name: &'static str,
    pub arg: Option<OsString>,
}

/// Longest option name worth echoing back in an error message.
const MAX_SHOWN: usize = 80;

fn lookup(name: &str) -> Option<&'static OptDef> {
    TABLE.iter().find(|d| &d.name[1..] == name)
}

/// Splits argv (without argv\[0\]) into options. Fails on the first unknown option, positional
/// argument, or option missing its argument — before any option is acted on, as QEMU's first
/// pass does.
pub(crate) fn tokenize<I: IntoIterator<Item = OsString>>(args: I) -> Result<Vec<Item>, CliError> {
    let mut items = Vec::new();
    let mut args = args.into_iter();
    while let Some(word) = args.next() {
        let bytes = word.as_bytes();
        if bytes.len() < 2 || bytes[0] != b'-' {
            return Err(CliError::Positional(shown(&word)));
        }
        let rest = if bytes[1] == b'-' {
            &bytes[2..]
        } else {
            &bytes[1..]
        };
        let Ok(name) = std::str::from_utf8(rest) else {
            return Err(CliError::UnsupportedOption(shown(&word)));
        };
        let Some(def) = lookup(name) else {
            if let Some((opt, value)) = name.split_once('=') {
                if let Some(def) = lookup(opt).filter(|d| d.takes_arg) {
                    return Err(CliError::EqualsForm {
                        given: shown(&word),
                        option: def.name,
                        value: value.chars().take(MAX_SHOWN).collect(),
                    });
                }
            }
            return Err(CliError::UnsupportedOption(shown(&word)));
        };
        let arg = if def.takes_arg {
            Some(args.next().ok_or(CliError::MissingArgument(def.name))?)
        } else {
            None
        };
        items.push(Item {
            opt: def.opt,
            name: def.name,
            arg,
        });
    }
    Ok(items)
}

/// A bounded, lossy rendering of an argv word for error messages.
pub(crate) fn shown(word: &OsStr) -> String {
    let s = word.to_string_lossy();
    if s.chars().count() > MAX_SHOWN {
        let mut t: String = s.chars().take(MAX_SHOWN).collect();
        t.push_str("...");
        t
    } else {
        s.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn single_and_double_dash_are_the_same_option() {
        let one = tokenize(args(&["-m", "512", "-nographic"])).unwrap();

        let two = tokenize(args(&["--m", "512", "--nographic"])).unwrap();

        assert_eq!(one, two);
        assert_eq!(one[0].opt, Opt::Memory);
        assert_eq!(one[0].arg.as_deref(), Some(OsStr::new("512")));
    }

    #[test]
    fn unknown_option_is_named() {
        let err = tokenize(args(&["-m", "1G", "-hda", "x.img"])).unwrap_err();

        assert_eq!(err.to_string(), "unsupported option '-hda' (see --help)");
    }

    #[test]
    fn missing_argument_at_end_of_argv_names_the_option() {
        let err = tokenize(args(&["-nographic", "-kernel"])).unwrap_err();

        assert!(matches!(err, CliError::MissingArgument("-kernel")), "{err}");
    }

    #[test]
    fn equals_form_is_rejected_with_a_hint() {
        let err = tokenize(args(&["--m=512"])).unwrap_err();

        assert!(err.to_string().contains("'-m 512'"), "{err}");
    }

    #[test]
    fn positional_arguments_are_rejected() {
        assert!(matches!(
            tokenize(args(&["disk.img"])),
            Err(CliError::Positional(_))
        ));
        assert!(matches!(
            tokenize(args(&["-"])),
            Err(CliError::Positional(_))
        ));
    }

    #[test]
    fn triple_dash_is_not_an_option() {
        assert!(matches!(
            tokenize(args(&["---m", "1"])),
            Err(CliError::UnsupportedOption(_))
        ));
    }

    #[test]
    fn option_argument_may_start_with_a_dash() {
        let items = tokenize(args(&["-append", "-v quiet"])).unwrap();

        assert_eq!(items[0].arg.as_deref(), Some(OsStr::new("-v quiet")));
    }
}
