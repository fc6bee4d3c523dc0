//! Boot information for the kernel: the command line, the Linux zero page (`boot_params`) and
//! the PVH `hvm_start_info` with its memory map and module list.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, E820_MAX_ENTRIES_ZEROPAGE};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::bzimage::{BOOT_FLAG, HDRS_MAGIC, LOADED_HIGH};
use super::layout::{
    e820_map, CMDLINE_MAX_SIZE, CMDLINE_START, PVH_INFO_START, PVH_MEMMAP_MAX_SIZE,
    PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};
use super::loader::{BootProtocol, KernelEntry};

/// `type_of_loader`: "undefined" boot loader.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `vid_mode`: "normal" (no mode change).
pub const VID_MODE_NORMAL: u16 = 0xffff;
/// `kernel_alignment` advertised for ELF kernels, which carry no setup header.
const ELF_KERNEL_ALIGNMENT: u32 = 0x100_0000;

/// Errors writing boot information.
#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    #[error("the kernel command line is {len} bytes, this kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("the kernel command line contains a NUL byte at offset {0}")]
    CmdlineNul(usize),
    #[error("cannot write the kernel command line at {addr:#x}: {source}")]
    CmdlineWrite {
        addr: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("the memory map has {count} entries, the {what} holds at most {max}")]
    TooManyMemoryMapEntries {
        count: usize,
        max: usize,
        what: &'static str,
    },
    #[error("cannot write the {what}: {source}")]
    Configurator {
        what: &'static str,
        #[source]
        source: linux_loader::configurator::Error,
    },
}

/// Writes `cmdline` NUL-terminated at [`CMDLINE_START`], after checking it against the kernel's
/// limit (`kernel.cmdline_limit()`) and the reserved area. Returns its length (without NUL).
pub fn write_cmdline(
    mem: &GuestMemoryMmap,
    cmdline: &str,
    kernel: &KernelEntry,
) -> Result<usize, BootParamsError> {
    let bytes = cmdline.as_bytes();
    if let Some(pos) = bytes.iter().position(|&b| b == 0) {
        return Err(BootParamsError::CmdlineNul(pos));
    }
    let max = kernel.cmdline_limit().min(CMDLINE_MAX_SIZE as usize - 1);
    if bytes.len() > max {
        return Err(BootParamsError::CmdlineTooLong {
            len: bytes.len(),
            max,
        });
    }
    let mut with_nul = Vec::with_capacity(bytes.len() + 1);
    with_nul.extend_from_slice(bytes);
    with_nul.push(0);
    mem.write_slice(&with_nul, GuestAddress(CMDLINE_START))
        .map_err(|source| BootParamsError::CmdlineWrite {
            addr: CMDLINE_START,
            source,
        })?;
    Ok(bytes.len())
}

/// What the boot information describes besides the kernel.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    /// Length of the command line written at [`CMDLINE_START`] (without its NUL).
    pub cmdline_len: usize,
    /// Guest address and size of the initrd, if any.
    pub initrd: Option<(GuestAddress, u64)>,
    /// Guest address of the ACPI RSDP, if ACPI tables were built.
    pub rsdp: Option<GuestAddress>,
    /// Guest RAM size in bytes (for the memory map).
    pub mem_size: u64,
}

/// Builds the Linux zero page: the bzImage's setup header (if any) with the fields a boot
/// loader must fill (type_of_loader, loadflags, vid_mode, cmd_line_ptr, ramdisk, setup_data),
/// the e820 map and the RSDP address.
pub fn build_boot_params(
    kernel: &KernelEntry,
    info: &BootInfo,
) -> Result<boot_params, BootParamsError> {
    let mut params = boot_params::default();
    match kernel.setup_header {
        Some(h) => {
            params.hdr = h;
            params.hdr.vid_mode = VID_MODE_NORMAL;
        }
        None => params.hdr.kernel_alignment = ELF_KERNEL_ALIGNMENT,
    }
    params.hdr.boot_flag = BOOT_FLAG;
    params.hdr.header = HDRS_MAGIC;
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.loadflags |= LOADED_HIGH;
    params.hdr.setup_data = 0;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.ext_cmd_line_ptr = 0;
    params.hdr.cmdline_size = params.hdr.cmdline_size.max(info.cmdline_len as u32);
    if let Some((addr, size)) = info.initrd {
        params.hdr.ramdisk_image = addr.0 as u32;
        params.ext_ramdisk_image = (addr.0 >> 32) as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    params.acpi_rsdp_addr = info.rsdp.map_or(0, |a| a.0);

    let map = e820_map(info.mem_size);
    if map.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(BootParamsError::TooManyMemoryMapEntries {
            count: map.len(),
            max: E820_MAX_ENTRIES_ZEROPAGE,
            what: "zero page",
        });
    }
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.type_ as u32,
        };
    }
    params.e820_entries = map.len() as u8;
    Ok(params)
}

/// Writes the zero page at [`ZERO_PAGE_START`] (Linux 64-bit boot protocol).
pub fn write_linux_boot_params(
    mem: &GuestMemoryMmap,
    kernel: &KernelEntry,
    info: &BootInfo,
) -> Result<(), BootParamsError> {
    let params = build_boot_params(kernel, info)?;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(|source| BootParamsError::Configurator {
        what: "zero page",
        source,
    })
}

/// Writes the PVH `hvm_start_info` at [`PVH_INFO_START`], its memory map at
/// [`PVH_MEMMAP_START`] and, with an initrd, a one-entry module list at [`PVH_MODLIST_START`].
/// Returns the address of the start info (the value for EBX).
pub fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    info: &BootInfo,
) -> Result<GuestAddress, BootParamsError> {
    let memmap: Vec<hvm_memmap_table_entry> = e820_map(info.mem_size)
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.type_ as u32,
            reserved: 0,
        })
        .collect();
    let max = (PVH_MEMMAP_MAX_SIZE as usize) / std::mem::size_of::<hvm_memmap_table_entry>();
    if memmap.len() > max {
        return Err(BootParamsError::TooManyMemoryMapEntries {
            count: memmap.len(),
            max,
            what: "PVH memory map area",
        });
    }
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        flags: 0,
        nr_modules: u32::from(info.initrd.is_some()),
        modlist_paddr: if info.initrd.is_some() {
            PVH_MODLIST_START
        } else {
            0
        },
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: info.rsdp.map_or(0, |a| a.0),
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        reserved: 0,
    };
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if let Some((addr, size)) = info.initrd {
        let module = hvm_modlist_entry {
            paddr: addr.0,
            size,
            cmdline_paddr: 0,
            reserved: 0,
        };
        params.set_modules(&[module], GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(|source| {
        BootParamsError::Configurator {
            what: "PVH start info",
            source,
        }
    })?;
    Ok(GuestAddress(PVH_INFO_START))
}

/// Writes the boot information the kernel's protocol needs (zero page or PVH start info).
/// Returns the PVH start info address for PVH kernels, `None` for Linux 64-bit.
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    kernel: &KernelEntry,
    info: &BootInfo,
) -> Result<Option<GuestAddress>, BootParamsError> {
    match kernel.protocol {
        BootProtocol::Linux64 => write_linux_boot_params(mem, kernel, info).map(|()| None),
        BootProtocol::Pvh => write_pvh_start_info(mem, info).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::bzimage::parse_setup_header;
    use crate::arch::x86_64::bzimage::tests::fake_bzimage;
    use crate::arch::x86_64::layout::{ram_regions, E820Type, EBDA_START, GIB, MIB};

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&ram_regions(64 * MIB)).unwrap()
    }

    fn elf_kernel(protocol: BootProtocol) -> KernelEntry {
        KernelEntry {
            protocol,
            entry: GuestAddress(0x100_0000),
            kernel_start: GuestAddress(0x100_0000),
            kernel_end: GuestAddress(0x200_0000),
            setup_header: None,
            compression: None,
        }
    }

    fn bz_kernel() -> KernelEntry {
        let image = fake_bzimage(b"payload");
        let info = parse_setup_header(&image, image.len() as u64).unwrap();
        KernelEntry {
            setup_header: Some(info.header),
            ..elf_kernel(BootProtocol::Linux64)
        }
    }

    fn info() -> BootInfo {
        BootInfo {
            cmdline_len: 12,
            initrd: Some((GuestAddress(0x300_0000), 0x1234)),
            rsdp: Some(GuestAddress(0xe0000)),
            mem_size: 64 * MIB,
        }
    }

    #[test]
    fn zero_page_carries_setup_header_and_loader_fields() {
        // Act
        let p = build_boot_params(&bz_kernel(), &info()).unwrap();
        // Assert
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, HDRS_MAGIC);
        assert_eq!({ p.hdr.version }, 0x020f, "kernel's header kept");
        assert_eq!({ p.hdr.init_size }, 0x40_0000);
        assert_eq!({ p.hdr.pref_address }, 0x100_0000);
        assert_eq!({ p.hdr.vid_mode }, 0xffff);
        assert_ne!(p.hdr.loadflags & LOADED_HIGH, 0);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x1234);
        assert_eq!({ p.acpi_rsdp_addr }, 0xe0000);
        assert_eq!(p.e820_entries, 4, "RAM, BIOS area, RAM, PCI ECAM");
        assert_eq!({ p.e820_table[1].addr }, EBDA_START);
        assert_eq!({ p.e820_table[1].r#type }, E820Type::Reserved as u32);
    }

    #[test]
    fn zero_page_for_elf_kernel_has_magic_and_alignment() {
        let p = build_boot_params(&elf_kernel(BootProtocol::Linux64), &info()).unwrap();
        assert_eq!({ p.hdr.header }, HDRS_MAGIC);
        assert_eq!({ p.hdr.kernel_alignment }, ELF_KERNEL_ALIGNMENT);
    }

    #[test]
    fn initrd_above_4g_uses_ext_fields() {
        let mut i = info();
        i.initrd = Some((GuestAddress(5 * GIB), 0x1000));
        let p = build_boot_params(&bz_kernel(), &i).unwrap();
        assert_eq!({ p.ext_ramdisk_image }, 1);
        assert_eq!({ p.hdr.ramdisk_image }, GIB as u32);
    }

    #[test]
    fn zero_page_is_written_at_its_address() {
        let mem = mem();
        write_boot_info(&mem, &bz_kernel(), &info()).unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.header }, HDRS_MAGIC);
    }

    #[test]
    fn pvh_start_info_points_at_memmap_cmdline_and_initrd_module() {
        // Arrange
        let mem = mem();
        // Act
        let addr = write_boot_info(&mem, &elf_kernel(BootProtocol::Pvh), &info())
            .unwrap()
            .unwrap();
        // Assert
        let si: hvm_start_info = mem.read_obj(addr).unwrap();
        assert_eq!(si.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(si.cmdline_paddr, CMDLINE_START);
        assert_eq!(si.rsdp_paddr, 0xe0000);
        assert_eq!(si.memmap_entries, 4);
        let last: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(si.memmap_paddr + 2 * 24))
            .unwrap();
        assert_eq!((last.addr, last.type_), (0x10_0000, 1));
        assert_eq!(si.nr_modules, 1);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(si.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x300_0000, 0x1234));
    }

    #[test]
    fn cmdline_is_written_nul_terminated() {
        let mem = mem();
        let n = write_cmdline(&mem, "console=ttyS0", &bz_kernel()).unwrap();
        let mut buf = [0xffu8; 14];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(n, 13);
        assert_eq!(&buf, b"console=ttyS0\0");
    }

    #[test]
    fn rejects_over_long_cmdline() {
        let long = "x".repeat(2048);
        let err = write_cmdline(&mem(), &long, &bz_kernel()).unwrap_err();
        assert!(matches!(
            err,
            BootParamsError::CmdlineTooLong {
                len: 2048,
                max: 2047
            }
        ));
    }

    #[test]
    fn rejects_cmdline_with_nul() {
        let err = write_cmdline(&mem(), "a\0b", &bz_kernel()).unwrap_err();
        assert!(matches!(err, BootParamsError::CmdlineNul(1)));
    }
}
