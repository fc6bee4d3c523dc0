//! `kernel_loader`: the kernel loader (bzImage, ELF vmlinux, PVH ELF) on a hostile kernel file,
//! into a small guest.
//!
//! The input is the whole kernel file, held in a memfd. Checks, beyond "returns Ok or Err":
//! - nothing is ever written below 1 MiB (the loader only places segments in [1 MiB, 4 GiB));
//! - an accepted kernel starts at or above 1 MiB, inside guest RAM, and its entry point lies
//!   in `[kernel_start, kernel_end)`;
//! - the host heap the load holds at its peak stays within [`ALLOC_BOUND`].
//!
//! vm-memory bounds-checks every guest write; RAM is a private anonymous mapping, so a write
//! past it would fault (and AddressSanitizer watches the host heap).

use std::cell::RefCell;
use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};

use rampart_vmm::arch::x86_64::layout::HIMEM_START;
use rampart_vmm::arch::x86_64::loader::load_kernel_with_limit;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::alloc_track::peak_during;

/// Guest RAM of the target.
pub const RAM_SIZE: usize = 32 << 20;
/// Bound on the decompressed bzImage payload: the guest's RAM. `load_kernel` itself uses
/// `MAX_DECOMPRESSED_SIZE` (256 MiB); fuzzing with that makes every gzip bomb a 256 MiB
/// allocation without reaching any new code (the decompressors have their own target).
pub const DECOMPRESS_LIMIT: usize = RAM_SIZE;
/// The most heap one load may hold beyond the payload copy (at most the input's size): the
/// decompressed vmlinux (at most the limit, twice while a `Vec` grows), the lz4 block buffer
/// (an 8 MiB legacy-lz4 block at most, below this limit) and 1 MiB of slack for the ELF parser
/// and error strings.
pub const ALLOC_BOUND: usize = 2 * DECOMPRESS_LIMIT + (8 << 20) + (1 << 20);

/// An anonymous in-memory file holding `data`.
fn memfd_with(data: &[u8]) -> File {
    // SAFETY: the name is a NUL-terminated static string; memfd_create reads it and returns a
    // new descriptor or -1, touching no other memory.
    let fd = unsafe { libc::memfd_create(c"rampart-fuzz-kernel".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(
        fd >= 0,
        "memfd_create failed: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` was just returned by memfd_create, is valid and owned by nobody else.
    let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(data).expect("writing the memfd");
    file
}

thread_local! {
    /// Guest RAM and a scratch buffer for the low-memory check, kept across inputs: a fresh
    /// 32 MiB mapping per input spent most of the time in page faults. Reuse is sound because
    /// the loader only writes guest memory and never reads it, and the low MiB is checked to
    /// still be zero after every input.
    static GUEST: (GuestMemoryMmap, RefCell<Vec<u8>>) = (
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM_SIZE)])
            .expect("32 MiB of guest RAM"),
        RefCell::new(vec![0u8; 2 * HIMEM_START as usize]),
    );
}

pub fn run(data: &[u8]) {
    GUEST.with(|(mem, low)| run_in(mem, &mut low.borrow_mut(), data));
}

/// `scratch` holds two MiB: the guest's first MiB is copied into the first half and compared
/// with the second, which stays zero (one `memcmp` instead of a byte loop under coverage
/// instrumentation).
fn run_in(mem: &GuestMemoryMmap, scratch: &mut [u8], data: &[u8]) {
    let mut file = memfd_with(data);
    let (result, peak) = peak_during(|| load_kernel_with_limit(mem, &mut file, DECOMPRESS_LIMIT));

    let (low, zeros) = scratch.split_at_mut(HIMEM_START as usize);
    mem.read_slice(low, GuestAddress(0))
        .expect("reading the first MiB");
    assert!(
        *low == *zeros,
        "the loader wrote below 1 MiB (result {result:?})"
    );
    let bound = ALLOC_BOUND + data.len();
    assert!(
        peak <= bound,
        "loading a {}-byte kernel held {peak} bytes of heap at once, over {bound} ({result:?})",
        data.len()
    );
    let Ok(entry) = result else { return };
    let (start, end, rip) = (entry.kernel_start.0, entry.kernel_end.0, entry.entry.0);
    assert!(
        start >= HIMEM_START && start < RAM_SIZE as u64,
        "kernel_start {start:#x} outside [1 MiB, end of RAM)"
    );
    assert!(
        start <= rip && rip < end,
        "entry {rip:#x} outside the kernel {start:#x}..{end:#x}"
    );
    std::hint::black_box((entry.cmdline_limit(), entry.initrd_addr_max()));
}
