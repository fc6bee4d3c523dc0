//! The entropy queue: every available chain's device-writable buffers are filled with random
//! bytes (at most [`MAX_REQUEST`] per chain) and returned used.

use std::io::Write;

use virtio_queue::{Queue, QueueOwnedT, QueueT, Writer};
use vm_memory::GuestMemoryMmap;

use crate::virtio::QueueError;

/// Most bytes given for one request: a guest cannot make the host generate unbounded data.
pub const MAX_REQUEST: usize = 64 * 1024;

/// Where random bytes come from.
pub trait EntropySource: Send {
    fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()>;
}

/// The host's `getrandom(2)`.
pub struct HostRandom;

impl EntropySource for HostRandom {
    fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let rest = &mut buf[done..];
            // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes for the duration
            // of the call; getrandom writes at most that many bytes into it.
            let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            done += n as usize;
        }
        Ok(())
    }
}

/// Serves every available request on `queue`. Returns whether any buffer was used.
/// A chain whose buffers are unusable (outside guest RAM, ...) is returned used with length 0.
pub fn fill_requests(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    source: &mut dyn EntropySource,
    guest_writes: Option<&crate::virtio::GuestWriteHook>,
) -> Result<bool, QueueError> {
    let mut used = false;
    let mut buf = Vec::new();
    while let Some(chain) = queue.iter(mem)?.next() {
        let head = chain.head_index();
        let mut written = 0u32;
        let buffers = chain.clone();
        match Writer::<()>::new(mem, chain) {
            Ok(mut w) => {
                let n = w.available_bytes().min(MAX_REQUEST);
                buf.resize(n, 0);
                if source.fill(&mut buf).is_ok() && w.write_all(&buf).is_ok() {
                    written = n as u32;
                }
            }
            Err(e) => tracing::debug!("virtio-rng: unusable request: {e}"),
        }
        crate::virtio::report_writes(guest_writes, &buffers);
        queue
            .add_used(mem, head, written)
            .map_err(|e| QueueError::Used(e.to_string()))?;
        used = true;
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    use super::*;

    struct Fixed;
    impl EntropySource for Fixed {
        fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
            buf.fill(0x5a);
            Ok(())
        }
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn used_len(mem: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>, i: u64) -> u32 {
        mem.read_obj(q.used_addr().unchecked_add(4 + i * 8 + 4))
            .unwrap()
    }

    #[test]
    fn fills_writable_buffers_with_random_bytes_and_reports_them() {
        // Arrange
        let mem = mem();
        let vq = MockSplitQueue::new(&mem, 16);
        let descs = [
            RawDescriptor::from(Descriptor::new(
                0x8000,
                16,
                (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16,
                1,
            )),
            RawDescriptor::from(Descriptor::new(0x9000, 8, VRING_DESC_F_WRITE as u16, 0)),
        ];
        vq.build_desc_chain(&descs).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let (hook, log) = crate::virtio::write_recorder();
        // Act
        let used = fill_requests(&mut q, &mem, &mut Fixed, Some(&hook)).unwrap();
        // Assert
        assert!(used);
        assert_eq!(used_len(&mem, &vq, 0), 24);
        assert_eq!(
            *log.lock().unwrap(),
            [(0x8000, 16), (0x9000, 8)],
            "reported"
        );
        let mut b = [0u8; 8];
        mem.read_slice(&mut b, GuestAddress(0x9000)).unwrap();
        assert_eq!(b, [0x5a; 8]);
    }

    #[test]
    fn buffer_outside_guest_ram_is_returned_empty() {
        let mem = mem();
        let vq = MockSplitQueue::new(&mem, 16);
        let descs = [RawDescriptor::from(Descriptor::new(
            0xffff_0000,
            16,
            VRING_DESC_F_WRITE as u16,
            0,
        ))];
        vq.build_desc_chain(&descs).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        assert!(fill_requests(&mut q, &mem, &mut Fixed, None).unwrap());
        assert_eq!(used_len(&mem, &vq, 0), 0);
    }

    #[test]
    fn huge_request_is_capped() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let descs = [RawDescriptor::from(Descriptor::new(
            0x10_0000,
            0x20_0000,
            VRING_DESC_F_WRITE as u16,
            0,
        ))];
        vq.build_desc_chain(&descs).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        assert!(fill_requests(&mut q, &mem, &mut Fixed, None).unwrap());
        assert_eq!(used_len(&mem, &vq, 0), MAX_REQUEST as u32);
    }
}
