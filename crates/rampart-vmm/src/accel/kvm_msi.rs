//! MSI under `kvm`: every MSI-X vector is a GSI with an MSI route and an irqfd, so the device's
//! I/O thread interrupts the guest by writing an eventfd, without entering the VMM. Queue
//! notifications come back the same way: an ioeventfd on the notify address.
//!
//! `KVM_SET_GSI_ROUTING` replaces the whole table, so the table kept here starts with the
//! routes the kernel sets up with the in-kernel irqchip (GSI 0..15 to the PIC and I/O APIC,
//! 16..23 to the I/O APIC) and adds one MSI route per unmasked vector.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, Weak};

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip,
    kvm_irq_routing_msi, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use rampart_devices::pci::{MsiController, MsiMessage, MsiVector};
use rampart_devices::virtio::pci::NotifyRegistrar;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// GSIs below this belong to the I/O APIC pins.
const FIRST_MSI_GSI: u32 = 24;
/// Routes KVM accepts (KVM_MAX_IRQ_ROUTES is 4096).
const MAX_GSI: u32 = 4096;

struct Table {
    msi: BTreeMap<u32, kvm_irq_routing_entry>,
    next_gsi: u32,
}

/// The VM's MSI routes.
pub struct KvmMsi {
    vm: Arc<VmFd>,
    table: Mutex<Table>,
    me: Weak<KvmMsi>,
}

fn irqchip_entry(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            irqchip: kvm_irq_routing_irqchip { irqchip: chip, pin },
        },
        ..Default::default()
    }
}

impl KvmMsi {
    pub fn new(vm: Arc<VmFd>) -> Arc<Self> {
        Arc::new_cyclic(|me| KvmMsi {
            vm,
            table: Mutex::new(Table {
                msi: BTreeMap::new(),
                next_gsi: FIRST_MSI_GSI,
            }),
            me: me.clone(),
        })
    }

    fn commit(&self, table: &Table) -> io::Result<()> {
        let mut entries = Vec::with_capacity(40 + table.msi.len());
        for gsi in 0..FIRST_MSI_GSI {
            if gsi < 8 {
                entries.push(irqchip_entry(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
            } else if gsi < 16 {
                entries.push(irqchip_entry(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
            }
            entries.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        }
        entries.extend(table.msi.values().copied());
        let routing = KvmIrqRouting::from_entries(&entries)
            .map_err(|e| io::Error::other(format!("GSI routing table: {e:?}")))?;
        self.vm
            .set_gsi_routing(&routing)
            .map_err(|e| io::Error::other(format!("KVM_SET_GSI_ROUTING: {e}")))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct KvmVector {
    msi: Weak<KvmMsi>,
    gsi: u32,
    irqfd: EventFd,
}

impl MsiVector for KvmVector {
    fn configure(&self, msg: Option<MsiMessage>) -> io::Result<()> {
        let Some(msi) = self.msi.upgrade() else {
            return Ok(());
        };
        let mut table = msi.lock();
        match msg {
            Some(m) => {
                let entry = kvm_irq_routing_entry {
                    gsi: self.gsi,
                    type_: KVM_IRQ_ROUTING_MSI,
                    u: kvm_irq_routing_entry__bindgen_ty_1 {
                        msi: kvm_irq_routing_msi {
                            address_lo: m.address as u32,
                            address_hi: (m.address >> 32) as u32,
                            data: m.data,
                            ..Default::default()
                        },
                    },
                    ..Default::default()
                };
                table.msi.insert(self.gsi, entry);
            }
            None => {
                if table.msi.remove(&self.gsi).is_none() {
                    return Ok(());
                }
            }
        }
        msi.commit(&table)
    }

    fn trigger(&self, _msg: MsiMessage) -> io::Result<()> {
        self.irqfd.write(1)
    }
}

impl MsiController for KvmMsi {
    fn vectors(&self, count: u16) -> io::Result<Vec<Box<dyn MsiVector>>> {
        let mut out: Vec<Box<dyn MsiVector>> = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let gsi = {
                let mut t = self.lock();
                if t.next_gsi >= MAX_GSI {
                    return Err(io::Error::other("no GSI left for MSI-X vectors"));
                }
                t.next_gsi += 1;
                t.next_gsi - 1
            };
            let irqfd = EventFd::new(EFD_NONBLOCK)?;
            self.vm
                .register_irqfd(&irqfd, gsi)
                .map_err(|e| io::Error::other(format!("KVM_IRQFD for GSI {gsi}: {e}")))?;
            out.push(Box::new(KvmVector {
                msi: self.me.clone(),
                gsi,
                irqfd,
            }));
        }
        Ok(out)
    }
}

impl NotifyRegistrar for KvmMsi {
    fn register(&self, addr: u64, evt: &EventFd) -> io::Result<()> {
        self.vm
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| io::Error::other(format!("KVM_IOEVENTFD at {addr:#x}: {e}")))
    }

    fn unregister(&self, addr: u64, evt: &EventFd) -> io::Result<()> {
        self.vm
            .unregister_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| io::Error::other(format!("KVM_IOEVENTFD removal at {addr:#x}: {e}")))
    }
}
