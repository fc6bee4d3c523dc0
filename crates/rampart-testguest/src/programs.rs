//! The test programs, one function each. Every program prints lines that start with
//! [`crate::LINE_PREFIX`] and end with `\n`, and ends by resetting the machine (except `spin`).

use iced_x86::code_asm::{
    al, bl, byte_ptr, dword_ptr, dx, eax, ebx, r10b, r11b, r12b, r13b, r14b, r8b, r9b, rax, rbx,
    rdi,
};

use crate::layout::{ACPI_S5_VALUE, ACPI_SLEEP_CONTROL_PORT, UNASSIGNED_MMIO_ADDR};
use crate::runtime::Guest64;
use crate::{BuildError, Program, MMIO_TEST_PATTERN, TOUCH_RAM_END, TOUCH_RAM_START};

/// Emits the body of `program`.
pub fn emit(program: Program, g: &mut Guest64) -> Result<(), BuildError> {
    match program {
        Program::Hello => hello(g),
        Program::Cmos => cmos(g),
        Program::Mmio => mmio(g),
        Program::Poweroff => poweroff(g),
        Program::EmulationFailure => emulation_failure(g),
        Program::Spin => spin(g),
        Program::Count => count(g),
        Program::TouchRam => touch_ram(g),
    }
}

/// `rampart-testguest: hello`, then reset.
fn hello(g: &mut Guest64) -> Result<(), BuildError> {
    g.print("rampart-testguest: hello\n")?;
    g.reset()?;
    Ok(())
}

/// `rampart-testguest: cmos CCYY-MM-DD HH:MM:SS` from the RTC's raw (BCD) bytes, then reset.
fn cmos(g: &mut Guest64) -> Result<(), BuildError> {
    // Read every field first, right after an update, so the printout is one consistent time.
    g.cmos_wait_not_updating()?;
    let fields = [
        (0x32, r14b), // century
        (0x09, r13b), // year
        (0x08, r12b), // month
        (0x07, r11b), // day of month
        (0x04, r10b), // hours
        (0x02, r9b),  // minutes
        (0x00, r8b),  // seconds
    ];
    for (index, reg) in fields {
        g.cmos_read(index)?;
        g.a.mov(reg, al)?;
    }
    g.print("rampart-testguest: cmos ")?;
    let separators = [
        None,
        Some(b'-'),
        Some(b'-'),
        Some(b' '),
        Some(b':'),
        Some(b':'),
        None,
    ];
    for ((_, reg), sep) in fields.into_iter().zip(separators) {
        g.a.mov(al, reg)?;
        g.put_hex8_al()?;
        if let Some(sep) = sep {
            g.putc(sep)?;
        }
    }
    g.putc(b'\n')?;
    g.reset()?;
    Ok(())
}

/// Writes [`MMIO_TEST_PATTERN`] to [`UNASSIGNED_MMIO_ADDR`], reads it back and prints
/// `rampart-testguest: mmio read=XXXXXXXX` (lowercase hex), then resets.
fn mmio(g: &mut Guest64) -> Result<(), BuildError> {
    g.a.mov(rdi, UNASSIGNED_MMIO_ADDR)?;
    g.a.mov(dword_ptr(rdi), MMIO_TEST_PATTERN)?;
    g.a.mov(eax, dword_ptr(rdi))?;
    g.print("rampart-testguest: mmio read=")?;
    g.put_hex32_eax()?;
    g.putc(b'\n')?;
    g.reset()?;
    Ok(())
}

/// Prints a line, writes ACPI S5 to the sleep-control port, then resets if still running.
fn poweroff(g: &mut Guest64) -> Result<(), BuildError> {
    g.print("rampart-testguest: poweroff\n")?;
    g.a.mov(al, u32::from(ACPI_S5_VALUE))?;
    g.a.mov(dx, u32::from(ACPI_SLEEP_CONTROL_PORT))?;
    g.a.out(dx, al)?;
    g.reset()?;
    Ok(())
}

/// Prints a line, then jumps into the unassigned MMIO hole: instructions fetched from there
/// cannot be emulated. If that ever returns, resets.
fn emulation_failure(g: &mut Guest64) -> Result<(), BuildError> {
    g.print("rampart-testguest: emulation-failure\n")?;
    g.a.mov(rax, UNASSIGNED_MMIO_ADDR)?;
    g.a.jmp(rax)?;
    g.reset()?;
    Ok(())
}

/// Prints a line, then spins forever with `pause`.
fn spin(g: &mut Guest64) -> Result<(), BuildError> {
    g.print("rampart-testguest: spin\n")?;
    let mut again = g.a.create_label();
    g.a.set_label(&mut again)?;
    g.a.pause()?;
    g.a.jmp(again)?;
    Ok(())
}

/// Prints `rampart-testguest: tick N` for N = 0..=9, then resets.
fn count(g: &mut Guest64) -> Result<(), BuildError> {
    let mut again = g.a.create_label();
    g.a.xor(ebx, ebx)?;
    g.a.set_label(&mut again)?;
    g.print("rampart-testguest: tick ")?;
    g.a.mov(al, bl)?;
    g.a.add(al, u32::from(b'0'))?;
    g.putc_al()?;
    g.putc(b'\n')?;
    g.a.inc(ebx)?;
    g.a.cmp(ebx, 10u32)?;
    g.a.jb(again)?;
    g.reset()?;
    Ok(())
}

/// Writes one byte in every 4 KiB page of [`TOUCH_RAM_START`]..[`TOUCH_RAM_END`], printing
/// `rampart-testguest: touch-ram +64M` after each 64 MiB, then [`crate::TOUCH_RAM_DONE_LINE`],
/// then resets.
fn touch_ram(g: &mut Guest64) -> Result<(), BuildError> {
    let mut again = g.a.create_label();
    let mut no_report = g.a.create_label();
    g.a.mov(rbx, TOUCH_RAM_START)?;
    g.a.set_label(&mut again)?;
    g.a.mov(byte_ptr(rbx), 1u32)?;
    g.a.add(rbx, 4096)?;
    g.a.test(ebx, 0x03ff_ffffu32)?;
    g.a.jnz(no_report)?;
    g.print("rampart-testguest: touch-ram +64M\n")?;
    g.a.set_label(&mut no_report)?;
    g.a.mov(rax, TOUCH_RAM_END)?;
    g.a.cmp(rbx, rax)?;
    g.a.jb(again)?;
    g.print("rampart-testguest: touch-ram done\n")?;
    g.reset()?;
    Ok(())
}
