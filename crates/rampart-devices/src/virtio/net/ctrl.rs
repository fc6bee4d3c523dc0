//! The control queue: receive-mode switches (`VIRTIO_NET_CTRL_RX`) and MAC filter tables
//! (`VIRTIO_NET_CTRL_MAC`). Each command's readable part is parsed from a bounded copy; an
//! unknown, unsupported or malformed command is answered `VIRTIO_NET_ERR` and changes nothing.

use rampart_config::control::RxFilter;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET, VIRTIO_NET_CTRL_MAC_TABLE_SET,
    VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_ALLMULTI, VIRTIO_NET_CTRL_RX_ALLUNI,
    VIRTIO_NET_CTRL_RX_PROMISC, VIRTIO_NET_ERR, VIRTIO_NET_OK,
};

/// Most MAC addresses kept per table (as QEMU: more sets the table's overflow flag).
pub const MAC_TABLE_ENTRIES: usize = 64;
/// Largest command read from the guest: two full tables fit easily.
pub const MAX_COMMAND: usize = 4096;

/// The result of one control command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtrlResult {
    /// VIRTIO_NET_OK or VIRTIO_NET_ERR.
    pub ack: u8,
    /// The receive filter changed (NIC_RX_FILTER_CHANGED).
    pub changed: bool,
}

const ERR: CtrlResult = CtrlResult {
    ack: VIRTIO_NET_ERR as u8,
    changed: false,
};
const OK: CtrlResult = CtrlResult {
    ack: VIRTIO_NET_OK as u8,
    changed: true,
};

/// Parses one MAC table (`u32 entries` then `entries × 6` bytes) from the start of `b`;
/// returns the table (or `None` on overflow) and the bytes it took.
fn mac_table(b: &[u8]) -> Option<(Option<Vec<[u8; 6]>>, usize)> {
    let n = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let len = n.checked_mul(6)?.checked_add(4)?;
    let body = b.get(4..len)?;
    if n > MAC_TABLE_ENTRIES {
        return Some((None, len));
    }
    let table = body
        .chunks_exact(6)
        .map(|c| [c[0], c[1], c[2], c[3], c[4], c[5]])
        .collect();
    Some((Some(table), len))
}

/// Runs the command in `cmd` (class, command, data) against `filter`.
pub fn run(cmd: &[u8], filter: &mut RxFilter) -> CtrlResult {
    let (Some(&class), Some(&code)) = (cmd.first(), cmd.get(1)) else {
        return ERR;
    };
    let data = &cmd[2..];
    match (u32::from(class), u32::from(code)) {
        (VIRTIO_NET_CTRL_RX, c) => {
            if data.len() != 1 {
                return ERR;
            }
            let on = data[0] != 0;
            match c {
                VIRTIO_NET_CTRL_RX_PROMISC => filter.promiscuous = on,
                VIRTIO_NET_CTRL_RX_ALLMULTI => filter.all_multi = on,
                VIRTIO_NET_CTRL_RX_ALLUNI => filter.all_uni = on,
                // NOMULTI/NOUNI/NOBCAST need VIRTIO_NET_F_CTRL_RX_EXTRA, not offered.
                _ => return ERR,
            }
            OK
        }
        (VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET) => {
            let Ok(mac) = <[u8; 6]>::try_from(data) else {
                return ERR;
            };
            filter.main_mac = mac;
            OK
        }
        (VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET) => {
            let Some((uni, used)) = mac_table(data) else {
                return ERR;
            };
            let Some((multi, used2)) = mac_table(&data[used..]) else {
                return ERR;
            };
            if used + used2 != data.len() {
                return ERR;
            }
            filter.unicast_overflow = uni.is_none();
            filter.unicast_table = uni.unwrap_or_default();
            filter.multicast_overflow = multi.is_none();
            filter.multicast_table = multi.unwrap_or_default();
            OK
        }
        _ => ERR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn table(macs: &[[u8; 6]]) -> Vec<u8> {
        let mut v = (macs.len() as u32).to_le_bytes().to_vec();
        for m in macs {
            v.extend(m);
        }
        v
    }

    #[test]
    fn rx_mode_switches_change_the_filter() {
        let mut f = RxFilter::reset(MAC);
        assert_eq!(run(&[0, 0, 0], &mut f), OK);
        assert!(!f.promiscuous);
        assert_eq!(run(&[0, 1, 1], &mut f), OK);
        assert!(f.all_multi);
        // NOBCAST needs CTRL_RX_EXTRA; a missing or long data byte is an error.
        assert_eq!(run(&[0, 5, 1], &mut f), ERR);
        assert_eq!(run(&[0, 0], &mut f), ERR);
        assert_eq!(run(&[0, 0, 1, 1], &mut f), ERR);
        assert_eq!(run(&[], &mut f), ERR);
    }

    #[test]
    fn mac_tables_are_parsed_and_bounded() {
        let mut f = RxFilter::reset(MAC);
        let mc = [0x33, 0x33, 0, 0, 0, 1];
        let mut cmd = vec![1, 0];
        cmd.extend(table(&[]));
        cmd.extend(table(&[mc]));
        assert_eq!(run(&cmd, &mut f), OK);
        assert_eq!(f.multicast_table, vec![mc]);
        // 65 unicast entries overflow; the multicast table still applies.
        let mut cmd = vec![1, 0];
        cmd.extend(table(&[[2; 6]; 65]));
        cmd.extend(table(&[]));
        assert_eq!(run(&cmd, &mut f), OK);
        assert!(f.unicast_overflow && f.unicast_table.is_empty());
        assert!(f.multicast_table.is_empty());
        // A count larger than the data, or trailing bytes, is refused.
        let mut bad = vec![1, 0];
        bad.extend(1000u32.to_le_bytes());
        assert_eq!(run(&bad, &mut f), ERR);
        let mut bad = vec![1, 0];
        bad.extend(table(&[]));
        bad.extend(table(&[]));
        bad.push(9);
        assert_eq!(run(&bad, &mut f), ERR);
        let mut huge = vec![1, 0];
        huge.extend(u32::MAX.to_le_bytes());
        assert_eq!(run(&huge, &mut f), ERR);
    }

    #[test]
    fn filter_follows_the_guest_settings() {
        let mut f = RxFilter::reset(MAC);
        let other = [0x52, 0x54, 0, 0, 0, 9];
        assert!(f.accepts(&other));
        run(&[0, 0, 0], &mut f);
        assert!(!f.accepts(&other));
        assert!(f.accepts(&MAC));
        assert!(f.accepts(&[0xff; 6]));
        assert!(!f.accepts(&[0x33, 0x33, 0, 0, 0, 1]));
        run(&[1, 1, 0x52, 0x54, 0, 0, 0, 9], &mut f);
        assert!(f.accepts(&other) && !f.accepts(&MAC));
    }
}
