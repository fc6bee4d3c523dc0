//! FXSAVE/FXRSTOR (and the REX.W forms FXSAVE64/FXRSTOR64): the 512-byte x87/MMX/SSE state
//! image of the SDM (Vol. 1, 10.5.1):
//!
//! | bytes   | content                                                                  |
//! |---------|--------------------------------------------------------------------------|
//! | 0..2    | FCW                                                                      |
//! | 2..4    | FSW                                                                      |
//! | 4       | abridged FTW (1 bit per physical register, 1 = valid)                     |
//! | 6..8    | FOP                                                                      |
//! | 8..16   | FIP (64-bit form) or FIP32 + FCS (legacy form)                            |
//! | 16..24  | FDP (64-bit form) or FDP32 + FDS (legacy form)                            |
//! | 24..28  | MXCSR                                                                    |
//! | 28..32  | MXCSR_MASK                                                               |
//! | 32..160 | ST0..ST7 / MM0..MM7, 16 bytes each (80-bit value, 6 reserved bytes)       |
//! | 160..416| XMM0..XMM15 (all 16 in 64-bit mode)                                      |
//! | 416..512| reserved / available to software: never written                          |
//!
//! The area must be 16-byte aligned (#GP(0)); CR0.EM or CR0.TS give #NM. FXSAVE checks the
//! whole area is writable before storing anything; FXRSTOR reads it all and checks MXCSR
//! (reserved bits: #GP(0)) before changing any state. FOP/FIP/FDP are not tracked and are saved
//! as zero, as AMD processors do when no x87 exception is pending; the legacy and 64-bit
//! layouts therefore differ only in which bytes are those zeros. The XMM and MXCSR parts are
//! saved and restored regardless of CR4.OSFXSR (implementation-dependent in the SDM).

use super::sse::MXCSR_MASK;
use crate::cpu::{cr0, Cpu};
use crate::exception::{vector, Exception, Res};
use crate::memory::GuestMemory;
use iced_x86::{Instruction, Mnemonic as M};

/// Bytes of the area this CPU writes (the rest is left as it was).
const WRITTEN: usize = 416;
const AREA: usize = 512;

pub(crate) fn handles(m: M) -> bool {
    matches!(m, M::Fxsave | M::Fxsave64 | M::Fxrstor | M::Fxrstor64)
}

/// The image FXSAVE stores (first [`WRITTEN`] bytes).
pub(crate) fn image(cpu: &Cpu) -> [u8; WRITTEN] {
    let mut b = [0u8; WRITTEN];
    let f = &cpu.fpu;
    b[0..2].copy_from_slice(&f.fcw.to_le_bytes());
    b[2..4].copy_from_slice(&f.fsw.to_le_bytes());
    b[4] = f.ftw;
    b[24..28].copy_from_slice(&cpu.mxcsr.to_le_bytes());
    b[28..32].copy_from_slice(&MXCSR_MASK.to_le_bytes());
    for (n, st) in f.st.iter().enumerate() {
        b[32 + 16 * n..42 + 16 * n].copy_from_slice(st);
    }
    for (n, x) in cpu.xmm.iter().enumerate() {
        b[160 + 16 * n..176 + 16 * n].copy_from_slice(&x.to_le_bytes());
    }
    b
}

/// Load state from an FXSAVE image; #GP(0) (nothing changed) for reserved MXCSR bits.
pub(crate) fn restore(cpu: &mut Cpu, b: &[u8; WRITTEN]) -> Res<()> {
    let word = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let mxcsr = u32::from_le_bytes([b[24], b[25], b[26], b[27]]);
    if mxcsr & !MXCSR_MASK != 0 {
        return Err(Exception::gp(0).into());
    }
    cpu.fpu.fcw = word(0);
    cpu.fpu.fsw = word(2);
    cpu.fpu.ftw = b[4];
    for n in 0..8 {
        cpu.fpu.st[n].copy_from_slice(&b[32 + 16 * n..42 + 16 * n]);
    }
    cpu.mxcsr = mxcsr;
    for n in 0..16 {
        let mut x = [0u8; 16];
        x.copy_from_slice(&b[160 + 16 * n..176 + 16 * n]);
        cpu.xmm[n] = u128::from_le_bytes(x);
    }
    Ok(())
}

pub(crate) fn exec(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    if cpu.cr0 & (cr0::EM | cr0::TS) != 0 {
        return Err(Exception::fault(vector::NM, None).into());
    }
    if i.has_lock_prefix() {
        return Err(Exception::ud().into());
    }
    let la = cpu.mem_la(i, 0)?;
    if la % 16 != 0 {
        return Err(Exception::gp(0).into());
    }
    if matches!(i.mnemonic(), M::Fxsave | M::Fxsave64) {
        for k in 0..WRITTEN / 16 {
            cpu.probe_write(mem, la.wrapping_add(16 * k as u64), 16)?;
        }
        let img = image(cpu);
        for (k, chunk) in img.chunks_exact(16).enumerate() {
            let mut c = [0u8; 16];
            c.copy_from_slice(chunk);
            cpu.write_vec(
                mem,
                la.wrapping_add(16 * k as u64),
                16,
                u128::from_le_bytes(c),
            )?;
        }
        return Ok(());
    }
    let mut img = [0u8; WRITTEN];
    for k in 0..AREA / 16 {
        let v = cpu.read_vec(mem, la.wrapping_add(16 * k as u64), 16)?;
        if let Some(dst) = img.get_mut(16 * k..16 * k + 16) {
            dst.copy_from_slice(&v.to_le_bytes());
        }
    }
    restore(cpu, &img)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::sse::tests::run_sse;
    use crate::testutil::*;
    use iced_x86::code_asm::*;

    #[test]
    fn fxsave64_lays_out_fcw_mxcsr_and_xmm_registers() {
        let t = run_sse(|a| {
            a.fninit()?;
            a.mov(eax, 0x1234)?;
            a.movd(xmm15, eax)?;
            a.mov(qword_ptr(DATA + 500), -1)?;
            a.fxsave64(ptr(DATA))?;
            Ok(())
        });
        assert_eq!(t.exception, None);
        assert_eq!(t.mem_u64(DATA) & 0xffff_ffff, 0x037f);
        assert_eq!(t.mem_u64(DATA + 24), (0xffffu64 << 32) | 0x1f80);
        assert_eq!(t.mem_u64(DATA + 160 + 15 * 16), 0x1234);
        assert_eq!(t.mem_u64(DATA + 500), u64::MAX, "software area untouched");
    }

    #[test]
    fn fxrstor_restores_what_fxsave_stored() {
        let t = run_sse(|a| {
            a.mov(eax, 7)?;
            a.movd(xmm3, eax)?;
            a.fld1()?;
            a.fxsave(ptr(DATA))?;
            a.pxor(xmm3, xmm3)?;
            a.fninit()?;
            a.fxrstor(ptr(DATA))?;
            Ok(())
        });
        assert_eq!(t.cpu.xmm[3], 7);
        assert_eq!(t.cpu.fpu.ftw, 0x80);
        assert_eq!(super::super::x87::st_get(&t.cpu.fpu, 0) >> 64, 0x3fff);
    }

    #[test]
    fn misaligned_fxsave_is_gp() {
        let t = run_sse(|a| a.fxsave64(ptr(DATA + 8)));
        assert_eq!(t.exception, Some(13));
    }

    #[test]
    fn fxrstor_with_reserved_mxcsr_bits_is_gp_and_changes_nothing() {
        let t = run_sse(|a| {
            a.fxsave64(ptr(DATA))?;
            a.mov(dword_ptr(DATA + 24), 0x4_1f80)?;
            a.mov(word_ptr(DATA), 0x27f)?;
            a.fxrstor64(ptr(DATA))?;
            Ok(())
        });
        assert_eq!(t.exception, Some(13));
        assert_eq!(t.cpu.fpu.fcw, 0x37f);
    }

    #[test]
    fn fxsave_with_ts_is_nm() {
        let mut m = crate::exec::sse::tests::sse_machine(|a| a.fxsave64(ptr(DATA)));
        m.cpu.cr0 |= cr0::TS;
        assert_eq!(m.run(10).exception, Some(7));
    }
}
