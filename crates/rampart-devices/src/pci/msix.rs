//! MSI-X: the capability, the vector table and the pending-bit array (PBA).
//!
//! The table and PBA live in a BAR; the guest programs an address/data pair per vector and
//! masks vectors individually or all at once (function mask). A device asks for an interrupt
//! with [`Msix::notify`]: an unmasked vector is sent through its [`MsiVector`], a masked one
//! sets its pending bit and is sent when unmasked. With MSI-X disabled nothing is sent (the
//! device has no INTx pin), so a guest that turns MSI-X off simply gets no interrupts.

use std::io;

use tracing::warn;

use super::config::{ConfigError, PciConfig};

/// The MSI-X capability ID.
const CAP_ID_MSIX: u8 = 0x11;
/// Message control bits.
const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Bytes per table entry.
pub const ENTRY_SIZE: u64 = 16;
/// Vector-control bit 0: the vector is masked.
const VECTOR_MASKED: u32 = 1;
/// Most vectors a function may have (the table-size field is 11 bits).
pub const MAX_VECTORS: u16 = 2048;

/// An MSI message: what the guest programmed into a table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// How one vector reaches the interrupt controller: a KVM route + irqfd, or the emulated
/// local APICs.
pub trait MsiVector: Send + Sync {
    /// The guest changed the vector's message or masked it (`None`).
    fn configure(&self, msg: Option<MsiMessage>) -> io::Result<()>;
    /// Sends `msg` (the vector's current, unmasked message).
    fn trigger(&self, msg: MsiMessage) -> io::Result<()>;
}

/// Creates the vectors of a device.
pub trait MsiController: Send + Sync {
    fn vectors(&self, count: u16) -> io::Result<Vec<Box<dyn MsiVector>>>;
}

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    address: u64,
    data: u32,
    control: u32,
}

/// The MSI-X state of one function.
pub struct Msix {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    vectors: Vec<Box<dyn MsiVector>>,
    enabled: bool,
    function_masked: bool,
    cap_offset: usize,
}

impl Msix {
    /// `vectors.len()` vectors (1..=2048); adds the capability to `config`, with the table at
    /// `table_offset` and the PBA at `pba_offset` of BAR `bar`.
    pub fn new(
        vectors: Vec<Box<dyn MsiVector>>,
        config: &mut PciConfig,
        bar: u8,
        table_offset: u32,
        pba_offset: u32,
    ) -> Result<Self, ConfigError> {
        let n = vectors.len().clamp(1, usize::from(MAX_VECTORS));
        let mut body = vec![CAP_ID_MSIX, 0];
        body.extend(((n - 1) as u16).to_le_bytes());
        body.extend((table_offset | u32::from(bar)).to_le_bytes());
        body.extend((pba_offset | u32::from(bar)).to_le_bytes());
        let mut mask = vec![0u8; body.len()];
        mask[3] = 0xc0; // enable and function mask
        let cap_offset = config.add_capability(&body, &mask)?;
        let mut entries = vec![Entry::default(); n];
        for e in &mut entries {
            e.control = VECTOR_MASKED;
        }
        Ok(Msix {
            entries,
            pending: vec![false; n],
            vectors,
            enabled: false,
            function_masked: false,
            cap_offset,
        })
    }

    /// Number of vectors.
    pub fn len(&self) -> u16 {
        self.entries.len() as u16
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of table the BAR must hold.
    pub fn table_size(&self) -> u64 {
        self.entries.len() as u64 * ENTRY_SIZE
    }

    /// Bytes of PBA the BAR must hold.
    pub fn pba_size(&self) -> u64 {
        (self.entries.len() as u64).div_ceil(64) * 8
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Call after every guest write to configuration space: picks up the enable and function
    /// mask bits.
    pub fn config_written(&mut self, config: &PciConfig) {
        let control = config.u16_at(self.cap_offset + 2);
        let was_active = self.enabled && !self.function_masked;
        self.enabled = control & CONTROL_ENABLE != 0;
        self.function_masked = control & CONTROL_FUNCTION_MASK != 0;
        if was_active != (self.enabled && !self.function_masked) {
            for v in 0..self.entries.len() {
                self.reconfigure(v);
            }
        }
    }

    fn masked(&self, v: usize) -> bool {
        !self.enabled || self.function_masked || self.entries[v].control & VECTOR_MASKED != 0
    }

    fn message(&self, v: usize) -> MsiMessage {
        MsiMessage {
            address: self.entries[v].address,
            data: self.entries[v].data,
        }
    }

    /// Tells the vector's route about a change and sends a pending message it unmasked.
    fn reconfigure(&mut self, v: usize) {
        let masked = self.masked(v);
        let msg = (!masked).then(|| self.message(v));
        if let Some(vec) = self.vectors.get(v) {
            if let Err(e) = vec.configure(msg) {
                warn!(vector = v, "MSI-X route update failed: {e}");
            }
        }
        if !masked && self.pending[v] {
            self.pending[v] = false;
            self.send(v);
        }
    }

    fn send(&self, v: usize) {
        if let Some(vec) = self.vectors.get(v) {
            if let Err(e) = vec.trigger(self.message(v)) {
                warn!(vector = v, "MSI-X interrupt not delivered: {e}");
            }
        }
    }

    /// The device signals vector `vector`. Out-of-range vectors (including virtio's
    /// NO_VECTOR, 0xffff) are ignored.
    pub fn notify(&mut self, vector: u16) {
        let v = usize::from(vector);
        if v >= self.entries.len() {
            return;
        }
        if !self.enabled {
            // No INTx fallback: nothing to send and nothing to remember.
            return;
        }
        if self.masked(v) {
            self.pending[v] = true;
        } else {
            self.send(v);
        }
    }

    /// A read of the table at `offset`.
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        for (i, b) in data.iter_mut().enumerate() {
            let Some(o) = offset.checked_add(i as u64) else {
                continue;
            };
            let Some(e) = self.entries.get((o / ENTRY_SIZE) as usize) else {
                continue;
            };
            let field = match (o % ENTRY_SIZE) / 4 {
                0 => e.address as u32,
                1 => (e.address >> 32) as u32,
                2 => e.data,
                _ => e.control,
            };
            *b = (field >> ((o % 4) * 8)) as u8;
        }
    }

    /// A write to the table at `offset`.
    pub fn table_write(&mut self, offset: u64, data: &[u8]) {
        let mut touched = Vec::new();
        for (i, &b) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i as u64) else {
                continue;
            };
            let idx = (o / ENTRY_SIZE) as usize;
            let Some(e) = self.entries.get_mut(idx) else {
                continue;
            };
            let shift = (o % 4) * 8;
            let set = |field: u32| (field & !(0xff << shift)) | (u32::from(b) << shift);
            match (o % ENTRY_SIZE) / 4 {
                0 => e.address = (e.address & !0xffff_ffff) | u64::from(set(e.address as u32)),
                1 => {
                    e.address =
                        (e.address & 0xffff_ffff) | (u64::from(set((e.address >> 32) as u32)) << 32)
                }
                2 => e.data = set(e.data),
                // Only the mask bit of vector control is writable.
                _ => e.control = set(e.control) & VECTOR_MASKED,
            }
            if touched.last() != Some(&idx) {
                touched.push(idx);
            }
        }
        for idx in touched {
            self.reconfigure(idx);
        }
    }

    /// A read of the PBA at `offset`; writes to the PBA are ignored (it is read-only).
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = 0;
            let Some(o) = offset.checked_add(i as u64) else {
                continue;
            };
            for bit in 0..8u64 {
                let v = o.saturating_mul(8).saturating_add(bit);
                if self.pending.get(v as usize).copied().unwrap_or(false) {
                    *b |= 1 << bit;
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::sync::{Arc, Mutex};

    use super::*;

    type Log<T> = Arc<Mutex<Vec<(usize, T)>>>;

    /// Records every message sent and every route change.
    #[derive(Default, Clone)]
    pub struct Recorder {
        pub sent: Log<MsiMessage>,
        pub routes: Log<Option<MsiMessage>>,
    }

    struct RecordingVector(usize, Recorder);

    impl MsiVector for RecordingVector {
        fn configure(&self, msg: Option<MsiMessage>) -> io::Result<()> {
            self.1.routes.lock().unwrap().push((self.0, msg));
            Ok(())
        }
        fn trigger(&self, msg: MsiMessage) -> io::Result<()> {
            self.1.sent.lock().unwrap().push((self.0, msg));
            Ok(())
        }
    }

    impl MsiController for Recorder {
        fn vectors(&self, count: u16) -> io::Result<Vec<Box<dyn MsiVector>>> {
            Ok((0..usize::from(count))
                .map(|i| Box::new(RecordingVector(i, self.clone())) as Box<dyn MsiVector>)
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::Recorder;
    use super::*;
    use crate::pci::config::PciIds;

    fn setup(n: u16) -> (Msix, PciConfig, Recorder) {
        let mut config = PciConfig::new(PciIds {
            vendor: 1,
            device: 2,
            revision: 0,
            class: 0,
            subsystem_vendor: 0,
            subsystem: 0,
        });
        let rec = Recorder::default();
        let msix = Msix::new(rec.vectors(n).unwrap(), &mut config, 4, 0x1000, 0x2000).unwrap();
        (msix, config, rec)
    }

    fn enable(msix: &mut Msix, config: &mut PciConfig, control: u16) {
        let off = msix.cap_offset + 2;
        config.write(off, &control.to_le_bytes());
        msix.config_written(config);
    }

    fn program(msix: &mut Msix, v: u64, addr: u64, data: u32, masked: bool) {
        let base = v * ENTRY_SIZE;
        msix.table_write(base, &(addr as u32).to_le_bytes());
        msix.table_write(base + 4, &((addr >> 32) as u32).to_le_bytes());
        msix.table_write(base + 8, &data.to_le_bytes());
        msix.table_write(base + 12, &u32::from(masked).to_le_bytes());
    }

    #[test]
    fn capability_describes_table_and_pba() {
        let (msix, config, _) = setup(3);
        let off = msix.cap_offset;
        assert_eq!(config.u16_at(off) & 0xff, 0x11);
        assert_eq!(config.u16_at(off + 2), 2);
        assert_eq!(config.u32_at(off + 4), 0x1004);
        assert_eq!(config.u32_at(off + 8), 0x2004);
    }

    #[test]
    fn unmasked_vector_sends_its_message() {
        // Arrange
        let (mut msix, mut config, rec) = setup(2);
        program(&mut msix, 1, 0xfee0_1000, 0x41, false);
        enable(&mut msix, &mut config, CONTROL_ENABLE);
        // Act
        msix.notify(1);
        // Assert
        let msg = MsiMessage {
            address: 0xfee0_1000,
            data: 0x41,
        };
        assert_eq!(*rec.sent.lock().unwrap(), vec![(1, msg)]);
    }

    #[test]
    fn masked_vector_is_pending_until_unmasked() {
        // Arrange
        let (mut msix, mut config, rec) = setup(2);
        program(&mut msix, 0, 0xfee0_0000, 0x30, true);
        enable(&mut msix, &mut config, CONTROL_ENABLE);
        // Act
        msix.notify(0);
        let mut pba = [0u8; 8];
        msix.pba_read(0, &mut pba);
        // Assert
        assert_eq!(pba[0], 1);
        assert!(rec.sent.lock().unwrap().is_empty());
        msix.table_write(12, &0u32.to_le_bytes());
        assert_eq!(rec.sent.lock().unwrap().len(), 1);
        msix.pba_read(0, &mut pba);
        assert_eq!(pba[0], 0);
    }

    #[test]
    fn function_mask_holds_every_vector() {
        let (mut msix, mut config, rec) = setup(1);
        program(&mut msix, 0, 0xfee0_0000, 0x30, false);
        enable(
            &mut msix,
            &mut config,
            CONTROL_ENABLE | CONTROL_FUNCTION_MASK,
        );
        msix.notify(0);
        assert!(rec.sent.lock().unwrap().is_empty());
        enable(&mut msix, &mut config, CONTROL_ENABLE);
        assert_eq!(rec.sent.lock().unwrap().len(), 1);
    }

    #[test]
    fn disabled_msix_sends_nothing_and_out_of_range_vectors_are_ignored() {
        let (mut msix, mut config, rec) = setup(1);
        program(&mut msix, 0, 0xfee0_0000, 0x30, false);
        msix.notify(0);
        enable(&mut msix, &mut config, CONTROL_ENABLE);
        msix.notify(0xffff);
        msix.notify(1);
        assert!(rec.sent.lock().unwrap().is_empty());
    }

    #[test]
    fn table_accesses_past_the_end_are_harmless() {
        let (mut msix, _, _) = setup(1);
        msix.table_write(u64::MAX - 2, &[0xff; 8]);
        msix.table_write(16, &[0xff; 8]);
        let mut b = [0xaa; 8];
        msix.table_read(16, &mut b);
        assert_eq!(b, [0; 8]);
        msix.table_read(12, &mut b[..4]);
        assert_eq!(&b[..4], &[1, 0, 0, 0]);
    }

    #[test]
    fn route_changes_follow_mask_state() {
        let (mut msix, mut config, rec) = setup(1);
        enable(&mut msix, &mut config, CONTROL_ENABLE);
        program(&mut msix, 0, 0xfee0_0000, 0x31, false);
        let routes = rec.routes.lock().unwrap().clone();
        let last = routes.last().unwrap();
        assert_eq!(
            last.1,
            Some(MsiMessage {
                address: 0xfee0_0000,
                data: 0x31
            })
        );
        enable(&mut msix, &mut config, 0);
        assert_eq!(rec.routes.lock().unwrap().last().unwrap().1, None);
    }
}
