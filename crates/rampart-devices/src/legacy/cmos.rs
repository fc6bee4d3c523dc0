//! CMOS RAM and real-time clock (MC146818-style) at ports 0x70 (index) and 0x71 (data).
//!
//! - 128 bytes of CMOS RAM. Writing the index port keeps bits 0-6; bit 7 is the NMI-disable
//!   bit of a PC, recorded ([`Cmos::nmi_disabled`]) and masked off the index.
//! - The clock (registers 0x00-0x09 and century 0x32) is the host's UTC time plus a guest
//!   offset, computed at each read; status register B selects BCD or binary (bit 2) and
//!   12- or 24-hour (bit 1) format, a PC's default being 24-hour BCD. The guest sets the
//!   clock either register by register or, as Linux does, with B's SET bit (7): while it is
//!   set the time registers are a frozen copy the guest writes; clearing it commits. A
//!   commit stores the difference from host time, so the guest sees its own time afterwards;
//!   an impossible date (bad BCD, February 30th...) is ignored and the clock left alone.
//! - Status A never shows update-in-progress; C reads 0 (no interrupt flags); D reads 0x80
//!   (valid RAM and time).
//! - **No RTC interrupts** (IRQ 8: periodic, alarm, update-ended) are generated: the enable
//!   bits in B are stored but have no effect. Linux uses the CMOS clock only to read and set
//!   the wall clock, which needs none.
//! - Memory size registers are filled as a PC BIOS leaves them, from the RAM sizes given to
//!   [`Cmos::new`].

use std::time::{SystemTime, UNIX_EPOCH};

use tracing::debug;

use super::calendar::{self, DateTime};
use crate::bus::BusDevice;

/// Bytes of CMOS RAM.
pub const CMOS_SIZE: usize = 128;
/// Ports of the device (index, data), and so its bus length.
pub const CMOS_PORT_LEN: u64 = 2;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// Status A: update in progress (never set here) and the divider/rate bits a PC boots with
/// (32.768 kHz time base, 1024 Hz periodic rate).
const A_UIP: u8 = 0x80;
const A_DEFAULT: u8 = 0x26;
/// Status B: SET (updates halted), binary (vs BCD) and 24-hour mode.
const B_SET: u8 = 0x80;
const B_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
const B_DEFAULT: u8 = B_24H;
/// Status D: valid RAM and time.
const D_VRT: u8 = 0x80;
/// Hours register, 12-hour mode: PM flag.
const HOUR_PM: u8 = 0x80;

const NMI_DISABLE: u8 = 0x80;

/// Base memory (KiB, 0x15-0x16), memory from 1 MiB (KiB, capped: 0x17-0x18 and 0x30-0x31),
/// from 16 MiB (64 KiB units, 0x34-0x35) and above 4 GiB (64 KiB units, 0x5b-0x5d).
const REG_BASE_MEM: usize = 0x15;
const REG_EXT_MEM: usize = 0x17;
const REG_EXT_MEM_COPY: usize = 0x30;
const REG_MEM_ABOVE_16M: usize = 0x34;
const REG_MEM_ABOVE_4G: usize = 0x5b;
const BASE_MEM_KIB: u16 = 640;
const MIB: u64 = 1 << 20;
const UNIT_64K: u64 = 64 << 10;

/// The registers holding the current time.
const TIME_REGS: [u8; 8] = [
    REG_SECONDS,
    REG_MINUTES,
    REG_HOURS,
    REG_WEEKDAY,
    REG_DAY,
    REG_MONTH,
    REG_YEAR,
    REG_CENTURY,
];

/// Where the clock gets the host's time: seconds since the Unix epoch, UTC.
pub type HostClock = Box<dyn Fn() -> i64 + Send>;

/// The host's current UTC time in seconds since the Unix epoch (negative before it).
pub fn host_unix_time() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// What a [`Cmos`] needs to be saved and restored (e.g. in a snapshot). The clock is kept
/// as the guest's offset from host UTC time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmosState {
    pub index: u8,
    pub nmi_disabled: bool,
    pub data: [u8; CMOS_SIZE],
    pub guest_offset: i64,
}

/// CMOS RAM and RTC.
pub struct Cmos {
    index: u8,
    nmi_disabled: bool,
    data: [u8; CMOS_SIZE],
    /// Guest time minus host time, in seconds.
    offset: i64,
    clock: HostClock,
}

impl Cmos {
    /// A CMOS whose clock follows the host's, with memory registers describing
    /// `mem_below_4g` bytes of RAM under 4 GiB and `mem_above_4g` bytes from 4 GiB up.
    pub fn new(mem_below_4g: u64, mem_above_4g: u64) -> Self {
        Self::with_clock(mem_below_4g, mem_above_4g, Box::new(host_unix_time))
    }

    /// As [`Self::new`], reading the host's time from `clock` (tests, or a clock source the
    /// VMM controls).
    pub fn with_clock(mem_below_4g: u64, mem_above_4g: u64, clock: HostClock) -> Self {
        let mut data = [0u8; CMOS_SIZE];
        data[usize::from(REG_A)] = A_DEFAULT;
        data[usize::from(REG_B)] = B_DEFAULT;
        data[usize::from(REG_D)] = D_VRT;

        let put = |data: &mut [u8; CMOS_SIZE], at: usize, bytes: &[u8]| {
            data[at..at + bytes.len()].copy_from_slice(bytes);
        };
        put(&mut data, REG_BASE_MEM, &BASE_MEM_KIB.to_le_bytes());
        let ext_kib = capped(mem_below_4g.saturating_sub(MIB) / 1024, 0xffff);
        put(&mut data, REG_EXT_MEM, &ext_kib.to_le_bytes()[..2]);
        put(&mut data, REG_EXT_MEM_COPY, &ext_kib.to_le_bytes()[..2]);
        let above_16m = capped(mem_below_4g.saturating_sub(16 * MIB) / UNIT_64K, 0xffff);
        put(&mut data, REG_MEM_ABOVE_16M, &above_16m.to_le_bytes()[..2]);
        let above_4g = capped(mem_above_4g / UNIT_64K, 0xff_ffff);
        put(&mut data, REG_MEM_ABOVE_4G, &above_4g.to_le_bytes()[..3]);

        Self {
            index: 0,
            nmi_disabled: false,
            data,
            offset: 0,
            clock,
        }
    }

    /// The device's state, for saving.
    pub fn state(&self) -> CmosState {
        CmosState {
            index: self.index,
            nmi_disabled: self.nmi_disabled,
            data: self.data,
            guest_offset: self.offset,
        }
    }

    /// Replaces the device's state with a saved one. Any bytes are acceptable: the index is
    /// masked to the RAM's size and the clock arithmetic saturates.
    pub fn restore(&mut self, state: &CmosState) {
        self.index = state.index & !NMI_DISABLE;
        self.nmi_disabled = state.nmi_disabled;
        self.data = state.data;
        self.offset = state.guest_offset;
    }

    /// Whether the guest last wrote the index port with the NMI-disable bit set.
    pub fn nmi_disabled(&self) -> bool {
        self.nmi_disabled
    }

    /// The guest clock's difference from the host's, in seconds.
    pub fn guest_offset(&self) -> i64 {
        self.offset
    }

    fn reg(&self, r: u8) -> u8 {
        self.data[usize::from(r & 0x7f)]
    }

    fn set_reg(&mut self, r: u8, value: u8) {
        self.data[usize::from(r & 0x7f)] = value;
    }

    fn guest_now(&self) -> DateTime {
        calendar::from_unix((self.clock)().saturating_add(self.offset))
    }

    fn binary(&self) -> bool {
        self.reg(REG_B) & B_BINARY != 0
    }

    fn hours_24(&self) -> bool {
        self.reg(REG_B) & B_24H != 0
    }

    fn encode(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            ((v / 10) << 4) | (v % 10)
        }
    }

    fn decode(&self, raw: u8) -> Option<u8> {
        if self.binary() {
            return Some(raw);
        }
        let (hi, lo) = (raw >> 4, raw & 0x0f);
        (hi <= 9 && lo <= 9).then_some(hi * 10 + lo)
    }

    /// The value of time register `r` for time `t`, in the guest's chosen format.
    fn time_register(&self, r: u8, t: &DateTime) -> u8 {
        // Year and century are each two decimal digits; `rem_euclid` keeps them so even for
        // the clamped extremes of the calendar.
        let year = t.year.rem_euclid(100) as u8;
        let century = t.year.div_euclid(100).rem_euclid(100) as u8;
        match r {
            REG_SECONDS => self.encode(t.second),
            REG_MINUTES => self.encode(t.minute),
            REG_HOURS if self.hours_24() => self.encode(t.hour),
            REG_HOURS => {
                let pm = if t.hour >= 12 { HOUR_PM } else { 0 };
                let h12 = match t.hour % 12 {
                    0 => 12,
                    h => h,
                };
                self.encode(h12) | pm
            }
            REG_WEEKDAY => self.encode(t.weekday + 1),
            REG_DAY => self.encode(t.day),
            REG_MONTH => self.encode(t.month),
            REG_YEAR => self.encode(year),
            REG_CENTURY => self.encode(century),
            _ => self.reg(r),
        }
    }

    /// Copies the current guest time into the time registers.
    fn latch(&mut self) {
        let now = self.guest_now();
        for r in TIME_REGS {
            let v = self.time_register(r, &now);
            self.set_reg(r, v);
        }
    }

    /// The time the time registers hold, if they hold a valid one.
    fn registers_time(&self) -> Option<i64> {
        let hour = if self.hours_24() {
            self.decode(self.reg(REG_HOURS))?
        } else {
            let raw = self.reg(REG_HOURS);
            let h12 = self.decode(raw & !HOUR_PM)?;
            if !(1..=12).contains(&h12) {
                return None;
            }
            h12 % 12 + if raw & HOUR_PM != 0 { 12 } else { 0 }
        };
        let year = self.decode(self.reg(REG_YEAR))?;
        let century = self.decode(self.reg(REG_CENTURY))?;
        if year > 99 || century > 99 {
            return None;
        }
        calendar::to_unix(&DateTime {
            year: i64::from(century) * 100 + i64::from(year),
            month: self.decode(self.reg(REG_MONTH))?,
            day: self.decode(self.reg(REG_DAY))?,
            hour,
            minute: self.decode(self.reg(REG_MINUTES))?,
            second: self.decode(self.reg(REG_SECONDS))?,
            weekday: 0,
        })
    }

    /// Makes the time in the registers the guest's clock, if it is a valid time.
    fn commit(&mut self) {
        match self.registers_time() {
            Some(t) => {
                self.offset = t.saturating_sub((self.clock)());
                debug!(offset = self.offset, "CMOS: guest set the clock");
            }
            None => debug!("CMOS: ignoring an invalid time written by the guest"),
        }
    }

    fn updates_halted(&self) -> bool {
        self.reg(REG_B) & B_SET != 0
    }

    fn read_data(&mut self) -> u8 {
        let r = self.index;
        match r {
            _ if TIME_REGS.contains(&r) => {
                if self.updates_halted() {
                    self.reg(r)
                } else {
                    let now = self.guest_now();
                    self.time_register(r, &now)
                }
            }
            REG_A => self.reg(REG_A) & !A_UIP,
            // No interrupt flags are ever raised; reading C would clear them.
            REG_C => 0,
            REG_D => D_VRT,
            _ => self.reg(r),
        }
    }

    fn write_data(&mut self, value: u8) {
        let r = self.index;
        match r {
            _ if TIME_REGS.contains(&r) => {
                if self.updates_halted() {
                    self.set_reg(r, value);
                } else {
                    self.latch();
                    self.set_reg(r, value);
                    self.commit();
                }
            }
            REG_A => self.set_reg(REG_A, value & !A_UIP),
            REG_B => {
                let was_halted = self.updates_halted();
                self.set_reg(REG_B, value);
                match (was_halted, self.updates_halted()) {
                    (false, true) => self.latch(),
                    (true, false) => self.commit(),
                    _ => {}
                }
            }
            REG_C | REG_D => debug!(reg = r, value, "CMOS: write to read-only status ignored"),
            _ => self.set_reg(r, value),
        }
    }
}

fn capped(v: u64, max: u64) -> u32 {
    // `max` fits in 24 bits, so the narrowing is exact.
    v.min(max) as u32
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data) {
            (1, [byte]) => *byte = self.read_data(),
            // The index port is write-only.
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (0, [value]) => {
                self.nmi_disabled = value & NMI_DISABLE != 0;
                self.index = value & !NMI_DISABLE;
            }
            (1, [value]) => self.write_data(*value),
            _ => debug!(offset, len = data.len(), "CMOS: ignoring odd write"),
        }
    }
}

#[cfg(test)]
#[path = "cmos_tests.rs"]
mod tests;
