//! The outside's handle on a NIC, kept across VM resets: the link state (`set_link`), the
//! receive filter as the guest last set it (`query-rx-filter`) with QEMU's one-shot
//! NIC_RX_FILTER_CHANGED notification, and the rate limits. Changes wake the device's I/O
//! thread through an eventfd, so they take effect at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rampart_config::control::RxFilter;
use rampart_config::NetLimits;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Called (on the I/O thread) when the guest changed the receive filter and the event is armed.
pub type FilterListener = Box<dyn Fn() + Send>;

/// Shared state of one NIC.
pub struct NetHandle {
    mac: [u8; 6],
    link_up: AtomicBool,
    wake: EventFd,
    filter: Mutex<RxFilter>,
    /// NIC_RX_FILTER_CHANGED is sent once, then not again until `query-rx-filter` (QEMU).
    notify: AtomicBool,
    listener: Mutex<Option<FilterListener>>,
    limits: Mutex<NetLimits>,
}

impl NetHandle {
    pub fn new(mac: [u8; 6], limits: NetLimits) -> std::io::Result<Arc<NetHandle>> {
        Ok(Arc::new(NetHandle {
            mac,
            link_up: AtomicBool::new(true),
            wake: EventFd::new(EFD_NONBLOCK)?,
            filter: Mutex::new(RxFilter::reset(mac)),
            notify: AtomicBool::new(true),
            listener: Mutex::new(None),
            limits: Mutex::new(limits),
        }))
    }

    /// The MAC address the NIC was created with.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// `set_link`: the guest sees the change (status and a configuration interrupt) at once;
    /// while down, frames in both directions are dropped.
    pub fn set_link(&self, up: bool) {
        self.link_up.store(up, Ordering::SeqCst);
        let _ = self.wake.write(1);
    }

    pub fn link_up(&self) -> bool {
        self.link_up.load(Ordering::SeqCst)
    }

    /// The receive filter, for `query-rx-filter`; re-arms NIC_RX_FILTER_CHANGED.
    pub fn rx_filter(&self) -> RxFilter {
        let f = self
            .filter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.notify.store(true, Ordering::SeqCst);
        f
    }

    /// Who hears of receive-filter changes (the monitor's event).
    pub fn set_listener(&self, l: FilterListener) {
        *self.listener.lock().unwrap_or_else(|e| e.into_inner()) = Some(l);
    }

    pub fn limits(&self) -> NetLimits {
        *self.limits.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// New rate limits, effective at once.
    pub fn set_limits(&self, l: NetLimits) {
        *self.limits.lock().unwrap_or_else(|e| e.into_inner()) = l;
        let _ = self.wake.write(1);
    }

    pub(super) fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// The device's filter changed: publish it and notify if armed.
    pub(super) fn filter_changed(&self, f: &RxFilter) {
        *self.filter.lock().unwrap_or_else(|e| e.into_inner()) = f.clone();
        if self.notify.swap(false, Ordering::SeqCst) {
            if let Some(l) = self
                .listener
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
            {
                l();
            }
        }
    }

    /// The device was reset: its filter is back to the default (no event, as QEMU).
    pub(super) fn filter_reset(&self, f: &RxFilter) {
        *self.filter.lock().unwrap_or_else(|e| e.into_inner()) = f.clone();
    }
}
