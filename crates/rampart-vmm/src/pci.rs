//! The machine's PCI bus: the root bus with its host bridge (0xCF8 ports and ECAM), and the
//! devices of the configuration, each with its BARs placed in the 32- or 64-bit window, its
//! MSI-X vectors from the accelerator, and its own I/O thread.

use std::sync::{Arc, Mutex};

use rampart_config::{DeviceConfig, DriveInterface, VmConfig};
use rampart_devices::pci::root::{CONFIG_IO_LEN, CONFIG_IO_PORT};
use rampart_devices::pci::{BarAllocator, ConfigIo, Ecam, MsiController, PciRoot, Window};
use rampart_devices::virtio::pci::{NotifyRegistrar, VirtioPci};
use rampart_devices::virtio::worker::IoThread;
use rampart_devices::virtio::{block, net, rng, GuestWriteHook, VirtioDevice};
use tracing::info;
use vm_memory::GuestMemoryMmap;

use crate::arch::x86_64::layout::{
    mmio64_window, PCI_ECAM_SIZE, PCI_ECAM_START, PCI_MMIO32_SIZE, PCI_MMIO32_START,
};
use crate::io::Buses;
use crate::vm::VmError;

/// What the accelerator provides to PCI devices.
pub struct PciHost {
    pub msi: Arc<dyn MsiController>,
    /// ioeventfd registration (under `kvm`); `None` under `tcg`, where the notify MMIO handler
    /// signals the eventfd itself.
    pub registrar: Option<Arc<dyn NotifyRegistrar>>,
    /// Told of the devices' writes into guest RAM (under `tcg`: the vCPUs' code watch).
    pub guest_writes: Option<GuestWriteHook>,
}

/// The running PCI devices: their I/O threads stop when this is dropped.
pub struct PciDevices {
    _io_threads: Vec<IoThread>,
}

/// Builds the root bus and every configured device.
pub fn build(
    config: &VmConfig,
    mem: &GuestMemoryMmap,
    buses: &Buses,
    host: &PciHost,
    disks: &[crate::vm::OpenDisk],
    nics: &[crate::vm::OpenNic],
    throttles: &[crate::vm::DriveThrottle],
) -> Result<PciDevices, VmError> {
    let dev_err = |e: &dyn std::fmt::Display| VmError::Device(e.to_string());
    let root = Arc::new(Mutex::new(PciRoot::new(Arc::downgrade(&buses.mmio))));
    buses
        .pio
        .insert(
            Arc::new(Mutex::new(ConfigIo::new(root.clone()))),
            u64::from(CONFIG_IO_PORT),
            CONFIG_IO_LEN,
        )
        .map_err(|e| dev_err(&e))?;
    buses
        .mmio
        .insert(
            Arc::new(Mutex::new(Ecam::new(root.clone()))),
            PCI_ECAM_START,
            PCI_ECAM_SIZE,
        )
        .map_err(|e| dev_err(&e))?;
    let (start64, size64) = mmio64_window(config.memory_bytes);
    let mut alloc = BarAllocator {
        mem32: Window::new("32-bit", PCI_MMIO32_START, PCI_MMIO32_SIZE),
        mem64: Window::new("64-bit", start64.0, size64),
    };
    let disk = |name: &str| {
        disks
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, d, s)| (d.clone(), s.clone()))
            .ok_or_else(|| VmError::Device(format!("virtio-blk-pci: drive '{name}' is not open")))
    };
    // `-drive if=virtio` disks first (as QEMU creates them), then `-device` in order.
    let mut wanted: Vec<DeviceConfig> = config
        .drives
        .iter()
        .filter(|d| d.interface == DriveInterface::Virtio)
        .map(|d| DeviceConfig::VirtioBlk {
            id: None,
            drive: d.node.node_name.clone(),
            serial: None,
        })
        .collect();
    wanted.extend(config.devices.iter().cloned());
    let mut io_threads = Vec::new();
    for (n, dev) in wanted.iter().enumerate() {
        let (device, class): (Box<dyn VirtioDevice>, u32) = match dev {
            DeviceConfig::VirtioRng { .. } => (Box::new(rng::Rng::new()), rng::PCI_CLASS),
            DeviceConfig::VirtioBlk { drive, serial, .. } => {
                let (d, stats) = disk(drive)?;
                let mut dev = block::Block::new(d, serial.as_deref().unwrap_or(""), stats)
                    .map_err(|e| VmError::Device(format!("virtio-blk-pci: {e}")))?;
                if let Some((_, t)) = throttles.iter().find(|(n, _)| n == drive) {
                    dev = dev.with_throttle(t.clone());
                }
                (Box::new(dev), block::PCI_CLASS)
            }
            DeviceConfig::VirtioNet { netdev, .. } => {
                let nic = nics.iter().find(|n| n.netdev == *netdev).ok_or_else(|| {
                    VmError::Device(format!("virtio-net-pci: netdev '{netdev}' is not open"))
                })?;
                let tap = nic
                    .tap
                    .try_clone()
                    .map_err(|e| VmError::Device(format!("virtio-net-pci: tap: {e}")))?;
                let dev = net::Net::new(nic.handle.clone(), Box::new(tap))
                    .map_err(|e| VmError::Device(format!("virtio-net-pci: {e}")))?;
                (Box::new(dev), net::PCI_CLASS)
            }
        };
        let (transport, parts) = VirtioPci::new(
            device,
            class,
            mem.clone(),
            host.msi.as_ref(),
            host.registrar.clone(),
        )
        .map_err(|e| dev_err(&e))?;
        if let Some(hook) = &host.guest_writes {
            let mut st = parts.state.lock().unwrap_or_else(|e| e.into_inner());
            st.device.set_guest_writes(hook.clone());
            st.guest_writes = Some(hook.clone());
        }
        io_threads.push(
            IoThread::spawn(&format!("virtio{n}"), parts)
                .map_err(|e| VmError::Device(format!("{}: I/O thread: {e}", dev.driver())))?,
        );
        let slot = root
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(Arc::new(Mutex::new(transport)), &mut alloc)
            .map_err(|e| dev_err(&e))?;
        info!(slot, device = dev.driver(), "PCI device added");
    }
    Ok(PciDevices {
        _io_threads: io_threads,
    })
}
