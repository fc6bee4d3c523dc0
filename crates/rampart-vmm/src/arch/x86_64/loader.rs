//! Kernel and initrd loading: bzImage (decompressed on the host, then entered through the
//! vmlinux ELF's 64-bit entry), ELF vmlinux (64-bit entry), and PVH ELF (32-bit entry).
//!
//! Everything read from a file is validated before use: headers, offsets, lengths, and that
//! every segment lies inside guest RAM, at or above 1 MiB and below 4 GiB.

use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{Elf, KernelLoader, PvhBootCapability};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    ReadVolatile,
};

use super::bzimage::{self, BzImageError};
use super::decompress::{self, Compression, DecompressError};
use super::layout::{HIMEM_START, MMIO32_HOLE_END};

/// The largest kernel file rampart reads into host memory (bzImage).
pub const MAX_KERNEL_FILE_SIZE: u64 = 512 << 20;
/// Longest command line (without the NUL) for kernels without a setup header.
pub const DEFAULT_CMDLINE_LIMIT: usize = 2047;
/// The most program headers accepted in an ELF kernel.
const MAX_PHNUM: u16 = 128;
const ELF_HEADER_SIZE: usize = 64;
const ELF_PHDR_SIZE: usize = 56;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const EM_X86_64: u16 = 62;
const PAGE_SIZE: u64 = 0x1000;

/// How the boot CPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// Linux 64-bit boot protocol: long mode, RSI = boot_params.
    Linux64,
    /// PVH: 32-bit protected mode, paging off, EBX = hvm_start_info.
    Pvh,
}

/// What [`load_kernel`] loaded, and how to enter it.
#[derive(Debug, Clone, Copy)]
pub struct KernelEntry {
    pub protocol: BootProtocol,
    /// Guest-physical entry point.
    pub entry: GuestAddress,
    /// Lowest guest-physical address the kernel occupies.
    pub kernel_start: GuestAddress,
    /// One past the highest guest-physical address the kernel occupies (including its bss and,
    /// for a bzImage, `init_size`). The initrd is placed above this.
    pub kernel_end: GuestAddress,
    /// The bzImage's setup header, when the kernel came from a bzImage.
    pub setup_header: Option<setup_header>,
    /// The bzImage payload compression, when the kernel came from a bzImage.
    pub compression: Option<Compression>,
}

impl KernelEntry {
    /// Longest command line (without its NUL) the kernel accepts.
    pub fn cmdline_limit(&self) -> usize {
        self.setup_header
            .as_ref()
            .map(bzimage::cmdline_limit)
            .unwrap_or(DEFAULT_CMDLINE_LIMIT)
    }

    /// Highest address (inclusive) the initrd may occupy: the bzImage's `initrd_addr_max`, or
    /// just below 4 GiB for ELF kernels.
    pub fn initrd_addr_max(&self) -> u64 {
        self.setup_header
            .as_ref()
            .map(|h| u64::from(bzimage::initrd_addr_max(h)))
            .unwrap_or(MMIO32_HOLE_END - 1)
    }
}

/// Kernel and initrd loading failures. Every message names the file part, size or address.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("cannot read the {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the {0} is a directory, not a file")]
    IsDirectory(&'static str),
    #[error("the {0} is empty (0 bytes)")]
    Empty(&'static str),
    #[error("the kernel file is {size} bytes, the limit is {limit}")]
    KernelTooLarge { size: u64, limit: u64 },
    #[error("the kernel is neither a bzImage nor an ELF vmlinux (first bytes {0:02x?})")]
    UnknownFormat(Vec<u8>),
    #[error(transparent)]
    BzImage(#[from] BzImageError),
    #[error(transparent)]
    Decompress(#[from] DecompressError),
    #[error("kernel ELF: {0}")]
    BadElf(String),
    #[error("kernel ELF segment {index} ({addr:#x}..{end:#x}) is outside guest RAM (it must lie in RAM between 1 MiB and 4 GiB)")]
    SegmentOutsideRam { index: usize, addr: u64, end: u64 },
    #[error("kernel ELF segment {index} (file bytes {offset:#x}..{end:#x}) runs past the end of the {len}-byte file")]
    SegmentOutsideFile {
        index: usize,
        offset: u64,
        end: u64,
        len: u64,
    },
    #[error("kernel entry point {0:#x} is not inside a loaded segment")]
    EntryOutsideKernel(u64),
    #[error("loading the kernel ELF failed: {0}")]
    ElfLoad(linux_loader::loader::Error),
    #[error("initrd of {size} bytes does not fit: {available} bytes are free between the kernel end {kernel_end:#x} and the limit {limit:#x}")]
    InitrdTooLarge {
        size: u64,
        available: u64,
        kernel_end: u64,
        limit: u64,
    },
    #[error("guest RAM has no region at 1 MiB to load the initrd into")]
    NoLowRam,
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> LoaderError {
    move |source| LoaderError::Io { what, source }
}

/// Size of a regular file, rejecting directories and empty files.
fn file_size(file: &File, what: &'static str) -> Result<u64, LoaderError> {
    let meta = file.metadata().map_err(io_err(what))?;
    if meta.is_dir() {
        return Err(LoaderError::IsDirectory(what));
    }
    if meta.len() == 0 {
        return Err(LoaderError::Empty(what));
    }
    Ok(meta.len())
}

/// Loads a kernel (bzImage, ELF vmlinux or PVH ELF) into guest memory, decompressing a bzImage
/// payload of at most [`decompress::MAX_DECOMPRESSED_SIZE`] bytes.
pub fn load_kernel(mem: &GuestMemoryMmap, kernel: &mut File) -> Result<KernelEntry, LoaderError> {
    load_kernel_with_limit(mem, kernel, decompress::MAX_DECOMPRESSED_SIZE)
}

/// [`load_kernel`] with an explicit bound on the decompressed size of a bzImage payload.
pub fn load_kernel_with_limit(
    mem: &GuestMemoryMmap,
    kernel: &mut File,
    max_decompressed: usize,
) -> Result<KernelEntry, LoaderError> {
    let len = file_size(kernel, "kernel file")?;
    if len > MAX_KERNEL_FILE_SIZE {
        return Err(LoaderError::KernelTooLarge {
            size: len,
            limit: MAX_KERNEL_FILE_SIZE,
        });
    }
    let mut head = vec![0u8; len.min(0x1000) as usize];
    kernel
        .read_exact_at(&mut head, 0)
        .map_err(io_err("kernel file"))?;

    if head.starts_with(b"\x7fELF") {
        let elf = load_elf(mem, kernel, len)?;
        // A PVH note means the kernel supports PVH: prefer it (tiny test guests need it).
        let (protocol, entry) = match elf.pvh_entry {
            Some(pvh) => (BootProtocol::Pvh, pvh),
            None => (BootProtocol::Linux64, elf.e_entry),
        };
        let entry = elf.kernel_entry(protocol, entry, None, None)?;
        tracing::info!(protocol = ?entry.protocol, entry = entry.entry.0, "loaded ELF kernel");
        return Ok(entry);
    }
    let is_bzimage = head.get(0x202..0x206) == Some(b"HdrS".as_slice());
    if !is_bzimage {
        return Err(LoaderError::UnknownFormat(
            head.iter().take(8).copied().collect(),
        ));
    }
    let info = bzimage::parse_setup_header(&head, len)?;
    let mut payload = vec![0u8; info.payload_length as usize];
    kernel
        .read_exact_at(&mut payload, info.payload_offset)
        .map_err(io_err("bzImage payload"))?;
    let (compression, vmlinux) = decompress::decompress(&payload, max_decompressed)?;
    drop(payload);
    tracing::info!(
        compression = compression.name(),
        size = vmlinux.len(),
        "decompressed bzImage payload"
    );
    let vmlinux_len = vmlinux.len() as u64;
    let elf = load_elf(mem, &mut Cursor::new(vmlinux), vmlinux_len)?;
    // A bzImage's vmlinux is entered through its 64-bit entry, with the setup header in
    // boot_params; the kernel's reserved area extends to load address + init_size.
    let entry = elf.kernel_entry(
        BootProtocol::Linux64,
        elf.e_entry,
        Some(info.header),
        Some(compression),
    )?;
    tracing::info!(entry = entry.entry.0, "loaded bzImage kernel");
    Ok(entry)
}

/// What `load_elf` found and loaded.
struct LoadedElf {
    e_entry: u64,
    pvh_entry: Option<u64>,
    segments: Vec<Segment>,
}

impl LoadedElf {
    fn kernel_entry(
        &self,
        protocol: BootProtocol,
        entry: u64,
        setup_header: Option<setup_header>,
        compression: Option<Compression>,
    ) -> Result<KernelEntry, LoaderError> {
        if !self
            .segments
            .iter()
            .any(|s| s.addr <= entry && entry < s.end)
        {
            return Err(LoaderError::EntryOutsideKernel(entry));
        }
        let start = self
            .segments
            .iter()
            .map(|s| s.addr)
            .min()
            .unwrap_or(HIMEM_START);
        let mut end = self
            .segments
            .iter()
            .map(|s| s.end)
            .max()
            .unwrap_or(HIMEM_START);
        if let Some(h) = &setup_header {
            end = end.max(start.saturating_add(u64::from(h.init_size)));
        }
        Ok(KernelEntry {
            protocol,
            entry: GuestAddress(entry),
            kernel_start: GuestAddress(start),
            kernel_end: GuestAddress(end),
            setup_header,
            compression,
        })
    }
}

/// One loadable segment, validated.
struct Segment {
    addr: u64,
    end: u64,
}

/// Validates an ELF kernel of `len` bytes from `image`: header, program headers, every PT_LOAD
/// inside the file and inside guest RAM in [1 MiB, 4 GiB). Returns (e_entry, segments).
fn validate_elf<R: Read + Seek>(
    mem: &GuestMemoryMmap,
    image: &mut R,
    len: u64,
) -> Result<(u64, Vec<Segment>), LoaderError> {
    let bad = |m: String| LoaderError::BadElf(m);
    let mut ehdr = [0u8; ELF_HEADER_SIZE];
    image.rewind().map_err(io_err("kernel ELF header"))?;
    image.read_exact(&mut ehdr).map_err(|_| {
        bad(format!(
            "file of {len} bytes is too short for an ELF header"
        ))
    })?;
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    if ehdr[4] != 2 {
        return Err(bad(format!("class {} is not ELFCLASS64", ehdr[4])));
    }
    if ehdr[5] != 1 {
        return Err(bad("not little-endian".into()));
    }
    let machine = u16_at(&ehdr, 18);
    if machine != EM_X86_64 {
        return Err(bad(format!("e_machine {machine} is not x86-64 (62)")));
    }
    let e_entry = u64_at(&ehdr, 24);
    let phoff = u64_at(&ehdr, 32);
    let phentsize = u16_at(&ehdr, 54);
    let phnum = u16_at(&ehdr, 56);
    if usize::from(phentsize) != ELF_PHDR_SIZE {
        return Err(bad(format!("e_phentsize {phentsize}, expected 56")));
    }
    if phnum == 0 || phnum > MAX_PHNUM {
        return Err(bad(format!("e_phnum {phnum} is not in 1..={MAX_PHNUM}")));
    }
    let ph_end = u64::from(phnum) * ELF_PHDR_SIZE as u64 + phoff;
    if phoff < ELF_HEADER_SIZE as u64 || ph_end > len {
        return Err(bad(format!(
            "program headers at {phoff:#x}..{ph_end:#x} are outside the {len}-byte file"
        )));
    }
    let mut phdrs = vec![0u8; usize::from(phnum) * ELF_PHDR_SIZE];
    image
        .seek(SeekFrom::Start(phoff))
        .and_then(|_| image.read_exact(&mut phdrs))
        .map_err(io_err("kernel ELF program headers"))?;

    let mut segments = Vec::new();
    for (index, ph) in phdrs.chunks_exact(ELF_PHDR_SIZE).enumerate() {
        let p_type = u32_at(ph, 0);
        let offset = u64_at(ph, 8);
        let paddr = u64_at(ph, 24);
        let filesz = u64_at(ph, 32);
        let memsz = u64_at(ph, 40);
        if p_type != PT_LOAD && p_type != PT_NOTE {
            continue;
        }
        let file_end = offset.checked_add(filesz).filter(|&e| e <= len);
        let Some(_) = file_end else {
            return Err(LoaderError::SegmentOutsideFile {
                index,
                offset,
                end: offset.saturating_add(filesz),
                len,
            });
        };
        if p_type == PT_NOTE || filesz == 0 {
            // linux-loader loads only segments with file contents; guest RAM starts zeroed.
            continue;
        }
        if filesz > memsz {
            return Err(bad(format!(
                "segment {index}: p_filesz {filesz:#x} is larger than p_memsz {memsz:#x}"
            )));
        }
        let end = paddr.saturating_add(memsz);
        let in_ram = paddr >= HIMEM_START
            && end <= MMIO32_HOLE_END
            && usize::try_from(memsz)
                .map(|n| mem.check_range(GuestAddress(paddr), n))
                .unwrap_or(false);
        if !in_ram {
            return Err(LoaderError::SegmentOutsideRam {
                index,
                addr: paddr,
                end,
            });
        }
        segments.push(Segment { addr: paddr, end });
    }
    if segments.is_empty() {
        return Err(bad("no loadable segment".into()));
    }
    Ok((e_entry, segments))
}

/// Validates and loads an ELF kernel from `image` (`len` bytes), reporting its PVH entry if
/// it has a XEN_ELFNOTE_PHYS32_ENTRY note.
fn load_elf<R: Read + Seek + ReadVolatile>(
    mem: &GuestMemoryMmap,
    image: &mut R,
    len: u64,
) -> Result<LoadedElf, LoaderError> {
    let (e_entry, segments) = validate_elf(mem, image, len)?;
    let result = Elf::load(mem, None, image, None).map_err(LoaderError::ElfLoad)?;
    let pvh_entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => Some(addr.raw_value()),
        _ => None,
    };
    Ok(LoadedElf {
        e_entry,
        pvh_entry,
        segments,
    })
}

/// Loads an initrd as high as allowed: page-aligned, ending at or below both the kernel's
/// `initrd_addr_max` and the end of RAM below the 32-bit hole, above the kernel.
/// Returns its guest address and size.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    initrd: &mut File,
    kernel: &KernelEntry,
) -> Result<(GuestAddress, u64), LoaderError> {
    let size = file_size(initrd, "initrd")?;
    let low = mem
        .find_region(GuestAddress(HIMEM_START))
        .ok_or(LoaderError::NoLowRam)?;
    let ram_end = low.last_addr().raw_value().saturating_add(1);
    let limit = ram_end
        .min(kernel.initrd_addr_max().saturating_add(1))
        .min(MMIO32_HOLE_END);
    let lowest = kernel
        .kernel_end
        .0
        .max(HIMEM_START)
        .div_ceil(PAGE_SIZE)
        .saturating_mul(PAGE_SIZE);
    let available = limit.saturating_sub(lowest);
    let too_large = || LoaderError::InitrdTooLarge {
        size,
        available,
        kernel_end: kernel.kernel_end.0,
        limit,
    };
    if size > available {
        return Err(too_large());
    }
    let addr = (limit - size) & !(PAGE_SIZE - 1);
    if addr < lowest {
        return Err(too_large());
    }
    let count = usize::try_from(size).map_err(|_| too_large())?;
    initrd.rewind().map_err(io_err("initrd"))?;
    mem.read_exact_volatile_from(GuestAddress(addr), initrd, count)
        .map_err(|e| LoaderError::Io {
            what: "initrd",
            source: std::io::Error::other(e.to_string()),
        })?;
    tracing::info!(addr, size, "loaded initrd");
    Ok((GuestAddress(addr), size))
}

#[cfg(test)]
#[path = "loader_tests.rs"]
mod tests;
