//! The architectural register file of one x86-64 CPU.

use crate::flags::Flags;
use crate::memory::GuestMemory;
use crate::mmu::Tlb;
use iced_x86::Register;

/// Segment register index in [`Cpu::seg`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum SegReg {
    /// ES
    Es = 0,
    /// CS
    Cs = 1,
    /// SS
    Ss = 2,
    /// DS
    Ds = 3,
    /// FS
    Fs = 4,
    /// GS
    Gs = 5,
}

impl SegReg {
    /// From an iced segment register.
    pub fn from_iced(r: Register) -> Option<Self> {
        Some(match r {
            Register::ES => SegReg::Es,
            Register::CS => SegReg::Cs,
            Register::SS => SegReg::Ss,
            Register::DS => SegReg::Ds,
            Register::FS => SegReg::Fs,
            Register::GS => SegReg::Gs,
            _ => return None,
        })
    }
}

/// Access-rights bits of [`Segment::attr`] (the VMX "access rights" layout).
pub mod attr {
    /// Accessed / type bit 0.
    pub const ACCESSED: u16 = 1 << 0;
    /// Code: readable; data: writable.
    pub const RW: u16 = 1 << 1;
    /// Code: conforming; data: expand-down.
    pub const DC: u16 = 1 << 2;
    /// Code (1) or data (0).
    pub const CODE: u16 = 1 << 3;
    /// Code/data (1) or system (0) descriptor.
    pub const S: u16 = 1 << 4;
    /// Descriptor privilege level shift.
    pub const DPL_SHIFT: u16 = 5;
    /// Present.
    pub const P: u16 = 1 << 7;
    /// Available to software.
    pub const AVL: u16 = 1 << 12;
    /// 64-bit code segment.
    pub const L: u16 = 1 << 13;
    /// Default operation size 32-bit.
    pub const DB: u16 = 1 << 14;
    /// Granularity 4 KiB.
    pub const G: u16 = 1 << 15;
}

/// A segment register with its hidden (descriptor-cache) part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    /// Visible selector.
    pub selector: u16,
    /// Base address.
    pub base: u64,
    /// Limit in bytes (already scaled by G).
    pub limit: u32,
    /// Access rights, see [`attr`].
    pub attr: u16,
}

impl Segment {
    /// Descriptor privilege level.
    pub fn dpl(&self) -> u8 {
        ((self.attr >> attr::DPL_SHIFT) & 3) as u8
    }

    /// Build the hidden part from a raw 8-byte code/data descriptor.
    pub fn from_descriptor(selector: u16, raw: u64) -> Self {
        let base = ((raw >> 16) & 0xff_ffff) | (((raw >> 56) & 0xff) << 24);
        let mut limit = ((raw & 0xffff) | (((raw >> 48) & 0xf) << 16)) as u32;
        let attr = (((raw >> 40) & 0xff) | (((raw >> 52) & 0xf) << 12)) as u16;
        if attr & attr::G != 0 {
            limit = (limit << 12) | 0xfff;
        }
        Self {
            selector,
            base,
            limit,
            attr,
        }
    }
}

/// GDTR / IDTR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DescriptorTable {
    /// Linear base address.
    pub base: u64,
    /// Limit (last valid byte offset).
    pub limit: u16,
}

/// Minimal x87 state: enough for FNINIT/FNSTCW/FNSTSW/FXSAVE round trips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FpuState {
    /// Control word.
    pub fcw: u16,
    /// Status word.
    pub fsw: u16,
    /// Abridged tag word (FXSAVE format).
    pub ftw: u8,
    /// ST0-ST7 as raw 80-bit values.
    pub st: [[u8; 10]; 8],
}

impl Default for FpuState {
    fn default() -> Self {
        Self {
            fcw: 0x37f,
            fsw: 0,
            ftw: 0,
            st: [[0; 10]; 8],
        }
    }
}

/// CR0 bits.
pub mod cr0 {
    /// Protection enable.
    pub const PE: u64 = 1 << 0;
    /// Monitor coprocessor.
    pub const MP: u64 = 1 << 1;
    /// Emulation.
    pub const EM: u64 = 1 << 2;
    /// Task switched.
    pub const TS: u64 = 1 << 3;
    /// Extension type (always 1).
    pub const ET: u64 = 1 << 4;
    /// Numeric error.
    pub const NE: u64 = 1 << 5;
    /// Write protect.
    pub const WP: u64 = 1 << 16;
    /// Alignment mask.
    pub const AM: u64 = 1 << 18;
    /// Not write-through.
    pub const NW: u64 = 1 << 29;
    /// Cache disable.
    pub const CD: u64 = 1 << 30;
    /// Paging.
    pub const PG: u64 = 1 << 31;
}

/// CR4 bits the model supports.
pub mod cr4 {
    /// Page size extensions.
    pub const PSE: u64 = 1 << 4;
    /// Physical address extension.
    pub const PAE: u64 = 1 << 5;
    /// Machine check enable.
    pub const MCE: u64 = 1 << 6;
    /// Global pages.
    pub const PGE: u64 = 1 << 7;
    /// Performance counter enable.
    pub const PCE: u64 = 1 << 8;
    /// FXSAVE/FXRSTOR and SSE enabled.
    pub const OSFXSR: u64 = 1 << 9;
    /// Unmasked SIMD FP exceptions.
    pub const OSXMMEXCPT: u64 = 1 << 10;
    /// Time-stamp disable.
    pub const TSD: u64 = 1 << 2;
    /// Debugging extensions.
    pub const DE: u64 = 1 << 3;
    /// RDFSBASE/RDGSBASE/WRFSBASE/WRGSBASE enabled.
    pub const FSGSBASE: u64 = 1 << 16;
    /// Every bit a guest may set (the baseline model plus FSGSBASE: no SMEP/SMAP/PCID/XSAVE).
    pub const SUPPORTED: u64 =
        TSD | DE | PSE | PAE | MCE | PGE | PCE | OSFXSR | OSXMMEXCPT | FSGSBASE;
}

/// EFER bits.
pub mod efer {
    /// SYSCALL enable.
    pub const SCE: u64 = 1 << 0;
    /// Long mode enable.
    pub const LME: u64 = 1 << 8;
    /// Long mode active.
    pub const LMA: u64 = 1 << 10;
    /// No-execute enable.
    pub const NXE: u64 = 1 << 11;
    /// Writable bits.
    pub const WRITABLE: u64 = SCE | LME | NXE;
}

/// Callback answering CPUID (leaf, subleaf) -> [eax, ebx, ecx, edx].
pub type CpuidFn = Box<dyn FnMut(u32, u32) -> [u32; 4] + Send>;

/// I/O port read waiting for [`Cpu::complete_io_in`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PendingIn {
    pub port: u16,
    pub size: u8,
}

/// One x86-64 CPU.
///
/// `repr(C)`: translated code (`crate::jit`) addresses the fields it uses relative to a
/// pointer past the general registers, and they are declared first so that every offset fits
/// in a signed byte, which keeps its instructions short.
#[repr(C)]
pub struct Cpu {
    /// RAX..R15 in encoding order.
    pub gpr: [u64; 16],
    /// Instruction pointer.
    pub rip: u64,
    /// RFLAGS (lazy arithmetic flags).
    pub flags: Flags,
    /// Where the current instruction will continue (set before execution).
    pub(crate) next_rip: u64,
    /// Guest-physical page number of the block being run (`u64::MAX` outside a block): a
    /// store of this CPU to it ends the block.
    pub(crate) code_page: u64,
    /// Guest-physical page number of the page the running block's last instruction crosses
    /// into (`u64::MAX` if it does not): a store of this CPU to it ends the block too. Set by
    /// the run loop and by translations that cross; others may leave a stale one, which only
    /// ends a block early.
    pub(crate) code_page2: u64,
    /// This CPU stored to `code_page` (or `code_page2`) since the block started.
    pub(crate) code_written: bool,
    /// The block validation generation: a decoded block found intact in this generation runs
    /// again without comparing its bytes. A generation ends at every `Cpu::run` call (so
    /// stores of other vCPUs and DMA are seen within one run slice, as cross-modifying code on
    /// hardware is seen after a serializing instruction), at every exception or interrupt
    /// delivery and serializing instruction (IRET, CPUID, MOV to CR/DR, WRMSR...), and when this
    /// CPU stores to a page that may hold a block validated in it (`code_pages`). A
    /// `sole_cpu` whose memory has a [`crate::CodeWatch`] ends it at the first three only if
    /// the watch counted a write into a page of code since (see `crate::code_watch`). A WRMSR to
    /// an x2APIC register or IA32_TSC_DEADLINE is not serializing (Intel SDM vol. 3,
    /// "Serializing Instructions"), so it does not end a generation: a kernel writes them on every interrupt and
    /// idle entry.
    pub(crate) code_gen: u64,
    /// ES, CS, SS, DS, FS, GS (index with [`SegReg`]).
    pub seg: [Segment; 6],
    /// Task register.
    pub tr: Segment,
    /// LDT register.
    pub ldtr: Segment,
    /// GDTR.
    pub gdtr: DescriptorTable,
    /// IDTR.
    pub idtr: DescriptorTable,
    /// Control registers.
    pub cr0: u64,
    /// Page-fault linear address.
    pub cr2: u64,
    /// Page-table base.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// Task priority (CR8).
    pub cr8: u64,
    /// EFER.
    pub efer: u64,
    /// Debug registers DR0-DR7 (stored only; breakpoints are not implemented).
    pub dr: [u64; 8],
    /// Model-specific registers other than EFER, FS/GS base (allow-listed indices only).
    pub msr: crate::exec::system::MsrFile,
    /// XMM0-15.
    pub xmm: [u128; 16],
    /// MXCSR.
    pub mxcsr: u32,
    /// x87 state.
    pub fpu: FpuState,
    /// Time-stamp counter (advances by one per retired instruction).
    pub tsc: u64,
    /// CPUID provider.
    pub cpuid: CpuidFn,
    /// State of the locked read-modify-write instruction being executed, if any.
    pub(crate) lock: crate::exec::LockState,
    /// MSRs implemented by the embedder (local APIC, kvmclock), consulted first.
    pub msr_hook: Option<Box<dyn crate::exec::msr::MsrHook>>,
    /// The embedder's time-stamp counter (e.g. derived from real time), used by RDTSC and the
    /// TSC MSR instead of the instruction count when set; `tsc_offset` is added to it.
    pub tsc_source: Option<Box<dyn FnMut() -> u64 + Send>>,
    /// Offset applied to `tsc_source` (set by guest writes to IA32_TIME_STAMP_COUNTER).
    pub tsc_offset: u64,
    /// Halted until the next interrupt.
    pub halted: bool,
    /// Interrupts are blocked for one instruction (after STI or MOV/POP SS).
    pub interrupt_shadow: bool,
    pub(crate) pending_in: Option<PendingIn>,
    pub(crate) pending_shutdown: bool,
    pub(crate) tlb: Tlb,
    /// The identity of the RAM the host addresses in the TLB's fast tables came from (see
    /// `memory::RamIdentity`); `None`: unknown, they are dropped at the next run.
    pub(crate) fast_ram: Option<crate::memory::RamIdentity>,
    pub(crate) warned_ud: std::collections::BTreeSet<u32>,
    /// Recently decoded instructions (validated against the fetched bytes on every use).
    pub(crate) decoded: crate::decode_cache::DecodeCache,
    /// Decoded 64-bit blocks (validated against the code bytes on every entry).
    pub(crate) blocks: crate::block_cache::BlockCache,
    /// No other CPU writes this guest's memory ([`Cpu::set_sole_cpu`]).
    pub(crate) sole_cpu: bool,
    /// The chaining exit the last translated code left by (its index), to link to the
    /// translation that runs next (`jit::Jit::link`).
    pub(crate) pending_link: Option<usize>,
    /// The memory's [`crate::CodeWatch`] count of foreign writes into code when this CPU last
    /// looked.
    pub(crate) seen_code_writes: u64,
    /// A block was validated in this generation on a page the memory's watch does not cover
    /// (or the memory has none): the generation ends at the next run slice or delivery.
    pub(crate) unwatched: bool,
    /// Pages of the blocks validated in this generation: slot `page % CODE_PAGE_SLOTS` holds
    /// the low 16 bits of the last generation a block on such a page was validated in. A
    /// marked page always reads as marked; a false hit (another page of the same slot, or a
    /// stale stamp equal after the 16 bits wrap) only ends the generation early. Stamps, not
    /// bits, so a new generation clears nothing, and enough slots that a kernel's data pages
    /// rarely alias one of the hundreds of code pages a system call runs through (with a
    /// 512-bit set they did so often that generations lasted ~50 blocks under disk I/O).
    pub(crate) code_pages: Box<[u16]>,
    /// The staging buffer of bulk REP MOVS/STOS (`exec::string`), one page.
    pub(crate) bulk_buf: Box<[u8]>,
    /// Lower decoded blocks to pre-decoded forms (`crate::fast`); off only in tests that
    /// compare the two paths.
    pub(crate) fast_ops: bool,
    /// The block translator, when enabled ([`Cpu::enable_jit`]).
    pub(crate) jit: Option<Box<crate::jit::Jit>>,
}

/// Slots of `Cpu::code_pages` (a power of two; 64 KiB of stamps).
pub(crate) const CODE_PAGE_SLOTS: usize = 32768;

impl std::fmt::Debug for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cpu")
            .field("gpr", &self.gpr)
            .field("rip", &format_args!("{:#x}", self.rip))
            .field("rflags", &format_args!("{:#x}", self.flags.bits()))
            .field("cs", &self.seg[SegReg::Cs as usize])
            .field("cr0", &self.cr0)
            .field("cr3", &self.cr3)
            .field("cr4", &self.cr4)
            .field("efer", &self.efer)
            .finish_non_exhaustive()
    }
}

impl Default for Cpu {
    fn default() -> Self {
        Self::new()
    }
}

/// Register value and write helpers keyed by iced's `Register`.
impl Cpu {
    /// A CPU in the architectural power-on state (real mode at F000:FFF0).
    pub fn new() -> Self {
        let data = Segment {
            selector: 0,
            base: 0,
            limit: 0xffff,
            attr: attr::P | attr::S | attr::RW | attr::ACCESSED,
        };
        let mut seg = [data; 6];
        seg[SegReg::Cs as usize] = Segment {
            selector: 0xf000,
            base: 0xffff_0000,
            limit: 0xffff,
            attr: attr::P | attr::S | attr::CODE | attr::RW | attr::ACCESSED,
        };
        Self {
            gpr: [0; 16],
            rip: 0xfff0,
            flags: Flags::default(),
            seg,
            tr: Segment {
                attr: attr::P | 0xb,
                limit: 0xffff,
                ..Segment::default()
            },
            ldtr: Segment {
                attr: attr::P | 0x2,
                limit: 0xffff,
                ..Segment::default()
            },
            gdtr: DescriptorTable {
                base: 0,
                limit: 0xffff,
            },
            idtr: DescriptorTable {
                base: 0,
                limit: 0xffff,
            },
            cr0: cr0::ET | cr0::CD | cr0::NW,
            cr2: 0,
            cr3: 0,
            cr4: 0,
            cr8: 0,
            efer: 0,
            dr: [0, 0, 0, 0, 0, 0, 0xffff_0ff0, 0x400],
            msr: crate::exec::system::MsrFile::default(),
            xmm: [0; 16],
            mxcsr: 0x1f80,
            fpu: FpuState::default(),
            tsc: 0,
            cpuid: Box::new(crate::exec::system::baseline_cpuid),
            lock: crate::exec::LockState::default(),
            msr_hook: None,
            tsc_source: None,
            tsc_offset: 0,
            halted: false,
            interrupt_shadow: false,
            pending_in: None,
            pending_shutdown: false,
            tlb: Tlb::default(),
            fast_ram: None,
            next_rip: 0,
            warned_ud: std::collections::BTreeSet::new(),
            decoded: crate::decode_cache::DecodeCache::default(),
            blocks: crate::block_cache::BlockCache::default(),
            code_page: u64::MAX,
            code_page2: u64::MAX,
            code_written: false,
            code_gen: 1,
            sole_cpu: false,
            pending_link: None,
            seen_code_writes: 0,
            unwatched: false,
            code_pages: vec![0; CODE_PAGE_SLOTS].into_boxed_slice(),
            bulk_buf: vec![0; crate::exec::string::BULK_BYTES].into_boxed_slice(),
            fast_ops: true,
            jit: None,
        }
    }

    /// Put the CPU in 64-bit mode with flat segments, paging on with the given CR3, CPL 0:
    /// the state the Linux 64-bit boot protocol expects (the loader builds the tables).
    pub fn enter_long_mode_flat(&mut self, cr3: u64) {
        let code = Segment {
            selector: 0x10,
            base: 0,
            limit: u32::MAX,
            attr: attr::P | attr::S | attr::CODE | attr::RW | attr::ACCESSED | attr::L | attr::G,
        };
        let data = Segment {
            selector: 0x18,
            base: 0,
            limit: u32::MAX,
            attr: attr::P | attr::S | attr::RW | attr::ACCESSED | attr::DB | attr::G,
        };
        self.seg = [data; 6];
        self.seg[SegReg::Cs as usize] = code;
        self.tr = Segment {
            selector: 0,
            base: 0,
            limit: 0x67,
            attr: attr::P | 0xb,
        };
        self.cr0 = cr0::PE | cr0::ET | cr0::NE | cr0::PG | cr0::WP;
        self.cr4 = cr4::PAE;
        self.cr3 = cr3;
        self.efer = efer::LME | efer::LMA | efer::NXE | efer::SCE;
        self.tlb.flush_all();
    }

    /// INIT: the architectural reset state (real mode at F000:FFF0, EFER/CR0/CR4 cleared,
    /// segments, descriptor tables, debug registers and GPRs reset). As on hardware, INIT keeps
    /// the x87/SSE state, the MSRs other than EFER and the TSC; everything the embedder
    /// installed (CPUID provider, MSR hook, TSC source) stays too. The local APIC is the
    /// embedder's (see `apic`).
    pub fn reset(&mut self) {
        let fresh = Cpu::new();
        self.gpr = fresh.gpr;
        self.rip = fresh.rip;
        self.flags = fresh.flags;
        self.seg = fresh.seg;
        self.tr = fresh.tr;
        self.ldtr = fresh.ldtr;
        self.gdtr = fresh.gdtr;
        self.idtr = fresh.idtr;
        self.cr0 = fresh.cr0;
        self.cr2 = fresh.cr2;
        self.cr3 = fresh.cr3;
        self.cr4 = fresh.cr4;
        self.cr8 = fresh.cr8;
        self.efer = fresh.efer;
        self.dr = fresh.dr;
        self.halted = false;
        self.interrupt_shadow = false;
        self.pending_in = None;
        self.pending_shutdown = false;
        self.next_rip = fresh.next_rip;
        self.tlb.flush_all();
        // EDX holds the processor signature after reset (family/model/stepping of CPUID 1).
        self.gpr[gpr::RDX] = (self.cpuid)(1, 0)[0] as u64;
    }

    /// Start an application processor at a startup IPI: real mode at `vector << 8`:0000 (CS.base
    /// = `vector << 12`). Only CS:IP and the halted state change, as on hardware: the CPU is
    /// expected to be in the state [`Cpu::reset`] leaves (the INIT that precedes a SIPI).
    pub fn start_at_sipi(&mut self, vector: u8) {
        self.seg[SegReg::Cs as usize] = Segment {
            selector: (vector as u16) << 8,
            base: (vector as u64) << 12,
            limit: 0xffff,
            attr: attr::P | attr::S | attr::CODE | attr::RW | attr::ACCESSED,
        };
        self.rip = 0;
        self.halted = false;
        self.pending_in = None;
        self.pending_shutdown = false;
        self.interrupt_shadow = false;
    }

    /// Current privilege level (0 in real mode).
    pub fn cpl(&self) -> u8 {
        if self.cr0 & cr0::PE == 0 {
            return 0;
        }
        (self.seg[SegReg::Cs as usize].selector & 3) as u8
    }

    /// Whether memory accesses are checked with user privilege (CPL 3). Cheaper than
    /// [`Cpu::cpl`] on the hot path: in real mode paging is off, so the selector's low bits,
    /// which are not the CPL there, never matter.
    #[inline]
    pub(crate) fn user_access(&self) -> bool {
        self.seg[SegReg::Cs as usize].selector & 3 == 3
    }

    /// Whether the CPU runs 64-bit code (long mode and CS.L).
    pub fn in_64bit_mode(&self) -> bool {
        self.efer & efer::LMA != 0 && self.seg[SegReg::Cs as usize].attr & attr::L != 0
    }

    /// Whether the CPU is in real-address mode (CR0.PE clear).
    pub fn in_real_mode(&self) -> bool {
        self.cr0 & cr0::PE == 0
    }

    /// Default operand/address size of the running code in bits: 64, or 32/16 from CS.D.
    pub fn code_bits(&self) -> u32 {
        if self.in_64bit_mode() {
            64
        } else if self.seg[SegReg::Cs as usize].attr & attr::DB != 0 {
            32
        } else {
            16
        }
    }

    /// The mask applied to the stack pointer outside 64-bit mode (SS.B selects ESP or SP).
    pub(crate) fn sp_mask(&self) -> u64 {
        if self.in_64bit_mode() {
            u64::MAX
        } else if self.seg[SegReg::Ss as usize].attr & attr::DB != 0 {
            0xffff_ffff
        } else {
            0xffff
        }
    }

    /// Write the stack pointer with the width of the current stack (SP, ESP or RSP).
    pub(crate) fn set_sp(&mut self, v: u64) {
        match self.sp_mask() {
            u64::MAX => self.gpr[gpr::RSP] = v,
            0xffff => self.gpr[gpr::RSP] = (self.gpr[gpr::RSP] & !0xffff) | (v & 0xffff),
            m => self.gpr[gpr::RSP] = v & m,
        }
    }

    /// Note that a block on the page of `pa` was validated in this generation.
    #[inline]
    pub(crate) fn mark_code_page(&mut self, pa: u64) {
        self.code_pages[(pa >> 12) as usize % CODE_PAGE_SLOTS] = self.code_gen as u16;
    }

    /// Whether a block on the page of `pa` may have been validated in this generation.
    #[inline]
    pub(crate) fn code_page_marked(&self, pa: u64) -> bool {
        self.code_pages[(pa >> 12) as usize % CODE_PAGE_SLOTS] == self.code_gen as u16
    }

    /// End the block validation generation (see `code_gen`).
    #[inline]
    pub(crate) fn new_code_gen(&mut self) {
        self.code_gen = self.code_gen.wrapping_add(1).max(1);
        self.unwatched = false;
    }

    /// At a run slice, an event delivery or a serializing instruction: end the generation, so
    /// code written by others since is seen, unless this is the sole CPU, every block validated
    /// in the generation is on a page `mem`'s code watch covers, and the watch counted no write
    /// into code since the last look (a device's write a guest found by polling is seen at its
    /// next serializing instruction, as the cross-modifying-code rule asks).
    pub(crate) fn catch_up_with_writers(&mut self, mem: &dyn GuestMemory) {
        let Some(watch) = mem.code_watch() else {
            self.new_code_gen();
            return;
        };
        // Read before the generation ends: a write counted later is seen at the next look.
        let writes = watch.changes();
        let quiet = self.sole_cpu && !self.unwatched && writes == self.seen_code_writes;
        self.seen_code_writes = writes;
        if !quiet {
            self.new_code_gen();
        }
    }

    /// About to read the code bytes at guest-physical `pa` to validate or decode a block:
    /// have `mem`'s code watch report writes into that page from now on.
    #[inline]
    pub(crate) fn watch_code(&mut self, mem: &dyn GuestMemory, pa: u64) {
        if self.sole_cpu && !mem.code_watch().is_some_and(|w| w.watch(pa)) {
            self.unwatched = true;
        }
    }

    /// Declare whether this is the only CPU writing guest memory (a one-vCPU machine without
    /// CPU hot-plug). If the memory reports everyone else's writes to a [`crate::CodeWatch`],
    /// run slices, event deliveries and serializing instructions (IRET, CPUID, MOV to CR...)
    /// then end the block validation generation only if such a write hit a page of code.
    /// Default: false.
    pub fn set_sole_cpu(&mut self, sole: bool) {
        self.sole_cpu = sole;
    }

    /// Size the decoded-block table to `1 << log2_slots` slots (clamped to 4..=20; the default
    /// is 16, about 6 MiB allocated at the first 64-bit block) and empty it. Every size runs the
    /// same code; a smaller table only decodes again more often. For embedders that make many
    /// short-lived CPUs, such as fuzzing harnesses.
    pub fn set_block_cache_size(&mut self, log2_slots: u32) {
        self.blocks = crate::block_cache::BlockCache::with_slot_bits(log2_slots);
    }

    /// Translate decoded blocks that have run `threshold` times (at least once) to host code
    /// (`crate::jit`), from now on, in a region of `pool` (given back when this CPU is
    /// dropped). Returns false, and the CPU keeps interpreting, if no region is free.
    pub fn enable_jit(&mut self, pool: &crate::jit::CodePool, threshold: u32) -> bool {
        // Blocks translated by an earlier translator point into a region it gave back.
        self.blocks = crate::block_cache::BlockCache::with_slot_bits(self.blocks.slot_bits());
        self.jit = crate::jit::Jit::new(pool, threshold.max(1)).map(Box::new);
        self.jit.is_some()
    }

    /// Blocks translated so far (0 without [`Cpu::enable_jit`]).
    pub fn jit_blocks(&self) -> u64 {
        self.jit.as_ref().map_or(0, |j| j.compiled)
    }

    /// Flush the software TLB (after the embedder edits CR0/CR3/CR4/EFER or page tables directly).
    pub fn flush_tlb(&mut self) {
        self.tlb.flush_all();
    }

    /// Read a general-purpose register of any width (0 for non-GPRs).
    #[inline]
    pub fn reg(&self, r: Register) -> u64 {
        match gpr_slot(r) {
            Some((i, Width::Low8)) => self.gpr[i] & 0xff,
            Some((i, Width::High8)) => (self.gpr[i] >> 8) & 0xff,
            Some((i, Width::W16)) => self.gpr[i] & 0xffff,
            Some((i, Width::W32)) => self.gpr[i] & 0xffff_ffff,
            Some((i, Width::W64)) => self.gpr[i],
            None => 0,
        }
    }

    /// Write a general-purpose register with x86 merge rules (32-bit writes zero-extend).
    #[inline]
    pub fn set_reg(&mut self, r: Register, v: u64) {
        match gpr_slot(r) {
            Some((i, Width::Low8)) => self.gpr[i] = (self.gpr[i] & !0xff) | (v & 0xff),
            Some((i, Width::High8)) => self.gpr[i] = (self.gpr[i] & !0xff00) | ((v & 0xff) << 8),
            Some((i, Width::W16)) => self.gpr[i] = (self.gpr[i] & !0xffff) | (v & 0xffff),
            Some((i, Width::W32)) => self.gpr[i] = v & 0xffff_ffff,
            Some((i, Width::W64)) => self.gpr[i] = v,
            None => {}
        }
    }

    /// The base used for linear addresses through segment `r`.
    pub(crate) fn seg_base(&self, r: Register) -> u64 {
        match SegReg::from_iced(r) {
            Some(s @ (SegReg::Fs | SegReg::Gs)) => self.seg[s as usize].base,
            Some(s) if !self.in_64bit_mode() => self.seg[s as usize].base,
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Width {
    Low8,
    High8,
    W16,
    W32,
    W64,
}

/// Map an iced GPR to (index into `gpr`, width). iced numbers the GPRs contiguously: AL..R15L
/// (with AH..BH at 4..7), AX..R15W, EAX..R15D, RAX..R15 (checked against iced's own
/// classification by a test below).
#[inline]
pub(crate) fn gpr_slot(r: Register) -> Option<(usize, Width)> {
    const AL: usize = Register::AL as usize;
    const R15L: usize = Register::R15L as usize;
    const AX: usize = Register::AX as usize;
    const R15W: usize = Register::R15W as usize;
    const EAX: usize = Register::EAX as usize;
    const R15D: usize = Register::R15D as usize;
    const RAX: usize = Register::RAX as usize;
    const R15: usize = Register::R15 as usize;
    let v = r as usize;
    match v {
        AL..=R15L => {
            let n = v - AL;
            Some(match n {
                0..=3 => (n, Width::Low8),
                4..=7 => (n - 4, Width::High8),
                _ => (n - 4, Width::Low8),
            })
        }
        AX..=R15W => Some((v - AX, Width::W16)),
        EAX..=R15D => Some((v - EAX, Width::W32)),
        RAX..=R15 => Some((v - RAX, Width::W64)),
        _ => None,
    }
}

/// GPR indices.
pub mod gpr {
    /// RAX
    pub const RAX: usize = 0;
    /// RCX
    pub const RCX: usize = 1;
    /// RDX
    pub const RDX: usize = 2;
    /// RBX
    pub const RBX: usize = 3;
    /// RSP
    pub const RSP: usize = 4;
    /// RBP
    pub const RBP: usize = 5;
    /// RSI
    pub const RSI: usize = 6;
    /// RDI
    pub const RDI: usize = 7;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table-free `gpr_slot` against iced's classification of every register.
    #[test]
    fn gpr_slot_agrees_with_iced_for_every_register() {
        for r in Register::values() {
            let want = if r.is_gpr8() {
                let n = r.number();
                Some(match n {
                    0..=3 => (n, Width::Low8),
                    4..=7 => (n - 4, Width::High8),
                    _ => (n - 4, Width::Low8),
                })
            } else if r.is_gpr16() {
                Some((r.number(), Width::W16))
            } else if r.is_gpr32() {
                Some((r.number(), Width::W32))
            } else if r.is_gpr64() {
                Some((r.number(), Width::W64))
            } else {
                None
            };
            assert_eq!(gpr_slot(r), want, "{r:?}");
        }
    }

    #[test]
    fn high_byte_registers_alias_bits_8_to_15() {
        let mut c = Cpu::new();
        c.set_reg(Register::RAX, 0x1122_3344_5566_7788);
        c.set_reg(Register::AH, 0xaa);
        assert_eq!(c.reg(Register::RAX), 0x1122_3344_5566_aa88);
        assert_eq!(c.reg(Register::AH), 0xaa);
        c.set_reg(Register::SIL, 0x55);
        assert_eq!(c.gpr[gpr::RSI], 0x55);
        c.set_reg(Register::R15L, 0x66);
        assert_eq!(c.gpr[15], 0x66);
    }

    #[test]
    fn thirty_two_bit_writes_zero_extend() {
        let mut c = Cpu::new();
        c.gpr[3] = u64::MAX;
        c.set_reg(Register::EBX, 1);
        assert_eq!(c.gpr[3], 1);
        c.gpr[3] = u64::MAX;
        c.set_reg(Register::BX, 1);
        assert_eq!(c.gpr[3], 0xffff_ffff_ffff_0001);
    }

    #[test]
    fn decodes_flat_code_descriptor() {
        let s = Segment::from_descriptor(0x10, 0x00af_9b00_0000_ffff);
        assert_eq!(s.base, 0);
        assert_eq!(s.limit, u32::MAX);
        assert_ne!(s.attr & attr::L, 0);
        assert_eq!(s.dpl(), 0);
    }
}
