//! The command layer QMP and HMP share: authorization and audit, then the command itself,
//! answered from static VM facts or by a control request to the VMM thread.

use std::os::fd::OwnedFd;
use std::time::{Instant, SystemTime};

use rampart_config::control::{ControlReply, ControlRequest, CpuInfo, RunState};
use serde_json::{json, Map, Value};
use tracing::info;

use crate::audit::AuditLog;
use crate::error::{ErrorClass, QmpError};
use crate::fds::FdState;
use crate::nodes::{BlockNodes, NodeState};
use crate::schema::{self, COMMANDS};

/// Who is on the other end of a monitor connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Peer {
    /// The monitor's chardev id.
    pub monitor: String,
    /// `unix`, `stdio`, `tcp` (no TLS: `insecure=on`) or `tls`.
    pub transport: &'static str,
    /// The peer's credentials (SO_PEERCRED on UNIX sockets).
    pub pid: Option<i32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// The peer's address (TCP).
    pub address: Option<String>,
    /// The TLS client certificate's distinguished name, as QEMU formats it.
    pub identity: Option<String>,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.monitor, self.transport)?;
        if let (Some(pid), Some(uid)) = (self.pid, self.uid) {
            write!(f, "(pid={pid},uid={uid})")?;
        }
        if let Some(a) = &self.address {
            write!(f, "({a})")?;
        }
        if let Some(id) = &self.identity {
            write!(f, "[{id}]")?;
        }
        Ok(())
    }
}

impl Peer {
    /// The identity the audit log shows: the certificate's DN, `uid:N`, or the transport.
    pub fn audit_identity(&self) -> String {
        match (&self.identity, self.uid) {
            (Some(dn), _) => dn.clone(),
            (None, Some(uid)) => format!("uid:{uid}"),
            (None, None) => "(anonymous)".into(),
        }
    }

    fn audit_line(&self, event: &str) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert(
            "timestamp".into(),
            json!(crate::audit::timestamp(SystemTime::now())),
        );
        m.insert("event".into(), json!(event));
        m.insert("monitor".into(), json!(self.monitor));
        m.insert("transport".into(), json!(self.transport));
        m.insert("peer".into(), json!(self.audit_identity()));
        if let Some(a) = &self.address {
            m.insert("address".into(), json!(a));
        }
        if let Some(pid) = self.pid {
            m.insert("pid".into(), json!(pid));
        }
        m
    }
}

/// Decides whether a peer may connect, and which commands it may run. Every connection passes
/// `admit` (after TLS, before the greeting) and every command `authorize` before it runs.
pub trait Authorizer: Send {
    fn admit(&self, _peer: &Peer) -> Result<(), String> {
        Ok(())
    }
    fn authorize(&self, peer: &Peer, command: &str) -> Result<(), String>;
}

/// The default: every peer that could connect (the socket is mode 0600) may run everything.
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn authorize(&self, _: &Peer, _: &str) -> Result<(), String> {
        Ok(())
    }
}

/// One machine type for `query-machines`.
#[derive(Debug, Clone)]
pub struct MachineInfo {
    pub name: &'static str,
    pub alias: Option<&'static str>,
    pub is_default: bool,
}

/// One character device for `query-chardev` / `info chardev`.
#[derive(Debug, Clone)]
pub struct ChardevInfo {
    pub label: String,
    pub filename: String,
}

/// The VM facts that never change while it runs.
#[derive(Debug, Clone)]
pub struct VmInfo {
    pub version: (u32, u32, u32),
    pub package: String,
    pub name: Option<String>,
    pub uuid: [u8; 16],
    pub kvm_enabled: bool,
    pub kvm_present: bool,
    pub max_cpus: u32,
    /// vCPUs present.
    pub cpus: u32,
    pub machines: Vec<MachineInfo>,
    pub chardevs: Vec<ChardevInfo>,
    /// Block devices, in the order QEMU lists them (devices as created).
    pub blocks: Vec<crate::block::BlockDeviceInfo>,
    /// NICs, in device order.
    pub nics: Vec<crate::net::NicInfo>,
}

/// Sends a control request to the VMM thread and waits for its reply.
pub type Backend = Box<dyn FnMut(ControlRequest) -> Result<ControlReply, String> + Send>;

/// Runs commands for every monitor.
pub struct Dispatcher {
    info: VmInfo,
    backend: Backend,
    authorizer: Box<dyn Authorizer>,
    audit: Option<AuditLog>,
    pub(crate) fds: FdState,
    pub(crate) nodes: NodeState,
    pub(crate) file_creator: Option<crate::dump::FileCreator>,
}

/// The UUID in its canonical text form.
pub fn uuid_text(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl Dispatcher {
    pub fn new(info: VmInfo, backend: Backend, authorizer: Box<dyn Authorizer>) -> Dispatcher {
        Dispatcher {
            info,
            backend,
            authorizer,
            audit: None,
            fds: FdState::default(),
            nodes: NodeState::default(),
            file_creator: None,
        }
    }

    /// Writes an audit line for every connection attempt and command to `log`.
    pub fn with_audit(mut self, log: AuditLog) -> Dispatcher {
        self.audit = Some(log);
        self
    }

    /// Decides whether `peer` may connect (after TLS, before the greeting) and audits it.
    pub fn admit(&mut self, peer: &Peer) -> Result<(), String> {
        let r = self.authorizer.admit(peer);
        match &r {
            Ok(()) => info!(peer = %peer, "audit: monitor client admitted"),
            Err(why) => info!(peer = %peer, "audit: monitor client refused: {why}"),
        }
        self.audit_connection(peer, r.as_ref().err().map(String::as_str));
        r
    }

    /// Audits a connection attempt: admitted (`refused` is `None`) or refused and why.
    pub fn audit_connection(&mut self, peer: &Peer, refused: Option<&str>) {
        let Some(log) = &self.audit else { return };
        let mut m = peer.audit_line("connect");
        m.insert(
            "decision".into(),
            json!(if refused.is_some() {
                "denied"
            } else {
                "allowed"
            }),
        );
        if let Some(why) = refused {
            m.insert("reason".into(), json!(why));
        }
        log.record(&Value::Object(m));
    }

    fn audit_command(
        &self,
        peer: &Peer,
        name: &str,
        args: &Map<String, Value>,
        result: Result<(), ErrorClass>,
        denied: bool,
        start: Instant,
    ) {
        let Some(log) = &self.audit else { return };
        let mut m = peer.audit_line("command");
        m.insert("command".into(), json!(name));
        m.insert("arguments".into(), crate::audit::redact(args));
        m.insert(
            "decision".into(),
            json!(if denied { "denied" } else { "allowed" }),
        );
        m.insert(
            "result".into(),
            json!(match result {
                Ok(()) => "ok",
                Err(class) => class.name(),
            }),
        );
        m.insert(
            "duration-us".into(),
            json!(start.elapsed().as_micros() as u64),
        );
        log.record(&Value::Object(m));
    }

    /// Lets commands that write files (`dump-guest-memory file:PATH`) create them through
    /// `create` (the binary's, behind the monitor's path policy).
    pub fn with_file_creator(mut self, create: crate::dump::FileCreator) -> Dispatcher {
        self.file_creator = Some(create);
        self
    }

    /// Shares the process's fd sets (those `-add-fd` filled) with the monitor's commands.
    pub fn with_fdsets(
        mut self,
        sets: std::sync::Arc<std::sync::Mutex<rampart_sandbox::fdset::FdSets>>,
    ) -> Dispatcher {
        self.fds = FdState::new(sets);
        self
    }

    /// Lets `blockdev-add` open nodes through `nodes` (the binary's block layer behind the
    /// monitor's path policy). Without it, `blockdev-add` is refused.
    pub fn with_block_nodes(mut self, nodes: Box<dyn BlockNodes>) -> Dispatcher {
        self.nodes.backend = Some(nodes);
        self
    }

    /// Hands the descriptors that arrived with the next command to it; whatever it does not
    /// take is closed when it returns.
    pub fn pass_fds(&mut self, fds: Vec<OwnedFd>) {
        self.fds.passed = fds;
    }

    /// Closes passed descriptors no command took (a frame that was not a command).
    pub fn close_passed(&mut self, peer: &Peer) {
        crate::fds::close_unused(peer, "(none)", &mut self.fds.passed);
    }

    /// Named descriptors monitor `id` holds (`getfd`).
    pub fn named_fds(&self, id: &str) -> usize {
        self.fds.named_count(id)
    }

    pub fn info(&self) -> &VmInfo {
        &self.info
    }

    /// Runs command `name` with `args` for `peer`. `hmp` runs human-monitor-command lines.
    pub fn execute(
        &mut self,
        peer: &Peer,
        name: &str,
        args: Option<&Value>,
    ) -> Result<Value, QmpError> {
        let Some(def) = schema::command(name) else {
            return Err(QmpError::not_found(format!(
                "The command {name} has not been found"
            )));
        };
        let start = Instant::now();
        let args = match schema::validate_args(def.args, args) {
            Ok(a) => a,
            Err(e) => {
                // Audited too: a malformed call is an attempt like any other.
                let raw = args.and_then(Value::as_object).cloned().unwrap_or_default();
                self.audit_command(peer, name, &raw, Err(e.class), false, start);
                return Err(e);
            }
        };
        if let Err(why) = self.authorizer.authorize(peer, name) {
            info!(peer = %peer, command = name, outcome = "denied", "audit: {why}");
            let e = QmpError {
                class: ErrorClass::PermissionDenied,
                desc: format!("Command '{name}' is not permitted: {why}"),
            };
            self.audit_command(peer, name, &args, Err(e.class), true, start);
            return Err(e);
        }
        let passed = self.fds.passed.len();
        let result = self.run(peer, name, &args);
        crate::fds::close_unused(peer, name, &mut self.fds.passed);
        let outcome = if result.is_ok() { "ok" } else { "error" };
        if passed > 0 {
            info!(peer = %peer, command = name, outcome, passed_fds = passed,
                  "audit: monitor command");
        } else {
            info!(peer = %peer, command = name, outcome, "audit: monitor command");
        }
        let class = result.as_ref().map(|_| ()).map_err(|e| e.class);
        self.audit_command(peer, name, &args, class, false, start);
        result
    }

    pub(crate) fn control(&mut self, req: ControlRequest) -> Result<ControlReply, QmpError> {
        (self.backend)(req).map_err(QmpError::generic)
    }

    fn done(&mut self, req: ControlRequest) -> Result<Value, QmpError> {
        self.control(req)?;
        Ok(json!({}))
    }

    /// The VM's run state, from the VMM thread.
    pub fn status(&mut self) -> Result<RunState, QmpError> {
        match self.control(ControlRequest::QueryStatus)? {
            ControlReply::Status(s) => Ok(s),
            other => Err(QmpError::generic(format!("unexpected reply {other:?}"))),
        }
    }

    /// The vCPUs, from the VMM thread.
    pub fn cpus(&mut self) -> Result<Vec<CpuInfo>, QmpError> {
        match self.control(ControlRequest::QueryCpus)? {
            ControlReply::Cpus(c) => Ok(c),
            other => Err(QmpError::generic(format!("unexpected reply {other:?}"))),
        }
    }

    fn run(
        &mut self,
        peer: &Peer,
        name: &str,
        args: &Map<String, Value>,
    ) -> Result<Value, QmpError> {
        if let Some(r) = self.fds.run(peer, name, args) {
            return r;
        }
        if let Some(r) = self.nodes.run(&self.info, name, args) {
            return r;
        }
        let i = &self.info;
        Ok(match name {
            "qmp_capabilities" => {
                // Negotiation is the session's business; reaching here means it is complete.
                return Err(QmpError::not_found(
                    "Capabilities negotiation is already complete, command ignored",
                ));
            }
            "query-version" => json!({
                "qemu": {"major": i.version.0, "minor": i.version.1, "micro": i.version.2},
                "package": i.package,
            }),
            "query-commands" => {
                Value::Array(COMMANDS.iter().map(|c| json!({"name": c.name})).collect())
            }
            "query-qmp-schema" => crate::introspect::schema(),
            "query-status" => {
                let s = self.status()?;
                json!({"running": s.is_running(), "status": s.name()})
            }
            "query-name" => match &i.name {
                Some(n) => json!({"name": n}),
                None => json!({}),
            },
            "query-uuid" => json!({"UUID": uuid_text(&i.uuid)}),
            "query-kvm" => json!({"enabled": i.kvm_enabled, "present": i.kvm_present}),
            "query-cpus-fast" => Value::Array(
                self.cpus()?
                    .iter()
                    .map(|c| {
                        json!({
                            "cpu-index": c.index,
                            "qom-path": format!("/machine/unattached/device[{}]", c.index),
                            "thread-id": c.thread_id,
                            "props": {"socket-id": c.socket, "core-id": c.core,
                                      "thread-id": c.thread},
                            "target": "x86_64",
                        })
                    })
                    .collect(),
            ),
            "query-machines" => {
                if args.get("compat-props") == Some(&Value::Bool(true)) {
                    return Err(QmpError::generic(
                        "Parameter 'compat-props' is not supported: rampart machines have no \
                         compatibility properties",
                    ));
                }
                Value::Array(
                    i.machines
                        .iter()
                        .map(|m| {
                            let mut v = json!({
                                "name": m.name,
                                "cpu-max": i.max_cpus,
                                "hotpluggable-cpus": false,
                                "numa-mem-supported": false,
                                "deprecated": false,
                                "default-cpu-type": "max-x86_64-cpu",
                                "acpi": true,
                            });
                            if let Some(a) = m.alias {
                                v["alias"] = json!(a);
                            }
                            if m.is_default {
                                v["is-default"] = json!(true);
                            }
                            v
                        })
                        .collect(),
                )
            }
            "query-chardev" => Value::Array(
                i.chardevs
                    .iter()
                    .map(|c| json!({"label": c.label, "filename": c.filename, "frontend-open": true}))
                    .collect(),
            ),
            "query-block" => crate::block::query_block(&i.blocks),
            "dump-guest-memory" => return crate::dump::run(self, peer, args),
            "query-dump-guest-memory-capability" => crate::dump::capability(),
            "query-blockstats" => crate::block::query_blockstats(&i.blocks),
            "block_set_io_throttle" => crate::block_throttle::set_io_throttle(&i.blocks, args)?,
            "set_link" => crate::net::set_link(
                &i.nics,
                args.get("name").and_then(Value::as_str).unwrap_or_default(),
                args.get("up").and_then(Value::as_bool).unwrap_or(true),
            )?,
            "query-rx-filter" => {
                crate::net::query_rx_filter(&i.nics, args.get("name").and_then(Value::as_str))?
            }
            crate::net_throttle::SET => crate::net_throttle::set_throttle(&i.nics, args)?,
            crate::net_throttle::QUERY => crate::net_throttle::query_throttle(
                &i.nics,
                args.get("id").and_then(Value::as_str),
            )?,
            "stop" => self.done(ControlRequest::Stop)?,
            "cont" => self.done(ControlRequest::Cont)?,
            "system_reset" => self.done(ControlRequest::SystemReset)?,
            "system_powerdown" => self.done(ControlRequest::SystemPowerdown)?,
            "quit" => self.done(ControlRequest::Quit)?,
            "human-monitor-command" => {
                let line = args
                    .get("command-line")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                if let Some(cpu) = args.get("cpu-index") {
                    let ok = cpu.as_u64().is_some_and(|c| c < u64::from(i.cpus));
                    if !ok {
                        return Err(QmpError::generic(
                            "Parameter 'cpu-index' expects a CPU number",
                        ));
                    }
                }
                Value::String(crate::hmp::run_line(self, peer, &line))
            }
            other => {
                // A command in the schema without an implementation is a bug caught by tests.
                return Err(QmpError::not_found(format!(
                    "The command {other} has not been found"
                )));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_config::control::RunState;

    fn dispatcher() -> Dispatcher {
        let info = VmInfo {
            version: (0, 1, 0),
            package: "rampart".into(),
            name: Some("vm".into()),
            uuid: [0x11; 16],
            kvm_enabled: false,
            kvm_present: true,
            max_cpus: 254,
            cpus: 2,
            machines: vec![MachineInfo {
                name: "q35",
                alias: None,
                is_default: true,
            }],
            chardevs: vec![ChardevInfo {
                label: "serial0".into(),
                filename: "stdio".into(),
            }],
            blocks: vec![crate::block::BlockDeviceInfo {
                device: "d0".into(),
                qdev: Some("/machine/peripheral-anon/device[0]/virtio-backend".into()),
                node_name: "d0".into(),
                file: "/img/a.raw".into(),
                drv: "raw",
                read_only: false,
                virtual_size: 1 << 20,
                backing: vec![],
                cache: crate::block::CacheInfo {
                    writeback: true,
                    direct: false,
                    no_flush: false,
                },
                stats: crate::block::StatsReader(std::sync::Arc::new(Default::default)),
                throttle: Some(crate::block_throttle::ThrottleControl {
                    get: std::sync::Arc::new(Default::default),
                    set: std::sync::Arc::new(|_| {}),
                    group: None,
                }),
            }],
            nics: vec![crate::net::NicInfo {
                name: "nic0".into(),
                netdev: "n0".into(),
                path: "/machine/peripheral/nic0/virtio-backend".into(),
                control: std::sync::Arc::new(FakeNic),
            }],
        };
        // The VMM's side of the control channel, answering as a running two-vCPU VM does.
        let backend: Backend = Box::new(|req| {
            Ok(match req {
                ControlRequest::QueryStatus => ControlReply::Status(RunState::Running),
                ControlRequest::QueryCpus => ControlReply::Cpus(vec![
                    CpuInfo {
                        index: 0,
                        thread_id: 10,
                        socket: 0,
                        core: 0,
                        thread: 0,
                    },
                    CpuInfo {
                        index: 1,
                        thread_id: 11,
                        socket: 0,
                        core: 1,
                        thread: 0,
                    },
                ]),
                _ => ControlReply::Done,
            })
        });
        Dispatcher::new(info, backend, Box::new(AllowAll))
    }

    struct FakeNic;
    impl crate::net::NicControl for FakeNic {
        fn set_link(&self, _up: bool) {}
        fn rx_filter(&self) -> rampart_config::control::RxFilter {
            rampart_config::control::RxFilter::reset([2, 0, 0, 0, 0, 1])
        }
        fn limits(&self) -> rampart_config::NetLimits {
            rampart_config::NetLimits::default()
        }
        fn set_limits(&self, _: rampart_config::NetLimits) {}
    }

    fn peer() -> Peer {
        Peer {
            monitor: "m".into(),
            transport: "unix",
            ..Peer::default()
        }
    }

    /// A descriptor to pass with a command.
    fn some_fd() -> OwnedFd {
        std::fs::File::open("/proc/self/status").unwrap().into()
    }

    /// A block-node backend that "opens" any node by name (the binary's opens files).
    struct FakeNodes;
    impl BlockNodes for FakeNodes {
        fn add(
            &mut self,
            args: &Map<String, Value>,
        ) -> Result<crate::block::BlockDeviceInfo, String> {
            Ok(crate::block::BlockDeviceInfo {
                device: String::new(),
                qdev: None,
                node_name: args["node-name"].as_str().unwrap().into(),
                file: "/dev/fdset/0".into(),
                drv: "raw",
                read_only: true,
                virtual_size: 512,
                backing: Vec::new(),
                cache: crate::block::CacheInfo {
                    writeback: true,
                    direct: false,
                    no_flush: false,
                },
                stats: crate::block::StatsReader(std::sync::Arc::new(Default::default)),
                throttle: None,
            })
        }
        fn del(&mut self, _: &str) -> Result<(), String> {
            Ok(())
        }
    }

    #[test]
    fn every_command_returns_what_its_schema_declares() {
        let mut d = dispatcher().with_block_nodes(Box::new(FakeNodes));
        for c in COMMANDS {
            if c.name == "qmp_capabilities" {
                continue;
            }
            let (args, fd) = match c.name {
                "human-monitor-command" => (Some(json!({"command-line": "info status"})), false),
                "set_link" => (Some(json!({"name": "nic0", "up": false})), false),
                crate::net_throttle::SET => (
                    Some(json!({"id": "n0", "rx-bps": 0, "rx-pps": 0,
                        "tx-bps": 1000, "tx-pps": 0})),
                    false,
                ),
                "block_set_io_throttle" => (
                    Some(json!({"device": "d0", "bps": 1000, "bps_rd": 0,
                        "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0})),
                    false,
                ),
                "getfd" => (Some(json!({"fdname": "f"})), true),
                "closefd" => (Some(json!({"fdname": "f"})), false),
                "add-fd" => (Some(json!({"fdset-id": 1, "opaque": "o"})), true),
                "remove-fd" => (Some(json!({"fdset-id": 1})), false),
                "blockdev-add" => (Some(json!({"driver": "raw", "node-name": "n9"})), false),
                "blockdev-del" => (Some(json!({"node-name": "n9"})), false),
                "dump-guest-memory" => {
                    d.pass_fds(vec![some_fd()]);
                    d.execute(&peer(), "getfd", Some(&json!({"fdname": "dump"})))
                        .unwrap();
                    (Some(json!({"paging": false, "protocol": "fd:dump"})), false)
                }
                _ => (None, false),
            };
            if fd {
                d.pass_fds(vec![some_fd()]);
            }
            // Run the listing commands while something is listed.
            if c.name == "query-fdsets" {
                d.pass_fds(vec![some_fd()]);
                d.execute(&peer(), "add-fd", None).unwrap();
            }
            let v = d
                .execute(&peer(), c.name, args.as_ref())
                .unwrap_or_else(|e| panic!("{}: {e}", c.name));
            schema::check_value(c.ret, &v, c.name)
                .unwrap_or_else(|e| panic!("{} returned {v}: {e}", c.name));
        }
    }

    #[test]
    fn descriptors_a_command_does_not_take_are_closed() {
        let mut d = dispatcher();
        let fd = some_fd();
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        d.pass_fds(vec![fd]);

        d.execute(&peer(), "query-status", None).unwrap();

        assert!(d.fds.passed.is_empty(), "fd {raw} was dropped, so closed");
        let e = d
            .execute(&peer(), "getfd", Some(&json!({"fdname": "x"})))
            .unwrap_err();
        assert_eq!(e.desc, "No file descriptor supplied via SCM_RIGHTS");
    }

    #[test]
    fn named_descriptors_belong_to_their_monitor() {
        let mut d = dispatcher();
        d.pass_fds(vec![some_fd()]);
        d.execute(&peer(), "getfd", Some(&json!({"fdname": "disk"})))
            .unwrap();
        assert_eq!(d.named_fds("m"), 1);
        let other = Peer {
            monitor: "other".into(),
            ..peer()
        };
        let e = d
            .execute(&other, "closefd", Some(&json!({"fdname": "disk"})))
            .unwrap_err();
        assert_eq!(e.desc, "File descriptor named 'disk' not found");
        // HMP's getfd/closefd are the same commands.
        assert_eq!(crate::hmp::run_line(&mut d, &peer(), "closefd disk"), "");
        assert_eq!(d.named_fds("m"), 0);
    }

    #[test]
    fn add_fd_and_remove_fd_answer_like_qemu() {
        let mut d = dispatcher();
        let e = d.execute(&peer(), "add-fd", None).unwrap_err();
        assert_eq!(e.desc, "No file descriptor supplied via SCM_RIGHTS");
        d.pass_fds(vec![some_fd()]);
        let e = d
            .execute(&peer(), "add-fd", Some(&json!({"fdset-id": -1})))
            .unwrap_err();
        assert_eq!(e.desc, "Parameter 'fdset-id' expects a non-negative value");
        d.pass_fds(vec![some_fd(), some_fd()]);
        let v = d.execute(&peer(), "add-fd", None).unwrap();
        assert_eq!(v["fdset-id"], 0);
        let e = d
            .execute(
                &peer(),
                "remove-fd",
                Some(&json!({"fdset-id": 0, "fd": 9999})),
            )
            .unwrap_err();
        assert_eq!(
            e.desc,
            "File descriptor named 'fdset-id:0, fd:9999' not found"
        );
        let e = d
            .execute(&peer(), "remove-fd", Some(&json!({"fdset-id": -1})))
            .unwrap_err();
        assert_eq!(e.desc, "File descriptor named 'fdset-id:-1' not found");
        d.execute(
            &peer(),
            "remove-fd",
            Some(&json!({"fdset-id": 0, "fd": v["fd"]})),
        )
        .unwrap();
        assert_eq!(d.execute(&peer(), "query-fdsets", None).unwrap(), json!([]));
    }

    #[test]
    fn blockdev_add_checks_names_before_opening_anything() {
        let mut d = dispatcher();
        let e = d
            .execute(&peer(), "blockdev-add", Some(&json!({"driver": "raw"})))
            .unwrap_err();
        assert_eq!(e.desc, "'node-name' must be specified for the root node");
        let e = d
            .execute(
                &peer(),
                "blockdev-add",
                Some(&json!({"driver": "raw", "node-name": "n"})),
            )
            .unwrap_err();
        assert_eq!(e.desc, "blockdev-add is not available on this monitor");
        let mut d = dispatcher().with_block_nodes(Box::new(FakeNodes));
        let add = json!({"driver": "raw", "node-name": "n"});
        d.execute(&peer(), "blockdev-add", Some(&add)).unwrap();
        let e = d.execute(&peer(), "blockdev-add", Some(&add)).unwrap_err();
        assert_eq!(e.desc, "Duplicate nodes with node-name='n'");
        let nodes = d.execute(&peer(), "query-named-block-nodes", None).unwrap();
        let last = nodes.as_array().unwrap().last().unwrap();
        assert_eq!(
            last["node-name"], "n",
            "added nodes follow the command line's"
        );
        d.execute(&peer(), "blockdev-del", Some(&json!({"node-name": "n"})))
            .unwrap();
        let e = d
            .execute(&peer(), "blockdev-del", Some(&json!({"node-name": "n"})))
            .unwrap_err();
        assert_eq!(e.desc, "Failed to find node with node-name='n'");
    }

    struct DenyStop;
    impl Authorizer for DenyStop {
        fn authorize(&self, _: &Peer, command: &str) -> Result<(), String> {
            if command == "stop" {
                Err("read-only monitor".into())
            } else {
                Ok(())
            }
        }
    }

    #[test]
    fn the_authorizer_sees_every_command_before_it_runs() {
        let mut d = dispatcher();
        d.authorizer = Box::new(DenyStop);
        let e = d.execute(&peer(), "stop", None).unwrap_err();
        assert!(e.desc.contains("read-only monitor"), "{e}");
        assert_eq!(e.class, ErrorClass::PermissionDenied);
        // HMP goes through the same point.
        let out = crate::hmp::run_line(&mut d, &peer(), "stop");
        assert!(
            out.starts_with("Error: Command 'stop' is not permitted"),
            "{out}"
        );
        assert!(d.execute(&peer(), "query-status", None).is_ok());
    }

    #[test]
    fn human_monitor_command_checks_the_cpu_index() {
        let mut d = dispatcher();
        let ok = json!({"command-line": "info name", "cpu-index": 1});
        assert_eq!(
            d.execute(&peer(), "human-monitor-command", Some(&ok))
                .unwrap(),
            "vm\r\n"
        );
        let bad = json!({"command-line": "info name", "cpu-index": 2});
        let e = d
            .execute(&peer(), "human-monitor-command", Some(&bad))
            .unwrap_err();
        assert_eq!(e.desc, "Parameter 'cpu-index' expects a CPU number");
    }
}
