use super::*;
use crate::pci::config::{BarSpec, BAR0, COMMAND};

/// A device with one 64-bit and one 32-bit BAR whose BAR accesses echo the BAR number.
struct Probe(PciConfig);

impl PciDevice for Probe {
    fn config(&self) -> &PciConfig {
        &self.0
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.0.write(offset, data);
    }
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(bar as u8 + offset as u8);
    }
    fn bar_write(&mut self, _: usize, _: u64, _: &[u8]) {}
}

fn probe() -> Arc<Mutex<dyn PciDevice>> {
    let mut c = PciConfig::new(PciIds {
        vendor: 0x1af4,
        device: 0x1044,
        revision: 1,
        class: 0xff00,
        subsystem_vendor: 0x1af4,
        subsystem: 0x40,
    });
    c.add_bar(BarSpec {
        index: 0,
        size: 0x4000,
        kind: BarKind::Mem64,
        prefetchable: false,
    })
    .unwrap();
    c.add_bar(BarSpec {
        index: 2,
        size: 0x1000,
        kind: BarKind::Mem32,
        prefetchable: false,
    })
    .unwrap();
    Arc::new(Mutex::new(Probe(c)))
}

fn alloc() -> BarAllocator {
    BarAllocator {
        mem32: Window::new("32-bit", 0xc000_0000, 0x1000_0000),
        mem64: Window::new("64-bit", 0x10_0000_0000, 0x10_0000_0000),
    }
}

fn setup() -> (Arc<Bus>, Arc<Mutex<PciRoot>>) {
    let mmio = Arc::new(Bus::new());
    let root = Arc::new(Mutex::new(PciRoot::new(Arc::downgrade(&mmio))));
    root.lock().unwrap().add(probe(), &mut alloc()).unwrap();
    (mmio, root)
}

fn cf8(io: &mut ConfigIo, dev: u32, reg: u32) -> u32 {
    io.write(0, &(0x8000_0000 | dev << 11 | reg).to_le_bytes());
    let mut b = [0u8; 4];
    io.read(4, &mut b);
    u32::from_le_bytes(b)
}

#[test]
fn mechanism_one_reads_host_bridge_and_device_ids() {
    // Arrange
    let (_mmio, root) = setup();
    let mut io = ConfigIo::new(root);
    // Act / Assert
    assert_eq!(cf8(&mut io, 0, 0), 0x29c0_8086);
    assert_eq!(cf8(&mut io, 1, 0), 0x1044_1af4);
    assert_eq!(cf8(&mut io, 2, 0), 0xffff_ffff);
    // The address register reads back (Linux's probe for mechanism #1 relies on it).
    let mut b = [0u8; 4];
    io.read(0, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x8000_1000);
}

#[test]
fn ecam_reaches_the_same_space_and_other_buses_are_empty() {
    let (_mmio, root) = setup();
    let mut ecam = Ecam::new(root);
    let mut b = [0u8; 4];
    ecam.read(1 << 15, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x1044_1af4);
    ecam.read(1 << 20 | 1 << 15, &mut b);
    assert_eq!(b, [0xff; 4]);
    ecam.read(1 << 15 | 0x800, &mut b);
    assert_eq!(b, [0; 4], "extended space reads as zero");
    ecam.read(1 << 15 | 0xffe, &mut b);
    assert_eq!(b, [0xff; 4], "an access crossing functions is refused");
}

#[test]
fn bars_are_placed_in_their_windows_and_decode_on_the_mmio_bus() {
    let (mmio, _root) = setup();
    let mut b = [0u8; 1];
    assert!(mmio.read(0x10_0000_0003, &mut b));
    assert_eq!(b[0], 3);
    assert!(mmio.read(0xc000_0000, &mut b));
    assert_eq!(b[0], 2);
}

#[test]
fn moving_a_bar_or_disabling_decode_moves_the_mapping() {
    // Arrange
    let (mmio, root) = setup();
    let mut ecam = Ecam::new(root);
    let dev = 1u64 << 15;
    let mut b = [0u8; 1];
    // Act: BAR sizing with decode off, then a new address, then decode on.
    ecam.write(dev | COMMAND as u64, &0u16.to_le_bytes());
    assert!(!mmio.read(0xc000_0000, &mut b));
    ecam.write(dev | (BAR0 + 8) as u64, &[0xff; 4]);
    let mut size = [0u8; 4];
    ecam.read(dev | (BAR0 + 8) as u64, &mut size);
    assert_eq!(u32::from_le_bytes(size), 0xffff_f000);
    ecam.write(dev | (BAR0 + 8) as u64, &0xc010_0000u32.to_le_bytes());
    ecam.write(dev | COMMAND as u64, &2u16.to_le_bytes());
    // Assert
    assert!(mmio.read(0xc010_0000, &mut b));
    assert!(!mmio.read(0xc000_0000, &mut b));
}

#[test]
fn full_window_is_an_error_naming_it() {
    let mut w = Window::new("32-bit", 0xc000_0000, 0x2000);
    assert_eq!(w.allocate(0x1000).unwrap(), 0xc000_0000);
    assert_eq!(w.allocate(0x1000).unwrap(), 0xc000_1000);
    let e = w.allocate(0x1000).unwrap_err().to_string();
    assert!(e.contains("32-bit"), "{e}");
}

#[test]
fn disabled_address_register_reads_all_ones() {
    let (_mmio, root) = setup();
    let mut io = ConfigIo::new(root);
    io.write(0, &0x0000_0800u32.to_le_bytes());
    let mut b = [0u8; 4];
    io.read(4, &mut b);
    assert_eq!(b, [0xff; 4]);
}
