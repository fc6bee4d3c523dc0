//! The `kvm` accelerator against real /dev/kvm, with tiny hand-assembled 64-bit guests.
//!
//! These tests need /dev/kvm. On a host without it they fail loudly (never a silent pass);
//! they run on hardware KVM and on kvm-pvm alike (the guests need no interrupts).

use std::sync::Mutex;

use rampart_config::VmConfig;
use rampart_vmm::accel::kvm::{vcpu_cpuid, KvmAccel};
use rampart_vmm::accel::{AccelError, IoHandler, VcpuBackend, VcpuEvent};
use rampart_vmm::arch::x86_64::{cpu, layout};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

#[derive(Default)]
struct Recorder {
    log: Mutex<Vec<String>>,
}

impl IoHandler for Recorder {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        self.log
            .lock()
            .unwrap()
            .push(format!("in {port:#x}/{}", data.len()));
        data.fill(0xff);
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        self.log
            .lock()
            .unwrap()
            .push(format!("out {port:#x} {data:02x?}"));
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        self.log
            .lock()
            .unwrap()
            .push(format!("mmio-read {addr:#x}/{}", data.len()));
        data.fill(0xff);
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.log
            .lock()
            .unwrap()
            .push(format!("mmio-write {addr:#x} {data:02x?}"));
    }
}

const ENTRY: u64 = 0x10_0000;

fn guest(
    code: &[u8],
) -> (
    GuestMemoryMmap,
    rampart_vmm::accel::kvm::KvmVcpu,
    KvmAccel,
    rampart_vmm::accel::kvm::KvmVm,
) {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "these tests need /dev/kvm (hardware KVM or kvm-pvm)"
    );
    let mem = GuestMemoryMmap::from_ranges(&layout::ram_regions(64 << 20)).unwrap();
    cpu::write_gdt_idt(&mem).unwrap();
    let cr3 = cpu::write_page_tables(&mem).unwrap();
    mem.write_slice(code, GuestAddress(ENTRY)).unwrap();
    let kvm = KvmAccel::open().unwrap();
    let vm = kvm.create_vm(&mem).unwrap();
    let cpuid = vcpu_cpuid(&kvm.supported_cpuid().unwrap(), 0, &VmConfig::default()).unwrap();
    let mut vcpu = vm.create_vcpu(0, &cpuid).unwrap();
    vcpu.set_state(&cpu::linux64_boot_state(GuestAddress(ENTRY), cr3))
        .unwrap();
    (mem, vcpu, kvm, vm)
}

#[test]
fn port_io_and_mmio_reach_the_handler_and_ud2_without_idt_resets() {
    // mov dx,0x3f8; mov al,'A'; out dx,al; mov ebx,0xd0000000; mov eax,[rbx];
    // mov dx,0x71; in al,dx; mov dword [rbx+4],0x12345678; ud2 (no IDT: triple fault)
    let code = [
        0x66, 0xba, 0xf8, 0x03, 0xb0, 0x41, 0xee, 0xbb, 0x00, 0x00, 0x00, 0xd0, 0x8b, 0x03, 0x66,
        0xba, 0x71, 0x00, 0xec, 0xc7, 0x43, 0x04, 0x78, 0x56, 0x34, 0x12, 0x0f, 0x0b,
    ];
    let (_mem, mut vcpu, _kvm, _vm) = guest(&code);
    let io = Recorder::default();
    let ev = vcpu.run(&io).unwrap();
    assert_eq!(ev, VcpuEvent::Reset);
    assert_eq!(
        *io.log.lock().unwrap(),
        vec![
            "out 0x3f8 [41]".to_string(),
            "mmio-read 0xd0000000/4".to_string(),
            "in 0x71/1".to_string(),
            "mmio-write 0xd0000004 [78, 56, 34, 12]".to_string(),
        ]
    );
}

#[test]
fn executing_from_mmio_is_reported_as_a_failure_with_registers() {
    // mov eax, 0xd0000000; jmp rax
    let code = [0xb8, 0x00, 0x00, 0x00, 0xd0, 0xff, 0xe0];
    let (_mem, mut vcpu, _kvm, _vm) = guest(&code);
    let io = Recorder::default();
    match vcpu.run(&io) {
        Err(AccelError::GuestFailure { cpu, reason, state }) => {
            assert_eq!(cpu, 0);
            assert!(
                reason.contains("emulation failure") || reason.contains("KVM"),
                "{reason}"
            );
            assert!(state.contains("RIP="), "{state}");
        }
        other => panic!("expected a guest failure, got {other:?}"),
    }
}

#[test]
fn notify_writes_go_to_the_ioeventfd_and_msi_routes_are_accepted() {
    use rampart_devices::pci::{MsiController, MsiMessage};
    use rampart_devices::virtio::pci::NotifyRegistrar;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    // mov ebx,0xd0000000; mov word [rbx],0; mov dword [rbx+4],0x12345678; ud2
    let code = [
        0xbb, 0x00, 0x00, 0x00, 0xd0, 0x66, 0xc7, 0x03, 0x00, 0x00, 0xc7, 0x43, 0x04, 0x78, 0x56,
        0x34, 0x12, 0x0f, 0x0b,
    ];
    let (_mem, mut vcpu, _kvm, vm) = guest(&code);
    let msi = vm.msi();
    let notify = EventFd::new(EFD_NONBLOCK).unwrap();
    NotifyRegistrar::register(msi.as_ref(), 0xd000_0000, &notify).unwrap();
    // Two vectors: routing them (and unrouting one) rebuilds the whole GSI table.
    let vectors = msi.vectors(2).unwrap();
    let msg = MsiMessage {
        address: 0xfee0_0000,
        data: 0x41,
    };
    vectors[0].configure(Some(msg)).unwrap();
    vectors[1].configure(Some(msg)).unwrap();
    vectors[1].configure(None).unwrap();
    vectors[0].trigger(msg).unwrap();
    let io = Recorder::default();
    // Act
    let ev = vcpu.run(&io).unwrap();
    // Assert: the notify write never left the kernel; the other write did.
    assert_eq!(ev, VcpuEvent::Reset);
    assert_eq!(
        *io.log.lock().unwrap(),
        vec!["mmio-write 0xd0000004 [78, 56, 34, 12]".to_string()]
    );
    assert_eq!(notify.read().unwrap(), 1);
    NotifyRegistrar::unregister(msi.as_ref(), 0xd000_0000, &notify).unwrap();
}
