//! The block nodes monitor commands open (`blockdev-add`): parsed with `-blockdev`'s rules,
//! opened and locked by `rampart-block` through the monitor's opener (fd sets and the
//! `-monitor-path-allow` directories only), held until `blockdev-del`.

use std::sync::Arc;

use rampart_block::{BlockBackend, ChainImage};
use rampart_config::control::BlockStatsSnapshot;
use rampart_config::BlockNodeConfig;
use rampart_monitor::block::{BlockDeviceInfo, CacheInfo, StatsReader};
use rampart_monitor::nodes::BlockNodes;
use serde_json::{Map, Value};
use tracing::info;

use crate::host::MonitorOpener;

/// What the monitor reports of an opened node (`disk`, with the images of its backing `chain`,
/// the node's own first): a node no device uses (`device` empty, no `qdev`, no throttle) until
/// the caller fills those in.
pub(crate) fn node_info(
    node: &BlockNodeConfig,
    disk: &dyn BlockBackend,
    chain: &[ChainImage],
    stats: StatsReader,
) -> BlockDeviceInfo {
    BlockDeviceInfo {
        device: String::new(),
        qdev: None,
        node_name: node.node_name.clone(),
        file: node.filename.display().to_string(),
        drv: chain.first().map_or(node.format, |c| c.format).name(),
        read_only: disk.read_only(),
        virtual_size: disk.size(),
        backing: chain
            .iter()
            .skip(1)
            .map(|c| (c.filename.display().to_string(), c.format.name()))
            .collect(),
        cache: CacheInfo {
            writeback: !node.cache.writethrough,
            direct: node.cache.direct,
            no_flush: node.cache.no_flush,
        },
        stats,
        throttle: None,
    }
}

/// Opens `blockdev-add` nodes through `opener`.
pub struct MonitorNodes {
    opener: Arc<MonitorOpener>,
    open: Vec<(String, Arc<dyn BlockBackend>)>,
}

impl MonitorNodes {
    pub fn new(opener: Arc<MonitorOpener>) -> MonitorNodes {
        MonitorNodes {
            opener,
            open: Vec::new(),
        }
    }
}

impl BlockNodes for MonitorNodes {
    fn add(&mut self, args: &Map<String, Value>) -> Result<BlockDeviceInfo, String> {
        let text = serde_json::to_string(args).map_err(|e| e.to_string())?;
        let d = crate::cli::blockdev_json(&text)?;
        let node = d.node;
        let (disk, chain) =
            rampart_block::open_with_chain_via(&node, &*self.opener).map_err(|e| e.to_string())?;
        info!(
            "blockdev-add: node '{}': '{}', {} bytes{}",
            node.node_name,
            node.filename.display(),
            disk.size(),
            if disk.read_only() { ", read-only" } else { "" }
        );
        // No device does I/O on it (hot-plug is not implemented).
        let out = node_info(
            &node,
            &*disk,
            &chain,
            StatsReader(Arc::new(BlockStatsSnapshot::default)),
        );
        self.open.push((node.node_name, disk));
        Ok(out)
    }

    fn del(&mut self, node_name: &str) -> Result<(), String> {
        let i = self
            .open
            .iter()
            .position(|(n, _)| n == node_name)
            .ok_or_else(|| format!("Failed to find node with node-name='{node_name}'"))?;
        // Dropping the last reference closes the files and releases their locks.
        self.open.remove(i);
        info!("blockdev-del: node '{node_name}' closed");
        Ok(())
    }
}
