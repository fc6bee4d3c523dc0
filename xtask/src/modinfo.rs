//! Reads the `.modinfo` section of a Linux kernel module (an ELF64 little-endian relocatable
//! object): NUL-separated `key=value` strings such as `name=virtio_blk` and
//! `depends=virtio,virtio_ring`. Debian's kernel package ships no `modules.dep`, so this is how the
//! guest builder learns each module's dependencies, without needing `depmod` on the host.

/// Largest module file accepted (the biggest in Debian's 6.1 kernel is a few MiB).
pub const MAX_MODULE_LEN: usize = 64 << 20;
/// Largest section table accepted.
const MAX_SECTIONS: usize = 4096;
const SHDR_LEN: usize = 64;
const SHT_NOBITS: u32 = 8;

/// Why a module's metadata could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModinfoError {
    #[error("module is {0} bytes, more than the {MAX_MODULE_LEN} accepted")]
    TooLarge(usize),
    #[error(
        "not an ELF64 little-endian object (compressed .ko.xz/.ko.zst modules are not supported)"
    )]
    NotElf64Le,
    #[error("ELF section table is malformed: {0}")]
    BadSections(&'static str),
    #[error("no .modinfo section")]
    NoModinfo,
    #[error(".modinfo entry is not UTF-8 `key=value`")]
    BadEntry,
}

/// The fields of `.modinfo` the guest builder uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    /// `name=`: the module's name as `insmod`/`/sys/module` know it.
    pub name: Option<String>,
    /// `depends=`: module names this one needs loaded first.
    pub depends: Vec<String>,
    /// `vermagic=`: the kernel release and options it was built for.
    pub vermagic: Option<String>,
}

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Bytes of the section whose header is at `hdr`, bounds-checked against the file.
fn section_bytes(elf: &[u8], hdr: usize) -> Result<&[u8], ModinfoError> {
    let bad = || ModinfoError::BadSections("section lies outside the file");
    let kind = read_u32(elf, hdr + 4).ok_or_else(bad)?;
    if kind == SHT_NOBITS {
        return Ok(&[]);
    }
    let off = read_u64(elf, hdr + 24).ok_or_else(bad)?;
    let len = read_u64(elf, hdr + 32).ok_or_else(bad)?;
    let off = usize::try_from(off).map_err(|_| bad())?;
    let len = usize::try_from(len).map_err(|_| bad())?;
    let end = off.checked_add(len).ok_or_else(bad)?;
    elf.get(off..end).ok_or_else(bad)
}

/// Finds the raw `.modinfo` section of an ELF64 LE object.
pub fn modinfo_section(elf: &[u8]) -> Result<&[u8], ModinfoError> {
    if elf.len() > MAX_MODULE_LEN {
        return Err(ModinfoError::TooLarge(elf.len()));
    }
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return Err(ModinfoError::NotElf64Le);
    }
    let bad = |m| ModinfoError::BadSections(m);
    let shoff = read_u64(elf, 0x28).ok_or(bad("no e_shoff"))?;
    let shentsize = read_u16(elf, 0x3A).ok_or(bad("no e_shentsize"))? as usize;
    let shnum = read_u16(elf, 0x3C).ok_or(bad("no e_shnum"))? as usize;
    let shstrndx = read_u16(elf, 0x3E).ok_or(bad("no e_shstrndx"))? as usize;
    if shentsize != SHDR_LEN {
        return Err(bad("section header size is not 64"));
    }
    if shnum == 0 || shnum > MAX_SECTIONS || shstrndx >= shnum {
        return Err(bad("section count or name-table index out of range"));
    }
    let shoff = usize::try_from(shoff).map_err(|_| bad("e_shoff too large"))?;
    let table_end = shnum
        .checked_mul(SHDR_LEN)
        .and_then(|n| n.checked_add(shoff))
        .ok_or(bad("section table overflows"))?;
    if table_end > elf.len() {
        return Err(bad("section table runs past the end of the file"));
    }
    let strtab = section_bytes(elf, shoff + shstrndx * SHDR_LEN)?;
    for i in 0..shnum {
        let hdr = shoff + i * SHDR_LEN;
        let name_off = read_u32(elf, hdr).ok_or(bad("short section header"))? as usize;
        let name = strtab
            .get(name_off..)
            .ok_or(bad("section name outside the name table"))?;
        let name = name.split(|&c| c == 0).next().unwrap_or_default();
        if name == b".modinfo" {
            return section_bytes(elf, hdr);
        }
    }
    Err(ModinfoError::NoModinfo)
}

/// Parses the fields the guest builder needs from a module's bytes.
pub fn parse_modinfo(elf: &[u8]) -> Result<ModInfo, ModinfoError> {
    let section = modinfo_section(elf)?;
    let mut info = ModInfo::default();
    for raw in section.split(|&c| c == 0).filter(|s| !s.is_empty()) {
        let entry = std::str::from_utf8(raw).map_err(|_| ModinfoError::BadEntry)?;
        let (key, value) = entry.split_once('=').ok_or(ModinfoError::BadEntry)?;
        match key {
            "name" => info.name = Some(value.to_owned()),
            "vermagic" => info.vermagic = Some(value.to_owned()),
            "depends" => {
                info.depends = value
                    .split(',')
                    .filter(|d| !d.is_empty())
                    .map(|d| d.replace('-', "_"))
                    .collect();
            }
            _ => {}
        }
    }
    Ok(info)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a minimal ELF64 LE object with a null section, `.modinfo` and `.shstrtab`.
    pub fn fake_module(modinfo: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.modinfo\0.shstrtab\0";
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let modinfo_off = elf.len();
        elf.extend_from_slice(modinfo);
        let strtab_off = elf.len();
        elf.extend_from_slice(shstrtab);
        while elf.len() % 8 != 0 {
            elf.push(0);
        }
        let shoff = elf.len();
        let mut shdr = |name: u32, kind: u32, off: usize, len: usize| {
            let mut h = [0u8; SHDR_LEN];
            h[0..4].copy_from_slice(&name.to_le_bytes());
            h[4..8].copy_from_slice(&kind.to_le_bytes());
            h[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(len as u64).to_le_bytes());
            elf.extend_from_slice(&h);
        };
        shdr(0, 0, 0, 0);
        shdr(1, 1, modinfo_off, modinfo.len());
        shdr(10, 3, strtab_off, shstrtab.len());
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3A..0x3C].copy_from_slice(&(SHDR_LEN as u16).to_le_bytes());
        elf[0x3C..0x3E].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3E..0x40].copy_from_slice(&2u16.to_le_bytes());
        elf
    }

    #[test]
    fn reads_name_depends_and_vermagic() {
        // Arrange
        let elf = fake_module(
            b"license=GPL\0depends=virtio,virtio_ring,net-failover\0name=virtio_net\0vermagic=6.1.0 SMP\0",
        );

        // Act
        let info = parse_modinfo(&elf).unwrap();

        // Assert
        assert_eq!(info.name.as_deref(), Some("virtio_net"));
        assert_eq!(info.depends, ["virtio", "virtio_ring", "net_failover"]);
        assert_eq!(info.vermagic.as_deref(), Some("6.1.0 SMP"));
    }

    #[test]
    fn reads_empty_depends_as_no_dependency() {
        let info = parse_modinfo(&fake_module(b"depends=\0name=virtio_ring\0")).unwrap();
        assert!(info.depends.is_empty());
    }

    #[test]
    fn rejects_compressed_module() {
        assert_eq!(
            parse_modinfo(b"\xfd7zXZ\0\0\0 xz data that is long enough to be an elf header\0\0\0\0\0\0\0\0\0\0\0\0\0\0"),
            Err(ModinfoError::NotElf64Le)
        );
    }

    #[test]
    fn rejects_section_table_past_end_of_file() {
        // Arrange
        let mut elf = fake_module(b"name=x\0");
        elf[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());

        // Act / Assert
        assert!(matches!(
            parse_modinfo(&elf),
            Err(ModinfoError::BadSections(_))
        ));
    }

    #[test]
    fn rejects_modinfo_section_pointing_outside_file() {
        // Arrange: make the .modinfo size enormous.
        let mut elf = fake_module(b"name=x\0");
        let shoff = u64::from_le_bytes(elf[0x28..0x30].try_into().unwrap()) as usize;
        let size_at = shoff + SHDR_LEN + 32;
        elf[size_at..size_at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());

        // Act / Assert
        assert!(matches!(
            parse_modinfo(&elf),
            Err(ModinfoError::BadSections(_))
        ));
    }

    #[test]
    fn rejects_object_without_modinfo() {
        // Arrange: rename .modinfo to .modinfX in the string table.
        let mut elf = fake_module(b"name=x\0");
        let pos = elf.windows(8).position(|w| w == b".modinfo").unwrap();
        elf[pos + 7] = b'X';

        // Act / Assert
        assert_eq!(parse_modinfo(&elf), Err(ModinfoError::NoModinfo));
    }

    #[test]
    fn rejects_entry_without_equals_sign() {
        assert_eq!(
            parse_modinfo(&fake_module(b"garbage\0")),
            Err(ModinfoError::BadEntry)
        );
    }

    #[test]
    fn rejects_truncated_header() {
        assert_eq!(
            parse_modinfo(b"\x7fELF\x02\x01"),
            Err(ModinfoError::NotElf64Le)
        );
    }
}
