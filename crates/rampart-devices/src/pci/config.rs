//! A type-0 PCI configuration space: the header, six BARs and a capability list.
//!
//! Every guest write goes through a per-byte write mask, so read-only fields (IDs, capability
//! bodies the device owns, BAR flag bits) cannot be changed by the guest, and BAR sizing (write
//! all ones, read back) falls out of the mask: the address bits below the BAR size are not
//! writable. The space is 256 bytes; the extended space an ECAM access may reach reads as zero.

/// Size of the conventional configuration space.
pub const CONFIG_SIZE: usize = 256;
/// Size of one function's configuration space through ECAM.
pub const EXTENDED_CONFIG_SIZE: usize = 4096;

pub const VENDOR_ID: usize = 0x00;
pub const COMMAND: usize = 0x04;
pub const STATUS: usize = 0x06;
pub const REVISION: usize = 0x08;
pub const HEADER_TYPE: usize = 0x0e;
pub const BAR0: usize = 0x10;
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
pub const CAPABILITIES_POINTER: usize = 0x34;
pub const INTERRUPT_LINE: usize = 0x3c;

/// Command register bits.
pub const COMMAND_IO: u16 = 1 << 0;
pub const COMMAND_MEMORY: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status register: the capability list exists.
const STATUS_CAPABILITIES: u16 = 1 << 4;

/// BAR flag bits of a memory BAR.
const BAR_MEM_64BIT: u32 = 0b100;
const BAR_MEM_PREFETCHABLE: u32 = 0b1000;

/// Number of BARs in a type-0 header.
pub const BAR_COUNT: usize = 6;

/// The kind of a memory BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// A 32-bit memory BAR, placed below 4 GiB.
    Mem32,
    /// A 64-bit memory BAR (two BAR slots), placed in the 64-bit window.
    Mem64,
}

/// One memory BAR a device declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarSpec {
    /// BAR index (0..6; a 64-bit BAR also takes index + 1).
    pub index: usize,
    /// Size in bytes: a power of two, at least 4 KiB (one page, so BARs never share a page).
    pub size: u64,
    pub kind: BarKind,
    pub prefetchable: bool,
}

/// Identity of a PCI function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciIds {
    pub vendor: u16,
    pub device: u16,
    pub revision: u8,
    /// Class code (base, sub-class, programming interface) as 0xBBSSPP.
    pub class: u32,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
}

/// A configuration-space error found when a device is built (a programming error, not guest
/// input).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("BAR {0}: size {1:#x} is not a power of two of at least 4 KiB")]
    BarSize(usize, u64),
    #[error("BAR {0} does not exist or overlaps another BAR")]
    BarIndex(usize),
    #[error("no room left in configuration space for a {0}-byte capability")]
    CapabilityFull(usize),
}

/// The configuration space of one function.
#[derive(Clone)]
pub struct PciConfig {
    bytes: [u8; CONFIG_SIZE],
    wmask: [u8; CONFIG_SIZE],
    bars: [Option<BarSpec>; BAR_COUNT],
    /// Where the next capability goes, and the offset of the "next" byte of the last one.
    next_cap: usize,
    last_next_ptr: usize,
}

impl PciConfig {
    /// A header for a single-function endpoint with `ids`, no BARs and no capabilities. The
    /// guest may write the command register's I/O, memory, bus-master and INTx-disable bits and
    /// the interrupt line.
    pub fn new(ids: PciIds) -> Self {
        let mut c = PciConfig {
            bytes: [0; CONFIG_SIZE],
            wmask: [0; CONFIG_SIZE],
            bars: [None; BAR_COUNT],
            next_cap: 0x40,
            last_next_ptr: CAPABILITIES_POINTER,
        };
        c.set_u16(VENDOR_ID, ids.vendor);
        c.set_u16(VENDOR_ID + 2, ids.device);
        c.bytes[REVISION] = ids.revision;
        c.bytes[REVISION + 1] = ids.class as u8;
        c.bytes[REVISION + 2] = (ids.class >> 8) as u8;
        c.bytes[REVISION + 3] = (ids.class >> 16) as u8;
        c.bytes[HEADER_TYPE] = 0;
        c.set_u16(SUBSYSTEM_VENDOR_ID, ids.subsystem_vendor);
        c.set_u16(SUBSYSTEM_VENDOR_ID + 2, ids.subsystem);
        let cmd_mask = COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE;
        c.wmask[COMMAND..COMMAND + 2].copy_from_slice(&cmd_mask.to_le_bytes());
        c.wmask[INTERRUPT_LINE] = 0xff;
        c
    }

    fn set_u16(&mut self, off: usize, v: u16) {
        self.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    /// Reads the 16-bit value at `off` (0 outside the space).
    pub fn u16_at(&self, off: usize) -> u16 {
        match self.bytes.get(off..off + 2) {
            Some(b) => u16::from_le_bytes([b[0], b[1]]),
            None => 0,
        }
    }

    /// Reads the 32-bit value at `off` (0 outside the space).
    pub fn u32_at(&self, off: usize) -> u32 {
        match self.bytes.get(off..off + 4) {
            Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            None => 0,
        }
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.u16_at(COMMAND)
    }

    /// Declares a memory BAR. Its address starts at 0 (unassigned) until
    /// [`set_bar_address`](Self::set_bar_address).
    pub fn add_bar(&mut self, spec: BarSpec) -> Result<(), ConfigError> {
        if !spec.size.is_power_of_two() || spec.size < 0x1000 {
            return Err(ConfigError::BarSize(spec.index, spec.size));
        }
        let slots = match spec.kind {
            BarKind::Mem32 => 1,
            BarKind::Mem64 => 2,
        };
        if spec.index + slots > BAR_COUNT
            || (0..BAR_COUNT).any(|i| self.bar_covers(i, spec.index, slots))
        {
            return Err(ConfigError::BarIndex(spec.index));
        }
        if spec.kind == BarKind::Mem32 && spec.size > 1 << 31 {
            return Err(ConfigError::BarSize(spec.index, spec.size));
        }
        let mut flags = 0u32;
        if spec.kind == BarKind::Mem64 {
            flags |= BAR_MEM_64BIT;
        }
        if spec.prefetchable {
            flags |= BAR_MEM_PREFETCHABLE;
        }
        let off = BAR0 + spec.index * 4;
        self.bytes[off..off + 4].copy_from_slice(&flags.to_le_bytes());
        let mask = !(spec.size - 1);
        self.wmask[off..off + 4].copy_from_slice(&(mask as u32 & !0xf).to_le_bytes());
        if spec.kind == BarKind::Mem64 {
            self.wmask[off + 4..off + 8].copy_from_slice(&((mask >> 32) as u32).to_le_bytes());
        }
        self.bars[spec.index] = Some(spec);
        Ok(())
    }

    fn bar_covers(&self, i: usize, index: usize, slots: usize) -> bool {
        let Some(b) = self.bars[i] else { return false };
        let b_slots = if b.kind == BarKind::Mem64 { 2 } else { 1 };
        i < index + slots && index < i + b_slots
    }

    /// The declared BARs.
    pub fn bars(&self) -> impl Iterator<Item = BarSpec> + '_ {
        self.bars.iter().flatten().copied()
    }

    /// The address BAR `index` currently holds (0 when unassigned or not declared).
    pub fn bar_address(&self, index: usize) -> u64 {
        let Some(spec) = self.bars.get(index).copied().flatten() else {
            return 0;
        };
        let off = BAR0 + index * 4;
        let low = u64::from(self.u32_at(off) & !0xf);
        let high = match spec.kind {
            BarKind::Mem32 => 0,
            BarKind::Mem64 => u64::from(self.u32_at(off + 4)),
        };
        (high << 32 | low) & !(spec.size - 1)
    }

    /// Places BAR `index` at `addr` (as firmware would).
    pub fn set_bar_address(&mut self, index: usize, addr: u64) {
        let Some(spec) = self.bars.get(index).copied().flatten() else {
            return;
        };
        let off = BAR0 + index * 4;
        let flags = self.u32_at(off) & 0xf;
        let low = (addr as u32 & !0xf) | flags;
        self.bytes[off..off + 4].copy_from_slice(&low.to_le_bytes());
        if spec.kind == BarKind::Mem64 {
            self.bytes[off + 4..off + 8].copy_from_slice(&((addr >> 32) as u32).to_le_bytes());
        }
    }

    /// Appends a capability: `body` starts with the capability ID; its "next" byte is filled
    /// in here. `wmask` (same length as `body`, or empty for a read-only capability) says which
    /// bits the guest may write. Returns the capability's offset.
    pub fn add_capability(&mut self, body: &[u8], wmask: &[u8]) -> Result<usize, ConfigError> {
        let len = body.len().max(2).div_ceil(4) * 4;
        let off = self.next_cap;
        if off + len > CONFIG_SIZE {
            return Err(ConfigError::CapabilityFull(body.len()));
        }
        self.bytes[off..off + body.len()].copy_from_slice(body);
        self.bytes[off + 1] = 0;
        if !wmask.is_empty() {
            let n = wmask.len().min(body.len());
            self.wmask[off..off + n].copy_from_slice(&wmask[..n]);
        }
        self.wmask[off + 1] = 0;
        self.bytes[self.last_next_ptr] = off as u8;
        self.last_next_ptr = off + 1;
        self.next_cap = off + len;
        let status = self.u16_at(STATUS) | STATUS_CAPABILITIES;
        self.set_u16(STATUS, status);
        Ok(off)
    }

    /// Reads `data.len()` bytes at `offset`; bytes outside the conventional space read as 0.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i)
                .and_then(|o| self.bytes.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    /// Writes through the write mask; bytes outside the conventional space are dropped.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, v) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i).filter(|o| *o < CONFIG_SIZE) else {
                continue;
            };
            let m = self.wmask[o];
            self.bytes[o] = (self.bytes[o] & !m) | (v & m);
        }
    }

    /// Writes bytes a device owns (e.g. a capability's state), bypassing the guest write mask.
    pub fn write_internal(&mut self, offset: usize, data: &[u8]) {
        if let Some(dst) = offset
            .checked_add(data.len())
            .and_then(|end| self.bytes.get_mut(offset..end))
        {
            dst.copy_from_slice(data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> PciIds {
        PciIds {
            vendor: 0x1af4,
            device: 0x1044,
            revision: 1,
            class: 0x00ff00,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        }
    }

    #[test]
    fn ids_are_read_only() {
        let mut c = PciConfig::new(ids());
        c.write(VENDOR_ID, &[0, 0, 0, 0]);
        assert_eq!(c.u32_at(VENDOR_ID), 0x1044_1af4);
        assert_eq!(c.u32_at(REVISION), 0x00ff_0001);
    }

    #[test]
    fn bar_sizing_reads_back_the_size_mask_and_flags() {
        // Arrange
        let mut c = PciConfig::new(ids());
        c.add_bar(BarSpec {
            index: 0,
            size: 0x4000,
            kind: BarKind::Mem64,
            prefetchable: false,
        })
        .unwrap();
        c.set_bar_address(0, 0x10_0000_0000);
        // Act
        c.write(BAR0, &[0xff; 4]);
        c.write(BAR0 + 4, &[0xff; 4]);
        // Assert
        assert_eq!(c.u32_at(BAR0), 0xffff_c004);
        assert_eq!(c.u32_at(BAR0 + 4), 0xffff_ffff);
        c.write(BAR0, &0xc000_0000u32.to_le_bytes());
        c.write(BAR0 + 4, &0u32.to_le_bytes());
        assert_eq!(c.bar_address(0), 0xc000_0000);
    }

    #[test]
    fn overlapping_and_odd_sized_bars_are_refused() {
        let mut c = PciConfig::new(ids());
        let bar = |index, size, kind| BarSpec {
            index,
            size,
            kind,
            prefetchable: false,
        };
        c.add_bar(bar(0, 0x1000, BarKind::Mem64)).unwrap();
        assert_eq!(
            c.add_bar(bar(1, 0x1000, BarKind::Mem32)),
            Err(ConfigError::BarIndex(1))
        );
        assert_eq!(
            c.add_bar(bar(5, 0x1000, BarKind::Mem64)),
            Err(ConfigError::BarIndex(5))
        );
        assert_eq!(
            c.add_bar(bar(2, 0x1800, BarKind::Mem32)),
            Err(ConfigError::BarSize(2, 0x1800))
        );
    }

    #[test]
    fn capabilities_are_chained_and_masked() {
        // Arrange
        let mut c = PciConfig::new(ids());
        let a = c.add_capability(&[0x09, 0xee, 4, 1], &[]).unwrap();
        let b = c
            .add_capability(&[0x11, 0, 0, 0], &[0, 0, 0, 0xc0])
            .unwrap();
        // Act
        c.write(b, &[0xff; 4]);
        c.write(a, &[0xff; 4]);
        // Assert
        assert_eq!(c.bytes[CAPABILITIES_POINTER] as usize, a);
        assert_eq!(c.bytes[a + 1] as usize, b);
        assert_eq!(c.bytes[b + 1], 0);
        assert_eq!(c.u32_at(b), 0xc000_0011);
        assert_eq!(c.u32_at(a), 0x0104_4409);
        assert_ne!(c.u16_at(STATUS) & STATUS_CAPABILITIES, 0);
    }

    #[test]
    fn accesses_past_the_space_are_harmless() {
        let mut c = PciConfig::new(ids());
        let mut b = [0xaa; 4];
        c.read(CONFIG_SIZE - 2, &mut b);
        assert_eq!(&b[2..], &[0, 0]);
        c.write(usize::MAX - 1, &[1, 2, 3, 4]);
        c.read(usize::MAX, &mut b);
        assert_eq!(b, [0; 4]);
    }
}
