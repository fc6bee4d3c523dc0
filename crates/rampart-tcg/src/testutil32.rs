//! Test machines outside 64-bit mode: a real-mode CPU (CS = DS = ES = SS = 0x1000, base
//! 0x10000) and a 32-bit protected-mode CPU with a flat GDT, each with an interrupt table whose
//! handlers record the vector at [`EXC_RECORD`] and halt.

use crate::cpu::{attr, cr0, Cpu, SegReg, Segment};
use crate::memory::FlatMemory;
use crate::Exit;

pub const RAM: usize = 2 << 20;
/// Real mode: all segments 0x1000 (base 0x10000).
pub const SEG16: u16 = 0x1000;
pub const CODE16_BASE: u64 = 0x1_0000;
pub const DATA16_BASE: u64 = 0x1_0000;
/// Offset of the code in the real-mode segment.
pub const CODE16_IP: u64 = 0x100;
pub const STACK16: u64 = 0xfff0;
/// Real-mode handlers: segment 0x2000, vector v at offset v*8.
pub const IVT_HANDLER_SEG: u16 = 0x2000;
pub const EXC_RECORD: u64 = 0x500;
pub const NO_EXCEPTION: u8 = 0xff;

/// Protected mode layout.
pub const GDT32: u64 = 0x1000;
pub const IDT32: u64 = 0x2000;
pub const TSS32: u64 = 0x3000;
pub const HANDLERS32: u64 = 0x4000;
pub const CODE32: u64 = 0x10_0000;
pub const STACK32: u64 = 0x8_0000;
pub const ESP0: u64 = 0x9_0000;
/// Selectors: 0x08 flat 32-bit code, 0x10 flat data, 0x18 16-bit code (base 0x10000),
/// 0x20 64-bit code, 0x2b user code (DPL 3), 0x33 user data, 0x38 TSS, 0x40 not-present data,
/// 0x48 data with limit 0xfff.
pub const CS32: u16 = 0x08;
pub const DS32: u16 = 0x10;
pub const CS16: u16 = 0x18;
pub const CS64: u16 = 0x20;
pub const USER_CS32: u16 = 0x2b;
pub const USER_DS32: u16 = 0x33;
pub const TSS32_SEL: u16 = 0x38;
pub const NP_DS: u16 = 0x40;
pub const SMALL_DS: u16 = 0x48;

pub struct Outcome {
    pub cpu: Cpu,
    pub mem: FlatMemory,
    pub exit: Exit,
    pub exception: Option<u8>,
}

impl Outcome {
    pub fn u32_at(&self, gpa: u64) -> u32 {
        self.mem.read_u64(gpa).unwrap() as u32
    }
    pub fn u16_at(&self, gpa: u64) -> u16 {
        self.mem.read_u64(gpa).unwrap() as u16
    }
}

pub struct Machine16 {
    pub cpu: Cpu,
    pub mem: FlatMemory,
}

fn finish(mut cpu: Cpu, mut mem: FlatMemory, budget: u64) -> Outcome {
    let exit = cpu.run(&mut mem, budget);
    let mut b = [0u8; 1];
    mem.dump(EXC_RECORD, &mut b).unwrap();
    Outcome {
        cpu,
        mem,
        exit,
        exception: (b[0] != NO_EXCEPTION).then_some(b[0]),
    }
}

impl Machine16 {
    pub fn new() -> Self {
        let mut mem = FlatMemory::new(RAM);
        mem.load(EXC_RECORD, &[NO_EXCEPTION]).unwrap();
        // IVT: vector v -> 2000:v*8, handler "mov byte [cs:0x500-0x20000]...": simpler: use
        // absolute segment 0 writes: "xor bx,bx; mov ds,bx; mov byte [0x500], v; hlt".
        let hbase = (IVT_HANDLER_SEG as u64) << 4;
        for v in 0..32u64 {
            let off = v * 16;
            mem.load(v * 4, &(off as u16).to_le_bytes()).unwrap();
            mem.load(v * 4 + 2, &IVT_HANDLER_SEG.to_le_bytes()).unwrap();
            let stub = [
                0x31,
                0xdb, // xor bx, bx
                0x8e,
                0xdb, // mov ds, bx
                0xc6,
                0x06,
                (EXC_RECORD & 0xff) as u8,
                (EXC_RECORD >> 8) as u8,
                v as u8, // mov byte [0x500], v
                0xf4,    // hlt
            ];
            mem.load(hbase + off, &stub).unwrap();
        }
        let mut cpu = Cpu::new();
        cpu.idtr.limit = 0x3ff;
        for s in 0..6 {
            cpu.seg[s].selector = SEG16;
            cpu.seg[s].base = (SEG16 as u64) << 4;
        }
        cpu.rip = CODE16_IP;
        cpu.gpr[4] = STACK16;
        Self { cpu, mem }
    }

    pub fn run_code(mut self, code: &[u8]) -> Outcome {
        let mut c = code.to_vec();
        c.push(0xf4);
        self.mem.load(CODE16_BASE + CODE16_IP, &c).unwrap();
        finish(self.cpu, self.mem, 100_000)
    }
}

/// Run 16-bit real-mode code (followed by HLT) at 1000:0100.
pub fn run16(code: &[u8]) -> Outcome {
    Machine16::new().run_code(code)
}

pub struct Machine32 {
    pub cpu: Cpu,
    pub mem: FlatMemory,
}

pub fn descriptor(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    (limit as u64 & 0xffff)
        | ((base as u64 & 0xff_ffff) << 16)
        | ((access as u64) << 40)
        | (((limit as u64 >> 16) & 0xf) << 48)
        | (((flags as u64) & 0xf) << 52)
        | (((base as u64) >> 24) << 56)
}

impl Machine32 {
    pub fn new() -> Self {
        let mut mem = FlatMemory::new(RAM);
        mem.load(EXC_RECORD, &[NO_EXCEPTION]).unwrap();
        let gdt = [
            0,
            descriptor(0, 0xfffff, 0x9b, 0xc),
            descriptor(0, 0xfffff, 0x93, 0xc),
            descriptor(0x1_0000, 0xffff, 0x9b, 0x0),
            descriptor(0, 0xfffff, 0x9b, 0xa),
            descriptor(0, 0xfffff, 0xfb, 0xc),
            descriptor(0, 0xfffff, 0xf3, 0xc),
            descriptor(TSS32 as u32, 0x67, 0x89, 0),
            descriptor(0, 0xfffff, 0x13, 0xc),
            descriptor(0, 0xfff, 0x93, 0x4),
        ];
        for (n, d) in gdt.iter().enumerate() {
            mem.write_u64(GDT32 + 8 * n as u64, *d).unwrap();
        }
        // TSS: ESP0, SS0.
        mem.load(TSS32 + 4, &(ESP0 as u32).to_le_bytes()).unwrap();
        mem.load(TSS32 + 8, &DS32.to_le_bytes()).unwrap();
        // IDT: 32-bit interrupt gates (DPL 3) to stubs "mov byte [ss:EXC_RECORD], v; hlt".
        for v in 0..32u64 {
            let stub = HANDLERS32 + v * 16;
            // SS override: DS may be the culprit.
            let mut code = vec![0x36, 0xc6, 0x05];
            code.extend_from_slice(&(EXC_RECORD as u32).to_le_bytes());
            code.push(v as u8);
            code.push(0xf4);
            mem.load(stub, &code).unwrap();
            let gate =
                (stub & 0xffff) | ((CS32 as u64) << 16) | (0xeeu64 << 40) | ((stub >> 16) << 48);
            mem.write_u64(IDT32 + v * 8, gate).unwrap();
        }
        let mut cpu = Cpu::new();
        cpu.cr0 = cr0::PE | cr0::ET;
        cpu.gdtr.base = GDT32;
        cpu.gdtr.limit = 0x4f;
        cpu.idtr.base = IDT32;
        cpu.idtr.limit = 32 * 8 - 1;
        let flat = |sel: u16, a: u16| Segment {
            selector: sel,
            base: 0,
            limit: u32::MAX,
            attr: a | attr::DB | attr::G,
        };
        let data = attr::P | attr::S | attr::RW | attr::ACCESSED;
        cpu.seg = [flat(DS32, data); 6];
        cpu.seg[SegReg::Cs as usize] = flat(CS32, data | attr::CODE);
        cpu.tr = Segment {
            selector: TSS32_SEL,
            base: TSS32,
            limit: 0x67,
            attr: attr::P | 0xb,
        };
        cpu.rip = CODE32;
        cpu.gpr[4] = STACK32;
        Self { cpu, mem }
    }

    pub fn run_code(mut self, code: &[u8]) -> Outcome {
        let mut c = code.to_vec();
        c.push(0xf4);
        self.mem.load(CODE32, &c).unwrap();
        finish(self.cpu, self.mem, 100_000)
    }
}

impl Machine32 {
    /// Run from the current CS:EIP (code already in memory).
    pub fn run_code_at_current(self) -> Outcome {
        finish(self.cpu, self.mem, 100_000)
    }
}

/// Run 32-bit protected-mode code (followed by HLT) at [`CODE32`].
pub fn run32(code: &[u8]) -> Outcome {
    Machine32::new().run_code(code)
}

/// Assemble 16- or 32-bit code with iced at `ip`.
pub fn asm(
    bits: u32,
    ip: u64,
    f: impl FnOnce(&mut iced_x86::code_asm::CodeAssembler) -> Result<(), iced_x86::IcedError>,
) -> Vec<u8> {
    let mut a = iced_x86::code_asm::CodeAssembler::new(bits).unwrap();
    f(&mut a).unwrap();
    a.assemble(ip).unwrap()
}

/// A GuestMemory without `ram_slice` (as an embedder over mmap'd memory may be): fetches take
/// the copying path.
pub struct NoSlice(pub FlatMemory);

impl crate::GuestMemory for NoSlice {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), crate::MemFault> {
        self.0.read(gpa, buf)
    }
    fn write(&mut self, gpa: u64, buf: &[u8]) -> Result<(), crate::MemFault> {
        self.0.write(gpa, buf)
    }
}
