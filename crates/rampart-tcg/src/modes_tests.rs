//! Unit tests of real mode, 16/32-bit protected mode and the transitions between modes.

use crate::cpu::{attr, cr0, efer, SegReg};
use crate::testutil32::*;
use crate::Exit;
use iced_x86::code_asm::*;

fn cs(t: &Outcome) -> crate::Segment {
    t.cpu.seg[SegReg::Cs as usize]
}

// --- real mode ------------------------------------------------------------------------------

#[test]
fn real_mode_address_is_segment_times_16_plus_offset() {
    // mov ax, 0x2000; mov es, ax; mov byte [es:0x34], 0x5a
    let t = run16(&[
        0xb8, 0x00, 0x20, 0x8e, 0xc0, 0x26, 0xc6, 0x06, 0x34, 0x00, 0x5a,
    ]);
    assert_eq!(t.exit, Exit::Halt);
    assert_eq!(t.u16_at(0x20034) & 0xff, 0x5a);
    assert_eq!(t.cpu.seg[SegReg::Es as usize].base, 0x20000);
}

#[test]
fn sixteen_bit_effective_address_wraps_at_64k() {
    // mov bx, 0xfff0; mov si, 0x20; mov byte [bx+si], 0x77 -> offset 0x0010
    let t = run16(&[0xbb, 0xf0, 0xff, 0xbe, 0x20, 0x00, 0xc6, 0x00, 0x77]);
    assert_eq!(t.exception, None);
    assert_eq!(t.u16_at(DATA16_BASE + 0x10) & 0xff, 0x77);
}

#[test]
fn word_access_at_offset_ffff_is_gp_in_real_mode() {
    // mov word [0xffff], ax
    let t = run16(&[0xa3, 0xff, 0xff]);
    assert_eq!(t.exception, Some(13));
}

#[test]
fn operand_and_address_size_prefixes_in_real_mode() {
    // mov ebx, 0x12345678 (66); mov esi, 0x10 (66); mov [esi*2+0x100], ebx (67 66)
    let code = asm(16, CODE16_BASE + CODE16_IP, |a| {
        a.mov(ebx, 0x1234_5678u32)?;
        a.mov(esi, 0x10u32)?;
        a.mov(dword_ptr(esi * 2 + 0x100), ebx)?;
        a.mov(cx, word_ptr(0x122))?;
        Ok(())
    });
    let t = run16(&code);
    assert_eq!(t.exception, None);
    assert_eq!(t.u32_at(DATA16_BASE + 0x120), 0x1234_5678);
    assert_eq!(t.cpu.gpr[1] & 0xffff, 0x1234);
}

#[test]
fn sixteen_bit_stack_wraps_sp_and_keeps_upper_esp() {
    let mut m = Machine16::new();
    m.cpu.gpr[4] = 0xabcd_0000; // SP = 0: a push wraps to 0xfffe
    let t = m.run_code(&[0x6a, 0x42, 0x5b]); // push 0x42; pop bx
    assert_eq!(t.exception, None);
    assert_eq!(t.cpu.gpr[3] & 0xffff, 0x42);
    assert_eq!(t.u16_at(DATA16_BASE + 0xfffe), 0x42);
    assert_eq!(t.cpu.gpr[4], 0xabcd_0000);
}

#[test]
fn rep_movsb_with_16_bit_addressing_merges_si_di_cx() {
    let mut m = Machine16::new();
    m.mem.load(DATA16_BASE + 0x200, b"abcd").unwrap();
    m.cpu.gpr[6] = 0xffff_0000_0000_0200;
    m.cpu.gpr[7] = 0x0000_0001_0000_0300;
    m.cpu.gpr[1] = 0x5555_0000_0000_0004;
    let t = m.run_code(&[0xf3, 0xa4]); // rep movsb
    let mut out = [0u8; 4];
    t.mem.dump(DATA16_BASE + 0x300, &mut out).unwrap();
    assert_eq!(&out, b"abcd");
    assert_eq!(t.cpu.gpr[6], 0xffff_0000_0000_0204);
    assert_eq!(t.cpu.gpr[7], 0x0000_0001_0000_0304);
    assert_eq!(t.cpu.gpr[1], 0x5555_0000_0000_0000);
}

#[test]
fn loop_with_cx_counter_leaves_upper_ecx() {
    let mut m = Machine16::new();
    m.cpu.gpr[1] = 0x0001_0003;
    // l: inc ax; loop l
    let t = m.run_code(&[0x40, 0xe2, 0xfd]);
    assert_eq!(t.cpu.gpr[0] & 0xffff, 3);
    assert_eq!(t.cpu.gpr[1], 0x0001_0000);
}

#[test]
fn real_mode_int_uses_ivt_and_iret_returns() {
    // Vector 0x40 -> 0000:0600: "mov bx, 0x99; iret".
    let mut m = Machine16::new();
    m.mem.load(0x40 * 4, &[0x00, 0x06, 0x00, 0x00]).unwrap();
    m.mem.load(0x600, &[0xbb, 0x99, 0x00, 0xcf]).unwrap();
    m.cpu.flags.set(crate::flags::IF, true);
    let t = m.run_code(&[0xcd, 0x40, 0xb9, 0x01, 0x00]); // int 0x40; mov cx, 1
    assert_eq!(t.exit, Exit::Halt);
    assert_eq!(t.cpu.gpr[3] & 0xffff, 0x99);
    assert_eq!(t.cpu.gpr[1] & 0xffff, 1);
    assert_eq!(t.cpu.gpr[4] & 0xffff, STACK16);
    assert!(t.cpu.flags.get(crate::flags::IF));
    assert_eq!(cs(&t).base, CODE16_BASE);
}

#[test]
fn real_mode_fault_pushes_faulting_ip_without_error_code() {
    let t = run16(&[0x90, 0x0f, 0x0b]); // nop; ud2
    assert_eq!(t.exception, Some(6));
    // The handler runs on 1000:fff0: IP, CS, FLAGS.
    assert_eq!(t.u16_at(DATA16_BASE + STACK16 - 6), (CODE16_IP + 1) as u16);
    assert_eq!(t.u16_at(DATA16_BASE + STACK16 - 4), SEG16);
}

#[test]
fn real_mode_fault_beyond_ivt_limit_is_a_triple_fault() {
    let mut m = Machine16::new();
    m.cpu.idtr.limit = 0;
    let t = m.run_code(&[0x0f, 0x0b]);
    assert_eq!(t.exit, Exit::Shutdown);
}

#[test]
fn far_jump_in_real_mode_loads_cs_base() {
    // jmp 0x2000:0x0010 where "mov ax, cs; hlt" waits.
    let mut m = Machine16::new();
    m.mem.load(0x20010, &[0x8c, 0xc8, 0xf4]).unwrap();
    let t = m.run_code(&[0xea, 0x10, 0x00, 0x00, 0x20]);
    assert_eq!(t.exit, Exit::Halt);
    assert_eq!(t.cpu.gpr[0] & 0xffff, 0x2000);
    assert_eq!(cs(&t).base, 0x20000);
}

#[test]
fn far_call_and_retf_in_real_mode() {
    // call far 0x2000:0x0000 -> "mov dx, 5; retf"; then "mov cx, 7".
    let mut m = Machine16::new();
    m.mem.load(0x20000, &[0xba, 0x05, 0x00, 0xcb]).unwrap();
    let t = m.run_code(&[0x9a, 0x00, 0x00, 0x00, 0x20, 0xb9, 0x07, 0x00]);
    assert_eq!(t.cpu.gpr[2] & 0xffff, 5);
    assert_eq!(t.cpu.gpr[1] & 0xffff, 7);
    assert_eq!(t.cpu.gpr[4] & 0xffff, STACK16);
    assert_eq!(cs(&t).selector, SEG16);
}

// --- into and out of protected mode ------------------------------------------------------------

#[test]
fn real_mode_switches_to_protected_mode_with_lgdt_and_far_jump() {
    // Real mode at 1000:0100 using the 32-bit machine's GDT: lgdt, set PE, ljmp 0x08:CODE32.
    let mut m = Machine32::new();
    let mut cpu = crate::Cpu::new();
    for s in 0..6 {
        cpu.seg[s].selector = SEG16;
        cpu.seg[s].base = (SEG16 as u64) << 4;
    }
    cpu.rip = CODE16_IP;
    cpu.gpr[4] = STACK16;
    m.mem
        .load(DATA16_BASE + 0x80, &[0x4f, 0x00, 0x00, 0x10, 0x00, 0x00])
        .unwrap();
    let code = asm(16, CODE16_IP, |a| {
        a.db(&[0x66, 0x0f, 0x01, 0x16, 0x80, 0x00])?; // lgdtl [0x80]
        a.mov(eax, cr0)?;
        a.or(eax, 1)?;
        a.mov(cr0, eax)?;
        a.db(&[0x66, 0xea])?; // ljmpl 0x08:CODE32
        a.dd(&[CODE32 as u32])?;
        a.dw(&[CS32])?;
        Ok(())
    });
    m.mem.load(CODE16_BASE + CODE16_IP, &code).unwrap();
    // 32-bit code: mov ax, 0x10; mov ds, ax; mov ebx, [0x80 + 0x10000] (flat); hlt
    let code32 = asm(32, CODE32, |a| {
        a.mov(ax, DS32 as u32)?;
        a.mov(ds, ax)?;
        a.mov(ebx, dword_ptr(0x1_0080))?;
        a.hlt()?;
        Ok(())
    });
    m.mem.load(CODE32, &code32).unwrap();
    m.cpu = cpu;
    let t = m.run_code_at_current();
    assert_eq!(t.exit, Exit::Halt, "{:?}", t.cpu);
    assert_eq!(t.cpu.code_bits(), 32);
    assert_eq!(cs(&t).selector, CS32);
    assert_eq!(t.cpu.gpr[3], 0x1000_004f);
    assert_eq!(t.cpu.gdtr.base, GDT32);
}

#[test]
fn far_jump_to_16_bit_code_segment_uses_its_base_and_16_bit_decoding() {
    // CS16: base 0x10000, 16-bit. At 0x10000 + 0x40: "mov eax, 0x11223344 (66); hlt".
    let mut m = Machine32::new();
    m.mem
        .load(0x1_0040, &[0x66, 0xb8, 0x44, 0x33, 0x22, 0x11, 0xf4])
        .unwrap();
    let code = asm(32, CODE32, |a| {
        a.jmp_far(CS16, 0x40)?;
        Ok(())
    });
    let t = m.run_code(&code);
    assert_eq!(t.exit, Exit::Halt);
    assert_eq!(t.cpu.gpr[0], 0x1122_3344);
    assert_eq!(t.cpu.code_bits(), 16);
    assert_eq!(t.cpu.rip, 0x47);
}

#[test]
fn far_call_and_retf_in_32_bit_protected_mode() {
    let code = asm(32, CODE32, |a| {
        let mut f = a.create_label();
        let mut end = a.create_label();
        a.db(&[0x9a])?; // call far 0x08:f (patched below)
        a.dd(&[0])?;
        a.dw(&[CS32])?;
        a.jmp(end)?;
        a.set_label(&mut f)?;
        a.mov(ebx, dword_ptr(esp + 4))?;
        a.mov(esi, 9u32)?;
        a.retf()?;
        a.set_label(&mut end)?;
        a.nop()?;
        Ok(())
    });
    let mut code = code;
    // Offset of f: after call (7 bytes) and jmp rel8 (2 bytes).
    let f = CODE32 as u32 + 9;
    code[1..5].copy_from_slice(&f.to_le_bytes());
    let t = run32(&code);
    assert_eq!(t.exception, None);
    assert_eq!(t.cpu.gpr[6], 9);
    assert_eq!(t.cpu.gpr[3], CS32 as u64);
    assert_eq!(t.cpu.gpr[4], STACK32);
}

#[test]
fn far_jump_to_data_segment_is_gp_with_selector() {
    let code = asm(32, CODE32, |a| {
        a.jmp_far(DS32, 0)?;
        Ok(())
    });
    let t = run32(&code);
    assert_eq!(t.exception, Some(13));
    assert_eq!(t.u32_at(t.cpu.gpr[4]), DS32 as u32);
}

#[test]
fn far_jump_beyond_code_limit_is_gp_zero() {
    let code = asm(32, CODE32, |a| {
        a.jmp_far(CS16, 0x1_0000)?;
        Ok(())
    });
    let t = run32(&code);
    assert_eq!(t.exception, Some(13));
    assert_eq!(t.u32_at(t.cpu.gpr[4]), 0);
}

#[test]
fn far_jump_to_64_bit_segment_needs_long_mode() {
    // Without EFER.LMA, L is ignored: CS 0x20 is 16-bit (D clear) code.
    let code = asm(32, CODE32, |a| {
        a.jmp_far(CS64, (CODE32 + 0x40) as u32)?;
        Ok(())
    });
    let mut m = Machine32::new();
    m.mem.load(CODE32 + 0x40, &[0xf4]).unwrap();
    let t = m.run_code(&code);
    assert_eq!(t.exit, Exit::Halt);
    assert!(!t.cpu.in_64bit_mode());
    assert_eq!(cs(&t).attr & attr::L, 0);
}

#[test]
fn protected_mode_to_long_mode_with_pae_paging_and_far_jump() {
    let mut m = Machine32::new();
    // PML4 0x5000 -> PDPT 0x6000 -> PD 0x7000: 2 MiB identity page.
    m.mem.write_u64(0x5000, 0x6003).unwrap();
    m.mem.write_u64(0x6000, 0x7003).unwrap();
    m.mem.write_u64(0x7000, 0x83).unwrap();
    let target = CODE32 + 0x100;
    m.mem
        .load(target, &[0x48, 0xc7, 0xc0, 0xff, 0xff, 0xff, 0xff, 0xf4]) // mov rax, -1; hlt
        .unwrap();
    let code = asm(32, CODE32, |a| {
        a.mov(eax, cr4)?;
        a.or(eax, 0x20)?;
        a.mov(cr4, eax)?;
        a.mov(eax, 0x5000u32)?;
        a.mov(cr3, eax)?;
        a.mov(ecx, 0xc000_0080u32)?;
        a.rdmsr()?;
        a.or(eax, 0x100u32)?;
        a.wrmsr()?;
        a.mov(eax, cr0)?;
        a.or(eax, 0x8000_0000u32)?;
        a.mov(cr0, eax)?;
        a.mov(edx, 1u32)?; // runs in compatibility mode
        a.jmp_far(CS64, target as u32)?;
        Ok(())
    });
    let t = m.run_code(&code);
    assert_eq!(t.exit, Exit::Halt, "{:?}", t.cpu);
    assert!(t.cpu.in_64bit_mode());
    assert_eq!(t.cpu.gpr[0], u64::MAX);
    assert_eq!(t.cpu.gpr[2], 1);
    assert_ne!(t.cpu.efer & efer::LMA, 0);
}

#[test]
fn enabling_long_mode_paging_without_pae_is_gp() {
    let code = asm(32, CODE32, |a| {
        a.mov(ecx, 0xc000_0080u32)?;
        a.mov(eax, 0x100u32)?;
        a.xor(edx, edx)?;
        a.wrmsr()?;
        a.mov(eax, 0x8000_0011u32)?;
        a.mov(cr0, eax)?;
        Ok(())
    });
    let t = run32(&code);
    assert_eq!(t.exception, Some(13));
    assert_eq!(t.cpu.cr0 & cr0::PG, 0);
}

// --- descriptor checks -------------------------------------------------------------------------

fn load_ds(sel: u16) -> Outcome {
    let code = asm(32, CODE32, |a| {
        a.mov(eax, sel as u32)?;
        a.mov(ds, ax)?;
        Ok(())
    });
    run32(&code)
}

#[test]
fn loading_not_present_segment_is_np_with_selector() {
    let t = load_ds(NP_DS);
    assert_eq!(t.exception, Some(11));
    assert_eq!(t.u32_at(t.cpu.gpr[4]), NP_DS as u32);
}

#[test]
fn loading_selector_past_gdt_limit_is_gp_with_selector() {
    let t = load_ds(0x80);
    assert_eq!(t.exception, Some(13));
    assert_eq!(t.u32_at(t.cpu.gpr[4]), 0x80);
}

#[test]
fn loading_ss_with_wrong_privilege_is_gp_with_selector() {
    let code = asm(32, CODE32, |a| {
        a.mov(eax, USER_DS32 as u32)?;
        a.mov(ss, ax)?;
        Ok(())
    });
    let t = run32(&code);
    assert_eq!(t.exception, Some(13));
    assert_eq!(t.u32_at(t.cpu.gpr[4]), (USER_DS32 & !3) as u32);
}

#[test]
fn null_ss_is_gp_outside_64_bit_mode() {
    let code = asm(32, CODE32, |a| {
        a.xor(eax, eax)?;
        a.mov(ss, ax)?;
        Ok(())
    });
    let t = run32(&code);
    assert_eq!(t.exception, Some(13));
    assert_eq!(t.u32_at(t.cpu.gpr[4]), 0);
}

#[test]
fn access_through_null_ds_is_gp_zero() {
    let code = asm(32, CODE32, |a| {
        a.xor(eax, eax)?;
        a.mov(ds, ax)?;
        a.mov(ebx, dword_ptr(0x100))?;
        Ok(())
    });
    let t = run32(&code);
    assert_eq!(t.exception, Some(13));
    assert_eq!(t.u32_at(t.cpu.gpr[4]), 0);
}

#[test]
fn access_past_segment_limit_is_gp_and_stack_past_limit_is_ss() {
    let code = asm(32, CODE32, |a| {
        a.mov(eax, SMALL_DS as u32)?;
        a.mov(es, ax)?;
        a.mov(ebx, dword_ptr(0xffc).es())?; // last 4 bytes: fine
        a.mov(ebx, dword_ptr(0xffd).es())?; // crosses the limit
        Ok(())
    });
    let t = run32(&code);
    assert_eq!(t.exception, Some(13));

    // Through SS: #SS(0), delivered on the same (small but valid) stack.
    let code = asm(32, CODE32, |a| {
        a.mov(eax, SMALL_DS as u32)?;
        a.mov(ss, ax)?;
        a.mov(esp, 0x800u32)?;
        a.mov(ebx, dword_ptr(esp + 0x1800))?;
        Ok(())
    });
    let t = run32(&code);
    assert_eq!(t.exception, Some(12));
    assert_eq!(t.cpu.gpr[4], 0x800 - 16);
    assert_eq!(t.u32_at(0x800 - 16), 0);
}

#[test]
fn descriptor_load_sets_the_accessed_bit() {
    let mut m = Machine32::new();
    // SMALL_DS without the accessed bit.
    let raw = descriptor(0, 0xfff, 0x92, 0x4);
    m.mem.write_u64(GDT32 + SMALL_DS as u64, raw).unwrap();
    let code = asm(32, CODE32, |a| {
        a.mov(eax, SMALL_DS as u32)?;
        a.mov(fs, ax)?;
        Ok(())
    });
    let t = m.run_code(&code);
    assert_eq!(t.exception, None);
    assert_eq!(
        t.mem.read_u64(GDT32 + SMALL_DS as u64).unwrap(),
        raw | (1 << 40)
    );
}

// --- protected-mode interrupts ---------------------------------------------------------------

#[test]
fn protected_mode_fault_pushes_error_code_eip_cs_eflags() {
    let t = load_ds(NP_DS);
    let top = t.cpu.gpr[4];
    assert_eq!(t.u32_at(top), NP_DS as u32);
    assert_eq!(t.u32_at(top + 4) as u64, CODE32 + 5); // mov ds, ax after mov eax, imm32
    assert_eq!(t.u32_at(top + 8), CS32 as u32);
    assert_eq!(top, STACK32 - 16);
}

#[test]
fn user_mode_int_switches_to_tss_stack_and_iret_returns_to_ring_3() {
    let mut m = Machine32::new();
    // Vector 0x30: DPL-3 interrupt gate to "mov ebx, [esp+12]; iretd" at 0x6000.
    let handler = 0x6000u64;
    m.mem
        .load(handler, &[0x8b, 0x5c, 0x24, 0x0c, 0xcf])
        .unwrap();
    let gate = (handler & 0xffff) | ((CS32 as u64) << 16) | (0xeeu64 << 40);
    m.mem.write_u64(IDT32 + 0x30 * 8, gate).unwrap();
    m.cpu.idtr.limit = 0x31 * 8 - 1;
    // Ring 3 state.
    let user = |sel: u16, code: bool| crate::Segment {
        selector: sel,
        base: 0,
        limit: u32::MAX,
        attr: attr::P
            | attr::S
            | attr::RW
            | attr::ACCESSED
            | attr::DB
            | attr::G
            | (3 << attr::DPL_SHIFT)
            | if code { attr::CODE } else { 0 },
    };
    m.cpu.seg = [user(USER_DS32, false); 6];
    m.cpu.seg[SegReg::Cs as usize] = user(USER_CS32, true);
    // int 0x30; mov ecx, 3; (then HLT at CPL 3 faults with #GP)
    let t = m.run_code(&[0xcd, 0x30, 0xb9, 0x03, 0x00, 0x00, 0x00]);
    assert_eq!(t.cpu.gpr[3], STACK32, "handler saw the user ESP");
    assert_eq!(t.cpu.gpr[1], 3);
    assert_eq!(t.exception, Some(13), "HLT at CPL 3");
    // The #GP itself came in on the TSS stack (ESP0) again.
    assert_eq!(t.cpu.gpr[4], ESP0 - 24);
    assert_eq!(t.u32_at(ESP0 - 4), USER_DS32 as u32);
}

#[test]
fn task_gate_delivery_is_a_clean_unsupported_exit() {
    let mut m = Machine32::new();
    let gate = ((TSS32_SEL as u64) << 16) | (0x85u64 << 40);
    m.mem.write_u64(IDT32 + 6 * 8, gate).unwrap();
    let t = m.run_code(&[0x0f, 0x0b]);
    assert!(matches!(t.exit, Exit::Unsupported { .. }), "{:?}", t.exit);
}

// --- reset and SIPI ----------------------------------------------------------------------------

#[test]
fn reset_returns_to_real_mode_at_the_reset_vector_and_keeps_msrs() {
    let mut m = Machine32::new();
    m.cpu.msr.set(crate::exec::msr::index::PAT, 0x1234);
    m.cpu.efer = efer::LME;
    m.cpu.gpr[0] = 7;
    m.cpu.reset();
    assert!(m.cpu.in_real_mode());
    assert_eq!(m.cpu.rip, 0xfff0);
    assert_eq!(m.cpu.seg[SegReg::Cs as usize].base, 0xffff_0000);
    assert_eq!(m.cpu.efer, 0);
    assert_eq!(m.cpu.gpr[0], 0);
    assert_eq!(m.cpu.msr.get(crate::exec::msr::index::PAT), Some(0x1234));
    assert_eq!(m.cpu.code_bits(), 16);
}

#[test]
fn reset_keeps_what_the_embedder_installed() {
    struct Hook;
    impl crate::MsrHook for Hook {
        fn read(&mut self, idx: u32) -> Option<Result<u64, ()>> {
            (idx == 0x80f).then_some(Ok(0x1ff))
        }
        fn write(&mut self, _idx: u32, _v: u64) -> Option<Result<(), ()>> {
            None
        }
    }
    let mut c = crate::Cpu::new();
    c.msr_hook = Some(Box::new(Hook));
    c.tsc_source = Some(Box::new(|| 1234));
    c.cpuid = Box::new(|_, _| [0x42, 0, 0, 0]);
    c.reset();
    assert!(c.msr_hook.is_some());
    assert!(c.tsc_source.is_some());
    assert_eq!(
        c.gpr[2], 0x42,
        "EDX = CPUID(1).EAX from the installed provider"
    );
}

#[test]
fn sipi_starts_at_vector_page_in_real_mode() {
    let mut c = crate::Cpu::new();
    c.halted = true;
    c.start_at_sipi(0x9a);
    assert_eq!(c.seg[SegReg::Cs as usize].selector, 0x9a00);
    assert_eq!(c.seg[SegReg::Cs as usize].base, 0x9a000);
    assert_eq!(c.rip, 0);
    assert!(!c.halted);
}

// --- robustness ------------------------------------------------------------------------------

fn random_run(seed: u64, protected: bool) {
    let mut rng = crate::testutil::Rng(seed);
    let len = (rng.next() % 48) as usize + 1;
    let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
    let (mut cpu, mut mem) = if protected {
        let m = Machine32::new();
        (m.cpu, m.mem)
    } else {
        let m = Machine16::new();
        (m.cpu, m.mem)
    };
    let at = if protected {
        CODE32
    } else {
        CODE16_BASE + CODE16_IP
    };
    mem.load(at, &bytes).unwrap();
    for r in cpu.gpr.iter_mut() {
        *r = match rng.next() % 3 {
            0 => rng.next(),
            1 => rng.next() % 0x1_0000,
            _ => rng.next() % 0x20_0000,
        };
    }
    cpu.gpr[4] = if protected { STACK32 } else { STACK16 } - (rng.next() % 0x40) * 2;
    let exit = cpu.run(&mut mem, 200);
    assert!(matches!(
        exit,
        Exit::Halt
            | Exit::InstructionLimit
            | Exit::Shutdown
            | Exit::IoIn { .. }
            | Exit::IoOut { .. }
            | Exit::PhysicalMemory(_)
            | Exit::Unsupported { .. }
    ));
}

#[test]
fn random_bytes_in_real_and_protected_mode_never_panic() {
    for n in 0..1500u64 {
        random_run(0x5eed_1600 + n, false);
        random_run(0x5eed_3200 + n, true);
    }
}

// --- compatibility mode ------------------------------------------------------------------------

/// The 64-bit test machine with a flat 32-bit code segment at selector 0x38 running at CODE.
fn compat_machine() -> crate::testutil::Machine {
    use crate::testutil::{Machine, GDT};
    let mut m = Machine::new();
    m.mem
        .write_u64(GDT + 0x38, descriptor(0, 0xfffff, 0x9b, 0xc))
        .unwrap();
    m.cpu.gdtr.limit = 0x3f;
    let cs = &mut m.cpu.seg[SegReg::Cs as usize];
    cs.selector = 0x38;
    cs.attr = attr::P | attr::S | attr::CODE | attr::RW | attr::ACCESSED | attr::DB | attr::G;
    cs.limit = u32::MAX;
    m
}

#[test]
fn fault_in_compatibility_mode_is_delivered_through_the_long_mode_idt() {
    let mut m = compat_machine();
    m.load_code(&[0x90, 0x0f, 0x0b]); // nop; ud2 (32-bit code)
    let t = m.run(10);
    assert_eq!(t.exception, Some(6));
    assert!(t.cpu.in_64bit_mode(), "the handler runs in 64-bit mode");
    assert_eq!(t.mem_u64(t.cpu.gpr[4]), crate::testutil::CODE + 1);
    assert_eq!(t.mem_u64(t.cpu.gpr[4] + 8), 0x38);
}

#[test]
fn iretq_returns_from_a_64_bit_handler_to_compatibility_mode() {
    use crate::testutil::HANDLERS;
    let mut m = compat_machine();
    m.mem.load(HANDLERS + 0x1f * 16, &[0x48, 0xcf]).unwrap(); // iretq
                                                              // int 0x1f; inc eax (0x40: INC in 32-bit code, a REX prefix in 64-bit code); hlt
    m.load_code(&[0xcd, 0x1f, 0x40, 0xf4]);
    m.cpu.gpr[0] = 4;
    let t = m.run(10);
    assert_eq!(t.exit, Exit::Halt);
    assert_eq!(t.exception, None);
    assert_eq!(t.cpu.gpr[0], 5);
    assert!(!t.cpu.in_64bit_mode());
    assert_eq!(t.cpu.code_bits(), 32);
}
