//! The 64-bit side of a test guest: a small assembler wrapper with the helper routines every
//! program uses (serial output, hex printing, CMOS access, reset).
//!
//! Register conventions of the helpers (all preserve every register they do not return in):
//! - `putc`: writes AL to COM1, polling the line status register a bounded number of times.
//! - `puts`: writes the NUL-terminated string at RSI.
//! - `put_hex8`: writes AL as two lowercase hex digits.
//! - `put_hex32`: writes EAX as eight lowercase hex digits.
//! - `cmos_read`: returns CMOS register AL in AL.
//! - `reset`: pulls the i8042 reset line, then writes QEMU microvm's ACPI GED reset register,
//!   then triple-faults if still running (page fault with an empty IDT). Never returns.

use iced_x86::code_asm::{
    al, ax, bl, byte_ptr, ds, eax, ecx, edx, es, fs, gs, ptr, rax, rbx, rcx, rdx, rsi, rsp, ss,
    CodeAssembler, CodeLabel,
};
use iced_x86::IcedError;

use crate::BuildError;

use crate::layout::{
    CMOS_DATA_PORT, CMOS_INDEX_PORT, COM1_LSR_PORT, COM1_PORT, DATA_SELECTOR, I8042_COMMAND_PORT,
    I8042_RESET_CMD, MICROVM_GED_RESET_ADDR, MICROVM_GED_RESET_VALUE, PD_COUNT, STACK_TOP,
};

/// How many times `putc` polls the line status register before sending anyway.
const LSR_POLL_LIMIT: u32 = 100_000;
/// Line status register: transmitter holding register empty.
const LSR_THRE: u8 = 1 << 5;
/// How many times the CMOS update-in-progress flag is polled before reading anyway.
const CMOS_UIP_POLL_LIMIT: u32 = 100_000;
/// CMOS status register A and its update-in-progress bit.
const CMOS_STATUS_A: u8 = 0x0a;
const CMOS_UIP: u8 = 1 << 7;

/// The first guest-virtual address the page tables leave unmapped (they map 0..4 GiB).
const UNMAPPED_ADDR: u64 = PD_COUNT << 30;

/// The 64-bit code being assembled at [`crate::layout::CODE64_ADDR`].
pub struct Guest64 {
    /// The assembler, for program-specific instructions.
    pub a: CodeAssembler,
    putc: CodeLabel,
    puts: CodeLabel,
    put_hex8: CodeLabel,
    put_hex32: CodeLabel,
    cmos_read: CodeLabel,
    reset: CodeLabel,
    zero_idtr: CodeLabel,
    strings: Vec<(CodeLabel, Vec<u8>)>,
}

impl Guest64 {
    /// Starts the 64-bit code: flat data segments and the stack.
    pub fn new() -> Result<Self, IcedError> {
        let mut a = CodeAssembler::new(64)?;
        let labels = [(); 7].map(|()| a.create_label());
        let [putc, puts, put_hex8, put_hex32, cmos_read, reset, zero_idtr] = labels;
        a.mov(ax, u32::from(DATA_SELECTOR))?;
        a.mov(ds, ax)?;
        a.mov(es, ax)?;
        a.mov(ss, ax)?;
        a.mov(fs, ax)?;
        a.mov(gs, ax)?;
        a.mov(rsp, STACK_TOP)?;
        Ok(Self {
            a,
            putc,
            puts,
            put_hex8,
            put_hex32,
            cmos_read,
            reset,
            zero_idtr,
            strings: Vec::new(),
        })
    }

    /// Prints a constant string (emitted NUL-terminated after the code).
    pub fn print(&mut self, text: &str) -> Result<(), BuildError> {
        if text.as_bytes().contains(&0) {
            return Err(BuildError::NulInString(text.to_owned()));
        }
        let label = self.a.create_label();
        let mut bytes = text.as_bytes().to_vec();
        bytes.push(0);
        self.strings.push((label, bytes));
        self.a.lea(rsi, ptr(label))?;
        self.a.call(self.puts)?;
        Ok(())
    }

    /// Prints the byte in AL.
    pub fn putc_al(&mut self) -> Result<(), IcedError> {
        self.a.call(self.putc)
    }

    /// Prints one constant byte (clobbers AL).
    pub fn putc(&mut self, byte: u8) -> Result<(), IcedError> {
        self.a.mov(al, u32::from(byte))?;
        self.a.call(self.putc)
    }

    /// Prints AL as two hex digits.
    pub fn put_hex8_al(&mut self) -> Result<(), IcedError> {
        self.a.call(self.put_hex8)
    }

    /// Prints EAX as eight hex digits.
    pub fn put_hex32_eax(&mut self) -> Result<(), IcedError> {
        self.a.call(self.put_hex32)
    }

    /// Loads CMOS register `index` into AL.
    pub fn cmos_read(&mut self, index: u8) -> Result<(), IcedError> {
        self.a.mov(al, u32::from(index))?;
        self.a.call(self.cmos_read)
    }

    /// Waits (bounded) until the RTC is not in the middle of an update. Clobbers AL, ECX.
    pub fn cmos_wait_not_updating(&mut self) -> Result<(), IcedError> {
        let mut again = self.a.create_label();
        let mut done = self.a.create_label();
        self.a.mov(ecx, CMOS_UIP_POLL_LIMIT)?;
        self.a.set_label(&mut again)?;
        self.cmos_read(CMOS_STATUS_A)?;
        // 0xff: no RTC decodes the port; there is no update to wait for.
        self.a.cmp(al, 0xffu32)?;
        self.a.je(done)?;
        self.a.test(al, u32::from(CMOS_UIP))?;
        self.a.jz(done)?;
        self.a.pause()?;
        self.a.dec(ecx)?;
        self.a.jnz(again)?;
        self.a.set_label(&mut done)?;
        Ok(())
    }

    /// Resets the machine (never returns).
    pub fn reset(&mut self) -> Result<(), IcedError> {
        self.a.jmp(self.reset)
    }

    /// Emits the helper routines and strings, and assembles everything at `ip`.
    pub fn finish(mut self, ip: u64) -> Result<Vec<u8>, IcedError> {
        // Whatever the program does, it never falls through into the helpers.
        self.a.jmp(self.reset)?;
        self.emit_putc()?;
        self.emit_puts()?;
        self.emit_put_hex()?;
        self.emit_cmos_read()?;
        self.emit_reset()?;
        for (mut label, bytes) in std::mem::take(&mut self.strings) {
            self.a.set_label(&mut label)?;
            self.a.db(&bytes)?;
        }
        self.a.assemble(ip)
    }

    fn emit_putc(&mut self) -> Result<(), IcedError> {
        let a = &mut self.a;
        let mut poll = a.create_label();
        let mut send = a.create_label();
        a.set_label(&mut self.putc)?;
        a.push(rcx)?;
        a.push(rdx)?;
        a.push(rax)?;
        a.mov(ecx, LSR_POLL_LIMIT)?;
        a.mov(edx, u32::from(COM1_LSR_PORT))?;
        a.set_label(&mut poll)?;
        a.in_(al, iced_x86::code_asm::dx)?;
        // 0xff: nothing decodes the port (no UART); do not wait for it.
        a.cmp(al, 0xffu32)?;
        a.je(send)?;
        a.test(al, u32::from(LSR_THRE))?;
        a.jnz(send)?;
        a.pause()?;
        a.dec(ecx)?;
        a.jnz(poll)?;
        a.set_label(&mut send)?;
        a.pop(rax)?;
        a.mov(edx, u32::from(COM1_PORT))?;
        a.out(iced_x86::code_asm::dx, al)?;
        a.pop(rdx)?;
        a.pop(rcx)?;
        a.ret()
    }

    fn emit_puts(&mut self) -> Result<(), IcedError> {
        let putc = self.putc;
        let a = &mut self.a;
        let mut next = a.create_label();
        let mut done = a.create_label();
        a.set_label(&mut self.puts)?;
        a.push(rax)?;
        a.push(rsi)?;
        a.set_label(&mut next)?;
        a.mov(al, byte_ptr(rsi))?;
        a.test(al, al)?;
        a.jz(done)?;
        a.call(putc)?;
        a.inc(rsi)?;
        a.jmp(next)?;
        a.set_label(&mut done)?;
        a.pop(rsi)?;
        a.pop(rax)?;
        a.ret()
    }

    fn emit_put_hex(&mut self) -> Result<(), IcedError> {
        let putc = self.putc;
        let put_hex8 = self.put_hex8;
        let a = &mut self.a;
        let mut nibble = a.create_label();
        let mut digit = a.create_label();

        // put_hex8: AL -> two digits.
        a.set_label(&mut self.put_hex8)?;
        a.push(rax)?;
        a.push(rbx)?;
        a.mov(bl, al)?;
        a.shr(al, 4u32)?;
        a.call(nibble)?;
        a.mov(al, bl)?;
        a.and(al, 0x0fu32)?;
        a.call(nibble)?;
        a.pop(rbx)?;
        a.pop(rax)?;
        a.ret()?;

        // nibble: AL in 0..16 -> one lowercase digit (clobbers AL).
        a.set_label(&mut nibble)?;
        a.cmp(al, 10u32)?;
        a.jb(digit)?;
        a.add(al, u32::from(b'a' - b'0' - 10))?;
        a.set_label(&mut digit)?;
        a.add(al, u32::from(b'0'))?;
        a.jmp(putc)?;

        // put_hex32: EAX -> eight digits, most significant byte first.
        a.set_label(&mut self.put_hex32)?;
        a.push(rax)?;
        for _ in 0..4 {
            a.rol(eax, 8u32)?;
            a.call(put_hex8)?;
        }
        a.pop(rax)?;
        a.ret()
    }

    fn emit_cmos_read(&mut self) -> Result<(), IcedError> {
        let a = &mut self.a;
        a.set_label(&mut self.cmos_read)?;
        a.out(u32::from(CMOS_INDEX_PORT), al)?;
        a.in_(al, u32::from(CMOS_DATA_PORT))?;
        a.ret()
    }

    fn emit_reset(&mut self) -> Result<(), IcedError> {
        let zero_idtr = self.zero_idtr;
        let a = &mut self.a;
        let mut halt = a.create_label();
        a.set_label(&mut self.reset)?;
        a.mov(al, u32::from(I8042_RESET_CMD))?;
        a.out(u32::from(I8042_COMMAND_PORT), al)?;
        // No i8042 (QEMU microvm): the hardware-reduced ACPI reset register.
        a.mov(rax, MICROVM_GED_RESET_ADDR)?;
        a.mov(byte_ptr(rax), u32::from(MICROVM_GED_RESET_VALUE))?;
        // Still running: with an IDT of limit 0 any exception becomes a triple fault. The
        // first one is a page fault on the first unmapped address (4 GiB): kvm-pvm delivers
        // that one, while its instruction emulator gives up on `int3` (KVM emulation failure).
        a.lidt(ptr(zero_idtr))?;
        a.mov(rax, UNMAPPED_ADDR)?;
        a.mov(al, byte_ptr(rax))?;
        a.int3()?;
        a.ud2()?;
        a.set_label(&mut halt)?;
        a.hlt()?;
        a.jmp(halt)?;
        a.set_label(&mut self.zero_idtr)?;
        a.db(&[0u8; 10])
    }
}
