//! Running instruction sequences on the host CPU.
//!
//! Every case is wrapped in a stub (prologue: save callee-saved registers, switch to the test
//! stack, load RFLAGS and all GPRs from the state block; the body; epilogue: store all GPRs and
//! RFLAGS, clear DF, return). The stubs live in one executable mapping at a fixed address so
//! that the emulator can run the same bodies at the same virtual addresses. Batches run in a
//! forked child: a crash (a bug in a generator) fails the test instead of killing the harness.
//! The child does not allocate: it copies bytes and calls the stubs.
//!
//! This file is the only place in the crate with `unsafe` code (test-only).

use super::layout::*;
use super::Case;
use iced_x86::code_asm::*;

/// One native result: GPRs, RFLAGS, data area (stack + scratch).
pub struct NativeOut {
    pub gpr: [u64; 16],
    pub flags: u64,
    pub data: Vec<u8>,
}

const REGS: [AsmRegister64; 16] = [
    rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15,
];

fn prologue(a: &mut CodeAssembler) -> Result<(), IcedError> {
    for r in [rbx, rbp, r12, r13, r14, r15] {
        a.push(r)?;
    }
    a.mov(qword_ptr(STATE_VA + HOST_RSP), rsp)?;
    // Load RFLAGS on a private stack so the test stack stays untouched.
    a.mov(rsp, STATE_VA + FLAGS_STACK)?;
    a.push(qword_ptr(STATE_VA + IN_FLAGS))?;
    a.popfq()?;
    a.mov(rsp, qword_ptr(STATE_VA + IN_GPR + 4 * 8))?;
    for (n, r) in REGS.iter().enumerate() {
        if n != 4 && n != 0 {
            a.mov(*r, qword_ptr(STATE_VA + IN_GPR + 8 * n as u64))?;
        }
    }
    a.mov(rax, qword_ptr(STATE_VA + IN_GPR))
}

fn epilogue(a: &mut CodeAssembler) -> Result<(), IcedError> {
    for (n, r) in REGS.iter().enumerate() {
        a.mov(qword_ptr(STATE_VA + OUT_GPR + 8 * n as u64), *r)?;
    }
    a.mov(rsp, STATE_VA + FLAGS_STACK)?;
    a.pushfq()?;
    a.pop(qword_ptr(STATE_VA + OUT_FLAGS))?;
    a.cld()?;
    a.mov(rsp, qword_ptr(STATE_VA + HOST_RSP))?;
    for r in [r15, r14, r13, r12, rbp, rbx] {
        a.pop(r)?;
    }
    a.ret()
}

/// Length of the prologue (the body of a stub at `ip` starts at `ip + prologue_len(ip)`).
pub fn prologue_len(ip: u64) -> u64 {
    let mut a = CodeAssembler::new(64).expect("assembler");
    prologue(&mut a).expect("asm");
    a.assemble(ip).expect("assemble").len() as u64
}

/// The stub for `body` at `ip`.
pub fn stub(ip: u64, body: &[u8]) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).expect("assembler");
    prologue(&mut a).expect("asm");
    a.db(body).expect("asm");
    epilogue(&mut a).expect("asm");
    a.assemble(ip).expect("assemble")
}

/// Linux's flat user code/data selectors: 32-bit code (compatibility mode), 64-bit code, data.
const USER32_CS: u16 = 0x23;
const USER_CS: u16 = 0x33;
const USER_DS: u32 = 0x2b;

/// Bytes between the prologue and a compatibility-mode body: `jmp far [rip+0]` and its
/// 6-byte pointer.
pub const COMPAT_ENTRY_LEN: u64 = 12;

/// Length of the segment set-up that precedes the prologue in a compatibility-mode stub.
fn compat_setup(a: &mut CodeAssembler) -> Result<(), IcedError> {
    // 64-bit processes run with null DS/ES, unusable in compatibility mode: load flat data.
    a.mov(eax, USER_DS)?;
    a.mov(ds, ax)?;
    a.mov(es, ax)
}

/// Offset of the body in a compatibility-mode stub at `ip`.
pub fn compat_body_offset(ip: u64) -> u64 {
    let mut a = CodeAssembler::new(64).expect("assembler");
    compat_setup(&mut a).expect("asm");
    prologue(&mut a).expect("asm");
    a.assemble(ip).expect("assemble").len() as u64 + COMPAT_ENTRY_LEN
}

/// A stub that runs `body` as 32-bit code in compatibility mode: far jump to the 32-bit user
/// code segment after loading the registers, far jump back to 64-bit code before storing them.
pub fn stub_compat(ip: u64, body: &[u8]) -> Vec<u8> {
    let body_va = ip + compat_body_offset(ip);
    let back = body_va + body.len() as u64 + 7;
    let mut a = CodeAssembler::new(64).expect("assembler");
    compat_setup(&mut a).expect("asm");
    prologue(&mut a).expect("asm");
    a.db(&[0xff, 0x2d, 0, 0, 0, 0]).expect("asm"); // jmp far [rip+0]
    a.dd(&[body_va as u32]).expect("asm");
    a.dw(&[USER32_CS]).expect("asm");
    a.db(body).expect("asm");
    a.db(&[0xea]).expect("asm"); // jmp far USER_CS:back (32-bit code)
    a.dd(&[back as u32]).expect("asm");
    a.dw(&[USER_CS]).expect("asm");
    epilogue(&mut a).expect("asm");
    a.assemble(ip).expect("assemble")
}

struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(addr: u64, len: usize, shared: bool) -> Mapping {
        let flags = libc::MAP_ANONYMOUS
            | libc::MAP_FIXED_NOREPLACE
            | if shared {
                libc::MAP_SHARED
            } else {
                libc::MAP_PRIVATE
            };
        // SAFETY: a fresh anonymous mapping at an address nothing else uses
        // (MAP_FIXED_NOREPLACE fails instead of replacing an existing mapping).
        let p = unsafe {
            libc::mmap(
                addr as *mut _,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        assert_eq!(p as u64, addr, "mmap at {addr:#x} failed");
        Mapping { addr: p, len }
    }

    fn write(&mut self, off: usize, bytes: &[u8]) {
        assert!(off + bytes.len() <= self.len);
        // SAFETY: the range is inside this mapping (checked above), which is readable and writable.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                (self.addr as *mut u8).add(off),
                bytes.len(),
            )
        };
    }

    fn read(&self, off: usize, out: &mut [u8]) {
        assert!(off + out.len() <= self.len);
        // SAFETY: the range is inside this mapping (checked above), which is readable.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (self.addr as *const u8).add(off),
                out.as_mut_ptr(),
                out.len(),
            )
        };
    }

    fn make_executable(&mut self) {
        // SAFETY: changes the protection of our own mapping only.
        let r = unsafe { libc::mprotect(self.addr, self.len, libc::PROT_READ | libc::PROT_EXEC) };
        assert_eq!(r, 0, "mprotect");
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`; nothing refers to it any more.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

const SLOT: usize = 17 * 8 + DATA_LEN;

/// Run `cases` (already laid out in `code` at CODE_VA) natively; one result per case.
pub fn run(code: &[u8], cases: &[Case]) -> Vec<NativeOut> {
    let mut text = Mapping::new(CODE_VA, CODE_LEN, false);
    text.write(0, code);
    text.make_executable();
    let mut data = Mapping::new(DATA_VA, DATA_MAP_LEN, false);
    let mut results = Mapping::new(RESULTS_VA, SLOT * BATCH, true);
    let mut out = Vec::with_capacity(cases.len());
    for (b, batch) in cases.chunks(BATCH).enumerate() {
        // SAFETY: fork; the child only copies memory and calls generated stubs, then _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            for (n, c) in batch.iter().enumerate() {
                let mut state = [0u8; 17 * 8];
                for (i, v) in c.gpr.iter().enumerate() {
                    state[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
                }
                state[16 * 8..].copy_from_slice(&c.flags.to_le_bytes());
                data.write(IN_GPR as usize, &state);
                data.write(DATA_OFF as usize, &c.data);
                // SAFETY: stub_va is the start of a stub we generated into the executable mapping;
                // the stub follows the C calling convention (saves callee-saved registers, clears DF).
                let f: extern "C" fn() = unsafe { std::mem::transmute(c.stub_va as usize) };
                f();
                let mut res = [0u8; SLOT];
                data.read(OUT_GPR as usize, &mut res[..17 * 8]);
                data.read(DATA_OFF as usize, &mut res[17 * 8..]);
                results.write(n * SLOT, &res);
            }
            // SAFETY: terminate the child without running the parent's destructors or test harness.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "native batch {b} crashed (status {status:#x}); first case {}",
            batch[0].name
        );
        for n in 0..batch.len() {
            let mut res = vec![0u8; SLOT];
            results.read(n * SLOT, &mut res);
            let mut gpr = [0u64; 16];
            for (i, g) in gpr.iter_mut().enumerate() {
                *g = u64::from_le_bytes(res[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            }
            let flags = u64::from_le_bytes(res[128..136].try_into().expect("8 bytes"));
            out.push(NativeOut {
                gpr,
                flags,
                data: res[136..].to_vec(),
            });
        }
    }
    out
}
