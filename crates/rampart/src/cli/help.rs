//! `--help`, `-version` and the `help` lists of `-machine`, `-accel` and `-cpu`.

/// The full `--help` text. Keep it true: list only what the parser accepts.
pub fn help_text() -> String {
    r#"usage: rampart [options]

rampart is a virtual machine monitor with QEMU's command line. Options may be
written -opt or --opt; an option's argument is always the next word
('-m 512', not '--m=512'). Unknown options, unknown properties and bad values
are errors. Properties are written key=value,key=value; ',,' is a literal comma
in a value; on|off|yes|no|true|false are booleans; a key given twice keeps the
last value; -machine, -m, -smp and -name may be repeated and are merged.

Machine:
  -machine|-M [type=]NAME[,accel=ACCEL[:ACCEL...]]
                   NAME: q35 (default), pc, microvm, or a versioned pc-q35-X.Y /
                   pc-i440fx-X.Y (same machine). accel= lists accelerators in
                   fallback order; it cannot be combined with -accel.
  -machine help    list machine types
  -accel [accel=]kvm|tcg[,jit=on|off]
                   accelerator; repeat to give a fallback order
                   (-accel kvm -accel tcg). jit=on|off (tcg only, default
                   on): translate hot code blocks to host code; off runs the
                   interpreter alone. No other accelerator properties.
  -accel help      list accelerators
  -enable-kvm      same as -accel kvm
  -cpu host|max|qemu64
                   CPU model (default max); feature flags are not supported yet
  -cpu help        list CPU models
  -m [size=]SIZE   guest RAM (default 128M); a bare number is MiB, binary
                   suffixes K, M, G, T; slots= and maxmem= are not supported
  -smp [cpus=]N[,sockets=S][,cores=C][,threads=T][,maxcpus=M][,dies=1][,clusters=1]
                   vCPUs and topology (at most 254); omitted values are
                   computed as QEMU 6.2+ does (cores preferred over sockets)

Boot:
  -kernel PATH     Linux kernel (bzImage or ELF) to boot; required
                   (PATH may be /dev/fdset/N, see -add-fd)
  -initrd PATH     initial ramdisk (PATH may be /dev/fdset/N)
  -append STRING   kernel command line, taken literally

Console and display:
  -serial BACKEND  the guest's COM1 (only one -serial): stdio (default), null,
                   none, file:PATH (path taken literally, up to the end),
                   unix:PATH,server=on[,wait=on|off] (listen; wait=on blocks
                   start-up until a client connects; ',,' escapes a comma in
                   PATH; client mode is not supported)
  -nographic       accepted; rampart never has a display
  -display none    the only display type

Monitors (QMP and HMP, QEMU's protocols; one client at a time per socket;
sockets are created mode 0600, a stale socket is replaced, anything else at
PATH is never deleted, and the socket is removed at exit):
  -qmp unix:PATH,server=on[,wait=on|off][,tls-authz=ID] | stdio
  -qmp tcp:HOST:PORT,server=on[,wait=on|off],tls-creds=ID,tls-authz=ID
                   a QMP monitor (chardev 'compat_monitorN'); wait=on (the
                   default, as in QEMU) blocks start-up until a client connects
  -monitor unix:...|tcp:... (as -qmp) | stdio | none
                   a human monitor (HMP, '(qemu)' prompt; on a terminal with
                   line editing and history)
  -chardev socket,id=ID,path=PATH,server=on[,wait=on|off][,tls-authz=ID]
  -chardev socket,id=ID,host=HOST,port=PORT,server=on[,wait=on|off]
           ,tls-creds=ID,tls-authz=ID
                   a monitor on TCP is refused unless it has TLS credentials
                   that verify the client (verify-peer=on) and an authz object;
                   insecure=on overrides that for throw-away tests (logged).
                   On a UNIX socket tls-authz matches 'uid:N'/'gid:N' of the
                   peer (SO_PEERCRED). See docs/security.md.
  -chardev stdio,id=ID
                   a character device for -mon (stdio may be used by one
                   chardev or -serial only)
  -mon chardev=ID[,mode=readline|control][,pretty=on|off]
                   a monitor on chardev ID (mode=control is QMP; pretty=on
                   indents QMP replies)

Lifecycle and identity:
  -no-reboot       exit when the guest reboots
  -no-shutdown     keep the process when the guest powers off
  -S               start with the vCPUs paused (state 'prelaunch'; a monitor's
                   'cont' starts them)
  -name [guest=]NAME[,debug-threads=on|off]
                   VM name
  -uuid UUID       VM UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)
  -nodefaults      no default devices (no serial port unless -serial is given)

Block devices (images are local files; formats raw and qcow2):
  -drive file=PATH,format=raw|qcow2[,if=virtio|none][,id=ID][,readonly=on]
         [,cache=writeback|none|unsafe|directsync|writethrough][,cache.direct=on|off]
         [,cache.no-flush=on|off][,discard=ignore|unmap][,file.locking=auto|on|off]
         [,backing.driver=raw|qcow2]
                   if= defaults to virtio (rampart has no IDE). Without format=,
                   only a readonly=on image is accepted (its format is probed and
                   a probed image's backing file is not followed). An image open
                   read-write is locked against other users (QEMU's OFD locks).
  -blockdev driver=file,node-name=NAME,filename=PATH[,read-only=on][,locking=...]
  -blockdev driver=raw|qcow2,node-name=NAME,file.driver=file,file.filename=PATH
            [,read-only=on][,cache.direct=on][,cache.no-flush=on][,discard=unmap]
            [,file.locking=auto|on|off][,backing=null|backing.driver=FORMAT
            [,backing.file.filename=PATH]]
                   or the same as JSON: -blockdev '{"driver":"qcow2",...}'
  -drive format=help, -blockdev driver=help   list block drivers
  -drive ...,throttling.LIMIT=N[,throttling.LIMIT-max=N][,throttling.LIMIT-max-length=S]
         [,throttling.group=NAME]
                   I/O limits: LIMIT is bps-total|bps-read|bps-write|iops-total|
                   iops-read|iops-write (per second; -max a burst rate lasting
                   -max-length seconds, default 1). A throttled guest is slowed,
                   never failed. throttling.group shares the limits (and their
                   budget) with the group's other drives; block_set_io_throttle
                   changes them at run time.

Monitor security objects (QEMU's) and the audit log:
  -object tls-creds-x509,id=ID,dir=DIR[,endpoint=server][,verify-peer=on|off]
                   DIR holds ca-cert.pem, server-cert.pem, server-key.pem
  -object authz-simple,id=ID,identity=NAME
  -object authz-list,id=ID[,policy=allow|deny],rules.N.match=PATTERN
          ,rules.N.policy=allow|deny[,rules.N.format=exact|glob]
          [,rules.N.commands.M=CMD-OR-GLOB]   (or the same as JSON)
                   a TLS client's identity is its certificate's DN, e.g.
                   'C=GB,O=Example,CN=admin'; rules with commands limit an allowed
                   peer to those commands (e.g. query-*)
  -object authz-listfile,id=ID,filename=PATH[,refresh=on|off]
                   the rules as JSON in a file, reloaded when it changes
  -audit file=PATH one JSON line per monitor command and connection attempt

Network (tap back end, virtio-net-pci):
  -netdev tap,id=ID[,ifname=NAME|fd=N][,script=no][,downscript=no]
          [,throttling.DIR-UNIT=N[,throttling.DIR-UNIT-max=N]
          [,throttling.DIR-UNIT-max-length=S]]
                   a tap with IFF_VNET_HDR: ifname= an existing tap (a missing one
                   is created only with CAP_NET_ADMIN), or fd=N a tap descriptor
                   inherited from the parent. script=/downscript= other than 'no'
                   would start a process and are refused (the sandbox denies
                   spawning); rampart never runs a script. Rate limits: DIR is
                   rx (to the guest) or tx (from the guest), UNIT bps (bytes, with
                   Ethernet headers) or pps (frames), per second. QMP
                   __rampart_netdev-set-throttle (HMP netdev_set_throttle) changes
                   them at run time.
  -nic tap,[same keys][,model=virtio-net-pci][,mac=MAC]
                   a -netdev tap and a virtio-net-pci on it in one option
  -netdev help     list network back ends

Passing files instead of names (see docs/security.md):
  -add-fd fd=N,set=M[,opaque=STR]
                   put inherited descriptor N (3 or more, close-on-exec clear) in
                   fd set M; rampart keeps a duplicate and closes N. The name
                   /dev/fdset/M then works wherever a file name does (-kernel,
                   -initrd, -drive file=, -blockdev filename=,
                   backing.file.filename=), picking the descriptor of the set
                   whose access mode (read-only / read-write) and O_DIRECT match
  -monitor-path-allow [path=]DIR[,readonly=on]
                   monitor commands (blockdev-add) may open files beneath DIR
                   (resolved by the kernel inside DIR: no '..' or symbolic-link
                   escape); readonly=on allows read-only opens only. Without it a
                   monitor command can name files only as /dev/fdset/N

Objects and devices (parsed; types rampart does not implement are refused by
name):
  -object throttle-group,id=NAME,limits.LIMIT=N...   (or x-LIMIT=N)
                   block I/O limits shared by the drives naming the group
  -object TYPE,id=ID[,key=value...]   or  -object '{"qom-type":TYPE,...}'
  -device DRIVER[,key=value...]       or  -device '{"driver":DRIVER,...}'
                   dotted keys build nested values: a.b=1, list.0.x=1
                   virtio-blk-pci,drive=ID[,serial=STR]; virtio-rng-pci;
                   virtio-net-pci,netdev=ID[,mac=MAC][,id=ID] (MAC default
                   52:54:00:12:34:56, then :57...)
  -object help, -device help

Running unprivileged and confined (applied after every file, socket and
/dev/kvm is open, before the guest starts; several -run-with are merged):
  -run-with [user=NAME|UID:GID][,chroot=DIR]
                   switch to this user (supplementary groups dropped, gid then
                   uid) and chroot to DIR; every capability is dropped and
                   no_new_privs set. Needs root to switch.
  -run-with jail=DIR[,netns=on|off]
                   run the VM in a child process that is PID 1 of new mount,
                   PID, IPC and UTS (netns=on: and network) namespaces, with an
                   empty read-only root mounted on DIR (pivot_root); this
                   process waits for it, relays SIGINT/SIGTERM/SIGHUP and exits
                   with its status. Cannot be combined with chroot=.
  -run-with [cpu-max=QUOTA[/PERIOD]][,memory-max=SIZE][,pids-max=N]
            [,io-device=MAJOR:MINOR[,io-rbps=SIZE][,io-wbps=SIZE]
            [,io-riops=N][,io-wiops=N]]
                   a per-VM cgroup with these limits (microseconds of CPU per
                   period, default period 100000; bytes; tasks), cgroup v2
                   where the host's unified hierarchy has the controller, else
                   cgroup v1; created below rampart's own cgroup and removed at
                   exit (the VM runs in a supervised child, as with jail=)
  -run-with [rlimit-nofile=N][,rlimit-fsize=SIZE][,rlimit-core=SIZE]
            [,rlimit-nproc=N][,rlimit-memlock=SIZE][,rlimit-as=SIZE]
                   resource limits (soft and hard)
  -runas USER      deprecated: -run-with user=USER
  -chroot DIR      deprecated: -run-with chroot=DIR

Seccomp sandbox:
  -sandbox on|off[,obsolete=deny|allow][,elevateprivileges=deny|allow|children]
           [,spawn=deny|allow][,resourcecontrol=deny|allow]
                   per-thread seccomp filters (QEMU's option). Default: on,
                   every sub-option deny (also after a bare '-sandbox on').
                   spawn=deny also refuses anything that would start a
                   program. '-sandbox off' disables the filters (a warning is
                   printed) and takes no sub-options.

Information:
  -h, -help, --help   print this help and exit
  -version            print the version and exit
"#
    .to_string()
}

/// The `-version` text.
pub fn version_text() -> String {
    format!(
        "rampart {} (QEMU-compatible command line)\n",
        env!("CARGO_PKG_VERSION")
    )
}

pub(crate) fn machine_list() -> String {
    "Supported machines are:\n\
     q35                  x86-64 machine (default); also pc-q35-X.Y\n\
     pc                   the same machine; also pc-i440fx-X.Y\n\
     microvm              the same machine\n"
        .to_string()
}

pub(crate) fn accel_list() -> String {
    "Accelerators supported in rampart:\nkvm\ntcg\n".to_string()
}

pub(crate) fn cpu_list() -> String {
    "Available CPUs:\n\
     host                 the accelerator's CPU (max under tcg)\n\
     max                  everything the accelerator offers (default)\n\
     qemu64               the x86-64 baseline\n"
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_has_usage_line_and_every_option() {
        let h = help_text();

        assert!(h.starts_with("usage: rampart [options]"));
        for opt in [
            "-machine",
            "-M",
            "-accel",
            "-enable-kvm",
            "-cpu",
            "-m ",
            "-smp",
            "-kernel",
            "-initrd",
            "-append",
            "-serial",
            "-nographic",
            "-display",
            "-no-reboot",
            "-no-shutdown",
            "-S ",
            "-name",
            "-uuid",
            "-nodefaults",
            "-object",
            "-device",
            "-blockdev",
            "-drive",
            "-chardev",
            "-mon ",
            "-qmp",
            "-monitor",
            "-run-with",
            "-runas",
            "-chroot",
            "-audit",
            "tls-creds-x509",
            "authz-list",
            "-sandbox",
            "-version",
            "--help",
        ] {
            assert!(h.contains(opt), "help does not mention {opt}");
        }
        assert!(h.contains("are errors"));
    }

    #[test]
    fn version_names_the_program() {
        assert!(version_text().starts_with("rampart 0."));
    }
}
