//! The `kvm` accelerator: a thin layer over kvm-ioctls.
//!
//! The VM gets the in-kernel interrupt controllers (PIC, I/O APIC, local APICs) and PIT, so
//! `hlt` and interrupt delivery stay in the kernel; port I/O and MMIO exits go to the device
//! buses through [`IoHandler`].

use std::cell::Cell;
use std::path::Path;

use kvm_bindings::{
    kvm_fpu, kvm_pit_config, kvm_regs, kvm_run, kvm_segment, kvm_sregs,
    kvm_userspace_memory_region, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
    KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::{format_state, AccelError, IoHandler, VcpuBackend, VcpuEvent};
use crate::arch::x86_64::regs::{
    CpuState, DescriptorTable, GeneralRegs, MsrEntry, Segment, SpecialRegs,
};

/// Address of the three pages KVM needs for its real-mode TSS on Intel hosts (inside the
/// 32-bit MMIO hole, below the I/O APIC, where nothing else lives).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> AccelError {
    move |source| AccelError::Kvm { op, source }
}

/// Whether this host's KVM module is kvm-pvm, which runs only kernels built for PVM.
pub fn host_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// Whether /dev/kvm can be opened with a usable API version.
pub fn is_available() -> bool {
    Kvm::new().is_ok_and(|k| k.get_api_version() == 12)
}

/// An open /dev/kvm.
pub struct KvmAccel {
    kvm: Kvm,
}

impl KvmAccel {
    pub fn open() -> Result<Self, AccelError> {
        let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
        let version = kvm.get_api_version();
        if version != 12 {
            return Err(AccelError::Unsupported(format!(
                "/dev/kvm reports API version {version}, rampart needs 12"
            )));
        }
        Ok(KvmAccel { kvm })
    }

    /// The CPUID leaves KVM supports on this host.
    pub fn supported_cpuid(&self) -> Result<CpuId, AccelError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))
    }

    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }

    /// Creates a VM with in-kernel interrupt controllers and PIT and maps `mem` into it.
    pub fn create_vm(&self, mem: &GuestMemoryMmap) -> Result<KvmVm, AccelError> {
        let vm = self.kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        vm.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        vm.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
        for (slot, region) in mem.iter().enumerate() {
            let host = region.as_ptr();
            let entry = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: the host range [host, host + len) is a live mapping owned by `mem`, which
            // the caller keeps alive for as long as the VM exists (the VM struct holds a clone).
            unsafe { vm.set_user_memory_region(entry) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }
        Ok(KvmVm {
            vm: std::sync::Arc::new(vm),
            _mem: mem.clone(),
        })
    }
}

/// A KVM VM and the guest memory mapped into it.
pub struct KvmVm {
    vm: std::sync::Arc<VmFd>,
    _mem: GuestMemoryMmap,
}

impl KvmVm {
    /// Routes writes of `evt` to the in-kernel interrupt controller pin `gsi`.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), AccelError> {
        self.vm
            .register_irqfd(evt, gsi)
            .map_err(kvm_err("KVM_IRQFD"))
    }

    /// MSI routing (GSI routes + irqfds) and ioeventfd registration for PCI devices.
    pub fn msi(&self) -> std::sync::Arc<super::kvm_msi::KvmMsi> {
        super::kvm_msi::KvmMsi::new(self.vm.clone())
    }

    /// Creates vCPU `index` with the given CPUID table. The boot CPU's registers are set by the
    /// caller with [`VcpuBackend::set_state`]; other CPUs wait in the kernel for INIT/SIPI.
    pub fn create_vcpu(&self, index: u32, cpuid: &CpuId) -> Result<KvmVcpu, AccelError> {
        let fd = self
            .vm
            .create_vcpu(u64::from(index))
            .map_err(kvm_err("KVM_CREATE_VCPU"))?;
        fd.set_cpuid2(cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
        // Local APIC: LINT0 as ExtINT (the PIC) and LINT1 as NMI, as a PC BIOS leaves them.
        let mut lapic = fd.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
        set_lvt(&mut lapic.regs, 0x350, 0b111); // LVT LINT0: ExtINT
        set_lvt(&mut lapic.regs, 0x360, 0b100); // LVT LINT1: NMI
        fd.set_lapic(&lapic).map_err(kvm_err("KVM_SET_LAPIC"))?;
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        fd.set_fpu(&fpu).map_err(kvm_err("KVM_SET_FPU"))?;
        Ok(KvmVcpu { fd, index })
    }
}

/// Sets the delivery mode of a local-APIC LVT register in KVM's register page.
fn set_lvt(regs: &mut [std::os::raw::c_char; 1024], offset: usize, mode: u32) {
    let mut raw = [0u8; 4];
    for (i, b) in raw.iter_mut().enumerate() {
        *b = regs[offset + i] as u8;
    }
    let v = (u32::from_le_bytes(raw) & !0x700) | (mode << 8);
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *b as std::os::raw::c_char;
    }
}

/// One KVM vCPU.
pub struct KvmVcpu {
    fd: VcpuFd,
    index: u32,
}

thread_local! {
    /// The kvm_run page of the vCPU running on this thread, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// Called from the kick signal handler on a vCPU thread: makes the current or next KVM_RUN
/// return at once. Async-signal-safe: one thread-local read and one store.
pub fn on_kick_signal() {
    let ptr = KVM_RUN.with(|c| c.get());
    if !ptr.is_null() {
        // SAFETY: the pointer was set by `KvmVcpu::run` on this same thread to the vCPU's
        // kvm_run mapping, which lives as long as the vCPU, and is cleared before the vCPU is
        // dropped. A byte store to immediate_exit is what the KVM API asks for here.
        unsafe { std::ptr::addr_of_mut!((*ptr).immediate_exit).write_volatile(1) };
    }
}

impl Drop for KvmVcpu {
    fn drop(&mut self) {
        KVM_RUN.with(|c| c.set(std::ptr::null_mut()));
    }
}

impl KvmVcpu {
    fn failure(&self, reason: String) -> AccelError {
        let state = self
            .state()
            .map(|s| format_state(&s))
            .unwrap_or_else(|e| format!("(registers unavailable: {e})"));
        AccelError::GuestFailure {
            cpu: self.index,
            reason,
            state,
        }
    }
}

impl VcpuBackend for KvmVcpu {
    fn run(&mut self, io: &dyn IoHandler) -> Result<VcpuEvent, AccelError> {
        let run_ptr: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN.with(|c| c.set(run_ptr));
        loop {
            let exit = self.fd.run();
            let event = match exit {
                Ok(VcpuExit::IoIn(port, data)) => {
                    io.pio_read(port, data);
                    continue;
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    io.pio_write(port, data);
                    continue;
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    io.mmio_read(addr, data);
                    continue;
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    io.mmio_write(addr, data);
                    continue;
                }
                Ok(VcpuExit::Hlt) => VcpuEvent::Halted,
                Ok(VcpuExit::Shutdown) => VcpuEvent::Reset,
                Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                    KVM_SYSTEM_EVENT_RESET => VcpuEvent::Reset,
                    KVM_SYSTEM_EVENT_SHUTDOWN => VcpuEvent::PowerOff,
                    KVM_SYSTEM_EVENT_CRASH => {
                        return Err(self.failure("the guest reported a crash".into()))
                    }
                    other => {
                        return Err(self.failure(format!("unexpected system event {other}")))
                    }
                },
                Ok(VcpuExit::Intr) => VcpuEvent::Kicked,
                Ok(VcpuExit::InternalError) => {
                    // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                    // union member the kernel filled in.
                    let internal = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal };
                    let n = (internal.ndata as usize).min(internal.data.len());
                    let reason = match internal.suberror {
                        1 => "KVM emulation failure (an instruction KVM cannot emulate, \
                              e.g. code executed from MMIO)"
                            .to_string(),
                        2 => "KVM could not deliver a simultaneous exception".to_string(),
                        s => format!("KVM internal error, suberror {s}"),
                    };
                    return Err(self.failure(format!(
                        "{reason}; data {:x?}",
                        &internal.data[..n]
                    )));
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    return Err(self.failure(format!(
                        "KVM_EXIT_FAIL_ENTRY: hardware entry failure reason {reason:#x} on host CPU {cpu}"
                    )))
                }
                Ok(other) => {
                    let reason = format!("unhandled KVM exit {other:?}");
                    return Err(self.failure(reason));
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    VcpuEvent::Kicked
                }
                Err(e) => return Err(kvm_err("KVM_RUN")(e)),
            };
            if event == VcpuEvent::Kicked {
                self.fd.set_kvm_immediate_exit(0);
            }
            return Ok(event);
        }
    }

    fn set_state(&mut self, state: &CpuState) -> Result<(), AccelError> {
        let msrs: Vec<kvm_bindings::kvm_msr_entry> = state
            .msrs
            .iter()
            .map(|m| kvm_bindings::kvm_msr_entry {
                index: m.index,
                data: m.data,
                ..Default::default()
            })
            .collect();
        if !msrs.is_empty() {
            let msrs = Msrs::from_entries(&msrs)
                .map_err(|e| AccelError::Unsupported(format!("too many MSRs: {e:?}")))?;
            let n = self.fd.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
            if n != state.msrs.len() {
                let bad = state.msrs[n].index;
                return Err(AccelError::Unsupported(format!(
                    "KVM refused MSR {bad:#x} (set {n} of {})",
                    state.msrs.len()
                )));
            }
        }
        // Special registers first: KVM keeps apic_base and the interrupt bitmap from a read.
        let mut sregs = self.fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        apply_sregs(&mut sregs, &state.sregs);
        self.fd
            .set_sregs(&sregs)
            .map_err(kvm_err("KVM_SET_SREGS"))?;
        self.fd
            .set_regs(&to_kvm_regs(&state.regs))
            .map_err(kvm_err("KVM_SET_REGS"))?;
        Ok(())
    }

    fn state(&self) -> Result<CpuState, AccelError> {
        let r = self.fd.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
        let s = self.fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        Ok(CpuState {
            regs: from_kvm_regs(&r),
            sregs: from_kvm_sregs(&s),
            msrs: Vec::<MsrEntry>::new(),
        })
    }
}

fn to_kvm_regs(r: &GeneralRegs) -> kvm_regs {
    kvm_regs {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rsp: r.rsp,
        rbp: r.rbp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: r.rflags,
    }
}

fn from_kvm_regs(r: &kvm_regs) -> GeneralRegs {
    GeneralRegs {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rsp: r.rsp,
        rbp: r.rbp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: r.rflags,
    }
}

fn to_kvm_segment(s: &Segment) -> kvm_segment {
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present.into(),
        dpl: s.dpl,
        db: s.db.into(),
        s: s.s.into(),
        l: s.l.into(),
        g: s.g.into(),
        avl: s.avl.into(),
        unusable: s.unusable.into(),
        padding: 0,
    }
}

fn from_kvm_segment(s: &kvm_segment) -> Segment {
    Segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present != 0,
        dpl: s.dpl,
        db: s.db != 0,
        s: s.s != 0,
        l: s.l != 0,
        g: s.g != 0,
        avl: s.avl != 0,
        unusable: s.unusable != 0,
    }
}

fn apply_sregs(k: &mut kvm_sregs, s: &SpecialRegs) {
    k.cs = to_kvm_segment(&s.cs);
    k.ds = to_kvm_segment(&s.ds);
    k.es = to_kvm_segment(&s.es);
    k.fs = to_kvm_segment(&s.fs);
    k.gs = to_kvm_segment(&s.gs);
    k.ss = to_kvm_segment(&s.ss);
    k.tr = to_kvm_segment(&s.tr);
    k.ldt = to_kvm_segment(&s.ldt);
    k.gdt.base = s.gdt.base;
    k.gdt.limit = s.gdt.limit;
    k.idt.base = s.idt.base;
    k.idt.limit = s.idt.limit;
    k.cr0 = s.cr0;
    k.cr2 = s.cr2;
    k.cr3 = s.cr3;
    k.cr4 = s.cr4;
    k.cr8 = s.cr8;
    k.efer = s.efer;
    if s.apic_base != 0 {
        k.apic_base = s.apic_base;
    }
}

fn from_kvm_sregs(k: &kvm_sregs) -> SpecialRegs {
    SpecialRegs {
        cs: from_kvm_segment(&k.cs),
        ds: from_kvm_segment(&k.ds),
        es: from_kvm_segment(&k.es),
        fs: from_kvm_segment(&k.fs),
        gs: from_kvm_segment(&k.gs),
        ss: from_kvm_segment(&k.ss),
        tr: from_kvm_segment(&k.tr),
        ldt: from_kvm_segment(&k.ldt),
        gdt: DescriptorTable {
            base: k.gdt.base,
            limit: k.gdt.limit,
        },
        idt: DescriptorTable {
            base: k.idt.base,
            limit: k.idt.limit,
        },
        cr0: k.cr0,
        cr2: k.cr2,
        cr3: k.cr3,
        cr4: k.cr4,
        cr8: k.cr8,
        efer: k.efer,
        apic_base: k.apic_base,
    }
}

/// Leaf 0x1 EDX bits of the x86-64 baseline CPU (`-cpu qemu64`): FPU, VME, DE, PSE, TSC, MSR,
/// PAE, MCE, CX8, APIC, SEP, MTRR, PGE, MCA, CMOV, PAT, PSE36, CLFLUSH, MMX, FXSR, SSE, SSE2.
const BASELINE_LEAF1_EDX: u32 = 0x0789_fbff;
/// Leaf 0x1 ECX bits of the baseline: SSE3, CX16, hypervisor.
const BASELINE_LEAF1_ECX: u32 = (1 << 0) | (1 << 13) | (1 << 31);
/// Leaf 0x8000_0001 EDX bits of the baseline: SYSCALL, NX, LM.
const BASELINE_EXT_EDX: u32 = (1 << 11) | (1 << 20) | (1 << 29);
/// Leaf 0x8000_0001 ECX bits of the baseline: LAHF/SAHF in 64-bit mode.
const BASELINE_EXT_ECX: u32 = 1;

/// The CPUID table of vCPU `index`: what KVM supports, narrowed to the `-cpu` model, with the
/// topology leaves made consistent with the MADT.
pub fn vcpu_cpuid(
    supported: &CpuId,
    index: u32,
    config: &rampart_config::VmConfig,
) -> Result<CpuId, AccelError> {
    use crate::arch::x86_64::cpuid::{apply_topology, CpuidEntry};
    let mut entries: Vec<CpuidEntry> = supported
        .as_slice()
        .iter()
        .map(|e| CpuidEntry {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
        })
        .collect();
    if config.cpu == rampart_config::CpuModel::Qemu64 {
        for e in entries.iter_mut() {
            match e.function {
                0x1 => {
                    e.edx &= BASELINE_LEAF1_EDX;
                    e.ecx &= BASELINE_LEAF1_ECX;
                }
                0x7 | 0xd | 0x14 | 0x19 => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = 0;
                    e.edx = 0;
                }
                0x8000_0001 => {
                    e.edx &= BASELINE_EXT_EDX;
                    e.ecx &= BASELINE_EXT_ECX;
                }
                _ => {}
            }
        }
    }
    apply_topology(&mut entries, index, &config.smp);
    let kvm_entries: Vec<kvm_bindings::kvm_cpuid_entry2> = entries
        .iter()
        .map(|e| kvm_bindings::kvm_cpuid_entry2 {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
            ..Default::default()
        })
        .collect();
    CpuId::from_entries(&kvm_entries)
        .map_err(|e| AccelError::Unsupported(format!("CPUID table too large: {e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_conversion_round_trips() {
        let s = Segment {
            base: 0x1000,
            limit: 0xfffff,
            selector: 0x10,
            type_: 0xb,
            present: true,
            dpl: 0,
            db: false,
            s: true,
            l: true,
            g: true,
            avl: false,
            unusable: false,
        };
        assert_eq!(from_kvm_segment(&to_kvm_segment(&s)), s);
    }

    #[test]
    fn lvt_delivery_mode_is_replaced_and_other_bits_kept() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[0x350] = 0x30; // vector bits
        regs[0x351] = 0x07; // old delivery mode 0b111
        set_lvt(&mut regs, 0x350, 0b100);
        assert_eq!(regs[0x350] as u8, 0x30);
        assert_eq!(regs[0x351] as u8, 0x04);
    }
}
