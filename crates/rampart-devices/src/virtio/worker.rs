//! The I/O thread of a virtio device: an epoll loop over the device's queue eventfds (signalled
//! by the notify MMIO handler under `tcg`, by KVM's ioeventfd under `kvm`) and a stop eventfd.
//! Queue processing happens here, never on a vCPU thread.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tracing::{debug, error, warn};
use virtio_queue::QueueT;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::pci::{notify_config, WorkerParts};
use super::{VirtioState, ISR_QUEUE};
use crate::pci::msix::Msix;

/// A running I/O thread; [`IoThread::stop`] (or dropping it) ends and joins it.
pub struct IoThread {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl IoThread {
    /// Starts the I/O thread `name` for the device whose parts are `parts`.
    pub fn spawn(name: &str, parts: WorkerParts) -> std::io::Result<IoThread> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let stop_worker = stop.try_clone()?;
        let epoll = Epoll::new()?;
        let token_stop = parts.queue_evts.len() as u64;
        epoll.ctl(
            ControlOperation::Add,
            stop_worker.as_raw_fd(),
            EpollEvent::new(EventSet::IN, token_stop),
        )?;
        for (i, e) in parts.queue_evts.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                e.as_raw_fd(),
                EpollEvent::new(EventSet::IN, i as u64),
            )?;
        }
        let extra = parts
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .device
            .event_fds();
        for (i, (fd, edge)) in extra.iter().enumerate() {
            let mut set = EventSet::IN;
            if *edge {
                set |= EventSet::EDGE_TRIGGERED;
            }
            epoll.ctl(
                ControlOperation::Add,
                *fd,
                EpollEvent::new(set, token_stop + 1 + i as u64),
            )?;
        }
        let handle = std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || {
                rampart_sandbox::seccomp::enter(rampart_sandbox::seccomp::Role::VirtioIo);
                run(epoll, parts, stop_worker, token_stop)
            })?;
        Ok(IoThread {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = self.stop.write(1);
            if h.join().is_err() {
                error!("a virtio I/O thread panicked");
            }
        }
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

fn run(epoll: Epoll, parts: WorkerParts, _stop: EventFd, token_stop: u64) {
    let mut events = vec![EpollEvent::default(); parts.queue_evts.len() + 16];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                error!("virtio I/O thread: epoll failed: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            let token = ev.data();
            if token == token_stop {
                debug!("virtio I/O thread stopping");
                return;
            }
            if token > token_stop {
                let mut st = parts.state.lock().unwrap_or_else(|e| e.into_inner());
                let action = st.device.handle_event((token - token_stop - 1) as usize);
                if action.config_changed {
                    st.config_generation = st.config_generation.wrapping_add(1);
                    if st.running() {
                        notify_config(&mut st, &parts.msix);
                    }
                }
                for q in 0..st.queues.len().min(64) {
                    if action.queues & (1 << q) != 0 {
                        service_queue(&mut st, &parts.msix, q);
                    }
                }
                continue;
            }
            let Some(evt) = parts.queue_evts.get(token as usize) else {
                continue;
            };
            let _ = evt.read();
            let mut st = parts.state.lock().unwrap_or_else(|e| e.into_inner());
            service_queue(&mut st, &parts.msix, token as usize);
        }
    }
}

/// Processes queue `index` of a running device and interrupts the guest if it needs it. A
/// queue error puts the device into NEEDS_RESET (and stops it) with a configuration
/// interrupt; nothing else in the VM is affected.
pub fn service_queue(st: &mut VirtioState, msix: &Mutex<Msix>, index: usize) {
    if !st.running() {
        return;
    }
    let st_ref = &mut *st;
    let Some(queue) = st_ref.queues.get_mut(index) else {
        return;
    };
    if !queue.ready() {
        return;
    }
    let mem = st_ref.mem.clone();
    let hook = st_ref.guest_writes.clone();
    let mut used = false;
    // With event indices, keep going until the driver has nothing more for us (bounded: each
    // round consumes what is available, at most the queue size).
    let result = (|| {
        for _ in 0..=u32::from(queue.size()) {
            queue.disable_notification(&mem)?;
            used |= st_ref.device.process_queue(index, queue, &mem)?;
            if !queue.enable_notification(&mem)? || !st_ref.device.more_work(index) {
                break;
            }
        }
        Ok::<_, super::QueueError>(())
    })();
    if let Some(hook) = &hook {
        // The used ring (and the available-event index at its end), before any interrupt;
        // the devices report the buffers they wrote themselves.
        hook(queue.used_ring(), 6 + 8 * u64::from(queue.size()));
    }
    if let Err(e) = result {
        warn!(queue = index, "virtio device needs reset: {e}");
        st.set_needs_reset();
        let v = st.config_vector;
        msix.lock().unwrap_or_else(|e| e.into_inner()).notify(v);
        return;
    }
    if used {
        let mem = st.mem.clone();
        let vector = st.queue_vectors[index];
        let Some(queue) = st.queues.get_mut(index) else {
            return;
        };
        match queue.needs_notification(&mem) {
            Ok(true) => {
                st.isr |= ISR_QUEUE;
                msix.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .notify(vector);
            }
            Ok(false) => {}
            Err(e) => {
                warn!(queue = index, "virtio device needs reset: {e}");
                notify_config_reset(st, msix);
            }
        }
    }
}

fn notify_config_reset(st: &mut VirtioState, msix: &Mutex<Msix>) {
    st.set_needs_reset();
    notify_config(st, msix);
}

/// A shared handle type the VM keeps for each device's worker.
pub type SharedState = Arc<Mutex<VirtioState>>;
