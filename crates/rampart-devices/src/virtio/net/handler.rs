//! Queue processing of virtio-net: receive (tap → guest buffers, merged across chains with
//! VIRTIO_NET_F_MRG_RXBUF), transmit (guest chains → checked header → tap) and control
//! commands. Each call does a bounded amount of work and asks to be called again for the rest,
//! so a flood in either direction cannot starve the other or the rest of the VM.

use std::io::{Read, Write};
use std::num::Wrapping;
use std::sync::atomic::Ordering;

use tracing::debug;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_HDR_F_DATA_VALID,
};
use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use super::ctrl;
use super::device::{Net, RX, TX};
use super::header::{check_tx, VnetHdr, HDR_LEN};
use super::tx::gather;
use crate::virtio::QueueError;

/// Frames handled per call in each direction before other events get a turn.
pub const BUDGET: usize = 256;

fn used_err(e: virtio_queue::Error) -> QueueError {
    QueueError::Used(e.to_string())
}

/// Whether the driver has made buffers available that we have not taken.
fn has_buffers(queue: &Queue, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
    Ok(queue.avail_idx(mem, Ordering::Acquire)? != Wrapping(queue.next_avail()))
}

/// Returns the chains taken for a frame that is dropped, empty.
fn give_back(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    writers: Vec<(u16, Writer<'_, ()>)>,
) -> Result<Delivery, QueueError> {
    for (head, _) in writers {
        queue.add_used(mem, head, 0).map_err(used_err)?;
    }
    Ok(Delivery::Dropped)
}

/// What happened to one received frame.
enum Delivery {
    Delivered,
    /// Not enough buffers yet: keep the frame.
    NoBuffers,
    /// The buffers the guest gives can never hold it: dropped.
    Dropped,
}

impl Net {
    /// Moves frames from the tap into the receive queue.
    pub(super) fn rx(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        self.rx_blocked = false;
        let mut used = false;
        for _ in 0..BUDGET {
            let len = match self.rx_pending {
                Some(n) => n,
                None => {
                    if self.link_up && !has_buffers(queue, mem)? {
                        self.rx_blocked = true;
                        return Ok(used);
                    }
                    if self.link_up && !self.rx_limit.allow() {
                        return Ok(used);
                    }
                    match self.backend.recv(&mut self.rx_buf) {
                        Ok(n) if n >= HDR_LEN + 14 => n,
                        Ok(n) => {
                            debug!("virtio-net: dropping a {n}-byte frame from the tap");
                            continue;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(used),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            debug!("virtio-net: tap read failed: {e}");
                            return Ok(used);
                        }
                    }
                }
            };
            // Link down: frames are dropped, as QEMU does.
            let dst: [u8; 6] = self.rx_buf[HDR_LEN..HDR_LEN + 6]
                .try_into()
                .unwrap_or([0; 6]);
            if !self.link_up || !self.filter.accepts(&dst) {
                self.rx_pending = None;
                continue;
            }
            match self.deliver(queue, mem, len)? {
                Delivery::Delivered => {
                    used = true;
                    self.rx_pending = None;
                    self.rx_limit.take(len - HDR_LEN);
                }
                Delivery::Dropped => {
                    used = true;
                    self.rx_pending = None;
                }
                Delivery::NoBuffers => {
                    self.rx_pending = Some(len);
                    self.rx_blocked = true;
                    return Ok(used);
                }
            }
        }
        // Budget spent: the tap may hold more, and its edge-triggered event will not repeat.
        self.kick_later(RX);
        Ok(used)
    }

    /// Copies the frame in `rx_buf[..len]` into one chain, or with mergeable buffers as many
    /// as it needs, writing `num_buffers` into the header. Takes at most a queue's worth of
    /// chains, however fast the guest adds them; a chain that cannot be used (outside guest
    /// memory) is returned empty, and one met after others were taken drops the frame (the
    /// taken ones are returned too: every chain taken is used exactly once).
    fn deliver(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        len: usize,
    ) -> Result<Delivery, QueueError> {
        let mrg = self.has(VIRTIO_NET_F_MRG_RXBUF);
        // Where to rewind to when buffers run out: past any unusable chains already returned.
        let mut start = queue.next_avail();
        let mut writers: Vec<(u16, Writer<'_, ()>)> = Vec::new();
        // The chains of `writers`, to report the buffers written.
        let mut chains = Vec::new();
        let mut capacity = 0usize;
        let mut taken = 0usize;
        while capacity < len {
            if taken >= usize::from(queue.size()) {
                // The whole ring cannot hold it: give the buffers back empty.
                return give_back(queue, mem, writers);
            }
            let Some(chain) = queue.iter(mem)?.next() else {
                queue.set_next_avail(start);
                return Ok(Delivery::NoBuffers);
            };
            taken += 1;
            let head = chain.head_index();
            let buffers = chain.clone();
            match Writer::new(mem, chain) {
                Ok(w) => {
                    capacity += w.available_bytes();
                    writers.push((head, w));
                    chains.push(buffers);
                }
                Err(e) => {
                    debug!("virtio-net: unusable receive buffer: {e}");
                    queue.add_used(mem, head, 0).map_err(used_err)?;
                    if !writers.is_empty() {
                        return give_back(queue, mem, writers);
                    }
                    start = queue.next_avail();
                    continue;
                }
            }
            if !mrg {
                break;
            }
        }
        if capacity < len || writers.is_empty() {
            // Without mergeable buffers one chain must hold the frame; this one cannot.
            return give_back(queue, mem, writers);
        }
        let frame = &mut self.rx_buf[..len];
        let n = writers.len() as u16;
        frame[10..12].copy_from_slice(&n.to_le_bytes());
        if self.acked & (1u64 << VIRTIO_NET_F_GUEST_CSUM) == 0 {
            frame[0] &= !(VIRTIO_NET_HDR_F_DATA_VALID as u8);
        }
        let mut rest: &[u8] = frame;
        let mut done = Vec::with_capacity(writers.len());
        for (head, mut w) in writers {
            let take = w.available_bytes().min(rest.len());
            let ok = w.write_all(&rest[..take]).is_ok();
            rest = &rest[take..];
            done.push((head, if ok { take as u32 } else { 0 }));
        }
        for c in &chains {
            crate::virtio::report_writes(self.guest_writes.as_ref(), c);
        }
        for (head, n) in done {
            queue.add_used(mem, head, n).map_err(used_err)?;
        }
        Ok(Delivery::Delivered)
    }

    /// Sends the guest's frames to the tap.
    pub(super) fn tx(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        self.tx_stopped = false;
        let mut used = false;
        for _ in 0..BUDGET {
            if !has_buffers(queue, mem)? {
                return Ok(used);
            }
            if self.link_up && !self.tx_limit.allow() {
                self.tx_stopped = true;
                return Ok(used);
            }
            let Some(chain) = queue.iter(mem)?.next() else {
                return Ok(used);
            };
            let head = chain.head_index();
            let sent = self.send_chain(mem, chain);
            if let Some(n) = sent {
                self.tx_limit.take(n);
            }
            queue.add_used(mem, head, 0).map_err(used_err)?;
            used = true;
        }
        self.tx_stopped = true;
        self.kick_later(TX);
        Ok(used)
    }

    /// Checks and sends one chain (from guest memory in place, see [`super::tx`]); returns
    /// the frame's length if it went out.
    fn send_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    ) -> Option<usize> {
        let mut g = match gather(mem, chain, &mut self.tx_buf) {
            Ok(g) => g,
            Err(e) => {
                debug!("virtio-net: dropping {e}");
                return None;
            }
        };
        let hdr = VnetHdr::parse(&g.hdr)?;
        if let Err(e) = check_tx(&hdr, g.len, self.acked) {
            debug!("virtio-net: dropping a transmitted frame: {e}");
            return None;
        }
        if !self.link_up {
            return None;
        }
        // num_buffers means nothing on transmit.
        g.hdr[10..12].fill(0);
        let sent = if g.copied {
            let mut frame = Vec::with_capacity(HDR_LEN + self.tx_buf.len());
            frame.extend_from_slice(&g.hdr);
            frame.extend_from_slice(&self.tx_buf);
            self.backend.send(&frame)
        } else {
            self.backend.send_gathered(&g.hdr, &g.pieces[..g.count])
        };
        match sent {
            Ok(()) => Some(g.len),
            Err(e) => {
                debug!("virtio-net: tap write failed: {e}");
                None
            }
        }
    }

    /// Runs the control commands.
    pub(super) fn ctrl(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        let mut used = false;
        let mut changed = false;
        while let Some(chain) = queue.iter(mem)?.next() {
            let head = chain.head_index();
            let mut written = 0;
            let chain2 = chain.clone();
            let buffers = chain.clone();
            if let (Ok(mut r), Ok(mut w)) = (
                Reader::<()>::new(mem, chain),
                Writer::<()>::new(mem, chain2),
            ) {
                let n = r.available_bytes();
                let result = if (2..=ctrl::MAX_COMMAND).contains(&n) {
                    let mut cmd = vec![0u8; n];
                    match r.read_exact(&mut cmd) {
                        Ok(()) => ctrl::run(&cmd, &mut self.filter),
                        Err(_) => ctrl::CtrlResult {
                            ack: 1,
                            changed: false,
                        },
                    }
                } else {
                    ctrl::CtrlResult {
                        ack: 1,
                        changed: false,
                    }
                };
                changed |= result.changed;
                if w.available_bytes() >= 1 && w.write_all(&[result.ack]).is_ok() {
                    written = 1;
                }
            }
            crate::virtio::report_writes(self.guest_writes.as_ref(), &buffers);
            queue.add_used(mem, head, written).map_err(used_err)?;
            used = true;
        }
        if changed {
            self.handle.filter_changed(&self.filter);
        }
        Ok(used)
    }
}
