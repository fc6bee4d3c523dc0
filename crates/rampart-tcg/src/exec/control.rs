//! JMP, Jcc, CALL, RET, LOOP/LOOPE/LOOPNE, JCXZ/JECXZ/JRCXZ, INT3/INT n/INT1/INTO, UD0/1/2,
//! IRET, in every mode (far transfers are in `far`).

use super::mov::cc;
use crate::cpu::{efer, Cpu, SegReg};
use crate::exception::{vector, Event, Exception, Res, Source};
use crate::memory::GuestMemory;
use crate::mmu::is_canonical;
use iced_x86::{Code, Instruction, Mnemonic as M, OpKind};

pub(crate) fn is_jcc(m: M) -> bool {
    matches!(
        m,
        M::Jo
            | M::Jno
            | M::Jb
            | M::Jae
            | M::Je
            | M::Jne
            | M::Jbe
            | M::Ja
            | M::Js
            | M::Jns
            | M::Jp
            | M::Jnp
            | M::Jl
            | M::Jge
            | M::Jle
            | M::Jg
    )
}

/// Check a near branch target: canonical in 64-bit mode, within the CS limit otherwise (#GP(0)).
fn check_target(cpu: &Cpu, target: u64) -> Res<()> {
    let ok = if cpu.in_64bit_mode() {
        is_canonical(target)
    } else {
        target <= cpu.seg[SegReg::Cs as usize].limit as u64
    };
    if ok {
        Ok(())
    } else {
        Err(Exception::gp(0).into())
    }
}

/// Set the next RIP to `target` (#GP(0) if it is not a valid IP, before anything else changes).
fn jump_to(cpu: &mut Cpu, target: u64) -> Res<()> {
    check_target(cpu, target)?;
    cpu.next_rip = target;
    Ok(())
}

/// The counter of LOOPcc/JCXZ is CX, ECX or RCX by the address size.
fn counter_mask(code: Code) -> u64 {
    use Code::*;
    match code {
        Loopne_rel8_16_CX | Loopne_rel8_32_CX | Loope_rel8_16_CX | Loope_rel8_32_CX
        | Loop_rel8_16_CX | Loop_rel8_32_CX | Jcxz_rel8_16 | Jcxz_rel8_32 => 0xffff,
        Loopne_rel8_16_ECX | Loopne_rel8_32_ECX | Loopne_rel8_64_ECX | Loope_rel8_16_ECX
        | Loope_rel8_32_ECX | Loope_rel8_64_ECX | Loop_rel8_16_ECX | Loop_rel8_32_ECX
        | Loop_rel8_64_ECX | Jecxz_rel8_16 | Jecxz_rel8_32 | Jecxz_rel8_64 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

/// The branch target of a near JMP/CALL/Jcc: relative, or read from a register/memory operand.
fn near_target(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<u64> {
    match i.op0_kind() {
        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
            Ok(i.near_branch_target())
        }
        OpKind::Register | OpKind::Memory => cpu.read_op(mem, i, 0),
        _ => Err(cpu.unimplemented(i)),
    }
}

pub(crate) fn jcc(cpu: &mut Cpu, i: &Instruction) -> Res<()> {
    let c = cc(i).unwrap_or(0);
    if cpu.flags.condition(c) {
        jump_to(cpu, i.near_branch_target())?;
    }
    Ok(())
}

pub(crate) fn branch(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    match i.mnemonic() {
        M::Jmp => {
            if i.code().is_jmp_far() || i.code().is_jmp_far_indirect() {
                return super::far::far_jmp_call(cpu, mem, i);
            }
            let t = near_target(cpu, mem, i)?;
            jump_to(cpu, t)
        }
        M::Call => {
            if i.code().is_call_far() || i.code().is_call_far_indirect() {
                return super::far::far_jmp_call(cpu, mem, i);
            }
            let t = near_target(cpu, mem, i)?;
            check_target(cpu, t)?;
            let size = i.stack_pointer_increment().unsigned_abs().min(8) as u8;
            cpu.push(mem, cpu.next_rip, size)?;
            cpu.next_rip = t;
            Ok(())
        }
        M::Ret => {
            let size = match i.code() {
                Code::Retnw | Code::Retnw_imm16 => 2,
                Code::Retnd | Code::Retnd_imm16 => 4,
                Code::Retnq | Code::Retnq_imm16 => 8,
                _ => return Err(cpu.unimplemented(i)),
            };
            let t = cpu.read_stack(mem, cpu.gpr[4], size)?;
            check_target(cpu, t)?;
            let extra = if i.op_count() == 1 {
                i.immediate(0) & 0xffff
            } else {
                0
            };
            cpu.set_sp(cpu.gpr[4].wrapping_add(size as u64).wrapping_add(extra));
            cpu.next_rip = t;
            Ok(())
        }
        M::Retf => super::far::far_return(cpu, mem, i),
        M::Loop | M::Loope | M::Loopne | M::Jrcxz | M::Jecxz | M::Jcxz => {
            let mask = counter_mask(i.code());
            let m = i.mnemonic();
            let count = if matches!(m, M::Jrcxz | M::Jecxz | M::Jcxz) {
                cpu.gpr[1] & mask
            } else {
                (cpu.gpr[1] & mask).wrapping_sub(1) & mask
            };
            let zf = cpu.flags.get(crate::flags::ZF);
            let taken = match m {
                M::Loop => count != 0,
                M::Loope => count != 0 && zf,
                M::Loopne => count != 0 && !zf,
                _ => count == 0,
            };
            if taken {
                jump_to(cpu, i.near_branch_target())?;
            }
            if !matches!(m, M::Jrcxz | M::Jecxz | M::Jcxz) {
                // A 32-bit counter write zero-extends, like any 32-bit register write; CX merges.
                cpu.gpr[1] = if mask == 0xffff {
                    (cpu.gpr[1] & !0xffff) | count
                } else {
                    count
                };
            }
            Ok(())
        }
        _ => Err(cpu.unimplemented(i)),
    }
}

pub(crate) fn interrupt(cpu: &mut Cpu, mem: &mut dyn GuestMemory, i: &Instruction) -> Res<()> {
    let soft = |v: u8| -> Res<()> {
        Err(Event::Exception(Exception {
            vector: v,
            error_code: None,
            source: Source::Software,
        }))
    };
    match i.mnemonic() {
        M::Int3 => soft(vector::BP),
        M::Int => soft(i.immediate(0) as u8),
        M::Int1 => soft(vector::DB),
        M::Iretq => cpu.iret(mem, 8),
        M::Iretd | M::Iret if cpu.efer & efer::LMA == 0 => {
            let size = if i.mnemonic() == M::Iretd { 4 } else { 2 };
            cpu.iret_legacy(mem, size)
        }
        M::Iretd => cpu.iret(mem, 4),
        M::Into if !cpu.in_64bit_mode() => {
            if cpu.flags.get(crate::flags::OF) {
                soft(vector::OF)
            } else {
                Ok(())
            }
        }
        // UD0/UD1/UD2, INTO in 64-bit mode and 16-bit IRET in long mode.
        _ => Err(Exception::ud().into()),
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::*;
    use iced_x86::code_asm::*;

    #[test]
    fn call_and_ret_use_the_stack() {
        let t = run_asm(|a| {
            let mut f = a.create_label();
            let mut end = a.create_label();
            a.call(f)?;
            a.jmp(end)?;
            a.set_label(&mut f)?;
            a.mov(rbx, qword_ptr(rsp))?;
            a.mov(eax, 7)?;
            a.ret()?;
            a.set_label(&mut end)?;
            a.nop()?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[0], 7);
        assert_eq!(t.cpu.gpr[3], CODE + 5);
        assert_eq!(t.cpu.gpr[4], STACK_TOP);
    }

    #[test]
    fn conditional_loop_counts_down() {
        let t = run_asm(|a| {
            let mut top = a.create_label();
            a.mov(ecx, 10)?;
            a.xor(eax, eax)?;
            a.set_label(&mut top)?;
            a.add(eax, 3)?;
            a.dec(ecx)?;
            a.jne(top)?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[0], 30);
    }

    #[test]
    fn loop_instruction_and_jrcxz() {
        let t = run_asm(|a| {
            let mut top = a.create_label();
            let mut out = a.create_label();
            a.mov(ecx, 5)?;
            a.xor(eax, eax)?;
            a.set_label(&mut top)?;
            a.inc(eax)?;
            a.loop_(top)?;
            a.jrcxz(out)?;
            a.mov(eax, 99)?;
            a.set_label(&mut out)?;
            a.nop()?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[0], 5);
    }

    #[test]
    fn indirect_jump_through_register_and_memory() {
        let t = run_asm(|a| {
            let mut l1 = a.create_label();
            let mut l2 = a.create_label();
            a.lea(rax, ptr(l1))?;
            a.jmp(rax)?;
            a.ud2()?;
            a.set_label(&mut l1)?;
            a.lea(rax, ptr(l2))?;
            a.mov(qword_ptr(DATA), rax)?;
            a.jmp(qword_ptr(DATA))?;
            a.ud2()?;
            a.set_label(&mut l2)?;
            a.mov(ebx, 1)?;
            Ok(())
        });
        assert_eq!(t.exception, None);
        assert_eq!(t.cpu.gpr[3], 1);
    }

    #[test]
    fn ret_imm_pops_extra_bytes() {
        let t = run_asm(|a| {
            let mut f = a.create_label();
            let mut end = a.create_label();
            a.push(1)?;
            a.push(2)?;
            a.call(f)?;
            a.jmp(end)?;
            a.set_label(&mut f)?;
            a.ret_1(16)?;
            a.set_label(&mut end)?;
            a.nop()?;
            Ok(())
        });
        assert_eq!(t.cpu.gpr[4], STACK_TOP);
    }

    #[test]
    fn lretq_reloads_cs_at_same_privilege() {
        let t = run_asm(|a| {
            let mut l = a.create_label();
            a.push(KERNEL_CS as i32)?;
            a.lea(rax, ptr(l))?;
            a.push(rax)?;
            a.db(&[0x48, 0xcb])?; // lretq
            a.ud2()?;
            a.set_label(&mut l)?;
            a.mov(ebx, 1)?;
            Ok(())
        });
        assert_eq!(t.exception, None);
        assert_eq!(t.cpu.gpr[3], 1);
        assert_eq!(t.cpu.gpr[4], STACK_TOP);
    }

    #[test]
    fn lretq_to_data_segment_is_gp() {
        let t = run_asm(|a| {
            a.push(KERNEL_DS as i32)?;
            a.push(0)?;
            a.db(&[0x48, 0xcb])?; // lretq
            Ok(())
        });
        assert_eq!(t.exception, Some(13));
        assert_eq!(t.error_code(), KERNEL_DS as u64);
    }

    #[test]
    fn ud2_raises_invalid_opcode_at_its_rip() {
        let t = run_bytes(&[0x90, 0x0f, 0x0b]);
        assert_eq!(t.exception, Some(6));
        // Frame: RIP at [rsp] (no error code).
        assert_eq!(t.mem_u64(t.cpu.gpr[4]), CODE + 1);
    }

    #[test]
    fn int3_pushes_next_rip_and_int_n_checks_gate() {
        let t = run_bytes(&[0xcc]);
        assert_eq!(t.exception, Some(3));
        assert_eq!(t.mem_u64(t.cpu.gpr[4]), CODE + 1);
        let t = run_bytes(&[0xcd, 0x0d]);
        assert_eq!(t.exception, Some(13));
    }

    #[test]
    fn jump_to_non_canonical_address_is_gp() {
        let t = run_asm(|a| {
            a.mov(rax, 0x8000_0000_0000u64)?;
            a.jmp(rax)?;
            Ok(())
        });
        assert_eq!(t.exception, Some(13));
        assert_eq!(t.error_code(), 0);
    }
}
