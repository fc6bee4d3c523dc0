//! `dump-guest-memory` (paging=false, format elf): guest RAM as an ELF64 core file, one
//! `PT_LOAD` segment per RAM region with its guest-physical address as both `p_paddr` and
//! `p_vaddr` (as QEMU writes a dump without paging). No notes: vCPU registers are not dumped.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

const EHDR_SIZE: u64 = 64;
const PHDR_SIZE: u64 = 56;
const ET_CORE: u16 = 4;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PF_RWX: u32 = 7;
/// Guest RAM is copied through a buffer of this size.
const CHUNK: usize = 1 << 20;

fn ehdr(phnum: u16) -> Vec<u8> {
    let mut h = Vec::with_capacity(EHDR_SIZE as usize);
    h.extend_from_slice(b"\x7fELF");
    h.extend_from_slice(&[2, 1, 1, 0]); // ELFCLASS64, little endian, EV_CURRENT, SysV
    h.extend_from_slice(&[0; 8]);
    h.extend_from_slice(&ET_CORE.to_le_bytes());
    h.extend_from_slice(&EM_X86_64.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes()); // e_version
    h.extend_from_slice(&0u64.to_le_bytes()); // e_entry
    h.extend_from_slice(&EHDR_SIZE.to_le_bytes()); // e_phoff
    h.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    h.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    h.extend_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
    h.extend_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
    h.extend_from_slice(&phnum.to_le_bytes());
    h.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    h.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    h.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    h
}

fn phdr(offset: u64, addr: u64, len: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(PHDR_SIZE as usize);
    p.extend_from_slice(&PT_LOAD.to_le_bytes());
    p.extend_from_slice(&PF_RWX.to_le_bytes());
    p.extend_from_slice(&offset.to_le_bytes());
    p.extend_from_slice(&addr.to_le_bytes()); // p_vaddr
    p.extend_from_slice(&addr.to_le_bytes()); // p_paddr
    p.extend_from_slice(&len.to_le_bytes()); // p_filesz
    p.extend_from_slice(&len.to_le_bytes()); // p_memsz
    p.extend_from_slice(&0u64.to_le_bytes()); // p_align
    p
}

/// Writes the core file of `mem` to `out` (from offset 0, truncating); returns its size.
pub fn write_elf_core(out: &File, mem: &GuestMemoryMmap) -> io::Result<u64> {
    let regions: Vec<(u64, u64)> = mem.iter().map(|r| (r.start_addr().0, r.len())).collect();
    let phnum = u16::try_from(regions.len()).map_err(|_| io::Error::other("too many regions"))?;
    out.set_len(0)?;
    let mut headers = ehdr(phnum);
    let mut offset = EHDR_SIZE + PHDR_SIZE * u64::from(phnum);
    for &(addr, len) in &regions {
        headers.extend_from_slice(&phdr(offset, addr, len));
        offset += len;
    }
    out.write_all_at(&headers, 0)?;
    let mut buf = vec![0u8; CHUNK];
    let mut pos = headers.len() as u64;
    for &(addr, len) in &regions {
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            mem.read_slice(&mut buf[..n], GuestAddress(addr + done))
                .map_err(|e| io::Error::other(format!("reading guest RAM: {e}")))?;
            out.write_all_at(&buf[..n], pos)?;
            pos += n as u64;
            done += n as u64;
        }
    }
    Ok(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_file_has_one_load_segment_per_region_with_the_ram_bytes() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x3000),
            (GuestAddress(0x1_0000_0000), 0x2000),
        ])
        .unwrap();
        mem.write_slice(b"low", GuestAddress(0x1000)).unwrap();
        mem.write_slice(b"high", GuestAddress(0x1_0000_0010))
            .unwrap();
        let path = std::env::temp_dir().join(format!("rampart-dump-{}.elf", std::process::id()));
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();

        let size = write_elf_core(&f, &mem).unwrap();

        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(size as usize, bytes.len());
        assert_eq!(&bytes[..4], b"\x7fELF");
        assert_eq!(u16::from_le_bytes([bytes[16], bytes[17]]), ET_CORE);
        assert_eq!(u16::from_le_bytes([bytes[56], bytes[57]]), 2, "e_phnum");
        let ph = |i: usize, field: usize| {
            let at = 64 + i * 56 + field;
            u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
        };
        let (off0, off1) = (ph(0, 8) as usize, ph(1, 8) as usize);
        assert_eq!(ph(0, 24), 0, "p_paddr");
        assert_eq!(ph(1, 24), 0x1_0000_0000);
        assert_eq!(ph(1, 32), 0x2000, "p_filesz");
        assert_eq!(&bytes[off0 + 0x1000..off0 + 0x1003], b"low");
        assert_eq!(&bytes[off1 + 0x10..off1 + 0x14], b"high");
        assert_eq!(bytes.len(), 64 + 2 * 56 + 0x5000);
    }
}
