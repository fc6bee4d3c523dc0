//! The virtio 1.x modern PCI transport.
//!
//! One 64-bit memory BAR (BAR 0) holds every structure, each in its own 4 KiB page:
//!
//! | offset   | structure                                   |
//! |----------|---------------------------------------------|
//! | 0x0000   | common configuration                        |
//! | 0x1000   | ISR status                                  |
//! | 0x2000   | device-specific configuration               |
//! | 0x3000   | notifications (queue *n* at `n * 4`)        |
//! | 0x4000   | MSI-X table                                 |
//! | 0x5000   | MSI-X pending-bit array                     |
//!
//! The vendor-specific capabilities in configuration space point at them. A notification write
//! only signals the queue's eventfd; the device's I/O thread does the work.

use std::sync::{Arc, Mutex, MutexGuard};

use tracing::{debug, warn};
use virtio_bindings::bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_F_VERSION_1,
};
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{VirtioDevice, VirtioState, ISR_CONFIG, NO_VECTOR};
use crate::pci::config::{BarKind, BarSpec, ConfigError, PciConfig, PciIds};
use crate::pci::msix::{MsiController, Msix, ENTRY_SIZE};
use crate::pci::root::PciDevice;

/// Structure offsets in BAR 0.
const COMMON_OFFSET: u64 = 0x0000;
const ISR_OFFSET: u64 = 0x1000;
const DEVICE_OFFSET: u64 = 0x2000;
const NOTIFY_OFFSET: u64 = 0x3000;
const MSIX_TABLE_OFFSET: u64 = 0x4000;
const MSIX_PBA_OFFSET: u64 = 0x5000;
const REGION_SIZE: u64 = 0x1000;
const BAR_SIZE: u64 = 0x8000;
/// Bytes between two queues' notification addresses.
const NOTIFY_MULTIPLIER: u32 = 4;
/// Size of the common configuration structure.
const COMMON_SIZE: u64 = 0x38;

/// Capability cfg_type values.
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
/// Vendor-specific capability ID.
const CAP_VENDOR: u8 = 0x09;

/// Most queues a device may have (one notification slot each in the notify page).
pub const MAX_QUEUES: usize = (REGION_SIZE / NOTIFY_MULTIPLIER as u64) as usize;
/// Vectors per device: one per queue plus the configuration vector, at most a table page.
const MAX_VECTORS: usize = (REGION_SIZE / ENTRY_SIZE) as usize;

/// Registers a queue's notification address with the accelerator (an ioeventfd under
/// `kvm`), so that guest writes signal the eventfd without an exit.
pub trait NotifyRegistrar: Send + Sync {
    fn register(&self, addr: u64, evt: &EventFd) -> std::io::Result<()>;
    fn unregister(&self, addr: u64, evt: &EventFd) -> std::io::Result<()>;
}

/// Errors building a virtio-pci device.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    #[error("virtio-pci: {0}")]
    Config(#[from] ConfigError),
    #[error("virtio-pci: {0} queues is more than the transport supports ({MAX_QUEUES})")]
    TooManyQueues(usize),
    #[error("virtio-pci: cannot create an eventfd or MSI-X vector: {0}")]
    Io(#[from] std::io::Error),
}

/// The parts the I/O thread needs: the shared state, the MSI-X state and the queue eventfds.
pub struct WorkerParts {
    pub state: Arc<Mutex<VirtioState>>,
    pub msix: Arc<Mutex<Msix>>,
    pub queue_evts: Vec<EventFd>,
}

/// A virtio device behind the modern PCI transport.
pub struct VirtioPci {
    config: PciConfig,
    state: Arc<Mutex<VirtioState>>,
    msix: Arc<Mutex<Msix>>,
    queue_evts: Vec<EventFd>,
    device_feature_select: u32,
    driver_feature_select: u32,
    queue_select: u16,
    registrar: Option<Arc<dyn NotifyRegistrar>>,
    /// Where BAR 0 decodes (for ioeventfd registration).
    bar_addr: Option<u64>,
}

fn vendor_cap(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    let mut c = vec![CAP_VENDOR, 0, 16 + extra.len() as u8, cfg_type, 0, 0, 0, 0];
    c.extend((offset as u32).to_le_bytes());
    c.extend((length as u32).to_le_bytes());
    c.extend(extra);
    c
}

impl VirtioPci {
    /// Wraps `device`; `class` is its PCI class code.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        class: u32,
        mem: vm_memory::GuestMemoryMmap,
        msi: &dyn MsiController,
        registrar: Option<Arc<dyn NotifyRegistrar>>,
    ) -> Result<(Self, WorkerParts), VirtioPciError> {
        let nq = device.queue_max_sizes().len();
        if nq > MAX_QUEUES || nq + 1 > MAX_VECTORS {
            return Err(VirtioPciError::TooManyQueues(nq));
        }
        let id = device.device_id();
        let mut config = PciConfig::new(PciIds {
            vendor: 0x1af4,
            device: 0x1040 + id as u16,
            revision: 1,
            class,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        });
        config.add_bar(BarSpec {
            index: 0,
            size: BAR_SIZE,
            kind: BarKind::Mem64,
            prefetchable: false,
        })?;
        let vectors = msi.vectors((nq + 1) as u16)?;
        let msix = Msix::new(
            vectors,
            &mut config,
            0,
            MSIX_TABLE_OFFSET as u32,
            MSIX_PBA_OFFSET as u32,
        )?;
        config.add_capability(
            &vendor_cap(CAP_COMMON, COMMON_OFFSET, REGION_SIZE, &[]),
            &[],
        )?;
        config.add_capability(&vendor_cap(CAP_ISR, ISR_OFFSET, REGION_SIZE, &[]), &[])?;
        config.add_capability(
            &vendor_cap(CAP_DEVICE, DEVICE_OFFSET, REGION_SIZE, &[]),
            &[],
        )?;
        config.add_capability(
            &vendor_cap(
                CAP_NOTIFY,
                NOTIFY_OFFSET,
                REGION_SIZE,
                &NOTIFY_MULTIPLIER.to_le_bytes(),
            ),
            &[],
        )?;
        let queue_evts = (0..nq)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()?;
        let worker_evts = queue_evts
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<Vec<_>, _>>()?;
        let state = Arc::new(Mutex::new(VirtioState::new(device, mem)));
        let msix = Arc::new(Mutex::new(msix));
        let parts = WorkerParts {
            state: state.clone(),
            msix: msix.clone(),
            queue_evts: worker_evts,
        };
        Ok((
            VirtioPci {
                config,
                state,
                msix,
                queue_evts,
                device_feature_select: 0,
                driver_feature_select: 0,
                queue_select: 0,
                registrar,
                bar_addr: None,
            },
            parts,
        ))
    }

    fn state(&self) -> MutexGuard<'_, VirtioState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn msix(&self) -> MutexGuard<'_, Msix> {
        self.msix.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The common configuration structure as bytes.
    fn common_bytes(&self) -> [u8; COMMON_SIZE as usize] {
        let st = self.state();
        let mut b = [0u8; COMMON_SIZE as usize];
        let put = |b: &mut [u8], off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
        let dev_features = st.device_features();
        let dfs = self.device_feature_select;
        let df = if dfs < 2 {
            (dev_features >> (32 * dfs)) as u32
        } else {
            0
        };
        put(&mut b, 0x00, &dfs.to_le_bytes());
        put(&mut b, 0x04, &df.to_le_bytes());
        put(&mut b, 0x08, &self.driver_feature_select.to_le_bytes());
        let drs = self.driver_feature_select;
        let drf = if drs < 2 {
            (st.driver_features >> (32 * drs)) as u32
        } else {
            0
        };
        put(&mut b, 0x0c, &drf.to_le_bytes());
        put(&mut b, 0x10, &st.config_vector.to_le_bytes());
        put(&mut b, 0x12, &(st.queues.len() as u16).to_le_bytes());
        b[0x14] = st.status;
        b[0x15] = st.config_generation;
        put(&mut b, 0x16, &self.queue_select.to_le_bytes());
        let qs = usize::from(self.queue_select);
        if let Some(q) = st.queues.get(qs) {
            put(&mut b, 0x18, &q.size().to_le_bytes());
            put(&mut b, 0x1a, &st.queue_vectors[qs].to_le_bytes());
            put(&mut b, 0x1c, &u16::from(q.ready()).to_le_bytes());
            put(&mut b, 0x1e, &self.queue_select.to_le_bytes());
            put(&mut b, 0x20, &q.desc_table().to_le_bytes());
            put(&mut b, 0x28, &q.avail_ring().to_le_bytes());
            put(&mut b, 0x30, &q.used_ring().to_le_bytes());
        }
        b
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        let mut v = [0u8; 8];
        let n = data.len().min(8);
        v[..n].copy_from_slice(&data[..n]);
        let val = u64::from_le_bytes(v);
        let (v16, v32) = (val as u16, val as u32);
        let qs = usize::from(self.queue_select);
        match (offset, data.len()) {
            (0x00, 4) => self.device_feature_select = v32,
            (0x08, 4) => self.driver_feature_select = v32,
            (0x0c, 4) => {
                let mut st = self.state();
                // Features are fixed once FEATURES_OK is set.
                if u32::from(st.status) & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
                    let shift = match self.driver_feature_select {
                        0 => 0,
                        1 => 32,
                        _ => return,
                    };
                    st.driver_features = (st.driver_features & !(0xffff_ffffu64 << shift))
                        | (u64::from(v32) << shift);
                }
            }
            (0x10, 2) => {
                let ok = v16 < self.msix().len();
                self.state().config_vector = if ok { v16 } else { NO_VECTOR };
            }
            (0x14, 1) => self.status_write(val as u8),
            (0x16, 2) => self.queue_select = v16,
            (0x18, 2) | (0x1a, 2) | (0x1c, 2) | (0x20..=0x37, 4) | (0x20 | 0x28 | 0x30, 8) => {
                let nvec = self.msix().len();
                let mut st = self.state();
                let st = &mut *st;
                let Some(q) = st.queues.get_mut(qs) else {
                    return;
                };
                if q.ready() && offset != 0x1a {
                    // The driver must not change an enabled queue.
                    return;
                }
                match offset {
                    0x18 => q.set_size(v16),
                    0x1a => st.queue_vectors[qs] = if v16 < nvec { v16 } else { NO_VECTOR },
                    0x1c => {
                        if v16 == 1 {
                            q.set_ready(true);
                        }
                    }
                    o => {
                        let (lo, hi) = if data.len() == 8 {
                            (Some(v32), Some((val >> 32) as u32))
                        } else if o % 8 == 0 {
                            (Some(v32), None)
                        } else {
                            (None, Some(v32))
                        };
                        match o & !7 {
                            0x20 => q.set_desc_table_address(lo, hi),
                            0x28 => q.set_avail_ring_address(lo, hi),
                            _ => q.set_used_ring_address(lo, hi),
                        }
                    }
                }
            }
            _ => debug!(
                offset,
                len = data.len(),
                "virtio common config write ignored"
            ),
        }
    }

    fn status_write(&mut self, new: u8) {
        let mut st = self.state();
        if new == 0 {
            st.reset();
            drop(st);
            self.device_feature_select = 0;
            self.driver_feature_select = 0;
            self.queue_select = 0;
            return;
        }
        let old = st.status;
        let mut new = new;
        let newly = |new: u8, bit: u32| u32::from(new) & bit != 0 && u32::from(old) & bit == 0;
        if newly(new, VIRTIO_CONFIG_S_FEATURES_OK) {
            let offered = st.device_features();
            let wanted = st.driver_features;
            if wanted & !offered != 0 || wanted & (1 << VIRTIO_F_VERSION_1) == 0 {
                warn!(
                    offered,
                    wanted, "virtio: driver features refused (unknown bits or no VERSION_1)"
                );
                new &= !(VIRTIO_CONFIG_S_FEATURES_OK as u8);
            } else {
                st.device.ack_features(wanted);
            }
        }
        if newly(new, VIRTIO_CONFIG_S_DRIVER_OK) {
            let event_idx = st.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
            let st_ref = &mut *st;
            let mut bad = false;
            for q in &mut st_ref.queues {
                q.set_event_idx(event_idx);
                if q.ready() && !q.is_valid(&st_ref.mem) {
                    bad = true;
                }
            }
            st.status = new;
            if bad {
                warn!("virtio: a queue enabled with an invalid layout; device needs reset");
                st.set_needs_reset();
                let v = st.config_vector;
                drop(st);
                self.msix().notify(v);
                return;
            }
            drop(st);
            // Buffers may already be waiting.
            for e in &self.queue_evts {
                let _ = e.write(1);
            }
            return;
        }
        st.status = new;
    }

    fn set_registrations(&self, addr: Option<u64>, register: bool) {
        let (Some(r), Some(base)) = (&self.registrar, addr) else {
            return;
        };
        for (i, e) in self.queue_evts.iter().enumerate() {
            let a = base + NOTIFY_OFFSET + i as u64 * u64::from(NOTIFY_MULTIPLIER);
            let res = if register {
                r.register(a, e)
            } else {
                r.unregister(a, e)
            };
            if let Err(err) = res {
                warn!(queue = i, "ioeventfd (un)registration failed: {err}");
            }
        }
    }
}

impl PciDevice for VirtioPci {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        let config = &self.config;
        self.msix
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .config_written(config);
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != 0 {
            return;
        }
        let region = offset / REGION_SIZE * REGION_SIZE;
        let off = offset - region;
        if off + data.len() as u64 > REGION_SIZE {
            return;
        }
        match region {
            COMMON_OFFSET => {
                super::read_config_bytes(&self.common_bytes(), off, data);
            }
            // Reading the ISR clears it.
            ISR_OFFSET if off == 0 => {
                let mut st = self.state();
                data[0] = st.isr;
                st.isr = 0;
            }
            DEVICE_OFFSET => self.state().device.read_config(off, data),
            MSIX_TABLE_OFFSET => self.msix().table_read(off, data),
            MSIX_PBA_OFFSET => self.msix().pba_read(off, data),
            _ => {}
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != 0 {
            return;
        }
        let region = offset / REGION_SIZE * REGION_SIZE;
        let off = offset - region;
        if off + data.len() as u64 > REGION_SIZE {
            return;
        }
        match region {
            COMMON_OFFSET => self.common_write(off, data),
            DEVICE_OFFSET => {
                let mut st = self.state();
                st.device.write_config(off, data);
                st.config_generation = st.config_generation.wrapping_add(1);
            }
            NOTIFY_OFFSET => {
                let q = (off / u64::from(NOTIFY_MULTIPLIER)) as usize;
                if let Some(e) = self.queue_evts.get(q) {
                    let _ = e.write(1);
                }
            }
            MSIX_TABLE_OFFSET => self.msix().table_write(off, data),
            _ => {}
        }
    }

    fn bar_moved(&mut self, bar: usize, addr: Option<u64>) {
        if bar != 0 || addr == self.bar_addr {
            return;
        }
        self.set_registrations(self.bar_addr, false);
        self.bar_addr = addr;
        self.set_registrations(addr, true);
    }
}

/// Sends the configuration-change interrupt of a device (ISR bit and config vector).
pub fn notify_config(state: &mut VirtioState, msix: &Mutex<Msix>) {
    state.isr |= ISR_CONFIG;
    let v = state.config_vector;
    msix.lock().unwrap_or_else(|e| e.into_inner()).notify(v);
}

#[cfg(test)]
#[path = "pci_tests.rs"]
mod tests;
