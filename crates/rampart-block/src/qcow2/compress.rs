//! Compressed clusters: raw deflate (QEMU's default) and zstd, decompressed into exactly one
//! cluster. The input is hostile: its size is bounded by the caller, and a zstd frame whose
//! window is larger than [`MAX_ZSTD_WINDOW`] is refused before any buffer is allocated.

use std::io::Read;

use super::header::Compression;

/// Largest zstd window accepted (QEMU compresses one cluster, at most 2 MiB, per frame).
pub const MAX_ZSTD_WINDOW: u64 = 4 << 20;

/// Decompresses `input` into `out`, which must be filled exactly.
pub fn decompress(kind: Compression, input: &[u8], out: &mut [u8]) -> Result<(), String> {
    match kind {
        Compression::Deflate => inflate(input, out),
        Compression::Zstd => unzstd(input, out),
    }
}

fn inflate(input: &[u8], out: &mut [u8]) -> Result<(), String> {
    let mut d = flate2::Decompress::new(false);
    match d.decompress(input, out, flate2::FlushDecompress::Finish) {
        Ok(_) if d.total_out() == out.len() as u64 => Ok(()),
        Ok(_) => Err(format!(
            "compressed cluster inflates to {} bytes, expected {}",
            d.total_out(),
            out.len()
        )),
        Err(e) => Err(format!("compressed cluster is not valid deflate data: {e}")),
    }
}

/// The window a zstd frame asks for, from its header.
fn zstd_window(input: &[u8]) -> Result<u64, String> {
    let bad = || "compressed cluster is not a valid zstd frame".to_string();
    if input.len() < 6 || input[..4] != [0x28, 0xb5, 0x2f, 0xfd] {
        return Err(bad());
    }
    let fhd = input[4];
    let single_segment = fhd & 0x20 != 0;
    if !single_segment {
        let wd = input[5];
        let log = 10 + u64::from(wd >> 3);
        let base = 1u64 << log;
        return Ok(base + (base / 8) * u64::from(wd & 7));
    }
    let did_len = [0usize, 1, 2, 4][usize::from(fhd & 3)];
    let fcs_len = [1usize, 2, 4, 8][usize::from(fhd >> 6)];
    let start = 5 + did_len;
    let field = input.get(start..start + fcs_len).ok_or_else(bad)?;
    let mut v = 0u64;
    for (i, b) in field.iter().enumerate() {
        v |= u64::from(*b) << (8 * i);
    }
    if fcs_len == 2 {
        v += 256;
    }
    Ok(v)
}

fn unzstd(input: &[u8], out: &mut [u8]) -> Result<(), String> {
    let window = zstd_window(input)?;
    if window > MAX_ZSTD_WINDOW {
        return Err(format!(
            "zstd frame window of {window} bytes exceeds the limit of {MAX_ZSTD_WINDOW}"
        ));
    }
    let mut src = input;
    let mut dec = ruzstd::decoding::StreamingDecoder::new(&mut src)
        .map_err(|e| format!("compressed cluster is not a valid zstd frame: {e}"))?;
    dec.read_exact(out)
        .map_err(|e| format!("compressed cluster does not decompress to a whole cluster: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_deflate_round_trip() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i / 7) as u8).collect();
        let mut c = flate2::Compress::new(flate2::Compression::default(), false);
        let mut comp = vec![0u8; 8192];
        c.compress(&data, &mut comp, flate2::FlushCompress::Finish)
            .unwrap();
        comp.truncate(c.total_out() as usize);
        let mut out = vec![0u8; 4096];

        decompress(Compression::Deflate, &comp, &mut out).unwrap();

        assert_eq!(out, data);
    }

    #[test]
    fn short_deflate_output_is_an_error() {
        let mut c = flate2::Compress::new(flate2::Compression::default(), false);
        let mut comp = vec![0u8; 100];
        c.compress(&[1, 2, 3], &mut comp, flate2::FlushCompress::Finish)
            .unwrap();
        comp.truncate(c.total_out() as usize);
        let mut out = vec![0u8; 512];

        assert!(decompress(Compression::Deflate, &comp, &mut out).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut out = vec![0u8; 512];

        assert!(decompress(Compression::Deflate, &[0xff; 64], &mut out).is_err());
        assert!(decompress(Compression::Zstd, &[0xff; 64], &mut out).is_err());
    }

    #[test]
    fn zstd_frame_with_huge_window_is_refused() {
        // Magic, descriptor without single segment, window descriptor 2^(10+31).
        let frame = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 31 << 3, 0, 0];
        let mut out = vec![0u8; 512];

        let e = decompress(Compression::Zstd, &frame, &mut out).unwrap_err();

        assert!(e.contains("window"), "{e}");
    }
}
