//! End-to-end tests of [`parse`]: argv in, `Cli` or `CliError` out.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use rampart_config::{
    Accel, ConfigError, CpuModel, HostLimits, MachineType, SerialBackend, VmConfig,
};

use super::*;

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

fn run(list: &[&str]) -> VmConfig {
    match parse(args(list)) {
        Ok(Cli::Run(c)) => *c,
        other => panic!("{list:?} did not give a config: {other:?}"),
    }
}

fn err(list: &[&str]) -> String {
    match parse(args(list)) {
        Err(e) => e.to_string(),
        Ok(other) => panic!("{list:?} was accepted: {other:?}"),
    }
}

#[test]
fn empty_command_line_gives_defaults_with_stdio_serial() {
    let c = run(&[]);

    assert_eq!(c, VmConfig::default());
    assert_eq!(c.serial, SerialBackend::Stdio);
}

#[test]
fn typical_command_line_builds_the_whole_config() {
    let c = run(&[
        "-M",
        "q35",
        "-accel",
        "kvm",
        "-accel",
        "tcg",
        "-cpu",
        "host",
        "-m",
        "2G",
        "-smp",
        "4",
        "-kernel",
        "/boot/vmlinuz",
        "-initrd",
        "/boot/initrd",
        "-append",
        "console=ttyS0 quiet",
        "-nographic",
        "-serial",
        "stdio",
        "-no-reboot",
        "-name",
        "vm1",
        "-uuid",
        "00112233-4455-6677-8899-aabbccddeeff",
    ]);

    assert_eq!(c.machine, MachineType::Q35);
    assert_eq!(c.accel, vec![Accel::Kvm, Accel::Tcg]);
    assert_eq!(c.cpu, CpuModel::Host);
    assert_eq!(c.memory_bytes, 2 << 30);
    assert_eq!((c.smp.cpus, c.smp.cores), (4, 4));
    assert_eq!(c.boot.kernel.as_deref(), Some("/boot/vmlinuz".as_ref()));
    assert_eq!(c.boot.initrd.as_deref(), Some("/boot/initrd".as_ref()));
    assert_eq!(c.boot.cmdline, "console=ttyS0 quiet");
    assert!(c.lifecycle.no_reboot);
    assert_eq!(c.name.as_deref(), Some("vm1"));
    assert_eq!(c.uuid.map(|u| u[15]), Some(0xff));
    let host = HostLimits {
        host_memory_bytes: 8 << 30,
    };
    assert_eq!(c.validate(&host), Ok(()));
}

#[test]
fn double_dash_options_are_equivalent() {
    let one = run(&["-m", "512", "-smp", "2", "-S", "-no-shutdown"]);

    let two = run(&["--m", "512", "--smp", "2", "--S", "--no-shutdown"]);

    assert_eq!(one, two);
    assert!(two.lifecycle.start_paused && two.lifecycle.no_shutdown);
}

#[test]
fn help_and_version() {
    assert_eq!(parse(args(&["-h"])).unwrap(), Cli::Help);
    assert_eq!(parse(args(&["--help"])).unwrap(), Cli::Help);
    assert_eq!(parse(args(&["-help", "-m", "bogus"])).unwrap(), Cli::Help);
    assert_eq!(parse(args(&["-version"])).unwrap(), Cli::Version);
}

#[test]
fn unknown_option_is_an_error_even_after_help() {
    assert_eq!(
        err(&["-h", "-hda", "x.img"]),
        "unsupported option '-hda' (see --help)"
    );
}

#[test]
fn missing_argument_at_end_is_named() {
    assert_eq!(err(&["-m"]), "option '-m' requires an argument");
}

#[test]
fn help_lists_exit_through_info() {
    for list in [
        &["-M", "help"][..],
        &["-machine", "?"],
        &["-accel", "help"],
        &["-cpu", "help"],
        &["-device", "help"],
    ] {
        assert!(matches!(parse(args(list)), Ok(Cli::Info(_))), "{list:?}");
    }
}

#[test]
fn memory_forms() {
    assert_eq!(run(&["-m", "512"]).memory_bytes, 512 << 20);
    assert_eq!(run(&["-m", "512M"]).memory_bytes, 512 << 20);
    assert_eq!(run(&["-m", "2G"]).memory_bytes, 2 << 30);
    assert_eq!(run(&["-m", "size=1G"]).memory_bytes, 1 << 30);
    assert_eq!(run(&["-m", "1G", "-m", "256"]).memory_bytes, 256 << 20);
}

#[test]
fn memory_zero_parses_but_fails_validation() {
    let c = run(&["-m", "0", "-kernel", "/k"]);
    let host = HostLimits {
        host_memory_bytes: 8 << 30,
    };

    assert_eq!(c.memory_bytes, 0);
    assert!(matches!(c.validate(&host), Err(ConfigError::Memory { .. })));
}

#[test]
fn memory_rejects_bad_size_and_hotplug() {
    assert!(err(&["-m", "lots"]).contains("'lots'"));
    assert!(err(&["-m", "12X"]).contains("-m"));
    assert!(err(&["-m", "size="]).contains("missing size"));
    let e = err(&["-m", "1G,slots=2,maxmem=4G"]);
    assert!(e.contains("'slots'") && e.contains("hotplug"), "{e}");
}

#[test]
fn smp_forms() {
    let s = run(&["-smp", "cpus=4,sockets=2,cores=2,threads=1"]).smp;
    assert_eq!((s.cpus, s.sockets, s.cores, s.threads), (4, 2, 2, 1));
    let s = run(&["-smp", "2,maxcpus=4"]).smp;
    assert_eq!((s.cpus, s.maxcpus), (2, 4));
    let s = run(&["-smp", "8", "-smp", "threads=2"]).smp;
    assert_eq!((s.cpus, s.cores, s.threads), (8, 4, 2));
}

#[test]
fn smp_rejects_zero_too_many_and_mismatch() {
    assert!(err(&["-smp", "0"]).contains("cpus=0"));
    assert!(err(&["-smp", "1000"]).contains("at most 254"));
    assert!(err(&["-smp", "4,sockets=1,cores=1,threads=1"]).contains("does not match"));
    assert!(err(&["-smp", "4,dies=2"]).contains("dies"));
    assert!(err(&["-smp", "4,books=1"]).contains("'books'"));
    assert!(err(&["-smp", "four"]).contains("'four'"));
}

#[test]
fn machine_and_accel_forms() {
    let c = run(&["-machine", "type=pc-i440fx-8.2,accel=tcg:kvm"]);
    assert_eq!(c.machine, MachineType::Pc);
    assert_eq!(c.accel, vec![Accel::Tcg, Accel::Kvm]);
    assert_eq!(run(&["-M", "microvm"]).machine, MachineType::Microvm);
    assert_eq!(run(&["-enable-kvm"]).accel, vec![Accel::Kvm]);
    assert_eq!(run(&["-accel", "accel=tcg"]).accel, vec![Accel::Tcg]);
    assert_eq!(
        run(&["-machine", "q35", "-machine", "accel=kvm"]).accel,
        vec![Accel::Kvm]
    );
}

#[test]
fn machine_accel_and_accel_option_conflict() {
    assert!(err(&["-machine", "accel=kvm", "-accel", "tcg"]).contains("cannot be used together"));
    assert!(err(&["-enable-kvm", "-M", "q35,accel=tcg"]).contains("cannot be used together"));
}

#[test]
fn machine_and_accel_rejections_name_the_culprit() {
    assert!(err(&["-M", "virt"]).contains("'virt'"));
    assert_eq!(
        err(&["-M", "q35,usb=on"]).split(':').next(),
        Some("-machine")
    );
    assert!(err(&["-M", "q35,frobnicate=1"]).contains("unknown property 'frobnicate'"));
    assert!(err(&["-accel", "xen"]).contains("'xen'"));
    let e = err(&["-accel", "tcg,thread=single"]);
    assert!(e.contains("-accel") && e.contains("'thread'"), "{e}");
}

#[test]
fn cpu_rejects_feature_flags_naming_them() {
    assert!(err(&["-cpu", "host,+x2apic"]).contains("'+x2apic'"));
    assert!(err(&["-cpu", "max,x2apic=on"]).contains("'x2apic=on'"));
    assert!(err(&["-cpu", "486"]).contains("'486'"));
}

#[test]
fn serial_forms_and_defaults() {
    assert_eq!(run(&["-serial", "null"]).serial, SerialBackend::Null);
    assert_eq!(run(&["-nodefaults"]).serial, SerialBackend::None);
    assert_eq!(
        run(&["-nodefaults", "-serial", "stdio"]).serial,
        SerialBackend::Stdio
    );
    assert_eq!(
        run(&["-serial", "file:/tmp/a,,b"]).serial,
        SerialBackend::File("/tmp/a,,b".into())
    );
    assert_eq!(
        run(&["-serial", "unix:/run/s,,1,server=on,wait=off"]).serial,
        SerialBackend::UnixServer {
            path: "/run/s,1".into(),
            wait: false
        }
    );
}

#[test]
fn serial_rejections() {
    assert!(err(&["-serial", "stdio", "-serial", "null"]).contains("only one serial port"));
    assert!(err(&["-serial", "unix:/s,server=off"]).contains("client"));
    assert!(err(&["-serial", "unix:/s,server=maybe"]).contains("'maybe'"));
    assert!(err(&["-serial", "vc"]).contains("'vc'"));
}

#[test]
fn display_none_and_nographic_are_accepted_others_refused() {
    assert_eq!(
        run(&["-display", "none", "-nographic"]),
        VmConfig::default()
    );
    assert!(err(&["-display", "gtk"]).contains("no display"));
    assert!(err(&["-display", "sdl,gl=on"]).contains("'gl'"));
}

#[test]
fn name_forms() {
    assert_eq!(
        run(&["-name", "guest=db,debug-threads=on"]).name.as_deref(),
        Some("db")
    );
    assert!(err(&["-name", "db,debug-threads=perhaps"]).contains("'perhaps'"));
    assert!(err(&["-name", "db,process=x"]).contains("'process'"));
}

#[test]
fn uuid_must_be_well_formed() {
    assert!(err(&["-uuid", "not-a-uuid"]).contains("-uuid"));
}

#[test]
fn non_utf8_kernel_and_initrd_paths_are_kept() {
    let mut argv = args(&["-kernel"]);
    argv.push(OsString::from_vec(b"/boot/k\xff".to_vec()));
    argv.push("-initrd".into());
    argv.push(OsString::from_vec(b"/boot/\xfei".to_vec()));

    let Ok(Cli::Run(c)) = parse(argv) else {
        panic!("non-UTF-8 paths refused");
    };

    assert_eq!(
        c.boot.kernel.unwrap().as_os_str().as_bytes(),
        b"/boot/k\xff"
    );
    assert_eq!(
        c.boot.initrd.unwrap().as_os_str().as_bytes(),
        b"/boot/\xfei"
    );
}

#[test]
fn non_utf8_append_is_refused() {
    let mut argv = args(&["-append"]);
    argv.push(OsString::from_vec(b"quiet \xff".to_vec()));

    assert!(matches!(
        parse(argv),
        Err(CliError::Invalid {
            option: "-append",
            ..
        })
    ));
}

#[test]
fn append_is_taken_literally_with_commas() {
    assert_eq!(run(&["-append", "a=1,,b,c"]).boot.cmdline, "a=1,,b,c");
}

#[test]
fn empty_kernel_path_is_refused() {
    assert!(err(&["-kernel", ""]).contains("empty path"));
}

#[test]
fn unknown_objects_devices_and_block_drivers_are_refused_by_type() {
    assert_eq!(
        err(&["-device", "e1000,netdev=n0"]),
        "-device e1000: unknown device type 'e1000'"
    );
    assert_eq!(
        err(&[
            "-object",
            r#"{"qom-type":"rng-random","id":"r0","filename":"/dev/urandom"}"#
        ]),
        "-object rng-random: unknown object type 'rng-random'"
    );
    assert!(err(&["-blockdev", "driver=vvfat,node-name=n,dir=/x"]).contains("'vvfat'"));
    assert!(err(&["-object", "secret,id=s,data.=x"]).starts_with("-object: invalid parameter"));
}

#[test]
fn drives_and_blockdevs_become_configs_in_order() {
    let c = run(&[
        "-drive",
        "file=disk.img,format=raw,if=virtio,id=d0,cache=none",
        "-drive",
        "file=ro.img,format=raw,if=none,id=d1,readonly=on",
        "-blockdev",
        "driver=file,filename=data.img,node-name=n0",
        "-blockdev",
        r#"{"driver":"qcow2","node-name":"q0","file":{"driver":"file","filename":"q.qcow2"}}"#,
    ]);

    let names: Vec<&str> = c.drives.iter().map(|d| d.node.node_name.as_str()).collect();
    assert_eq!(names, ["d0", "d1", "n0", "q0"]);
    assert_eq!(
        c.drives[0].interface,
        rampart_config::DriveInterface::Virtio
    );
    assert!(c.drives[0].node.cache.direct);
    assert!(c.drives[1].node.read_only);
    assert_eq!(c.drives[3].node.format, rampart_config::BlockFormat::Qcow2);
}

#[test]
fn drive_throttling_keys_become_the_drives_limits() {
    let c = run(&[
        "-drive",
        "file=d.img,format=raw,if=virtio,throttling.bps-write=50M,throttling.iops-total=2000,\
         throttling.iops-total-max=4000,throttling.iops-total-max-length=5,throttling.bps-read=1M",
    ]);
    let limits = &c.drives[0].throttle.limits;
    assert_eq!(limits.bps_write.avg, 50 << 20);
    assert!(!limits.bps_total.is_set());
    assert_eq!(limits.bps_read.avg, 1 << 20);
    assert_eq!(
        (
            limits.iops_total.avg,
            limits.iops_total.max,
            limits.iops_total.max_length
        ),
        (2000, 4000, 5)
    );
    assert!(!limits.iops_write.is_set());
    assert_eq!(c.drives[0].throttle.group, None);
}

#[test]
fn duplicate_drive_ids_fail_validation() {
    let c = run(&[
        "-kernel",
        "/k",
        "-drive",
        "file=a.img,format=raw,id=x",
        "-blockdev",
        "driver=file,filename=b.img,node-name=x",
    ]);

    let e = c
        .validate(&HostLimits {
            host_memory_bytes: 8 << 30,
        })
        .unwrap_err();

    assert!(e.to_string().contains("duplicate"), "{e}");
}

#[test]
fn block_driver_help_is_information() {
    assert!(matches!(
        parse(args(&["-blockdev", "driver=help"])),
        Ok(Cli::Info(t)) if t.contains("qcow2")
    ));
}

#[test]
fn random_arguments_never_panic() {
    const OPTIONS: &[&str] = &[
        "-m",
        "-smp",
        "-machine",
        "-serial",
        "-object",
        "-device",
        "-blockdev",
        "-drive",
        "-cpu",
        "-accel",
        "-name",
        "-uuid",
        "-display",
        "-kernel",
        "-append",
    ];
    const ALPHABET: &[u8] = b"a=,.0123{}[]\":-_x\xff help?no";
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |bound: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % bound as u64) as usize
    };
    for _ in 0..3000 {
        let mut argv = Vec::new();
        for _ in 0..=next(3) {
            argv.push(OsString::from(OPTIONS[next(OPTIONS.len())]));
            let len = next(24);
            let arg: Vec<u8> = (0..len).map(|_| ALPHABET[next(ALPHABET.len())]).collect();
            argv.push(OsString::from_vec(arg));
        }

        let _ = parse(argv);
    }
}

#[test]
fn run_with_options_merge_with_runas_and_chroot() {
    let c = run(&[
        "-runas",
        "nobody",
        "-run-with",
        "chroot=/var/empty,pids-max=8",
        "-run-with",
        "user=1:2",
    ]);

    assert_eq!(
        c.run_with.user,
        Some(rampart_config::RunAsUser::Ids { uid: 1, gid: 2 })
    );
    assert_eq!(c.run_with.chroot, Some("/var/empty".into()));
    assert_eq!(c.run_with.cgroup.pids, Some(8));
}

#[test]
fn run_with_rejections_name_the_culprit() {
    assert_eq!(
        err(&["-run-with", "colour=red"]),
        "-run-with: unknown property 'colour'"
    );
    assert!(err(&["-run-with", "memory-max=lots"]).contains("'memory-max'"));
    assert!(err(&["-chroot"]).contains("'-chroot' requires an argument"));
}

#[test]
fn tcp_monitor_without_tls_and_authz_is_refused_with_the_reason() {
    let e = err(&["-qmp", "tcp:127.0.0.1:4444,server=on,wait=off"]);
    assert!(
        e.contains("refusing a monitor on TCP because it has no tls-creds"),
        "{e}"
    );
    assert!(e.contains("docs/security.md"), "{e}");
    let e = err(&[
        "-object",
        "tls-creds-x509,id=t0,dir=/pki,endpoint=server,verify-peer=on",
        "-qmp",
        "tcp:127.0.0.1:4444,server=on,wait=off,tls-creds=t0",
    ]);
    assert!(e.contains("no tls-authz"), "{e}");
    let e = err(&[
        "-object",
        "tls-creds-x509,id=t0,dir=/pki,verify-peer=off",
        "-object",
        "authz-simple,id=a0,identity=CN=admin",
        "-qmp",
        "tcp:127.0.0.1:4444,server=on,wait=off,tls-creds=t0,tls-authz=a0",
    ]);
    assert!(e.contains("verify-peer=off"), "{e}");
}

#[test]
fn tls_monitor_with_authz_and_audit_becomes_a_config() {
    let c = run(&[
        "-object",
        "tls-creds-x509,id=t0,dir=/pki,endpoint=server,verify-peer=on",
        "-object",
        r#"{"qom-type":"authz-list","id":"a0","policy":"deny","rules":[{"match":"*CN=admin*","policy":"allow","format":"glob"}]}"#,
        "-chardev",
        "socket,id=m0,host=127.0.0.1,port=4444,server=on,wait=off,tls-creds=t0,tls-authz=a0",
        "-mon",
        "chardev=m0,mode=control",
        "-audit",
        "file=/var/log/rampart-audit.jsonl",
    ]);
    assert_eq!(c.tls_creds.len(), 1);
    assert_eq!(c.authz.len(), 1);
    assert_eq!(c.chardevs[0].tls_creds.as_deref(), Some("t0"));
    assert!(c.audit.is_some());
    let e = err(&[
        "-object",
        "authz-simple,id=a0,identity=x",
        "-object",
        "authz-simple,id=a0,identity=y",
    ]);
    assert!(e.contains("duplicate object id 'a0'"), "{e}");
}

#[test]
fn insecure_tcp_monitor_is_accepted_when_asked_for() {
    let c = run(&["-qmp", "tcp:127.0.0.1:4444,server=on,wait=off,insecure=on"]);
    assert!(c.chardevs[0].insecure);
}

#[test]
fn sandbox_is_on_and_strictest_without_the_option() {
    let c = run(&[]);

    assert_eq!(c.sandbox, rampart_config::SandboxConfig::default());
    assert!(c.sandbox.enabled);
    assert!(!c.sandbox.spawn_allowed());
}

#[test]
fn repeated_sandbox_options_merge_and_last_key_wins() {
    let c = run(&[
        "-sandbox",
        "on,spawn=allow",
        "-sandbox",
        "on,resourcecontrol=allow",
    ]);

    assert!(c.sandbox.spawn_allowed());
    assert!(c.sandbox.resource_control.allowed());

    let c = run(&["-sandbox", "on", "-sandbox", "off"]);
    assert!(!c.sandbox.enabled);
}

#[test]
fn sandbox_argument_errors_name_the_culprit() {
    assert!(err(&["-sandbox", "on,spawn=yes"]).contains("'yes'"));
    assert!(err(&["-sandbox", "on,bogus=1"]).contains("'bogus'"));
    assert!(err(&["-sandbox"]).contains("-sandbox"));
}

#[test]
fn add_fd_and_monitor_path_allow_build_their_config() {
    let c = run(&[
        "-add-fd",
        "fd=5,set=2,opaque=disk",
        "-add-fd",
        "fd=6,set=2",
        "-monitor-path-allow",
        "/srv/images",
        "-monitor-path-allow",
        "path=/srv/iso,readonly=on",
    ]);

    assert_eq!(
        c.add_fds,
        [
            rampart_config::AddFdConfig {
                fd: 5,
                set: 2,
                opaque: Some("disk".into())
            },
            rampart_config::AddFdConfig {
                fd: 6,
                set: 2,
                opaque: None
            },
        ]
    );
    assert_eq!(c.monitor_paths.len(), 2);
    assert!(!c.monitor_paths[0].readonly);
    assert_eq!(c.monitor_paths[1].dir, std::path::PathBuf::from("/srv/iso"));
    assert!(c.monitor_paths[1].readonly);
}

#[test]
fn bad_add_fd_and_monitor_path_allow_are_refused_by_name() {
    assert!(err(&["-add-fd", "set=1"]).contains("fd option is required"));
    assert!(err(&["-add-fd", "fd=3"]).contains("set option is required"));
    assert!(err(&["-add-fd", "fd=2,set=1"]).contains("standard I/O stream"));
    assert!(err(&["-add-fd", "fd=-1,set=1"]).contains("'fd'"));
    assert!(err(&["-add-fd", "fd=3,set=1,flags=x"]).contains("flags"));
    assert!(err(&["-monitor-path-allow", "relative/dir"]).contains("absolute"));
    assert!(err(&["-monitor-path-allow", "/srv/../etc"]).contains("absolute"));
    assert!(err(&["-monitor-path-allow", "/srv,readonly=maybe"]).contains("readonly"));
}

#[test]
fn the_tcg_translator_is_on_unless_turned_off_and_only_tcg_has_it() {
    assert!(run(&["-accel", "tcg"]).tcg_jit);
    assert!(!run(&["-accel", "tcg,jit=off"]).tcg_jit);
    assert!(run(&["-accel", "tcg,jit=on"]).tcg_jit);
    assert!(run(&["-accel", "kvm", "-accel", "tcg,jit=on"]).tcg_jit);
    assert!(!run(&["-accel", "tcg,jit=on", "-accel", "tcg,jit=off"]).tcg_jit);
    assert!(err(&["-accel", "kvm,jit=on"]).contains("tcg accelerator only"));
    let e = err(&["-accel", "tcg,jit=maybe"]);
    assert!(e.contains("jit") && e.contains("on|off"), "{e}");
}
