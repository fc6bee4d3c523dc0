//! `-run-with` (QEMU 9.1+: `user=`, `chroot=`) with rampart's own keys for the jail, the
//! per-VM cgroup and rlimits; and the older `-runas USER` and `-chroot DIR`, accepted with a
//! deprecation warning as QEMU does.

use std::ffi::OsStr;
use std::path::PathBuf;

use rampart_config::{
    parse_size, CgroupLimits, CpuMax, IoMax, JailConfig, Rlimit, RunAsUser, RunWithConfig,
    DEFAULT_CPU_PERIOD_US,
};

use super::qemu_opts::{OptSpec, Opts};
use super::CliError;

pub(crate) const RUN_WITH: OptSpec = OptSpec {
    option: "-run-with",
    implied: None,
    known: &[
        "user",
        "chroot",
        "jail",
        "netns",
        "cpu-max",
        "memory-max",
        "pids-max",
        "io-device",
        "io-rbps",
        "io-wbps",
        "io-riops",
        "io-wiops",
        "rlimit-nofile",
        "rlimit-fsize",
        "rlimit-core",
        "rlimit-nproc",
        "rlimit-memlock",
        "rlimit-as",
    ],
    unsupported: &["async-teardown"],
    reason: "rampart tears its guest memory down in the process itself",
};

/// `-runas USER`: the same as `-run-with user=USER`, with QEMU's deprecation warning.
pub(crate) fn runas(arg: &OsStr) -> Opts {
    tracing::warn!("-runas is deprecated, use '-run-with user=...' instead");
    let mut o = Opts::new("-run-with");
    o.set("user", arg.to_os_string());
    o
}

/// `-chroot DIR`: the same as `-run-with chroot=DIR`, with QEMU's deprecation warning.
pub(crate) fn chroot(arg: &OsStr) -> Opts {
    tracing::warn!("-chroot is deprecated, use '-run-with chroot=...' instead");
    let mut o = Opts::new("-run-with");
    o.set("chroot", arg.to_os_string());
    o
}

fn dir(o: &Opts, key: &'static str) -> Result<Option<PathBuf>, CliError> {
    match o.os(key) {
        None => Ok(None),
        Some(v) if v.is_empty() => Err(o.invalid(key, v, "empty path")),
        Some(v) => Ok(Some(PathBuf::from(v))),
    }
}

fn user(o: &Opts) -> Result<Option<RunAsUser>, CliError> {
    let Some(v) = o.str("user")? else {
        return Ok(None);
    };
    let bad = |reason| Err(o.invalid("user", OsStr::new(v), reason));
    if let Some((u, g)) = v.split_once(':') {
        return match (u.parse::<u32>(), g.parse::<u32>()) {
            (Ok(uid), Ok(gid)) if uid != u32::MAX && gid != u32::MAX => {
                Ok(Some(RunAsUser::Ids { uid, gid }))
            }
            _ => bad("expected a user name or UID:GID"),
        };
    }
    if v.is_empty() || v.len() > 256 || v.chars().any(|c| c.is_control() || c == '/') {
        return bad("expected a user name or UID:GID");
    }
    Ok(Some(RunAsUser::Name(v.to_owned())))
}

fn number(o: &Opts, key: &'static str) -> Result<Option<u64>, CliError> {
    let Some(v) = o.str(key)? else {
        return Ok(None);
    };
    v.parse::<u64>()
        .map(Some)
        .map_err(|_| o.invalid(key, OsStr::new(v), "expected a number"))
}

fn size(o: &Opts, key: &'static str) -> Result<Option<u64>, CliError> {
    let Some(v) = o.str(key)? else {
        return Ok(None);
    };
    parse_size(key, v, 1)
        .map(Some)
        .map_err(|e| o.invalid(key, OsStr::new(v), &e.to_string()))
}

/// `cpu-max=QUOTA[/PERIOD]`, microseconds.
fn cpu_max(o: &Opts) -> Result<Option<CpuMax>, CliError> {
    let Some(v) = o.str("cpu-max")? else {
        return Ok(None);
    };
    let bad = || {
        o.invalid(
            "cpu-max",
            OsStr::new(v),
            "expected QUOTA[/PERIOD] in microseconds",
        )
    };
    let (q, p) = v.split_once('/').unwrap_or((v, ""));
    let quota_us = q.parse().map_err(|_| bad())?;
    let period_us = if p.is_empty() && !v.contains('/') {
        DEFAULT_CPU_PERIOD_US
    } else {
        p.parse().map_err(|_| bad())?
    };
    Ok(Some(CpuMax {
        quota_us,
        period_us,
    }))
}

fn io_max(o: &Opts) -> Result<Option<IoMax>, CliError> {
    let rates = [
        size(o, "io-rbps")?,
        size(o, "io-wbps")?,
        number(o, "io-riops")?,
        number(o, "io-wiops")?,
    ];
    let Some(v) = o.str("io-device")? else {
        if rates.iter().any(Option::is_some) {
            return Err(CliError::Invalid {
                option: "-run-with",
                message: "io-rbps, io-wbps, io-riops and io-wiops need io-device=MAJOR:MINOR"
                    .into(),
            });
        }
        return Ok(None);
    };
    let (major, minor) = v
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or_else(|| o.invalid("io-device", OsStr::new(v), "expected MAJOR:MINOR"))?;
    let [rbps, wbps, riops, wiops] = rates;
    Ok(Some(IoMax {
        major,
        minor,
        rbps,
        wbps,
        riops,
        wiops,
    }))
}

/// The typed configuration of the merged `-run-with` options (and `-runas`/`-chroot`).
pub(crate) fn parse(o: Option<&Opts>) -> Result<RunWithConfig, CliError> {
    let Some(o) = o else {
        return Ok(RunWithConfig::default());
    };
    let jail = dir(o, "jail")?;
    let netns = o.bool("netns")?;
    if netns.is_some() && jail.is_none() {
        return Err(CliError::Invalid {
            option: "-run-with",
            message: "netns= is a property of the jail: it needs jail=DIR".into(),
        });
    }
    let mut rlimits = Vec::new();
    for r in Rlimit::ALL {
        let v = if r.is_size() {
            size(o, r.key())?
        } else {
            number(o, r.key())?
        };
        if let Some(v) = v {
            rlimits.push((r, v));
        }
    }
    Ok(RunWithConfig {
        user: user(o)?,
        chroot: dir(o, "chroot")?,
        jail: jail.map(|dir| JailConfig {
            dir,
            netns: netns.unwrap_or(false),
        }),
        cgroup: CgroupLimits {
            cpu: cpu_max(o)?,
            memory_bytes: size(o, "memory-max")?,
            pids: number(o, "pids-max")?,
            io: io_max(o)?,
        },
        rlimits,
    })
}

/// For tests: the option as typed.
#[cfg(test)]
pub(crate) fn opts(arg: &str) -> Opts {
    super::qemu_opts::parse(&RUN_WITH, OsStr::new(arg)).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(arg: &str) -> Result<RunWithConfig, CliError> {
        parse(Some(&opts(arg)))
    }

    #[test]
    fn user_is_a_name_or_uid_gid() {
        assert_eq!(
            parsed("user=nobody").unwrap().user,
            Some(RunAsUser::Name("nobody".into()))
        );
        assert_eq!(
            parsed("user=1000:100").unwrap().user,
            Some(RunAsUser::Ids {
                uid: 1000,
                gid: 100
            })
        );
        let err = parsed("user=1000:x").unwrap_err();
        assert!(err.to_string().contains("'user'"), "{err}");
    }

    #[test]
    fn jail_keys_cgroup_limits_and_rlimits_are_typed() {
        let c = parsed(
            "jail=/srv/vm0,netns=on,cpu-max=50000,memory-max=256M,pids-max=64,\
             io-device=8:0,io-wbps=1M,rlimit-nofile=128,rlimit-fsize=2G",
        )
        .unwrap();

        assert_eq!(
            c.jail,
            Some(JailConfig {
                dir: "/srv/vm0".into(),
                netns: true
            })
        );
        assert_eq!(
            c.cgroup.cpu,
            Some(CpuMax {
                quota_us: 50_000,
                period_us: DEFAULT_CPU_PERIOD_US
            })
        );
        assert_eq!(c.cgroup.memory_bytes, Some(256 << 20));
        assert_eq!(c.cgroup.pids, Some(64));
        let io = c.cgroup.io.unwrap();
        assert_eq!(
            (io.major, io.minor, io.wbps, io.rbps),
            (8, 0, Some(1 << 20), None)
        );
        assert_eq!(
            c.rlimits,
            vec![(Rlimit::Nofile, 128), (Rlimit::Fsize, 2 << 30)]
        );
    }

    #[test]
    fn cpu_max_takes_an_optional_period() {
        let c = parsed("cpu-max=20000/50000").unwrap();
        assert_eq!(
            c.cgroup.cpu,
            Some(CpuMax {
                quota_us: 20_000,
                period_us: 50_000
            })
        );
        assert!(parsed("cpu-max=20000/").is_err());
        assert!(parsed("cpu-max=half").is_err());
    }

    #[test]
    fn netns_without_a_jail_is_refused() {
        let err = parsed("netns=on").unwrap_err();

        assert!(err.to_string().contains("needs jail=DIR"), "{err}");
    }

    #[test]
    fn io_rates_without_a_device_are_refused() {
        let err = parsed("io-rbps=1M").unwrap_err();

        assert!(err.to_string().contains("io-device"), "{err}");
    }

    #[test]
    fn async_teardown_is_refused_with_a_reason() {
        let err =
            super::super::qemu_opts::parse(&RUN_WITH, OsStr::new("async-teardown=on")).unwrap_err();

        assert!(err.to_string().contains("async-teardown"), "{err}");
    }

    #[test]
    fn runas_and_chroot_are_the_run_with_keys() {
        let mut o = runas(OsStr::new("nobody"));
        o.merge(chroot(OsStr::new("/var/empty")));

        let c = parse(Some(&o)).unwrap();

        assert_eq!(c.user, Some(RunAsUser::Name("nobody".into())));
        assert_eq!(c.chroot, Some(PathBuf::from("/var/empty")));
    }
}
