//! Memory for translated code: one memfd mapped twice, writable at one address and executable at
//! another, so no page is ever writable and executable through the same mapping and nothing
//! needs `mmap`/`mprotect` with `PROT_EXEC` after start-up (the vCPU threads' seccomp filters
//! forbid both). The arena is two bump allocators: the hot part (the first three eighths)
//! takes the code translations run every time, the cold part the rest (their exits for faults
//! and helper calls, and the copies of their instructions), so the code a guest's loop runs
//! lies dense in the instruction cache and TLB. When either is full the owner starts a new
//! generation and allocates from the beginning again (code of older generations is never run:
//! see `Jit::entry`).

use std::io;

/// Writable and executable views of one shared memory object.
pub(crate) struct Arena {
    rw: *mut u8,
    rx: *const u8,
    len: usize,
    /// Bytes used of the hot part, `0..split`.
    used: usize,
    /// Where the cold part starts, and the end of what it uses (`split..cold`).
    split: usize,
    cold: usize,
}

// SAFETY: the arena is plain memory owned by one `Cpu`; the raw pointers are not shared with
// anything that outlives it, and every access goes through `&mut self` or the generated code
// that this `Cpu` alone runs.
unsafe impl Send for Arena {}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("len", &self.len)
            .field("used", &self.used)
            .finish()
    }
}

impl Arena {
    /// `len` bytes (rounded up to pages) of code space. Pages are only backed once written.
    pub(crate) fn new(len: usize) -> io::Result<Self> {
        let len = len.div_ceil(4096).max(1) * 4096;
        // SAFETY: a plain syscall with a static, NUL-terminated name; the result is checked.
        let fd = unsafe { libc::memfd_create(c"rampart-jit".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let close = |fd| {
            // SAFETY: `fd` is the descriptor created above, closed exactly once.
            unsafe { libc::close(fd) };
        };
        // SAFETY: `fd` is ours; ftruncate only sizes the object.
        if unsafe { libc::ftruncate(fd, len as libc::off_t) } != 0 {
            let e = io::Error::last_os_error();
            close(fd);
            return Err(e);
        }
        let map = |prot| {
            // SAFETY: a new shared mapping of our own memfd at an address the kernel picks;
            // it aliases no Rust object.
            unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, 0) }
        };
        let rw = map(libc::PROT_READ | libc::PROT_WRITE);
        if rw == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            close(fd);
            return Err(e);
        }
        let rx = map(libc::PROT_READ | libc::PROT_EXEC);
        // The mappings keep the object alive.
        close(fd);
        if rx == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            // SAFETY: `rw` is the mapping of `len` bytes created above, unmapped once.
            unsafe { libc::munmap(rw, len) };
            return Err(e);
        }
        Ok(Self {
            rw: rw.cast(),
            rx: rx.cast_const().cast(),
            len,
            used: 0,
            split: len / 8 * 3,
            cold: len / 8 * 3,
        })
    }

    /// The executable address of the arena's first byte: every translation lies less than
    /// [`u32::MAX`] bytes after it.
    pub(crate) fn exec_base(&self) -> usize {
        self.rx as usize
    }

    /// Where [`Arena::put`] would put `len` bytes of hot code (`cold` false) or
    /// [`Arena::put_cold`] cold code or data: the executable address, or `None` if they do not
    /// fit in what is left.
    pub(crate) fn next(&self, len: usize, cold: bool) -> Option<usize> {
        let (from, limit) = if cold {
            (self.cold, self.len)
        } else {
            (self.used, self.split)
        };
        let start = from.next_multiple_of(16);
        (start.checked_add(len)? <= limit).then_some(self.rx as usize + start)
    }

    /// Copy `code` into the hot part and return the executable address of its first byte, or
    /// `None` if it does not fit in what is left.
    pub(crate) fn put(&mut self, code: &[u8]) -> Option<usize> {
        self.copy_in(code.as_ptr(), code.len(), false)
    }

    /// [`Arena::put`] into the cold part.
    pub(crate) fn put_cold(&mut self, code: &[u8]) -> Option<usize> {
        self.copy_in(code.as_ptr(), code.len(), true)
    }

    /// Copy `len` bytes from `src` to the next 16-byte boundary of the hot or cold part.
    fn copy_in(&mut self, src: *const u8, len: usize, cold: bool) -> Option<usize> {
        let at = self.next(len, cold)?;
        let start = at - self.rx as usize;
        // SAFETY: `next` checked that `start..start + len` is inside the writable mapping of
        // `len` bytes, which no Rust reference covers; `src` is a separate allocation of at
        // least `len` bytes (the callers pass a slice's).
        unsafe { std::ptr::copy_nonoverlapping(src, self.rw.add(start), len) };
        if cold {
            self.cold = start + len;
        } else {
            self.used = start + len;
        }
        Some(at)
    }

    /// Copy the values of `items` in (as data, in the cold part) and return the address of
    /// the first, or `None` if they do not fit.
    pub(crate) fn put_slice<T: Copy>(&mut self, items: &[T]) -> Option<usize> {
        debug_assert!(std::mem::align_of::<T>() <= 16);
        // (`T: Copy` values are plain bytes to copy, and the copy lands at a 16-byte
        // boundary (the mapping is page-aligned), enough for `T`'s alignment.)
        self.copy_in(
            items.as_ptr().cast::<u8>(),
            std::mem::size_of_val(items),
            true,
        )
    }

    /// Copy `a` and then `b` in (as [`Arena::put_slice`] does), `b` at [`pair_offset`] from
    /// `a`, and return the address of `a`'s first value; `None` if they do not fit.
    pub(crate) fn put_pair<A: Copy, B: Copy>(&mut self, a: &[A], b: &[B]) -> Option<usize> {
        let first = self.put_slice(a)?;
        let second = self.put_slice(b)?;
        // (`put_slice` starts each copy at the next 16-byte boundary, so this always holds;
        // generated code relies on it.)
        (second - first == pair_offset::<A>(a.len())).then_some(first)
    }

    /// Overwrite the bytes at executable address `at` (inside what is allocated) with
    /// `bytes`: a field of placed code. Whether it was inside.
    pub(crate) fn patch(&mut self, at: usize, bytes: &[u8]) -> bool {
        let Some(start) = at.checked_sub(self.rx as usize) else {
            return false;
        };
        let Some(end) = start.checked_add(bytes.len()) else {
            return false;
        };
        if !(end <= self.used || (start >= self.split && end <= self.cold)) {
            return false;
        }
        // SAFETY: `start..end` lies in the hot or cold part in use, inside the writable
        // mapping of `len` bytes, which no Rust reference covers; `bytes` is a separate
        // allocation. The owner patches code only while none of it runs (one thread).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.rw.add(start), bytes.len()) };
        true
    }

    /// Forget everything allocated (the caller has made sure none of it runs again).
    pub(crate) fn clear(&mut self) {
        self.used = 0;
        self.cold = self.split;
    }

    /// Bytes in use.
    pub(crate) fn used(&self) -> usize {
        self.used + (self.cold - self.split)
    }
}

/// Where [`Arena::put_pair`] puts its second slice: this many bytes after the first of `n`
/// values of `A`.
pub(crate) const fn pair_offset<A>(n: usize) -> usize {
    (n * std::mem::size_of::<A>()).next_multiple_of(16)
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: both views were mapped with `len` bytes in `new` and are unmapped once; no
        // generated code runs after its `Cpu` is dropped.
        unsafe {
            libc::munmap(self.rw.cast(), self.len);
            libc::munmap(self.rx.cast_mut().cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_reach_placed_code_and_nothing_else() {
        let mut a = Arena::new(8192).unwrap();
        let p = a.put(&[0x90; 8]).unwrap();
        let c = a.put_cold(&[0xcc; 8]).unwrap();
        assert!(a.patch(p + 2, &[1, 2, 3, 4]));
        assert!(a.patch(c + 4, &[5, 6, 7, 8]));
        // SAFETY: both were placed above, 8 bytes each, in the readable executable view.
        let (hot, cold) = unsafe {
            (
                std::slice::from_raw_parts(p as *const u8, 8),
                std::slice::from_raw_parts(c as *const u8, 8),
            )
        };
        assert_eq!(hot, [0x90, 0x90, 1, 2, 3, 4, 0x90, 0x90]);
        assert_eq!(cold, [0xcc, 0xcc, 0xcc, 0xcc, 5, 6, 7, 8]);
        // Past what is placed, across the end, before the start, in the gap: refused.
        assert!(!a.patch(p + 6, &[0; 4]));
        assert!(!a.patch(c + 6, &[0; 4]));
        assert!(!a.patch(p.wrapping_sub(1), &[0]));
        assert!(!a.patch(p + 64, &[0]));
        assert!(!a.patch(usize::MAX, &[0; 4]));
    }

    #[test]
    fn code_written_through_one_view_reads_back_through_the_other() {
        let mut a = Arena::new(8192).unwrap();
        let p = a.put(&[0xc3, 1, 2, 3]).unwrap();
        let q = a.put(&[9; 20]).unwrap();
        assert_eq!(q - p, 16, "allocations are 16-byte aligned");
        let c = a.next(5, true).unwrap();
        assert_eq!(a.put_cold(&[7; 5]), Some(c));
        assert_eq!(c - p, 3072, "the cold part starts three eighths in");
        // SAFETY: `p`, `q` and `c` point into the readable executable view, inside what was
        // put.
        let (x, y, z) = unsafe {
            (
                *(p as *const u8).add(1),
                *(q as *const u8).add(19),
                *(c as *const u8).add(4),
            )
        };
        assert_eq!((x, y, z), (1, 9, 7));
        assert!(a.put(&[0; 3072]).is_none(), "what does not fit is refused");
        assert!(a.put_cold(&[0; 5120]).is_none());
        assert!(a.put_cold(&[0; 5104]).is_some());
        a.clear();
        assert_eq!(a.used(), 0);
        assert!(a.put(&[0; 3072]).is_some());
    }
}
