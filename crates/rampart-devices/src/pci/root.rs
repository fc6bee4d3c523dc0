//! The PCI root bus: a host bridge at 00:00.0 and endpoint devices, reached through
//! configuration mechanism #1 (ports 0xCF8/0xCFC) and ECAM (MMCONFIG).
//!
//! Only bus 0, function 0 of each slot exists; every other address reads as all ones (no
//! device). When the guest moves a BAR or toggles memory decoding, the BAR's range on the
//! MMIO bus follows.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tracing::{debug, warn};

use super::config::{BarKind, PciConfig, PciIds, BAR_COUNT, COMMAND_MEMORY, EXTENDED_CONFIG_SIZE};
use crate::bus::{Bus, BusDevice};

/// Slots on bus 0.
pub const SLOTS: usize = 32;

/// A PCI function as the root bus sees it.
pub trait PciDevice: Send {
    /// The configuration space.
    fn config(&self) -> &PciConfig;
    /// A guest write to configuration space (through the write mask; devices with
    /// capabilities that hold state react to it here).
    fn config_write(&mut self, offset: usize, data: &[u8]);
    /// Accesses to BAR `bar` at `offset` from its start.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// BAR `bar` now decodes at `addr` (`None`: not at all). Devices that register
    /// notification addresses with the accelerator (ioeventfd) follow it here.
    fn bar_moved(&mut self, _bar: usize, _addr: Option<u64>) {}
}

/// Errors adding devices.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    #[error("no free PCI slot on bus 0 (at most {SLOTS} devices)")]
    NoSlot,
    #[error("the {window} PCI MMIO window is full: cannot place a {size:#x}-byte BAR")]
    WindowFull { window: &'static str, size: u64 },
}

/// A bump allocator for one MMIO window.
#[derive(Debug, Clone)]
pub struct Window {
    name: &'static str,
    next: u64,
    end: u64,
}

impl Window {
    pub fn new(name: &'static str, start: u64, size: u64) -> Self {
        Window {
            name,
            next: start,
            end: start.saturating_add(size),
        }
    }

    /// Allocates `size` bytes aligned to `size` (a power of two).
    pub fn allocate(&mut self, size: u64) -> Result<u64, PciError> {
        let full = || PciError::WindowFull {
            window: self.name,
            size,
        };
        let addr = self
            .next
            .checked_next_multiple_of(size.max(1))
            .ok_or_else(full)?;
        let end = addr
            .checked_add(size)
            .filter(|e| *e <= self.end)
            .ok_or_else(full)?;
        self.next = end;
        Ok(addr)
    }
}

/// The BAR windows devices are placed in.
pub struct BarAllocator {
    pub mem32: Window,
    pub mem64: Window,
}

/// The host bridge at 00:00.0: identity only.
struct HostBridge(PciConfig);

impl PciDevice for HostBridge {
    fn config(&self) -> &PciConfig {
        &self.0
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.0.write(offset, data);
    }
    fn bar_read(&mut self, _: usize, _: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn bar_write(&mut self, _: usize, _: u64, _: &[u8]) {}
}

/// A host bridge's identity (the one of QEMU's q35, which guests know).
pub const HOST_BRIDGE_IDS: PciIds = PciIds {
    vendor: 0x8086,
    device: 0x29c0,
    revision: 0,
    class: 0x06_00_00,
    subsystem_vendor: 0x1af4,
    subsystem: 0x1100,
};

/// One BAR's range on the MMIO bus: forwards accesses to the device.
struct BarRange {
    dev: Arc<Mutex<dyn PciDevice>>,
    bar: usize,
}

impl BusDevice for BarRange {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.dev).bar_read(self.bar, offset, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.dev).bar_write(self.bar, offset, data);
    }
}

fn lock(dev: &Arc<Mutex<dyn PciDevice>>) -> MutexGuard<'_, dyn PciDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

struct Slot {
    dev: Arc<Mutex<dyn PciDevice>>,
    /// Where each BAR is on the MMIO bus now.
    mapped: [Option<u64>; BAR_COUNT],
}

/// Bus 0.
pub struct PciRoot {
    slots: Vec<Option<Slot>>,
    mmio: Weak<Bus>,
}

impl PciRoot {
    /// A root bus whose BARs decode on `mmio`, with the host bridge in slot 0.
    pub fn new(mmio: Weak<Bus>) -> Self {
        let mut slots: Vec<Option<Slot>> = (0..SLOTS).map(|_| None).collect();
        slots[0] = Some(Slot {
            dev: Arc::new(Mutex::new(HostBridge(PciConfig::new(HOST_BRIDGE_IDS)))),
            mapped: [None; BAR_COUNT],
        });
        PciRoot { slots, mmio }
    }

    /// Places `dev` in the first free slot, assigns its BARs from `alloc` and enables memory
    /// decoding (as firmware would). Returns the slot number.
    pub fn add(
        &mut self,
        dev: Arc<Mutex<dyn PciDevice>>,
        alloc: &mut BarAllocator,
    ) -> Result<u8, PciError> {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(PciError::NoSlot)?;
        {
            let mut d = lock(&dev);
            let bars: Vec<_> = d.config().bars().collect();
            let mut cfg = d.config().clone();
            for bar in bars {
                let addr = match bar.kind {
                    BarKind::Mem32 => alloc.mem32.allocate(bar.size)?,
                    BarKind::Mem64 => alloc.mem64.allocate(bar.size)?,
                };
                cfg.set_bar_address(bar.index, addr);
                debug!(
                    slot,
                    bar = bar.index,
                    addr,
                    size = bar.size,
                    "PCI BAR placed"
                );
            }
            // Copy the placed BARs back through the device (as firmware's config writes).
            for i in 0..BAR_COUNT {
                let off = super::config::BAR0 + i * 4;
                let v = cfg.u32_at(off);
                if d.config().u32_at(off) != v {
                    d.config_write(off, &v.to_le_bytes());
                }
            }
            let cmd = d.config().command() | COMMAND_MEMORY;
            d.config_write(super::config::COMMAND, &cmd.to_le_bytes());
        }
        self.slots[slot] = Some(Slot {
            dev,
            mapped: [None; BAR_COUNT],
        });
        self.update_mappings(slot);
        Ok(slot as u8)
    }

    /// Reads configuration space of bus/device/function at `offset`.
    pub fn config_read(&self, bus: u8, dev: u8, func: u8, offset: usize, data: &mut [u8]) {
        match self.function(bus, dev, func) {
            Some(slot) => lock(&slot.dev).config().read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Writes configuration space of bus/device/function at `offset`.
    pub fn config_write(&mut self, bus: u8, dev: u8, func: u8, offset: usize, data: &[u8]) {
        if self.function(bus, dev, func).is_none() {
            return;
        }
        let index = usize::from(dev);
        if let Some(slot) = &self.slots[index] {
            lock(&slot.dev).config_write(offset, data);
        }
        self.update_mappings(index);
    }

    fn function(&self, bus: u8, dev: u8, func: u8) -> Option<&Slot> {
        if bus != 0 || func != 0 {
            return None;
        }
        self.slots.get(usize::from(dev))?.as_ref()
    }

    /// Makes the MMIO bus match the BARs and command register of the device in `index`.
    fn update_mappings(&mut self, index: usize) {
        let Some(slot) = self.slots[index].as_mut() else {
            return;
        };
        let Some(mmio) = self.mmio.upgrade() else {
            return;
        };
        let mut d = lock(&slot.dev);
        let decode = d.config().command() & COMMAND_MEMORY != 0;
        let bars: Vec<_> = d.config().bars().collect();
        for bar in bars {
            let addr = d.config().bar_address(bar.index);
            // Unassigned (0) or mid-sizing (all ones above the size) BARs do not decode.
            let sizing = addr.checked_add(bar.size).is_none()
                || (bar.kind == BarKind::Mem32 && addr.saturating_add(bar.size) > 1 << 32);
            let want = (decode && addr != 0 && !sizing).then_some(addr);
            if slot.mapped[bar.index] == want {
                continue;
            }
            if let Some(old) = slot.mapped[bar.index].take() {
                mmio.remove(old);
            }
            if let Some(addr) = want {
                let range = Arc::new(Mutex::new(BarRange {
                    dev: slot.dev.clone(),
                    bar: bar.index,
                }));
                match mmio.insert(range, addr, bar.size) {
                    Ok(()) => slot.mapped[bar.index] = Some(addr),
                    Err(e) => warn!(slot = index, bar = bar.index, "BAR not mapped: {e}"),
                }
            }
            d.bar_moved(bar.index, slot.mapped[bar.index]);
        }
    }
}

/// Configuration mechanism #1: the address register at 0xCF8 and the data window at 0xCFC,
/// as one 8-port device.
pub struct ConfigIo {
    root: Arc<Mutex<PciRoot>>,
    address: u32,
}

/// Base port and length of [`ConfigIo`].
pub const CONFIG_IO_PORT: u16 = 0xcf8;
pub const CONFIG_IO_LEN: u64 = 8;

impl ConfigIo {
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        ConfigIo { root, address: 0 }
    }

    /// The (bus, device, function, register offset) the address register selects, if enabled.
    fn target(&self, data_offset: u64) -> Option<(u8, u8, u8, usize)> {
        if self.address & 0x8000_0000 == 0 {
            return None;
        }
        let a = self.address;
        Some((
            (a >> 16) as u8,
            ((a >> 11) & 0x1f) as u8,
            ((a >> 8) & 0x7) as u8,
            (a & 0xfc) as usize + data_offset as usize,
        ))
    }
}

impl BusDevice for ConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset < 4 {
            // Only whole-register reads see the address; byte reads of 0xCF8..0xCFB are
            // other chipset registers on a PC, absent here.
            if offset == 0 && data.len() == 4 {
                data.copy_from_slice(&self.address.to_le_bytes());
            } else {
                data.fill(0xff);
            }
            return;
        }
        let off = offset - 4;
        if off + data.len() as u64 > 4 {
            data.fill(0xff);
            return;
        }
        match self.target(off) {
            Some((b, d, f, reg)) => self
                .root
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .config_read(b, d, f, reg, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset < 4 {
            if offset == 0 && data.len() == 4 {
                self.address = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            }
            return;
        }
        let off = offset - 4;
        if off + data.len() as u64 > 4 {
            return;
        }
        if let Some((b, d, f, reg)) = self.target(off) {
            self.root
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .config_write(b, d, f, reg, data);
        }
    }
}

/// ECAM: one 4 KiB page of configuration space per function, bus << 20 | dev << 15 | fn << 12.
pub struct Ecam {
    root: Arc<Mutex<PciRoot>>,
}

impl Ecam {
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        Ecam { root }
    }

    fn decode(offset: u64, len: usize) -> Option<(u8, u8, u8, usize)> {
        let reg = (offset & 0xfff) as usize;
        // An access must stay inside one function's space.
        if reg + len > EXTENDED_CONFIG_SIZE {
            return None;
        }
        Some((
            (offset >> 20) as u8,
            ((offset >> 15) & 0x1f) as u8,
            ((offset >> 12) & 0x7) as u8,
            reg,
        ))
    }
}

impl BusDevice for Ecam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match Self::decode(offset, data.len()) {
            Some((b, d, f, reg)) => self
                .root
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .config_read(b, d, f, reg, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((b, d, f, reg)) = Self::decode(offset, data.len()) {
            self.root
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .config_write(b, d, f, reg, data);
        }
    }
}

#[cfg(test)]
#[path = "root_tests.rs"]
mod tests;
