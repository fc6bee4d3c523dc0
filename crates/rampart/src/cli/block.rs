//! `-drive` (QemuOpts syntax) and `-blockdev` (keyval or JSON) → [`DriveConfig`].
//!
//! What rampart's block layer has: the `file` protocol, the `raw` and `qcow2` formats, `cache=`
//! modes, `discard=`, read-only, locking and backing-file options. Everything else QEMU accepts
//! is refused by name.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use rampart_config::props::{PropValue, Props, PropsError};
use rampart_config::{
    BackingConfig, BlockFormat, BlockNodeConfig, CacheConfig, DiscardMode, DriveConfig,
    DriveInterface, LockingMode,
};

use super::argv::Opt;
use super::qemu_opts::{self, OptSpec, Opts};
use super::{objects, options, CliError};

pub(crate) const DRIVE: OptSpec = OptSpec {
    option: "-drive",
    implied: None,
    known: &[
        "file",
        "format",
        "driver",
        "if",
        "id",
        "readonly",
        "read-only",
        "cache",
        "cache.direct",
        "cache.no-flush",
        "discard",
        "file.locking",
        "locking",
        "backing.driver",
        "throttling.group",
        "throttling.bps-total",
        "throttling.bps-total-max",
        "throttling.bps-total-max-length",
        "throttling.bps-read",
        "throttling.bps-read-max",
        "throttling.bps-read-max-length",
        "throttling.bps-write",
        "throttling.bps-write-max",
        "throttling.bps-write-max-length",
        "throttling.iops-total",
        "throttling.iops-total-max",
        "throttling.iops-total-max-length",
        "throttling.iops-read",
        "throttling.iops-read-max",
        "throttling.iops-read-max-length",
        "throttling.iops-write",
        "throttling.iops-write-max",
        "throttling.iops-write-max-length",
    ],
    unsupported: &[
        "media",
        "index",
        "bus",
        "unit",
        "snapshot",
        "aio",
        "werror",
        "rerror",
        "detect-zeroes",
        "copy-on-read",
        "serial",
        "addr",
        "boot",
        "auto-read-only",
        "force-share",
        "node-name",
        "bps",
        "bps_rd",
        "bps_wr",
        "iops",
        "iops_rd",
        "iops_wr",
        "group",
        "encrypt.format",
        "encrypt.key-secret",
        "file.aio",
        "aio-max-batch",
    ],
    reason: "not implemented by rampart's block layer",
};

const SUPPORTED_FORMATS: &str = "rampart has raw and qcow2";

/// `-blockdev driver=help` and `format=help`.
pub(crate) fn driver_list() -> String {
    "Supported block drivers:\n\
     file                 a host file or block device (protocol)\n\
     raw                  raw image over file\n\
     qcow2                QEMU copy-on-write v2/v3 over file\n"
        .to_string()
}

fn format_name(option: &'static str, key: &str, name: &str) -> Result<BlockFormat, CliError> {
    match name {
        "raw" => Ok(BlockFormat::Raw),
        "qcow2" => Ok(BlockFormat::Qcow2),
        other => Err(CliError::InvalidValue {
            option,
            property: key.into(),
            value: other.chars().take(80).collect(),
            reason: format!("unsupported format ({SUPPORTED_FORMATS})"),
        }),
    }
}

fn discard_mode(option: &'static str, value: &str) -> Result<DiscardMode, CliError> {
    match value {
        "ignore" | "off" => Ok(DiscardMode::Ignore),
        "unmap" | "on" => Ok(DiscardMode::Unmap),
        other => Err(CliError::InvalidValue {
            option,
            property: "discard".into(),
            value: other.chars().take(80).collect(),
            reason: "expected ignore or unmap".into(),
        }),
    }
}

fn locking_mode(option: &'static str, key: &str, value: &str) -> Result<LockingMode, CliError> {
    match value {
        "auto" => Ok(LockingMode::Auto),
        "on" | "yes" | "true" => Ok(LockingMode::On),
        "off" | "no" | "false" => Ok(LockingMode::Off),
        other => Err(CliError::InvalidValue {
            option,
            property: key.into(),
            value: other.chars().take(80).collect(),
            reason: "expected on, off or auto".into(),
        }),
    }
}

/// A plain-path check: QEMU reads `json:{...}` and `protocol:` prefixes in file names; rampart
/// has only the file protocol, so a prefix it would misread is refused rather than taken as a
/// relative path.
fn file_name(option: &'static str, key: &str, value: &OsStr) -> Result<PathBuf, CliError> {
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return Err(CliError::Invalid {
            option,
            message: format!("'{key}' is empty"),
        });
    }
    for proto in [
        "json:", "nbd:", "nbd+", "http:", "https:", "ftp:", "ftps:", "ssh:", "iscsi:", "gluster",
        "rbd:", "vvfat:", "fat:", "nfs:",
    ] {
        if bytes.starts_with(proto.as_bytes()) {
            return Err(CliError::InvalidValue {
                option,
                property: key.into(),
                value: super::argv::shown(value),
                reason: "only local files are supported (no protocol prefixes or json:)".into(),
            });
        }
    }
    let path = match bytes.strip_prefix(b"file:") {
        Some(rest) => PathBuf::from(OsStr::from_bytes(rest)),
        None => PathBuf::from(value),
    };
    Ok(path)
}

/// What one `-drive` or `-blockdev` asks for.
pub(crate) enum BlockRequest {
    /// `format=help`, `driver=help`: print [`driver_list`].
    Help,
    Node(Box<DriveConfig>),
}

/// One `-drive`; `existing` (the drives so far) numbers the default ids per interface.
pub(crate) fn drive(arg: &OsStr, existing: &[DriveConfig]) -> Result<BlockRequest, CliError> {
    let opts = qemu_opts::parse(&DRIVE, arg)?;
    let asks_help = |k| opts.str(k).ok().flatten().is_some_and(options::is_help);
    if asks_help("format") || asks_help("driver") {
        return Ok(BlockRequest::Help);
    }
    drive_from_opts(&opts, existing).map(|d| BlockRequest::Node(Box::new(d)))
}

fn drive_from_opts(opts: &Opts, existing: &[DriveConfig]) -> Result<DriveConfig, CliError> {
    let o = "-drive";
    let interface = match opts.str("if")? {
        None | Some("virtio") => DriveInterface::Virtio,
        Some("none") => DriveInterface::None,
        Some(other) => {
            return Err(opts.invalid(
                "if",
                OsStr::new(other),
                "unsupported interface (rampart has virtio and none)",
            ))
        }
    };
    let format = match (opts.str("format")?, opts.str("driver")?) {
        (Some(a), Some(b)) if a != b => {
            return Err(CliError::Conflict(
                "-drive: format= and driver= disagree".into(),
            ))
        }
        (Some(f), _) => format_name(o, "format", f)?,
        (None, Some(f)) => format_name(o, "driver", f)?,
        (None, None) => BlockFormat::Probe,
    };
    let filename = match opts.os("file") {
        Some(v) => file_name(o, "file", v)?,
        None => {
            return Err(CliError::Invalid {
                option: o,
                message: "file= is required (rampart has no removable media)".into(),
            })
        }
    };
    let node_name = match opts.str("id")? {
        Some(id) => id.to_string(),
        None => {
            let prefix = match interface {
                DriveInterface::Virtio => "virtio",
                DriveInterface::None => "none",
            };
            let n = existing.iter().filter(|d| d.interface == interface).count();
            format!("{prefix}{n}")
        }
    };
    let mut node = BlockNodeConfig::new(node_name, format, filename);
    node.read_only = match (opts.bool("readonly")?, opts.bool("read-only")?) {
        (Some(a), Some(b)) if a != b => {
            return Err(CliError::Conflict(
                "-drive: readonly= and read-only= disagree".into(),
            ))
        }
        (a, b) => a.or(b).unwrap_or(false),
    };
    if let Some(mode) = opts.str("cache")? {
        node.cache = CacheConfig::from_mode(mode).ok_or_else(|| {
            opts.invalid(
                "cache",
                OsStr::new(mode),
                "expected none, writeback, unsafe, directsync or writethrough",
            )
        })?;
    }
    if let Some(d) = opts.bool("cache.direct")? {
        node.cache.direct = d;
    }
    if let Some(n) = opts.bool("cache.no-flush")? {
        node.cache.no_flush = n;
    }
    if let Some(d) = opts.str("discard")? {
        node.discard = discard_mode(o, d)?;
    }
    for key in ["file.locking", "locking"] {
        if let Some(l) = opts.str(key)? {
            node.locking = locking_mode(o, key, l)?;
        }
    }
    if let Some(b) = opts.str("backing.driver")? {
        node.backing = BackingConfig::Override {
            format: Some(format_name(o, "backing.driver", b)?),
            filename: None,
        };
    }
    node.validate()?;
    Ok(DriveConfig {
        interface,
        node,
        from_blockdev: false,
        throttle: super::throttle::drive(opts)?,
    })
}

fn props_err(source: PropsError) -> CliError {
    CliError::Props {
        option: "-blockdev",
        source,
    }
}

fn invalid(message: impl Into<String>) -> CliError {
    CliError::Invalid {
        option: "-blockdev",
        message: message.into(),
    }
}

/// Options every node level may carry, applied on top of what the parent gave.
fn node_options(tree: &mut Props, node: &mut BlockNodeConfig) -> Result<(), CliError> {
    if let Some(ro) = tree.take_bool("read-only").map_err(props_err)? {
        node.read_only = ro;
    }
    if let Some(mut cache) = tree.take_map("cache").map_err(props_err)? {
        if let Some(d) = cache.take_bool("direct").map_err(props_err)? {
            node.cache.direct = d;
        }
        if let Some(n) = cache.take_bool("no-flush").map_err(props_err)? {
            node.cache.no_flush = n;
        }
        cache
            .deny_unknown()
            .map_err(|e| prefix_unknown(e, "cache."))
            .map_err(props_err)?;
    }
    if let Some(d) = tree.take_string("discard").map_err(props_err)? {
        node.discard = discard_mode("-blockdev", &d)?;
    }
    for (key, allowed) in [
        ("detect-zeroes", "off"),
        ("auto-read-only", "off"),
        ("force-share", "off"),
    ] {
        if let Some(v) = tree.remove(key) {
            let ok = match &v {
                PropValue::Str(s) => s == allowed || s == "false",
                PropValue::Bool(b) => !b,
                _ => false,
            };
            if !ok {
                return Err(CliError::UnsupportedProperty {
                    option: "-blockdev",
                    property: key.into(),
                    reason: "not implemented by rampart's block layer",
                });
            }
        }
    }
    Ok(())
}

fn prefix_unknown(e: PropsError, prefix: &str) -> PropsError {
    match e {
        PropsError::Unknown { key } => PropsError::Unknown {
            key: format!("{prefix}{key}"),
        },
        other => other,
    }
}

/// Reads a `driver=file` level: its file name and locking.
fn file_level(tree: &mut Props, node: &mut BlockNodeConfig) -> Result<PathBuf, CliError> {
    node_options(tree, node)?;
    let filename = tree
        .take_string("filename")
        .map_err(props_err)?
        .ok_or_else(|| invalid("driver 'file' needs 'filename'"))?;
    let filename = file_name("-blockdev", "filename", OsStr::new(&filename))?;
    if let Some(l) = tree.take_string("locking").map_err(props_err)? {
        node.locking = locking_mode("-blockdev", "locking", &l)?;
    }
    if let Some(aio) = tree.take_string("aio").map_err(props_err)? {
        if aio != "threads" {
            return Err(CliError::InvalidValue {
                option: "-blockdev",
                property: "aio".into(),
                value: aio.chars().take(80).collect(),
                reason: "only aio=threads is supported".into(),
            });
        }
    }
    Ok(filename)
}

/// The `file` child of a format node: must be an inline `driver=file` definition.
fn file_child(tree: &mut Props, node: &mut BlockNodeConfig) -> Result<PathBuf, CliError> {
    match tree.remove("file") {
        None => Err(invalid(format!(
            "driver '{}' needs 'file' (for example file.driver=file,file.filename=PATH)",
            node.format.name()
        ))),
        Some(PropValue::Map(mut child)) => {
            let driver = child.take_string("driver").map_err(props_err)?;
            match driver.as_deref() {
                Some("file") => {}
                Some(other) => {
                    return Err(CliError::InvalidValue {
                        option: "-blockdev",
                        property: "file.driver".into(),
                        value: other.chars().take(80).collect(),
                        reason: "only the 'file' protocol is supported".into(),
                    })
                }
                None => return Err(invalid("'file.driver' is missing")),
            }
            let name = file_level(&mut child, node)?;
            child
                .deny_unknown()
                .map_err(|e| prefix_unknown(e, "file."))
                .map_err(props_err)?;
            Ok(name)
        }
        Some(PropValue::Str(_)) => Err(CliError::UnsupportedProperty {
            option: "-blockdev",
            property: "file".into(),
            reason: "references to other nodes are not supported; define the file inline \
                     (file.driver=file,file.filename=PATH)",
        }),
        Some(other) => Err(props_err(PropsError::InvalidValue {
            key: "file".into(),
            value: other.type_name().into(),
            expected: "an object",
        })),
    }
}

/// The `backing` option of a qcow2 node.
fn backing(tree: &mut Props) -> Result<BackingConfig, CliError> {
    match tree.remove("backing") {
        None => Ok(BackingConfig::FromImage),
        Some(PropValue::Null) => Ok(BackingConfig::None),
        Some(PropValue::Str(s)) if s.is_empty() || s == "null" => Ok(BackingConfig::None),
        Some(PropValue::Str(_)) => Err(CliError::UnsupportedProperty {
            option: "-blockdev",
            property: "backing".into(),
            reason: "references to other nodes are not supported; use backing=null, \
                     backing.driver=FORMAT or backing.file.filename=PATH",
        }),
        Some(PropValue::Map(mut b)) => {
            let format = match b.take_string("driver").map_err(props_err)? {
                Some(d) => Some(format_name("-blockdev", "backing.driver", &d)?),
                None => None,
            };
            let filename = match b.take_map("file").map_err(props_err)? {
                None => None,
                Some(mut f) => {
                    match f.take_string("driver").map_err(props_err)?.as_deref() {
                        None | Some("file") => {}
                        Some(_) => {
                            return Err(invalid("backing.file.driver: only 'file' is supported"))
                        }
                    }
                    let name = f
                        .take_string("filename")
                        .map_err(props_err)?
                        .ok_or_else(|| invalid("'backing.file.filename' is missing"))?;
                    f.deny_unknown()
                        .map_err(|e| prefix_unknown(e, "backing.file."))
                        .map_err(props_err)?;
                    Some(file_name(
                        "-blockdev",
                        "backing.file.filename",
                        OsStr::new(&name),
                    )?)
                }
            };
            b.deny_unknown()
                .map_err(|e| prefix_unknown(e, "backing."))
                .map_err(props_err)?;
            Ok(BackingConfig::Override { format, filename })
        }
        Some(other) => Err(props_err(PropsError::InvalidValue {
            key: "backing".into(),
            value: other.type_name().into(),
            expected: "null or an object",
        })),
    }
}

/// One `-blockdev`.
pub(crate) fn blockdev(arg: &OsStr) -> Result<BlockRequest, CliError> {
    let mut tree = objects::parse_tree(Opt::Blockdev, arg)?;
    let driver = tree
        .take_string("driver")
        .map_err(props_err)?
        .ok_or_else(|| invalid("parameter 'driver' is missing"))?;
    if options::is_help(&driver) {
        return Ok(BlockRequest::Help);
    }
    let format = match driver.as_str() {
        "file" => BlockFormat::File,
        "raw" => BlockFormat::Raw,
        "qcow2" => BlockFormat::Qcow2,
        other => {
            return Err(CliError::UnknownType {
                option: "-blockdev",
                noun: "block driver",
                name: other.chars().take(80).collect(),
            })
        }
    };
    let node_name = tree
        .take_string("node-name")
        .map_err(props_err)?
        .ok_or_else(|| invalid("'node-name' is required"))?;
    let mut node = BlockNodeConfig::new(node_name, format, PathBuf::new());
    if format == BlockFormat::File {
        node.filename = file_level(&mut tree, &mut node)?;
    } else {
        node_options(&mut tree, &mut node)?;
        node.filename = file_child(&mut tree, &mut node)?;
        if format == BlockFormat::Qcow2 {
            node.backing = backing(&mut tree)?;
        }
    }
    tree.deny_unknown().map_err(props_err)?;
    node.validate()?;
    Ok(BlockRequest::Node(Box::new(DriveConfig {
        interface: DriveInterface::None,
        node,
        from_blockdev: true,
        throttle: Default::default(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive_ok(arg: &str) -> DriveConfig {
        match drive(OsStr::new(arg), &[]).unwrap() {
            BlockRequest::Node(d) => *d,
            BlockRequest::Help => panic!("help"),
        }
    }

    fn drive_err(arg: &str) -> String {
        match drive(OsStr::new(arg), &[]) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted {arg}"),
        }
    }

    fn blockdev_ok(arg: &str) -> DriveConfig {
        match blockdev(OsStr::new(arg)).unwrap() {
            BlockRequest::Node(d) => *d,
            BlockRequest::Help => panic!("help"),
        }
    }

    fn blockdev_err(arg: &str) -> String {
        match blockdev(OsStr::new(arg)) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted {arg}"),
        }
    }

    #[test]
    fn drive_with_every_supported_option() {
        let d = drive_ok(
            "file=/d.img,format=raw,if=virtio,id=d0,readonly=on,cache=none,discard=unmap,\
             file.locking=off",
        );

        assert_eq!(d.interface, DriveInterface::Virtio);
        assert_eq!(d.node.node_name, "d0");
        assert_eq!(d.node.format, BlockFormat::Raw);
        assert_eq!(d.node.filename, PathBuf::from("/d.img"));
        assert!(d.node.read_only && d.node.cache.direct);
        assert_eq!(d.node.discard, DiscardMode::Unmap);
        assert_eq!(d.node.locking, LockingMode::Off);
    }

    #[test]
    fn drive_defaults_are_qemus() {
        let d = drive_ok("file=/d.img,format=qcow2");

        assert_eq!(d.interface, DriveInterface::Virtio);
        assert_eq!(d.node.node_name, "virtio0");
        assert!(!d.node.read_only);
        assert_eq!(d.node.cache, CacheConfig::default());
        assert_eq!(d.node.discard, DiscardMode::Ignore);
        assert_eq!(d.node.locking, LockingMode::Auto);
    }

    #[test]
    fn drive_file_name_may_contain_escaped_commas() {
        assert_eq!(
            drive_ok("file=/a,,b.img,format=raw").node.filename,
            PathBuf::from("/a,b.img")
        );
    }

    #[test]
    fn writable_drive_without_format_is_refused() {
        let err = drive_err("file=/d.img");

        assert!(
            err.contains("never probes") && err.contains("format=raw"),
            "{err}"
        );
    }

    #[test]
    fn read_only_drive_without_format_is_probed() {
        assert_eq!(
            drive_ok("file=/d.img,readonly=on").node.format,
            BlockFormat::Probe
        );
    }

    #[test]
    fn unsupported_drive_options_are_named() {
        assert!(drive_err("file=/d,format=raw,if=ide").contains("'if'"));
        assert!(drive_err("file=/d,format=vmdk").contains("'vmdk'"));
        assert!(drive_err("file=/d,format=raw,snapshot=on").contains("'snapshot'"));
        assert!(drive_err("file=/d,format=raw,aio=native").contains("'aio'"));
        assert!(drive_err("file=/d,format=raw,cache=bogus").contains("'bogus'"));
        assert!(drive_err("file=/d,format=raw,discard=maybe").contains("'maybe'"));
        assert!(drive_err("file=/d,format=raw,frobnicate=1").contains("'frobnicate'"));
        assert!(drive_err("format=raw").contains("file= is required"));
        assert!(drive_err("file=nbd://host/x,format=raw").contains("local files"));
        assert!(drive_err("file=json:{},format=raw").contains("local files"));
    }

    #[test]
    fn drive_cache_modes_and_overrides() {
        let d = drive_ok("file=/d,format=raw,cache=directsync");
        assert!(d.node.cache.direct && d.node.cache.writethrough);
        let d = drive_ok("file=/d,format=raw,cache=none,cache.direct=off");
        assert!(!d.node.cache.direct);
        let d = drive_ok("file=/d,format=raw,cache=unsafe");
        assert!(d.node.cache.no_flush);
    }

    #[test]
    fn drive_ids_are_numbered_per_interface() {
        let first = drive_ok("file=/a,format=raw");
        let Ok(BlockRequest::Node(second)) = drive(OsStr::new("file=/b,format=raw"), &[first])
        else {
            panic!("refused")
        };

        assert_eq!(second.node.node_name, "virtio1");
    }

    #[test]
    fn blockdev_file_keyval_and_json_agree() {
        let a = blockdev_ok("driver=file,filename=/data.img,node-name=n0");
        let b = blockdev_ok(r#"{"driver":"file","filename":"/data.img","node-name":"n0"}"#);

        assert_eq!(a, b);
        assert_eq!(a.node.format, BlockFormat::File);
        assert_eq!(a.node.filename, PathBuf::from("/data.img"));
        assert_eq!(a.interface, DriveInterface::None);
    }

    #[test]
    fn blockdev_qcow2_over_file_with_options() {
        let d = blockdev_ok(
            "driver=qcow2,node-name=hd0,read-only=on,discard=unmap,cache.direct=on,\
             file.driver=file,file.filename=/x.qcow2,file.locking=off",
        );

        assert_eq!(d.node.format, BlockFormat::Qcow2);
        assert_eq!(d.node.filename, PathBuf::from("/x.qcow2"));
        assert!(d.node.read_only && d.node.cache.direct);
        assert_eq!(d.node.locking, LockingMode::Off);
        assert_eq!(d.node.backing, BackingConfig::FromImage);
    }

    #[test]
    fn blockdev_backing_null_and_override() {
        let none = blockdev_ok(
            r#"{"driver":"qcow2","node-name":"a","file":{"driver":"file","filename":"/x"},"backing":null}"#,
        );
        let over = blockdev_ok(
            "driver=qcow2,node-name=a,file.driver=file,file.filename=/x,backing.driver=raw,\
             backing.file.filename=/base.img",
        );

        assert_eq!(none.node.backing, BackingConfig::None);
        assert_eq!(
            over.node.backing,
            BackingConfig::Override {
                format: Some(BlockFormat::Raw),
                filename: Some("/base.img".into())
            }
        );
    }

    #[test]
    fn blockdev_refusals_name_the_culprit() {
        assert!(blockdev_err("driver=vmdk,node-name=a").contains("'vmdk'"));
        assert!(blockdev_err("driver=file,filename=/x").contains("node-name"));
        assert!(blockdev_err("driver=file,node-name=a").contains("filename"));
        assert!(blockdev_err("driver=raw,node-name=a").contains("'file'"));
        assert!(
            blockdev_err("driver=raw,node-name=a,file.driver=nbd,file.filename=/x")
                .contains("'nbd'")
        );
        assert!(blockdev_err("driver=raw,node-name=a,file=other").contains("references"));
        assert!(blockdev_err("driver=file,node-name=a,filename=/x,bogus=1").contains("'bogus'"));
        assert!(blockdev_err(
            "driver=raw,node-name=a,file.driver=file,file.filename=/x,file.bogus=1"
        )
        .contains("'file.bogus'"));
        assert!(blockdev_err("driver=file,node-name=a,filename=/x,aio=io_uring").contains("aio"));
        assert!(
            blockdev_err("driver=file,node-name=a,filename=/x,detect-zeroes=on")
                .contains("detect-zeroes")
        );
        assert!(blockdev_err(
            "driver=raw,node-name=a,file.driver=file,file.filename=/x,backing=null"
        )
        .contains("'backing'"));
    }

    #[test]
    fn blockdev_help_lists_drivers() {
        assert!(matches!(
            blockdev(OsStr::new("driver=help")).unwrap(),
            BlockRequest::Help
        ));
        assert!(matches!(
            drive(OsStr::new("format=help"), &[]).unwrap(),
            BlockRequest::Help
        ));
        assert!(driver_list().contains("qcow2"));
    }
}
