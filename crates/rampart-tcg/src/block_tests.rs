//! The block cache against code that changes under it: stores by the running block itself,
//! writes by someone else (another vCPU, device DMA), remapped pages and address-space switches.

use crate::testutil::*;
use crate::Exit;

/// `mov eax, imm32; hlt`.
fn mov_eax_hlt(v: u32) -> Vec<u8> {
    let mut c = vec![0xb8];
    c.extend_from_slice(&v.to_le_bytes());
    c.push(0xf4);
    c
}

/// Run from `CODE` again, after a halt, to the next halt.
fn run_again_from_code(m: &mut Machine) {
    m.cpu.rip = CODE;
    m.cpu.halted = false;
    assert_eq!(m.cpu.run(&mut m.mem, 100), Exit::Halt);
}

#[test]
fn store_to_the_next_instruction_of_the_running_block_takes_effect() {
    // lea rbx, [rip+0]; mov byte [rbx+8], 7; mov eax, 1; hlt -- the store patches the imm8
    // of the following MOV, which the block decoded before the store ran.
    let mut code = vec![0x48, 0x8d, 0x1d, 0, 0, 0, 0]; // lea rbx, [rip] (= CODE + 7)
    code.extend_from_slice(&[0xc6, 0x43, 0x05, 7]); // mov byte [rbx+5], 7
    code.extend_from_slice(&mov_eax_hlt(1)); // at CODE + 11: b8 01 ...
    let mut m = Machine::new();
    m.load_code(&code);
    let t = m.run(100);
    assert_eq!(t.exit, Exit::Halt);
    assert_eq!(t.cpu.gpr[0], 7);
}

#[test]
fn code_rewritten_by_another_writer_runs_the_new_bytes_at_the_next_entry() {
    let mut m = Machine::new();
    m.load_code(&mov_eax_hlt(1));
    assert_eq!(m.cpu.run(&mut m.mem, 100), Exit::Halt);
    assert_eq!(m.cpu.gpr[0], 1);
    // As a DMA transfer or another vCPU would: straight into RAM, no store of this CPU.
    m.mem.load(CODE + 1, &5u32.to_le_bytes()).unwrap();
    run_again_from_code(&mut m);
    assert_eq!(m.cpu.gpr[0], 5);
}

#[test]
fn remapped_code_page_runs_the_code_of_the_new_page() {
    // Linear 0xa0_0000 (PD entry 5) maps physical 0 first, then physical 0x20_0000.
    const LA: u64 = 0xa1_0000;
    let mut m = Machine::new();
    m.mem.load(0x1_0000, &mov_eax_hlt(1)).unwrap();
    m.mem.load(0x21_0000, &mov_eax_hlt(2)).unwrap();
    m.mem.write_u64(0x3000 + 5 * 8, 0x87).unwrap();
    m.cpu.rip = LA;
    assert_eq!(m.cpu.run(&mut m.mem, 100), Exit::Halt);
    assert_eq!(m.cpu.gpr[0], 1);
    m.mem.write_u64(0x3000 + 5 * 8, 0x20_0000 | 0x87).unwrap();
    m.cpu.flush_tlb();
    m.cpu.rip = LA;
    m.cpu.halted = false;
    assert_eq!(m.cpu.run(&mut m.mem, 100), Exit::Halt);
    assert_eq!(m.cpu.gpr[0], 2);
}

#[test]
fn address_space_switch_inside_a_block_fetches_from_the_new_mapping() {
    // New tables at 0x38_0000 map linear 0..2 MiB to physical 0x20_0000 and 2..4 MiB
    // identically. The instruction after MOV CR3 is read from the new mapping.
    const PML4B: u64 = 0x38_0000;
    let mut m = Machine::new();
    m.mem.write_u64(PML4B, (PML4B + 0x1000) | 7).unwrap();
    m.mem
        .write_u64(PML4B + 0x1000, (PML4B + 0x2000) | 7)
        .unwrap();
    m.mem.write_u64(PML4B + 0x2000, 0x20_0000 | 0x87).unwrap();
    m.mem.write_u64(PML4B + 0x2008, 0x20_0000 | 0x87).unwrap();
    let mut old = vec![0x0f, 0x22, 0xd8]; // mov cr3, rax
    old.extend_from_slice(&[0xbb, 1, 0, 0, 0, 0xf4]); // mov ebx, 1; hlt
    m.load_code(&old);
    m.mem
        .load(CODE + 0x20_0000 + 3, &[0xbb, 2, 0, 0, 0, 0xf4])
        .unwrap();
    m.cpu.gpr[0] = PML4B;
    let t = m.run(100);
    assert_eq!(t.exit, Exit::Halt);
    assert_eq!(t.cpu.gpr[3], 2);
}

#[test]
fn budget_ends_a_block_between_instructions() {
    let mut m = Machine::new();
    m.load_code(&[0x90; 10]);
    assert_eq!(m.cpu.run(&mut m.mem, 3), Exit::InstructionLimit);
    assert_eq!(m.cpu.rip, CODE + 3);
    assert_eq!(m.cpu.tsc, 3);
    assert_eq!(m.cpu.run(&mut m.mem, 4), Exit::InstructionLimit);
    assert_eq!(m.cpu.rip, CODE + 7);
}

#[test]
fn fault_in_the_middle_of_a_block_leaves_rip_at_the_faulting_instruction() {
    // inc eax; mov rax, [non-canonical]; inc ebx
    let mut m = Machine::new();
    m.load_code(&[
        0xff, 0xc0, 0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0x80, 0xff, 0xc3, 0xf4,
    ]);
    m.cpu.gpr[0] = 0;
    let t = m.run(100);
    assert_eq!(t.cpu.gpr[0], 1);
    assert_eq!(t.cpu.gpr[3], 0);
    assert!(t.exception.is_some());
}

#[test]
fn taken_conditional_branch_leaves_the_block() {
    // xor eax,eax; jz +5; mov eax,1; hlt; (target:) mov eax,2; hlt
    let mut m = Machine::new();
    m.load_code(&[
        0x31, 0xc0, 0x74, 0x06, 0xb8, 1, 0, 0, 0, 0xf4, 0xb8, 2, 0, 0, 0, 0xf4,
    ]);
    let t = m.run(100);
    assert_eq!(t.exit, Exit::Halt);
    assert_eq!(t.cpu.gpr[0], 2);
}

#[test]
fn store_to_another_blocks_page_is_seen_at_that_blocks_next_entry_in_the_same_run() {
    // A function on the next page runs twice (built, then validated), is patched by a store
    // from this page, and runs again within one `run` call: the last call must execute the
    // patched bytes.
    let func = CODE + 0x1000;
    let call = |code: &mut Vec<u8>| {
        let next = CODE + code.len() as u64 + 5;
        code.push(0xe8);
        code.extend_from_slice(&(func.wrapping_sub(next) as u32).to_le_bytes());
    };
    let mut code = Vec::new();
    call(&mut code);
    call(&mut code);
    code.extend_from_slice(&[0xc6, 0x04, 0x25]); // mov byte [func + 1], 9
    code.extend_from_slice(&((func + 1) as u32).to_le_bytes());
    code.push(9);
    call(&mut code);
    code.push(0xf4);
    let mut m = Machine::new();
    m.load_code(&code);
    m.mem.load(func, &[0xb8, 1, 0, 0, 0, 0xc3]).unwrap(); // mov eax, 1; ret
    let t = m.run(100);
    assert_eq!(t.exit, Exit::Halt);
    assert_eq!(t.cpu.gpr[0], 9);
}

/// Runs `code` (ending in HLT) after a call to a function on the next page, so a block on that
/// page is validated in the run's generation; returns how many generations the run ended after
/// the one its entry starts.
fn generations_ended_after_a_validated_call(
    code_after: &[u8],
    setup: impl FnOnce(&mut Machine),
) -> u64 {
    let func = CODE + 0x1000;
    let mut code = vec![0xe8];
    code.extend_from_slice(&(func.wrapping_sub(CODE + 5) as u32).to_le_bytes());
    code.extend_from_slice(code_after);
    code.push(0xf4);
    let mut m = Machine::new();
    m.load_code(&code);
    m.mem.load(func, &[0xc3]).unwrap(); // ret
    setup(&mut m);
    let before = m.cpu.code_gen;
    assert_eq!(m.cpu.run(&mut m.mem, 100), Exit::Halt);
    // `run` itself starts one generation.
    m.cpu.code_gen - before - 1
}

#[test]
fn a_store_to_a_page_without_validated_code_keeps_the_generation() {
    // mov byte [func + 512 pages], 1: a data page whose number is the code page's modulo 512
    // (the size of an earlier, coarser page set) -- the generation goes on.
    let mut store = vec![0xc6, 0x04, 0x25];
    store.extend_from_slice(&((CODE + 0x1000 + 512 * 0x1000) as u32).to_le_bytes());
    store.push(1);
    assert_eq!(generations_ended_after_a_validated_call(&store, |_| {}), 0);
    // The same store into the function's own page ends it.
    let mut store = vec![0xc6, 0x04, 0x25];
    store.extend_from_slice(&((CODE + 0x1000 + 8) as u32).to_le_bytes());
    store.push(1);
    assert_eq!(generations_ended_after_a_validated_call(&store, |_| {}), 1);
}

#[test]
fn wrmsr_ends_the_generation_unless_the_msr_is_x2apic_or_tsc_deadline() {
    struct Accept;
    impl crate::exec::msr::MsrHook for Accept {
        fn read(&mut self, _: u32) -> Option<Result<u64, ()>> {
            Some(Ok(0))
        }
        fn write(&mut self, _: u32, _: u64) -> Option<Result<(), ()>> {
            Some(Ok(()))
        }
    }
    for (msr, ended) in [
        (0x6e0u32, 0),    // IA32_TSC_DEADLINE
        (0x80b, 0),       // x2APIC EOI
        (0x830, 0),       // x2APIC ICR
        (0xc000_0100, 1), // FS_BASE: serializing
        (0x48, 1),        // SPEC_CTRL: serializing
    ] {
        // mov ecx, msr; xor eax, eax; xor edx, edx; wrmsr
        let mut code = vec![0xb9];
        code.extend_from_slice(&msr.to_le_bytes());
        code.extend_from_slice(&[0x31, 0xc0, 0x31, 0xd2, 0x0f, 0x30]);
        let n = generations_ended_after_a_validated_call(&code, |m| {
            m.cpu.msr_hook = Some(Box::new(Accept));
        });
        assert_eq!(n, ended, "MSR {msr:#x}");
    }
}

#[test]
fn an_instruction_crossing_a_page_at_a_block_start_runs_its_current_bytes_every_time() {
    // jmp to CODE + 0xffe, where `mov eax, imm32` crosses into the next page; then hlt.
    let at = CODE + 0xffe;
    let mut code = vec![0xe9];
    code.extend_from_slice(&(at.wrapping_sub(CODE + 5) as u32).to_le_bytes());
    let mut m = Machine::new();
    m.load_code(&code);
    m.mem.load(at, &mov_eax_hlt(0x1111_1111)).unwrap();
    for v in [0x1111_1111u32, 0x2222_2222, 0x3333_3333] {
        // As another writer would: the bytes on both pages change between runs.
        m.mem.load(at, &mov_eax_hlt(v)).unwrap();
        run_again_from_code(&mut m);
        assert_eq!(m.cpu.gpr[0], u64::from(v));
    }
    // The code there no longer crosses the page: `mov al, 0x44; hlt` -- runs as well.
    m.mem.load(at, &[0xb0, 0x44, 0xf4]).unwrap();
    run_again_from_code(&mut m);
    assert_eq!(m.cpu.gpr[0], 0x3333_3344);
}

/// At `CODE`: `jmp CODE + 0xff8`; there `inc ebx` three times, then at `CODE + 0xffe` a
/// `jmp rel32` that crosses into the next page (one byte of its displacement on the first,
/// three on the second), to `CODE + 0x20` (`mov eax, 1; hlt`); the same displacement with
/// `0xf1` instead of `0xf0` on the second page goes to `CODE + 0x120` (`mov eax, 2; hlt`).
/// Nothing else is on the second page. `before` goes in front of the `inc`s, ending at
/// `CODE + 0xff8`.
fn load_block_across_a_page(m: &mut crate::testutil::Machine, before: &[u8]) {
    let start = CODE + 0xff8 - before.len() as u64;
    let mut code = vec![0xe9];
    code.extend_from_slice(&(start.wrapping_sub(CODE + 5) as u32).to_le_bytes());
    m.load_code(&code);
    m.mem.load(CODE + 0x20, &mov_eax_hlt(1)).unwrap();
    m.mem.load(CODE + 0x120, &mov_eax_hlt(2)).unwrap();
    let mut block = before.to_vec();
    block.extend_from_slice(&[0xff, 0xc3, 0xff, 0xc3, 0xff, 0xc3, 0xe9]);
    block.extend_from_slice(&(CODE + 0x20).wrapping_sub(CODE + 0x1003).to_le_bytes()[..4]);
    m.mem.load(start, &block).unwrap();
    assert_eq!(&block[block.len() - 3..], &[0xf0, 0xff, 0xff]);
}

#[test]
fn a_block_ending_across_a_page_watches_the_second_page() {
    let (mut m, watch) = watched_machine(RAM as u64, true);
    load_block_across_a_page(&mut m, &[]);
    m.cpu.gpr[3] = 0;
    for n in 1..=4 {
        run_again_from_code(&mut m);
        assert_eq!((m.cpu.gpr[0], m.cpu.gpr[3]), (1, 3 * n));
    }
    assert!(
        m.cpu.blocks.crosses(CODE + 0xff8),
        "one block, to the page's end and past it"
    );
    let gen = m.cpu.code_gen;
    run_again_from_code(&mut m);
    assert_eq!(m.cpu.code_gen, gen, "no generation ended");
    // A reported write into the second page alone: it was watched, the next run sees it.
    let changes = watch.changes();
    m.mem.load(CODE + 0x1000, &[0xf1]).unwrap();
    assert_eq!(watch.changes(), changes + 1);
    run_again_from_code(&mut m);
    assert_eq!((m.cpu.gpr[0], m.cpu.gpr[3]), (2, 18));
    // And back, seen again: the page was watched anew.
    m.mem.load(CODE + 0x1000, &[0xf0]).unwrap();
    run_again_from_code(&mut m);
    assert_eq!(m.cpu.gpr[0], 1);
}

#[test]
fn a_store_of_a_block_into_the_second_page_of_its_last_instruction_takes_effect() {
    // mov byte [CODE + 0x1000], 0xf1 in front: it changes the crossing JMP's target, which the
    // block decoded before the store ran. Every run (interpreted first, then translated)
    // must take the new target.
    let mut store = vec![0xc6, 0x04, 0x25];
    store.extend_from_slice(&((CODE + 0x1000) as u32).to_le_bytes());
    store.push(0xf1);
    let mut m = crate::testutil::Machine::new();
    load_block_across_a_page(&mut m, &store);
    for _ in 0..4 {
        m.mem.load(CODE + 0x1000, &[0xf0]).unwrap();
        run_again_from_code(&mut m);
        assert_eq!(m.cpu.gpr[0], 2);
    }
}

#[test]
fn a_block_across_a_page_entered_from_another_translation_sees_its_store_into_the_second_page() {
    // The block: mov byte [rdx], 0xf1; inc ebx (x3); the crossing JMP. Five passes, each from
    // a loop whose code picks rdx without a branch: DATA, and on the last pass the JMP's own
    // displacement on the second page. Each pass leaves `Cpu::run` at an OUT and comes back
    // in the same validation generation (a sole CPU), so by the last one the run loop enters
    // the loop's code, which goes straight into the block's translation: the block's own
    // entry must say that its second page is running code.
    let (mut m, _watch) = watched_machine(RAM as u64, true);
    load_block_across_a_page(&mut m, &[0xc6, 0x02, 0xf1]);
    let top = CODE + 5;
    let mut code = vec![0xb9, 5, 0, 0, 0]; // mov ecx, 5
    code.push(0xba); // mov edx, DATA
    code.extend_from_slice(&(DATA as u32).to_le_bytes());
    code.push(0xbe); // mov esi, CODE + 0x1000
    code.extend_from_slice(&((CODE + 0x1000) as u32).to_le_bytes());
    code.extend_from_slice(&[0x83, 0xf9, 0x01, 0x0f, 0x44, 0xd6]); // cmp ecx, 1; cmove edx, esi
    code.push(0xe9); // jmp to the block
    let next = CODE + code.len() as u64 + 4;
    code.extend_from_slice(&(CODE + 0xff5).wrapping_sub(next).to_le_bytes()[..4]);
    assert!(code.len() <= 0x20);
    m.load_code(&code);
    // The old target: mov eax, 1; out 0x80, al; dec ecx; jnz top; hlt.
    let mut old = mov_eax_hlt(1);
    old.pop();
    old.extend_from_slice(&[0xe6, 0x80, 0xff, 0xc9, 0x0f, 0x85]);
    old.extend_from_slice(&top.wrapping_sub(CODE + 0x20 + 15).to_le_bytes()[..4]);
    old.push(0xf4);
    m.mem.load(CODE + 0x20, &old).unwrap();
    m.cpu.gpr[3] = 0;
    m.cpu.rip = CODE;
    m.cpu.halted = false;
    let mut outs = 0;
    loop {
        match m.cpu.run(&mut m.mem, 1000) {
            Exit::IoOut { .. } => outs += 1,
            Exit::Halt => break,
            e => panic!("{e:?}"),
        }
    }
    assert_eq!((m.cpu.gpr[0], m.cpu.gpr[3], outs), (2, 15, 4));
}

#[test]
fn a_block_ending_across_a_page_follows_the_second_page_when_it_is_remapped_or_unmapped() {
    // 4 KiB pages for 0..2 MiB (page table at 0xa000), identity at first.
    let mut m = crate::testutil::Machine::new();
    for p in 0..512u64 {
        m.mem.write_u64(0xa000 + p * 8, (p << 12) | 7).unwrap();
    }
    m.mem.write_u64(0x3000, 0xa000 | 7).unwrap();
    m.cpu.flush_tlb();
    load_block_across_a_page(&mut m, &[]);
    // A copy of the second page, with the other target, at physical 0x30_0000.
    m.mem.load(0x30_0000, &[0xf1, 0xff, 0xff]).unwrap();
    m.cpu.gpr[3] = 0;
    for _ in 0..3 {
        run_again_from_code(&mut m);
        assert_eq!(m.cpu.gpr[0], 1);
    }
    let pte = 0xa000 + ((CODE + 0x1000) >> 12) * 8;
    m.mem.write_u64(pte, 0x30_0000 | 7).unwrap();
    m.cpu.flush_tlb();
    for _ in 0..3 {
        run_again_from_code(&mut m);
        assert_eq!(m.cpu.gpr[0], 2);
    }
    // Unmapped: the JMP faults on its second page, after the INCs before it retired.
    m.mem.write_u64(pte, 0).unwrap();
    m.cpu.flush_tlb();
    m.cpu.gpr[3] = 0;
    m.cpu.rip = CODE;
    m.cpu.halted = false;
    let t = m.run(100);
    assert_eq!(t.exception, Some(14));
    assert_eq!(t.cpu.cr2, CODE + 0x1000);
    assert_eq!(t.cpu.gpr[3], 3);
    assert_eq!(
        t.mem_u64(t.cpu.gpr[4] + 8),
        CODE + 0xffe,
        "the JMP's address"
    );
}

#[test]
fn a_tiny_block_table_runs_the_same_as_the_default_one() {
    // Three passes over 40 functions (`add eax, k; ret`), each at its own address: with 16
    // slots most calls evict a block, with the default table none does.
    let funcs = CODE + 0x800;
    let mut code = vec![0xb9, 3, 0, 0, 0]; // mov ecx, 3
    let top = code.len() as u64;
    for k in 0..40u64 {
        let next = CODE + code.len() as u64 + 5;
        code.push(0xe8);
        code.extend_from_slice(&((funcs + 16 * k).wrapping_sub(next) as u32).to_le_bytes());
    }
    code.extend_from_slice(&[0xff, 0xc9]); // dec ecx
    let next = CODE + code.len() as u64 + 6;
    code.extend_from_slice(&[0x0f, 0x85]); // jnz top
    code.extend_from_slice(&((CODE + top).wrapping_sub(next) as u32).to_le_bytes());
    code.push(0xf4);
    let mut eax = Vec::new();
    for bits in [4, 16] {
        let mut m = Machine::new();
        m.cpu.set_block_cache_size(bits);
        m.load_code(&code);
        for k in 0..40u64 {
            m.mem
                .load(funcs + 16 * k, &[0x05, k as u8, 0, 0, 0, 0xc3])
                .unwrap();
        }
        let t = m.run(10_000);
        assert_eq!(t.exit, Exit::Halt, "{bits} bits");
        eax.push(t.cpu.gpr[0]);
    }
    assert_eq!(eax, [3 * (0..40).sum::<u64>(); 2]);
}

/// A machine whose memory reports `FlatMemory::load`s to a code watch covering `end` bytes,
/// with `mov eax, v; hlt` at `CODE`, run once.
fn watched_machine(end: u64, sole: bool) -> (Machine, std::sync::Arc<crate::CodeWatch>) {
    let watch = std::sync::Arc::new(crate::CodeWatch::new(end));
    let mut m = Machine::new();
    let mem = std::mem::replace(&mut m.mem, crate::FlatMemory::new(0));
    m.mem = mem.with_code_watch(watch.clone());
    m.cpu.set_sole_cpu(sole);
    m.load_code(&mov_eax_hlt(1));
    assert_eq!(m.cpu.run(&mut m.mem, 100), Exit::Halt);
    assert_eq!(m.cpu.gpr[0], 1);
    (m, watch)
}

#[test]
fn a_sole_cpu_keeps_its_generation_across_runs_until_a_write_into_its_code_is_reported() {
    let (mut m, watch) = watched_machine(RAM as u64, true);
    let gen = m.cpu.code_gen;
    for _ in 0..3 {
        run_again_from_code(&mut m);
    }
    // A write elsewhere (as a device's DMA into a data page) changes nothing.
    m.mem.load(DATA, &[1, 2, 3]).unwrap();
    run_again_from_code(&mut m);
    assert_eq!(m.cpu.code_gen, gen, "no generation ended");
    assert_eq!(watch.changes(), 0);
    // A reported write into the code: the next run sees it.
    m.mem.load(CODE, &mov_eax_hlt(2)).unwrap();
    assert_eq!(watch.changes(), 1);
    run_again_from_code(&mut m);
    assert_eq!(m.cpu.gpr[0], 2);
    assert_ne!(m.cpu.code_gen, gen);
    // And again: the page was watched anew when the block was validated again.
    m.mem.load(CODE, &mov_eax_hlt(3)).unwrap();
    run_again_from_code(&mut m);
    assert_eq!(m.cpu.gpr[0], 3);
}

#[test]
fn without_a_sole_cpu_or_a_covering_watch_every_run_ends_the_generation() {
    // Another CPU may write code unreported: every run starts a generation.
    let (mut m, _) = watched_machine(RAM as u64, false);
    let gen = m.cpu.code_gen;
    run_again_from_code(&mut m);
    assert_ne!(m.cpu.code_gen, gen);
    // The code's page is beyond what the watch covers: it cannot tell writes there.
    let (mut m, _) = watched_machine(CODE, true);
    let gen = m.cpu.code_gen;
    run_again_from_code(&mut m);
    assert_ne!(m.cpu.code_gen, gen);
}

#[test]
fn a_delivery_to_a_sole_cpu_catches_up_with_reported_writes() {
    // The code (`hlt`) faults nowhere; an external interrupt delivery after a reported write
    // into a page of code ends the generation, one without keeps it.
    let (mut m, watch) = watched_machine(RAM as u64, true);
    m.cpu.flags.set(crate::flags::IF, true);
    let gen = m.cpu.code_gen;
    assert!(m.cpu.inject_external_interrupt(&mut m.mem, 0x10));
    assert_eq!(m.cpu.code_gen, gen);
    m.mem.load(CODE, &mov_eax_hlt(5)).unwrap();
    assert_eq!(watch.changes(), 1);
    // (The first delivery went through an interrupt gate, which cleared IF.)
    m.cpu.flags.set(crate::flags::IF, true);
    assert!(m.cpu.inject_external_interrupt(&mut m.mem, 0x10));
    assert_ne!(m.cpu.code_gen, gen);
}
