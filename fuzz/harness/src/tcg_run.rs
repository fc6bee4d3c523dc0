//! `tcg_run`: the software CPU executing hostile 64-bit code.
//!
//! The input bytes are loaded at [`CODE`] in a 4 MiB [`FlatMemory`] and run in 64-bit mode at
//! CPL 0, with identity paging of the low 4 GiB (2 MiB pages, writable, user-accessible, so the
//! guest can rewrite its own page tables, GDT and IDT), a full 256-vector IDT, a TSS with an
//! IST stack, and a small MMIO window at the local-APIC address.
//!
//! Bounded: at most [`MAX_RUNS`] calls to `Cpu::run` of [`BUDGET_PER_RUN`] instructions each;
//! port reads are answered, halts are woken by an injected interrupt, everything else ends the
//! run. Checks: no panic; every access the CPU makes respects the [`GuestMemory`] contract
//! (1..=16 bytes, inside one 4 KiB page); every successful access lies in RAM or in the MMIO
//! window; a `PhysicalMemory` exit follows a counted fault.

use std::cell::RefCell;

use rampart_tcg::cpu::attr;
use rampart_tcg::{Cpu, Exit, FlatMemory, GuestMemory, MemFault, MmioHandler, SegReg, Segment};

pub const RAM: usize = 4 << 20;
const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;
/// Four page directories (0x3000..0x7000) map 0..4 GiB.
const PD: u64 = 0x3000;
const GDT: u64 = 0x8000;
const TSS: u64 = 0x9000;
const IDT: u64 = 0xa000;
const HANDLERS: u64 = 0xc000;
/// The last vector each exception stub recorded.
const RECORD: u64 = 0xe000;
const IST1_TOP: u64 = 0x7_0000;
const RSP0: u64 = 0x8_0000;
pub const CODE: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STACK_TOP: u64 = 0x3f_f000;
/// An MMIO window where the local APIC would be.
const MMIO_BASE: u64 = 0xfee0_0000;
const MMIO_LEN: u64 = 0x1000;

const KERNEL_CS: u16 = 0x08;
const KERNEL_DS: u16 = 0x10;
const TSS_SEL: u16 = 0x28;

/// Instructions per `Cpu::run` call.
pub const BUDGET_PER_RUN: u64 = 256;
/// `Cpu::run` calls per input (so at most 16 exits are handled).
pub const MAX_RUNS: usize = 16;
/// Vectors that push an error code.
const ERROR_CODE_VECTORS: [u64; 8] = [8, 10, 11, 12, 13, 14, 17, 21];

/// The local-APIC-sized MMIO window: reads return a pattern, writes are accepted.
struct Window;

impl MmioHandler for Window {
    fn mmio_read(&mut self, gpa: u64, data: &mut [u8]) -> bool {
        if !in_window(gpa, data.len()) {
            return false;
        }
        data.fill(gpa as u8 ^ 0x5a);
        true
    }
    fn mmio_write(&mut self, gpa: u64, data: &[u8]) -> bool {
        in_window(gpa, data.len())
    }
}

fn in_window(gpa: u64, len: usize) -> bool {
    gpa >= MMIO_BASE && gpa.saturating_add(len as u64) <= MMIO_BASE + MMIO_LEN
}

/// Pages of RAM.
const PAGES: usize = RAM / 4096;

/// Counts and checks every access the CPU makes, and remembers which RAM pages it wrote so
/// they can be restored from the template for the next input.
struct Probe<'a> {
    inner: &'a mut FlatMemory,
    faults: u64,
    dirty: [u64; PAGES / 64],
}

impl Probe<'_> {
    fn mark_dirty(&mut self, gpa: u64) {
        let page = (gpa / 4096) as usize;
        if page < PAGES {
            self.dirty[page / 64] |= 1 << (page % 64);
        }
    }

    fn dirty_pages(&self) -> impl Iterator<Item = usize> + '_ {
        (0..PAGES).filter(|p| self.dirty[p / 64] & (1 << (p % 64)) != 0)
    }

    fn check(
        &mut self,
        what: &str,
        gpa: u64,
        len: usize,
        result: Result<(), MemFault>,
    ) -> Result<(), MemFault> {
        assert!(
            (1..=16).contains(&len) && gpa % 4096 + len as u64 <= 4096,
            "CPU broke the memory contract: {what} of {len} bytes at {gpa:#x}"
        );
        match result {
            Ok(()) => {
                let in_ram = gpa.checked_add(len as u64).is_some_and(|e| e <= RAM as u64);
                assert!(
                    in_ram || in_window(gpa, len),
                    "{what} of {len} bytes at {gpa:#x} succeeded outside RAM and MMIO"
                );
            }
            Err(_) => self.faults += 1,
        }
        result
    }
}

impl GuestMemory for Probe<'_> {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), MemFault> {
        let r = self.inner.read(gpa, buf);
        self.check("read", gpa, buf.len(), r)
    }

    fn write(&mut self, gpa: u64, buf: &[u8]) -> Result<(), MemFault> {
        let r = self.inner.write(gpa, buf);
        if r.is_ok() {
            self.mark_dirty(gpa);
        }
        self.check("write", gpa, buf.len(), r)
    }

    fn ram_slice(&self, gpa: u64, len: usize) -> Option<&[u8]> {
        let s = self.inner.ram_slice(gpa, len)?;
        assert!(
            s.len() == len && gpa.checked_add(len as u64).is_some_and(|e| e <= RAM as u64),
            "ram_slice({gpa:#x}, {len}) returned {} bytes",
            s.len()
        );
        Some(s)
    }
}

fn gate(handler: u64, ist: u64) -> (u64, u64) {
    let lo = (handler & 0xffff)
        | (u64::from(KERNEL_CS) << 16)
        | (ist << 32)
        | (0xe << 40) // 64-bit interrupt gate
        | (3 << 45) // DPL 3, so `int n` works from any CPL
        | (1 << 47)
        | (((handler >> 16) & 0xffff) << 48);
    (lo, handler >> 32)
}

/// Exception stub for `vector`: record it, then either return (traps and interrupts, popping
/// the error code if any) or halt for good (faults, which would otherwise repeat forever).
fn stub(vector: u64) -> Vec<u8> {
    // mov byte [RECORD], vector
    let mut code = vec![0xc6, 0x04, 0x25];
    code.extend_from_slice(&(RECORD as u32).to_le_bytes());
    code.push(vector as u8);
    let returns = matches!(vector, 1 | 3 | 4) || vector >= 32;
    if returns {
        if ERROR_CODE_VECTORS.contains(&vector) {
            code.extend_from_slice(&[0x48, 0x83, 0xc4, 0x08]); // add rsp, 8
        }
        code.extend_from_slice(&[0x48, 0xcf]); // iretq
    } else {
        code.extend_from_slice(&[0xf4, 0xeb, 0xfd]); // hlt; jmp back to hlt
    }
    code
}

/// The guest memory every input starts from: page tables, GDT, TSS, IDT and stubs.
fn template_memory() -> FlatMemory {
    let mut mem = FlatMemory::new(RAM).with_mmio(Box::new(Window));
    let put =
        |mem: &mut FlatMemory, gpa: u64, v: u64| mem.write_u64(gpa, v).expect("layout inside RAM");
    put(&mut mem, PML4, PDPT | 7);
    for g in 0..4u64 {
        put(&mut mem, PDPT + g * 8, (PD + g * 0x1000) | 7);
        for i in 0..512u64 {
            put(
                &mut mem,
                PD + g * 0x1000 + i * 8,
                (g << 30) | (i << 21) | 0x87,
            );
        }
    }
    let gdt = [
        0,
        0x00af_9b00_0000_ffff, // kernel code
        0x00cf_9300_0000_ffff, // kernel data
        0x00af_fb00_0000_ffff, // user code
        0x00cf_f300_0000_ffff, // user data
    ];
    for (n, d) in gdt.iter().enumerate() {
        put(&mut mem, GDT + 8 * n as u64, *d);
    }
    put(
        &mut mem,
        GDT + 0x28,
        0x67 | ((TSS & 0xff_ffff) << 16) | (0x89 << 40) | (((TSS >> 24) & 0xff) << 56),
    );
    put(&mut mem, GDT + 0x30, TSS >> 32);
    put(&mut mem, TSS + 4, RSP0); // RSP0
    put(&mut mem, TSS + 0x24, IST1_TOP); // IST1
    for v in 0..256u64 {
        let handler = HANDLERS + v * 16;
        let ist = u64::from(v == 8 || v == 2); // #DF and NMI on IST1
        let (lo, hi) = gate(handler, ist);
        put(&mut mem, IDT + v * 16, lo);
        put(&mut mem, IDT + v * 16 + 8, hi);
        mem.load(handler, &stub(v)).expect("stub inside RAM");
    }
    mem
}

/// A CPU in 64-bit mode at CPL 0 on the template's tables, about to run [`CODE`].
fn boot_cpu() -> Cpu {
    let mut cpu = Cpu::new();
    // 64 block slots, not 65,536: a run is a few hundred instructions, and evictions get
    // exercised too.
    cpu.set_block_cache_size(6);
    // Blocks run interpreted once, then translated (`-accel tcg,jit=on`), so both run
    // hostile code. The code region is the thread's, lent to each input's CPU.
    CODE_POOL.with(|pool| assert!(cpu.enable_jit(pool, 2), "a free code region"));
    cpu.enter_long_mode_flat(PML4);
    cpu.gdtr.base = GDT;
    cpu.gdtr.limit = 0x37;
    cpu.idtr.base = IDT;
    cpu.idtr.limit = 256 * 16 - 1;
    cpu.seg[SegReg::Cs as usize].selector = KERNEL_CS;
    for s in [SegReg::Es, SegReg::Ss, SegReg::Ds, SegReg::Fs, SegReg::Gs] {
        cpu.seg[s as usize].selector = KERNEL_DS;
    }
    cpu.tr = Segment {
        selector: TSS_SEL,
        base: TSS,
        limit: 0x67,
        attr: attr::P | 0xb,
    };
    // Registers point into the data area (so memory operands land in RAM) at varied offsets;
    // RCX is a small count for `rep` and `loop`.
    for (i, r) in cpu.gpr.iter_mut().enumerate() {
        *r = DATA + (i as u64) * 0x1_0100;
    }
    cpu.gpr[1] = 0x40;
    cpu.gpr[4] = STACK_TOP;
    cpu.rip = CODE;
    cpu
}

thread_local! {
    /// Code memory for the translator, mapped once per thread.
    static CODE_POOL: rampart_tcg::CodePool =
        rampart_tcg::CodePool::new(1).expect("code memory for the translator");

    /// The machine's memory and a copy of its template image, kept across inputs: building
    /// 4 MiB of tables per input cost more than running the input. After each input the
    /// pages it wrote are copied back from the image.
    static MACHINE: RefCell<(FlatMemory, Vec<u8>)> = RefCell::new({
        let mem = template_memory();
        let mut image = vec![0u8; RAM];
        mem.dump(0, &mut image).expect("RAM dump");
        (mem, image)
    });
}

pub fn run(data: &[u8]) {
    run_outcome(data);
}

/// Runs `data` and returns the last exit and the number of faulting accesses.
fn run_outcome(data: &[u8]) -> (Exit, u64) {
    MACHINE.with(|m| {
        let (mem, image) = &mut *m.borrow_mut();
        let mut probe = Probe {
            inner: mem,
            faults: 0,
            dirty: [0; PAGES / 64],
        };
        let len = data.len().min(RAM - CODE as usize);
        probe
            .inner
            .load(CODE, &data[..len])
            .expect("code inside RAM");
        for gpa in (CODE..CODE + len as u64).step_by(4096) {
            probe.mark_dirty(gpa);
        }
        if len > 0 {
            probe.mark_dirty(CODE + len as u64 - 1);
        }
        let outcome = execute(&mut probe);
        let dirty: Vec<usize> = probe.dirty_pages().collect();
        for page in dirty {
            let at = page * 4096;
            mem.load(at as u64, &image[at..at + 4096])
                .expect("restoring a page inside RAM");
        }
        outcome
    })
}

fn execute(mem: &mut Probe<'_>) -> (Exit, u64) {
    let mut cpu = boot_cpu();
    let mut exit = Exit::InstructionLimit;
    for round in 0..MAX_RUNS {
        exit = cpu.run(mem, BUDGET_PER_RUN);
        match exit {
            Exit::IoIn { port, size } => {
                assert!(
                    matches!(size, 1 | 2 | 4),
                    "IN of {size} bytes from {port:#x}"
                );
                cpu.complete_io_in(u32::from(port) ^ 0xdead_beef);
            }
            Exit::IoOut { size, .. } => {
                assert!(matches!(size, 1 | 2 | 4), "OUT of {size} bytes");
            }
            Exit::Halt => {
                // Wake it with a timer-like interrupt; if it cannot be taken, stop.
                let vector = 0x20 + (round as u8 & 0xf);
                if !cpu.inject_external_interrupt(mem, vector) {
                    break;
                }
                cpu.halted = false;
            }
            Exit::PhysicalMemory(fault) => {
                assert!(mem.faults > 0, "PhysicalMemory({fault:?}) without a fault");
                break;
            }
            Exit::InstructionLimit | Exit::Shutdown | Exit::Unsupported { .. } => break,
        }
    }
    (exit, mem.faults)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory_matches_template() -> bool {
        MACHINE.with(|m| {
            let (mem, image) = &*m.borrow();
            let mut now = vec![0u8; RAM];
            mem.dump(0, &mut now).unwrap();
            now == *image
        })
    }

    #[test]
    fn restores_memory_to_the_template_after_an_input_that_overwrites_its_tables() {
        // Arrange: mov rdi, 0; mov ecx, 0x10000; mov al, 0xcc; rep stosb (over the page
        // tables, GDT and IDT); hlt
        let code = [
            0x48, 0x31, 0xff, 0xb9, 0x00, 0x00, 0x01, 0x00, 0xb0, 0xcc, 0xf3, 0xaa, 0xf4,
        ];
        // Act
        run_outcome(&code);
        // Assert
        assert!(memory_matches_template());
    }

    #[test]
    fn halt_without_interrupts_enabled_ends_the_run() {
        let (exit, faults) = run_outcome(&[0xf4]);
        assert_eq!((exit, faults), (Exit::Halt, 0));
    }

    #[test]
    fn unmapped_read_counts_a_fault() {
        // mov rax, 0x8000_0000 (2 GiB: mapped by the page tables, no RAM there); mov rbx, [rax]
        let code = [
            0x48, 0xb8, 0, 0, 0, 0x80, 0, 0, 0, 0, 0x48, 0x8b, 0x18, 0xf4,
        ];
        let (exit, faults) = run_outcome(&code);
        assert!(matches!(exit, Exit::PhysicalMemory(_)), "{exit:?}");
        assert_eq!(faults, 1);
    }

    #[test]
    fn mmio_window_answers_reads() {
        // mov eax, [0xfee00030]; hlt
        let code = [0x8b, 0x04, 0x25, 0x30, 0, 0xe0, 0xfe, 0xf4];
        let (exit, faults) = run_outcome(&code);
        assert_eq!((exit, faults), (Exit::Halt, 0));
    }
}
