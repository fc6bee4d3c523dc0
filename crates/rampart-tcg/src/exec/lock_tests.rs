//! Locked read-modify-write instructions are atomic against other vCPUs: their write is a
//! compare-and-exchange against what they read, and a lost race runs them again.

use crate::memory::{FlatMemory, GuestMemory, MemFault};
use crate::testutil::*;
use crate::Exit;
use iced_x86::code_asm::*;

/// Memory on which "another vCPU" adds `bump` to `addr` just before the first
/// compare-and-exchange there, as a racing CPU would between our read and our write.
struct Racy {
    inner: FlatMemory,
    addr: u64,
    bump: u64,
    cas_calls: u32,
}

impl GuestMemory for Racy {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), MemFault> {
        self.inner.read(gpa, buf)
    }
    fn write(&mut self, gpa: u64, buf: &[u8]) -> Result<(), MemFault> {
        self.inner.write(gpa, buf)
    }
    fn compare_exchange(
        &mut self,
        gpa: u64,
        old: &[u8],
        new: &[u8],
        found: &mut [u8],
    ) -> Result<(), MemFault> {
        // Page-table A/D updates also use compare-and-exchange: count only the operand's.
        if gpa != self.addr {
            self.inner.read(gpa, found)?;
            if found == old {
                self.inner.write(gpa, new)?;
            }
            return Ok(());
        }
        self.cas_calls += 1;
        if self.cas_calls == 1 {
            let v = self.inner.read_u64(gpa)?;
            self.inner.write_u64(gpa, v + self.bump)?;
        }
        self.inner.read(gpa, found)?;
        if found == old {
            self.inner.write(gpa, new)?;
        }
        Ok(())
    }
}

fn run_racy(code: Vec<u8>, initial: u64) -> (Racy, crate::Cpu) {
    let mut m = Machine::new();
    m.load_code(&code);
    m.mem.write_u64(DATA, initial).unwrap();
    let mut mem = Racy {
        inner: m.mem,
        addr: DATA,
        bump: 100,
        cas_calls: 0,
    };
    let mut cpu = m.cpu;
    let exit = cpu.run(&mut mem, 1000);
    assert_eq!(exit, Exit::Halt);
    (mem, cpu)
}

#[test]
fn locked_add_that_loses_a_race_runs_again_and_keeps_both_updates() {
    let code = assemble(|a| {
        a.mov(rbx, DATA)?;
        a.lock().add(qword_ptr(rbx), 1)?;
        a.hlt()?;
        Ok(())
    });
    let (mem, _) = run_racy(code, 5);
    assert_eq!(
        mem.inner.read_u64(DATA).unwrap(),
        106,
        "the racing update was lost"
    );
    assert_eq!(
        mem.cas_calls, 2,
        "one failed compare-and-exchange, then a successful one"
    );
}

#[test]
fn locked_cmpxchg_sees_the_racing_value_on_retry() {
    // Expect 5, write 7: the racing CPU made it 105, so the exchange must fail and load 105.
    let code = assemble(|a| {
        a.mov(rbx, DATA)?;
        a.mov(rax, 5u64)?;
        a.mov(rcx, 7u64)?;
        a.lock().cmpxchg(qword_ptr(rbx), rcx)?;
        a.hlt()?;
        Ok(())
    });
    let (mem, cpu) = run_racy(code, 5);
    assert_eq!(mem.inner.read_u64(DATA).unwrap(), 105);
    assert_eq!(cpu.gpr[0], 105, "RAX gets the value found");
}

#[test]
fn xchg_with_memory_is_atomic_without_a_lock_prefix() {
    let code = assemble(|a| {
        a.mov(rbx, DATA)?;
        a.mov(rax, 1u64)?;
        a.xchg(qword_ptr(rbx), rax)?;
        a.hlt()?;
        Ok(())
    });
    let (mem, cpu) = run_racy(code, 0);
    assert_eq!(mem.inner.read_u64(DATA).unwrap(), 1);
    assert_eq!(cpu.gpr[0], 100, "XCHG returns the value another CPU stored");
    assert_eq!(mem.cas_calls, 2);
}

#[test]
fn unlocked_add_does_not_use_compare_and_exchange() {
    let code = assemble(|a| {
        a.mov(rbx, DATA)?;
        a.add(qword_ptr(rbx), 1)?;
        a.hlt()?;
        Ok(())
    });
    let (mem, _) = run_racy(code, 5);
    assert_eq!(mem.cas_calls, 0);
    assert_eq!(mem.inner.read_u64(DATA).unwrap(), 6);
}
