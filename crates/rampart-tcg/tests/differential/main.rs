//! Differential tests: every generated case runs on the host CPU and in the interpreter, and all
//! GPRs, the defined arithmetic flags (see `gen` for the per-instruction masks), DF and the test's
//! stack and scratch memory must match exactly.

mod gen;
mod gen2;
mod gen3;
mod gen32;
mod native;
mod sse;

use rampart_tcg::{Cpu, Exit, FlatMemory, GuestMemory};

/// Shared address layout (virtual addresses are identical natively and in the emulator).
pub mod layout {
    /// Code stubs (2 MiB).
    pub const CODE_VA: u64 = 0x7100_0000;
    pub const CODE_LEN: usize = 0x20_0000;
    /// State block, stack and scratch memory.
    pub const DATA_VA: u64 = 0x7120_0000;
    pub const DATA_MAP_LEN: usize = 0x4000;
    pub const STATE_VA: u64 = DATA_VA;
    pub const IN_GPR: u64 = 0x0;
    pub const IN_FLAGS: u64 = 0x80;
    pub const OUT_GPR: u64 = 0x100;
    pub const OUT_FLAGS: u64 = 0x180;
    pub const HOST_RSP: u64 = 0x200;
    pub const FLAGS_STACK: u64 = 0x800;
    /// Compared memory: stack (0x1000..0x3000) and scratch (0x3000..0x4000).
    pub const DATA_OFF: u64 = 0x1000;
    pub const DATA_LEN: usize = 0x3000;
    pub const STACK_TOP_VA: u64 = DATA_VA + 0x2800;
    pub const SCRATCH_OFF: u64 = 0x2000; // within the compared data
    pub const SCRATCH_VA: u64 = DATA_VA + DATA_OFF + SCRATCH_OFF;
    /// Shared results of a native batch.
    pub const RESULTS_VA: u64 = 0x7200_0000;
    pub const BATCH: usize = 256;
}

use layout::*;

/// One test case: a body of instructions and its initial state.
pub struct Case {
    pub name: String,
    pub body: Vec<u8>,
    pub gpr: [u64; 16],
    pub flags: u64,
    pub data: Vec<u8>,
    /// Arithmetic flags (and DF) compared.
    pub flag_mask: u64,
    pub stub_va: u64,
    pub body_va: u64,
    /// Run the body as 32-bit code in compatibility mode (only EAX..EDI are compared).
    pub compat: bool,
}

impl Case {
    pub fn new(name: String, body: Vec<u8>, rng: &mut gen::Rng) -> Case {
        let mut gpr = [0u64; 16];
        for g in gpr.iter_mut() {
            *g = rng.value();
        }
        gpr[4] = STACK_TOP_VA;
        let flags = 0x2 | (rng.next() & gen::ARITH);
        let mut data = vec![0u8; DATA_LEN];
        for b in data[SCRATCH_OFF as usize..].iter_mut() {
            *b = rng.next() as u8;
        }
        Case {
            name,
            body,
            gpr,
            flags,
            data,
            flag_mask: gen::ARITH | gen::DF,
            stub_va: 0,
            body_va: 0,
            compat: false,
        }
    }

    /// Compare only these arithmetic flags (DF is always compared).
    pub fn mask(mut self, m: u64) -> Case {
        self.flag_mask = m | gen::DF;
        self
    }

    /// The body uses `[rsi + disp]` memory operands: point RSI into the scratch page.
    pub fn mem(mut self) -> Case {
        self.gpr[6] = SCRATCH_VA + 0x800;
        self
    }
}

/// Lay out stubs for all cases in one code image.
fn layout_cases(cases: &mut [Case]) -> Vec<u8> {
    let mut code = Vec::new();
    for c in cases.iter_mut() {
        let ip = CODE_VA + code.len() as u64;
        let stub = if c.compat {
            native::stub_compat(ip, &c.body)
        } else {
            native::stub(ip, &c.body)
        };
        c.stub_va = ip;
        let body_off = if c.compat {
            native::compat_body_offset(ip)
        } else {
            native::prologue_len(ip)
        };
        c.body_va = ip + body_off;
        code.extend_from_slice(&stub);
        while code.len() % 16 != 0 {
            code.push(0xcc);
        }
        assert!(code.len() < CODE_LEN, "too many cases for the code area");
    }
    code
}

const PA_CODE: u64 = 0x20_0000;
const PA_DATA: u64 = 0x40_0000;

/// The interpreter with the same virtual layout (2 MiB pages), no IDT (any exception is a
/// mismatch and shows up as a triple fault).
struct Emu {
    mem: FlatMemory,
}

impl Emu {
    fn new(code: &[u8]) -> Emu {
        let mut mem = FlatMemory::new(0x60_0000);
        mem.write_u64(0x1000, 0x2000 | 7).expect("pml4");
        mem.write_u64(0x2000 + 8, 0x3000 | 7).expect("pdpt");
        mem.write_u64(0x3000 + ((CODE_VA - 0x4000_0000) >> 21) * 8, PA_CODE | 0x87)
            .expect("pd");
        mem.write_u64(0x3000 + ((DATA_VA - 0x4000_0000) >> 21) * 8, PA_DATA | 0x87)
            .expect("pd");
        mem.load(PA_CODE, code).expect("code");
        Emu { mem }
    }

    fn run(&mut self, c: &Case) -> Result<([u64; 16], u64, Vec<u8>), String> {
        let mut cpu = Cpu::new();
        cpu.enter_long_mode_flat(0x1000);
        cpu.idtr.limit = 0;
        cpu.cr4 |= rampart_tcg::cpu::cr4::OSFXSR | rampart_tcg::cpu::cr4::OSXMMEXCPT;
        cpu.gpr = c.gpr;
        cpu.flags.set_bits(c.flags);
        cpu.rip = c.body_va;
        if c.compat {
            // Compatibility mode: a flat 32-bit code segment under EFER.LMA.
            use rampart_tcg::cpu::attr;
            let cs = &mut cpu.seg[rampart_tcg::SegReg::Cs as usize];
            cs.attr =
                attr::P | attr::S | attr::CODE | attr::RW | attr::ACCESSED | attr::DB | attr::G;
            cs.limit = u32::MAX;
        }
        self.mem.load(PA_DATA + DATA_OFF, &c.data).expect("data");
        let end = c.body_va + c.body.len() as u64;
        for _ in 0..100_000 {
            if cpu.rip == end {
                let mut data = vec![0u8; DATA_LEN];
                self.mem.dump(PA_DATA + DATA_OFF, &mut data).expect("dump");
                return Ok((cpu.gpr, cpu.flags.bits(), data));
            }
            match cpu.run(&mut self.mem as &mut dyn GuestMemory, 1) {
                Exit::InstructionLimit => {}
                e => return Err(format!("emulator exit {e:?} at rip {:#x}", cpu.rip)),
            }
        }
        Err("emulator did not reach the end of the body".into())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run all cases both ways; panic with the first mismatches.
fn check(family: &str, mut cases: Vec<Case>) {
    let code = layout_cases(&mut cases);
    let native = native::run(&code, &cases);
    let mut emu = Emu::new(&code);
    let mut failures = Vec::new();
    for (c, n) in cases.iter().zip(&native) {
        let what = match emu.run(c) {
            Err(e) => Some(e),
            Ok((gpr, flags, data)) => {
                let mut diffs = Vec::new();
                // Compatibility mode: r8-r15 and the upper halves are undefined natively.
                let (regs, mask) = if c.compat {
                    (8, 0xffff_ffff)
                } else {
                    (16, u64::MAX)
                };
                for (i, (e, h)) in gpr.iter().zip(&n.gpr).enumerate().take(regs) {
                    let (e, h) = (e & mask, h & mask);
                    if e != h {
                        diffs.push(format!("r{i}: emu {e:#x} host {h:#x}"));
                    }
                }
                if (flags ^ n.flags) & c.flag_mask != 0 {
                    diffs.push(format!(
                        "flags (mask {:#x}): emu {:#x} host {:#x}",
                        c.flag_mask,
                        flags & c.flag_mask,
                        n.flags & c.flag_mask
                    ));
                }
                if let Some(p) = data.iter().zip(&n.data).position(|(a, b)| a != b) {
                    diffs.push(format!("memory differs at data+{p:#x}"));
                }
                (!diffs.is_empty()).then(|| diffs.join("; "))
            }
        };
        if let Some(w) = what {
            failures.push(format!(
                "{} [{}] in gpr {:x?} flags {:#x}: {w}",
                c.name,
                hex(&c.body),
                c.gpr,
                c.flags
            ));
        }
    }
    eprintln!(
        "{family}: {} cases, {} mismatches",
        cases.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{family}: {} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures[..failures.len().min(15)].join("\n")
    );
}

/// The native mappings use fixed addresses, so the families run one after another.
#[test]
fn differential_against_host_cpu() {
    let mut rng = gen::Rng::new(0x00d1_ff00_5eed);
    check("alu", gen::alu(&mut rng, 40));
    check("alu-imm", gen::alu_imm(&mut rng, 40));
    check("unary", gen::unary(&mut rng, 60));
    check("shift", gen::shifts(&mut rng, 60));
    check("double-shift", gen::double_shifts(&mut rng, 60));
    check("muldiv", gen2::muldiv(&mut rng, 50));
    check("bits", gen2::bits(&mut rng, 30));
    check("conditional", gen2::conditional(&mut rng, 30));
    check("moves", gen2::moves(&mut rng, 30));
    check("strings", gen2::strings(&mut rng, 12));
    check("stack", gen2::stack(&mut rng, 100));
    check("address-size", gen3::address_size(&mut rng, 40));
    check("compat-mode", gen32::compat(&mut rng, 30));
    check("sse-int", sse::sse_int(&mut rng, 6));
    check("sse-move", sse::sse_move(&mut rng, 8));
    check("sse-fp", sse::sse_fp(&mut rng, 40));
    check("sse-cvt", sse::sse_cvt(&mut rng, 40));
    check("x87-fxsave", sse::x87_fxsave(&mut rng, 30));
}
