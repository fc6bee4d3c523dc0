//! Instructions that exist only outside 64-bit mode (real mode, 16/32-bit protected mode and
//! compatibility mode), checked before the common dispatch in [`super::execute`]: PUSHA/POPA,
//! PUSHFD/POPFD, LAHF/SAHF, LDS/LES, and the far-pointer loads.
//!
//! Decimal-adjust instructions (DAA, DAS, AAA, AAS, AAM, AAD), BOUND and ARPL are not
//! implemented: they raise #UD (logged once), as every unimplemented instruction does.

use super::{segment, stack};
use crate::cpu::Cpu;
use crate::exception::Res;
use crate::flags;
use crate::memory::GuestMemory;
use iced_x86::{Instruction, Mnemonic as M, Register};

/// SF, ZF, AF, PF and CF: the flags LAHF/SAHF move.
const AH_FLAGS: u64 = flags::SF | flags::ZF | flags::AF | flags::PF | flags::CF;

pub(crate) fn execute(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    match i.mnemonic() {
        M::Pusha | M::Pushad => stack::pusha(cpu, mem, i),
        M::Popa | M::Popad => stack::popa(cpu, mem, i),
        M::Pushfd | M::Popfd => stack::exec(cpu, mem, i),
        M::Lahf => {
            let v = (cpu.flags.bits() & AH_FLAGS) | flags::FIXED1;
            cpu.set_reg(Register::AH, v);
            Ok(())
        }
        M::Sahf => {
            let ah = cpu.reg(Register::AH);
            cpu.flags.set_arith(AH_FLAGS, ah & AH_FLAGS);
            Ok(())
        }
        M::Lds | M::Les | M::Lss | M::Lfs | M::Lgs => segment::load_far_pointer(cpu, mem, i),
        _ => super::execute(cpu, mem, i),
    }
}

#[cfg(test)]
mod tests {
    use crate::flags::{CF, SF, ZF};
    use crate::testutil32::*;

    #[test]
    fn lahf_and_sahf_move_flags_through_ah() {
        // stc; lahf; mov bl, ah; mov ah, 0xc0 (SF|ZF); sahf
        let t = run16(&[0xf9, 0x9f, 0x88, 0xe3, 0xb4, 0xc0, 0x9e]);
        assert_eq!(t.cpu.gpr[3] & 0xff, 0x03);
        assert_eq!(t.cpu.flags.bits() & (SF | ZF | CF), SF | ZF);
    }

    #[test]
    fn pusha_popa_round_trip_and_skip_sp() {
        // mov ax,1; mov bx,2; pushaw; xor ax,ax; xor bx,bx; mov sp?.. popaw
        let t = run16(&[0xb8, 1, 0, 0xbb, 2, 0, 0x60, 0x31, 0xc0, 0x31, 0xdb, 0x61]);
        assert_eq!(t.cpu.gpr[0] & 0xffff, 1);
        assert_eq!(t.cpu.gpr[3] & 0xffff, 2);
        assert_eq!(t.cpu.gpr[4] & 0xffff, STACK16);
    }

    #[test]
    fn lds_loads_offset_and_real_mode_segment() {
        // lds si, [0x200] with the far pointer 0x1234:0x0010 there.
        let mut m = Machine16::new();
        m.mem
            .load(DATA16_BASE + 0x200, &[0x10, 0, 0x34, 0x12])
            .unwrap();
        let t = m.run_code(&[0xc5, 0x36, 0x00, 0x02]);
        assert_eq!(t.cpu.gpr[6] & 0xffff, 0x10);
        assert_eq!(t.cpu.seg[crate::SegReg::Ds as usize].base, 0x12340);
    }
}
