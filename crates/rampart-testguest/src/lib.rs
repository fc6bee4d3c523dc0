//! rampart's tiny test guests, assembled in Rust.
//!
//! Each [`Program`] becomes a PVH ELF image (see [`elf`]) that QEMU (`-kernel`, on `microvm`,
//! `pc` or `q35`) and rampart (through linux-loader's PVH support) both boot: a 32-bit entry
//! stub switches to long mode (see [`layout`] for the memory map) and runs the program, which
//! talks to COM1, the CMOS clock, unassigned MMIO or the ACPI sleep port, and then resets the
//! machine through the i8042 (falling back to a triple fault), so `-no-reboot` ends the VMM.

pub mod elf;
pub mod layout;

mod boot32;
mod programs;
mod runtime;

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::elf::{ElfError, PvhElf};
use crate::layout::{
    CODE64_ADDR, CODE64_MAX, GDT_ADDR, LOAD_ADDR, SEGMENT_MEM_SIZE, STUB32_ADDR, STUB32_MAX,
};

/// Every line a test guest prints starts with this.
pub const LINE_PREFIX: &str = "rampart-testguest: ";
/// The line `hello` prints.
pub const HELLO_LINE: &str = "rampart-testguest: hello\n";
/// The value `mmio` writes before reading back.
pub const MMIO_TEST_PATTERN: u32 = 0x1234_5678;
/// The line `mmio` prints when the address is unassigned (reads as all ones).
pub const MMIO_UNASSIGNED_LINE: &str = "rampart-testguest: mmio read=ffffffff\n";
/// The line `poweroff` prints before writing S5.
pub const POWEROFF_LINE: &str = "rampart-testguest: poweroff\n";
/// The line `emulation-failure` prints before jumping into MMIO.
pub const EMULATION_FAILURE_LINE: &str = "rampart-testguest: emulation-failure\n";
/// The line `touch-ram` prints once it has written to every page of its range.
pub const TOUCH_RAM_DONE_LINE: &str = "rampart-testguest: touch-ram done\n";
/// First guest-physical byte `touch-ram` writes (above the image's own 2 MiB).
pub const TOUCH_RAM_START: u64 = 0x20_0000;
/// End of `touch-ram`'s range (256 MiB): the guest needs more RAM than this.
pub const TOUCH_RAM_END: u64 = 0x1000_0000;
/// The line `spin` prints before spinning.
pub const SPIN_LINE: &str = "rampart-testguest: spin\n";

/// Why an image could not be built.
#[derive(Debug, Error)]
pub enum BuildError {
    /// The assembler rejected an instruction or label.
    #[error("assembling the test guest failed: {0}")]
    Assemble(#[from] iced_x86::IcedError),
    /// A string for the guest contains a NUL byte (strings are NUL-terminated in the guest).
    #[error("guest string {0:?} contains a NUL byte")]
    NulInString(String),
    /// A part of the image outgrew the room the layout gives it.
    #[error("{part} is {size:#x} bytes, more than the {max:#x} the layout reserves")]
    TooLarge {
        /// Which part.
        part: &'static str,
        /// Its assembled size.
        size: usize,
        /// The room reserved for it.
        max: usize,
    },
    /// The ELF writer rejected the image.
    #[error("writing the ELF image failed: {0}")]
    Elf(#[from] ElfError),
}

/// An unknown program name.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("unknown test guest program {0:?} (known: hello, cmos, mmio, poweroff, emulation-failure, spin, count, touch-ram)")]
pub struct UnknownProgram(pub String);

/// The test programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Program {
    /// Prints [`HELLO_LINE`] and resets.
    Hello,
    /// Prints the CMOS date and time as `rampart-testguest: cmos CCYY-MM-DD HH:MM:SS` and resets.
    Cmos,
    /// Writes and reads back [`layout::UNASSIGNED_MMIO_ADDR`], prints
    /// `rampart-testguest: mmio read=XXXXXXXX` (lowercase hex) and resets.
    Mmio,
    /// Prints [`POWEROFF_LINE`], writes ACPI S5 to port 0x600, resets if still running.
    Poweroff,
    /// Prints [`EMULATION_FAILURE_LINE`] and jumps into unassigned MMIO.
    EmulationFailure,
    /// Prints [`SPIN_LINE`] and loops forever with `pause`.
    Spin,
    /// Prints `rampart-testguest: tick N` for N = 0..=9 and resets.
    Count,
    /// Writes to every page from [`TOUCH_RAM_START`] to [`TOUCH_RAM_END`] (so the VMM's RAM
    /// really is used), prints [`TOUCH_RAM_DONE_LINE`] and resets. Needs `-m 257M` or more.
    TouchRam,
}

impl Program {
    /// Every program, in a stable order.
    pub const ALL: [Program; 8] = [
        Program::Hello,
        Program::Cmos,
        Program::Mmio,
        Program::Poweroff,
        Program::EmulationFailure,
        Program::Spin,
        Program::Count,
        Program::TouchRam,
    ];

    /// The program's name, also its image's file stem (`NAME.elf`).
    pub fn name(self) -> &'static str {
        match self {
            Program::Hello => "hello",
            Program::Cmos => "cmos",
            Program::Mmio => "mmio",
            Program::Poweroff => "poweroff",
            Program::EmulationFailure => "emulation-failure",
            Program::Spin => "spin",
            Program::Count => "count",
            Program::TouchRam => "touch-ram",
        }
    }
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Program {
    type Err = UnknownProgram;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Program::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| UnknownProgram(s.to_owned()))
    }
}

fn check_size(part: &'static str, size: usize, max: usize) -> Result<(), BuildError> {
    if size > max {
        return Err(BuildError::TooLarge { part, size, max });
    }
    Ok(())
}

/// Builds the PVH ELF image of `program`. The output is deterministic.
pub fn build(program: Program) -> Result<Vec<u8>, BuildError> {
    let stub = boot32::assemble_stub()?;
    check_size("the 32-bit stub", stub.len(), STUB32_MAX)?;

    let mut guest = runtime::Guest64::new()?;
    programs::emit(program, &mut guest)?;
    let code = guest.finish(CODE64_ADDR)?;
    check_size("the 64-bit code", code.len(), CODE64_MAX)?;

    let gdt = boot32::gdt_bytes();
    let code_off = (CODE64_ADDR - LOAD_ADDR) as usize;
    let gdt_off = (GDT_ADDR - LOAD_ADDR) as usize;
    let mut segment = vec![0u8; code_off];
    segment[..stub.len()].copy_from_slice(&stub);
    segment[gdt_off..gdt_off + gdt.len()].copy_from_slice(&gdt);
    segment.extend_from_slice(&code);

    let image = PvhElf {
        load_addr: LOAD_ADDR,
        segment: &segment,
        mem_size: SEGMENT_MEM_SIZE,
        entry: STUB32_ADDR as u32,
    }
    .to_bytes()?;
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::inspect::{parse, pvh_entry};
    use crate::elf::{PT_LOAD, PT_NOTE, SEGMENT_FILE_OFFSET};
    use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind};

    fn code64(image: &[u8]) -> &[u8] {
        let start = SEGMENT_FILE_OFFSET as usize + (CODE64_ADDR - LOAD_ADDR) as usize;
        &image[start..]
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn every_program_builds_a_pvh_elf_entering_at_the_load_address() {
        for program in Program::ALL {
            let image = build(program).unwrap();

            let (entry, phdrs) = parse(&image).unwrap();
            let load = phdrs.iter().find(|p| p.p_type == PT_LOAD).unwrap();
            let note = phdrs.iter().find(|p| p.p_type == PT_NOTE).unwrap();

            assert_eq!(entry, LOAD_ADDR, "{program}");
            assert_eq!(load.p_paddr, LOAD_ADDR, "{program}");
            assert_eq!(load.p_memsz, SEGMENT_MEM_SIZE, "{program}");
            assert_eq!(pvh_entry(&image, note), Some(LOAD_ADDR as u32), "{program}");
        }
    }

    #[test]
    fn images_are_deterministic() {
        for program in Program::ALL {
            assert_eq!(
                build(program).unwrap(),
                build(program).unwrap(),
                "{program}"
            );
        }
    }

    #[test]
    fn image_starts_its_segment_with_the_32_bit_stub_and_gdt() {
        let image = build(Program::Hello).unwrap();
        let stub = boot32::assemble_stub().unwrap();
        let gdt = boot32::gdt_bytes();
        let seg = SEGMENT_FILE_OFFSET as usize;
        let gdt_off = seg + (GDT_ADDR - LOAD_ADDR) as usize;

        assert_eq!(&image[seg..seg + stub.len()], &stub[..]);
        assert_eq!(&image[gdt_off..gdt_off + gdt.len()], &gdt[..]);
    }

    #[test]
    fn hello_image_holds_its_line() {
        let image = build(Program::Hello).unwrap();

        assert!(contains(code64(&image), HELLO_LINE.as_bytes()));
    }

    #[test]
    fn every_program_line_has_the_prefix_and_a_newline() {
        let lines = [
            HELLO_LINE,
            MMIO_UNASSIGNED_LINE,
            POWEROFF_LINE,
            EMULATION_FAILURE_LINE,
            SPIN_LINE,
        ];

        for line in lines {
            assert!(
                line.starts_with(LINE_PREFIX) && line.ends_with('\n'),
                "{line:?}"
            );
        }
    }

    #[test]
    fn code64_starts_by_loading_segments_and_stack() {
        let image = build(Program::Count).unwrap();

        let mut dec = Decoder::with_ip(64, code64(&image), CODE64_ADDR, DecoderOptions::NONE);
        let first: Vec<Mnemonic> = dec.iter().take(7).map(|i| i.mnemonic()).collect();

        assert!(first.iter().all(|m| *m == Mnemonic::Mov), "{first:?}");
    }

    #[test]
    fn mmio_program_targets_the_unassigned_address() {
        let image = build(Program::Mmio).unwrap();

        let found = Decoder::with_ip(64, code64(&image), CODE64_ADDR, DecoderOptions::NONE)
            .iter()
            .take(8)
            .any(|i| {
                i.mnemonic() == Mnemonic::Mov
                    && i.op1_kind() != OpKind::Register
                    && i.try_immediate(1).ok() == Some(layout::UNASSIGNED_MMIO_ADDR)
            });

        assert!(found);
    }

    #[test]
    fn reset_routine_tries_i8042_then_microvm_ged() {
        let image = build(Program::Hello).unwrap();

        let insns: Vec<_> = Decoder::with_ip(64, code64(&image), CODE64_ADDR, DecoderOptions::NONE)
            .iter()
            .take_while(|i| i.mnemonic() != Mnemonic::Int3)
            .collect();
        let i8042 = insns.iter().position(|i| {
            i.mnemonic() == Mnemonic::Out
                && i.op0_kind() == OpKind::Immediate8
                && i.immediate8() == layout::I8042_COMMAND_PORT as u8
        });
        let ged = insns.iter().position(|i| {
            i.mnemonic() == Mnemonic::Mov
                && i.op1_kind() != OpKind::Register
                && i.try_immediate(1).ok() == Some(layout::MICROVM_GED_RESET_ADDR)
        });

        assert!(
            matches!((i8042, ged), (Some(a), Some(b)) if a < b),
            "{i8042:?} {ged:?}"
        );
    }

    #[test]
    fn reset_routine_faults_on_unmapped_memory_after_emptying_the_idt() {
        let image = build(Program::Hello).unwrap();

        let insns: Vec<_> = Decoder::with_ip(64, code64(&image), CODE64_ADDR, DecoderOptions::NONE)
            .iter()
            .take_while(|i| i.mnemonic() != Mnemonic::Int3)
            .collect();
        let lidt = insns.iter().position(|i| i.mnemonic() == Mnemonic::Lidt);
        let unmapped = insns.iter().position(|i| {
            i.mnemonic() == Mnemonic::Mov && i.try_immediate(1).ok() == Some(layout::PD_COUNT << 30)
        });

        assert!(
            matches!((lidt, unmapped), (Some(a), Some(b)) if a < b),
            "{lidt:?} {unmapped:?}"
        );
    }

    #[test]
    fn program_names_round_trip() {
        for program in Program::ALL {
            assert_eq!(program.name().parse::<Program>(), Ok(program));
        }
    }

    #[test]
    fn rejects_unknown_program_name() {
        let err = "reboot".parse::<Program>().unwrap_err();

        assert_eq!(err, UnknownProgram("reboot".to_owned()));
    }
}
