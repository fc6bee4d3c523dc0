//! Test machine: 4 MiB of RAM, identity-mapped 1 GiB (2 MiB pages, user-accessible), a GDT with
//! 64-bit kernel/user segments and a TSS, and an IDT whose 32 exception stubs record the vector at
//! [`EXC_RECORD`] and halt.

use crate::cpu::{Cpu, Segment};
use crate::flags::ARITH;
use crate::memory::FlatMemory;
use crate::Exit;
use iced_x86::code_asm::{CodeAssembler, IcedError};

pub const RAM: usize = 4 << 20;
pub const PML4: u64 = 0x1000;
pub const GDT: u64 = 0x5000;
pub const IDT: u64 = 0x6000;
pub const TSS: u64 = 0x7000;
pub const HANDLERS: u64 = 0x8000;
pub const EXC_RECORD: u64 = 0x9000;
pub const RSP0: u64 = 0x8_0000;
pub const CODE: u64 = 0x10_0000;
pub const DATA: u64 = 0x20_0000;
pub const STACK_TOP: u64 = 0x3f_f000;
pub const NO_EXCEPTION: u64 = 0xff;

pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
pub const USER_CS: u16 = 0x1b;
pub const USER_DS: u16 = 0x23;
pub const TSS_SEL: u16 = 0x28;

/// xorshift64*: a small deterministic generator for randomized tests.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-enough in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// One of `from` (non-empty).
    pub fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len())]
    }
}

pub struct Machine {
    pub cpu: Cpu,
    pub mem: FlatMemory,
}

pub struct Outcome {
    pub cpu: Cpu,
    pub mem: FlatMemory,
    pub exit: Exit,
    pub exception: Option<u8>,
}

impl Outcome {
    pub fn arith_flags(&self) -> u64 {
        self.cpu.flags.bits() & ARITH
    }
    pub fn mem_u64(&self, gpa: u64) -> u64 {
        self.mem.read_u64(gpa).unwrap()
    }
    /// Error code pushed by the last exception (top of the kernel stack).
    pub fn error_code(&self) -> u64 {
        self.mem.read_u64(self.cpu.gpr[4]).unwrap()
    }
}

fn gate(offset: u64, sel: u16, ist: u8, ty: u8, dpl: u8) -> (u64, u64) {
    let lo = (offset & 0xffff)
        | ((sel as u64) << 16)
        | ((ist as u64 & 7) << 32)
        | ((ty as u64) << 40)
        | ((dpl as u64) << 45)
        | (1 << 47)
        | (((offset >> 16) & 0xffff) << 48);
    (lo, offset >> 32)
}

impl Machine {
    pub fn new() -> Self {
        let mut mem = FlatMemory::new(RAM);
        // Identity map 1 GiB with 2 MiB user-accessible writable pages.
        mem.write_u64(PML4, 0x2000 | 7).unwrap();
        mem.write_u64(0x2000, 0x3000 | 7).unwrap();
        for i in 0..512u64 {
            mem.write_u64(0x3000 + i * 8, (i << 21) | 0x87).unwrap();
        }
        // GDT: null, kernel code, kernel data, user code, user data, TSS (16 bytes).
        let gdt: [u64; 5] = [
            0,
            0x00af_9b00_0000_ffff,
            0x00cf_9300_0000_ffff,
            0x00af_fb00_0000_ffff,
            0x00cf_f300_0000_ffff,
        ];
        for (n, d) in gdt.iter().enumerate() {
            mem.write_u64(GDT + 8 * n as u64, *d).unwrap();
        }
        let tss_lo =
            0x67 | ((TSS & 0xff_ffff) << 16) | (0x89u64 << 40) | (((TSS >> 24) & 0xff) << 56);
        mem.write_u64(GDT + 0x28, tss_lo).unwrap();
        mem.write_u64(GDT + 0x30, TSS >> 32).unwrap();
        mem.write_u64(TSS + 4, RSP0).unwrap();
        mem.write_u64(EXC_RECORD, NO_EXCEPTION).unwrap();
        // Exception stubs: mov byte [EXC_RECORD], v; hlt.
        for v in 0..32u64 {
            let stub = HANDLERS + v * 16;
            let mut code = vec![0xc6, 0x04, 0x25];
            code.extend_from_slice(&(EXC_RECORD as u32).to_le_bytes());
            code.push(v as u8);
            code.push(0xf4);
            mem.load(stub, &code).unwrap();
            let (lo, hi) = gate(stub, KERNEL_CS, 0, 0xe, 3);
            mem.write_u64(IDT + v * 16, lo).unwrap();
            mem.write_u64(IDT + v * 16 + 8, hi).unwrap();
        }
        let mut cpu = Cpu::new();
        // Every test runs each block interpreted first, then translated (`crate::jit`) from
        // its second run, so loops exercise both.
        let pool = crate::CodePool::new(1).expect("code memory");
        assert!(cpu.enable_jit(&pool, 2));
        cpu.enter_long_mode_flat(PML4);
        cpu.gdtr.base = GDT;
        cpu.gdtr.limit = 0x37;
        cpu.idtr.base = IDT;
        cpu.idtr.limit = 32 * 16 - 1;
        cpu.seg[crate::SegReg::Cs as usize].selector = KERNEL_CS;
        for s in [0usize, 2, 3, 4, 5] {
            cpu.seg[s].selector = KERNEL_DS;
        }
        cpu.tr = Segment {
            selector: TSS_SEL,
            base: TSS,
            limit: 0x67,
            attr: 0x8b,
        };
        cpu.gpr[4] = STACK_TOP;
        cpu.rip = CODE;
        Self { cpu, mem }
    }

    pub fn load_code(&mut self, code: &[u8]) {
        self.mem.load(CODE, code).unwrap();
    }

    pub fn run(mut self, budget: u64) -> Outcome {
        let exit = self.cpu.run(&mut self.mem, budget);
        let rec = self.mem.read_u64(EXC_RECORD).unwrap() & 0xff;
        let exception = (rec != NO_EXCEPTION).then_some(rec as u8);
        Outcome {
            cpu: self.cpu,
            mem: self.mem,
            exit,
            exception,
        }
    }
}

pub fn assemble(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    f(&mut a).unwrap();
    a.hlt().unwrap();
    a.assemble(CODE).unwrap()
}

/// Assemble `f` + HLT at [`CODE`] and run it to the HLT.
pub fn run_asm(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Outcome {
    let code = assemble(f);
    let mut m = Machine::new();
    m.load_code(&code);
    m.run(100_000)
}

/// Run raw bytes followed by HLT.
pub fn run_bytes(bytes: &[u8]) -> Outcome {
    let mut m = Machine::new();
    let mut code = bytes.to_vec();
    code.push(0xf4);
    m.load_code(&code);
    m.run(100_000)
}
