//! Block devices: `-drive` and `-blockdev` as typed values.
//!
//! A [`BlockNodeConfig`] describes one image as QEMU's block layer sees it: a format driver
//! (raw, qcow2, or only the `file` protocol) over a host file, plus the options that change how
//! it is accessed (read-only, cache mode, discard, locking, backing file). The command line
//! produces them; `rampart-block` opens them. Nothing here touches the file system.

use std::path::PathBuf;

use crate::ConfigError;

/// Most block nodes (drives plus blockdevs) one VM may have.
pub const MAX_BLOCK_NODES: usize = 64;
/// Longest node name or drive id.
pub const MAX_NODE_NAME_LEN: usize = 31;

/// The format driver of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockFormat {
    /// `-blockdev driver=file`: the file's bytes, no format layer.
    File,
    /// `format=raw` / `driver=raw` over a file.
    Raw,
    /// `format=qcow2` / `driver=qcow2` over a file.
    Qcow2,
    /// `-drive` without `format=`: probe raw vs qcow2. Allowed only for read-only drives (a
    /// guest can write a qcow2 header into a raw disk); a probed image's backing file is never
    /// followed.
    Probe,
}

impl BlockFormat {
    pub fn name(self) -> &'static str {
        match self {
            BlockFormat::File => "file",
            BlockFormat::Raw => "raw",
            BlockFormat::Qcow2 => "qcow2",
            BlockFormat::Probe => "(probed)",
        }
    }
}

/// QEMU's `cache=` shorthand expanded into its three independent settings. The default is
/// QEMU's, `cache=writeback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheConfig {
    /// `cache.direct`: bypass the host page cache (O_DIRECT).
    pub direct: bool,
    /// `cache.no-flush`: ignore flush requests (`cache=unsafe`).
    pub no_flush: bool,
    /// The write cache is off: every write is flushed before it completes
    /// (`cache=writethrough`, `cache=directsync`).
    pub writethrough: bool,
}

impl CacheConfig {
    /// Parses a `cache=` mode name (`none`, `writeback`, `unsafe`, `directsync`,
    /// `writethrough`).
    pub fn from_mode(mode: &str) -> Option<CacheConfig> {
        let (direct, no_flush, writethrough) = match mode {
            "none" | "off" => (true, false, false),
            "writeback" => (false, false, false),
            "unsafe" => (false, true, false),
            "directsync" => (true, false, true),
            "writethrough" => (false, false, true),
            _ => return None,
        };
        Some(CacheConfig {
            direct,
            no_flush,
            writethrough,
        })
    }
}

/// `discard=`: what a guest's discard request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiscardMode {
    /// Discards are accepted and ignored (QEMU's default).
    #[default]
    Ignore,
    /// Discards punch holes in the image.
    Unmap,
}

/// `file.locking=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockingMode {
    /// Lock if the host supports OFD locks (it does on Linux): the default.
    #[default]
    Auto,
    On,
    Off,
}

/// What to do about a format's backing file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BackingConfig {
    /// Open the backing file the image header names (format from the header extension).
    #[default]
    FromImage,
    /// `backing=null` (or `backing=`): open no backing file, reads of unallocated areas are
    /// zeroes.
    None,
    /// `backing.driver=...` (and optionally `backing.file.filename=...`): the backing file's
    /// format (overriding the header) and/or its path.
    Override {
        format: Option<BlockFormat>,
        filename: Option<PathBuf>,
    },
}

/// One block node: a format driver over a host file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockNodeConfig {
    /// `-blockdev node-name=` or `-drive id=`: the name `-device ...,drive=` refers to.
    pub node_name: String,
    pub format: BlockFormat,
    /// The host file (`file=`, `filename=` or `file.filename=`).
    pub filename: PathBuf,
    pub read_only: bool,
    pub cache: CacheConfig,
    pub discard: DiscardMode,
    pub locking: LockingMode,
    pub backing: BackingConfig,
}

impl BlockNodeConfig {
    /// A node with QEMU's defaults (read-write, writeback cache, discard ignored, locking auto).
    pub fn new(node_name: impl Into<String>, format: BlockFormat, filename: PathBuf) -> Self {
        BlockNodeConfig {
            node_name: node_name.into(),
            format,
            filename,
            read_only: false,
            cache: CacheConfig::default(),
            discard: DiscardMode::default(),
            locking: LockingMode::default(),
            backing: BackingConfig::default(),
        }
    }

    /// Checks the rules of one node on its own.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name = &self.node_name;
        let bad_name = name.is_empty()
            || name.len() > MAX_NODE_NAME_LEN
            || !name.starts_with(|c: char| c.is_ascii_alphabetic())
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        if bad_name {
            return Err(ConfigError::Invalid(format!(
                "block node name '{}' is invalid: it must start with a letter and contain \
                 only letters, digits, '-', '.' and '_' (at most {MAX_NODE_NAME_LEN} characters)",
                name.chars().take(64).collect::<String>()
            )));
        }
        if self.filename.as_os_str().is_empty() {
            return Err(ConfigError::Invalid(format!(
                "block node '{name}': no file name given"
            )));
        }
        if self.format == BlockFormat::Probe && !self.read_only {
            return Err(ConfigError::Invalid(format!(
                "block node '{name}' ('{}'): no format given; rampart never probes the format \
                 of a writable image (a guest could write an image header into a raw disk); \
                 specify format=raw or format=qcow2, or readonly=on",
                self.filename.display()
            )));
        }
        if self.format == BlockFormat::Probe && self.backing != BackingConfig::FromImage {
            return Err(ConfigError::Invalid(format!(
                "block node '{name}': backing options need an explicit format"
            )));
        }
        if matches!(self.format, BlockFormat::File | BlockFormat::Raw)
            && self.backing != BackingConfig::FromImage
        {
            return Err(ConfigError::Invalid(format!(
                "block node '{name}': format {} has no backing file",
                self.format.name()
            )));
        }
        if let BackingConfig::Override {
            format: Some(f), ..
        } = &self.backing
        {
            if matches!(f, BlockFormat::Probe | BlockFormat::File) {
                return Err(ConfigError::Invalid(format!(
                    "block node '{name}': backing driver must be raw or qcow2"
                )));
            }
        }
        Ok(())
    }
}

/// `-drive if=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriveInterface {
    /// `if=none` (and every `-blockdev`): a back end waiting for a `-device`.
    None,
    /// `if=virtio`: a virtio-blk-pci device is created for it.
    Virtio,
}

/// One `-drive` or `-blockdev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveConfig {
    pub interface: DriveInterface,
    pub node: BlockNodeConfig,
    /// Given with `-blockdev` (a node without a drive name: the monitor reports its device
    /// as "", as QEMU), rather than `-drive id=`.
    pub from_blockdev: bool,
    /// `throttling.*`: the device's I/O limits, or the group it shares them with.
    pub throttle: DriveThrottle,
}

/// A drive's I/O limits (`-drive throttling.*`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DriveThrottle {
    pub limits: crate::BlockLimits,
    /// `throttling.group`: share one set of buckets with every drive of this group.
    pub group: Option<String>,
}

/// `-object throttle-group,id=...`: limits shared by the drives that name the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleGroupConfig {
    pub id: String,
    pub limits: crate::BlockLimits,
}

/// Checks the throttle groups and the drives' limits; returns nothing, or the first error.
/// A group's limits come from its `-object`, else from the first drive that names it with
/// limits; another drive of the group may not set different ones.
pub fn validate_throttling(
    drives: &[DriveConfig],
    groups: &[ThrottleGroupConfig],
) -> Result<(), ConfigError> {
    for (i, g) in groups.iter().enumerate() {
        if groups[..i].iter().any(|o| o.id == g.id) {
            return Err(ConfigError::Invalid(format!(
                "-object throttle-group: duplicate id '{}'",
                g.id
            )));
        }
        g.limits
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("throttle-group {}: {e}", g.id)))?;
    }
    for (i, d) in drives.iter().enumerate() {
        let name = &d.node.node_name;
        d.throttle
            .limits
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("drive '{name}': throttling.{e}")))?;
        let Some(g) = &d.throttle.group else {
            continue;
        };
        if !d.throttle.limits.any() {
            continue;
        }
        let defined = groups
            .iter()
            .find(|o| o.id == *g)
            .map(|o| o.limits)
            .or_else(|| {
                drives[..i]
                    .iter()
                    .find(|o| o.throttle.group.as_ref() == Some(g) && o.throttle.limits.any())
                    .map(|o| o.throttle.limits)
            });
        if defined.is_some_and(|l| l != d.throttle.limits) {
            return Err(ConfigError::Invalid(format!(
                "drive '{name}': throttle group '{g}' already has other limits"
            )));
        }
    }
    Ok(())
}

/// Checks a VM's drives: each valid, at most [`MAX_BLOCK_NODES`], names unique.
pub fn validate_drives(drives: &[DriveConfig]) -> Result<(), ConfigError> {
    if drives.len() > MAX_BLOCK_NODES {
        return Err(ConfigError::Invalid(format!(
            "{} block devices given, the limit is {MAX_BLOCK_NODES}",
            drives.len()
        )));
    }
    for (i, d) in drives.iter().enumerate() {
        d.node.validate()?;
        if drives[..i]
            .iter()
            .any(|o| o.node.node_name == d.node.node_name)
        {
            return Err(ConfigError::Invalid(format!(
                "duplicate block node name or drive id '{}'",
                d.node.node_name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(format: BlockFormat) -> BlockNodeConfig {
        BlockNodeConfig::new("d0", format, "/img".into())
    }

    #[test]
    fn cache_modes_expand_like_qemu() {
        let none = CacheConfig::from_mode("none").unwrap();
        let ds = CacheConfig::from_mode("directsync").unwrap();
        let unsafe_ = CacheConfig::from_mode("unsafe").unwrap();

        assert!(none.direct && !none.writethrough && !none.no_flush);
        assert!(ds.direct && ds.writethrough);
        assert!(unsafe_.no_flush && !unsafe_.direct);
        assert_eq!(
            CacheConfig::from_mode("writeback"),
            Some(CacheConfig::default())
        );
        assert_eq!(CacheConfig::from_mode("bogus"), None);
    }

    #[test]
    fn writable_probed_image_is_refused_naming_the_file() {
        let err = node(BlockFormat::Probe).validate().unwrap_err().to_string();

        assert!(
            err.contains("/img") && err.contains("never probes"),
            "{err}"
        );
    }

    #[test]
    fn read_only_probed_image_is_accepted() {
        let mut n = node(BlockFormat::Probe);
        n.read_only = true;

        assert_eq!(n.validate(), Ok(()));
    }

    #[test]
    fn node_names_must_be_qemu_identifiers() {
        for bad in ["", "0abc", "a b", "a,b", &"x".repeat(40)] {
            let mut n = node(BlockFormat::Raw);
            n.node_name = bad.to_string();
            assert!(n.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn raw_has_no_backing_options() {
        let mut n = node(BlockFormat::Raw);
        n.backing = BackingConfig::None;

        assert!(n.validate().is_err());
    }

    #[test]
    fn duplicate_names_are_refused() {
        let d = DriveConfig {
            interface: DriveInterface::None,
            node: node(BlockFormat::Raw),
            from_blockdev: false,
            throttle: Default::default(),
        };

        let err = validate_drives(&[d.clone(), d]).unwrap_err().to_string();

        assert!(err.contains("duplicate") && err.contains("'d0'"), "{err}");
    }
}
