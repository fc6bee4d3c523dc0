//! BT, BTS, BTR, BTC, BSF, BSR, TZCNT/LZCNT (executed as BSF/BSR: the baseline model does not
//! advertise BMI1/ABM, and on such CPUs the F3 prefix is ignored), BSWAP.

use super::arith::check_lock;
use super::{op_size, sext, Loc};
use crate::cpu::Cpu;
use crate::exception::Res;
use crate::flags::{size_mask, CF, ZF};
use crate::memory::GuestMemory;
use iced_x86::{Instruction, Mnemonic as M, OpKind};

/// BT/BTS/BTR/BTC. Only CF is defined; OF/SF/AF/PF are left unchanged here (undefined in the SDM)
/// and ZF is unchanged (as documented for current processors).
pub(crate) fn bit_test(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    if i.mnemonic() == M::Bt && i.has_lock_prefix() {
        return Err(crate::exception::Exception::ud().into());
    }
    check_lock(i)?;
    let size = op_size(i, 0);
    let bits = size as u64 * 8;
    let off = cpu.read_op(mem, i, 1)?;
    let (loc, bit) = match cpu.loc(i, 0)? {
        Loc::Mem(la) if i.op1_kind() == OpKind::Register => {
            // A register bit offset addresses memory beyond the operand (signed).
            let soff = sext(off, size) as i64;
            let unit = soff.div_euclid(bits as i64);
            let la = la.wrapping_add((unit * size as i64) as u64);
            cpu.check_canonical(la, i.memory_segment() == iced_x86::Register::SS)?;
            (Loc::Mem(la), soff.rem_euclid(bits as i64) as u64)
        }
        l => (l, off % bits),
    };
    let v = cpu.read_loc(mem, loc, size)?;
    let cf = (v >> bit) & 1 != 0;
    let new = match i.mnemonic() {
        M::Bts => Some(v | (1 << bit)),
        M::Btr => Some(v & !(1 << bit)),
        M::Btc => Some(v ^ (1 << bit)),
        _ => None,
    };
    if let Some(n) = new {
        cpu.write_loc(mem, loc, size, n & size_mask(size))?;
    }
    cpu.flags.set(CF, cf);
    Ok(())
}

/// BSF/BSR (and TZCNT/LZCNT decoded with an ignored F3 prefix). Source zero: ZF=1 and the
/// destination is left unchanged (what Intel and AMD do; the SDM says undefined). Otherwise ZF=0.
/// CF/OF/SF/AF/PF are undefined; they are left unchanged.
pub(crate) fn scan(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let size = op_size(i, 0);
    let src = cpu.read_op(mem, i, 1)? & size_mask(size);
    let dst = i.op0_register();
    if src == 0 {
        cpu.flags.set(ZF, true);
        return Ok(());
    }
    let r = match i.mnemonic() {
        M::Bsf | M::Tzcnt => src.trailing_zeros() as u64,
        _ => 63 - src.leading_zeros() as u64,
    };
    cpu.set_reg(dst, r);
    cpu.flags.set(ZF, false);
    Ok(())
}

/// BSWAP r32/r64 (r16 is undefined: it is zeroed, as on current processors).
pub(crate) fn bswap(cpu: &mut Cpu, i: &Instruction) -> Res<()> {
    let r = i.op0_register();
    let v = cpu.reg(r);
    let n = match op_size(i, 0) {
        8 => v.swap_bytes(),
        4 => (v as u32).swap_bytes() as u64,
        _ => 0,
    };
    cpu.set_reg(r, n);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::flags::{CF, ZF};
    use crate::testutil::*;
    use iced_x86::code_asm::*;

    #[test]
    fn bt_immediate_sets_carry() {
        let t = run_asm(|a| {
            a.mov(rax, 1u64 << 57)?;
            a.bt(rax, 0x39)?;
            Ok(())
        });
        assert_ne!(t.arith_flags() & CF, 0);
    }

    #[test]
    fn bts_with_register_offset_reaches_beyond_operand() {
        let t = run_asm(|a| {
            a.mov(rbx, DATA)?;
            a.mov(eax, 70)?;
            a.lock().bts(qword_ptr(rbx), rax)?;
            Ok(())
        });
        assert_eq!(t.mem_u64(DATA + 8), 1 << 6);
        assert_eq!(t.arith_flags() & CF, 0);
    }

    #[test]
    fn btr_negative_offset_addresses_below() {
        let mut m = Machine::new();
        m.mem.write_u64(DATA, u64::MAX).unwrap();
        m.load_code(&assemble(|a| {
            a.mov(rbx, DATA + 8)?;
            a.mov(rax, -1i64)?;
            a.btr(qword_ptr(rbx), rax)?;
            Ok(())
        }));
        let t = m.run(10);
        assert_eq!(t.mem_u64(DATA), u64::MAX >> 1);
        assert_ne!(t.arith_flags() & CF, 0);
    }

    #[test]
    fn bsr_bsf_find_highest_and_lowest_set_bits() {
        let t = run_asm(|a| {
            a.mov(rcx, 0x0000_0100_0000_0100u64)?;
            a.bsr(rax, rcx)?;
            a.bsf(rbx, rcx)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[0], 40);
        assert_eq!(t.cpu.gpr[3], 8);
        assert_eq!(t.arith_flags() & ZF, 0);
    }

    #[test]
    fn bsf_of_zero_sets_zf_and_keeps_destination() {
        let t = run_asm(|a| {
            a.mov(eax, 77)?;
            a.xor(ecx, ecx)?;
            a.mov(edx, 1)?;
            a.test(edx, edx)?;
            a.bsf(rax, rcx)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[0], 77);
        assert_ne!(t.arith_flags() & ZF, 0);
    }

    #[test]
    fn tzcnt_executes_as_bsf_on_the_baseline_model() {
        let t = run_bytes(&[0xb9, 0x08, 0, 0, 0, 0xf3, 0x48, 0x0f, 0xbc, 0xc1]); // mov ecx,8; tzcnt rax,rcx
        assert_eq!(t.cpu.gpr[0], 3);
    }

    #[test]
    fn bswap_reverses_bytes() {
        let t = run_asm(|a| {
            a.mov(rax, 0x0102_0304_0506_0708u64)?;
            a.bswap(rax)?;
            a.mov(ebx, 0x1122_3344)?;
            a.bswap(ebx)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[0], 0x0807_0605_0403_0201);
        assert_eq!(t.cpu.gpr[3], 0x4433_2211);
    }
}
