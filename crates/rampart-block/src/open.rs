//! From a configured block node to a back end: open the host file, lock it, pick the format.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rampart_config::{BackingConfig, BlockFormat, BlockNodeConfig, DiscardMode, LockingMode};
use tracing::warn;

use crate::file::{FileOptions, HostFile};
use crate::lock::lock_image;
use crate::opener::{NameOrigin, Opener, PathOpener};
use crate::qcow2::{self, Qcow2Backend};
use crate::raw::RawBackend;
use crate::{BlockBackend, BlockError};

/// The first bytes of a qcow2 image.
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// Guesses an image's format from its first bytes: qcow2 by its magic, raw otherwise. Only
/// used for read-only images (see [`BlockFormat::Probe`]).
pub fn probe_format(head: &[u8]) -> BlockFormat {
    if head.starts_with(&QCOW2_MAGIC) {
        BlockFormat::Qcow2
    } else {
        BlockFormat::Raw
    }
}

/// Opens the host file of `node`, with its locks unless `file.locking=off`.
pub(crate) fn open_host_file(
    node: &BlockNodeConfig,
    opener: &dyn Opener,
    origin: NameOrigin,
) -> Result<Arc<HostFile>, BlockError> {
    let file = HostFile::open_with(
        opener,
        &node.filename,
        FileOptions {
            read_only: node.read_only,
            direct: node.cache.direct,
        },
        origin,
    )?;
    match node.locking {
        LockingMode::Off => {}
        LockingMode::On => lock_image(file.raw_file(), file.path(), !node.read_only)?,
        LockingMode::Auto => match lock_image(file.raw_file(), file.path(), !node.read_only) {
            Err(BlockError::Lock { path, source })
                if matches!(
                    source.raw_os_error(),
                    Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(libc::ENOLCK)
                ) =>
            {
                warn!(
                    "'{}': the file system does not support OFD locks ({source}); \
                     the image is not locked",
                    path.display()
                );
            }
            r => r?,
        },
    }
    Ok(Arc::new(file))
}

/// Longest backing chain accepted (the top image plus this many backing files).
pub const MAX_BACKING_DEPTH: usize = 16;

/// The files of one chain opened so far, by (device, inode), to detect loops.
#[derive(Default)]
struct Chain {
    seen: Vec<(u64, u64)>,
    images: Vec<ChainImage>,
}

/// One image of an opened chain: its file and format (as opened, probing resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainImage {
    pub filename: PathBuf,
    pub format: BlockFormat,
}

/// Opens a configured block node (and, for qcow2, its backing chain).
pub fn open(node: &BlockNodeConfig) -> Result<Arc<dyn BlockBackend>, BlockError> {
    open_with_chain(node).map(|(disk, _)| disk)
}

/// Opens a node like [`open`], and says which images it opened: the node's own first, then
/// each backing file in order.
pub fn open_with_chain(
    node: &BlockNodeConfig,
) -> Result<(Arc<dyn BlockBackend>, Vec<ChainImage>), BlockError> {
    open_with_chain_via(node, &PathOpener)
}

/// Opens a node like [`open_with_chain`], every file (backing files too) through `opener`.
pub fn open_with_chain_via(
    node: &BlockNodeConfig,
    opener: &dyn Opener,
) -> Result<(Arc<dyn BlockBackend>, Vec<ChainImage>), BlockError> {
    node.validate().map_err(|e| BlockError::Unsupported {
        path: node.filename.clone(),
        reason: e.to_string(),
    })?;
    let mut chain = Chain::default();
    let disk = open_node(node, opener, NameOrigin::Config, &mut chain, 0)?;
    Ok((disk, chain.images))
}

fn open_node(
    node: &BlockNodeConfig,
    opener: &dyn Opener,
    origin: NameOrigin,
    chain: &mut Chain,
    depth: usize,
) -> Result<Arc<dyn BlockBackend>, BlockError> {
    let file = open_host_file(node, opener, origin)?;
    let meta = file
        .raw_file()
        .metadata()
        .map_err(|source| BlockError::Open {
            path: node.filename.clone(),
            source,
        })?;
    let id = (meta.dev(), meta.ino());
    if chain.seen.contains(&id) {
        return Err(BlockError::Backing {
            path: node.filename.clone(),
            reason: "backing chain loop: this file is already part of the chain".into(),
        });
    }
    chain.seen.push(id);
    let probed = node.format == BlockFormat::Probe;
    let format = if probed {
        let mut head = [0u8; 4];
        file.read_at(0, &mut head)?;
        let f = probe_format(&head);
        if f == BlockFormat::Raw && depth == 0 {
            warn!(
                "'{}': no format given, probed as raw (read-only); give format=raw to \
                 silence this",
                node.filename.display()
            );
        }
        f
    } else {
        node.format
    };
    chain.images.push(ChainImage {
        filename: node.filename.clone(),
        format,
    });
    match format {
        BlockFormat::File | BlockFormat::Raw | BlockFormat::Probe => {
            Ok(Arc::new(RawBackend::new(file, node.cache, node.discard)))
        }
        BlockFormat::Qcow2 => {
            let hdr = qcow2::read_header(&file)?;
            let backing = open_backing(node, opener, &hdr, probed, chain, depth)?;
            Ok(Arc::new(Qcow2Backend::open(
                file,
                hdr,
                backing,
                node.cache,
                node.discard,
            )?))
        }
    }
}

fn backing_format(path: &Path, name: &str) -> Result<BlockFormat, BlockError> {
    match name {
        "raw" | "file" => Ok(BlockFormat::Raw),
        "qcow2" => Ok(BlockFormat::Qcow2),
        other => Err(BlockError::Backing {
            path: path.to_path_buf(),
            reason: format!(
                "backing file format '{}' is not supported (rampart has raw and qcow2)",
                other.chars().take(40).collect::<String>()
            ),
        }),
    }
}

/// Opens the backing file of a qcow2 node, read-only.
fn open_backing(
    node: &BlockNodeConfig,
    opener: &dyn Opener,
    hdr: &qcow2::header::Header,
    probed: bool,
    chain: &mut Chain,
    depth: usize,
) -> Result<Option<Arc<dyn BlockBackend>>, BlockError> {
    let from_header = || hdr.backing_file.as_ref().map(PathBuf::from);
    let (name, format, origin) = match &node.backing {
        BackingConfig::None => return Ok(None),
        BackingConfig::FromImage => (
            from_header(),
            hdr.backing_format.clone(),
            NameOrigin::ImageHeader,
        ),
        BackingConfig::Override { format, filename } => (
            filename.clone().or_else(from_header),
            format
                .map(|f| f.name().to_string())
                .or_else(|| hdr.backing_format.clone()),
            if filename.is_some() {
                NameOrigin::Config
            } else {
                NameOrigin::ImageHeader
            },
        ),
    };
    let Some(name) = name else {
        return Ok(None);
    };
    let bad = |reason: String| BlockError::Backing {
        path: node.filename.clone(),
        reason,
    };
    if probed {
        return Err(bad(format!(
            "the image's format was probed and it names a backing file ('{}'); rampart does \
             not follow backing files of probed images: give format=qcow2",
            name.display()
        )));
    }
    if depth + 1 > MAX_BACKING_DEPTH {
        return Err(bad(format!(
            "backing chain is deeper than {MAX_BACKING_DEPTH} images"
        )));
    }
    let text = name.to_string_lossy();
    if text.starts_with("json:") || text.contains("://") {
        return Err(bad(format!(
            "backing file '{}' is not a local file name (protocols and json: are not supported)",
            text.chars().take(80).collect::<String>()
        )));
    }
    // A relative name is relative to the overlay's directory (as in QEMU); an overlay passed
    // as an fd set has no directory.
    if name.is_relative() && node.filename.starts_with(crate::opener::FDSET_DIR) {
        return Err(bad(format!(
            "the image was passed as an fd set and names a relative backing file ('{}'), \
             which has no directory to be relative to: pass the backing file with \
             backing.file.filename=/dev/fdset/N",
            name.display()
        )));
    }
    let path = if name.is_relative() {
        node.filename
            .parent()
            .map(|d| d.join(&name))
            .unwrap_or(name)
    } else {
        name
    };
    let format = match format {
        Some(f) => backing_format(&node.filename, &f)?,
        // No recorded format: probe (read-only), and never follow what the probe finds.
        None => BlockFormat::Probe,
    };
    let child = BlockNodeConfig {
        node_name: node.node_name.clone(),
        format,
        filename: path,
        read_only: true,
        cache: node.cache,
        discard: DiscardMode::Ignore,
        locking: node.locking,
        backing: BackingConfig::FromImage,
    };
    open_node(&child, opener, origin, chain, depth + 1).map(Some)
}

#[cfg(test)]
mod tests {
    use rampart_config::CacheConfig;

    use super::*;

    fn raw_image(len: usize) -> std::path::PathBuf {
        let p = crate::testutil::scratch_dir().join("disk.img");
        std::fs::write(&p, vec![0u8; len]).unwrap();
        p
    }

    fn node(p: &std::path::Path) -> BlockNodeConfig {
        BlockNodeConfig::new("d0", BlockFormat::Raw, p.to_path_buf())
    }

    #[test]
    fn raw_image_reads_back_what_was_written() {
        let p = raw_image(1 << 20);
        let disk = open(&node(&p)).unwrap();

        disk.write_at(512, b"hello").unwrap();
        disk.flush().unwrap();
        let mut buf = [0u8; 5];
        disk.read_at(512, &mut buf).unwrap();

        assert_eq!(&buf, b"hello");
        assert_eq!(disk.size(), 1 << 20);
        assert_eq!(&std::fs::read(&p).unwrap()[512..517], b"hello");
    }

    #[test]
    fn requests_past_the_end_are_refused() {
        let p = raw_image(4096);
        let disk = open(&node(&p)).unwrap();
        let mut buf = [0u8; 2];

        assert!(matches!(
            disk.read_at(4095, &mut buf),
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(
            disk.write_at(u64::MAX, &buf),
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(disk.discard(4000, 200).is_err());
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 4096);
    }

    #[test]
    fn read_only_node_refuses_writes_and_discards() {
        let p = raw_image(4096);
        let mut n = node(&p);
        n.read_only = true;
        n.discard = DiscardMode::Unmap;
        let disk = open(&n).unwrap();

        assert!(disk.read_only());
        assert!(matches!(disk.write_at(0, b"x"), Err(BlockError::ReadOnly)));
        assert!(matches!(
            disk.write_zeroes(0, 512, false),
            Err(BlockError::ReadOnly)
        ));
        assert!(!disk.supports_discard());
    }

    #[test]
    fn second_read_write_opener_fails_naming_the_file() {
        let p = raw_image(4096);
        let _first = open(&node(&p)).unwrap();

        let err = open(&node(&p)).err().unwrap().to_string();

        assert!(
            err.contains("lock") && err.contains(&*p.to_string_lossy()),
            "{err}"
        );
    }

    #[test]
    fn locking_off_lets_a_second_opener_in() {
        let p = raw_image(4096);
        let _first = open(&node(&p)).unwrap();
        let mut n = node(&p);
        n.locking = LockingMode::Off;

        assert!(open(&n).is_ok());
    }

    #[test]
    fn discard_ignore_keeps_data_and_unmap_punches() {
        let p = crate::testutil::scratch_dir().join("d.img");
        std::fs::write(&p, vec![1u8; 1 << 20]).unwrap();
        let mut n = node(&p);
        n.cache = CacheConfig::from_mode("none").unwrap();
        let disk = open(&n).unwrap();
        assert!(!disk.supports_discard());
        disk.discard(0, 1 << 20).unwrap();
        let mut b = [0u8; 1];
        disk.read_at(0, &mut b).unwrap();
        assert_eq!(b[0], 1);
        drop(disk);

        n.discard = DiscardMode::Unmap;
        let disk = open(&n).unwrap();
        assert!(disk.supports_discard());
        disk.discard(0, 1 << 20).unwrap();

        assert!(crate::testutil::allocated_bytes(&p) < 1 << 20);
        disk.read_at(0, &mut b).unwrap();
        assert_eq!(b[0], 0);
    }

    #[test]
    fn write_zeroes_may_unmap_only_with_discard_unmap() {
        let p = crate::testutil::scratch_dir().join("z.img");
        std::fs::write(&p, vec![1u8; 1 << 20]).unwrap();
        let mut n = node(&p);
        n.discard = DiscardMode::Unmap;
        let disk = open(&n).unwrap();

        disk.write_zeroes(0, 1 << 20, true).unwrap();

        assert!(std::fs::read(&p).unwrap().iter().all(|&b| b == 0));
        assert!(crate::testutil::allocated_bytes(&p) < 1 << 20);
    }

    #[test]
    fn probed_read_only_raw_image_opens_as_raw() {
        let p = raw_image(4096);
        let mut n = node(&p);
        n.format = BlockFormat::Probe;
        n.read_only = true;

        assert_eq!(open(&n).unwrap().size(), 4096);
    }

    #[test]
    fn writable_image_without_format_is_refused() {
        let p = raw_image(4096);
        let mut n = node(&p);
        n.format = BlockFormat::Probe;

        let err = open(&n).err().unwrap().to_string();

        assert!(err.contains("never probes"), "{err}");
    }

    #[test]
    fn missing_file_error_names_it() {
        let p = crate::testutil::scratch_dir().join("nope.img");

        let err = open(&node(&p)).err().unwrap().to_string();

        assert!(err.contains("nope.img"), "{err}");
    }
}
