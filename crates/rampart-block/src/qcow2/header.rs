//! The qcow2 header and its extensions: parsed from the image's first cluster and validated
//! against the file size and fixed limits before anything else is read. Pure (no I/O), so it
//! can be fuzzed and unit-tested on byte arrays.

use super::{be32, be64, Qcow2Error};

pub const MAGIC: u32 = 0x5146_49fb;
pub const V2_HEADER_LEN: usize = 72;
pub const V3_HEADER_MIN_LEN: usize = 104;
pub const MIN_CLUSTER_BITS: u32 = 9;
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Largest L1 table accepted, in bytes (QEMU's limit): bounds memory and the virtual size.
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table accepted, in bytes (QEMU's limit).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Longest backing file name (QEMU's limit).
pub const MAX_BACKING_NAME: u32 = 1023;
/// Most internal snapshots accepted (QEMU's limit).
pub const MAX_SNAPSHOTS: u32 = 65536;

pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION;

const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
const EXT_CRYPTO: u32 = 0x0537_be77;
const EXT_DATA_FILE: u32 = 0x4441_5441;
/// Most header extensions accepted.
const MAX_EXTENSIONS: usize = 256;

/// How compressed clusters are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Raw deflate (no zlib header), window 4 KiB.
    Deflate,
    Zstd,
}

/// A validated qcow2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub incompatible: u64,
    pub compatible: u64,
    pub autoclear: u64,
    /// Length of the fixed header (72 for v2).
    pub header_len: u32,
    pub compression: Compression,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / 8
    }

    /// Number of L1 entries the virtual size needs.
    pub fn needed_l1(&self) -> u64 {
        needed_l1(self.size, self.cluster_bits)
    }

    pub fn is_dirty(&self) -> bool {
        self.incompatible & INCOMPAT_DIRTY != 0
    }

    pub fn is_corrupt(&self) -> bool {
        self.incompatible & INCOMPAT_CORRUPT != 0
    }
}

pub fn needed_l1(size: u64, cluster_bits: u32) -> u64 {
    // Each L1 entry maps cluster_size/8 clusters.
    let shift = cluster_bits + (cluster_bits - 3);
    size.div_ceil(1u64 << shift)
}

fn invalid(reason: impl Into<String>) -> Qcow2Error {
    Qcow2Error::Invalid(reason.into())
}

fn unsupported(reason: impl Into<String>) -> Qcow2Error {
    Qcow2Error::Unsupported(reason.into())
}

/// Names of the incompatible feature bits in `bits`, from the image's feature table or the
/// specification.
fn feature_names(bits: u64, table: &[(u8, u8, String)]) -> String {
    let mut out = Vec::new();
    for bit in 0..64u8 {
        if bits & (1 << bit) == 0 {
            continue;
        }
        let known = match bit {
            2 => Some("external data file"),
            4 => Some("extended L2 entries"),
            _ => None,
        };
        let name = table
            .iter()
            .find(|(t, b, _)| *t == 0 && *b == bit)
            .map(|(_, _, n)| n.clone())
            .or(known.map(str::to_string));
        out.push(match name {
            Some(n) => format!("bit {bit} ({n})"),
            None => format!("bit {bit}"),
        });
    }
    out.join(", ")
}

/// Parses and validates the header in `head` (the image's first cluster, or as much of it as
/// the file has) of an image file of `file_len` bytes.
pub fn parse(head: &[u8], file_len: u64) -> Result<Header, Qcow2Error> {
    if head.len() < V2_HEADER_LEN {
        return Err(invalid(format!(
            "truncated header ({} bytes, at least {V2_HEADER_LEN} needed)",
            head.len()
        )));
    }
    if be32(head, 0) != MAGIC {
        return Err(invalid("bad magic"));
    }
    let version = be32(head, 4);
    if version != 2 && version != 3 {
        return Err(unsupported(format!(
            "qcow2 version {version} (rampart reads versions 2 and 3)"
        )));
    }
    let cluster_bits = be32(head, 20);
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
        return Err(invalid(format!(
            "cluster_bits {cluster_bits} outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}"
        )));
    }
    let cs = 1u64 << cluster_bits;
    let crypt = be32(head, 32);
    if crypt != 0 {
        return Err(unsupported("encrypted images are not supported"));
    }
    let mut h = Header {
        version,
        cluster_bits,
        size: be64(head, 24),
        l1_size: be32(head, 36),
        l1_table_offset: be64(head, 40),
        refcount_table_offset: be64(head, 48),
        refcount_table_clusters: be32(head, 56),
        nb_snapshots: be32(head, 60),
        incompatible: 0,
        compatible: 0,
        autoclear: 0,
        header_len: V2_HEADER_LEN as u32,
        compression: Compression::Deflate,
        backing_file: None,
        backing_format: None,
    };
    let mut refcount_order = 4;
    if version == 3 {
        if head.len() < V3_HEADER_MIN_LEN {
            return Err(invalid("truncated version 3 header"));
        }
        h.incompatible = be64(head, 72);
        h.compatible = be64(head, 80);
        h.autoclear = be64(head, 88);
        refcount_order = be32(head, 96);
        h.header_len = be32(head, 100);
        if (h.header_len as usize) < V3_HEADER_MIN_LEN
            || h.header_len as u64 > cs
            || h.header_len as usize > head.len()
            || h.header_len % 8 != 0
        {
            return Err(invalid(format!(
                "header_length {} is invalid",
                h.header_len
            )));
        }
        if h.incompatible & INCOMPAT_COMPRESSION != 0 {
            if h.header_len < 105 {
                return Err(invalid(
                    "compression type bit set but no compression_type field",
                ));
            }
            h.compression = match head[104] {
                0 => Compression::Deflate,
                1 => Compression::Zstd,
                t => return Err(unsupported(format!("compression type {t}"))),
            };
        } else if h.header_len >= 105 && head[104] != 0 {
            return Err(invalid(
                "compression_type set without its incompatible feature bit",
            ));
        }
    }
    if refcount_order != 4 {
        return Err(unsupported(format!(
            "refcount width {} bits (rampart supports 16-bit refcounts; convert with \
             qemu-img convert -O qcow2 -o refcount_bits=16)",
            1u64.checked_shl(refcount_order).unwrap_or(0)
        )));
    }
    // Header extensions (and the feature name table, for error messages).
    let ext_start = h.header_len as usize;
    let ext_end = (cs as usize).min(head.len());
    let mut features: Vec<(u8, u8, String)> = Vec::new();
    let mut pos = ext_start;
    let mut count = 0;
    loop {
        if pos + 8 > ext_end {
            // QEMU accepts a header without the end marker if the cluster ends.
            break;
        }
        count += 1;
        if count > MAX_EXTENSIONS {
            return Err(invalid("too many header extensions"));
        }
        let typ = be32(head, pos);
        let len = be32(head, pos + 4) as usize;
        let data_start = pos + 8;
        let data_end = data_start
            .checked_add(len)
            .filter(|&e| e <= ext_end)
            .ok_or_else(|| {
                invalid(format!(
                    "header extension 0x{typ:08x} overruns the first cluster"
                ))
            })?;
        let data = &head[data_start..data_end];
        match typ {
            EXT_END => break,
            EXT_BACKING_FORMAT => {
                let s = std::str::from_utf8(data)
                    .map_err(|_| invalid("backing format name is not UTF-8"))?;
                h.backing_format = Some(s.trim_end_matches('\0').to_string());
            }
            EXT_FEATURE_TABLE => {
                for entry in data.chunks_exact(48) {
                    let name_bytes = &entry[2..];
                    let end = name_bytes.iter().position(|&b| b == 0).unwrap_or(46);
                    let name = String::from_utf8_lossy(&name_bytes[..end]).into_owned();
                    features.push((entry[0], entry[1], name));
                }
            }
            EXT_CRYPTO => return Err(unsupported("encrypted images are not supported")),
            EXT_DATA_FILE => {
                return Err(unsupported(
                    "images with an external data file are not supported",
                ))
            }
            _ => {}
        }
        pos = data_end
            .checked_next_multiple_of(8)
            .ok_or_else(|| invalid("header extension length overflows"))?;
    }
    let unknown = h.incompatible & !INCOMPAT_KNOWN;
    if unknown != 0 {
        return Err(unsupported(format!(
            "unsupported incompatible features: {}",
            feature_names(unknown, &features)
        )));
    }
    // Backing file name: inside the first cluster, bounded.
    let bf_off = be64(head, 8);
    let bf_len = be32(head, 16);
    if bf_off != 0 {
        if bf_len == 0 || bf_len > MAX_BACKING_NAME {
            return Err(invalid(format!(
                "backing file name length {bf_len} is invalid"
            )));
        }
        let end = bf_off
            .checked_add(u64::from(bf_len))
            .filter(|&e| e <= cs && e as usize <= head.len())
            .ok_or_else(|| invalid("backing file name lies outside the first cluster"))?;
        let name = &head[bf_off as usize..end as usize];
        let name =
            std::str::from_utf8(name).map_err(|_| invalid("backing file name is not UTF-8"))?;
        if name.contains('\0') {
            return Err(invalid("backing file name contains a NUL byte"));
        }
        h.backing_file = Some(name.to_string());
    }
    validate_tables(&h, file_len)?;
    if h.nb_snapshots > MAX_SNAPSHOTS {
        return Err(invalid(format!(
            "{} snapshots (limit {MAX_SNAPSHOTS})",
            h.nb_snapshots
        )));
    }
    Ok(h)
}

/// The L1 and refcount tables: aligned, inside the file, not overlapping the header, within
/// the memory limits.
fn validate_tables(h: &Header, file_len: u64) -> Result<(), Qcow2Error> {
    let cs = h.cluster_size();
    let needed = h.needed_l1();
    if needed * 8 > MAX_L1_BYTES {
        return Err(unsupported(format!(
            "virtual size {} needs an L1 table of {} bytes (limit {MAX_L1_BYTES})",
            h.size,
            needed * 8
        )));
    }
    if u64::from(h.l1_size) < needed {
        return Err(invalid(format!(
            "L1 table has {} entries, the virtual size needs {needed}",
            h.l1_size
        )));
    }
    if u64::from(h.l1_size) * 8 > MAX_L1_BYTES {
        return Err(invalid(format!(
            "L1 table of {} entries exceeds the limit of {} bytes",
            h.l1_size, MAX_L1_BYTES
        )));
    }
    check_region(
        "L1 table",
        h.l1_table_offset,
        u64::from(h.l1_size) * 8,
        cs,
        file_len,
        h.l1_size == 0,
    )?;
    let rt_bytes = u64::from(h.refcount_table_clusters)
        .checked_mul(cs)
        .filter(|&b| b <= MAX_REFTABLE_BYTES)
        .ok_or_else(|| {
            invalid(format!(
                "refcount table of {} clusters exceeds the limit of {MAX_REFTABLE_BYTES} bytes",
                h.refcount_table_clusters
            ))
        })?;
    if rt_bytes == 0 {
        return Err(invalid("refcount table is empty"));
    }
    check_region(
        "refcount table",
        h.refcount_table_offset,
        rt_bytes,
        cs,
        file_len,
        false,
    )?;
    Ok(())
}

fn check_region(
    what: &str,
    offset: u64,
    len: u64,
    cs: u64,
    file_len: u64,
    empty_ok: bool,
) -> Result<(), Qcow2Error> {
    if empty_ok && len == 0 {
        return Ok(());
    }
    if offset % cs != 0 {
        return Err(invalid(format!(
            "{what} offset 0x{offset:x} is not cluster aligned"
        )));
    }
    if offset < cs {
        return Err(invalid(format!("{what} overlaps the header")));
    }
    match offset.checked_add(len) {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(invalid(format!(
            "{what} at 0x{offset:x} ({len} bytes) lies past the end of the {file_len}-byte file"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid v3 header for a 1 MiB image with 64 KiB clusters, laid out as qemu-img
    /// does (refcount table at cluster 1, refcount block at 2, L1 at 3).
    pub(crate) fn v3_image() -> Vec<u8> {
        let cs = 65536usize;
        let mut img = vec![0u8; 4 * cs];
        let put32 = |img: &mut Vec<u8>, off: usize, v: u32| {
            img[off..off + 4].copy_from_slice(&v.to_be_bytes())
        };
        let put64 = |img: &mut Vec<u8>, off: usize, v: u64| {
            img[off..off + 8].copy_from_slice(&v.to_be_bytes())
        };
        put32(&mut img, 0, MAGIC);
        put32(&mut img, 4, 3);
        put32(&mut img, 20, 16);
        put64(&mut img, 24, 1 << 20);
        put32(&mut img, 36, 1);
        put64(&mut img, 40, 3 * cs as u64);
        put64(&mut img, 48, cs as u64);
        put32(&mut img, 56, 1);
        put32(&mut img, 96, 4);
        put32(&mut img, 100, 112);
        put64(&mut img, cs, 2 * cs as u64);
        for c in 0..4 {
            img[2 * cs + 2 * c + 1] = 1;
        }
        img
    }

    fn err(img: &[u8]) -> String {
        parse(img, img.len() as u64).unwrap_err().to_string()
    }

    #[test]
    fn valid_header_parses() {
        let img = v3_image();

        let h = parse(&img, img.len() as u64).unwrap();

        assert_eq!(h.size, 1 << 20);
        assert_eq!(h.cluster_size(), 65536);
        assert_eq!(h.backing_file, None);
    }

    #[test]
    fn truncated_header_is_refused() {
        assert!(err(&v3_image()[..50]).contains("truncated"));
    }

    #[test]
    fn unknown_incompatible_bits_are_named() {
        let mut img = v3_image();
        img[72..80].copy_from_slice(&((1u64 << 5) | (1 << 40)).to_be_bytes());

        let e = err(&img);

        assert!(e.contains("bit 5") && e.contains("bit 40"), "{e}");
    }

    #[test]
    fn l1_table_past_end_of_file_is_refused() {
        let mut img = v3_image();
        img[40..48].copy_from_slice(&(1u64 << 40).to_be_bytes());

        assert!(err(&img).contains("past the end"));
    }

    #[test]
    fn refcount_order_other_than_16_bits_is_named() {
        let mut img = v3_image();
        img[96..100].copy_from_slice(&6u32.to_be_bytes());

        assert!(err(&img).contains("refcount width 64 bits"));
    }

    #[test]
    fn huge_refcount_table_is_refused_without_allocating() {
        let mut img = v3_image();
        img[56..60].copy_from_slice(&u32::MAX.to_be_bytes());

        assert!(err(&img).contains("refcount table"));
    }

    #[test]
    fn backing_name_outside_first_cluster_is_refused() {
        let mut img = v3_image();
        img[8..16].copy_from_slice(&65530u64.to_be_bytes());
        img[16..20].copy_from_slice(&100u32.to_be_bytes());

        assert!(err(&img).contains("backing file name"));
    }

    #[test]
    fn header_extension_overrunning_the_cluster_is_refused() {
        let mut img = v3_image();
        img[112..116].copy_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
        img[116..120].copy_from_slice(&u32::MAX.to_be_bytes());

        assert!(err(&img).contains("overruns"));
    }

    #[test]
    fn l1_too_small_for_the_virtual_size_is_refused() {
        let mut img = v3_image();
        img[24..32].copy_from_slice(&(1u64 << 40).to_be_bytes());

        assert!(err(&img).contains("L1 table has 1 entries"));
    }
}
