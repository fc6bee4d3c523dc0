//! The virtio-net header (`virtio_net_hdr_mrg_rxbuf`, 12 bytes under virtio 1.x) and the rules
//! a guest's transmit header must follow before its frame reaches the tap. Pure functions, so
//! they can be unit-tested and fuzzed (`fuzz/fuzz_targets/net_tx.rs`).

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};

/// Bytes of the header.
pub const HDR_LEN: usize = 12;
/// Smallest frame: an Ethernet header.
pub const MIN_FRAME: usize = 14;
/// Largest frame a guest may send: a 64 KiB GSO super-packet plus Ethernet and VLAN headers.
pub const MAX_FRAME: usize = 65535 + 14 + 4;

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

impl VnetHdr {
    /// Decodes the first [`HDR_LEN`] bytes of `b` (little-endian, as virtio 1.x requires).
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b: &[u8; HDR_LEN] = b.get(..HDR_LEN)?.try_into().ok()?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
            num_buffers: u(10),
        })
    }
}

/// Why a transmitted frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("frame of {0} bytes is outside [{MIN_FRAME}, {MAX_FRAME}]")]
    Length(usize),
    #[error("header flags {0:#x} are not allowed on transmit")]
    Flags(u8),
    #[error("checksum offload requested without VIRTIO_NET_F_CSUM")]
    CsumNotNegotiated,
    #[error("checksum at {start}+{offset} is outside the {len}-byte frame")]
    CsumRange { start: u16, offset: u16, len: usize },
    #[error("segmentation type {0:#x} is unknown or was not negotiated")]
    GsoType(u8),
    #[error("segmentation without checksum offload or with gso_size 0")]
    GsoIncomplete,
    #[error("header length {hdr_len} is beyond the {len}-byte frame")]
    HdrLen { hdr_len: u16, len: usize },
}

/// Checks the header of a frame of `frame_len` bytes (after the header) a guest that
/// negotiated `features` wants to send.
pub fn check_tx(h: &VnetHdr, frame_len: usize, features: u64) -> Result<(), TxError> {
    let has = |f: u32| features & (1u64 << f) != 0;
    if !(MIN_FRAME..=MAX_FRAME).contains(&frame_len) {
        return Err(TxError::Length(frame_len));
    }
    if u32::from(h.flags) & !VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        return Err(TxError::Flags(h.flags));
    }
    let needs_csum = u32::from(h.flags) & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0;
    if needs_csum {
        if !has(VIRTIO_NET_F_CSUM) {
            return Err(TxError::CsumNotNegotiated);
        }
        let end = usize::from(h.csum_start) + usize::from(h.csum_offset) + 2;
        if end > frame_len {
            return Err(TxError::CsumRange {
                start: h.csum_start,
                offset: h.csum_offset,
                len: frame_len,
            });
        }
    }
    let ecn = u32::from(h.gso_type) & VIRTIO_NET_HDR_GSO_ECN != 0;
    let base = u32::from(h.gso_type) & !VIRTIO_NET_HDR_GSO_ECN;
    let allowed = match base {
        VIRTIO_NET_HDR_GSO_NONE => !ecn,
        VIRTIO_NET_HDR_GSO_TCPV4 => has(VIRTIO_NET_F_HOST_TSO4),
        VIRTIO_NET_HDR_GSO_TCPV6 => has(VIRTIO_NET_F_HOST_TSO6),
        _ => false,
    };
    if !allowed || (ecn && !has(VIRTIO_NET_F_HOST_ECN)) {
        return Err(TxError::GsoType(h.gso_type));
    }
    if base != VIRTIO_NET_HDR_GSO_NONE {
        if !needs_csum || h.gso_size == 0 {
            return Err(TxError::GsoIncomplete);
        }
        if usize::from(h.hdr_len) > frame_len {
            return Err(TxError::HdrLen {
                hdr_len: h.hdr_len,
                len: frame_len,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u64 = 1 << VIRTIO_NET_F_CSUM
        | 1 << VIRTIO_NET_F_HOST_TSO4
        | 1 << VIRTIO_NET_F_HOST_TSO6
        | 1 << VIRTIO_NET_F_HOST_ECN;

    fn tso4(len: u16) -> VnetHdr {
        VnetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4 as u8,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: len,
        }
    }

    #[test]
    fn parses_little_endian_fields() {
        let b = [1, 1, 54, 0, 0xa8, 5, 34, 0, 16, 0, 0, 0];
        assert_eq!(VnetHdr::parse(&b), Some(tso4(0)));
        assert_eq!(VnetHdr::parse(&b[..11]), None);
    }

    #[test]
    fn plain_and_offloaded_frames_pass() {
        assert_eq!(check_tx(&VnetHdr::default(), 60, 0), Ok(()));
        assert_eq!(check_tx(&tso4(0), 65000, ALL), Ok(()));
    }

    #[test]
    fn short_and_oversized_frames_are_refused() {
        assert_eq!(
            check_tx(&VnetHdr::default(), 13, 0),
            Err(TxError::Length(13))
        );
        assert!(check_tx(&VnetHdr::default(), MAX_FRAME + 1, ALL).is_err());
    }

    #[test]
    fn offloads_not_negotiated_are_refused() {
        assert_eq!(check_tx(&tso4(0), 9000, 0), Err(TxError::CsumNotNegotiated));
        let only_csum = 1 << VIRTIO_NET_F_CSUM;
        assert_eq!(
            check_tx(&tso4(0), 9000, only_csum),
            Err(TxError::GsoType(VIRTIO_NET_HDR_GSO_TCPV4 as u8))
        );
        let mut ecn = tso4(0);
        ecn.gso_type |= VIRTIO_NET_HDR_GSO_ECN as u8;
        let no_ecn = ALL & !(1 << VIRTIO_NET_F_HOST_ECN);
        assert!(check_tx(&ecn, 9000, no_ecn).is_err());
        let mut udp = tso4(0);
        udp.gso_type = 3;
        assert!(check_tx(&udp, 9000, ALL).is_err());
    }

    #[test]
    fn malformed_headers_are_refused() {
        let mut h = tso4(0);
        h.csum_start = 60;
        assert!(matches!(
            check_tx(&h, 70, ALL),
            Err(TxError::CsumRange { .. })
        ));
        let mut h = tso4(0);
        h.gso_size = 0;
        assert_eq!(check_tx(&h, 9000, ALL), Err(TxError::GsoIncomplete));
        let mut h = tso4(0);
        h.flags = 2;
        assert_eq!(check_tx(&h, 9000, ALL), Err(TxError::Flags(2)));
        let mut h = tso4(0);
        h.hdr_len = 9001;
        assert!(matches!(
            check_tx(&h, 9000, ALL),
            Err(TxError::HdrLen { .. })
        ));
    }
}
