//! The bzImage setup header: parsing and validation against the file it came from.
//!
//! Layout (Documentation/arch/x86/boot.rst): the real-mode setup occupies
//! `(setup_sects + 1) * 512` bytes (setup_sects 0 means 4); the protected-mode part follows;
//! the compressed kernel (`payload_offset`, `payload_length`) lies inside the protected-mode part.

use linux_loader::loader::bootparam::setup_header;
use vm_memory::ByteValued;

/// Offset of the setup header in the file (and in boot_params).
pub const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// "HdrS".
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// The boot sector signature.
pub const BOOT_FLAG: u16 = 0xaa55;
/// Lowest boot protocol with a 64-bit entry (xloadflags): 2.12.
pub const MIN_PROTOCOL: u16 = 0x020c;
/// xloadflags: the kernel has the legacy 64-bit entry point at 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// loadflags: the protected-mode code is loaded at 0x100000.
pub const LOADED_HIGH: u8 = 1 << 0;
/// initrd_addr_max for kernels that do not state it (protocol < 2.03).
pub const DEFAULT_INITRD_ADDR_MAX: u32 = 0x37ff_ffff;

/// Errors in a bzImage's setup header. Every message names the field and values at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BzImageError {
    #[error("bzImage is {len} bytes, too short to hold a setup header (needs {need})")]
    TooShort { len: u64, need: u64 },
    #[error("bzImage boot_flag is {0:#06x}, expected 0xaa55")]
    BadBootFlag(u16),
    #[error("bzImage header magic is {0:#010x}, expected \"HdrS\" (0x53726448)")]
    BadMagic(u32),
    #[error("bzImage boot protocol {major}.{minor:02} is too old: rampart needs 2.12 or later for the 64-bit entry")]
    OldProtocol { major: u16, minor: u16 },
    #[error("bzImage has no 64-bit entry (xloadflags {0:#x} lacks XLF_KERNEL_64)")]
    Not64Bit(u16),
    #[error("bzImage setup ({setup_size} bytes) does not fit in the {len}-byte file")]
    SetupOutsideFile { setup_size: u64, len: u64 },
    #[error("bzImage syssize says the protected-mode kernel is {sys_size} bytes from offset {setup_size}, past the end of the {len}-byte file")]
    SysSizeOutsideFile {
        setup_size: u64,
        sys_size: u64,
        len: u64,
    },
    #[error("bzImage payload (offset {offset:#x}, length {length}) lies outside the protected-mode kernel (offset {setup_size:#x}, {sys_size} bytes)")]
    PayloadOutsideFile {
        offset: u64,
        length: u64,
        setup_size: u64,
        sys_size: u64,
    },
    #[error("bzImage payload is empty")]
    EmptyPayload,
}

/// A validated setup header and where its payload lies in the file.
#[derive(Debug, Clone, Copy)]
pub struct BzImageInfo {
    pub header: setup_header,
    /// File offset of the compressed payload.
    pub payload_offset: u64,
    /// Length of the compressed payload in bytes.
    pub payload_length: u64,
}

/// Parses and validates the setup header found in `head` (the first bytes of the file, at least
/// up to the end of the header) of a file of `file_len` bytes.
pub fn parse_setup_header(head: &[u8], file_len: u64) -> Result<BzImageInfo, BzImageError> {
    let header_len = std::mem::size_of::<setup_header>();
    let need = (SETUP_HEADER_OFFSET + header_len) as u64;
    let bytes = head
        .get(SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + header_len)
        .filter(|_| file_len >= need)
        .ok_or(BzImageError::TooShort {
            len: file_len.min(head.len() as u64),
            need,
        })?;
    let mut header = setup_header::default();
    header.as_mut_slice().copy_from_slice(bytes);

    let boot_flag = header.boot_flag;
    if boot_flag != BOOT_FLAG {
        return Err(BzImageError::BadBootFlag(boot_flag));
    }
    let magic = header.header;
    if magic != HDRS_MAGIC {
        return Err(BzImageError::BadMagic(magic));
    }
    let version = header.version;
    if version < MIN_PROTOCOL {
        return Err(BzImageError::OldProtocol {
            major: version >> 8,
            minor: version & 0xff,
        });
    }
    let xloadflags = header.xloadflags;
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BzImageError::Not64Bit(xloadflags));
    }

    let setup_sects = match header.setup_sects {
        0 => 4,
        n => u64::from(n),
    };
    let setup_size = (setup_sects + 1) * 512;
    if setup_size >= file_len {
        return Err(BzImageError::SetupOutsideFile {
            setup_size,
            len: file_len,
        });
    }
    let sys_size = u64::from(header.syssize) * 16;
    if setup_size + sys_size > file_len {
        return Err(BzImageError::SysSizeOutsideFile {
            setup_size,
            sys_size,
            len: file_len,
        });
    }
    let offset = setup_size + u64::from(header.payload_offset);
    let length = u64::from(header.payload_length);
    if length == 0 {
        return Err(BzImageError::EmptyPayload);
    }
    if offset + length > setup_size + sys_size {
        return Err(BzImageError::PayloadOutsideFile {
            offset,
            length,
            setup_size,
            sys_size,
        });
    }
    Ok(BzImageInfo {
        header,
        payload_offset: offset,
        payload_length: length,
    })
}

/// The highest address (inclusive) the initrd may occupy according to the header.
pub fn initrd_addr_max(header: &setup_header) -> u32 {
    match header.initrd_addr_max {
        0 => DEFAULT_INITRD_ADDR_MAX,
        n => n,
    }
}

/// The longest command line (without the NUL) the kernel accepts according to the header.
pub fn cmdline_limit(header: &setup_header) -> usize {
    if header.version >= 0x0206 && header.cmdline_size > 0 {
        header.cmdline_size as usize
    } else {
        255
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal valid bzImage image: 1 setup sector + boot sector, a protected-mode part of
    /// `pm_len` bytes with the payload at its start.
    pub(crate) fn fake_bzimage(payload: &[u8]) -> Vec<u8> {
        let setup_size = 2 * 512;
        let pm_len = payload.len().div_ceil(16) * 16;
        let mut f = vec![0u8; setup_size + pm_len];
        let mut h = setup_header {
            setup_sects: 1,
            boot_flag: BOOT_FLAG,
            header: HDRS_MAGIC,
            version: 0x020f,
            xloadflags: XLF_KERNEL_64,
            syssize: (pm_len / 16) as u32,
            payload_offset: 0,
            payload_length: payload.len() as u32,
            cmdline_size: 2047,
            initrd_addr_max: 0x7fff_ffff,
            kernel_alignment: 0x20_0000,
            init_size: 0x40_0000,
            pref_address: 0x100_0000,
            ..Default::default()
        };
        h.loadflags = LOADED_HIGH;
        f[SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + std::mem::size_of::<setup_header>()]
            .copy_from_slice(h.as_slice());
        f[setup_size..setup_size + payload.len()].copy_from_slice(payload);
        f
    }

    fn patch(image: &mut [u8], offset: usize, bytes: &[u8]) {
        image[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    fn parse(image: &[u8]) -> Result<BzImageInfo, BzImageError> {
        parse_setup_header(image, image.len() as u64)
    }

    #[test]
    fn accepts_valid_header_and_locates_payload() {
        // Arrange
        let image = fake_bzimage(b"payload!");
        // Act
        let info = parse(&image).unwrap();
        // Assert
        assert_eq!((info.payload_offset, info.payload_length), (1024, 8));
        assert_eq!(cmdline_limit(&info.header), 2047);
        assert_eq!(initrd_addr_max(&info.header), 0x7fff_ffff);
    }

    #[test]
    fn rejects_wrong_magic() {
        let mut image = fake_bzimage(b"payload!");
        patch(&mut image, 0x202, b"HdrX");
        assert!(matches!(parse(&image), Err(BzImageError::BadMagic(_))));
    }

    #[test]
    fn rejects_wrong_boot_flag() {
        let mut image = fake_bzimage(b"payload!");
        patch(&mut image, 0x1fe, &[0, 0]);
        assert_eq!(parse(&image).unwrap_err(), BzImageError::BadBootFlag(0));
    }

    #[test]
    fn rejects_old_protocol() {
        let mut image = fake_bzimage(b"payload!");
        patch(&mut image, 0x206, &0x020bu16.to_le_bytes());
        let err = parse(&image).unwrap_err();
        assert_eq!(
            err,
            BzImageError::OldProtocol {
                major: 2,
                minor: 11
            }
        );
        assert!(err.to_string().contains("2.11"), "{err}");
    }

    #[test]
    fn rejects_kernel_without_64_bit_entry() {
        let mut image = fake_bzimage(b"payload!");
        patch(&mut image, 0x236, &[0, 0]);
        assert_eq!(parse(&image).unwrap_err(), BzImageError::Not64Bit(0));
    }

    #[test]
    fn rejects_truncated_file() {
        let image = fake_bzimage(b"payload!");
        assert!(matches!(
            parse(&image[..0x200]),
            Err(BzImageError::TooShort { .. })
        ));
        assert!(matches!(
            parse(&image[..1000]),
            Err(BzImageError::SetupOutsideFile { .. })
        ));
    }

    #[test]
    fn rejects_syssize_past_end_of_file() {
        let mut image = fake_bzimage(b"payload!");
        patch(&mut image, 0x1f4, &0x1000u32.to_le_bytes());
        assert!(matches!(
            parse(&image),
            Err(BzImageError::SysSizeOutsideFile { .. })
        ));
    }

    #[test]
    fn rejects_payload_outside_file() {
        let mut image = fake_bzimage(b"payload!");
        patch(&mut image, 0x248, &0x10u32.to_le_bytes());
        assert!(matches!(
            parse(&image),
            Err(BzImageError::PayloadOutsideFile { .. })
        ));
        let mut image = fake_bzimage(b"payload!");
        patch(&mut image, 0x24c, &u32::MAX.to_le_bytes());
        assert!(matches!(
            parse(&image),
            Err(BzImageError::PayloadOutsideFile { .. })
        ));
    }
}
