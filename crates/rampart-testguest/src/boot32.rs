//! The 32-bit PVH entry stub and the GDT it loads.
//!
//! PVH enters in 32-bit protected mode with flat segments and paging off (EBX points at an
//! `hvm_start_info`, which these guests do not need). The stub identity-maps the first 4 GiB
//! with 2 MiB pages, loads a GDT with a 64-bit code segment, enables PAE, sets EFER.LME, turns
//! paging on and far-jumps to the 64-bit code at [`CODE64_ADDR`].

use iced_x86::code_asm::{dword_ptr, eax, ecx, edi, CodeAssembler};
use iced_x86::IcedError;

use crate::layout::{
    CODE64_ADDR, CODE64_SELECTOR, GDTR_ADDR, GDT_ADDR, GDT_ENTRIES, PAGE_TABLE_BYTES, PDPT_ADDR,
    PD_ADDR, PD_COUNT, PML4_ADDR, STUB32_ADDR,
};

/// Page-table entry bits: present, writable.
const PTE_PRESENT_RW: u32 = 0b11;
/// Page-directory entry bits for a 2 MiB page: present, writable, page size.
const PDE_2M_PAGE: u32 = 0x83;
const TWO_MIB: u32 = 2 << 20;
const CR4_PAE: u32 = 1 << 5;
const CR0_PE_PG: u32 = (1 << 0) | (1 << 31);
const MSR_EFER: u32 = 0xc000_0080;
const EFER_LME: u32 = 1 << 8;

/// The GDT descriptors: null, 64-bit code (0x08), flat data (0x10), flat 32-bit code (0x18).
/// Accessed bits are preset so the CPU never writes the table.
pub const GDT: [u64; GDT_ENTRIES] = [
    0,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x00cf_9b00_0000_ffff,
];

/// Bytes of the GDT followed by the 6-byte GDTR image (limit, 32-bit base) at [`GDTR_ADDR`].
pub fn gdt_bytes() -> Vec<u8> {
    let mut out: Vec<u8> = GDT.iter().flat_map(|d| d.to_le_bytes()).collect();
    debug_assert_eq!(GDT_ADDR + out.len() as u64, GDTR_ADDR);
    let limit = (GDT_ENTRIES * 8 - 1) as u16;
    out.extend_from_slice(&limit.to_le_bytes());
    out.extend_from_slice(&(GDT_ADDR as u32).to_le_bytes());
    out
}

/// Assembles the 32-bit stub at [`STUB32_ADDR`].
pub fn assemble_stub() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(32)?;
    a.cli()?;
    a.cld()?;

    // Clear the page tables and the stack: the loader may not zero-fill them.
    a.mov(edi, PML4_ADDR as u32)?;
    a.xor(eax, eax)?;
    a.mov(ecx, (PAGE_TABLE_BYTES / 4) as u32)?;
    a.rep().stosd()?;

    // PML4[0] -> PDPT; PDPT[0..4] -> the four page directories.
    a.mov(
        dword_ptr(PML4_ADDR as u32),
        PDPT_ADDR as u32 | PTE_PRESENT_RW,
    )?;
    for i in 0..PD_COUNT {
        let pd = (PD_ADDR + i * 0x1000) as u32;
        a.mov(dword_ptr((PDPT_ADDR + i * 8) as u32), pd | PTE_PRESENT_RW)?;
    }

    // Fill 4 x 512 page-directory entries: identity map of 0..4 GiB with 2 MiB pages.
    a.mov(edi, PD_ADDR as u32)?;
    a.mov(eax, PDE_2M_PAGE)?;
    a.mov(ecx, (PD_COUNT * 512) as u32)?;
    let mut fill = a.create_label();
    a.set_label(&mut fill)?;
    a.mov(dword_ptr(edi), eax)?;
    a.add(eax, TWO_MIB)?;
    a.add(edi, 8u32)?;
    a.dec(ecx)?;
    a.jnz(fill)?;

    a.lgdt(dword_ptr(GDTR_ADDR as u32))?;

    a.mov(eax, iced_x86::code_asm::cr4)?;
    a.or(eax, CR4_PAE)?;
    a.mov(iced_x86::code_asm::cr4, eax)?;

    a.mov(eax, PML4_ADDR as u32)?;
    a.mov(iced_x86::code_asm::cr3, eax)?;

    a.mov(ecx, MSR_EFER)?;
    a.rdmsr()?;
    a.or(eax, EFER_LME)?;
    a.wrmsr()?;

    a.mov(eax, iced_x86::code_asm::cr0)?;
    a.or(eax, CR0_PE_PG)?;
    a.mov(iced_x86::code_asm::cr0, eax)?;

    a.jmp_far(CODE64_SELECTOR, CODE64_ADDR as u32)?;
    a.assemble(STUB32_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};

    #[test]
    fn stub_ends_with_far_jump_to_64_bit_code() {
        let code = assemble_stub().unwrap();

        let mut dec = Decoder::with_ip(32, &code, STUB32_ADDR, DecoderOptions::NONE);
        let last = dec.iter().last().unwrap();

        assert_eq!(last.mnemonic(), Mnemonic::Jmp);
        assert_eq!(last.far_branch_selector(), CODE64_SELECTOR);
        assert_eq!(u64::from(last.far_branch32()), CODE64_ADDR);
    }

    #[test]
    fn stub_sets_efer_lme_and_enables_paging() {
        let code = assemble_stub().unwrap();

        let mnemonics: Vec<Mnemonic> = Decoder::with_ip(32, &code, STUB32_ADDR, 0)
            .iter()
            .map(|i| i.mnemonic())
            .collect();

        assert!(mnemonics.contains(&Mnemonic::Wrmsr));
        assert!(mnemonics.contains(&Mnemonic::Lgdt));
        assert!(!mnemonics.contains(&Mnemonic::INVALID));
    }

    #[test]
    fn gdtr_describes_the_gdt() {
        let bytes = gdt_bytes();

        let gdtr = &bytes[GDT_ENTRIES * 8..];
        let limit = u16::from_le_bytes([gdtr[0], gdtr[1]]);
        let base = u32::from_le_bytes([gdtr[2], gdtr[3], gdtr[4], gdtr[5]]);

        assert_eq!(limit as usize, GDT_ENTRIES * 8 - 1);
        assert_eq!(u64::from(base), GDT_ADDR);
    }

    #[test]
    fn code64_descriptor_is_long_mode_code() {
        let desc = GDT[usize::from(CODE64_SELECTOR / 8)];

        let long_mode = desc & (1 << 53) != 0;
        let default_32 = desc & (1 << 54) != 0;
        let present_code = (desc >> 40) & 0x9a == 0x9a;

        assert!(long_mode && !default_32 && present_code);
    }
}
