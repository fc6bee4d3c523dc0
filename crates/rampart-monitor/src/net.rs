//! NICs for `set_link`, `query-rx-filter` and `NIC_RX_FILTER_CHANGED` (their rate limits:
//! [`crate::net_throttle`]). The binary hands the
//! monitor each NIC's names and a [`NicControl`] (the device's shared handle); the monitor
//! knows nothing else of the device.

use std::sync::Arc;

use rampart_config::control::{mac_text, RxFilter};
use rampart_config::NetLimits;
use serde_json::{json, Value};

use crate::error::{ErrorClass, QmpError};
use crate::schema::{req, EnumDef, Ty};

/// What the monitor may do to a NIC.
pub trait NicControl: Send + Sync {
    /// Link up or down, seen by the guest at once.
    fn set_link(&self, up: bool);
    /// The receive filter; reading it re-arms NIC_RX_FILTER_CHANGED (as QEMU).
    fn rx_filter(&self) -> RxFilter;
    /// The back end's rate limits.
    fn limits(&self) -> NetLimits;
    /// New rate limits (already validated), effective at once.
    fn set_limits(&self, limits: NetLimits);
}

/// One NIC as the monitor knows it.
#[derive(Clone)]
pub struct NicInfo {
    /// The net client name: the device's `id=`, or QEMU's `virtio-net-pci.N`.
    pub name: String,
    /// The `-netdev` id of its back end (`set_link` accepts either name).
    pub netdev: String,
    /// The QOM path of the virtio device (`/machine/peripheral/ID/virtio-backend`).
    pub path: String,
    pub control: Arc<dyn NicControl>,
}

impl std::fmt::Debug for NicInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NicInfo")
            .field("name", &self.name)
            .field("netdev", &self.netdev)
            .field("path", &self.path)
            .finish()
    }
}

const RX_STATE: EnumDef = EnumDef {
    values: &["normal", "none", "all"],
};

pub const RX_FILTER_INFO: Ty = Ty::Object(&[
    req("name", Ty::Str),
    req("promiscuous", Ty::Bool),
    req("multicast", Ty::Enum(&RX_STATE)),
    req("unicast", Ty::Enum(&RX_STATE)),
    req("vlan", Ty::Enum(&RX_STATE)),
    req("broadcast-allowed", Ty::Bool),
    req("multicast-overflow", Ty::Bool),
    req("unicast-overflow", Ty::Bool),
    req("main-mac", Ty::Str),
    req("vlan-table", Ty::Array(&Ty::Int)),
    req("unicast-table", Ty::Array(&Ty::Str)),
    req("multicast-table", Ty::Array(&Ty::Str)),
]);

/// `set_link`: by NIC name or back-end id.
pub fn set_link(nics: &[NicInfo], name: &str, up: bool) -> Result<Value, QmpError> {
    let Some(n) = nics.iter().find(|n| n.name == name || n.netdev == name) else {
        return Err(QmpError {
            class: ErrorClass::DeviceNotFound,
            desc: format!("Device '{name}' not found"),
        });
    };
    n.control.set_link(up);
    Ok(json!({}))
}

fn state(none: bool, all: bool) -> &'static str {
    if none {
        "none"
    } else if all {
        "all"
    } else {
        "normal"
    }
}

fn filter_json(name: &str, f: &RxFilter) -> Value {
    json!({
        "name": name,
        "promiscuous": f.promiscuous,
        "multicast": state(f.no_multi, f.all_multi),
        "unicast": state(f.no_uni, f.all_uni),
        // No VLAN filtering (VIRTIO_NET_F_CTRL_VLAN is not offered): every VLAN passes.
        "vlan": "all",
        "broadcast-allowed": !f.no_bcast,
        "multicast-overflow": f.multicast_overflow,
        "unicast-overflow": f.unicast_overflow,
        "main-mac": mac_text(&f.main_mac),
        "vlan-table": [],
        "unicast-table": f.unicast_table.iter().map(mac_text).collect::<Vec<_>>(),
        "multicast-table": f.multicast_table.iter().map(mac_text).collect::<Vec<_>>(),
    })
}

/// `query-rx-filter`: every NIC, or the one named.
pub fn query_rx_filter(nics: &[NicInfo], name: Option<&str>) -> Result<Value, QmpError> {
    match name {
        None => Ok(Value::Array(
            nics.iter()
                .map(|n| filter_json(&n.name, &n.control.rx_filter()))
                .collect(),
        )),
        Some(name) => {
            if let Some(n) = nics.iter().find(|n| n.name == name) {
                return Ok(json!([filter_json(&n.name, &n.control.rx_filter())]));
            }
            if nics.iter().any(|n| n.netdev == name) {
                return Err(QmpError::generic(format!("net client({name}) isn't a NIC")));
            }
            Err(QmpError::generic(format!(
                "invalid net client name: {name}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    struct Fake(AtomicBool);
    impl NicControl for Fake {
        fn set_link(&self, up: bool) {
            self.0.store(up, Ordering::SeqCst);
        }
        fn rx_filter(&self) -> RxFilter {
            RxFilter::reset([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        }
        fn limits(&self) -> NetLimits {
            NetLimits::default()
        }
        fn set_limits(&self, _: NetLimits) {}
    }

    fn nics() -> (Vec<NicInfo>, Arc<Fake>) {
        let f = Arc::new(Fake(AtomicBool::new(true)));
        (
            vec![NicInfo {
                name: "nic0".into(),
                netdev: "n0".into(),
                path: "/machine/peripheral/nic0/virtio-backend".into(),
                control: f.clone(),
            }],
            f,
        )
    }

    #[test]
    fn set_link_finds_the_nic_by_either_name() {
        let (n, f) = nics();
        set_link(&n, "nic0", false).unwrap();
        assert!(!f.0.load(Ordering::SeqCst));
        set_link(&n, "n0", true).unwrap();
        assert!(f.0.load(Ordering::SeqCst));
        let e = set_link(&n, "nope", true).unwrap_err();
        assert_eq!(e.class, ErrorClass::DeviceNotFound);
        assert_eq!(e.desc, "Device 'nope' not found");
    }

    #[test]
    fn rx_filter_reports_qemu_shape() {
        let (n, _) = nics();
        let v = query_rx_filter(&n, None).unwrap();
        assert_eq!(v[0]["main-mac"], "52:54:00:12:34:56");
        assert_eq!(v[0]["promiscuous"], true);
        assert_eq!(v[0]["multicast"], "normal");
        assert!(query_rx_filter(&n, Some("n0"))
            .unwrap_err()
            .desc
            .contains("isn't a NIC"));
        assert!(query_rx_filter(&n, Some("x"))
            .unwrap_err()
            .desc
            .contains("invalid net client"));
    }
}
