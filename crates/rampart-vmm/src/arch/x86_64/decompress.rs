//! Host-side decompression of a bzImage payload (gzip, xz, zstd, legacy lz4, or none), with a
//! hard bound on the output size.

use std::io::{self, Read};

/// The largest decompressed kernel rampart accepts unless told otherwise.
pub const MAX_DECOMPRESSED_SIZE: usize = 256 << 20;
/// Memory limit for the xz (LZMA2) dictionary, in KiB. Kernels use at most a 32 MiB dictionary.
const XZ_MEM_LIMIT_KIB: u32 = 128 * 1024;
/// Largest zstd window accepted (the kernel's own decompressor is limited to 128 MiB... and
/// Linux builds use far smaller windows).
const ZSTD_MAX_WINDOW: u64 = 128 << 20;
/// Legacy lz4 frame as the kernel writes it (`lz4 -l`): magic, then blocks of le32 size + data,
/// each decompressing to at most 8 MiB.
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
const LZ4_LEGACY_BLOCK_MAX: usize = 8 << 20;

/// The compression of a payload, recognised by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
    Lz4,
    Bzip2,
    Lzma,
    Lzo,
    Unknown,
}

impl Compression {
    /// Recognises the compression from the first bytes of a payload.
    pub fn detect(data: &[u8]) -> Compression {
        match data {
            [0x7f, b'E', b'L', b'F', ..] => Compression::None,
            [0x1f, 0x8b, ..] | [0x1f, 0x9e, ..] => Compression::Gzip,
            [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => Compression::Xz,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            [0x02, 0x21, 0x4c, 0x18, ..] => Compression::Lz4,
            [b'B', b'Z', b'h', ..] => Compression::Bzip2,
            [0x5d, 0x00, 0x00, ..] => Compression::Lzma,
            [0x89, b'L', b'Z', b'O', ..] => Compression::Lzo,
            _ => Compression::Unknown,
        }
    }

    /// The name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Lz4 => "lz4",
            Compression::Bzip2 => "bzip2",
            Compression::Lzma => "lzma",
            Compression::Lzo => "lzo",
            Compression::Unknown => "unknown",
        }
    }
}

/// Decompression failures.
#[derive(Debug, thiserror::Error)]
pub enum DecompressError {
    #[error("kernel payload compressed with {0}, which rampart does not support (use gzip, xz, zstd or lz4)")]
    Unsupported(&'static str),
    #[error("kernel payload has an unrecognised format (first bytes {0:02x?})")]
    UnknownFormat(Vec<u8>),
    #[error("decompressed kernel payload exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("corrupt {format} kernel payload: {source}")]
    Corrupt {
        format: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("corrupt lz4 kernel payload at offset {offset}: {reason}")]
    CorruptLz4 { offset: usize, reason: String },
    #[error("zstd kernel payload asks for a {window}-byte window, the limit is {limit}")]
    ZstdWindowTooLarge { window: u64, limit: u64 },
}

/// Decompresses `payload` (detected by magic) into at most `limit` bytes.
/// An uncompressed ELF payload is returned as is (subject to the same limit).
pub fn decompress(payload: &[u8], limit: usize) -> Result<(Compression, Vec<u8>), DecompressError> {
    let format = Compression::detect(payload);
    let out = match format {
        Compression::None => {
            if payload.len() > limit {
                return Err(DecompressError::TooLarge { limit });
            }
            payload.to_vec()
        }
        Compression::Gzip => read_bounded(flate2::read::GzDecoder::new(payload), "gzip", limit)?,
        Compression::Xz => read_bounded(
            lzma_rust2::XzReader::new_mem_limit(payload, false, XZ_MEM_LIMIT_KIB),
            "xz",
            limit,
        )?,
        Compression::Zstd => decompress_zstd(payload, limit)?,
        Compression::Lz4 => decompress_lz4_legacy(payload, limit)?,
        Compression::Bzip2 | Compression::Lzma | Compression::Lzo => {
            return Err(DecompressError::Unsupported(format.name()))
        }
        Compression::Unknown => {
            return Err(DecompressError::UnknownFormat(
                payload.iter().take(8).copied().collect(),
            ))
        }
    };
    Ok((format, out))
}

/// Reads `reader` to its end, failing if it produces more than `limit` bytes.
fn read_bounded<R: Read>(
    reader: R,
    format: &'static str,
    limit: usize,
) -> Result<Vec<u8>, DecompressError> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|source| DecompressError::Corrupt { format, source })?;
    if out.len() > limit {
        return Err(DecompressError::TooLarge { limit });
    }
    Ok(out)
}

fn decompress_zstd(payload: &[u8], limit: usize) -> Result<Vec<u8>, DecompressError> {
    let corrupt = |e: &dyn std::fmt::Display| DecompressError::Corrupt {
        format: "zstd",
        source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
    };
    let window = zstd_window_size(payload).ok_or_else(|| corrupt(&"truncated frame header"))?;
    let window_limit = ZSTD_MAX_WINDOW.min(u64::try_from(limit).unwrap_or(u64::MAX));
    if window > window_limit {
        return Err(DecompressError::ZstdWindowTooLarge {
            window,
            limit: window_limit,
        });
    }
    let stream = ruzstd::decoding::StreamingDecoder::new(payload).map_err(|e| corrupt(&e))?;
    read_bounded(stream, "zstd", limit)
}

/// The window size a zstd frame header declares (RFC 8878 section 3.1.1.1), i.e. how much
/// memory the decoder will allocate; `None` if the header is truncated.
fn zstd_window_size(frame: &[u8]) -> Option<u64> {
    let descriptor = *frame.get(4)?;
    let single_segment = descriptor & 0x20 != 0;
    if !single_segment {
        let wd = *frame.get(5)?;
        let log = 10 + u32::from(wd >> 3);
        let base = 1u64.checked_shl(log)?;
        return Some(base + (base / 8) * u64::from(wd & 7));
    }
    // Single segment: the window is the frame content size.
    let did_len = [0usize, 1, 2, 4][usize::from(descriptor & 3)];
    let fcs_len = [1usize, 2, 4, 8][usize::from(descriptor >> 6)];
    let start = 5 + did_len;
    let bytes = frame.get(start..start + fcs_len)?;
    let mut raw = [0u8; 8];
    raw[..fcs_len].copy_from_slice(bytes);
    let fcs = u64::from_le_bytes(raw);
    Some(if fcs_len == 2 { fcs + 256 } else { fcs })
}

/// Decodes the legacy lz4 format the kernel build produces. The kernel appends the
/// uncompressed size (4 bytes) after the last block; four bytes with nothing after them end
/// the stream.
fn decompress_lz4_legacy(payload: &[u8], limit: usize) -> Result<Vec<u8>, DecompressError> {
    let corrupt = |offset: usize, reason: String| DecompressError::CorruptLz4 { offset, reason };
    let mut out = Vec::new();
    // Never more buffer than the limit allows (plus one byte to notice going past it).
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK_MAX.min(limit.saturating_add(1))];
    let mut pos = 4; // the magic was checked by detection
    while payload.len().saturating_sub(pos) >= 4 {
        let size_bytes: [u8; 4] = payload[pos..pos + 4]
            .try_into()
            .map_err(|_| corrupt(pos, "short block header".into()))?;
        let size = u32::from_le_bytes(size_bytes);
        pos += 4;
        if size == LZ4_LEGACY_MAGIC {
            continue; // concatenated stream
        }
        if pos == payload.len() || size == 0 {
            break; // size trailer, or an explicit end
        }
        let size = size as usize;
        let end = pos
            .checked_add(size)
            .filter(|&end| end <= payload.len())
            .ok_or_else(|| {
                corrupt(
                    pos - 4,
                    format!(
                        "block of {size} bytes runs past the end ({} bytes)",
                        payload.len()
                    ),
                )
            })?;
        let room = limit
            .saturating_sub(out.len())
            .saturating_add(1)
            .min(block.len());
        let n = match lz4_flex::block::decompress_into(&payload[pos..end], &mut block[..room]) {
            Ok(n) => n,
            Err(lz4_flex::block::DecompressError::OutputTooSmall { .. })
                if room < LZ4_LEGACY_BLOCK_MAX =>
            {
                return Err(DecompressError::TooLarge { limit })
            }
            Err(e) => return Err(corrupt(pos, e.to_string())),
        };
        if out.len().saturating_add(n) > limit {
            return Err(DecompressError::TooLarge { limit });
        }
        out.extend_from_slice(&block[..n]);
        pos = end;
    }
    if out.is_empty() {
        return Err(corrupt(pos, "no data blocks".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sample() -> Vec<u8> {
        let mut v = b"\x7fELF".to_vec();
        v.extend((0..100_000u32).map(|i| (i % 251) as u8));
        v
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn lz4_legacy(data: &[u8]) -> Vec<u8> {
        let mut v = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for chunk in data.chunks(40_000) {
            let c = lz4_flex::block::compress(chunk);
            v.extend((c.len() as u32).to_le_bytes());
            v.extend(c);
        }
        v.extend((data.len() as u32).to_le_bytes()); // size trailer
        v
    }

    #[test]
    fn detects_every_known_magic() {
        let cases: [(&[u8], Compression); 8] = [
            (b"\x1f\x8b\x08", Compression::Gzip),
            (b"\xfd7zXZ\x00", Compression::Xz),
            (b"\x28\xb5\x2f\xfd", Compression::Zstd),
            (b"\x02\x21\x4c\x18", Compression::Lz4),
            (b"BZh9", Compression::Bzip2),
            (b"\x5d\x00\x00\x80", Compression::Lzma),
            (b"\x89LZO", Compression::Lzo),
            (b"\x7fELF", Compression::None),
        ];
        for (magic, want) in cases {
            assert_eq!(Compression::detect(magic), want);
        }
    }

    #[test]
    fn gzip_payload_with_size_trailer_round_trips() {
        // Arrange
        let mut payload = gzip(&sample());
        payload.extend(100_004u32.to_le_bytes());
        // Act
        let (format, out) = decompress(&payload, MAX_DECOMPRESSED_SIZE).unwrap();
        // Assert
        assert_eq!(format, Compression::Gzip);
        assert_eq!(out, sample());
    }

    #[test]
    fn lz4_legacy_payload_round_trips() {
        let (format, out) = decompress(&lz4_legacy(&sample()), MAX_DECOMPRESSED_SIZE).unwrap();
        assert_eq!(format, Compression::Lz4);
        assert_eq!(out, sample());
    }

    /// `sample()` compressed as the kernel build does: `xz --check=crc32 --x86 --lzma2`
    /// (so the BCJ x86 filter is exercised), then the 4-byte size trailer.
    const SAMPLE_XZ: &[u8] = include_bytes!("testdata/sample.xz");
    /// `sample()` compressed with `zstd -19`, then the 4-byte size trailer.
    const SAMPLE_ZST: &[u8] = include_bytes!("testdata/sample.zst");

    #[test]
    fn xz_payload_with_bcj_filter_round_trips() {
        let (format, out) = decompress(SAMPLE_XZ, MAX_DECOMPRESSED_SIZE).unwrap();
        assert_eq!(format, Compression::Xz);
        assert_eq!(out, sample());
    }

    #[test]
    fn zstd_payload_round_trips() {
        let (format, out) = decompress(SAMPLE_ZST, MAX_DECOMPRESSED_SIZE).unwrap();
        assert_eq!(format, Compression::Zstd);
        assert_eq!(out, sample());
    }

    #[test]
    fn rejects_zstd_window_larger_than_limit() {
        // Frame header: magic, descriptor (no single segment), window descriptor 2^31.
        let payload = [0x28, 0xb5, 0x2f, 0xfd, 0x00, (31 - 10) << 3, 0, 0, 0];
        let err = decompress(&payload, MAX_DECOMPRESSED_SIZE).unwrap_err();
        assert!(
            matches!(err, DecompressError::ZstdWindowTooLarge { .. }),
            "{err}"
        );
    }

    #[test]
    fn rejects_xz_output_larger_than_limit() {
        let err = decompress(SAMPLE_XZ, 4096).unwrap_err();
        assert!(
            matches!(err, DecompressError::TooLarge { limit: 4096 }),
            "{err}"
        );
    }

    #[test]
    fn rejects_output_larger_than_limit() {
        for payload in [gzip(&sample()), lz4_legacy(&sample())] {
            let err = decompress(&payload, 1000).unwrap_err();
            assert!(
                matches!(err, DecompressError::TooLarge { limit: 1000 }),
                "{err}"
            );
        }
    }

    #[test]
    fn rejects_unsupported_compressions_by_name() {
        let err = decompress(b"BZh91AY&SY", MAX_DECOMPRESSED_SIZE).unwrap_err();
        assert!(err.to_string().contains("bzip2"), "{err}");
        let err = decompress(b"\x89LZO\x00", MAX_DECOMPRESSED_SIZE).unwrap_err();
        assert!(err.to_string().contains("lzo"), "{err}");
    }

    #[test]
    fn rejects_truncated_gzip() {
        let payload = gzip(&sample());
        let err = decompress(&payload[..payload.len() / 2], MAX_DECOMPRESSED_SIZE).unwrap_err();
        assert!(
            matches!(err, DecompressError::Corrupt { format: "gzip", .. }),
            "{err}"
        );
    }

    #[test]
    fn rejects_lz4_block_past_end() {
        let mut payload = lz4_legacy(&sample());
        payload.truncate(20);
        let err = decompress(&payload, MAX_DECOMPRESSED_SIZE).unwrap_err();
        assert!(matches!(err, DecompressError::CorruptLz4 { .. }), "{err}");
    }

    #[test]
    fn rejects_garbage() {
        let err = decompress(b"hello world", MAX_DECOMPRESSED_SIZE).unwrap_err();
        assert!(matches!(err, DecompressError::UnknownFormat(_)), "{err}");
    }

    #[test]
    fn lz4_buffer_never_exceeds_the_limit() {
        // A legacy-lz4 stream whose one block would expand past a 1 KiB limit: refused as too
        // large, with no 8 MiB block buffer behind it (the fuzzer's finding).
        let mut data = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        let block = lz4_flex::block::compress(&[0u8; 64 * 1024]);
        data.extend_from_slice(&(block.len() as u32).to_le_bytes());
        data.extend_from_slice(&block);
        assert!(matches!(
            decompress_lz4_legacy(&data, 1024),
            Err(DecompressError::TooLarge { limit: 1024 })
        ));
    }
}
