//! Block devices as the monitor reports them: `query-block`, `query-blockstats` (and HMP
//! `info block` from the former), in QEMU 10's shapes. The static facts come from the
//! configuration and the opened chain; the counters are read live from the device's
//! accounting (kept where its requests complete).
//!
//! Fields QEMU always sends are sent; the limits (`bps`...) are the drive's throttle's
//! (`block_throttle`); and each constant is true of rampart: no encryption, no zoned devices (the zone-append counters stay 0), no request merging
//! (`*_merged` stay 0), no timed statistics intervals (`timed_stats` is empty).

use std::fmt;
use std::sync::Arc;

use rampart_config::control::{BlockKindStats, BlockStatsSnapshot};
use serde_json::{json, Map, Value};

use crate::schema::{opt, req, EnumDef, Member, Ty};

/// Reads a device's counters.
#[derive(Clone)]
pub struct StatsReader(pub Arc<dyn Fn() -> BlockStatsSnapshot + Send + Sync>);

impl fmt::Debug for StatsReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StatsReader")
    }
}

/// The cache settings of a node (QEMU's `BlockdevCacheInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheInfo {
    pub writeback: bool,
    pub direct: bool,
    pub no_flush: bool,
}

/// One block device (a drive attached to a device, or a `-drive if=none` waiting for one).
#[derive(Debug, Clone)]
pub struct BlockDeviceInfo {
    /// The `-drive id=`; "" for a `-blockdev` node, as QEMU.
    pub device: String,
    /// The QOM path of the device's virtio back end, if attached.
    pub qdev: Option<String>,
    pub node_name: String,
    pub file: String,
    /// The format driver: `raw`, `qcow2` or `file`.
    pub drv: &'static str,
    pub read_only: bool,
    pub virtual_size: u64,
    /// The backing files, top first: (file name, format).
    pub backing: Vec<(String, &'static str)>,
    pub cache: CacheInfo,
    pub stats: StatsReader,
    /// The drive's I/O limits (`None`: the monitor cannot see or change them).
    pub throttle: Option<crate::block_throttle::ThrottleControl>,
}

const IO_STATUS: EnumDef = EnumDef {
    values: &["ok", "failed", "nospace"],
};
const DETECT_ZEROES: EnumDef = EnumDef {
    values: &["off", "on", "unmap"],
};

const IMAGE_INFO: Ty = Ty::Object(&[
    req("filename", Ty::Str),
    req("format", Ty::Str),
    req("virtual-size", Ty::Int),
    opt("full-backing-filename", Ty::Str),
    opt("backing-filename-format", Ty::Str),
]);

const CACHE_INFO: Ty = Ty::Object(&[
    req("writeback", Ty::Bool),
    req("direct", Ty::Bool),
    req("no-flush", Ty::Bool),
]);

/// QEMU's `BlockDeviceInfo`.
pub const BLOCK_DEVICE_INFO: Ty = Ty::Object(&[
    req("file", Ty::Str),
    req("node-name", Ty::Str),
    req("ro", Ty::Bool),
    req("drv", Ty::Str),
    opt("backing_file", Ty::Str),
    req("backing_file_depth", Ty::Int),
    req("active", Ty::Bool),
    req("encrypted", Ty::Bool),
    req("detect_zeroes", Ty::Enum(&DETECT_ZEROES)),
    req("bps", Ty::Int),
    req("bps_rd", Ty::Int),
    req("bps_wr", Ty::Int),
    req("iops", Ty::Int),
    req("iops_rd", Ty::Int),
    req("iops_wr", Ty::Int),
    req("image", IMAGE_INFO),
    req("write_threshold", Ty::Int),
    req("cache", CACHE_INFO),
    opt("bps_max", Ty::Int),
    opt("bps_rd_max", Ty::Int),
    opt("bps_wr_max", Ty::Int),
    opt("iops_max", Ty::Int),
    opt("iops_rd_max", Ty::Int),
    opt("iops_wr_max", Ty::Int),
    opt("bps_max_length", Ty::Int),
    opt("bps_rd_max_length", Ty::Int),
    opt("bps_wr_max_length", Ty::Int),
    opt("iops_max_length", Ty::Int),
    opt("iops_rd_max_length", Ty::Int),
    opt("iops_wr_max_length", Ty::Int),
    opt("group", Ty::Str),
]);

/// An element of `query-block`'s answer (QEMU's `BlockInfo`).
pub const BLOCK_INFO: Ty = Ty::Object(&[
    req("device", Ty::Str),
    opt("qdev", Ty::Str),
    req("type", Ty::Str),
    req("removable", Ty::Bool),
    req("locked", Ty::Bool),
    opt("inserted", BLOCK_DEVICE_INFO),
    opt("io-status", Ty::Enum(&IO_STATUS)),
]);

const STAT_MEMBERS: &[Member] = &[
    req("rd_bytes", Ty::Int),
    req("wr_bytes", Ty::Int),
    req("zone_append_bytes", Ty::Int),
    req("unmap_bytes", Ty::Int),
    req("rd_operations", Ty::Int),
    req("wr_operations", Ty::Int),
    req("zone_append_operations", Ty::Int),
    req("flush_operations", Ty::Int),
    req("unmap_operations", Ty::Int),
    req("rd_total_time_ns", Ty::Int),
    req("wr_total_time_ns", Ty::Int),
    req("zone_append_total_time_ns", Ty::Int),
    req("flush_total_time_ns", Ty::Int),
    req("unmap_total_time_ns", Ty::Int),
    req("wr_highest_offset", Ty::Int),
    req("rd_merged", Ty::Int),
    req("wr_merged", Ty::Int),
    req("zone_append_merged", Ty::Int),
    req("unmap_merged", Ty::Int),
    opt("idle_time_ns", Ty::Int),
    req("failed_rd_operations", Ty::Int),
    req("failed_wr_operations", Ty::Int),
    req("failed_zone_append_operations", Ty::Int),
    req("failed_flush_operations", Ty::Int),
    req("failed_unmap_operations", Ty::Int),
    req("invalid_rd_operations", Ty::Int),
    req("invalid_wr_operations", Ty::Int),
    req("invalid_zone_append_operations", Ty::Int),
    req("invalid_flush_operations", Ty::Int),
    req("invalid_unmap_operations", Ty::Int),
    req("account_invalid", Ty::Bool),
    req("account_failed", Ty::Bool),
    req("timed_stats", Ty::Array(&Ty::Any)),
];

/// An element of `query-blockstats`' answer (QEMU's `BlockStats`, without the protocol
/// layer's `parent` entry: rampart accounts requests at the device).
pub const BLOCK_STATS: Ty = Ty::Object(&[
    opt("device", Ty::Str),
    opt("qdev", Ty::Str),
    opt("node-name", Ty::Str),
    req("stats", Ty::Object(STAT_MEMBERS)),
]);

fn image(d: &BlockDeviceInfo) -> Value {
    let mut m = Map::new();
    m.insert("filename".into(), json!(d.file));
    m.insert("format".into(), json!(d.drv));
    m.insert("virtual-size".into(), json!(d.virtual_size));
    if let Some((file, format)) = d.backing.first() {
        m.insert("full-backing-filename".into(), json!(file));
        m.insert("backing-filename-format".into(), json!(format));
    }
    Value::Object(m)
}

/// A node as `query-block`'s `inserted` and `query-named-block-nodes` show it (QEMU's
/// `BlockDeviceInfo`).
pub fn inserted(d: &BlockDeviceInfo) -> Value {
    let mut inserted = Map::new();
    inserted.insert("file".into(), json!(d.file));
    inserted.insert("node-name".into(), json!(d.node_name));
    inserted.insert("ro".into(), json!(d.read_only));
    inserted.insert("drv".into(), json!(d.drv));
    if let Some((file, _)) = d.backing.first() {
        inserted.insert("backing_file".into(), json!(file));
    }
    for (k, v) in [
        ("backing_file_depth", json!(d.backing.len())),
        ("active", json!(true)),
        ("encrypted", json!(false)),
        ("detect_zeroes", json!("off")),
        ("image", image(d)),
        ("write_threshold", json!(0)),
        (
            "cache",
            json!({"writeback": d.cache.writeback, "direct": d.cache.direct,
                   "no-flush": d.cache.no_flush}),
        ),
    ] {
        inserted.insert(k.into(), v);
    }
    crate::block_throttle::insert_limits(d, &mut inserted);
    Value::Object(inserted)
}

/// `query-block`.
pub fn query_block(devices: &[BlockDeviceInfo]) -> Value {
    Value::Array(
        devices
            .iter()
            .map(|d| {
                let mut m = Map::new();
                m.insert("device".into(), json!(d.device));
                if let Some(q) = &d.qdev {
                    m.insert("qdev".into(), json!(q));
                }
                m.insert("type".into(), json!("unknown"));
                m.insert("removable".into(), json!(false));
                m.insert("locked".into(), json!(false));
                m.insert("inserted".into(), inserted(d));
                // rampart never stops the VM on an I/O error (no werror/rerror=stop).
                m.insert("io-status".into(), json!("ok"));
                Value::Object(m)
            })
            .collect(),
    )
}

fn stats_json(s: &BlockStatsSnapshot) -> Value {
    let mut m = Map::new();
    let kinds: [(&str, &BlockKindStats); 4] = [
        ("rd", &s.read),
        ("wr", &s.write),
        ("flush", &s.flush),
        ("unmap", &s.unmap),
    ];
    for (k, c) in kinds {
        if k != "flush" {
            m.insert(format!("{k}_bytes"), json!(c.bytes));
        }
        m.insert(format!("{k}_operations"), json!(c.operations));
        m.insert(format!("{k}_total_time_ns"), json!(c.total_time_ns));
        if k != "flush" {
            m.insert(format!("{k}_merged"), json!(0));
        }
        m.insert(format!("failed_{k}_operations"), json!(c.failed_operations));
        m.insert(
            format!("invalid_{k}_operations"),
            json!(c.invalid_operations),
        );
    }
    for k in [
        "zone_append_bytes",
        "zone_append_operations",
        "zone_append_total_time_ns",
        "zone_append_merged",
        "failed_zone_append_operations",
        "invalid_zone_append_operations",
    ] {
        m.insert(k.into(), json!(0));
    }
    m.insert("wr_highest_offset".into(), json!(s.wr_highest_offset));
    if let Some(idle) = s.idle_time_ns {
        m.insert("idle_time_ns".into(), json!(idle));
    }
    m.insert("account_invalid".into(), json!(true));
    m.insert("account_failed".into(), json!(true));
    m.insert("timed_stats".into(), json!([]));
    Value::Object(m)
}

/// `query-blockstats`.
pub fn query_blockstats(devices: &[BlockDeviceInfo]) -> Value {
    Value::Array(
        devices
            .iter()
            .map(|d| {
                let mut m = Map::new();
                m.insert("device".into(), json!(d.device));
                if let Some(q) = &d.qdev {
                    m.insert("qdev".into(), json!(q));
                }
                m.insert("node-name".into(), json!(d.node_name));
                m.insert("stats".into(), stats_json(&(d.stats.0)()));
                Value::Object(m)
            })
            .collect(),
    )
}

/// HMP `info block`, from `query-block`'s answer, worded as QEMU's.
pub fn info_block(v: &Value) -> String {
    let mut out = Vec::new();
    for b in v.as_array().into_iter().flatten() {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let ins = &b["inserted"];
        let device = s(&b["device"]);
        let node = s(&ins["node-name"]);
        let mut t = if device.is_empty() {
            node
        } else {
            format!("{device} ({node})")
        };
        let ro = if ins["ro"].as_bool() == Some(true) {
            ", read-only"
        } else {
            ""
        };
        t.push_str(&format!(": {} ({}{ro})\n", s(&ins["file"]), s(&ins["drv"])));
        if let Some(q) = b["qdev"].as_str() {
            t.push_str(&format!("    Attached to:      {q}\n"));
        }
        let c = &ins["cache"];
        let mut mode = if c["writeback"].as_bool() == Some(true) {
            "writeback".to_string()
        } else {
            "writethrough".to_string()
        };
        if c["direct"].as_bool() == Some(true) {
            mode.push_str(", direct");
        }
        if c["no-flush"].as_bool() == Some(true) {
            mode.push_str(", ignore flushes");
        }
        t.push_str(&format!("    Cache mode:       {mode}\n"));
        if let Some(f) = ins["backing_file"].as_str() {
            t.push_str(&format!(
                "    Backing file:     {f} (chain depth: {})\n",
                ins["backing_file_depth"]
            ));
        }
        out.push(t);
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::check_value;

    fn devices() -> Vec<BlockDeviceInfo> {
        let stats = BlockStatsSnapshot {
            read: BlockKindStats {
                operations: 3,
                bytes: 1536,
                total_time_ns: 99,
                failed_operations: 0,
                invalid_operations: 1,
            },
            ..Default::default()
        };
        vec![
            BlockDeviceInfo {
                device: "d0".into(),
                qdev: Some("/machine/peripheral-anon/device[0]/virtio-backend".into()),
                node_name: "d0".into(),
                file: "/img/a.raw".into(),
                drv: "raw",
                read_only: false,
                virtual_size: 1 << 20,
                backing: vec![],
                cache: CacheInfo {
                    writeback: true,
                    direct: false,
                    no_flush: false,
                },
                stats: StatsReader(Arc::new(move || stats)),
                throttle: None,
            },
            BlockDeviceInfo {
                device: String::new(),
                qdev: Some("/machine/peripheral/vd1/virtio-backend".into()),
                node_name: "n1".into(),
                file: "/img/b.qcow2".into(),
                drv: "qcow2",
                read_only: true,
                virtual_size: 1 << 20,
                backing: vec![("/img/base.raw".into(), "raw")],
                cache: CacheInfo {
                    writeback: false,
                    direct: true,
                    no_flush: false,
                },
                stats: StatsReader(Arc::new(BlockStatsSnapshot::default)),
                throttle: None,
            },
        ]
    }

    #[test]
    fn query_block_matches_its_schema_and_qemus_shape() {
        let v = query_block(&devices());
        check_value(Ty::Array(&BLOCK_INFO), &v, "return").unwrap();
        assert_eq!(v[1]["inserted"]["backing_file"], "/img/base.raw");
        assert_eq!(v[1]["inserted"]["backing_file_depth"], 1);
        assert_eq!(v[1]["inserted"]["ro"], true);
        assert_eq!(v[0]["inserted"]["backing_file_depth"], 0);
        assert!(v[0]["inserted"].get("backing_file").is_none());
    }

    #[test]
    fn query_blockstats_reports_the_live_counters_and_matches_its_schema() {
        let v = query_blockstats(&devices());
        check_value(Ty::Array(&BLOCK_STATS), &v, "return").unwrap();
        let s = &v[0]["stats"];
        assert_eq!(s["rd_operations"], 3);
        assert_eq!(s["rd_bytes"], 1536);
        assert_eq!(s["rd_total_time_ns"], 99);
        assert_eq!(s["invalid_rd_operations"], 1);
        assert_eq!(s["wr_operations"], 0);
        assert_eq!(
            s.as_object().unwrap().len(),
            STAT_MEMBERS.len() - 1,
            "every member but idle_time_ns (no I/O completed yet)"
        );
    }

    #[test]
    fn info_block_is_worded_like_qemu() {
        let text = info_block(&query_block(&devices()));
        assert_eq!(
            text,
            "d0 (d0): /img/a.raw (raw)\n    Attached to:      \
             /machine/peripheral-anon/device[0]/virtio-backend\n    Cache mode:       \
             writeback\n\nn1: /img/b.qcow2 (qcow2, read-only)\n    Attached to:      \
             /machine/peripheral/vd1/virtio-backend\n    Cache mode:       writethrough, \
             direct\n    Backing file:     /img/base.raw (chain depth: 1)\n"
        );
    }
}
