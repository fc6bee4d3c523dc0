//! NIC rate limits at run time: rampart's own QMP commands `__rampart_netdev-set-throttle`
//! and `__rampart_query-netdev-throttle` (HMP `netdev_set_throttle`, `info netdev_throttle`),
//! through each NIC's [`NicControl`](crate::net::NicControl).
//!
//! QEMU has no such command, so these are downstream extensions and carry the `__` prefix the
//! QMP specification reserves for them (upstream never uses it, so a future QEMU command can
//! never collide with them); `docs/architecture.md` ("The monitor") gives the reasoning. The
//! arguments mirror the `-netdev tap,throttling.*` options and `block_set_io_throttle`: the
//! four rates are required (the call replaces the whole set, so no limit is lifted by being
//! forgotten), bursts are optional.

use rampart_config::{NetLimits, RateLimit, MAX_BURST_SECONDS};
use serde_json::{json, Map, Value};

use crate::error::{ErrorClass, QmpError};
use crate::net::NicInfo;
use crate::schema::{opt, req, Member, Ty};

/// The downstream prefix of rampart's own QMP commands.
pub const PREFIX: &str = "__rampart_";
/// The command that changes a netdev's limits.
pub const SET: &str = "__rampart_netdev-set-throttle";
/// The command that reports them.
pub const QUERY: &str = "__rampart_query-netdev-throttle";

/// The four limits, in [`NetLimits`] field order (also the HMP argument order).
pub const NAMES: [&str; 4] = ["rx-bps", "rx-pps", "tx-bps", "tx-pps"];

/// The set command's arguments.
pub const SET_ARGS: &[Member] = &[
    req("id", Ty::Str),
    req("rx-bps", Ty::Int),
    req("rx-pps", Ty::Int),
    req("tx-bps", Ty::Int),
    req("tx-pps", Ty::Int),
    opt("rx-bps-max", Ty::Int),
    opt("rx-pps-max", Ty::Int),
    opt("tx-bps-max", Ty::Int),
    opt("tx-pps-max", Ty::Int),
    opt("rx-bps-max-length", Ty::Int),
    opt("rx-pps-max-length", Ty::Int),
    opt("tx-bps-max-length", Ty::Int),
    opt("tx-pps-max-length", Ty::Int),
];

/// One netdev's limits, as the query returns them.
pub const NETDEV_THROTTLE: Ty = Ty::Object(&[
    req("id", Ty::Str),
    req("nic", Ty::Str),
    req("rx-bps", Ty::Int),
    req("rx-pps", Ty::Int),
    req("tx-bps", Ty::Int),
    req("tx-pps", Ty::Int),
    opt("rx-bps-max", Ty::Int),
    opt("rx-pps-max", Ty::Int),
    opt("tx-bps-max", Ty::Int),
    opt("tx-pps-max", Ty::Int),
    opt("rx-bps-max-length", Ty::Int),
    opt("rx-pps-max-length", Ty::Int),
    opt("tx-bps-max-length", Ty::Int),
    opt("tx-pps-max-length", Ty::Int),
]);

fn as_array(l: &NetLimits) -> [RateLimit; 4] {
    [l.rx_bps, l.rx_pps, l.tx_bps, l.tx_pps]
}

fn from_array(r: [RateLimit; 4]) -> NetLimits {
    NetLimits {
        rx_bps: r[0],
        rx_pps: r[1],
        tx_bps: r[2],
        tx_pps: r[3],
    }
}

/// The NIC `id` names: its back end's id (`-netdev id=`) or the NIC's own name.
fn find<'a>(nics: &'a [NicInfo], id: &str) -> Result<&'a NicInfo, QmpError> {
    nics.iter()
        .find(|n| n.netdev == id || n.name == id)
        .ok_or_else(|| QmpError {
            class: ErrorClass::DeviceNotFound,
            desc: format!("Device '{id}' not found"),
        })
}

fn num(args: &Map<String, Value>, key: &str) -> Result<Option<u64>, QmpError> {
    match args.get(key) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            QmpError::generic(format!("Parameter '{key}' expects a non-negative number"))
        }),
    }
}

/// The limits `args` ask for, checked as `-netdev tap,throttling.*` is: every value in range,
/// a burst above its rate, a burst length (1 to 86400 seconds) only with a burst.
pub fn parse_limits(args: &Map<String, Value>) -> Result<NetLimits, QmpError> {
    let mut r = [RateLimit::default(); 4];
    for (slot, name) in r.iter_mut().zip(NAMES) {
        let max_length = format!("{name}-max-length");
        let len = num(args, &max_length)?;
        if len.is_some_and(|l| !(1..=MAX_BURST_SECONDS).contains(&l)) {
            return Err(QmpError::generic(format!(
                "Parameter '{max_length}' must be between 1 and {MAX_BURST_SECONDS}"
            )));
        }
        *slot = RateLimit {
            avg: num(args, name)?.unwrap_or(0),
            max: num(args, &format!("{name}-max"))?.unwrap_or(0),
            max_length: len.unwrap_or(0),
        };
    }
    let limits = from_array(r);
    limits
        .validate()
        .map_err(|e| QmpError::generic(e.to_string()))?;
    Ok(limits)
}

/// `__rampart_netdev-set-throttle`: new limits for the netdev (or NIC) `id`, effective at once.
pub fn set_throttle(nics: &[NicInfo], args: &Map<String, Value>) -> Result<Value, QmpError> {
    let id = args.get("id").and_then(Value::as_str).unwrap_or_default();
    let nic = find(nics, id)?;
    let limits = parse_limits(args)?;
    nic.control.set_limits(limits);
    Ok(json!({}))
}

fn throttle_json(n: &NicInfo) -> Value {
    let l = n.control.limits();
    let mut m = Map::new();
    m.insert("id".into(), json!(n.netdev));
    m.insert("nic".into(), json!(n.name));
    for (name, r) in NAMES.iter().zip(as_array(&l)) {
        m.insert((*name).into(), json!(r.avg));
        if r.max != 0 {
            m.insert(format!("{name}-max"), json!(r.max));
            m.insert(format!("{name}-max-length"), json!(r.max_length.max(1)));
        }
    }
    Value::Object(m)
}

/// `__rampart_query-netdev-throttle`: every NIC's back end and its limits, or the one `id`
/// names.
pub fn query_throttle(nics: &[NicInfo], id: Option<&str>) -> Result<Value, QmpError> {
    Ok(match id {
        None => Value::Array(nics.iter().map(throttle_json).collect()),
        Some(id) => json!([throttle_json(find(nics, id)?)]),
    })
}

/// HMP `netdev_set_throttle ID RX-BPS RX-PPS TX-BPS TX-PPS` as the set command's arguments.
pub fn hmp_args(words: &[&str]) -> Result<Value, QmpError> {
    let usage = || QmpError::generic("usage: netdev_set_throttle id rx-bps rx-pps tx-bps tx-pps");
    let [id, rates @ ..] = words else {
        return Err(usage());
    };
    if rates.len() != NAMES.len() {
        return Err(usage());
    }
    let mut args = Map::new();
    args.insert("id".into(), json!(id));
    for (name, word) in NAMES.iter().zip(rates) {
        let v: u64 = word.parse().map_err(|_| {
            QmpError::generic(format!(
                "netdev_set_throttle: '{name}' expects a non-negative integer, not '{word}'"
            ))
        })?;
        args.insert((*name).into(), json!(v));
    }
    Ok(Value::Object(args))
}

/// HMP `info netdev_throttle`: one line per netdev, its NIC and the limits that are set.
pub fn info_text(v: &Value) -> String {
    let mut out = String::new();
    for n in v.as_array().into_iter().flatten() {
        let s = |k: &str| n[k].as_str().unwrap_or_default().to_string();
        let mut set = Vec::new();
        for name in NAMES {
            if n[name].as_u64().unwrap_or(0) != 0 {
                let mut t = format!("{name}={}", n[name]);
                if let Some(max) = n[format!("{name}-max")].as_u64() {
                    t.push_str(&format!(
                        " {name}-max={max} {name}-max-length={}",
                        n[format!("{name}-max-length")]
                    ));
                }
                set.push(t);
            }
        }
        let limits = if set.is_empty() {
            "no limits".to_string()
        } else {
            set.join(" ")
        };
        out.push_str(&format!("{} (NIC {}): {limits}\n", s("id"), s("nic")));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::net::NicControl;

    #[derive(Default)]
    struct Fake(Mutex<NetLimits>);
    impl NicControl for Fake {
        fn set_link(&self, _: bool) {}
        fn rx_filter(&self) -> rampart_config::control::RxFilter {
            rampart_config::control::RxFilter::reset([2, 0, 0, 0, 0, 1])
        }
        fn limits(&self) -> NetLimits {
            *self.0.lock().unwrap()
        }
        fn set_limits(&self, l: NetLimits) {
            *self.0.lock().unwrap() = l;
        }
    }

    fn nics() -> (Vec<NicInfo>, Arc<Fake>) {
        let f = Arc::new(Fake::default());
        let nic = NicInfo {
            name: "nic0".into(),
            netdev: "n0".into(),
            path: "/machine/peripheral/nic0/virtio-backend".into(),
            control: f.clone(),
        };
        (vec![nic], f)
    }

    fn args(v: Value) -> Map<String, Value> {
        // Through the schema first, as the dispatcher does.
        crate::schema::validate_args(SET_ARGS, Some(&v)).unwrap()
    }

    fn set(v: Value) -> Result<Value, QmpError> {
        let (n, _) = nics();
        set_throttle(&n, &args(v))
    }

    fn rates() -> Value {
        json!({"id": "n0", "rx-bps": 0, "rx-pps": 0, "tx-bps": 0, "tx-pps": 0})
    }

    fn with(extra: Value) -> Value {
        let mut v = rates();
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    #[test]
    fn new_limits_reach_the_nic_by_netdev_or_nic_name() {
        let (n, f) = nics();
        let a = args(with(json!({"tx-bps": 262144, "tx-bps-max": 1048576,
                                 "tx-bps-max-length": 3, "rx-pps": 1000})));
        set_throttle(&n, &a).unwrap();
        let l = f.limits();
        assert_eq!(
            l.tx_bps,
            RateLimit {
                avg: 262144,
                max: 1048576,
                max_length: 3
            }
        );
        assert_eq!(l.rx_pps.avg, 1000);
        assert!(!l.rx_bps.is_set() && !l.tx_pps.is_set());
        // By the NIC's name too; all zeros lift every limit.
        let mut a = args(rates());
        a.insert("id".into(), json!("nic0"));
        set_throttle(&n, &a).unwrap();
        assert!(!f.limits().any());
    }

    #[test]
    fn unknown_netdev_is_device_not_found() {
        let e = set(with(json!({"id": "n9"}))).unwrap_err();
        assert_eq!(e.class, ErrorClass::DeviceNotFound);
        assert_eq!(e.desc, "Device 'n9' not found");
    }

    #[test]
    fn every_rate_is_required_and_unknown_arguments_are_refused() {
        let e = crate::schema::validate_args(SET_ARGS, Some(&json!({"id": "n0", "tx-bps": 1})))
            .unwrap_err();
        assert_eq!(e.desc, "Parameter 'rx-bps' is missing");
        let e = crate::schema::validate_args(SET_ARGS, Some(&with(json!({"tx-bytes": 1}))))
            .unwrap_err();
        assert_eq!(e.desc, "Parameter 'tx-bytes' is unexpected");
        let e = crate::schema::validate_args(SET_ARGS, Some(&with(json!({"tx-bps": "1M"}))))
            .unwrap_err();
        assert_eq!(
            e.desc,
            "Invalid parameter type for 'tx-bps', expected: integer"
        );
    }

    #[test]
    fn negative_values_are_refused_by_name() {
        for name in ["rx-bps", "tx-pps", "tx-bps-max", "rx-pps-max-length"] {
            let e = set(with(json!({ name: -1 }))).unwrap_err();
            assert_eq!(
                e.desc,
                format!("Parameter '{name}' expects a non-negative number")
            );
        }
    }

    #[test]
    fn absurd_values_are_refused_by_name() {
        let e = set(with(json!({"rx-bps": 1_000_000_000_000_001u64}))).unwrap_err();
        assert!(e.desc.starts_with("rx-bps: values must be at most"), "{e}");
        let e = set(with(json!({"tx-pps": u64::MAX}))).unwrap_err();
        assert!(e.desc.starts_with("tx-pps: values must be at most"), "{e}");
        let e = set(with(
            json!({"tx-bps": 1, "tx-bps-max": 2, "tx-bps-max-length": 86401}),
        ))
        .unwrap_err();
        assert_eq!(
            e.desc,
            "Parameter 'tx-bps-max-length' must be between 1 and 86400"
        );
        let e = set(with(
            json!({"tx-bps": 1, "tx-bps-max": 2, "tx-bps-max-length": 0}),
        ))
        .unwrap_err();
        assert_eq!(
            e.desc,
            "Parameter 'tx-bps-max-length' must be between 1 and 86400"
        );
    }

    #[test]
    fn burst_rules_are_checked_and_nothing_changes_on_error() {
        let (n, f) = nics();
        let before = NetLimits {
            tx_pps: RateLimit {
                avg: 5,
                max: 0,
                max_length: 0,
            },
            ..Default::default()
        };
        f.set_limits(before);
        for (extra, want) in [
            (
                json!({"tx-bps": 1000, "tx-bps-max": 999}),
                "tx-bps-max cannot be lower than tx-bps",
            ),
            (json!({"rx-pps-max": 10}), "rx-pps-max requires rx-pps"),
            (
                json!({"rx-bps": 10, "rx-bps-max-length": 2}),
                "rx-bps-max-length requires rx-bps-max",
            ),
        ] {
            let e = set_throttle(&n, &args(with(extra))).unwrap_err();
            assert_eq!(e.class, ErrorClass::GenericError);
            assert!(e.desc.contains(want), "{e} (wanted {want})");
        }
        assert_eq!(f.limits(), before, "a refused call changes nothing");
    }

    #[test]
    fn query_reports_rates_and_only_the_bursts_that_are_set() {
        let (n, f) = nics();
        f.set_limits(NetLimits {
            tx_bps: RateLimit {
                avg: 100,
                max: 200,
                max_length: 0,
            },
            ..Default::default()
        });
        let v = query_throttle(&n, None).unwrap();
        crate::schema::check_value(Ty::Array(&NETDEV_THROTTLE), &v, "r").unwrap();
        assert_eq!(
            v,
            json!([{"id": "n0", "nic": "nic0", "rx-bps": 0, "rx-pps": 0, "tx-bps": 100,
                    "tx-pps": 0, "tx-bps-max": 200, "tx-bps-max-length": 1}])
        );
        assert_eq!(query_throttle(&n, Some("nic0")).unwrap(), v);
        let e = query_throttle(&n, Some("x")).unwrap_err();
        assert_eq!(e.class, ErrorClass::DeviceNotFound);
        assert_eq!(
            info_text(&v),
            "n0 (NIC nic0): tx-bps=100 tx-bps-max=200 tx-bps-max-length=1\n"
        );
        f.set_limits(NetLimits::default());
        assert_eq!(
            info_text(&query_throttle(&n, None).unwrap()),
            "n0 (NIC nic0): no limits\n"
        );
    }

    /// A dispatcher for the NIC of [`nics`] whose monitor gives `uid:7` the read-only role
    /// (`query-*`) and `uid:0` every command, auditing into `log`.
    fn dispatcher(log: crate::audit::AuditLog) -> (crate::Dispatcher, Arc<Fake>) {
        let (nics, fake) = nics();
        let info = crate::VmInfo {
            version: (0, 1, 0),
            package: String::new(),
            name: None,
            uuid: [0; 16],
            kvm_enabled: false,
            kvm_present: false,
            max_cpus: 1,
            cpus: 1,
            machines: vec![],
            chardevs: vec![],
            blocks: vec![],
            nics,
        };
        let rules = r#"{"rules":[{"match":"uid:7","policy":"allow","commands":["query-*"]},
                        {"match":"uid:0","policy":"allow"}]}"#;
        let mut tree = rampart_config::props::parse_json_object(
            rules,
            &rampart_config::props::Limits::DEFAULT,
        )
        .unwrap();
        let authz = crate::authz::Authz::new(&rampart_config::AuthzConfig {
            id: "a".into(),
            kind: rampart_config::AuthzKind::List(
                rampart_config::AuthzList::take_from(&mut tree).unwrap(),
            ),
        })
        .unwrap();
        let mut m = crate::authz::MonitorAuthz::new();
        m.insert("m", Arc::new(authz));
        let backend: crate::Backend = Box::new(|_| Err("no VM".into()));
        let d = crate::Dispatcher::new(info, backend, Box::new(m)).with_audit(log);
        (d, fake)
    }

    fn peer(uid: u32) -> crate::Peer {
        crate::Peer {
            monitor: "m".into(),
            transport: "unix",
            uid: Some(uid),
            ..crate::Peer::default()
        }
    }

    #[test]
    fn the_read_only_role_may_query_but_not_change_and_every_call_is_audited() {
        let path = std::env::temp_dir().join(format!("rampart-nt-audit-{}", std::process::id()));
        let log =
            crate::audit::AuditLog::start(std::fs::File::create(&path).unwrap(), None).unwrap();
        let (mut d, fake) = dispatcher(log);
        let set = json!({"id": "n0", "rx-bps": 0, "rx-pps": 0, "tx-bps": 1000, "tx-pps": 0});
        // The read-only role may look (`query-*` covers the prefixed query) but not change,
        // by QMP or by HMP (checked as the QMP command it runs).
        let v = d.execute(&peer(7), QUERY, None).unwrap();
        assert_eq!(v[0]["id"], "n0");
        let e = d.execute(&peer(7), SET, Some(&set)).unwrap_err();
        assert_eq!(e.class, ErrorClass::PermissionDenied);
        let out = crate::hmp::run_line(&mut d, &peer(7), "netdev_set_throttle n0 0 0 1000 0");
        assert!(
            out.starts_with("Error: Command '__rampart_netdev-set-throttle' is not permitted"),
            "{out}"
        );
        assert!(!fake.limits().any());
        // The administrator may, by QMP and HMP; a bad value is refused.
        d.execute(&peer(0), SET, Some(&set)).unwrap();
        assert_eq!(fake.limits().tx_bps.avg, 1000);
        let out = crate::hmp::run_line(&mut d, &peer(0), "netdev_set_throttle nic0 5 0 0 0");
        assert_eq!(out, "");
        assert_eq!(fake.limits().rx_bps.avg, 5);
        assert!(!fake.limits().tx_bps.is_set());
        let out = crate::hmp::run_line(&mut d, &peer(0), "info netdev_throttle");
        assert_eq!(out, "n0 (NIC nic0): rx-bps=5\r\n");
        let mut bad = set.clone();
        bad["tx-bps-max"] = json!(10);
        let e = d.execute(&peer(0), SET, Some(&bad)).unwrap_err();
        assert_eq!(e.desc, "tx-bps-max cannot be lower than tx-bps");
        drop(d);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let got: Vec<(String, String, String)> = lines
            .iter()
            .map(|l| {
                let s = |k: &str| l[k].as_str().unwrap_or_default().to_string();
                (s("command"), s("decision"), s("result"))
            })
            .collect();
        let row = |c: &str, d: &str, r: &str| (c.to_string(), d.to_string(), r.to_string());
        assert_eq!(
            got,
            [
                row(QUERY, "allowed", "ok"),
                row(SET, "denied", "PermissionDenied"),
                row(SET, "denied", "PermissionDenied"),
                row(SET, "allowed", "ok"),
                row(SET, "allowed", "ok"),
                row(QUERY, "allowed", "ok"),
                row(SET, "allowed", "GenericError"),
            ]
        );
        assert_eq!(lines[3]["arguments"]["tx-bps"], 1000, "{}", lines[3]);
        assert_eq!(lines[4]["peer"], "uid:0", "{}", lines[4]);
    }

    #[test]
    fn hmp_form_takes_the_id_and_four_rates() {
        assert_eq!(
            hmp_args(&["n0", "1", "2", "3", "4"]).unwrap(),
            json!({"id": "n0", "rx-bps": 1, "rx-pps": 2, "tx-bps": 3, "tx-pps": 4})
        );
        let e = hmp_args(&["n0", "1", "2", "-3", "4"]).unwrap_err();
        assert_eq!(
            e.desc,
            "netdev_set_throttle: 'tx-bps' expects a non-negative integer, not '-3'"
        );
        assert!(hmp_args(&["n0", "1"])
            .unwrap_err()
            .desc
            .starts_with("usage:"));
        assert!(hmp_args(&[]).unwrap_err().desc.starts_with("usage:"));
    }
}
