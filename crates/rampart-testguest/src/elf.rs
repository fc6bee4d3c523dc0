//! A minimal writer of PVH-bootable ELF64 executables: one `PT_LOAD` segment and one `PT_NOTE`
//! segment holding the Xen `XEN_ELFNOTE_PHYS32_ENTRY` note, which tells a PVH-aware loader
//! (QEMU's `-kernel`, linux-loader) the 32-bit physical entry point.

use thiserror::Error;

/// ELF file header size (ELF64).
pub const EHDR_SIZE: usize = 64;
/// Program header size (ELF64).
pub const PHDR_SIZE: usize = 56;
/// `PT_LOAD`.
pub const PT_LOAD: u32 = 1;
/// `PT_NOTE`.
pub const PT_NOTE: u32 = 4;
/// `ET_EXEC`.
pub const ET_EXEC: u16 = 2;
/// `EM_X86_64`.
pub const EM_X86_64: u16 = 62;
/// The Xen note type carrying the PVH 32-bit entry point.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// The note owner name, NUL-terminated.
pub const XEN_NOTE_NAME: &[u8; 4] = b"Xen\0";
/// Alignment of the note segment (and of the name and descriptor fields inside it).
pub const NOTE_ALIGN: u64 = 4;
/// File offset of the loadable segment (page aligned, as its guest address).
pub const SEGMENT_FILE_OFFSET: u64 = 0x1000;

const PF_X: u32 = 1;
const PF_W: u32 = 2;
const PF_R: u32 = 4;
const PHNUM: u16 = 2;
/// Size of the note: 12-byte header, 4-byte name, 8-byte descriptor. The descriptor is 8 bytes
/// because QEMU reads a 64-bit value for ELF64 images, while linux-loader reads the low 32 bits.
const NOTE_DESC_SIZE: u32 = 8;
const NOTE_SIZE: usize = 12 + XEN_NOTE_NAME.len() + NOTE_DESC_SIZE as usize;
const NOTE_FILE_OFFSET: usize = EHDR_SIZE + PHNUM as usize * PHDR_SIZE;
const FOUR_GIB: u64 = 1 << 32;

/// Why an image could not be written.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ElfError {
    /// The segment's file part is larger than its memory size.
    #[error("segment file size {file_size:#x} exceeds its memory size {mem_size:#x}")]
    FileLargerThanMemory {
        /// Bytes stored in the file.
        file_size: u64,
        /// Bytes the segment occupies in guest memory.
        mem_size: u64,
    },
    /// The segment is empty.
    #[error("the loadable segment is empty")]
    EmptySegment,
    /// The segment does not lie below 4 GiB, where a 32-bit PVH entry can reach it.
    #[error("segment at {load_addr:#x} with size {mem_size:#x} does not fit below 4 GiB")]
    SegmentAbove4GiB {
        /// Guest-physical start of the segment.
        load_addr: u64,
        /// Bytes the segment occupies in guest memory.
        mem_size: u64,
    },
    /// The entry point is not inside the segment's file part.
    #[error("entry point {entry:#x} is outside the loaded segment {start:#x}..{end:#x}")]
    EntryOutsideSegment {
        /// The requested entry point.
        entry: u32,
        /// First byte of the segment.
        start: u64,
        /// One past the last byte stored in the file.
        end: u64,
    },
}

/// What to put in a PVH ELF image.
#[derive(Debug, Clone, Copy)]
pub struct PvhElf<'a> {
    /// Guest-physical (and virtual) address of the loadable segment.
    pub load_addr: u64,
    /// The segment's bytes as stored in the file.
    pub segment: &'a [u8],
    /// The segment's size in guest memory (the part past `segment.len()` is zero-filled).
    pub mem_size: u64,
    /// The 32-bit physical PVH entry point (also written as `e_entry`).
    pub entry: u32,
}

impl PvhElf<'_> {
    fn validate(&self) -> Result<(), ElfError> {
        let file_size = self.segment.len() as u64;
        if file_size == 0 {
            return Err(ElfError::EmptySegment);
        }
        if file_size > self.mem_size {
            return Err(ElfError::FileLargerThanMemory {
                file_size,
                mem_size: self.mem_size,
            });
        }
        match self.load_addr.checked_add(self.mem_size) {
            Some(end) if end <= FOUR_GIB => {}
            _ => {
                return Err(ElfError::SegmentAbove4GiB {
                    load_addr: self.load_addr,
                    mem_size: self.mem_size,
                })
            }
        }
        let end = self.load_addr + file_size;
        let entry = u64::from(self.entry);
        if entry < self.load_addr || entry >= end {
            return Err(ElfError::EntryOutsideSegment {
                entry: self.entry,
                start: self.load_addr,
                end,
            });
        }
        Ok(())
    }

    /// Serialises the image: ELF header, two program headers, the note, then the segment at
    /// [`SEGMENT_FILE_OFFSET`].
    pub fn to_bytes(&self) -> Result<Vec<u8>, ElfError> {
        self.validate()?;
        let total = SEGMENT_FILE_OFFSET as usize + self.segment.len();
        let mut out = Vec::with_capacity(total);
        self.write_ehdr(&mut out);
        write_phdr(
            &mut out,
            &Phdr {
                p_type: PT_LOAD,
                p_flags: PF_R | PF_W | PF_X,
                p_offset: SEGMENT_FILE_OFFSET,
                p_addr: self.load_addr,
                p_filesz: self.segment.len() as u64,
                p_memsz: self.mem_size,
                p_align: SEGMENT_FILE_OFFSET,
            },
        );
        write_phdr(
            &mut out,
            &Phdr {
                p_type: PT_NOTE,
                p_flags: PF_R,
                p_offset: NOTE_FILE_OFFSET as u64,
                p_addr: 0,
                p_filesz: NOTE_SIZE as u64,
                p_memsz: 0,
                p_align: NOTE_ALIGN,
            },
        );
        debug_assert_eq!(out.len(), NOTE_FILE_OFFSET);
        out.extend_from_slice(&(XEN_NOTE_NAME.len() as u32).to_le_bytes());
        out.extend_from_slice(&NOTE_DESC_SIZE.to_le_bytes());
        out.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
        out.extend_from_slice(XEN_NOTE_NAME);
        out.extend_from_slice(&u64::from(self.entry).to_le_bytes());
        out.resize(SEGMENT_FILE_OFFSET as usize, 0);
        out.extend_from_slice(self.segment);
        Ok(out)
    }

    fn write_ehdr(&self, out: &mut Vec<u8>) {
        // e_ident: magic, ELFCLASS64, ELFDATA2LSB, EV_CURRENT, ELFOSABI_NONE, padding.
        out.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&ET_EXEC.to_le_bytes());
        out.extend_from_slice(&EM_X86_64.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes()); // e_version
        out.extend_from_slice(&u64::from(self.entry).to_le_bytes());
        out.extend_from_slice(&(EHDR_SIZE as u64).to_le_bytes()); // e_phoff
        out.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no section headers
        out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        out.extend_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
        out.extend_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        out.extend_from_slice(&PHNUM.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes()); // e_shentsize
        out.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
        out.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    }
}

struct Phdr {
    p_type: u32,
    p_flags: u32,
    p_offset: u64,
    p_addr: u64,
    p_filesz: u64,
    p_memsz: u64,
    p_align: u64,
}

fn write_phdr(out: &mut Vec<u8>, p: &Phdr) {
    out.extend_from_slice(&p.p_type.to_le_bytes());
    out.extend_from_slice(&p.p_flags.to_le_bytes());
    out.extend_from_slice(&p.p_offset.to_le_bytes());
    out.extend_from_slice(&p.p_addr.to_le_bytes()); // p_vaddr
    out.extend_from_slice(&p.p_addr.to_le_bytes()); // p_paddr
    out.extend_from_slice(&p.p_filesz.to_le_bytes());
    out.extend_from_slice(&p.p_memsz.to_le_bytes());
    out.extend_from_slice(&p.p_align.to_le_bytes());
}

/// A tiny, bounds-checked reader of the images this module writes, used by the tests.
#[cfg(test)]
pub(crate) mod inspect {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ProgramHeader {
        pub p_type: u32,
        pub p_offset: u64,
        pub p_paddr: u64,
        pub p_filesz: u64,
        pub p_memsz: u64,
        pub p_align: u64,
    }

    fn u16_at(b: &[u8], off: usize) -> Option<u16> {
        Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
    }
    fn u32_at(b: &[u8], off: usize) -> Option<u32> {
        Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
    }
    fn u64_at(b: &[u8], off: usize) -> Option<u64> {
        Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
    }

    /// Returns (e_entry, program headers) of a little-endian ELF64 x86-64 executable.
    pub fn parse(b: &[u8]) -> Option<(u64, Vec<ProgramHeader>)> {
        if b.get(0..4)? != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
            return None;
        }
        if u16_at(b, 16)? != ET_EXEC || u16_at(b, 18)? != EM_X86_64 {
            return None;
        }
        let entry = u64_at(b, 24)?;
        let phoff = usize::try_from(u64_at(b, 32)?).ok()?;
        if usize::from(u16_at(b, 54)?) != PHDR_SIZE {
            return None;
        }
        let phnum = usize::from(u16_at(b, 56)?);
        let mut phdrs = Vec::new();
        for i in 0..phnum {
            let o = phoff.checked_add(i.checked_mul(PHDR_SIZE)?)?;
            phdrs.push(ProgramHeader {
                p_type: u32_at(b, o)?,
                p_offset: u64_at(b, o + 8)?,
                p_paddr: u64_at(b, o + 24)?,
                p_filesz: u64_at(b, o + 32)?,
                p_memsz: u64_at(b, o + 40)?,
                p_align: u64_at(b, o + 48)?,
            });
        }
        Some((entry, phdrs))
    }

    /// Walks the notes of a `PT_NOTE` segment and returns the PVH entry (low 32 bits of the
    /// descriptor, as linux-loader reads it) if the Xen PHYS32_ENTRY note is present.
    pub fn pvh_entry(b: &[u8], note: &ProgramHeader) -> Option<u32> {
        let start = usize::try_from(note.p_offset).ok()?;
        let end = start.checked_add(usize::try_from(note.p_filesz).ok()?)?;
        let seg = b.get(start..end)?;
        let mut off = 0usize;
        while off + 12 <= seg.len() {
            let namesz = u32_at(seg, off)? as usize;
            let descsz = u32_at(seg, off + 4)? as usize;
            let ntype = u32_at(seg, off + 8)?;
            let name_off = off + 12;
            let desc_off = name_off.checked_add(namesz.next_multiple_of(4))?;
            if ntype == XEN_ELFNOTE_PHYS32_ENTRY
                && seg.get(name_off..name_off + namesz)? == b"Xen\0"
            {
                return u32_at(seg, desc_off);
            }
            off = desc_off.checked_add(descsz.next_multiple_of(4))?;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::inspect::{parse, pvh_entry};
    use super::*;

    fn sample(segment: &[u8]) -> PvhElf<'_> {
        PvhElf {
            load_addr: 0x10_0000,
            segment,
            mem_size: 0x4000,
            entry: 0x10_0010,
        }
    }

    #[test]
    fn writes_one_load_and_one_note_segment() {
        let code = [0x90u8; 0x20];
        let bytes = sample(&code).to_bytes().unwrap();

        let (entry, phdrs) = parse(&bytes).unwrap();

        assert_eq!(entry, 0x10_0010);
        assert_eq!(phdrs.len(), 2);
        assert_eq!(phdrs[0].p_type, PT_LOAD);
        assert_eq!(phdrs[0].p_paddr, 0x10_0000);
        assert_eq!(phdrs[0].p_filesz, 0x20);
        assert_eq!(phdrs[0].p_memsz, 0x4000);
        assert_eq!(
            phdrs[0].p_offset % phdrs[0].p_align,
            0x10_0000 % phdrs[0].p_align
        );
        assert_eq!(phdrs[1].p_type, PT_NOTE);
        assert_eq!(phdrs[1].p_align, NOTE_ALIGN);
    }

    #[test]
    fn note_carries_the_pvh_entry_as_64_bit_descriptor() {
        let code = [0x90u8; 0x20];
        let bytes = sample(&code).to_bytes().unwrap();
        let (_, phdrs) = parse(&bytes).unwrap();

        let entry = pvh_entry(&bytes, &phdrs[1]);
        let desc_off = phdrs[1].p_offset as usize + 16;
        let desc = u64::from_le_bytes(bytes[desc_off..desc_off + 8].try_into().unwrap());

        assert_eq!(entry, Some(0x10_0010));
        assert_eq!(desc, 0x10_0010);
    }

    #[test]
    fn segment_bytes_follow_at_their_file_offset() {
        let code: Vec<u8> = (0u8..=255).collect();
        let bytes = sample(&code).to_bytes().unwrap();
        let (_, phdrs) = parse(&bytes).unwrap();

        let off = phdrs[0].p_offset as usize;

        assert_eq!(&bytes[off..], &code[..]);
    }

    #[test]
    fn rejects_entry_outside_the_segment() {
        let code = [0x90u8; 0x10];
        let mut spec = sample(&code);
        spec.entry = 0x10_0010;

        let err = spec.to_bytes().unwrap_err();

        assert!(matches!(err, ElfError::EntryOutsideSegment { .. }));
    }

    #[test]
    fn rejects_file_part_larger_than_memory_size() {
        let code = [0u8; 0x100];
        let mut spec = sample(&code);
        spec.mem_size = 0x80;
        spec.entry = 0x10_0000;

        let err = spec.to_bytes().unwrap_err();

        assert!(matches!(err, ElfError::FileLargerThanMemory { .. }));
    }

    #[test]
    fn rejects_segment_crossing_4_gib() {
        let code = [0u8; 0x100];
        let spec = PvhElf {
            load_addr: 0xffff_f000,
            segment: &code,
            mem_size: 0x2000,
            entry: 0xffff_f000,
        };

        let err = spec.to_bytes().unwrap_err();

        assert!(matches!(err, ElfError::SegmentAbove4GiB { .. }));
    }

    #[test]
    fn rejects_empty_segment() {
        let spec = sample(&[]);

        assert_eq!(spec.to_bytes().unwrap_err(), ElfError::EmptySegment);
    }
}
